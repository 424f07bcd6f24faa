"""The Numba kernel against the pure-Python reference simulator (e3fast.sim.reference).

* Hand-computed cases: exact start/completion times from the service formula (drift ramp and
  step, semantic window, lognormal factor) and the tie-breaking rules (a completion at the
  instant its device leaves is not rerouted; a join comes before a leave at the same instant
  and both before an arrival), for the kernel and the reference alike.
* Random small worlds (200..3000 requests, 1..6 devices of 1..3 types, churn incl. devices
  leaving with a queue and joining/leaving at one instant, drift ramps and steps, semantic
  windows, models nobody online hosts): per-request results of the kernel equal the
  reference's EXACTLY (bit for bit, NaN for NaN) for rr, random, jsq, sect and oracle, with
  output lengths hidden from the routers (predicted from completions) and exact. Both
  evaluate every quantity with the same floating-point operations in the same order
  (``done = start + prefill + decode``, the SECT backlog updated in the same sequence), so
  no tolerance is needed; a tolerance would also hide routing differences on near ties.
* "Dyadic" worlds (service times exact binary fractions, arrivals and events on a 1 s
  grid) where completions, arrivals and joins/leaves coincide, to exercise the ties.
* The kernel's summary equals the metrics recomputed from the reference's per-request output
  (counts exactly, means to 1e-12 relative: only the summation order differs, quantiles
  within the histogram's stated relative error).
"""
import math

import numpy as np
import pytest

from e3fast.runner import replay
from e3fast.sim.metrics import QUANTILE_RELATIVE_ERROR
from e3fast.sim.reference import (LENGTH_INFO, POLICIES, random_case, simulate, simulate_trace,
                                  summarize_requests)
from e3fast.tracefile.schema import MODEL_KIND_LLM, Env
from e3fast.tracefile.writer import write_trace

N_RANDOM = 12
N_DYADIC = 6
FIELDS = ("device", "dispatch_s", "start_s", "completion_s", "ttft_s", "tpot_s", "stutter",
          "reroutes")


def random_world(case: int):
    rng = np.random.default_rng(case)
    return random_case(rng, int(rng.integers(200, 3001)))


def dyadic_world(case: int):
    rng = np.random.default_rng(1000 + case)
    return random_case(rng, int(rng.integers(300, 1500)), grid_s=1.0, dyadic=True, n_types=1,
                       n_devices=int(rng.integers(2, 6)), load=float(rng.uniform(0.5, 1.0)))


WORLDS = [("random", i) for i in range(N_RANDOM)] + [("dyadic", i) for i in range(N_DYADIC)]


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """World id -> (trace path, env, requests), written once per module."""
    folder = tmp_path_factory.mktemp("reference")
    out = {}
    for kind, i in WORLDS:
        env, req = (random_world if kind == "random" else dyadic_world)(i)
        path = folder / f"{kind}-{i}.h5"
        write_trace(path, env, req, scenario="test", seed=i, params={"world": kind}, force=True)
        out[(kind, i)] = (path, env, req)
    return out


