"""e3fast report: tables and PNG+PDF figures for replay folders, mc folders and collections."""

import pytest

from e3fast.cli import main
from e3fast.runner import replay, write_outputs
from e3fast.tracefile.generator import GenTraceOptions, generate_trace


@pytest.fixture(scope="module")
def replays(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep")
    trace = root / "sem.h5"
    generate_trace(GenTraceOptions(scenario="semantic", requests=3000, devices=4, seed=1,
                                   out=str(trace)), progress=False)
    for policy, ctl, per in (("rr", "none", True), ("sect", "none", True), ("e3", "rule", False)):
        write_outputs(replay(trace, policy, controller=ctl, per_request=per), root / "runs" / policy)
    return root / "runs"


@pytest.fixture(scope="module")
def mcs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mcs")
    for scen in ("cold-start", "drift"):
        assert main(["mc", "--scenario", scen, "--reps", "3", "--requests", "1500", "--devices", "4",
                     "--policies", "rr,sect,e3,oracle,lower-bound", "--out", str(root / scen), "--quiet"]) == 0
    return root


def _figs(folder):
    return sorted(p.name for p in folder.iterdir())


def test_replay_folder_plots(replays, capsys):
    assert main(["report", str(replays), "--plots"]) == 0
    out = capsys.readouterr().out
    assert "sect" in out and "e3" in out
    figs = _figs(replays / "figures")
    for stem in ("latency_time", "stutter_time", "latency_cdf"):  # semantic: stutter too
        assert f"{stem}.png" in figs and f"{stem}.pdf" in figs
    assert (replays / "figures" / "latency_time.png").read_bytes()[:4] == b"\x89PNG"
    assert (replays / "figures" / "latency_time.pdf").read_bytes()[:4] == b"%PDF"


def test_single_replay_without_requests_skips_cdf_with_a_note(replays, tmp_path, capsys):
    assert main(["report", str(replays / "e3"), "--plots", "--fig-dir", str(tmp_path / "f")]) == 0
    assert "latency CDF skipped" in capsys.readouterr().out
    assert "latency_time.pdf" in _figs(tmp_path / "f") and "latency_cdf.png" not in _figs(tmp_path / "f")


def test_mc_folder_and_collection_plots(mcs, tmp_path, capsys):
    assert main(["report", str(mcs / "drift"), "--plots"]) == 0
    out = capsys.readouterr().out
    assert "lower mean latency than" in out and "above the lower bound" in out
    assert "oracle (full information, not a bound)" in out and "lower-bound (bound, not a router)" in out
    figs = _figs(mcs / "drift" / "figures")
    for stem in ("ci_bars", "latency_curves"):
        assert f"{stem}.png" in figs and f"{stem}.pdf" in figs
    assert main(["report", str(mcs), "--plots", "--fig-dir", str(tmp_path / "all")]) == 0
    out = capsys.readouterr().out
    assert "best baseline" in out and "cold-start" in out and "gap to lower-bound (bound" in out
    figs = _figs(tmp_path / "all")
    assert {"headline.png", "headline.pdf", "drift_ci_bars.pdf", "cold-start_latency_curves.png"} <= set(figs)


def test_bad_folder_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "no results found" in err and "Traceback" not in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.json").write_text("{not json")
    assert main(["report", str(bad)]) == 2
