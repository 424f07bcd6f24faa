"""e3fast mc: CLI, determinism (workers, local vs Dask), resume, a dying worker, CI math."""
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from e3fast import montecarlo as mc
from e3fast.cli import main

ARGS = ["--scenario", "drift", "--reps", "3", "--requests", "2000", "--policies",
        "rr,sect,e3,lower-bound", "--quiet"]


def _run(out, *extra):
    assert main(["mc", *ARGS, "--out", str(out), *extra]) == 0
    return out


def _result(out):
    """summary.json and rep files without timing: what must be bit-identical."""
    s = json.loads((out / "summary.json").read_text())
    s.pop("timing")
    s["config"].pop("spec", None)
    reps = {}
    for f in sorted((out / "reps").glob("*.json")):
        r = json.loads(f.read_text())
        r.pop("timing")
        reps[f.name] = r
    return s, reps


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("mc") / "w1", "--workers", "1")


def test_cli_outputs(baseline, capsys):
    s = json.loads((baseline / "summary.json").read_text())
    assert s["n_reps"] == 3 and s["requests_per_rep"] == 2000
    assert set(s["policies"]) == {"rr", "sect", "e3", "lower-bound"}
    assert "mean_latency_s_gap_to_lower_bound" in s["headline"]["e3"]
    for r in range(3):  # the bound is below every policy in every replication
        rec = json.loads((baseline / "reps" / f"rep-{r:05d}.json").read_text())["policies"]
        assert rec["lower-bound"]["reference"] == "lower-bound"
        for v in ("rr", "sect", "e3"):
            assert rec["lower-bound"]["mean_latency_s"] <= rec[v]["mean_latency_s"]
            assert rec["lower-bound"]["p99_latency_s"] <= rec[v]["p99_latency_s"]
    assert "lower-bound (bound, not a router)" in mc.format_summary(s)
    assert "gap_to_lower_bound,e3,lower-bound,mean_latency_s" in (baseline / "table.csv").read_text()
    assert s["headline"]["best_baseline"] in ("rr", "sect")
    assert "mean_latency_s_reduction_vs_best_baseline" in s["headline"]["e3"]
    assert "mean_latency_s_gap_to_oracle" not in s["headline"]["e3"]  # no oracle in this sweep
    assert sorted(p.name for p in (baseline / "reps").iterdir()) == [
        "rep-00000.json", "rep-00001.json", "rep-00002.json"]
    header = (baseline / "table.csv").read_text().splitlines()[0]
    assert header == "kind,a,b,metric,mean,ci_low,ci_high,std,n"
    assert main(["report", str(baseline)]) == 0
    text = capsys.readouterr().out
    assert "e3" in text and "early s" in text and "conv s" in text
    for v in ("rr", "sect", "e3", "lower-bound"):  # convergence metrics: every variant, every rep
        for m in ("early_mean_latency_s", "convergence_s"):
            assert s["policies"][v][m]["n"] == 3, (v, m)
    assert s["config"]["early_s"] == 600.0
    assert "convergence_s" in s["pairs"]["e3 vs sect"]
    assert "reduction,e3,sect,early_mean_latency_s" in (baseline / "table.csv").read_text()


def test_workers_1_vs_2_identical(baseline, tmp_path):
    assert _result(_run(tmp_path / "w2", "--workers", "2", "--chunk", "1")) == _result(baseline)