def assert_same(kernel, ref, context=""):
    """Per-request arrays equal bit for bit (NaN equals NaN), with a readable first diff."""
    for f in FIELDS:
        a, b = np.asarray(getattr(kernel, f)), np.asarray(getattr(ref, f))
        assert a.shape == b.shape, (context, f)
        same = (a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else a == b
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            pytest.fail(f"{context}: {f} differs at request {i} of {a.size} "
                        f"({(~same).sum()} rows): kernel {a[i]!r}, reference {b[i]!r}; "
                        f"kernel device {kernel.device[i]}, reference device {ref.device[i]}")


def kernel_run(path, policy, seed=0, block_rows=97, length_info="hidden"):
    return replay(path, policy, seed=seed, per_request=True, controller="none",
                  block_rows=block_rows, length_info=length_info)


# --- random worlds: kernel == reference, every policy ---------------------------------------

@pytest.mark.parametrize("length_info", LENGTH_INFO)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("world", WORLDS, ids=[f"{k}{i}" for k, i in WORLDS])
def test_kernel_equals_reference(traces, world, policy, length_info):
    path, env, req = traces[world]
    seed = 7 + world[1]
    res = kernel_run(path, policy, seed=seed, length_info=length_info)
    ref = simulate_trace(path, policy, seed=seed, length_info=length_info)
    assert_same(res.per_request, ref, f"{world} {policy} {length_info}")


def test_hidden_lengths_change_sect_routing(traces):
    """The two information models really differ: SECT routes some requests elsewhere when
    it is handed predicted instead of true output lengths (in the kernel and the
    reference alike, by the test above)."""
    changed = 0
    for world in [("random", 0), ("random", 1), ("random", 2)]:
        path = traces[world][0]
        hidden = simulate_trace(path, "sect", length_info="hidden").device
        exact = simulate_trace(path, "sect", length_info="exact").device
        changed += int((hidden != exact).sum())
    assert changed > 0


def test_worlds_cover_the_interesting_cases(traces):
    """The random worlds really contain drops, reroutes (incl. devices leaving with a
    queue), joins, drift steps, semantic windows, exact ties of event times, and requests
    paused by a failure (started before one, or inside one)."""
    drops = reroutes = joins = steps = windows = ties = queued_moves = 0
    paused_in = started_in = 0
    for (kind, i), (path, env, req) in traces.items():
        ref = simulate_trace(path, "sect")
        drops += int((ref.device < 0).sum())
        reroutes += int((ref.reroutes > 0).sum())
        queued_moves += int((ref.reroutes > 0).sum() > 1)  # > 1 request moved: a queue left
        joins += int((env.join_s > 0).sum())
        steps += int((np.diff(env.drift_t_s) == 0).sum())
        windows += len(env.sem_factor)
        done = ref.completion_s[ref.device >= 0]
        ties += int(np.isin(done, req["arrival_s"]).sum())
        for r in np.flatnonzero(ref.device >= 0):
            d = ref.device[r]
            lo, hi = env.fail_ptr[d], env.fail_ptr[d + 1]
            t0, t1 = env.fail_t0_s[lo:hi], env.fail_t1_s[lo:hi]
            started_in += int(((t0 <= ref.start_s[r]) & (ref.start_s[r] < t1)).any())
            paused_in += int(((ref.start_s[r] < t0) & (t0 < ref.completion_s[r])).any())
    assert min(drops, reroutes, joins, steps, windows, ties, queued_moves, paused_in,
               started_in) > 0, (drops, reroutes, joins, steps, windows, ties, queued_moves,
                                 paused_in, started_in)


@pytest.mark.parametrize("policy", POLICIES)
def test_summary_equals_metrics_of_reference(traces, policy):
    """summary.json numbers == those recomputed from the reference's per-request output."""
    for world in [("random", 0), ("random", 4), ("dyadic", 1)]:
        path, env, req = traces[world]
        s = kernel_run(path, policy, seed=3).summary
        r = summarize_requests(simulate_trace(path, policy, seed=3), req, env.model_kind)
        for key in ("requests", "completed", "dropped", "rerouted", "reroute_events",
                    "llm_completed", "stutter_rate"):
            assert s[key] == r[key], (world, policy, key)
        for key in ("mean_latency_s", "mean_wait_s", "mean_service_s", "mean_ttft_s",
                    "mean_tpot_s"):
            assert s[key] == pytest.approx(r[key], rel=1e-12, nan_ok=True), (world, key)
        # histogram quantiles: the mid-point of a log-linear bucket (2**-8 relative width)
        err = QUANTILE_RELATIVE_ERROR + 1e-12
        for key in ("p50_latency_s", "p95_latency_s", "p99_latency_s"):
            assert abs(s[key] / r[key] - 1) <= err, (world, key, s[key], r[key])
        assert s["quantile_relative_error"] == QUANTILE_RELATIVE_ERROR


def test_random_policy_depends_on_seed_only(traces):
    path = next(p for p, env, _ in traces.values() if len(env.device_type) >= 3)
    a = simulate_trace(path, "random", seed=1)
    b = simulate_trace(path, "random", seed=2)
    assert_same(kernel_run(path, "random", seed=2).per_request, b, "seed 2")
    assert not np.array_equal(a.device, b.device)


# --- hand-computed cases ---------------------------------------------------------------------

def one_type_env(n_dev=1, a=1.0, b=0.0, c=0.0, sigma=0.0, join=None, leave=None,
                 knots=None, windows=(), hosts=None, n_models=1, fails=None):
    """`n_dev` devices of one type; model 0 an LLM with priors a, b, c, sigma (model 1,
    when asked, an LLM with the same priors). knots: {device: [(t, mult), ...]};
    windows: [(klass, t0, t1, factor)] on type 0; fails: {device: [(t0, t1), ...]}."""
    knots = knots or {}
    fails = fails or {}
    fw = [fails.get(d, []) for d in range(n_dev)]
    kt, km, ptr = [], [], [0]
    for d in range(n_dev):
        for t, m in knots.get(d, []):
            kt.append(t)
            km.append(m)
        ptr.append(len(kt))
    M = n_models
    return Env(
        models=[f"m{m}" for m in range(M)], model_kind=np.full(M, MODEL_KIND_LLM, np.int8),
        classes=["c0", "c1"], device_types=["t0"],
        prior_a=np.full((1, M), a), prior_b=np.full((1, M), b), prior_c=np.full((1, M), c),
        prior_sigma=np.full((1, M), sigma), prior_available=np.ones((1, M), bool),
        device_type=np.zeros(n_dev, np.int32),
        hosts=np.ones((n_dev, M), bool) if hosts is None else np.array(hosts, bool),
        join_s=np.zeros(n_dev) if join is None else np.array(join, float),
        leave_s=np.full(n_dev, np.inf) if leave is None else np.array(leave, float),
        drift_ptr=np.array(ptr, np.int64), drift_t_s=np.array(kt, float),
        drift_mult=np.array(km, float),
        sem_device_type=np.zeros(len(windows), np.int32),
        sem_klass=np.array([w[0] for w in windows], np.int16),
        sem_t0_s=np.array([w[1] for w in windows], float),
        sem_t1_s=np.array([w[2] for w in windows], float),
        sem_factor=np.array([w[3] for w in windows], float),
        fail_ptr=np.cumsum([0] + [len(w) for w in fw]).astype(np.int64),
        fail_t0_s=np.array([x for w in fw for x, _ in w], float),
        fail_t1_s=np.array([y for w in fw for _, y in w], float))


def requests(arrivals, model=0, in_tokens=1, out_tokens=1, klass=0, z=0.0):
    n = len(arrivals)
    col = lambda v, dt: np.broadcast_to(np.asarray(v, dt), (n,)).copy()  # noqa: E731
    return {"arrival_s": np.asarray(arrivals, float), "model": col(model, np.int16),
            "in_tokens": col(in_tokens, np.int32), "out_tokens": col(out_tokens, np.int32),
            "klass": col(klass, np.int16), "z": col(z, float)}


def both(tmp_path, env, req, policy="rr", seed=0):
    """(kernel per-request, reference per-request), asserted equal."""
    path = tmp_path / "hand.h5"
    write_trace(path, env, req, scenario="test", seed=0, params={}, force=True)
    k = kernel_run(path, policy, seed=seed, block_rows=2).per_request
    r = simulate(env, req, policy, seed=seed)
    assert_same(k, r, "hand-computed")
    return k, r


def test_service_formula_by_hand(tmp_path):
    """One device: drift ramp 1 -> 3 over [10, 20], step 3 -> 5 at 30; a class-1 window x2
    on [40, 50); lognormal factor exp(sigma z - sigma^2 / 2); FIFO start = max(arrival,
    previous completion); the factors are taken at the start of service."""
    sigma = 0.5
    env = one_type_env(a=0.2, b=0.05, c=0.0001, sigma=sigma,
                       knots={0: [(10, 1.0), (20, 3.0), (30, 3.0), (30, 5.0)]},
                       windows=[(1, 40.0, 50.0, 2.0)])
    req = requests([0.0, 15.0, 25.0, 30.0, 30.0, 41.0, 55.0, 100.0, 140.0],
                   klass=[0, 0, 0, 0, 0, 1, 1, 1, 1], in_tokens=1000, out_tokens=4,
                   z=[0, 0, 0, 1.5, -1, 0, 0, 0.3, 0])
    k, _ = both(tmp_path, env, req)

    def drift(t):  # written out by hand
        return 1.0 if t < 10 else 1 + 2 * (t - 10) / 10 if t < 20 else 3.0 if t < 30 else 5.0

    prev, start, pre, dec = 0.0, [], [], []
    for t, kl, z in zip(req["arrival_s"], req["klass"], req["z"]):
        s = max(t, prev)
        f = drift(s) * (2.0 if kl == 1 and 40 <= s < 50 else 1.0) * math.exp(sigma * z
                                                                            - sigma ** 2 / 2)
        start.append(s)
        pre.append((0.2 + 0.0001 * 1000) * f)
        dec.append(0.05 * 4 * f)
        prev = s + pre[-1] + dec[-1]
    start, pre, dec = map(np.array, (start, pre, dec))
    assert start[3] == 30.0 and start[4] > 30.0  # the step applies from t = 30 on
    assert 40 <= start[5] < 50 <= start[6]  # one class-1 request inside the window, one after
    assert k.start_s == pytest.approx(start, rel=1e-12)
    assert k.completion_s == pytest.approx(start + pre + dec, rel=1e-12)
    assert k.ttft_s == pytest.approx(start + pre - req["arrival_s"], rel=1e-12)
    assert k.tpot_s == pytest.approx(dec / 4, rel=1e-12)
    assert list(k.stutter) == list((dec / 4 > 0.1).astype(int))
    assert 0 < k.stutter.sum() < len(k.stutter)


def test_semantic_window_edges(tmp_path):
    """A class-1 request served inside [40, 50) is x2; t0 is inside, t1 outside."""
    env = one_type_env(n_dev=3, windows=[(1, 40.0, 50.0, 2.0)])
    req = requests([39.0, 40.0, 50.0], klass=1)
    k, _ = both(tmp_path, env, req)  # rr over 3 idle devices: each starts on arrival
    assert list(k.completion_s - k.start_s) == [1.0, 2.0, 1.0]


def test_ties_completion_join_leave_arrival(tmp_path):
    """At t = 1: the completion on device 0 comes first (not rerouted although device 0 leaves
    at 1), then device 1 joins before device 0 leaves (the queued request moves to device 1),
    then the arrival at 1 (device 0 is already gone)."""
    env = one_type_env(n_dev=2, a=0.5, b=0.25, join=[0.0, 1.0], leave=[1.0, np.inf])
    req = requests([0.0, 0.0, 1.0], out_tokens=2)  # service 0.5 + 0.25 * 2 = 1 s
    k, _ = both(tmp_path, env, req, "rr")
    assert list(k.device) == [0, 1, 1]
    assert list(k.reroutes) == [0, 1, 0]
    assert list(k.dispatch_s) == [0.0, 1.0, 1.0]
    assert list(k.start_s) == [0.0, 1.0, 2.0]
    assert list(k.completion_s) == [1.0, 2.0, 3.0]


def test_leave_redispatches_in_service_first_then_fifo(tmp_path):
    """rr: device 0 gets r0, r2, r4 (1 s each), device 1 r1 (4 s), r3, r5 (1 s). Device 0
    leaves at 0.5 with r0 in service and r2, r4 queued: they move to device 1 in that order
    (service starts again from zero, evaluated at the new start), behind r5."""
    env = one_type_env(n_dev=2, a=0.0, b=1.0, leave=[0.5, np.inf])
    req = requests([0.0] * 6, out_tokens=[1, 4, 1, 1, 1, 1])
    k, _ = both(tmp_path, env, req, "rr")
    assert list(k.device) == [1] * 6
    assert list(k.reroutes) == [1, 0, 1, 0, 1, 0]
    assert list(k.dispatch_s) == [0.5, 0.0, 0.5, 0.0, 0.5, 0.0]
    assert list(k.start_s) == [6.0, 0.0, 7.0, 4.0, 8.0, 5.0]


def test_drops_when_no_online_device_hosts_the_model(tmp_path):
    """Model 1 is hosted by device 1 only, which leaves at 3 with r1 in service and r2
    queued: both are dropped at 3 (device -1, one reroute each), as is the model-1 arrival
    at 6; model 0 is unaffected. `rerouted` counts completed requests that were rerouted,
    `reroute_events` every re-dispatch."""
    env = one_type_env(n_dev=2, a=2.0, n_models=2, hosts=[[1, 0], [0, 1]],
                       leave=[np.inf, 3.0])
    req = requests([0.0, 0.5, 1.0, 6.0, 7.0], model=[1, 1, 1, 1, 0])
    k, r = both(tmp_path, env, req, "sect")
    assert list(k.device) == [1, -1, -1, -1, 0]
    assert list(k.reroutes) == [0, 1, 1, 0, 0]
    assert list(k.dispatch_s) == [0.0, 3.0, 3.0, 6.0, 7.0]
    assert np.isnan(k.completion_s[1:4]).all() and np.isnan(k.start_s[1:4]).all()
    s = replay(tmp_path / "hand.h5", "sect").summary
    assert (s["completed"], s["dropped"], s["rerouted"], s["reroute_events"]) == (2, 3, 0, 2)
    assert s["dropped_by_reason"] == {"no_online_device_hosts_model": 3}
    m = summarize_requests(r, req, env.model_kind)
    assert (m["completed"], m["dropped"], m["rerouted"], m["reroute_events"]) == (2, 3, 0, 2)


# --- failures (work-conserving pauses) by hand -----------------------------------------------

def test_failure_pauses_prefill_and_decode_by_hand(tmp_path):
    """a = 2 s prefill, b = 1 s/token x 3 tokens; device 0 hangs in [1, 4) and [6, 6.5).
    Request 0 at t=0: prefill work 2 s runs [0, 1) + [4, 5): TTFT 5; decode 3 s runs [5, 6) +
    [6.5, 8.5): done 8.5. Request 1 arrives at 20.5 inside [20, 30): starts at 20.5 (queue
    head) and progresses from 30: done 35. Request 2 queued behind: starts at 35, done 40."""
    env = one_type_env(a=2.0, b=1.0, fails={0: [(1.0, 4.0), (6.0, 6.5), (20.0, 30.0)]})
    req = requests([0.0, 20.5, 21.0], out_tokens=3)
    k, r = both(tmp_path, env, req, "rr")
    assert k.ttft_s[0] == 5.0 and k.completion_s[0] == 8.5
    assert k.start_s[1] == 20.5 and k.completion_s[1] == 35.0 and k.ttft_s[1] == 32.0 - 20.5
    assert k.start_s[2] == 35.0 and k.completion_s[2] == 40.0


def test_oracle_avoids_a_failed_device_and_waits_when_all_have_failed(tmp_path):
    """Two equal devices; device 0 hangs in [10, 100), device 1 in [50, 60). At t=20 the
    oracle takes device 1 (jsq takes idle device 0 and waits for its recovery); at t=55 both
    have failed: the oracle takes the lowest index and the request waits (not dropped)."""
    env = one_type_env(n_dev=2, a=1.0, fails={0: [(10.0, 100.0)], 1: [(50.0, 60.0)]})
    req = requests([20.0, 55.0])
    k, _ = both(tmp_path, env, req, "oracle")
    assert list(k.device) == [1, 0] and k.completion_s[1] == 101.0
    k, _ = both(tmp_path, env, req, "jsq")
    assert k.device[0] == 0 and k.completion_s[0] == 101.0


# --- generated scenarios (seconds): kernel == reference ---------------------------------------

@pytest.mark.parametrize("scenario", ["interference", "failure", "cold-start", "mixed"])
def test_kernel_equals_reference_on_generated_scenarios(tmp_path, scenario):
    """Small traces of the new scenarios (interference steps folded into the knots, failure
    windows, a type without prior, churn and semantic windows): bit for bit, every policy."""
    from e3fast.tracefile.generator import GenTraceOptions, generate_trace
    path = tmp_path / f"{scenario}.h5"
    generate_trace(GenTraceOptions(scenario=scenario, requests=1500, seed=2, out=str(path),
                                   load_basis="worst", **({"fail_mtbf_s": 600.0} if scenario
                                                          in ("failure", "mixed") else {})),
                   progress=False)
    for policy in POLICIES:
        assert_same(kernel_run(path, policy, seed=5).per_request,
                    simulate_trace(path, policy, seed=5), f"{scenario} {policy}")
