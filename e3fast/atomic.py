"""Atomic output: write under a temporary name in the same folder, rename on success.

A crash, Ctrl-C or full disk never leaves a half-written file under the final name.
"""
import contextlib
import os
import tempfile
from pathlib import Path

from . import interrupts
from .errors import E3Error


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path next to `final`; rename it to `final` if the block succeeds."""
    final = Path(final)
    folder = final.parent if str(final.parent) else Path(".")
    tmp = None
    try:  # created inside the try that removes it, under `deferred` (mkstemp is not atomic)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with interrupts.deferred():
                fd, tmp = tempfile.mkstemp(prefix=".e3fast-tmp-", suffix=suffix or final.suffix,
                                           dir=folder)
                os.close(fd)
        except OSError as exc:
            raise E3Error(f"cannot write here: {exc.strerror}", where=str(folder),
                          fix="choose a writable output location") from None
        yield Path(tmp)
        os.replace(tmp, final)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def write_text_atomic(final: str | os.PathLike, text: str) -> None:
    """Write `text` to `final` atomically (UTF-8)."""
    try:
        with atomic_path(final) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise E3Error(f"cannot write: {exc.strerror}", where=str(final),
                      fix="check free disk space and permissions") from None
