"""The LLM controller against a scripted OpenAI-compatible server on 127.0.0.1.

Every behaviour (valid calls, rejections, text only, HTTP 500/429/400, slow replies,
garbage, refused connections, attempts to exceed the bounds, a server echoing the key):
the run completes in bounded time, rejections and fallbacks are recorded and counted, and
the API key never reaches any output.
"""
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from e3fast.control.llm import SYSTEM_PROMPT, LLMController
from e3fast.errors import E3Error
from e3fast.runner import ensure_compiled, replay, write_outputs
from e3fast.tracefile.generator import GenTraceOptions, generate_trace
from e3fast.tracefile.reader import open_trace

from fake_openai_server import (FakeOpenAI, assert_not_leaked, echo_key_in_arguments,
                                echo_key_in_error, garbage, http_error, slow, text, tool_calls)

SECRET = "sk-e3fast-test-" + uuid.uuid4().hex
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def drift_trace(tmp_path_factory):
    """A 20k-request drift trace on 4 devices (detectors fire: several checkpoints)."""
    path = tmp_path_factory.mktemp("llm") / "drift.h5"
    generate_trace(GenTraceOptions(scenario="drift", requests=20000, devices=4, out=str(path)),
                   progress=False)
    ensure_compiled()
    return path


@pytest.fixture(scope="session")
def rule_log(drift_trace):
    """The rule controller's control log on the drift trace (what a fallback must do)."""
    return replay(drift_trace, "e3", controller="rule").control_log


