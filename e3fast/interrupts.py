"""Ctrl-C and SIGTERM as KeyboardInterrupt, even where Python would swallow it.

The CLI's handler raises KeyboardInterrupt, but a handler can fire while a finalizer
(``__del__``, e.g. of an h5py object) runs, where Python prints and ignores the exception.
The handler therefore also records the signal, and the long loops (replay segments, trace
blocks) call `check()` at safe points, so an interrupt is never lost.
"""
_pending = {"signal": None}


def handler(signum, frame):
    """Signal handler: remember the signal and raise KeyboardInterrupt, except inside a
    finalizer, where Python would print and swallow it (`check()` raises it soon after)."""
    _pending["signal"] = signum
    code = frame.f_code if frame is not None else None
    if code is not None and (code.co_name == "__del__" or code.co_filename.endswith("weakref.py")):
        return
    raise KeyboardInterrupt


def check() -> None:
    """Raise KeyboardInterrupt if a signal arrived (and was possibly swallowed)."""
    if _pending["signal"] is not None:
        raise KeyboardInterrupt


def reset() -> None:
    """Forget an earlier signal (a new command starts)."""
    _pending["signal"] = None
