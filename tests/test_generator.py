"""gen-trace: determinism, scenarios, utilisation calibration, block-size independence, CLI."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from e3fast.errors import E3Error
from e3fast.tracefile import open_trace, validate_trace
from e3fast.tracefile.generator import GenTraceOptions, generate_trace, resolve
from e3fast.tracefile.importers import IMPORT_DEFAULTS, ImportTraceOptions, merge_options
from e3fast.tracefile.scenarios import SCENARIOS
from e3fast.tracefile.workload import CLASSES, Arrivals, class_means, length_table


def gen(tmp_path, name="t.h5", block_rows=1 << 20, **kw):
    path = tmp_path / name
    kw.setdefault("requests", 3000)
    generate_trace(GenTraceOptions(out=str(path), force=True, **kw), block_rows=block_rows, progress=False)
    return path


def columns(path):
    with open_trace(path) as tr:
        return tr.read_all()


def same(p, q):
    a, b = columns(p), columns(q)
    return all(np.array_equal(a[k], b[k]) for k in a)


def test_same_seed_identical_different_seed_differs(tmp_path):
    a = gen(tmp_path, "a.h5", scenario="drift", seed=3)
    b = gen(tmp_path, "b.h5", scenario="drift", seed=3)
    c = gen(tmp_path, "c.h5", scenario="drift", seed=4)
    assert same(a, b) and not same(a, c)
    with open_trace(a) as ta, open_trace(b) as tb:
        assert ta.env.extra == tb.env.extra
        assert np.array_equal(ta.env.drift_mult, tb.env.drift_mult)


@pytest.mark.parametrize("arrivals", ["poisson", "bursty"])
def test_block_size_does_not_change_the_file(tmp_path, arrivals):
    kw = dict(scenario="semantic", seed=5, arrivals=arrivals, requests=5000)
    assert same(gen(tmp_path, "a.h5", block_rows=1 << 20, **kw), gen(tmp_path, "b.h5", block_rows=777, **kw))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_validates_and_has_events(tmp_path, scenario):
    path = gen(tmp_path, scenario=scenario, seed=1)
    summary = validate_trace(path, strict=True)
    assert summary["n_requests"] == 3000
    with open_trace(path) as tr:
        env, params = tr.env, tr.params
        assert tr.scenario == scenario and tr.seed == 1
    events = env.extra["events"]
    assert events and all({"t_s", "kind", "what"} <= set(e) for e in events)
    assert [e["t_s"] for e in events] == sorted(e["t_s"] for e in events)
    assert params["scenario"] == scenario and params["utilization"] == 0.7
    kinds = {e["kind"] for e in events}
    assert env.drift_ptr[-1] >= env.n_devices  # instance factors: >= 1 knot per device
    if scenario == "semantic":
        assert {"mix-shift", "degrade"} <= kinds and len(env.sem_factor) >= 2
        assert params["sem_factor"] == 8.0
    if scenario == "churn":
        assert {"leave", "join"} <= kinds
        initial = set(env.device_type[env.join_s == 0])
        assert set(env.device_type[env.join_s > 0]) - initial  # a never-seen type joins
        assert np.isfinite(env.leave_s).any()
    if scenario == "drift":
        assert {"drift-ramp", "drift-step", "recover"} <= kinds
        assert env.drift_mult.max() / env.drift_mult.min() > 2


@pytest.mark.parametrize("scenario,arrivals", [("cold-start", "poisson"), ("drift", "poisson"),
                                               ("churn", "bursty")])
def test_utilisation_calibration(tmp_path, scenario, arrivals):
    """Offered load = arrival rate / capacity, with capacity = sum over the initial devices of
    1 / (mean prior service time of the requests it can host), from the file's own rows."""
    u = 0.6
    path = gen(tmp_path, scenario=scenario, arrivals=arrivals, utilization=u, requests=60000, seed=2)
    with open_trace(path) as tr:
        env, d = tr.env, tr.read_all()
    m, cap = d["model"], 0.0
    for t, hosts in zip(env.device_type[env.join_s == 0], env.hosts[env.join_s == 0]):
        s = env.prior_a[t, m] + env.prior_b[t, m] * d["out_tokens"] + env.prior_c[t, m] * d["in_tokens"]
        cap += 1.0 / s[hosts[m]].mean()
    load = len(m) / d["arrival_s"][-1] / cap
    assert abs(load / u - 1) < (0.03 if arrivals == "poisson" else 0.08)


