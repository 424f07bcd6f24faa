"""The lower-bound reference (sim.bound): exact per request against a slow, obvious
computation, streamed blocks equal one block, and a bound on every policy (hypothesis over
random small worlds through the kernel)."""
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e3fast.cli import main
from e3fast.runner import replay
from e3fast.sim import reference as ref
from e3fast.sim.bound import MultiplierBounds, bound_block
from e3fast.tracefile.writer import write_trace

POLICIES = (("rr", "none"), ("jsq", "none"), ("sect", "none"), ("oracle", "none"), ("e3", "rule"))


def slow_bound(env, req):
    """Per request: (latency, ttft) bounds and whether it is served, written plainly: every
    device that hosts the model and is online at some time >= arrival, the drift and the
    semantic factor each at their smallest over the times where they can change from the
    arrival on (the arrival, later drift knots, later window edges)."""
    n = len(req["arrival_s"])
    lat, ttft, served = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, bool)
    for i in range(n):
        t, m, k = float(req["arrival_s"][i]), int(req["model"][i]), int(req["klass"][i])
        n_in, n_out, z = int(req["in_tokens"][i]), int(req["out_tokens"][i]), float(req["z"][i])
        best = best_pre = math.inf
        for d in range(len(env.device_type)):
            join, leave = float(env.join_s[d]), float(env.leave_s[d])
            if not env.hosts[d, m] or not max(join, t) < leave:
                continue
            if join <= t < leave:
                served[i] = True
            tp = int(env.device_type[d])
            knots = [float(x) for x in env.drift_t_s[env.drift_ptr[d]:env.drift_ptr[d + 1]]]
            edges = [float(x) for w in range(len(env.sem_factor))
                     if env.sem_device_type[w] == tp and env.sem_klass[w] == k
                     for x in (env.sem_t0_s[w], env.sem_t1_s[w])]
            drift = min(ref.drift_factor(env, d, s) for s in [t] + [x for x in knots if x > t])
            sem = min(ref.semantic_factor(env, tp, k, s)
                      for s in [t] + [x for x in edges if t < x < math.inf])
            a, b, c, sigma = ref._priors(env, d, m)
            f = drift * sem * math.exp(sigma * z - sigma * sigma / 2)
            best = min(best, (a + c * n_in) * f + b * n_out * f)
            best_pre = min(best_pre, (a + c * n_in) * f)
        if served[i]:
            lat[i], ttft[i] = best, best_pre
    return lat, ttft, served


def true_best_alone(env, req, i, times):
    """The smallest true mean-noise service of request i over devices and start times."""
    t, m = float(req["arrival_s"][i]), int(req["model"][i])
    out = math.inf
    for d in range(len(env.device_type)):
        if env.hosts[d, m] and max(float(env.join_s[d]), t) < float(env.leave_s[d]):
            for s in times[times >= t]:
                pre, dec = ref.service_parts(env, d, m, int(req["in_tokens"][i]),
                                             int(req["out_tokens"][i]), int(req["klass"][i]),
                                             float(req["z"][i]), float(s))
                out = min(out, pre + dec)
    return out


def _block(env, req):
    cols = [req[k] for k in ("arrival_s", "model", "in_tokens", "out_tokens", "klass", "z")]
    return bound_block(env, MultiplierBounds(env), *cols)


@pytest.mark.parametrize("seed", range(6))
def test_bound_equals_slow_computation_per_request(seed):
    env, req = ref.random_case(np.random.default_rng(seed), 40, load=0.8)
    lat, ttft, tpot, device, served = _block(env, req)
    slat, sttft, sserved = slow_bound(env, req)
    assert (served == sserved).all() and (device[~served] == -1).all()
    np.testing.assert_allclose(lat[served], slat[served], rtol=1e-12)
    np.testing.assert_allclose(ttft[served], sttft[served], rtol=1e-12)
    assert np.isnan(lat[~served]).all()
    # and it is at most the true service alone at any start time on a fine grid
    grid = np.linspace(0, float(req["arrival_s"][-1]) * 1.5, 301)
    for i in np.flatnonzero(served)[:10]:
        assert lat[i] <= true_best_alone(env, req, i, np.append(grid, req["arrival_s"][i])) * (1 + 1e-12)


