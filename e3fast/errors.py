"""One exception type for user mistakes and environmental problems.

The CLI turns an `E3Error` into one line on stderr and a non-zero exit code, never a
traceback. Everything raised for bad input (files, options, specs) should be an `E3Error`
that says *what* is wrong, *where* (file, dataset, row, option) and *how to fix it*.
"""


class E3Error(Exception):
    """A problem the user can fix: bad input, bad option, unwritable output."""

    exit_code = 2

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(str(self))

    def __str__(self) -> str:
        msg = f"{self.where}: {self.what}" if self.where else self.what
        if self.fix:
            msg += f" (fix: {self.fix})"
        return msg