@pytest.fixture(autouse=True)
def secret_key(monkeypatch):
    for var in ("E3FAST_LLM_BASE_URL", "E3FAST_LLM_MODEL", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("E3FAST_LLM_API_KEY", SECRET)


def fleet(trace):
    """(a model hosted by device 0, the class names) of the trace."""
    with open_trace(trace) as r:
        return r.env.models[int(r.env.hosts[0].argmax())], list(r.env.classes)


def assert_no_secret(folder, *texts):
    assert_not_leaked(SECRET, folder, *texts)


def run(trace, srv_url, out, **kw):
    """Replay with the LLM controller; returns (summary, control log, wall seconds)."""
    ctl = LLMController(base_url=srv_url, model="fake", timeout_s=kw.pop("timeout_s", 0.5), **kw)
    t0 = time.perf_counter()
    res = replay(trace, "e3", controller=ctl)
    wall = time.perf_counter() - t0
    write_outputs(res, out)
    assert_no_secret(out)
    log = [json.loads(line) for line in (Path(out) / "control.jsonl").read_text().splitlines()]
    assert res.summary["checkpoints"] == len(log) > 0
    return res.summary, log, wall


def chat_requests(srv):
    return [r for r in srv.requests if r["path"].endswith("/chat/completions")]


def test_valid_calls_are_applied_and_the_key_only_goes_to_the_server(drift_trace, tmp_path):
    model, classes = fleet(drift_trace)
    with FakeOpenAI() as srv:
        srv.push(tool_calls(("calibrate", {"device": 0, "model": model, "inflate": 5}),
                            ("set_risk_gate", {"device": 1, "klass": classes[0], "closed": True, "hold_s": 86400})),
                 text("done"))
        s, log, _ = run(drift_trace, srv.url, tmp_path / "out")
    calls = log[0]["calls"]
    assert [c["tool"] for c in calls] == ["calibrate", "set_risk_gate"]
    assert all(c["accepted"] and c["effect_s"] == pytest.approx(log[0]["t_s"] + 2.0) for c in calls)
    assert len(log[0]["applied_s"]) == 2
    assert classes[0] in log[1]["observation"]["devices"][1]["gates_closed_until_s"]
    assert log[0]["controller"] == "llm" and log[0]["fallback"] is None
    assert s["controller"] == "llm" and s["controller_fallbacks"] == 0
    assert s["tool_calls"] == 2 and s["tool_calls_rejected"] == 0
    reqs = chat_requests(srv)
    assert len(reqs) == s["checkpoints"] + 1          # one extra round after the tool calls
    assert s["llm_tokens"] == {"prompt": 100 * len(reqs), "completion": 10 * len(reqs)}
    assert all(r["headers"]["authorization"] == f"Bearer {SECRET}" for r in reqs)
    first, second = reqs[0]["body"], reqs[1]["body"]
    assert first["model"] == "fake" and first["messages"][0]["content"] == SYSTEM_PROMPT
    assert json.loads(first["messages"][1]["content"])["t_s"] == log[0]["observation"]["t_s"]
    assert {t["function"]["name"] for t in first["tools"]} == {
        "get_status", "set_risk_gate", "configure_router", "calibrate"}
    tool_msgs = [m for m in second["messages"] if m["role"] == "tool"]
    assert [json.loads(m["content"])["ok"] for m in tool_msgs] == [True, True]


def test_bad_calls_are_rejections_sent_back_not_failures(drift_trace, tmp_path):
    model, _ = fleet(drift_trace)
    bad = [("no_such_tool", {}),                                           # 8 = the cap
           ("calibrate", {"device": 99, "model": model}),                  # unknown device
           ("calibrate", {"device": "zero", "model": model}),              # wrong type
           ("configure_router", {"parameter": "explore", "value": 1e9}),   # beyond bounds
           ("calibrate", '{"device": 0, "model": '),                       # not JSON
           ("calibrate", '{"device": 1e400, "model": "x"}'),               # overflows to inf
           ("configure_router", '{"parameter": "explore", "value": NaN}'),
           ("get_status", '[1, 2]')]                                       # not an object
    with FakeOpenAI() as srv:
        srv.push(tool_calls(*bad[:5]), tool_calls(*bad[5:]), text("giving up"))
        s, log, _ = run(drift_trace, srv.url, tmp_path / "out")
        reqs = chat_requests(srv)
    calls = log[0]["calls"]
    assert len(calls) == len(bad) and not any(c["accepted"] for c in calls)
    assert "unknown tool" in calls[0]["message"] and "out of range" in calls[1]["message"]
    assert "integer" in calls[2]["message"] and "[0.0, 5.0]" in calls[3]["message"]
    assert all("JSON object" in c["message"] for c in calls[4:])
    assert s["tool_calls_rejected"] == len(bad) and s["controller_fallbacks"] == 0
    assert log[-1]["observation"]["router"]["explore"] == 0.5      # nothing got through
    errors = [json.loads(m["content"]) for m in reqs[1]["body"]["messages"] if m["role"] == "tool"]
    assert len(errors) == 5 and all(e["ok"] is False and e["error"] for e in errors)


def test_fifty_calls_in_one_reply_are_capped(drift_trace, tmp_path):
    flood = [("configure_router", {"parameter": "explore", "value": 0.1 * (i % 10)})
             for i in range(50)]
    with FakeOpenAI() as srv:
        srv.push(tool_calls(*flood))
        s, log, _ = run(drift_trace, srv.url, tmp_path / "out")
        n_req = len(chat_requests(srv))
    calls = log[0]["calls"]
    assert len(calls) == 50 and sum(c["accepted"] for c in calls) == 8
    assert all("at most 8 tool calls" in c["message"] for c in calls[8:])
    assert s["tool_calls_rejected"] == 42 and s["controller_fallbacks"] == 0
    assert n_req == s["checkpoints"]            # the cap ends the checkpoint: no more rounds


def test_text_without_tool_calls_is_no_action(drift_trace, tmp_path):
    with FakeOpenAI() as srv:
        s, log, _ = run(drift_trace, srv.url, tmp_path / "out")
    assert s["tool_calls"] == 0 and s["controller_fallbacks"] == 0
    assert all(r["controller"] == "llm" and r["calls"] == [] for r in log)


FAILURES = {  # name -> (behaviours for checkpoint 0, requests it takes, words in the reason)
    "http500": ([http_error(500)] * 3, 3, ["HTTP 500", "3 attempt"]),
    "http503": ([http_error(503)] * 3, 3, ["HTTP 503"]),
    "http429": ([http_error(429)] * 3, 3, ["HTTP 429"]),
    "http400_not_retried": ([http_error(400)], 1, ["HTTP 400"]),
    "slow": ([slow(1.5)] * 3, 3, ["no reply within"]),
    "garbage": ([garbage()], 1, ["unreadable reply"]),
    "not_a_completion": ([{"status": 200, "body": b'{"choices": "x"}',
                           "content_type": "application/json", "delay_s": 0}], 1,
                         ["unreadable reply"]),
    "key_echoed": ([echo_key_in_error] * 3, 3, ["[redacted]"]),
}


@pytest.mark.parametrize("case", FAILURES)
def test_endpoint_failure_falls_back_to_rule_for_that_checkpoint(case, drift_trace, rule_log,
                                                                  tmp_path):
    behaviours, n_tries, words = FAILURES[case]
    with FakeOpenAI() as srv:
        srv.push(*behaviours)
        s, log, wall = run(drift_trace, srv.url, tmp_path / "out")
        n_req = len(chat_requests(srv))
    first = log[0]
    assert first["controller"] == "rule" and all(w in first["fallback"] for w in words)
    assert first["calls"] == rule_log[0]["calls"]                  # the rule decided it
    assert all(r["controller"] == "llm" and r["fallback"] is None for r in log[1:])
    assert s["controller_fallbacks"] == 1
    assert n_req == n_tries + s["checkpoints"] - 1
    assert wall < 3 * 0.5 + 0.6 + 10


def test_429_then_success_is_retried(drift_trace, tmp_path):
    with FakeOpenAI() as srv:
        srv.push(http_error(429), tool_calls(("get_status", {})))
        s, log, _ = run(drift_trace, srv.url, tmp_path / "out")
    assert s["controller_fallbacks"] == 0 and log[0]["calls"][0]["tool"] == "get_status"


def test_stalled_endpoint_is_abandoned_within_the_time_bound(drift_trace, tmp_path):
    with FakeOpenAI(default=slow(3.0)) as srv:
        s, log, wall = run(drift_trace, srv.url, tmp_path / "out", max_consecutive_failures=3)
        n_req = len(chat_requests(srv))
    assert s["checkpoints"] > 3, "the trace should give more checkpoints than the limit"
    assert n_req == 3 * 3                                  # 3 checkpoints x (1 + 2 retries)
    assert s["controller_fallbacks"] == s["checkpoints"]
    assert all("disabled for the rest of the run" in r["fallback"] for r in log[3:])
    assert wall < 3 * (3 * 0.5 + 0.6) + 5


def test_refused_connection_falls_back(drift_trace, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]                     # closed again: nobody listens
    s, log, wall = run(drift_trace, f"http://127.0.0.1:{port}/v1", tmp_path / "out")
    assert s["controller_fallbacks"] == s["checkpoints"]
    assert "connection failed" in log[0]["fallback"] and wall < 20


def test_key_echoed_in_tool_arguments_is_redacted(drift_trace, tmp_path):
    with FakeOpenAI() as srv:
        srv.push(echo_key_in_arguments)
        s, log, _ = run(drift_trace, srv.url, tmp_path / "out")     # run() greps the output
    assert s["tool_calls_rejected"] == 2
    assert "[redacted]" in json.dumps(log[0]["calls"])


def test_configuration_errors_name_the_fix(monkeypatch):
    with pytest.raises(E3Error, match="--llm-base-url"):
        LLMController(model="m")
    with pytest.raises(E3Error, match="--llm-model"):
        LLMController(base_url="http://127.0.0.1:1/v1")
    with pytest.raises(E3Error, match="http"):
        LLMController(base_url="127.0.0.1:8000", model="m")
    with pytest.raises(E3Error, match="--llm-timeout-s"):
        LLMController(base_url="http://127.0.0.1:1/v1", model="m", timeout_s=0)
    monkeypatch.setenv("E3FAST_LLM_BASE_URL", "http://127.0.0.1:1/v1")
    monkeypatch.setenv("E3FAST_LLM_MODEL", "m")
    ctl = LLMController()
    assert (ctl.base_url, ctl.model) == ("http://127.0.0.1:1/v1", "m")
    assert SECRET not in repr(ctl) and SECRET not in repr(vars(ctl).get("rule"))


OBS = {"t_s": 1.0, "alarm": {"kind": "join", "device": 0, "model": None, "statistic": 0.0},
       "devices": [{"device": 0, "type": "t", "online": True, "queue": 0, "last_residual": 0.0,
                    "models": {"m": {}}, "stutter_by_class": {"chat": 0.0},
                    "gates_closed": []}], "fleet_stutter_rate": 0.0, "router": {}}


@pytest.mark.parametrize("env,expected", [({"OPENAI_API_KEY": "sk-other"}, "Bearer sk-other"),
                                          ({}, "Bearer not-needed")])
def test_key_from_environment_only(env, expected, monkeypatch):
    monkeypatch.delenv("E3FAST_LLM_API_KEY")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with FakeOpenAI() as srv:
        info = LLMController(base_url=srv.url, model="fake", timeout_s=0.5).decide(
            OBS, lambda name, args: {"ok": True})
        assert srv.requests[0]["headers"]["authorization"] == expected
    assert info == {"tokens": {"prompt": 100, "completion": 10}}


def test_cli_run_exits_0_and_never_prints_the_key(drift_trace, tmp_path):
    model, _ = fleet(drift_trace)
    out = tmp_path / "cli"
    env = dict(os.environ, E3FAST_LLM_API_KEY=SECRET,
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with FakeOpenAI() as srv:
        srv.push(tool_calls(("calibrate", {"device": 0, "model": model}),
                            ("configure_router", {"parameter": "explore", "value": 1e9})),
                 text(), echo_key_in_error, echo_key_in_error, echo_key_in_error)
        p = subprocess.run([sys.executable, "-m", "e3fast.cli", "replay", str(drift_trace),
                            "--policy", "e3", "--controller", "llm", "--llm-base-url", srv.url,
                            "--llm-model", "fake", "--llm-timeout-s", "0.5", "--out", str(out),
                            "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert_no_secret(out, p.stdout, p.stderr)
    s = json.loads((out / "summary.json").read_text())
    assert s["controller"] == "llm" and s["tool_calls_rejected"] == 1
    assert s["controller_fallbacks"] == 1 and s["checkpoints"] > 1