def test_lengths_follow_azure_and_classes(tmp_path):
    d = columns(gen(tmp_path, requests=40000, seed=9))
    for k, name in enumerate(CLASSES):
        sel = d["klass"] == k
        mi, mo = class_means(name)
        assert abs(d["in_tokens"][sel].mean() - mi) <= 0.05 * mi + 1e-9
        assert abs(d["out_tokens"][sel].mean() - mo) <= 0.06 * mo
    chat = d["klass"] == CLASSES.index("chat")
    table = length_table()["conv"]
    assert abs(np.median(d["out_tokens"][chat]) - table["out"]["median"]) < 0.1 * table["out"]["median"]
    img = d["klass"] == CLASSES.index("image")
    assert d["in_tokens"][img].max() == 0 and 20 <= d["out_tokens"][img].min() <= d["out_tokens"][img].max() <= 50
    assert abs(d["z"].mean()) < 0.03 and abs(d["z"].std() - 1) < 0.03


def test_semantic_bursts_shift_the_mix(tmp_path):
    """Bursts recur (seconds): longform and 50-step image bursts alternate at the mix-shift
    events; outside them the baseline mix."""
    path = gen(tmp_path, scenario="semantic", requests=20000, seed=4)
    with open_trace(path) as tr:
        d, events = tr.read_all(), tr.env.extra["events"]
    t, k = d["arrival_s"], d["klass"]
    shifts = [e for e in events if e["kind"] == "mix-shift"]
    lf, img = np.zeros(len(t), bool), np.zeros(len(t), bool)
    for on, off in zip(shifts[0::2], shifts[1::2]):
        inside = (t >= on["t_s"]) & (t < off["t_s"])
        (img if "image" in on["what"] else lf)[inside] = True
    assert lf.sum() > 100 and img.sum() > 100  # several bursts of each kind
    assert np.mean(k[lf] == CLASSES.index("longform")) > 0.5 > np.mean(k[~lf & ~img] == CLASSES.index("longform"))
    steps = d["out_tokens"][img & (k == CLASSES.index("image"))]
    assert np.all(steps == 50)


def test_arrivals_bursty_is_burstier_than_poisson():
    def cv(kind):
        t = Arrivals(1.0, kind, np.random.default_rng(0), np.random.default_rng(1)).next(100000)
        g = np.diff(t)
        return g.std() / g.mean(), len(t) / t[-1]
    (cv_p, r_p), (cv_b, r_b) = cv("poisson"), cv("bursty")
    assert abs(cv_p - 1) < 0.02 and cv_b > 1.2
    assert abs(r_p - 1) < 0.02 and abs(r_b - 1) < 0.1


def test_spec_file_and_flags_override(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('scenario = "drift"\nrequests = 500\nseed = 11\ndrift-ramp-mult = 2.5\n'
                    f'out = "{tmp_path / "spec.h5"}"\n')
    generate_trace(GenTraceOptions(spec=str(spec), seed=12), progress=False)
    with open_trace(tmp_path / "spec.h5") as tr:
        assert tr.n_requests == 500 and tr.seed == 12 and tr.params["drift_ramp_mult"] == 2.5
        assert tr.params["spec"] == str(spec)


@pytest.mark.parametrize("kw,needle", [
    (dict(requests=-5), "--requests"), (dict(devices=0), "--devices"),
    (dict(utilization=0.0), "--utilization"), (dict(utilization=5.0), "--utilization"),
    (dict(scenario="nope"), "--scenario"), (dict(fleet="tpu-v9:2"), "--fleet"),
    (dict(fleet="nvidia-l4:x"), "--fleet"), (dict(spec="/nonexistent/x.toml"), "x.toml"),
    (dict(scenario="drift", sem_factor=3.0), "--sem-factor"),
    (dict(scenario="drift", drift_ramp_mult=0.5), "--drift-ramp-mult"),
])
def test_bad_options_are_e3errors(tmp_path, kw, needle):
    with pytest.raises(E3Error) as err:
        generate_trace(GenTraceOptions(out=str(tmp_path / "x.h5"), **kw), progress=False)
    assert needle in str(err.value) and err.value.fix
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("text,needle", [("requests = [", "invalid TOML"),
                                         ("bogus = 1", "unknown key 'bogus'"),
                                         ('requests = "many"', "must be int")])
def test_bad_spec_files(tmp_path, text, needle):
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    with pytest.raises(E3Error, match=needle) as err:
        generate_trace(GenTraceOptions(spec=str(spec), out=str(tmp_path / "x.h5")), progress=False)
    assert str(spec) in str(err.value)


def test_fleet_option(tmp_path):
    path = gen(tmp_path, fleet="nvidia-l4:2,rtx-4090:1", devices=None, scenario="drift")
    with open_trace(path) as tr:
        assert [tr.env.device_types[t] for t in tr.env.device_type] == ["nvidia-l4"] * 2 + ["rtx-4090"]


def test_instance_spread_zero_gives_unit_knots(tmp_path):
    with open_trace(gen(tmp_path, instance_spread=0.0, scenario="failure")) as tr:
        assert np.all(tr.env.drift_mult == 1.0)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "e3fast.cli", *args], capture_output=True, text=True)


