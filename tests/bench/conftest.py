"""Shared fixtures of the benchmark suite.

Three sizes:

* quick: when benchmarks are disabled (``make test`` passes ``--benchmark-disable``): tiny
  traces, one round, so every benchmark still runs and cannot rot. No timing is asserted.
* normal: ``make bench`` / ``pytest tests/bench --benchmark-only``: the sizes of the issue
  (1M-request replays, 64k-row blocks, ...).
* full: ``E3FAST_BENCH_FULL=1`` adds the 10M-request replays and the first (uncached) compile.

Benchmark names and groups are fixed (parameter ids, not sizes), so ``--benchmark-compare``
between two commits pairs the same measurements. Per-item numbers (ns per decision,
requests/s, peak memory, ...) are in each benchmark's ``extra_info`` (saved in the JSON of
``--benchmark-autosave``; ``--benchmark-columns`` cannot show them, ``conftest`` prints them
at the end of the session).
"""
import pytest

from benchutil import _REPORT, is_quick


@pytest.fixture(scope="session")
def quick(request) -> bool:
    return is_quick(request.config)


@pytest.fixture(scope="session")
def make_trace(tmp_path_factory):
    """``make_trace(scenario, requests, devices, seed=1, **opts)``: path of a generated trace
    (generated once per session and arguments)."""
    from e3fast.tracefile.generator import GenTraceOptions, generate_trace

    root = tmp_path_factory.mktemp("bench-traces")
    made = {}

    def make(scenario: str, requests: int, devices: int, seed: int = 1, **opts):
        key = (scenario, requests, devices, seed, tuple(sorted(opts.items())))
        if key not in made:
            tag = "-".join(str(x) for x in key[:4]) + "".join(f"-{k}{v}" for k, v in key[4])
            path = root / f"{tag}.h5"
            generate_trace(GenTraceOptions(scenario=scenario, requests=requests, devices=devices,
                                           seed=seed, out=str(path), **opts), progress=False)
            made[key] = path
        return made[key]

    return make


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _REPORT or is_quick(config):
        return
    tr = terminalreporter
    tr.section("e3fast benchmark extra_info (per-item numbers)")
    for name, group, info in _REPORT:
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in info.items())
        tr.write_line(f"[{group}] {name}: {shown}")


def _fmt(v):
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)
