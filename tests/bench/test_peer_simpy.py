"""Peer comparison: the same model written plainly in SimPy (``e3fast.bench.peer_simpy``)
and the simplest Numba SECT loop (``e3fast.bench.limit``), on the same static trace.

The model: Poisson arrivals (cold-start trace: no churn, no drift ramps or steps, no
semantic windows; each device keeps its hidden instance factor), FIFO devices, SECT dispatch
on known service times (queued work known exactly, the new request's true mean service),
lognormal service. In e3fast that is the ``oracle`` policy. ``sect`` is not: it estimates
queued work from prior means.

* ``test_peer_latencies_agree``: per-request latencies of e3fast (oracle), SimPy and the
  limit loop agree to 1e-9 s (a correctness check: it runs in every mode).
* ``test_peer_speed``: benchmarks the e3fast replay (end to end from HDF5, per-request output
  off) and records, measured in the same test, the SimPy run (trace already in memory) and
  the limit loop (in memory): ``ratio_vs_simpy`` = e3fast requests/s / SimPy requests/s,
  ``limit_over_e3fast`` = limit loop requests/s / e3fast requests/s.
"""
import numpy as np
import pytest

from benchutil import best_seconds, pick, record


@pytest.fixture(scope="module")
def peer_trace(make_trace, quick):
    return make_trace("cold-start", pick(quick, 3_000, 200_000, 1_000_000), 8, seed=7)


def test_peer_latencies_agree(peer_trace):
    from e3fast.bench.limit import run_limit
    from e3fast.bench.peer_simpy import run_simpy, static_trace_problems
    from e3fast.runner import replay
    from e3fast.tracefile.reader import open_trace

    with open_trace(peer_trace) as tr:
        assert static_trace_problems(tr.env) == []
        arrival = tr.read_all()["arrival_s"]
    n = min(len(arrival), 50_000)  # SimPy is slow: the first 50k requests of the trace
    r = replay(peer_trace, "oracle", per_request=True)
    assert r.summary["dropped"] == 0 and (r.per_request.device >= 0).all()
    ours = r.per_request.completion_s - arrival
    simpy_lat = run_simpy(peer_trace, limit=n)["latency"]
    limit_lat = run_limit(peer_trace, repeat=1, latencies=True)["latency"]
    assert not np.isnan(simpy_lat).any()
    # arrivals after request n do not change requests <= n (FIFO, online router): compare
    # the SimPy prefix with the full e3fast run
    assert np.max(np.abs(simpy_lat - ours[:n])) <= 1e-9
    assert np.max(np.abs(limit_lat - ours)) <= 1e-9


def test_peer_speed(benchmark, quick, peer_trace):
    from e3fast.bench.limit import run_limit
    from e3fast.bench.peer_simpy import run_simpy
    from e3fast.runner import ensure_compiled, replay

    ensure_compiled()
    runs = []
    benchmark.group = "peer"
    benchmark.pedantic(lambda: runs.append(replay(peer_trace, "oracle").summary),
                       rounds=pick(quick, 1, 3), iterations=1)
    n = runs[0]["requests"]
    simpy = run_simpy(peer_trace)
    limit = run_limit(peer_trace, repeat=3)
    ours = n / best_seconds(benchmark, min(s["wall_s"] for s in runs))
    if benchmark.enabled:
        record(benchmark, requests=n, e3fast_requests_per_s=ours,
               simpy_requests_per_s=simpy["requests_per_s"], simpy_s=simpy["seconds"],
               limit_requests_per_s=limit["requests_per_s"],
               ratio_vs_simpy=ours / simpy["requests_per_s"],
               limit_over_e3fast=limit["requests_per_s"] / ours)
