"""Ctrl-C and SIGTERM: stop at a safe point, never with a traceback.

While a command runs (`start` .. `stop`), `handler` records the signal and raises
KeyboardInterrupt at once only where that is safe. It defers where Python would print and
swallow the exception, or where stopping half-way leaves a library in a broken state:

* inside a finalizer (``__del__``, a ``weakref.finalize`` callback) or a context manager's
  ``__exit__`` (clean-up code, e.g. renaming a finished file into place, removing a
  temporary folder);
* inside llvmlite (Numba's LLVM calls; its ctypes callbacks such as the object-cache hook
  print and ignore exceptions), Numba's cache files (numba/core/caching.py), h5py (a
  half-finished HDF5 call sequence), an import or code run by exec() of a string (C code
  may turn the exception into another one; see _UNSAFE_FILES);
* inside threading, concurrent.futures, multiprocessing or queue code (a lock taken and not
  released: an mc run hung at exit);
* inside a `deferred()` block (creating a temporary file or folder and remembering its name).

A deferred signal is re-delivered every `REDELIVER_S` until it lands somewhere safe, and
the long loops (trace blocks, replay segments, kernel compilation) also call `check()`.
Numba compiles a kernel in many Python steps between LLVM calls, so an interrupt during a
cold compile waits at most for the LLVM call in progress (said once on stderr). Once the
KeyboardInterrupt is raised, further signals are only recorded: clean-up runs to its end.
Exceptions Python cannot raise (``sys.unraisablehook``) are dropped silently when they are
our KeyboardInterrupt; the signal stays pending, so it is raised again at a safe point.
After `stop` (the command finished) signals are only recorded (`stop` returns them).
"""
import _thread
import os
import sys
import threading

REDELIVER_S = 0.05
#: files whose frames on the stack make raising unsafe (path fragments, '/'-separated).
#: "<frozen importlib": an import, perhaps started by C code that turns the exception into
#: another (NumPy's import of datetime: an ImportError and a traceback). "<string>": code run
#: by exec()/eval() of a string; a KeyboardInterrupt leaving it marks the interpreter to end
#: by SIGINT at exit even when the command caught it (CPython's run_eval_code_obj).
#: threading, concurrent.futures, multiprocessing, queue: a KeyboardInterrupt between a lock's
#: acquire and the code that releases it leaves the lock held (an mc run then hung at exit,
#: its executor's manager thread waiting on a Future's condition): waits there are left to
#: return, and the callers poll `check()` (mc: every 0.5 s, and after each Dask result).
_UNSAFE_FILES = ("/llvmlite/", "/h5py/", "/numba/core/caching.py", "/weakref.py", "<string>",
                 "<frozen importlib", "/threading.py", "/concurrent/futures/",
                 "/multiprocessing/", "/queue.py")
_UNSAFE_NAMES = ("__del__", "__exit__")
#: unsafe frames that mean a Numba compilation (the notice on stderr)
_COMPILING = ("/llvmlite/", "/numba/core/caching.py")

_state = {"signal": None, "active": False, "raised": False, "deferred": 0, "command": "",
          "noted": False, "timer": None}
_lock = threading.RLock()  # the handler may run while the main thread holds it


def start(command: str = "") -> None:
    """A command starts: signals raise KeyboardInterrupt (at safe points) until `stop`."""
    _state.update(active=True, raised=False, deferred=0, command=command, noted=False)
    _install_unraisable_hook()
    if _state["signal"] is not None:  # arrived just before: raise at the first safe point
        _redeliver_later()


def stop():
    """The command ended: later signals are only recorded. Returns and forgets the signal
    received (None if none)."""
    with _lock:
        _state["active"] = False
        timer, _state["timer"] = _state["timer"], None
    if timer is not None:
        timer.cancel()
        timer.join()
    sig, _state["signal"] = _state["signal"], None
    return sig


def handler(signum, frame):
    """Signal handler: record the signal; raise KeyboardInterrupt if it is safe here,
    otherwise re-deliver it shortly."""
    _state["signal"] = signum
    if not _state["active"] or _state["raised"]:
        return
    reason = _unsafe(frame)
    if reason is None:
        _state["raised"] = True
        raise KeyboardInterrupt
    if reason == "compiling" and not _state["noted"]:
        _state["noted"] = True
        name = f"e3fast {_state['command']}".strip()
        os.write(2, f"{name}: interrupt received; stopping after the current compilation "
                    "step\n".encode())
    _redeliver_later()


def check() -> None:
    """A safe point: raise KeyboardInterrupt if a signal arrived (once: not again while the
    clean-up after it runs)."""
    if _state["signal"] is not None and _state["active"] and not _state["raised"]:
        _state["raised"] = True
        raise KeyboardInterrupt


class deferred:
    """``with deferred(): ...``: signals inside the block are held and raised when it ends
    (for steps that must not be cut between a system call and remembering its result)."""

    def __enter__(self):
        _state["deferred"] += 1
        return self

    def __exit__(self, exc_type, exc, tb):
        _state["deferred"] -= 1
        if exc_type is None and not _state["deferred"]:
            check()
        return False


def _unsafe(frame):
    """Why raising in `frame` (and its callers) is unsafe: "compiling" (a Numba dispatcher
    in LLVM or its cache), "unsafe" or None (safe)."""
    unsafe, llvm, dispatch = bool(_state["deferred"]), False, False
    while frame is not None:
        code = frame.f_code
        path = code.co_filename.replace(os.sep, "/")
        llvm = llvm or any(p in path for p in _COMPILING)
        dispatch = dispatch or path.endswith("/numba/core/dispatcher.py")
        unsafe = unsafe or code.co_name in _UNSAFE_NAMES or any(p in path for p in _UNSAFE_FILES)
        frame = frame.f_back
    return ("compiling" if llvm and dispatch else "unsafe") if unsafe else None


def _redeliver_later() -> None:
    with _lock:
        if _state["timer"] is None and _state["active"]:
            _state["timer"] = threading.Timer(REDELIVER_S, _redeliver)
            _state["timer"].daemon = True
            _state["timer"].start()


def _redeliver() -> None:
    """Timer thread: call the handler again in the main thread (never after `stop`)."""
    with _lock:
        _state["timer"] = None
        if _state["active"] and not _state["raised"] and _state["signal"] is not None:
            _thread.interrupt_main(_state["signal"])


def _unraisable(info) -> None:
    """sys.unraisablehook: our KeyboardInterrupt raised where Python could not propagate it
    (a C callback or finalizer the stack check did not recognise) is dropped silently and
    raised again at a safe point; anything else goes to the previous hook."""
    if (issubclass(info.exc_type, KeyboardInterrupt) and _state["active"]
            and _state["signal"] is not None):
        _state["raised"] = False
        _redeliver_later()
        return
    _previous_hook(info)


_previous_hook = sys.unraisablehook


def _install_unraisable_hook() -> None:
    global _previous_hook
    if sys.unraisablehook is not _unraisable:
        _previous_hook = sys.unraisablehook
        sys.unraisablehook = _unraisable
