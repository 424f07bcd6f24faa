"""Block-size independence: a replay does not depend on how the trace is streamed.

A 301,200-request trace with churn (devices leaving with queues after a burst of
arrivals, devices joining, one joining and leaving later) and hidden drift (a ramp, a step with recovery, a step down) is
replayed with blocks of 1,000, 65,536 and 1,000,000 rows. The summary metrics, the
per-window time series and the per-request arrays are identical bit for bit, for sect,
oracle, random and e3 (controller "none", and "rule": its checkpoints, tool calls and the
times its actions take effect do not depend on the block size either).
"""
import dataclasses

import numpy as np
import pytest

from e3fast.runner import TIMING_KEYS, replay
from e3fast.sim.reference import random_case
from e3fast.tracefile.writer import write_trace

N = 300_000
N_TOTAL = N + 3 * 400  # with the bursts before departures
BLOCKS = (1_000, 65_536, 1_000_000)
CONFIGS = [("sect", "none"), ("oracle", "none"), ("random", "none"), ("e3", "none"),
           ("e3", "rule")]


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    rng = np.random.default_rng(42)
    env, req = random_case(rng, N, load=0.5, n_types=3, n_models=3, n_classes=3, n_devices=8,
                           churn=False, drift=False, semantic=True)
    H = float(req["arrival_s"][-1])
    join = np.zeros(8)
    leave = np.full(8, np.inf)
    leave[0], leave[5] = 0.30 * H, 0.50 * H
    join[6], join[7], leave[7] = 0.40 * H, 0.60 * H, 0.90 * H
    knots = {0: [(0.2 * H, 1.0), (0.4 * H, 3.0)],                             # ramp
             3: [(0.5 * H, 1.0), (0.5 * H, 4.0), (0.7 * H, 4.0), (0.7 * H, 1.0)],  # step, recovery
             4: [(0.65 * H, 1.0), (0.65 * H, 0.5)]}                             # faster
    kt, km, ptr = [], [], [0]
    for d in range(8):
        kt += [t for t, _ in knots.get(d, [])]
        km += [m for _, m in knots.get(d, [])]
        ptr.append(len(kt))
    # a burst of 400 requests in the 2 s before each departure: devices leave with queues
    burst = np.concatenate([rng.uniform(t - 2.0, t, 400) for t in leave[np.isfinite(leave)]])
    rows = rng.integers(0, N, burst.size)
    req = {k: np.concatenate([v, burst if k == "arrival_s" else v[rows]])
           for k, v in req.items()}
    order = np.argsort(req["arrival_s"], kind="stable")
    req = {k: v[order] for k, v in req.items()}
    env = dataclasses.replace(env, join_s=join, leave_s=leave,
                              drift_ptr=np.array(ptr, np.int64), drift_t_s=np.array(kt),
                              drift_mult=np.array(km))
    path = tmp_path_factory.mktemp("blocks") / "churn-drift.h5"
    write_trace(path, env, req, scenario="test", seed=42, params={}, force=True)
    return path


def comparable(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMING_KEYS and k != "block_rows"}


def same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("policy,controller", CONFIGS, ids=[f"{p}-{c}" for p, c in CONFIGS])
def test_results_do_not_depend_on_block_size(trace, policy, controller):
    runs = [replay(trace, policy, controller=controller, per_request=True, block_rows=b,
                   seed=5) for b in BLOCKS]
    first = runs[0]
    s0 = comparable(first.summary)
    assert s0["requests"] == N_TOTAL
    assert s0["completed"] + s0["dropped"] == N_TOTAL
    assert s0["reroute_events"] > 20 and s0["device_leaves"] == 3 and s0["device_joins"] == 2
    for b, run in zip(BLOCKS[1:], runs[1:]):
        # summary dicts compared as text: NaN == NaN, and floats bit for bit (repr round-trips)
        assert repr(comparable(run.summary)) == repr(s0), b
        assert same(run.windows, first.windows), b
        for f in first.per_request._fields:
            assert same(getattr(run.per_request, f), getattr(first.per_request, f)), (b, f)
        assert repr(run.control_log) == repr(first.control_log), b
    if controller == "rule":
        applied = sum(len(r.get("applied_s", [])) for r in first.control_log)
        assert len(first.control_log) > 5 and applied > 0, "the rule controller never acted"
        assert s0["alarms"] > 0
