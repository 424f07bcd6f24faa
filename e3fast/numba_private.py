"""Every use of Numba's and llvmlite's private or internal API, in one place.

Checked (the whole suite, `make check-deps`, 2026-12-06) on numba 0.68.1 with llvmlite 0.50.0
(the newest) and on numba 0.60.0 with llvmlite 0.43.0 (numpy 2.0.2); the series between them
were not run. A Numba outside ``CHECKED_NUMBA`` stops at import with one line (an `E3Error`,
exit 2 from the CLI); ``E3FAST_TRY_NUMBA=1`` lets it through to try a new release (then
`make check-deps` and raise the bounds here and in setup.py). What is used, and what a new
release could break:

* ``borrow_array``: an array view without an owner (``context.make_array``,
  ``context.populate_array(meminfo=None)`` in an ``@intrinsic``): ``sim.borrow``.
* ``float_bits``: a float64's bits as int64 (an LLVM bitcast in an ``@intrinsic``):
  the histogram bucket in ``sim.metrics``.
* ``rebind``: a copy of a function over other globals (``types.FunctionType``); Numba
  resolves globals at compile time from ``__globals__`` and names cache files after
  ``__qualname__``: the kernel variants in ``sim.kernel``.
* ``disable_cmov_converter``: a process-wide LLVM code-generation option
  (``llvmlite.binding.set_option``): ``router.policies``.
* the cache fingerprint (``numba.core.caching``): see ``source_stamp`` and docs/CACHE.md.
"""
import functools
import hashlib
import os
import platform
import re
import types
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm
import numba
from llvmlite import ir
from numba import types as nbtypes
from numba.core import caching
from numba.extending import intrinsic

from .errors import E3Error

#: Numba release series (major, minor) the suite passed on, oldest and newest; setup.py's
#: bounds say the same. llvmlite follows from Numba (each Numba series pins one llvmlite).
CHECKED_NUMBA = ((0, 60), (0, 68))
TRY_ENV = "E3FAST_TRY_NUMBA"


