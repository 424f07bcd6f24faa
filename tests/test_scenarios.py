"""Scenarios in seconds: interference, failure, the real cold start, mixed.

* every request of a replay ends exactly once (completed or dropped, counted), and its
  latency is at least its service time, in each new scenario, for static, learning and
  oracle routers;
* the hidden processes have their documented means over a long horizon (exponential on/off
  periods, MTBF/MTTR), within a chi-square interval (scipy.stats) at level 1e-6;
* interference multiplies drift exactly (combine_steps against a direct product);
* bad options are one message and exit code 2;
* a schema-v1 trace (no failure windows, no priors/known) still opens.
"""
import subprocess
import sys

import h5py
import numpy as np
import pytest
from scipy import stats

from e3fast.errors import E3Error
from e3fast.priors import load_priors
from e3fast.runner import replay
from e3fast.tracefile import open_trace
from e3fast.tracefile import scenarios as sc
from e3fast.tracefile.generator import GenTraceOptions, generate_trace
from e3fast.tracefile.schema import router_priors

NEW = ("interference", "failure", "cold-start", "mixed")
FAST = {"failure": dict(fail_mtbf_s=900.0, fail_mttr_s=120.0),   # several failures in 3000 requests
        "mixed": dict(fail_mtbf_s=900.0, fail_mttr_s=120.0)}


def gen(tmp_path, scenario, requests=3000, seed=1, **kw):
    path = tmp_path / f"{scenario}.h5"
    generate_trace(GenTraceOptions(scenario=scenario, requests=requests, seed=seed, out=str(path),
                                   force=True, **kw), progress=False)
    return path


@pytest.mark.parametrize("scenario", NEW)
def test_every_request_ends_exactly_once(tmp_path, scenario):
    path = gen(tmp_path, scenario, **FAST.get(scenario, {}))
    with open_trace(path) as tr:
        req, env = tr.read_all(), tr.env
    if scenario in ("failure", "mixed"):
        assert len(env.fail_t0_s) > 0
    for policy in ("jsq", "sect", "oracle", "e3"):
        res = replay(path, policy, per_request=True, controller="none")
        p, s = res.per_request, res.summary
        done = p.device >= 0
        assert s["completed"] + s["dropped"] == s["requests"] == len(req["arrival_s"])
        assert int(done.sum()) == s["completed"]
        assert np.isfinite(p.completion_s[done]).all() and np.isnan(p.completion_s[~done]).all()
        latency = p.completion_s[done] - req["arrival_s"][done]
        service = p.completion_s[done] - p.start_s[done]
        assert (service > 0).all() and (latency >= service).all()
        assert (p.ttft_s[done] > 0).all()
        if scenario in ("failure", "mixed") and policy != "oracle":  # some were paused by a failure
            # (the oracle sees failed devices; only a request in service as one fails waits)
            d = p.device[done]
            paused = [((env.fail_t0_s[env.fail_ptr[x]:env.fail_ptr[x + 1]] < c)
                       & (env.fail_t1_s[env.fail_ptr[x]:env.fail_ptr[x + 1]] > a)).any()
                      for x, a, c in zip(d, p.start_s[done], p.completion_s[done])]
            assert any(paused), policy


def exp_mean_ok(x, mean, level=1e-6):
    """The sample mean of `x` fits an exponential of mean `mean`: 2 n xbar / mean ~ chi2(2n)."""
    n = len(x)
    q = 2 * n * np.mean(x) / mean
    return stats.chi2.ppf(level / 2, 2 * n) <= q <= stats.chi2.ppf(1 - level / 2, 2 * n)


def build(name, horizon, **params):
    priors = load_priors()
    return sc.build_scenario(name, priors, sc.make_fleet(priors, 8), horizon,
                             np.random.default_rng(5), params, 0.3)


