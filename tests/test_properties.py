"""Property-based tests (hypothesis) of the kernel over random small worlds.

Each example draws a fleet of 1-5 devices (1-2 types, 1-3 models, random hosting), join and
leave times (on a coarse grid half of the time, so they tie with arrivals), drift knots
(steps and ramps), semantic windows, up to 60 requests and a policy (rr, random, jsq, sect,
oracle, or e3 with the "none" or "rule" controller). Then, from the per-request output:

* every request ends exactly once: completed + dropped == n, and a request has a device
  (>= 0) with finite start/completion xor it is dropped (device -1, no start/completion);
* FIFO per device: in start order, each request starts exactly when Lindley's recursion
  says (``start = max(dispatch, completion of the previous one)``, the first at its
  dispatch), so services never overlap, and start order equals dispatch order;
* latency >= service time >= 0, and arrival <= dispatch <= start;
* no service on an offline device: join_s <= start and completion <= leave_s;
* the summary and per-window metrics equal those recomputed from the per-request output
  (counts exactly, mean latency to 1e-9 relative).

For the policies of the reference simulator, a second property: kernel == reference, bit for
bit, on the same random worlds. ``E3FAST_HYPOTHESIS_EXAMPLES`` raises the example count.
"""
import math
import os
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e3fast.runner import replay
from e3fast.sim.metrics import WINDOW_FIELDS
from e3fast.sim.reference import simulate, summarize_requests
from e3fast.tracefile.schema import MODEL_KIND_DIFFUSION, MODEL_KIND_LLM, Env
from e3fast.tracefile.writer import write_trace

