"""The replay controller: a recorded control.jsonl reproduces its run's summary exactly."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from e3fast.control.llm import LLMController
from e3fast.control.replay import ReplayController
from e3fast.errors import E3Error
from e3fast.runner import TIMING_KEYS, ensure_compiled, replay, write_outputs
from e3fast.tracefile.generator import GenTraceOptions, generate_trace
from e3fast.tracefile.reader import open_trace

from fake_openai_server import FakeOpenAI, http_error, text, tool_calls

ROOT = Path(__file__).resolve().parents[1]
# what may differ between a run and its replay: timing, who decided, tokens (a replay spends none)
VOLATILE = set(TIMING_KEYS) | {"controller", "llm_tokens"}


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """Two drift traces (different seeds) on 4 devices."""
    d = tmp_path_factory.mktemp("replay")
    for seed in (0, 1):
        generate_trace(GenTraceOptions(scenario="drift", requests=20000, devices=4, seed=seed,
                                       out=str(d / f"drift{seed}.h5")), progress=False)
    ensure_compiled()
    return d / "drift0.h5", d / "drift1.h5"


def cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "e3fast.cli", "replay", *map(str, args),
                           "--quiet"], env=env, capture_output=True, text=True, timeout=300)


def load(out):
    summary = json.loads((out / "summary.json").read_text())
    log = [json.loads(line) for line in (out / "control.jsonl").read_text().splitlines()]
    return summary, log


def assert_same_run(a, b):
    (sa, la), (sb, lb) = load(a), load(b)
    assert sa["checkpoints"] > 0
    assert {k: v for k, v in sa.items() if k not in VOLATILE} == \
        {k: v for k, v in sb.items() if k not in VOLATILE}
    assert sb["controller"] == "replay"
    strip = [{k: v for k, v in r.items() if k != "controller"} for r in la]
    assert strip == [{k: v for k, v in r.items() if k != "controller"} for r in lb]
    assert [r["controller"] for r in lb if r["fallback"]] == \
        [r["controller"] for r in la if r["fallback"]]


def test_replay_of_a_rule_run_is_identical(traces, tmp_path):
    trace = traces[0]
    p = cli(trace, "--policy", "e3", "--controller", "rule", "--out", tmp_path / "rule")
    assert p.returncode == 0, p.stderr
    p = cli(trace, "--policy", "e3", "--controller", "replay", "--transcript",
            tmp_path / "rule" / "control.jsonl", "--out", tmp_path / "again")
    assert p.returncode == 0, p.stderr
    assert_same_run(tmp_path / "rule", tmp_path / "again")


def test_replay_of_an_llm_run_is_identical(traces, tmp_path, monkeypatch):
    monkeypatch.setenv("E3FAST_LLM_API_KEY", "sk-replay-test")
    trace = traces[0]
    with open_trace(trace) as r:
        model, klass = r.env.models[int(r.env.hosts[1].argmax())], r.env.classes[0]
    with FakeOpenAI() as srv:   # accepted, rejected and malformed calls, then a fallback
        srv.push(tool_calls(("calibrate", {"device": 1, "model": model, "inflate": 50}),
                            ("set_risk_gate", {"device": 2, "klass": klass, "closed": True}),
                            ("configure_router", {"parameter": "explore", "value": 1e9}),
                            ("calibrate", "{not json"), ("get_status", {})),
                 text(), http_error(500), http_error(500), http_error(500),
                 tool_calls(("configure_router", {"parameter": "risk_weight", "value": 5})))
        res = replay(trace, "e3", controller=LLMController(base_url=srv.url, model="fake",
                                                           timeout_s=0.5))
    write_outputs(res, tmp_path / "llm")
    s = res.summary
    assert s["controller_fallbacks"] == 1 and s["tool_calls_rejected"] == 2
    p = cli(trace, "--policy", "e3", "--controller", "replay", "--transcript",
            tmp_path / "llm" / "control.jsonl", "--out", tmp_path / "again")
    assert p.returncode == 0, p.stderr
    assert_same_run(tmp_path / "llm", tmp_path / "again")
    again, _ = load(tmp_path / "again")
    assert again["controller_fallbacks"] == 1 and again["llm_tokens"] is None


def test_transcript_of_another_trace_is_refused(traces, tmp_path):
    p = cli(traces[0], "--policy", "e3", "--out", tmp_path / "rule")
    assert p.returncode == 0, p.stderr
    p = cli(traces[1], "--policy", "e3", "--controller", "replay", "--transcript",
            tmp_path / "rule" / "control.jsonl", "--out", tmp_path / "other")
    assert p.returncode == 2
    assert "does not match this trace/options at checkpoint 0" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "other").exists()


@pytest.mark.parametrize("content,words", [
    (None, ["not found"]),
    ('{"checkpoint": 0, "t_s": 1.0, "alarm": {}, "calls": []}\n{oops\n', ["line 2", "JSON"]),
    ('{"checkpoint": 3, "t_s": 1.0, "alarm": {}, "calls": []}\n', ["line 1", "checkpoint 0"]),
    ('{"checkpoint": 0, "t_s": 1.0, "alarm": {}, "calls": [{"tool": 1}]}\n', ["line 1"]),
])
def test_bad_transcripts_name_file_and_line(content, words, tmp_path):
    path = tmp_path / "control.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(E3Error) as err:
        ReplayController(path)
    assert str(path) in str(err.value) and all(w in str(err.value) for w in words)


def test_cli_bad_transcript_exits_2_without_traceback(traces, tmp_path):
    bad = tmp_path / "control.jsonl"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n garbage")
    for extra in (["--transcript", bad], ["--transcript", tmp_path / "missing.jsonl"], []):
        p = cli(traces[0], "--policy", "e3", "--controller", "replay", *extra,
                "--out", tmp_path / "x")
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert "--transcript" in p.stderr or str(tmp_path) in p.stderr


def test_transcript_shorter_than_the_run_is_refused(traces, tmp_path):
    res = replay(traces[0], "e3", controller="rule")
    write_outputs(res, tmp_path / "rule")
    lines = (tmp_path / "rule" / "control.jsonl").read_text().splitlines()
    (tmp_path / "short.jsonl").write_text("\n".join(lines[:1]) + "\n")
    with pytest.raises(E3Error, match="at checkpoint 1: it records only 1"):
        replay(traces[0], "e3", controller=ReplayController(tmp_path / "short.jsonl"))
