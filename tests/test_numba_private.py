"""The Numba version check and the one cache mechanism (e3fast/numba_private.py, docs/CACHE.md).

The cache test works on a copy of the package in a temporary folder: each step is a new
process that calls two small cached functions and reports Numba's cache hits and misses:
``sim.kernel._learning_config`` (its file's fingerprint is the kernels' fingerprint: same
file) and ``tracefile.reader._is_llm``. Appending a constant to any module either one
imports must make it compile again, and leave the other alone if it does not import it.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import e3fast
from e3fast import numba_private
from e3fast.errors import E3Error

ROOT = Path(__file__).resolve().parents[1]

PROBE = textwrap.dedent("""
    import json
    import numpy as np
    from e3fast.router.config import default_config
    from e3fast.sim import kernel
    from e3fast.tracefile import reader
    kernel._learning_config(default_config())
    reader._is_llm(0, np.zeros(1, np.int16), np.zeros(1, np.int8))
    print(json.dumps({name: [sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values())]
                      for name, f in (("kernel", kernel._learning_config),
                                      ("reader", reader._is_llm))}))
""")
PROBE_FILES = {"kernel": "sim/kernel.py", "reader": "tracefile/reader.py"}


def _probe(pkg_parent: Path, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env={**os.environ, **env, "PYTHONPATH": str(pkg_parent)}, timeout=600,
                         cwd=pkg_parent)
    assert out.returncode == 0, out.stderr
    return {name: ("hit" if hits and not misses else "miss" if misses and not hits else
                   f"{hits} hits, {misses} misses")
            for name, (hits, misses) in json.loads(out.stdout.splitlines()[-1]).items()}


def _copy_package(tmp_path: Path) -> Path:
    dst = tmp_path / "src"
    shutil.copytree(ROOT / "e3fast", dst / "e3fast",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    return dst


def test_an_edit_of_any_module_a_cached_function_imports_recompiles_it(tmp_path):
    src = _copy_package(tmp_path)
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    pkg = src / "e3fast"
    feeds = {name: {p.relative_to(pkg).as_posix()
                    for p in numba_private.sources_of(pkg / f)}
             for name, f in PROBE_FILES.items()}
    assert {"tracefile/schema.py", "router/config.py", "sim/state.py",
            "detect/detectors.py"} <= feeds["kernel"]
    assert {"tracefile/schema.py", "tracefile/rows.py"} <= feeds["reader"]
    assert _probe(src, env) == {"kernel": "miss", "reader": "miss"}  # an empty cache
    assert _probe(src, env) == {"kernel": "hit", "reader": "hit"}    # unchanged: loaded
    for module in sorted(feeds["kernel"] | feeds["reader"]):
        with open(pkg / module, "a", encoding="utf-8") as f:
            f.write("\nE3FAST_TEST_EDITED_CONSTANT = 1\n")
        expect = {name: "miss" if module in feeds[name] else "hit" for name in feeds}
        assert _probe(src, env) == expect, module


def test_a_read_only_package_folder_caches_where_numba_would(tmp_path, monkeypatch):
    """The fingerprint leaves the choice of folder to Numba: with ``__pycache__`` not
    writable (a read-only install; not testable with file modes as root) and no
    ``NUMBA_CACHE_DIR``, Numba's user-wide cache folder."""
    from numba.core import config
    monkeypatch.setattr(config, "CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    in_tree = next(c for c in numba_private._NUMBA_LOCATORS
                   if c.__name__.lstrip("_") == "InTreeCacheLocator")

    def unwritable(self):
        raise PermissionError(13, "read-only", self.get_cache_path())

    monkeypatch.setattr(in_tree, "ensure_cache_path", unwritable)
    from e3fast.sim import kernel
    locator = numba_private.FingerprintLocator.from_function(kernel._run_segment, kernel.__file__)
    assert Path(locator.get_cache_path()).is_relative_to(tmp_path)
    assert locator.get_source_stamp()[1] == numba_private.source_stamp(Path(kernel.__file__))


def test_every_cached_function_of_the_package_carries_the_fingerprint():
    import importlib
    import pkgutil

    from numba.core.dispatcher import Dispatcher
    cached = {}
    for info in pkgutil.walk_packages(e3fast.__path__, "e3fast."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            for disp in value if isinstance(value, tuple) else (value,):
                if isinstance(disp, Dispatcher) and disp._cache.__class__.__name__ != "NullCache":
                    cached[f"{info.name}.{disp.py_func.__name__}"] = disp
    assert "e3fast.sim.kernel.run_segment_e3" in cached
    assert "e3fast.tracefile.reader._is_llm" in cached
    plain = [name for name, disp in cached.items()
             if not isinstance(disp._cache._impl.locator, numba_private.FingerprintLocator)]
    assert plain == [], "import e3fast.numba_private before these are decorated"


def test_an_unchecked_numba_stops_with_one_line(monkeypatch):
    monkeypatch.delenv(numba_private.TRY_ENV, raising=False)
    numba_private.check_numba_version()  # the installed one
    with pytest.raises(E3Error) as err:
        numba_private.check_numba_version("0.99.0")
    assert "\n" not in str(err.value)
    assert "numba 0.99.0" in str(err.value) and numba_private.TRY_ENV in str(err.value)
    monkeypatch.setenv(numba_private.TRY_ENV, "1")
    numba_private.check_numba_version("0.99.0")


def test_the_cli_reports_an_unchecked_numba_in_one_line(tmp_path):
    code = ("import sys, numba; numba.__version__ = '0.99.1'\n"
            "from e3fast.cli import main; sys.exit(main(['inspect', 'nothing.h5']))")
    env = {k: v for k, v in os.environ.items() if k != numba_private.TRY_ENV}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "numba 0.99.1" in out.stderr
    assert "Traceback" not in out.stderr


def test_setup_bounds_are_the_checked_numba_series():
    text = (ROOT / "setup.py").read_text()
    lo, hi = numba_private.CHECKED_NUMBA
    found = re.search(r'"numba>=(\d+)\.(\d+),<(\d+)\.(\d+)"', text)
    assert found, "setup.py: numba needs a lower and an upper bound"
    assert tuple(map(int, found.groups())) == (*lo, hi[0], hi[1] + 1)
    assert re.search(r'"llvmlite>=[\d.]+,<[\d.]+"', text)
