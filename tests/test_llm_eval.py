"""e3fast llm-eval against a scripted OpenAI-compatible server on 127.0.0.1: the paired
difference, validity, fallbacks and tokens it prints are those of the replications; a dead
endpoint makes the LLM rows the rule controller's; the key is never written or printed."""
import json
import socket
import uuid

import pytest

from e3fast import montecarlo as mc
from e3fast.cli import main

from fake_openai_server import (USAGE, FakeOpenAI, assert_not_leaked, echo_key_in_error, slow,
                                tool_calls)

SECRET = "sk-e3fast-eval-" + uuid.uuid4().hex
ARGS = ["--scenario", "drift", "--reps", "2", "--requests", "3000", "--devices", "4",
        "--timeout-s", "2"]


@pytest.fixture(autouse=True)
def secret_key(monkeypatch):
    for var in ("E3FAST_LLM_BASE_URL", "E3FAST_LLM_MODEL", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("E3FAST_LLM_API_KEY", SECRET)


def assert_no_secret(folder, *texts):
    assert_not_leaked(SECRET, folder, *texts)


def test_scripted_endpoint(tmp_path, capsys):
    out = tmp_path / "eval"
    with FakeOpenAI() as srv:
        # checkpoint 0 of replication 0: one valid call and one out of range; then text only
        srv.push(tool_calls(("configure_router", {"parameter": "explore", "value": 0.6}),
                            ("configure_router", {"parameter": "explore", "value": 1e9})))
        code = main(["llm-eval", "--base-url", srv.url, "--model", "fake", *ARGS,
                     "--out", str(out)])
        n_requests = len(srv.requests)
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert_no_secret(out, printed.out, printed.err)
    s = json.loads((out / "summary.json").read_text())
    c = s["llm_eval"]
    assert (c["tool_calls"], c["accepted"], c["validity_rate"]) == (2, 1, 0.5)
    assert c["fallbacks"] == 0 and c["checkpoints"] > 0
    assert c["tokens"] == n_requests * USAGE["total_tokens"]
    assert "base_url" not in json.dumps(s) and s["config"]["llm_model"] == "fake"
    reps = list(mc.iter_reps(out))
    a = [r["policies"]["e3-llm"]["mean_latency_s"] for r in reps]
    b = [r["policies"]["e3"]["mean_latency_s"] for r in reps]
    diff = mc.paired(a, b)["diff"]
    assert s["pairs"]["e3-llm vs e3"]["mean_latency_s"]["diff"] == pytest.approx(diff)
    assert f"llm - rule, mean_latency_s: {diff['mean']:+.4g}" in printed.out
    assert "1 valid (50.0%)" in printed.out and f"tokens: {c['tokens']:,}" in printed.out
    assert "fallbacks to the rule controller: 0 of" in printed.out
    assert "rep 1 (2/2)" in printed.out                               # progress per replication
    # the LLM's control logs are transcripts: replayed on the regenerated trace, the same run
    from e3fast.control.replay import ReplayController
    from e3fast.runner import replay
    from e3fast.tracefile.generator import generate_trace
    cfg = json.loads((out / "sweep.json").read_text())
    generate_trace(mc._trace_options(cfg, 0, str(tmp_path / "rep0.h5")), progress=False)
    again = replay(tmp_path / "rep0.h5", "e3", seed=cfg["seed0"],
                   controller=ReplayController(out / "control" / "rep-00000-e3-llm.jsonl"))
    llm0 = reps[0]["policies"]["e3-llm"]
    assert again.summary["mean_latency_s"] == llm0["mean_latency_s"]
    assert again.summary["tool_calls_rejected"] == 1 == pytest.approx(
        llm0["tool_calls_rejected_per_h"] * llm0["duration_s"] / 3600)


@pytest.mark.parametrize("case", ["refused", "slow"])
def test_dead_endpoint_goes_on_with_the_rule_controller(case, tmp_path, capsys):
    out = tmp_path / "eval"
    if case == "refused":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]                  # closed again: nobody listens
        code = main(["llm-eval", "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "m",
                     *ARGS, "--out", str(out)])
        reason = "connection failed"
    else:
        with FakeOpenAI(default=slow(1.0)) as srv:        # every reply after the timeout
            code = main(["llm-eval", "--base-url", srv.url, "--model", "m", *ARGS,
                         "--timeout-s", "0.3", "--out", str(out)])
        reason = "no reply within"
    printed = capsys.readouterr()
    assert code == 0, printed.err
    c = json.loads((out / "summary.json").read_text())["llm_eval"]
    assert c["fallbacks"] == c["checkpoints"] > 0 and c["tool_calls"] == 0
    assert reason in c["first_fallback"]
    assert "the LLM decided no checkpoint" in printed.out
    for r in mc.iter_reps(out):                    # the rule decided: the same run
        assert r["policies"]["e3-llm"]["mean_latency_s"] == r["policies"]["e3"]["mean_latency_s"]
    assert "llm - rule, mean_latency_s: +0 [+0, +0]" in printed.out


def test_hostile_endpoint_echoing_the_key_never_leaks_it(tmp_path, capsys):
    out = tmp_path / "eval"
    with FakeOpenAI(default=echo_key_in_error) as srv:
        code = main(["llm-eval", "--base-url", srv.url, "--model", "fake", *ARGS,
                     "--out", str(out)])
        assert all(r["headers"]["authorization"] == f"Bearer {SECRET}" for r in srv.requests)
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert_no_secret(out, printed.out, printed.err)
    c = json.loads((out / "summary.json").read_text())["llm_eval"]
    assert c["fallbacks"] == c["checkpoints"] and "[redacted]" in c["first_fallback"]
    assert "first reason: " in printed.out and "[redacted]" in printed.out


@pytest.mark.parametrize("argv,word", [
    (["--base-url", "http://127.0.0.1:1/v1"], "--model"),
    (["--model", "m"], "--base-url"),
    (["--base-url", "http://127.0.0.1:1/v1", "--model", "m", "--timeout-s", "0"], "--timeout-s"),
    (["--base-url", "http://127.0.0.1:1/v1", "--model", "m", "--scenario", "real"], "--scenario"),
    (["--base-url", "http://127.0.0.1:1/v1", "--model", "m", "--reps", "0"], "--reps"),
    (["--base-url", "http://127.0.0.1:1/v1", "--model", "m", "--disable-tools", "x"],
     "--disable-tools")])
def test_mistakes_exit_2(argv, word, capsys):
    assert main(["llm-eval", *argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert word in err and "--llm-" not in err and len(err.strip().splitlines()) == 1


def test_shown_url_drops_credentials():
    from e3fast.llmeval import shown_url
    assert shown_url("http://u:pw@host:8000/v1?key=abc#x") == "http://host:8000/v1"