def test_interference_periods_have_the_documented_means():
    on_s, off_s, x = 45.0, 150.0, 2.5
    env = build("interference", 3e6, intf_on_s=on_s, intf_off_s=off_s, intf_factor=x).env
    affected = 0
    for d in range(env.n_devices):
        t = env.drift_t_s[env.drift_ptr[d]:env.drift_ptr[d + 1]]
        m = env.drift_mult[env.drift_ptr[d]:env.drift_ptr[d + 1]]
        step = np.flatnonzero(t[1:] == t[:-1])           # two knots at one time
        if not len(step):
            continue
        affected += 1
        ratio = m[step + 1] / m[step]
        assert np.allclose(ratio[0::2], x) and np.allclose(ratio[1::2], 1 / x)
        on, off = t[step[0::2]], t[step[1::2]]
        n = min(len(on), len(off))
        assert n > 5000  # hundreds of changes per device, and more
        assert exp_mean_ok(off[:n] - on[:n], on_s)
        assert exp_mean_ok(np.diff(np.concatenate(([0.0], off[:n])))[:n] - (off[:n] - on[:n]), off_s)
    assert affected == 4  # half of 8 devices


def test_failure_windows_have_the_documented_mtbf_and_mttr():
    mtbf, mttr = 2000.0, 150.0
    env = build("failure", 2e7, fail_mtbf_s=mtbf, fail_mttr_s=mttr).env
    failing = [d for d in range(env.n_devices) if env.fail_ptr[d + 1] > env.fail_ptr[d]]
    assert len(failing) == 2  # a quarter of 8
    for d in failing:
        t0 = env.fail_t0_s[env.fail_ptr[d]:env.fail_ptr[d + 1]]
        t1 = env.fail_t1_s[env.fail_ptr[d]:env.fail_ptr[d + 1]]
        assert exp_mean_ok(t1 - t0, mttr)
        assert exp_mean_ok(t0 - np.concatenate(([0.0], t1[:-1])), mtbf)


def test_drift_episodes_recur_with_the_documented_gap():
    """A longer horizon means more episodes (not slower ones)."""
    short = build("drift", 1e5).env
    long = build("drift", 1e6).env
    assert len(long.drift_t_s) > 5 * len(short.drift_t_s)


def test_interference_multiplies_drift_exactly():
    rng = np.random.default_rng(3)
    tg = np.sort(rng.uniform(0, 100, 6))
    tg[3] = tg[2]  # a step in the drift
    mg = rng.uniform(0.5, 3, 6)
    change = np.sort(rng.uniform(0, 100, 8))
    level = np.tile([2.0, 1.0], 4)
    t, m = sc.combine_steps(tg, mg, change, level)
    ts = np.sort(np.concatenate([rng.uniform(-5, 105, 2000), tg, change]))
    h = np.where(np.searchsorted(change, ts, side="right") > 0,
                 level[np.maximum(np.searchsorted(change, ts, side="right") - 1, 0)], 1.0)
    want = sc.knot_multiplier(tg, mg, ts) * h
    assert np.allclose(sc.knot_multiplier(t, m, ts), want, rtol=1e-12)


def test_cold_start_has_wrong_and_missing_priors():
    s = build("cold-start", 1e4)
    env = s.env
    assert env.n_devices == 9  # + one device of a type with no prior
    unknown = ~env.prior_known.all(axis=1)
    assert unknown.sum() == 1 and unknown[env.device_type[-1]]
    a, b, c, sigma = router_priors(env)
    u = int(env.device_type[-1])
    known = env.prior_known[:, 0]
    assert a[u, 0] == pytest.approx(env.prior_a[known, 0].mean())
    kinds = {e["kind"] for e in env.extra["events"]}
    assert {"no-prior", "wrong-prior"} <= kinds
    # a whole type runs x2 (and another x0.6) its prior on top of the instance factors
    f = np.array(env.extra["instance_factor"])
    assert np.isclose(f, env.drift_mult).all()