def test_tiny_trace_summary_streams(tmp_path, tiny_env):
    """replay --policy lower-bound on the tiny environment: the summary equals the per-request
    bounds, and blocks of 3 rows give what one block gives."""
    rng = np.random.default_rng(5)
    n = 50
    model = rng.integers(0, 3, n).astype(np.int16)
    diff = model == 2
    req = {"arrival_s": np.sort(rng.uniform(0, 100, n)), "model": model,
           "in_tokens": np.where(diff, 0, rng.integers(1, 500, n)).astype(np.int32),
           "out_tokens": rng.integers(1, 40, n).astype(np.int32),
           "klass": rng.integers(0, 3, n).astype(np.int16), "z": rng.standard_normal(n)}
    path = tmp_path / "tiny.h5"
    write_trace(path, tiny_env, req, scenario="tiny", seed=0, params={}, force=True)
    slat, sttft, served = slow_bound(tiny_env, req)
    a = replay(path, "lower-bound", block_rows=3).summary
    b = replay(path, "lower-bound", block_rows=1000).summary
    for key in ("mean_latency_s", "p50_latency_s", "p99_latency_s", "mean_ttft_s", "completed",
                "dropped"):
        assert a[key] == b[key]
    assert a["completed"] == served.sum() and a["dropped"] == (~served).sum()
    assert a["mean_latency_s"] == pytest.approx(slat[served].mean(), rel=1e-12)
    llm = served & ~(model == 2)
    assert a["mean_ttft_s"] == pytest.approx(sttft[llm].mean(), rel=1e-12)
    assert a["reference"] == "lower-bound" and a["stutter_rate"] is None
    assert main(["replay", str(path), "--policy", "lower-bound", "--out", str(tmp_path / "o"),
                 "--quiet"]) == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["policy"] == "lower-bound" and s["mean_latency_s"] == a["mean_latency_s"]
    assert main(["report", str(tmp_path / "o")]) == 0


def test_per_request_refused_for_the_bound(tmp_path, capsys):
    assert main(["replay", "x.h5", "--policy", "lower-bound", "--per-request",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--per-request" in capsys.readouterr().err


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2 ** 32 - 1), n=st.integers(1, 60), load=st.floats(0.2, 1.5),
       grid=st.sampled_from([None, 0.5]), dyadic=st.booleans())
def test_bound_below_every_policy(seed, n, load, grid, dyadic):
    """On random small worlds (churn, drift ramps and steps, semantic windows): every
    completed request's latency under every policy is >= its bound; the bound's mean is <=
    the policy's mean over the same requests, and <= its mean when they completed the same."""
    env, req = ref.random_case(np.random.default_rng(seed), n, load=load, grid_s=grid,
                               dyadic=dyadic)
    lat, ttft, _, _, served = _block(env, req)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.h5"
        write_trace(path, env, req, scenario="property", seed=0, params={}, force=True)
        lb = replay(path, "lower-bound", block_rows=7).summary
        for policy, ctl in POLICIES:
            res = replay(path, policy, controller=ctl, per_request=True, block_rows=7)
            pr, s = res.per_request, res.summary
            done = pr.device >= 0
            assert not (done & ~served).any()  # the bound serves whatever a policy serves
            got = pr.completion_s[done] - req["arrival_s"][done]
            assert (got >= lat[done] * (1 - 1e-9)).all(), policy
            llm = done & (np.asarray(env.model_kind)[req["model"]] == 0)
            assert (pr.ttft_s[llm] >= ttft[llm] * (1 - 1e-9)).all(), policy
            if done.any():
                assert lat[done].mean() <= s["mean_latency_s"] * (1 + 1e-9)
            if s["completed"] == lb["completed"] and lb["completed"]:
                assert lb["mean_latency_s"] <= s["mean_latency_s"] * (1 + 1e-9), policy
                # quantiles: up to one histogram bucket (a latency one ulp below a bucket edge)
                assert lb["p99_latency_s"] <= s["p99_latency_s"] * (1 + 2 ** -7), policy
