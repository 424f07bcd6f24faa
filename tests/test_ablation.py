"""Ablation of the slow path: tool families switched off (`--disable-tools`, mc variants
e3-no-FAMILY), their rejections, the counters the ablation table reads, and the pipeline of
experiments/run_all.py on a small run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from e3fast import montecarlo as mc
from e3fast.control.llm import LLMController
from e3fast.control.tools import (TOOL_FAMILIES, TOOL_NAMES, disabled_tool_names,
                                  parse_tool_families)
from e3fast.errors import E3Error
from e3fast.runner import ensure_compiled, replay
from e3fast.tracefile.generator import GenTraceOptions, generate_trace

from fake_openai_server import FakeOpenAI, text, tool_calls

ROOT = Path(__file__).resolve().parents[1]
ALL = ",".join(TOOL_FAMILIES)


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    """A 20k-request drift trace on 4 devices: the rule controller calibrates at checkpoints."""
    path = tmp_path_factory.mktemp("ablation") / "drift.h5"
    generate_trace(GenTraceOptions(scenario="drift", requests=20000, devices=4, out=str(path)),
                   progress=False)
    ensure_compiled("e3")
    return path


@pytest.fixture(scope="module")
def rule(trace):
    return replay(trace, "e3", controller="rule")


def cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "e3fast.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_families_cover_every_tool_but_get_status_once():
    tools = [t for f in TOOL_FAMILIES.values() for t in f]
    assert sorted(tools) == sorted(set(TOOL_NAMES) - {"get_status"})
    assert parse_tool_families("router, gate,gate") == ("gate", "router")   # canonical order
    assert parse_tool_families(["calibrate"]) == ("calibrate",)
    assert parse_tool_families("") == () and parse_tool_families(None) == ()
    assert disabled_tool_names(("gate",)) == {"set_risk_gate"}
    with pytest.raises(E3Error) as err:
        parse_tool_families("gate,bogus")
    assert "'bogus'" in str(err.value) and all(f in str(err.value) for f in TOOL_FAMILIES)


def test_disabled_calls_are_rejected_recorded_and_counted(trace, rule):
    calibrations = sum(c["tool"] == "calibrate" for r in rule.control_log for c in r["calls"])
    assert calibrations > 0, "the trace should make the rule controller calibrate"
    res = replay(trace, "e3", controller="rule", disable_tools="calibrate")
    s, log = res.summary, res.control_log
    assert s["tools_disabled"] == ["calibrate"] and rule.summary["tools_disabled"] == []
    off = [c for r in log for c in r["calls"] if c["tool"] == "calibrate"]
    assert off and not any(c["accepted"] for c in off)
    assert all("'calibrate' is disabled in this run" in c["message"] for c in off)
    assert s["tool_calls_rejected"] == len(off)


def test_every_family_off_is_the_fast_path_alone(trace):
    """Nothing the controller does gets through: the run equals e3 without controller."""
    off = replay(trace, "e3", controller="rule", disable_tools=ALL).summary
    none = replay(trace, "e3", controller="none").summary
    assert off["checkpoints"] > 0 and off["tool_calls"] == off["tool_calls_rejected"] > 0
    for k in ("mean_latency_s", "p99_latency_s", "stutter_rate", "completed", "rerouted"):
        assert off[k] == none[k], k


def test_llm_is_not_offered_disabled_tools_and_their_calls_are_rejected(trace, monkeypatch):
    monkeypatch.delenv("E3FAST_LLM_API_KEY", raising=False)
    with FakeOpenAI() as srv:
        srv.push(tool_calls(("set_risk_gate", {"device": 0, "klass": "chat", "closed": True})),
                 text())
        res = replay(trace, "e3", disable_tools="gate,router",
                     controller=LLMController(base_url=srv.url, model="fake", timeout_s=5))
        bodies = [r["body"] for r in srv.requests]
    offered = {t["function"]["name"] for t in bodies[0]["tools"]}
    assert offered == {"get_status", "calibrate"}
    first = res.control_log[0]["calls"][0]
    assert not first["accepted"] and "disabled in this run" in first["message"]
    assert res.summary["tools_disabled"] == ["gate", "router"]


@pytest.mark.parametrize("args,words", [
    (["--disable-tools", "gate,bogus"], ["--disable-tools", "unknown tool family 'bogus'",
                                         *TOOL_FAMILIES]),
    (["--policy", "sect", "--disable-tools", "gate"], ["--disable-tools", "--policy e3"])])
def test_cli_mistakes_exit_2_with_one_message(trace, tmp_path, args, words):
    p = cli("replay", trace, "--out", tmp_path / "o", "--quiet", *args)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and all(w in p.stderr for w in words)
    assert not (tmp_path / "o").exists()


def test_mc_unknown_family_exits_2(tmp_path, capsys):
    from e3fast.cli import main
    assert main(["mc", "--scenario", "drift", "--reps", "1", "--requests", "100", "--out",
                 str(tmp_path / "o"), "--disable-tools", "probes"]) == 2
    err = capsys.readouterr().err
    assert "unknown tool family 'probes'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_cli_records_it_in_summary(trace, tmp_path):
    p = cli("replay", trace, "--out", tmp_path / "o", "--quiet", "--disable-tools", "calibrate")
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["tools_disabled"] == [
        "calibrate"]


def test_variant_names_derive_from_the_families():
    assert mc.ablation_variants() == [f"e3-no-{f}" for f in TOOL_FAMILIES]
    assert mc.resolve_variant("e3-no-router-no-gate") == ("e3", "rule", ("gate", "router"))
    assert mc.resolve_variant("e3-llm-no-calibrate") == ("e3", "llm", ("calibrate",))
    assert mc.resolve_variant("sect") == ("sect", "none", ())
    assert mc.resolve_variant("e3-nocontrol-no-gate") is None
    assert mc.parse_variants("sect,e3,e3-no-gate") == ["sect", "e3", "e3-no-gate"]
    for bad, word in (("e3-no-bogus", "unknown tool family"), ("e3-no-gate-no-gate", "twice"),
                      ("e3-no-gate-no-router,e3-no-router-no-gate", "twice"),
                      ("e3-nocontrol-no-gate", "e3-no-FAMILY")):
        with pytest.raises(E3Error, match=word):
            mc.parse_variants(bad)


def test_mc_ablation_is_paired_and_counts_the_slow_path(tmp_path):
    out = tmp_path / "mc"
    o = mc.McOptions(out=str(out), scenario="drift", reps=2, requests=3000, devices=4,
                     policies="sect,e3-nocontrol,e3,e3-no-calibrate", workers=1, quiet=True,
                     disable_tools="router")
    s = mc.run_sweep(o)
    pol = s["policies"]
    assert pol["e3-no-calibrate"]["tools_disabled"] == ["calibrate", "router"]
    assert pol["e3"]["tools_disabled"] == ["router"] and pol["sect"]["tools_disabled"] is None
    assert pol["e3"]["checkpoints_per_h"]["mean"] > 0
    assert pol["e3-nocontrol"]["checkpoints_per_h"]["mean"] == 0
    assert pol["sect"]["checkpoints_per_h"]["mean"] is None         # no controller: "-"
    for r in mc.iter_reps(out):
        e3, ab = r["policies"]["e3"], r["policies"]["e3-no-calibrate"]
        assert e3["requests"] == ab["requests"]                        # the same trace
        hours = e3["duration_s"] / 3600
        assert e3["checkpoints_per_h"] * hours == pytest.approx(e3["checkpoints"])
        assert ab["tool_calls_rejected_per_h"] * hours == pytest.approx(ab["tool_calls_rejected"])
    assert "e3-no-calibrate vs e3" in s["pairs"]
    with pytest.raises(E3Error, match="disable_tools"):      # resume checks the option
        mc.run_sweep(mc.McOptions(**{**vars(o), "disable_tools": None, "resume": True}))


@pytest.mark.parametrize("with_llm", [False, True])
def test_experiments_pipeline_small_run(tmp_path, with_llm):
    """run_all.py end to end on one scenario, 2 replications of 1500 requests, outputs in
    tmp: RESULTS.md has the ablation rows; the e3-llm row says why it is missing, or (with
    an endpoint: the scripted server, answering without tool calls) has its numbers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("E3FAST_LLM_")}
    committed = (ROOT / "experiments" / "RESULTS.md").read_bytes()
    argv = [sys.executable, str(ROOT / "experiments" / "run_all.py"), "--only", "failure",
            "--reps", "2", "--requests", "1500", "--workers", "1", "--llm-reps", "2",
            "--dest", str(tmp_path / "exp")]
    if with_llm:
        with FakeOpenAI() as srv:
            env.update(E3FAST_LLM_BASE_URL=srv.url, E3FAST_LLM_MODEL="fake")
            p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3000)
            assert srv.requests, "the LLM sweep should consult the endpoint"
    else:
        p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3000)
    assert p.returncode == 0, p.stderr[-2000:]
    md = (tmp_path / "exp" / "RESULTS.md").read_text()
    section = md.split("## The slow path: ablation")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| failure |")]
    names = [r.split(" | ")[1] for r in rows]
    assert names == ["sect", "e3-nocontrol (fast path only)", "e3 (rule)",
                     *[f"e3 without {f}" for f in TOOL_FAMILIES], "e3-llm (LLM controller)",
                     "oracle (not a bound)", "lower-bound"]
    cells = {n: r.split(" | ") for n, r in zip(names, rows)}
    llm = cells["e3-llm (LLM controller)"]
    if with_llm:
        assert llm[2] == "2" and "%" in llm[4] and llm[10].startswith("0 (0)")  # no tool calls
    else:
        assert llm[2] == "-" and "E3FAST_LLM_BASE_URL" in llm[3]
    assert cells["e3 (rule)"][4] == "-" and "%" in cells["e3-nocontrol (fast path only)"][4]
    assert cells["sect"][9] == "-" and float(cells["e3 (rule)"][9]) > 0   # checkpoints/h
    summary = json.loads((tmp_path / "exp" / "results" / "failure" / "summary.json").read_text())
    assert set(mc.ablation_variants()) <= set(summary["policies"])
    assert (ROOT / "experiments" / "RESULTS.md").read_bytes() == committed   # --dest honoured


def test_replay_of_an_ablation_needs_the_same_tools_off(trace, tmp_path):
    from e3fast.control.replay import ReplayController
    from e3fast.runner import write_outputs
    res = replay(trace, "e3", controller="rule", disable_tools="calibrate")
    write_outputs(res, tmp_path / "run")
    transcript = tmp_path / "run" / "control.jsonl"
    again = replay(trace, "e3", controller=ReplayController(transcript), disable_tools="calibrate")
    assert again.summary["mean_latency_s"] == res.summary["mean_latency_s"]
    assert again.summary["tool_calls_rejected"] == res.summary["tool_calls_rejected"] > 0
    with pytest.raises(E3Error, match="calibrate call was rejected when recorded and is "
                                      "accepted in this run"):
        replay(trace, "e3", controller=ReplayController(transcript))