def test_resume_recomputes_only_the_missing_rep(baseline, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    import shutil
    shutil.copytree(baseline, out, dirs_exist_ok=True)
    (out / "reps" / "rep-00001.json").unlink()
    before = {f.name: f.stat().st_mtime_ns for f in (out / "reps").iterdir()}
    _run(out, "--resume", "--workers", "1")
    after = {f.name: f.stat().st_mtime_ns for f in (out / "reps").iterdir()}
    assert after["rep-00000.json"] == before["rep-00000.json"]
    assert after["rep-00002.json"] == before["rep-00002.json"]
    assert "rep-00001.json" in after
    assert json.loads((out / "summary.json").read_text())["timing"]["reps_computed"] == 1
    assert _result(out) == _result(baseline)


def test_dying_worker_is_retried(baseline, tmp_path, monkeypatch):
    flag = tmp_path / "crashed"
    monkeypatch.setenv(mc.CRASH_ENV, f"{flag}:1")
    out = _run(tmp_path / "crash", "--workers", "2", "--chunk", "1")
    assert flag.exists()  # the worker did die once
    assert _result(out) == _result(baseline)


def test_dask_local_cluster_identical(baseline, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        out = _run(tmp_path / "dask", "--scheduler", cluster.scheduler_address, "--chunk", "2")
    assert _result(out) == _result(baseline)


def test_existing_out_refused_then_force(baseline, tmp_path, capsys):
    out = tmp_path / "x"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["mc", *ARGS, "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["mc", *ARGS, "--out", str(out), "--force"]) == 2  # not an mc folder: kept
    assert (out / "keep.txt").exists()


def test_resume_with_other_parameters_refused(baseline, tmp_path, capsys):
    import shutil
    out = tmp_path / "p"
    shutil.copytree(baseline, out)
    assert main(["mc", *ARGS[:-1], "--requests", "3000", "--out", str(out), "--resume"]) == 2
    assert "requests" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--reps", "0"], ["--requests", "-5"], ["--policies", "rr,bogus"],
                                 ["--workers", "0"], ["--scenario", "nope"],
                                 ["--utilization", "-1"], ["--scenario", "real"],
                                 ["--resume", "--force"], ["--ci", "bogus"]])
def test_bad_options_exit_2_without_traceback(tmp_path, bad):
    argv = ["mc", "--scenario", "drift", "--reps", "2", "--requests", "100",
            "--out", str(tmp_path / "o"), *bad]
    p = subprocess.run([sys.executable, "-m", "e3fast.cli", *argv], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "error" in p.stderr
    assert not (tmp_path / "o" / "summary.json").exists()


# ---------------------------------------------------------------- statistics

def test_t_method_matches_scipy():
    x = np.array([2.1, 3.4, 1.9, 5.0, 4.2, 3.3, 2.8])
    ci = stats.ttest_1samp(x, 0).confidence_interval(0.95)
    got = mc.mean_ci(x, "t")
    assert got["mean"] == pytest.approx(x.mean())
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-12)
    for method in mc.CI_METHODS:
        assert mc.mean_ci([1.0], method)["ci_low"] is None and mc.mean_ci([], method)["n"] == 0
        assert mc.mean_ci([2.0, 2.0, 2.0], method)["ci_low"] == 2.0  # no spread: a point


def test_paired_matches_scipy():
    rng = np.random.default_rng(3)
    b = rng.uniform(5, 10, 40)
    a = b * rng.uniform(0.2, 0.6, 40)
    p = mc.paired(a, b, "t")
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (p["diff"]["ci_low"], p["diff"]["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-12)
    red = 1 - a / b
    ci = stats.ttest_1samp(red, 0).confidence_interval(0.95)
    assert p["reduction"]["mean"] == pytest.approx(red.mean())
    assert (p["reduction"]["ci_low"], p["reduction"]["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert p["reduction_of_means"] == pytest.approx(1 - a.mean() / b.mean())
    # gap = a/b - 1 is the negated reduction, CI flipped
    g = mc._negate(p["reduction"])
    assert g["ci_low"] == pytest.approx(-p["reduction"]["ci_high"])
    # the default (BCa) on the paired values: within their range, around their mean
    d = mc.paired(a, b)
    for kind, v in (("diff", a - b), ("reduction", red)):
        assert v.min() <= d[kind]["ci_low"] < v.mean() < d[kind]["ci_high"] <= v.max()
    assert mc.paired(a, b, "log-t") == p  # log-t: differences and reductions use Student-t


def _skewed_reps():
    """12 per-replication mean latencies shaped like `mc --scenario drift --requests 50000
    --reps 12` (one loaded replication far above the rest): t gives 43.2 [-21.4, 108]."""
    x = np.r_[13.85 + np.linspace(-2, 2, 11), 0.0]
    x[-1] = 43.2 * 12 - x[:-1].sum()
    return x


def test_positive_quantity_interval_is_positive_where_t_goes_negative():
    x = _skewed_reps()
    t = mc.mean_ci(x, "t")
    assert round(t["mean"], 1) == 43.2 and round(t["ci_low"], 1) == -21.4
    assert round(t["ci_high"]) == 108
    for method in ("bca", "percentile", "log-t"):
        got = mc.mean_ci(x, method)
        assert 0 < x.min() <= got["ci_low"] < got["mean"] < got["ci_high"] < np.inf, method
    assert mc.mean_ci(x) == mc.mean_ci(x, mc.DEFAULT_CI)


def _coverage(lo, hi, mu):
    return float(np.mean((lo <= mu) & (mu <= hi)))


@pytest.mark.parametrize("n, band", [(12, (0.80, 0.99)), (100, (0.90, 0.985))])
def test_default_interval_covers_lognormal_mean(n, band):
    """400 lognormal samples (sigma 0.5) of n replications: the default interval holds the
    true mean about 95% of the time (BCa undercovers a little at n = 12: 0.86 measured). An
    interval of the geometric mean instead (t on logs, exponentiated) fails the band."""
    sigma, trials = 0.5, 400
    x = np.random.default_rng(7).lognormal(0.0, sigma, (trials, n))
    mu = np.exp(sigma ** 2 / 2)
    lo, hi = mc.ci_rows(x, mc.DEFAULT_CI, n_resamples=1999)
    assert band[0] <= _coverage(lo, hi, mu) <= band[1]
    assert band[0] <= _coverage(*mc.ci_rows(x, "log-t"), mu) <= band[1]
    assert (lo > 0).all()
    y = np.log(x)
    half = stats.t.ppf(0.975, n - 1) * y.std(axis=1, ddof=1) / np.sqrt(n)
    geo = _coverage(np.exp(y.mean(axis=1) - half), np.exp(y.mean(axis=1) + half), mu)
    if n == 100:
        assert geo < band[0]


def test_bootstrap_interval_is_deterministic():
    x = np.random.default_rng(1).lognormal(2, 1, 30)
    for method in ("bca", "percentile"):
        a, b = mc.mean_ci(x, method), mc.mean_ci(x.copy(), method)
        assert a == b and a["ci_low"] < x.mean() < a["ci_high"]
    rows = mc.mean_ci_rows(np.vstack([x, x[::-1], np.r_[x[:-1], np.nan]]))
    assert rows[0] == mc.mean_ci(x) or rows[0]["ci_low"] == pytest.approx(mc.mean_ci(x)["ci_low"])
    assert rows[2] == mc.mean_ci(x[:-1]) and rows[2]["n"] == 29
    for method in mc.CI_METHODS:  # a row's interval does not depend on the other rows
        rows = mc.mean_ci_rows(np.vstack([_skewed_reps(), np.zeros(12)]), method)
        one = mc.mean_ci(_skewed_reps(), method)
        assert rows[0]["ci_low"] == pytest.approx(one["ci_low"], rel=1e-12), method
        assert rows[1]["ci_low"] == 0.0


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_keeps_finished_reps_and_resume_completes(tmp_path, sig):
    import signal
    import time
    out = tmp_path / "int"
    argv = [sys.executable, "-m", "e3fast.cli", "mc", "--scenario", "cold-start", "--reps", "200",
            "--requests", "3000", "--policies", "rr,sect", "--out", str(out), "--workers", "2",
            "--chunk", "1", "--quiet"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / "reps").glob("rep-*.json"))) < 3:
        time.sleep(0.05)
    p.send_signal(getattr(signal, sig))
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    done = sorted((out / "reps").glob("rep-*.json"))
    assert 3 <= len(done) < 200
    for f in done:
        json.loads(f.read_text())  # every finished file is complete
    assert not list(out.rglob(".e3fast-tmp-*"))
    assert not (out / "summary.json").exists()
    argv[argv.index("200")] = str(len(done) + 2)  # finish a couple more, not all 200
    assert main(argv[3:] + ["--resume"]) == 0  # in-process: saves an interpreter start
    s = json.loads((out / "summary.json").read_text())
    assert s["n_reps"] == len(done) + 2 and s["timing"]["reps_computed"] == 2


def test_ci_option(baseline):
    s = json.loads((baseline / "summary.json").read_text())
    assert s["ci"] == "bca" and "BCa" in s["ci_method"]
    t = mc.aggregate(baseline, ci="t")
    assert t["ci"] == "t"
    assert t["policies"]["e3"]["mean_latency_s"]["mean"] == s["policies"]["e3"]["mean_latency_s"]["mean"]
    assert t["policies"]["e3"]["mean_latency_s"]["ci_low"] != s["policies"]["e3"]["mean_latency_s"]["ci_low"]
    assert "BCa" in mc.format_summary(s)
