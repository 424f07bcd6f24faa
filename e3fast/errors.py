"""One exception type for user mistakes and environmental problems.

The CLI turns an `E3Error` into one line on stderr and a non-zero exit code, never a
traceback. Everything raised for bad input (files, options, specs) should be an `E3Error`
that says *what* is wrong, *where* (file, dataset, row, option) and *how to fix it*.
"""


class E3Error(Exception):
    """A problem the user can fix: bad input, bad option, unwritable output."""

    exit_code = 2
    #: set when an HDF5 write failed (e.g. a full disk): the HDF5 library can no longer shut
    #: down cleanly (it crashes while closing such a file), so the CLI ends the process at once
    hdf5_broken = False

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(str(self))

    def __str__(self) -> str:
        msg = f"{self.where}: {self.what}" if self.where else self.what
        if self.fix:
            msg += f" (fix: {self.fix})"
        return msg


def hdf5_write_error(exc: BaseException, where: str, fix: str) -> "E3Error":
    """The E3Error for a failed HDF5 write (full disk, I/O error), marked `hdf5_broken`."""
    err = E3Error(f"cannot write: {io_problem(exc)}", where=where, fix=fix)
    err.hdf5_broken = True
    return err


def io_problem(exc: BaseException) -> str:
    """A one-line description of an I/O failure. h5py reports a full disk as a multi-line
    RuntimeError holding ``errno = 28``; that becomes "No space left on device"."""
    import os
    import re
    text = str(exc)
    found = re.search(r"errno = (\d+)", text)
    if found:
        return os.strerror(int(found.group(1)))
    return getattr(exc, "strerror", None) or text.splitlines()[0] if text else type(exc).__name__
