"""Helpers of the benchmark suite (imported by the test modules and conftest.py)."""
import os
import time

FULL = os.environ.get("E3FAST_BENCH_FULL", "") == "1"
_REPORT = []


def is_quick(config) -> bool:
    """True when benchmarks are disabled: run each benchmark once on tiny inputs."""
    return bool(config.getoption("benchmark_disable", default=False))


def pick(quick: bool, q, normal, full=None):
    """`q` in quick mode, `full` with E3FAST_BENCH_FULL=1 (when given), else `normal`."""
    if quick:
        return q
    return full if FULL and full is not None else normal


def record(benchmark, **info):
    """Add `info` to the benchmark's extra_info and to the end-of-session summary."""
    benchmark.extra_info.update(info)
    _REPORT.append((benchmark.name, benchmark.group, dict(benchmark.extra_info)))


def best_seconds(benchmark, fallback: float) -> float:
    """Fastest round measured by pytest-benchmark (`fallback` when benchmarks are disabled)."""
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        return float(stats.stats.min)
    return float(fallback)


def timed(fn, *args, **kwargs):
    """(result, seconds) of one call."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