def _series(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def check_numba_version(version: str = numba.__version__) -> None:
    """Raise an `E3Error` if Numba `version` lies outside the checked series (unless
    ``E3FAST_TRY_NUMBA=1``)."""
    lo, hi = CHECKED_NUMBA
    if lo <= _series(version) <= hi or os.environ.get(TRY_ENV) == "1":
        return
    checked = ".".join(map(str, lo)) if lo == hi else \
        f"{'.'.join(map(str, lo))} to {'.'.join(map(str, hi))}"
    raise E3Error(f"numba {version} (llvmlite {llvmlite.__version__}) is not a version e3fast "
                  f"was checked on ({checked}); it uses Numba internals",
                  fix=f"pip install 'numba>={lo[0]}.{lo[1]},<{hi[0]}.{hi[1] + 1}', or set "
                      f"{TRY_ENV}=1 to try it (then `make check-deps`)")


check_numba_version()


# --- code generation --------------------------------------------------------------------
@intrinsic
def borrow_array(typingctx, arr):
    """A view of `arr` with no owner (no reference counting); valid while `arr` lives."""
    if not isinstance(arr, nbtypes.Array):
        return None

    def codegen(context, builder, sig, args):
        src = context.make_array(arr)(context, builder, value=args[0])
        dst = context.make_array(arr)(context, builder)
        context.populate_array(dst, data=src.data, shape=src.shape, strides=src.strides,
                               itemsize=src.itemsize, meminfo=None)
        return dst._getvalue()

    return arr(arr), codegen


@intrinsic
def float_bits(typingctx, x):
    """The bits of float64 `x` as an int64 (no conversion)."""
    if not isinstance(x, nbtypes.Float) or x.bitwidth != 64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return nbtypes.int64(x), codegen


def rebind(template, names: dict, name: str):
    """`template` as a new function `name` whose globals are `names` (Numba compiles it with
    those globals as constants; its cache files are named after `name`)."""
    fn = types.FunctionType(template.__code__, names, name)
    fn.__qualname__ = name
    fn.__doc__ = template.__doc__
    return fn


def disable_cmov_converter() -> None:
    """Keep conditional moves in loops (x86 only; process-wide, code generation only)."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        llvm.set_option("e3fast", "-x86-cmov-converter=false")


# --- the cache fingerprint --------------------------------------------------------------
# Numba keys a cached function on its own source file; e3fast's compiled functions inline
# code and freeze constants from the modules they import. Every `cache=True` function
# defined in this package (or in a file given to `add_sources`) gets a locator whose source
# stamp is a hash of its file and of every package module it imports, transitively: an
# edit of any of them makes Numba treat the cached entry as stale and compile afresh.
PACKAGE = Path(__file__).resolve().parent
_extra_sources: set[Path] = set()


def add_sources(*paths) -> None:
    """Make files outside the package (e.g. a user's policy module) part of the
    fingerprint of every cached function compiled after this call; functions defined in
    them are cached with the fingerprint too."""
    _extra_sources.update(Path(p).resolve() for p in paths)
    source_stamp.cache_clear()


def _package_root(path: Path) -> Path | None:
    """The top package folder holding file `path` (None for a file outside packages)."""
    root = None
    for parent in path.parents:
        if not (parent / "__init__.py").is_file():
            break
        root = parent
    return root


def _module_file(dotted: str, root: Path) -> Path | None:
    """The file of module `dotted` (e.g. 'e3fast.sim.state') in package folder `root`."""
    parts = dotted.split(".")
    if parts[0] != root.name:
        return None
    base = root.joinpath(*parts[1:])
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


_IMPORT = re.compile(r"^(?:from[ \t]+(\.*)([\w.]*)[ \t]+import[ \t]+(\([^)]*\)|.*(?:\\\n.*)*)"
                     r"|import[ \t]+(.*))", re.MULTILINE)


@functools.lru_cache(maxsize=None)
def _imports(path: Path) -> tuple[Path, ...]:
    """Modules of e3fast (or of `path`'s own package) that file `path` imports at module
    level (compiled code cannot import): module files, and submodules imported by name
    with ``from package import module``. A text scan (an AST costs 5-10 times more)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ()
    root = _package_root(path) or PACKAGE
    package = ""
    if root in path.parents:
        parts = path.with_suffix("").relative_to(root.parent).parts
        package = ".".join(parts[:-1])  # of `path` itself if an __init__.py
    found = []
    for dots, module, names, plain in _IMPORT.findall(text):
        if plain:
            targets = [(m.split()[0], ()) for m in plain.split("#")[0].split(",") if m.strip()]
        else:
            if dots:
                if not package:
                    continue
                up = package.split(".")
                base = ".".join(up[:len(up) - len(dots) + 1])
                module = f"{base}.{module}" if module else base
            names = re.sub(r"#.*", "", names).translate(str.maketrans("()\\,", "    "))
            targets = [(module, tuple(n for n in names.split() if n.isidentifier()))]
        for mod, imported in targets:
            found += [f for name in (mod, *(f"{mod}.{n}" for n in imported))
                      if (f := _module_file(name, root)) is not None]
    return tuple(sorted(set(found)))


def sources_of(path) -> tuple[Path, ...]:
    """`path` and every package module it imports, transitively (sorted)."""
    seen, todo = set(), [Path(path).resolve()]
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo += _imports(f)
    return tuple(sorted(seen))


@functools.lru_cache(maxsize=None)
def source_stamp(path) -> str:
    """The fingerprint of a cached function defined in file `path`: a hash of the contents
    of `sources_of(path)` and of the files given to `add_sources`."""
    h = hashlib.sha256()
    for f in sorted({*sources_of(path), *_extra_sources}):
        root = _package_root(f)
        h.update(str(f.relative_to(root.parent) if root else f).encode())
        h.update(b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


_CacheImpl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
_NUMBA_LOCATORS = tuple(_CacheImpl._locator_classes)


class FingerprintLocator(caching._CacheLocator):
    """Numba's own choice of cache directory (``NUMBA_CACHE_DIR``, else ``__pycache__``
    next to the source, else the user-wide cache folder), with `source_stamp` added to
    the source stamp Numba keeps in each index."""

    def __init__(self, inner, py_file):
        self._inner = inner
        self._stamp = source_stamp(Path(py_file).resolve())

    def ensure_cache_path(self):
        self._inner.ensure_cache_path()

    def get_cache_path(self):
        return self._inner.get_cache_path()

    def get_disambiguator(self):
        return self._inner.get_disambiguator()

    def get_source_stamp(self):
        return self._inner.get_source_stamp(), self._stamp

    @classmethod
    def from_function(cls, py_func, py_file):
        path = Path(py_file).resolve()
        if PACKAGE not in path.parents and path not in _extra_sources:
            return None  # not ours: Numba's locators as usual
        for numba_locator in _NUMBA_LOCATORS:
            inner = numba_locator.from_function(py_func, py_file)
            if inner is not None:
                return cls(inner, path)
        return None


if FingerprintLocator not in _CacheImpl._locator_classes:
    _CacheImpl._locator_classes = [FingerprintLocator, *_NUMBA_LOCATORS]