def test_cli_ok_and_errors(tmp_path):
    out = tmp_path / "cli.h5"
    r = run_cli("gen-trace", "--scenario", "churn", "--requests", "300", "--seed", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout and "300" in r.stdout and out.exists()
    r = run_cli("gen-trace", "--requests", "300", "--out", str(out))  # exists, no --force
    assert r.returncode == 2 and "--force" in r.stderr and "Traceback" not in r.stderr
    for bad in (["--requests", "-1"], ["--devices", "0"], ["--utilization", "7"],
                ["--fleet", "gpu:1"], ["--scenario", "bogus"], ["--spec", str(tmp_path / "none.toml")]):
        r = run_cli("gen-trace", "--out", str(tmp_path / "bad.h5"), *bad)
        assert r.returncode == 2, (bad, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.strip()


TRACES = Path(__file__).resolve().parents[1] / "traces"


@pytest.mark.parametrize("name", SCENARIOS)
def test_committed_specs_resolve(name):
    o = resolve(GenTraceOptions(spec=str(TRACES / f"{name}.toml")))
    assert o["scenario"] == name and o["out"] == f"traces/{name}.h5"


def test_committed_import_spec_keys_are_valid():
    o = merge_options(ImportTraceOptions(spec=str(TRACES / "real-azure-conv.toml")), IMPORT_DEFAULTS)
    assert o["format"] == "azure" and o["file"].endswith("AzureLLMInferenceTrace_conv.csv")


def test_sample_trace_is_small_and_reproducible(tmp_path):
    """traces/sample.h5 is what docs/SCENARIOS.md says: `e3fast gen-trace --scenario drift
    --devices 8 --requests 40000 --seed 7 --out traces/sample.h5` (rerun it if the priors change)."""
    sample = TRACES / "sample.h5"
    assert sample.stat().st_size < 2_000_000
    assert validate_trace(sample, strict=True)["n_requests"] == 40000
    again = gen(tmp_path, scenario="drift", devices=8, requests=40000, seed=7)
    assert same(sample, again), "traces/sample.h5 is stale: regenerate it with the command above"


def test_load_basis_worst_sizes_the_load_to_the_worst_regime(tmp_path):
    """--load-basis worst: the rate is U x (true worst-regime capacity), below the priors'
    rate when drift removes capacity, and recorded in params."""
    from e3fast.tracefile.reader import open_trace
    rates = {}
    for basis in ("priors", "worst"):
        out = tmp_path / f"{basis}.h5"
        generate_trace(GenTraceOptions(scenario="drift", requests=2000, devices=8, seed=3,
                                       load_basis=basis, out=str(out)), progress=False)
        with open_trace(out) as r:
            rates[basis] = (r.params["rate_per_s"], r.params["worst_capacity_ratio"])
    assert rates["priors"][1] == 1.0
    assert 0.3 < rates["worst"][1] < 1.0  # half the fleet slows x3-x4 at some point
    assert rates["worst"][0] == pytest.approx(rates["priors"][0] * rates["worst"][1])