@pytest.mark.parametrize("kw,needle", [
    (dict(scenario="interference", intf_factor=0.5), "--intf-factor"),
    (dict(scenario="interference", intf_on_s=0.0), "--intf-on-s"),
    (dict(scenario="interference", intf_off_s=-3.0), "--intf-off-s"),
    (dict(scenario="interference", intf_devices=1.5), "--intf-devices"),
    (dict(scenario="failure", fail_devices=0.0), "--fail-devices"),
    (dict(scenario="failure", fail_mtbf_s=0.0), "--fail-mtbf-s"),
    (dict(scenario="failure", fail_mttr_s=-1.0), "--fail-mttr-s"),
    (dict(scenario="cold-start", cs_slow_factor=0.9), "--cs-slow-factor"),
    (dict(scenario="cold-start", cs_fast_factor=1.5), "--cs-fast-factor"),
    (dict(scenario="cold-start", cs_unknown=0), "--cs-unknown"),
    (dict(scenario="drift", drift_gap_s=0.0), "--drift-gap-s"),
    (dict(scenario="mixed", sem_burst_s=-1.0), "--sem-burst-s"),
    (dict(scenario="drift", intf_factor=2.0), "--intf-factor"),
])
def test_bad_new_options_are_e3errors(tmp_path, kw, needle):
    with pytest.raises(E3Error) as err:
        generate_trace(GenTraceOptions(out=str(tmp_path / "x.h5"), **kw), progress=False)
    assert needle in str(err.value) and err.value.fix
    assert not (tmp_path / "x.h5").exists()


def test_bad_new_options_exit_2_with_one_message(tmp_path):
    for bad in (["--scenario", "interference", "--intf-factor", "0.5"],
                ["--scenario", "failure", "--fail-mttr-s", "0"]):
        r = subprocess.run([sys.executable, "-m", "e3fast.cli", "gen-trace", "--out",
                            str(tmp_path / "b.h5"), *bad], capture_output=True, text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and bad[2] in r.stderr


def test_schema_v1_trace_reads_without_failures(tmp_path):
    path = gen(tmp_path, "failure", requests=500, **FAST["failure"])
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 1
        del f["env/failure"]
        del f["env/priors/known"]
    with open_trace(path) as tr:
        assert tr.schema_version == 1 and len(tr.env.fail_t0_s) == 0
        assert (tr.env.fail_ptr == 0).all() and tr.env.prior_known.all()
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 2
    with pytest.raises(E3Error, match="missing dataset"):
        open_trace(path)


def test_env_stays_compact():
    """No per-request rows: the env grows with the horizon (seconds), by a few bytes per
    on/off change; mixed at its defaults over 1e6 s stays under 2 MB."""
    from e3fast.tracefile.inspect import env_nbytes
    assert env_nbytes(build("mixed", 1e6).env) < 2_000_000


def test_min_drift_after_is_the_least_multiplier_from_then_on():
    """sim.service.min_drift_after == the minimum of the multiplier on a fine grid of [t, H]
    (plus the knots), for the mixed scenario's knots (drift x interference x factors)."""
    from e3fast.sim.service import min_drift_after
    from e3fast.sim.state import build_world
    env = build("mixed", 2e4).env
    world = build_world(env)
    cursor = world.drift_first.copy()
    rng = np.random.default_rng(0)
    for d in range(env.n_devices):
        kt = env.drift_t_s[env.drift_ptr[d]:env.drift_ptr[d + 1]]
        km = env.drift_mult[env.drift_ptr[d]:env.drift_ptr[d + 1]]
        for t in np.sort(rng.uniform(-10, 2.2e4, 40)):
            grid = np.concatenate(([t], kt[kt >= t], np.linspace(t, 2.5e4, 50)))
            want = sc.knot_multiplier(kt, km, grid).min()
            assert min_drift_after(world, cursor, d, t) == pytest.approx(want, rel=1e-12)