EXAMPLES = int(os.environ.get("E3FAST_HYPOTHESIS_EXAMPLES", "80"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HORIZON = 20.0

# times: on a 0.5 s grid (ties between arrivals, joins, leaves, knots) or anywhere
times = st.one_of(st.integers(0, 40).map(lambda k: k * 0.5),
                  st.floats(0.0, HORIZON, allow_nan=False, allow_infinity=False))


@st.composite
def worlds(draw):
    """(env, requests): a valid random environment and trace columns."""
    T = draw(st.integers(1, 2))
    M = draw(st.integers(1, 3))
    C = draw(st.integers(1, 2))
    D = draw(st.integers(1, 5))
    kind = np.array(draw(st.lists(st.sampled_from([MODEL_KIND_LLM, MODEL_KIND_DIFFUSION]),
                                  min_size=M, max_size=M)), np.int8)
    avail = np.array(draw(st.lists(st.booleans(), min_size=T * M, max_size=T * M))).reshape(T, M)
    for t in range(T):
        if not avail[t].any():
            avail[t, draw(st.integers(0, M - 1))] = True
    pos = lambda lo, hi: st.floats(lo, hi, allow_nan=False, allow_infinity=False)  # noqa: E731
    grid = lambda lo, hi: st.lists(pos(lo, hi), min_size=T * M, max_size=T * M).map(  # noqa
        lambda v: np.array(v).reshape(T, M))
    a, b, c = draw(grid(0.01, 2.0)), draw(grid(0.0, 0.2)), draw(grid(0.0, 1e-3))
    sigma = np.array(draw(st.lists(st.sampled_from([0.0, 0.1, 0.5]), min_size=T * M,
                                   max_size=T * M))).reshape(T, M)
    a, b, c, sigma = (np.where(avail, x, np.nan) for x in (a, b, c, sigma))
    dtype = np.array(draw(st.lists(st.integers(0, T - 1), min_size=D, max_size=D)), np.int32)
    hosts = np.array(draw(st.lists(st.booleans(), min_size=D * M, max_size=D * M))).reshape(D, M)
    hosts &= avail[dtype]
    for d in range(D):
        if not hosts[d].any():
            hosts[d, np.flatnonzero(avail[dtype[d]])[0]] = True
    join, leave = np.zeros(D), np.full(D, np.inf)
    kt, km, ptr = [], [], [0]
    for d in range(D):
        if draw(st.booleans()):
            join[d] = draw(times)
        if draw(st.booleans()):
            leave[d] = max(join[d], draw(times))
        ts = sorted(draw(st.lists(times, max_size=4)))
        kt += ts
        km += draw(st.lists(pos(0.25, 4.0), min_size=len(ts), max_size=len(ts)))
        ptr.append(len(kt))
    W = draw(st.integers(0, 2))
    t0 = [draw(times) for _ in range(W)]
    t1 = [t + draw(st.one_of(st.just(np.inf), pos(0.5, HORIZON))) for t in t0]
    env = Env(models=[f"m{m}" for m in range(M)], model_kind=kind,
              classes=[f"k{k}" for k in range(C)], device_types=[f"t{t}" for t in range(T)],
              prior_a=a, prior_b=b, prior_c=c, prior_sigma=sigma, prior_available=avail,
              device_type=dtype, hosts=hosts, join_s=join, leave_s=leave,
              drift_ptr=np.array(ptr, np.int64), drift_t_s=np.array(kt, float),
              drift_mult=np.array(km, float),
              sem_device_type=np.array([draw(st.integers(0, T - 1)) for _ in range(W)], np.int32),
              sem_klass=np.array([draw(st.integers(0, C - 1)) for _ in range(W)], np.int16),
              sem_t0_s=np.array(t0, float), sem_t1_s=np.array(t1, float),
              sem_factor=np.array([draw(pos(0.25, 8.0)) for _ in range(W)]))
    n = draw(st.integers(1, 60))
    arrival = np.sort(np.array([draw(times) for _ in range(n)]))
    model = np.array(draw(st.lists(st.integers(0, M - 1), min_size=n, max_size=n)), np.int16)
    diff = kind[model] == MODEL_KIND_DIFFUSION
    n_in = np.array(draw(st.lists(st.integers(1, 2000), min_size=n, max_size=n)), np.int32)
    req = {"arrival_s": arrival, "model": model, "in_tokens": np.where(diff, 0, n_in),
           "out_tokens": np.array(draw(st.lists(st.integers(1, 60), min_size=n, max_size=n)),
                                  np.int32),
           "klass": np.array(draw(st.lists(st.integers(0, C - 1), min_size=n, max_size=n)),
                             np.int16),
           "z": np.array(draw(st.lists(pos(-3.0, 3.0), min_size=n, max_size=n)))}
    return env, req


def run_kernel(env, req, policy, controller="none", seed=0, block_rows=7):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.h5"
        write_trace(path, env, req, scenario="property", seed=0, params={}, force=True)
        return replay(path, policy, controller=controller, seed=seed, per_request=True,
                      block_rows=block_rows)


def check_properties(env, req, res):
    s, pr = res.summary, res.per_request
    n = len(req["arrival_s"])
    arrival = req["arrival_s"]
    dev = pr.device.astype(np.int64)
    done = dev >= 0
    # every request ends exactly once
    assert s["requests"] == n
    assert s["completed"] + s["dropped"] == n
    assert s["completed"] == done.sum() and s["dropped"] == (~done).sum()
    assert np.isfinite(pr.start_s[done]).all() and np.isfinite(pr.completion_s[done]).all()
    assert np.isnan(pr.start_s[~done]).all() and np.isnan(pr.completion_s[~done]).all()
    assert np.isfinite(pr.dispatch_s).all()
    # causality and latency >= service time >= 0
    assert (pr.dispatch_s >= arrival).all()
    assert (pr.start_s[done] >= pr.dispatch_s[done]).all()
    service = pr.completion_s[done] - pr.start_s[done]
    latency = pr.completion_s[done] - arrival[done]
    assert (service >= 0).all() and (latency >= service).all()
    # no service on an offline device
    assert (pr.start_s[done] >= env.join_s[dev[done]]).all()
    assert (pr.completion_s[done] <= env.leave_s[dev[done]]).all()
    # FIFO per device: Lindley's recursion in start order; start order = dispatch order
    for d in np.unique(dev[done]):
        rows = np.flatnonzero(dev == d)
        rows = rows[np.lexsort((pr.dispatch_s[rows], pr.completion_s[rows], pr.start_s[rows]))]
        st_, co, di = pr.start_s[rows], pr.completion_s[rows], pr.dispatch_s[rows]
        assert st_[0] == di[0]
        assert (st_[1:] == np.maximum(di[1:], co[:-1])).all(), d
        assert (st_[1:] >= co[:-1]).all() and (np.diff(di) >= 0).all(), d
    # stutter: LLM requests whose decode time per output token exceeds the threshold
    llm = (env.model_kind[req["model"]] == MODEL_KIND_LLM) & done
    assert (pr.stutter[~llm] == 0).all()
    assert (pr.stutter[llm] == (pr.tpot_s[llm] > 0.1)).all()
    assert np.isnan(pr.tpot_s[~llm]).all()
    # summary metrics == recomputed from per-request output
    assert s["device_completed"] == np.bincount(dev[done], minlength=len(env.device_type)).tolist()
    r = summarize_requests(pr, req, env.model_kind)
    for key in ("completed", "dropped", "rerouted", "reroute_events", "llm_completed",
                "stutter_rate"):
        assert s[key] == r[key], key
    for key in ("mean_latency_s", "mean_ttft_s", "mean_wait_s", "mean_service_s"):
        if math.isnan(r[key]):
            assert math.isnan(s[key]), key
        else:
            assert math.isclose(s[key], r[key], rel_tol=1e-9, abs_tol=1e-12), key
    # per-window series (windows by arrival time)
    win = res.windows
    w_of = np.clip((arrival / res.window_s).astype(np.int64), 0, win.shape[0] - 1)
    col = {name: j for j, name in enumerate(WINDOW_FIELDS)}
    count = lambda mask: np.bincount(w_of[mask], minlength=win.shape[0])  # noqa: E731
    assert (win[:, col["completed"]] == count(done)).all()
    assert (win[:, col["dropped"]] == count(~done)).all()
    assert (win[:, col["llm_completed"]] == count(llm)).all()
    assert (win[:, col["stutter"]] == count(llm & (pr.stutter == 1))).all()
    assert (win[:, col["rerouted"]] == count(done & (pr.reroutes > 0))).all()
    lat_sum = np.bincount(w_of[done], weights=latency, minlength=win.shape[0])
    assert np.allclose(win[:, col["latency_sum_s"]], lat_sum, rtol=1e-9, atol=1e-9)


POLICY_RUNS = st.sampled_from([("rr", "none"), ("random", "none"), ("jsq", "none"),
                               ("sect", "none"), ("oracle", "none"), ("e3", "none"),
                               ("e3", "rule")])


@SETTINGS
@given(world=worlds(), run=POLICY_RUNS, seed=st.integers(0, 2**32 - 1),
       block_rows=st.sampled_from([1, 7, 1000]))
def test_kernel_properties(world, run, seed, block_rows):
    env, req = world
    policy, controller = run
    check_properties(env, req, run_kernel(env, req, policy, controller, seed, block_rows))


@SETTINGS
@given(world=worlds(), policy=st.sampled_from(["rr", "random", "jsq", "sect", "oracle"]),
       seed=st.integers(0, 2**32 - 1))
def test_kernel_equals_reference_on_random_worlds(world, policy, seed):
    env, req = world
    k = run_kernel(env, req, policy, seed=seed).per_request
    r = simulate(env, req, policy, seed=seed)
    for f in r._fields:
        a, b = getattr(k, f), getattr(r, f)
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), (f, a, b)


@SETTINGS
@given(x=st.floats(min_value=0.0, max_value=1e9, allow_nan=False),
       y=st.floats(min_value=0.0, max_value=1e9, allow_nan=False))
def test_histogram_buckets_are_monotone_and_their_midpoints_close(x, y):
    """bucket() is monotone in the duration, and within (HIST_MIN_S, HIST_MAX_S) the bucket's
    representative value is within QUANTILE_RELATIVE_ERROR (relative) of every duration in it."""
    from e3fast.sim.metrics import (HIST_BUCKETS, HIST_MAX_S, HIST_MIN_S,
                                    QUANTILE_RELATIVE_ERROR, bucket, bucket_value)
    bx, by = bucket(x), bucket(y)
    assert 0 <= bx < HIST_BUCKETS
    assert (bx <= by) if x <= y else (bx >= by)
    if HIST_MIN_S < x < HIST_MAX_S:
        assert abs(bucket_value(np.array([bx]))[0] / x - 1) <= QUANTILE_RELATIVE_ERROR
