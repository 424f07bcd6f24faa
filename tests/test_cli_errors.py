"""Option mistakes for every command: exit code 2, one message naming the option or file,
no traceback, nothing written.

Most cases run in-process through ``e3fast.cli.main`` (fast); a few run the real
``python -m e3fast.cli`` to prove the end-to-end behaviour (exit code, stderr).
"""
import importlib
import json
import os
import subprocess
import sys

import pytest

from e3fast.cli import COMMANDS, main
from e3fast.tracefile.generator import GenTraceOptions, generate_trace


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "small.h5"
    generate_trace(GenTraceOptions(scenario="drift", requests=2000, devices=4, seed=1,
                                   out=str(path)), progress=False)
    return path


def run(argv, capsys):
    """main(argv) in-process; returns (exit code, stderr). argparse exits are caught."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err


def check_error(rc, err, token, command):
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines, "no message"
    if lines[-1].startswith(f"e3fast {command}: error: argument") or "usage:" in err:
        assert token in lines[-1], lines[-1]   # argparse: usage, then one error line
    else:
        assert len(lines) == 1, err
        assert lines[0].startswith(f"e3fast {command}: error:" if command else "e3fast: error:")
        assert token in lines[0], lines[0]


def _no_leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".e3fast-")]


REPLAY_CASES = [
    (["--policy", "bogus"], "--policy"),
    (["--controller", "bogus"], "--controller"),
    (["--controller", "replay"], "--transcript"),
    (["--controller", "replay", "--transcript", "nope.jsonl"], "nope.jsonl"),
    (["--controller", "llm"], "--llm-base-url"),
    (["--block-rows", "-5"], "--block-rows"),
    (["--block-rows", "0"], "--block-rows"),
    (["--block-rows", "abc"], "--block-rows"),
    (["--decision-delay-s", "-1"], "--decision-delay-s"),
    (["--decision-delay-s", "nan"], "--decision-delay-s"),
    (["--window-s", "-1"], "--window-s"),
    (["--window-s", "0"], "--window-s"),
    (["--stutter-tpot-s", "-1"], "--stutter-tpot-s"),
    (["--seed", "-1"], "--seed"),
    (["--policy", "sect", "--controller", "llm"], "--controller"),
    (["--policy", "rr", "--transcript", "t.jsonl"], "--transcript"),
    (["--transcript", "t.jsonl"], "--transcript"),
    (["--length-info", "partial"], "--length-info"),
    (["--early-s", "0"], "--early-s"),
    (["--early-s", "-600"], "--early-s"),
    (["--early-s", "nan"], "--early-s"),
    (["--early-s", "inf"], "--early-s"),
    (["--early-s", "ten"], "--early-s"),
]


@pytest.mark.parametrize("extra,token", REPLAY_CASES, ids=[" ".join(c[0]) for c in REPLAY_CASES])
def test_replay_option_mistakes(trace, tmp_path, monkeypatch, capsys, extra, token):
    monkeypatch.chdir(tmp_path)
    rc, err = run(["replay", trace, "--out", "out", "--quiet", *extra], capsys)
    check_error(rc, err, token, "replay")
    assert not (tmp_path / "out").exists()
    assert not _no_leftovers(tmp_path)


def test_replay_missing_trace(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, err = run(["replay", "missing.h5", "--out", "out"], capsys)
    check_error(rc, err, "missing.h5", "replay")
    assert not (tmp_path / "out").exists()


def test_replay_missing_out_is_an_argparse_error(trace, capsys):
    rc, err = run(["replay", trace], capsys)
    check_error(rc, err, "--out", "replay")


def test_replay_out_under_a_file(trace, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    rc, err = run(["replay", trace, "--out", tmp_path / "file" / "out", "--quiet"], capsys)
    check_error(rc, err, "is a file, not a folder", "replay")
    assert (tmp_path / "file").read_text() == "x"


def test_existing_output_refused_then_replaced_with_force(trace, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(["replay", trace, "--out", out, "--quiet", "--policy", "sect"], capsys)[0] == 0
    (out / "marker").write_text("earlier run")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    rc, err = run(["replay", trace, "--out", out, "--quiet", "--policy", "rr"], capsys)
    check_error(rc, err, str(out), "replay")
    assert "--force" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # untouched
    assert json.loads((out / "summary.json").read_text())["policy"] == "sect"
    rc, err = run(["replay", trace, "--out", out, "--quiet", "--policy", "rr", "--force"], capsys)
    assert rc == 0, err
    assert json.loads((out / "summary.json").read_text())["policy"] == "rr"
    assert not (out / "marker").exists()
    assert not _no_leftovers(tmp_path)


def test_force_refuses_a_folder_that_is_not_a_replay_output(trace, tmp_path, capsys):
    precious = tmp_path / "data"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    rc, err = run(["replay", trace, "--out", precious, "--quiet", "--force"], capsys)
    check_error(rc, err, "no summary.json", "replay")
    assert (precious / "thesis.tex").read_text() == "years of work"
    # nor a folder holding the trace itself, nor a file
    rc, err = run(["replay", trace, "--out", trace.parent, "--quiet", "--force"], capsys)
    assert rc == 2 and trace.exists()
    (tmp_path / "f").write_text("x")
    rc, err = run(["replay", trace, "--out", tmp_path / "f", "--quiet", "--force"], capsys)
    check_error(rc, err, "not a folder", "replay")


GEN_CASES = [
    (["--requests", "-5"], "--requests"),
    (["--requests", "0"], "--requests"),
    (["--devices", "0"], "--devices"),
    (["--utilization", "-1"], "--utilization"),
    (["--scenario", "nope"], "--scenario"),
    (["--arrivals", "nope"], "--arrivals"),
    (["--spec", "missing.toml"], "missing.toml"),
]


@pytest.mark.parametrize("extra,token", GEN_CASES, ids=[" ".join(c[0]) for c in GEN_CASES])
def test_gen_trace_option_mistakes(tmp_path, monkeypatch, capsys, extra, token):
    monkeypatch.chdir(tmp_path)
    rc, err = run(["gen-trace", "--out", "g.h5", *extra], capsys)
    check_error(rc, err, token, "gen-trace")
    assert list(tmp_path.iterdir()) == []


def test_gen_trace_without_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    check_error(*run(["gen-trace"], capsys), "--out", "gen-trace")


def test_gen_trace_existing_output_refused(trace, capsys):
    before = trace.stat().st_mtime_ns
    check_error(*run(["gen-trace", "--out", trace, "--requests", "10"], capsys), "--force",
                "gen-trace")
    assert trace.stat().st_mtime_ns == before


def test_gen_trace_negative_seed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    try:
        rc, err = run(["gen-trace", "--out", "g.h5", "--seed", "-1", "--requests", "10"], capsys)
    except ValueError:
        pytest.fail("traceback")
    check_error(rc, err, "--seed", "gen-trace")


IMPORT_CASES = [
    (["missing.csv", "--format", "azure", "--out", "i.h5"], "missing.csv"),
    (["--format", "nope"], "--format"),
    (["data.csv", "--format", "azure", "--out", "i.h5", "--devices", "-1"], "--devices"),
    (["data.csv", "--format", "azure", "--out", "i.h5", "--limit", "-1"], "--limit"),
    (["data.csv", "--format", "azure"], "--out"),
    ([], "CSV"),
]


@pytest.mark.parametrize("extra,token", IMPORT_CASES, ids=[" ".join(c[0]) or "no file" for c in IMPORT_CASES])
def test_import_trace_option_mistakes(tmp_path, monkeypatch, capsys, extra, token):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    rc, err = run(["import-trace", *extra], capsys)
    check_error(rc, err, token, "import-trace")
    assert not (tmp_path / "i.h5").exists()


def test_inspect_mistakes(tmp_path, capsys):
    check_error(*run(["inspect", tmp_path / "missing.h5"], capsys), "missing.h5", "inspect")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(os.urandom(256))
    check_error(*run(["inspect", junk], capsys), "junk.h5", "inspect")


def test_priors_mistakes(capsys):
    check_error(*run(["priors", "--model", "nope"], capsys), "--model", "priors")
    check_error(*run(["priors", "--bogus"], capsys), "--bogus", "priors")


def test_demo_runs_end_to_end(capsys):
    assert main(["demo", "--requests", "3000"]) == 0
    out = capsys.readouterr().out
    assert "Loading the compiled kernels" in out
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["policy", "controller"])
    table = [line.split() for line in lines[head + 1:head + 8]]
    assert [row[0] for row in table] == ["rr", "jsq", "sect", "e3-nocontrol", "e3", "oracle",
                                         "lower-bound"]
    assert all(row[9] == "3000" and row[10] == "0" for row in table)  # done, dropped
    # what each saw of output lengths: the Oracle everything
    assert [row[-1] for row in table] == ["hidden"] * 5 + ["full"] * 2
    assert "lower than the best baseline (" in out


def test_demo_mistakes(capsys):
    check_error(*run(["demo", "--requests", "-1"], capsys), "requests", "demo")
    check_error(*run(["demo", "--devices", "0"], capsys), "devices", "demo")
    check_error(*run(["demo", "--scenario", "nope"], capsys), "--scenario", "demo")
    check_error(*run(["demo", "--length-info", "nope"], capsys), "--length-info", "demo")


def _command_available(name):
    if name not in COMMANDS:
        return False
    try:
        importlib.import_module(COMMANDS[name][0])
    except ImportError:
        return False
    return True


MC_CASES = [
    (["--reps", "-1"], "--reps"),
    (["--reps", "0"], "--reps"),
    (["--requests", "-1"], "--requests"),
    (["--workers", "0"], "--workers"),
    (["--chunk", "0"], "--chunk"),
    (["--policies", "rr,bogus"], "--policies"),
    (["--scenario", "nope"], "--scenario"),
    (["--length-info", "nope"], "--length-info"),
    (["--early-s", "0"], "--early-s"),
    (["--early-s", "nan"], "--early-s"),
]


@pytest.mark.parametrize("extra,token", MC_CASES, ids=[" ".join(c[0]) for c in MC_CASES])
def test_mc_option_mistakes(tmp_path, monkeypatch, capsys, extra, token):
    if not _command_available("mc"):
        pytest.skip("mc not available")
    monkeypatch.chdir(tmp_path)
    args = ["mc", "--out", "m", *extra]
    if "--scenario" not in extra:
        args += ["--scenario", "drift"]
    check_error(*run(args, capsys), token, "mc")
    assert not (tmp_path / "m").exists()


def test_mc_existing_output_refused(tmp_path, capsys):
    if not _command_available("mc"):
        pytest.skip("mc not available")
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep").write_text("x")
    check_error(*run(["mc", "--out", out, "--scenario", "drift"], capsys), str(out), "mc")
    assert (out / "keep").read_text() == "x"


def test_corpus_and_report_mistakes(tmp_path, capsys):
    if _command_available("gen-corpus"):
        check_error(*run(["gen-corpus", tmp_path / "missing.toml"], capsys), "missing.toml",
                    "gen-corpus")
    if _command_available("report"):
        check_error(*run(["report", tmp_path / "nothing"], capsys), "nothing", "report")


def test_unknown_command_and_bare_usage(capsys):
    check_error(*run(["bogus"], capsys), "'bogus'", None)
    rc, err = run([], capsys)
    assert rc == 2


@pytest.mark.parametrize("argv,token,command", [
    (["bogus"], "'bogus'", None),
    (["replay", "missing.h5", "--out", "o"], "missing.h5", "replay"),
    (["gen-trace", "--out", "g.h5", "--scenario", "nope"], "--scenario", "gen-trace"),
])
def test_real_process_exit_code_and_stderr(tmp_path, argv, token, command):
    p = subprocess.run([sys.executable, "-m", "e3fast.cli", *argv], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    check_error(p.returncode, p.stderr, token, command)
    assert list(tmp_path.iterdir()) == []
