"""import-trace: Azure and BurstGPT readers (real and hand-written CSVs), the Mooncake JSON-lines
reader and its prefix blocks, the import, the CLI."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from e3fast.errors import E3Error
from e3fast.tracefile import importers, open_trace, validate_trace
from e3fast.tracefile.importers import ImportTraceOptions, import_trace, read_csv
from e3fast.tracefile.inspect import inspect_trace

# The real Azure 2023 traces live in the shared data folder next to the repo: the tests read
# real rows from there instead of copying the data into the repo (CC-BY data, 1 MB), and skip
# when the folder is absent (e.g. a fresh clone without ../shared).
AZURE = Path(__file__).resolve().parents[2] / "shared" / "data" / "azure_llm_2023"
needs_azure = pytest.mark.skipif(not (AZURE / "AzureLLMInferenceTrace_conv.csv").exists(),
                                 reason="../shared/data/azure_llm_2023 not present")

AZ_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
BG_HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"


def write(tmp_path, text, name="t.csv"):
    p = tmp_path / name
    p.write_bytes(text.encode())
    return p


def azure_csv(tmp_path, rows, name="t.csv"):
    """Azure layout exactly: CRLF line ends, no newline after the last row."""
    return write(tmp_path, "\r\n".join([AZ_HEADER, *rows]), name)


@needs_azure
@pytest.mark.parametrize("name,rows,span", [("conv", 19366, 3501.7), ("code", 8819, 3435.9)])
def test_azure_real_files(name, rows, span):
    r = read_csv(AZURE / f"AzureLLMInferenceTrace_{name}.csv", "azure")
    assert r.n == r.rows_read == rows and not r.skipped and r.reordered == 0
    assert r.arrival_s[0] == 0 and abs(r.arrival_s[-1] - span) < 0.05
    assert np.all(np.diff(r.arrival_s) > 0)  # no repeated timestamps in these files
    assert r.in_tokens.min() >= 1 and r.out_tokens.min() >= 1


@needs_azure
def test_azure_real_first_rows_exact():
    r = read_csv(AZURE / "AzureLLMInferenceTrace_conv.csv", "azure", limit=2)
    # 18:15:50.9951690 - 18:15:46.6805900, all 7 fractional digits kept
    assert r.n == 2 and abs(r.arrival_s[1] - 4.314579) < 1e-9
    assert r.in_tokens.tolist() == [374, 396] and r.out_tokens.tolist() == [44, 109]


@needs_azure
def test_import_real_azure_to_utilisation(tmp_path):
    out = tmp_path / "az.h5"
    s = import_trace(ImportTraceOptions(file=str(AZURE / "AzureLLMInferenceTrace_conv.csv"),
                                        format="azure", out=str(out), devices=4, utilization=0.5))
    assert s["imported"] == 19366 and s["klass"] == "chat" and s["model"] == "llama3.1-8b"
    v = validate_trace(out, strict=True)
    with open_trace(out) as tr:
        env, d, p = tr.env, tr.read_all(), tr.params
        assert tr.scenario == "real" and p["overlay"] == "cold-start" and p["utilization"] == 0.5
    # offered load under the priors is the requested utilisation of the requested fleet (the
    # cold-start overlay adds a device of a type without prior: capacity on top, not counted)
    m, cap = d["model"], 0.0
    assert len(env.device_type) == 5 and not env.prior_known[env.device_type[4]].any()
    for t in env.device_type[:4]:
        cap += 1 / np.mean(env.prior_a[t, m] + env.prior_b[t, m] * d["out_tokens"] + env.prior_c[t, m] * d["in_tokens"])
    assert abs(v["n_requests"] / d["arrival_s"][-1] / cap - 0.5) < 1e-6


def test_azure_handwritten_crlf_no_final_newline(tmp_path):
    p = azure_csv(tmp_path, ["2023-11-16 23:59:59.9999999,10,5", "2023-11-17 00:00:00.0000001,20,6",
                             "2023-11-17 00:00:01.5,30,7"])
    r = read_csv(p, "azure")
    assert r.n == 3 and np.allclose(r.arrival_s, [0, 2e-7, 1.5000001], atol=1e-9)
    assert r.in_tokens.tolist() == [10, 20, 30] and r.out_tokens.tolist() == [5, 6, 7]


def test_azure_timezone_and_reordered_rows(tmp_path):
    p = azure_csv(tmp_path, ["2024-05-10 00:00:05+00:00,1,1", "2024-05-10 02:00:00.25+02:00,2,2",
                             "2024-05-10 00:00:01.5Z,3,3"])
    r = read_csv(p, "azure")
    # 02:00:00.25+02:00 is 00:00:00.25 UTC, the earliest: times count from it after sorting
    assert r.reordered == 3 and np.allclose(r.arrival_s, [0, 1.25, 4.75])
    assert r.in_tokens.tolist() == [2, 3, 1]


@pytest.mark.parametrize("body,line,needle", [
    ("TIME,ContextTokens,GeneratedTokens\r\n2023-11-16 18:15:46.6805900,1,1", 1, "bad header"),
    (AZ_HEADER + "\r\n2023-11-16 18:15:46.6805900,1,1\r\n2023-11-16 25:15:46.1,1,1", 3, "bad timestamp"),
    (AZ_HEADER + "\r\n2023-13-16 18:15:46.1,1,1", 2, "bad timestamp"),
    (AZ_HEADER + "\r\n16/11/2023 18:15,1,1", 2, "bad timestamp"),
    (AZ_HEADER + "\r\n2023-11-16 18:15:46.1,-4,1", 2, "negative token count"),
    (AZ_HEADER + "\r\n2023-11-16 18:15:46.1,abc,1", 2, "bad token count"),
    (AZ_HEADER + "\r\n2023-11-16 18:15:46.1,1", 2, "2 fields"),
    (AZ_HEADER + "\r\n2023-11-16 18:15:46.1,1,1\r\n" + "9" * 10000, 3, "longer than"),
])
def test_azure_bad_inputs_name_file_and_line(tmp_path, body, line, needle):
    p = write(tmp_path, body)
    with pytest.raises(E3Error, match=needle) as err:
        read_csv(p, "azure")
    assert f"{p}, line {line}" in str(err.value) and err.value.fix


@pytest.mark.parametrize("body,needle", [("", "empty file"), (AZ_HEADER + "\r\n", "no data rows"),
                                         ("\x89HDF\r\n\x1a\n\xff\xfe", "line 1")])
def test_empty_or_binary_files(tmp_path, body, needle):
    p = tmp_path / "e.csv"
    p.write_bytes(body.encode("latin-1"))
    with pytest.raises(E3Error, match=needle):
        read_csv(p, "azure")


def test_burstgpt_failed_rows_and_extra_columns(tmp_path):
    # BurstGPT_3 layout: Session ID and Elapsed time inserted after Timestamp
    p = write(tmp_path, "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,"
                        "Total tokens,Log Type\n"
                        "5,s1,0.5,ChatGPT,472,18,490,Conversation log\n"
                        "45,s1,1.0,ChatGPT,1087,230,1317,Conversation log\n"
                        "60,s2,0.0,GPT-4,300,0,300,API log\n"
                        "118,s3,2.0,GPT-4,417,276,693,Conversation log\n"
                        "120,s4,0.0,ChatGPT,12,0,12,API log\n")
    r = read_csv(p, "burstgpt")
    assert r.rows_read == 5 and r.n == 3
    assert r.skipped == {"failed request (Response tokens = 0)": 2}
    assert r.arrival_s.tolist() == [0.0, 40.0, 113.0] and r.out_tokens.tolist() == [18, 230, 276]
    assert r.source_models == {"ChatGPT": 2, "GPT-4": 1}


def test_burstgpt_columns_by_name_any_order(tmp_path):
    p = write(tmp_path, "Response tokens,Request tokens,Model,Timestamp\r\n7,3,ChatGPT,1.5\r\n9,4,GPT-4,2")
    r = read_csv(p, "burstgpt")
    assert r.in_tokens.tolist() == [3, 4] and r.out_tokens.tolist() == [7, 9]
    assert np.allclose(r.arrival_s, [0, 0.5])


@pytest.mark.parametrize("row,needle", [("abc,ChatGPT,1,1,2,x", "bad timestamp"),
                                        ("-3,ChatGPT,1,1,2,x", "bad timestamp"),
                                        ("5,ChatGPT,1,-1,0,x", "negative token count")])
def test_burstgpt_bad_rows(tmp_path, row, needle):
    p = write(tmp_path, f"{BG_HEADER}\n5,ChatGPT,1,1,2,x\n{row}\n")
    with pytest.raises(E3Error, match=needle) as err:
        read_csv(p, "burstgpt")
    assert "line 3" in str(err.value)


def test_burstgpt_import_with_overlay_and_time_scale(tmp_path):
    rows = "\n".join(f"{i * 2},ChatGPT,{100 + i},{0 if i % 5 == 0 else 10 + i},0,x" for i in range(1, 51))
    p = write(tmp_path, f"{BG_HEADER}\n{rows}")
    out = tmp_path / "bg.h5"
    s = import_trace(ImportTraceOptions(file=str(p), format="burstgpt", out=str(out), time_scale=0.5,
                                        scenario="drift", seed=3, limit=30))
    assert s["rows_read"] == 37 and s["imported"] == 30 and sum(s["skipped"].values()) == 7
    with open_trace(out) as tr:
        d = tr.read_all()
        assert tr.scenario == "real" and tr.params["overlay"] == "drift"
        assert tr.env.extra["scenario"] == "drift"  # episodes in seconds: none in 30 s
        assert tr.env.extra["scenario_params"]["drift_gap_s"] == 1800.0
    assert d["arrival_s"][1] == 1.0 and d["in_tokens"][0] == 101


def test_import_option_errors(tmp_path):
    p = azure_csv(tmp_path, ["2023-11-16 18:15:46.1,1,1", "2023-11-16 18:15:47.1,1,1"])
    base = dict(file=str(p), format="azure", out=str(tmp_path / "o.h5"))
    for kw, needle in ((dict(utilization=0.5, time_scale=2.0), "both"), (dict(time_scale=0.0), "> 0"),
                       (dict(utilization=9.0), "utilisation"), (dict(model="sdxl"), "model"),
                       (dict(devices=0), "devices"), (dict(format=None), "format")):
        with pytest.raises(E3Error, match=needle):
            import_trace(ImportTraceOptions(**{**base, **kw}))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "e3fast.cli", "import-trace", *args],
                          capture_output=True, text=True)


def test_cli(tmp_path):
    p = azure_csv(tmp_path, [f"2023-11-16 18:15:{10 + i:02d}.1234567,{i + 1},{i + 2}" for i in range(20)])
    out = tmp_path / "cli.h5"
    r = run_cli("--format", "azure", str(p), "--devices", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "imported 20 of 20 rows" in r.stdout and out.exists()
    bad = write(tmp_path, AZ_HEADER + "\r\n2023-11-16 18:15:46.1,1,-1", "bad.csv")
    r = run_cli("--format", "azure", str(bad), "--out", str(tmp_path / "b.h5"))
    assert r.returncode == 2 and "line 2" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b.h5").exists()


# --------------------------------------------------------------------------- Mooncake (JSON lines)

# The Mooncake FAST'25 conversation trace (Apache-2.0, 3 MB) lives in the shared data folder
# next to the repo, like the Azure files: the round trip reads the real file there and skips
# when it is absent. Everything else uses hand-written lines.
MOONCAKE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mooncake_fast25" / "conversation_trace.jsonl"
needs_mooncake = pytest.mark.skipif(not MOONCAKE.exists(),
                                    reason="../shared/data/mooncake_fast25 not present")


def jsonl(tmp_path, recs, name="m.jsonl"):
    return write(tmp_path, "".join(json.dumps(r) + "\n" for r in recs), name)


def rec(t, i, o, ids=None, **extra):
    return {"timestamp": t, "input_length": i, "output_length": o,
            "hash_ids": list(range(-(-i // 512))) if ids is None else ids, **extra}


def naive_reuse(records):
    """Reused prompt tokens under a perfect shared prefix cache, by the definition."""
    seen, reused = set(), 0
    for r in records:
        k = 0
        while k < len(r["hash_ids"]) and r["hash_ids"][k] in seen:
            k += 1
        reused += min(k * 512, r["input_length"])
        seen.update(r["hash_ids"])
    return reused


@needs_mooncake
def test_mooncake_real_file_round_trip(tmp_path):
    records = [json.loads(line) for line in MOONCAKE.read_text().splitlines()]
    out = tmp_path / "mc.h5"
    s = import_trace(ImportTraceOptions(file=str(MOONCAKE), format="mooncake", out=str(out),
                                        devices=4, time_scale=1.0))
    # the README: 12,031 requests, timestamps 0 .. 3,536,999 ms, prompts mean 12,035 (max
    # 126,195), outputs mean 343 (1 .. 2,000); no request exceeds llama3.1-8b's context
    assert s["imported"] == s["rows_read"] == 12031 and s["skipped"] == {}
    assert s["prefix_block_tokens"] == 512 and s["klass"] == "chat"
    with open_trace(out) as tr:
        d = tr.read_all()
        assert tr.params["format"] == "mooncake" and tr.prefix_block_tokens == 512
    assert d["arrival_s"][0] == 0 and d["arrival_s"][-1] == 3536.999
    assert np.array_equal(d["arrival_s"], [r["timestamp"] / 1000 for r in records])
    assert round(d["in_tokens"].mean()) == 12035 and d["in_tokens"].max() == 126195
    assert round(d["out_tokens"].mean()) == 343 and d["out_tokens"].min() == 1 and d["out_tokens"].max() == 2000
    # the blocks, read back with plain h5py
    with h5py.File(out, "r") as f:
        assert f["prefix"].attrs["block_tokens"] == 512
        offsets, ids = f["prefix/offsets"][:], f["prefix/block_ids"][:]
    assert offsets.tolist() == np.concatenate(([0], np.cumsum([len(r["hash_ids"]) for r in records]))).tolist()
    assert ids.tolist() == [h for r in records for h in r["hash_ids"]]
    pre = inspect_trace(out)["prefix"]
    assert pre["n_blocks"] == 288500 and pre["prompt_tokens"] == int(d["in_tokens"].sum())
    assert pre["reused_tokens"] == naive_reuse(records)
    assert abs(pre["reuse_share"] - 0.3736) < 1e-4


def test_mooncake_streams_in_blocks(tmp_path, monkeypatch):
    """Rows, blocks and z do not depend on the import's block size; replays ignore /prefix."""
    rng = np.random.default_rng(1)
    recs, t, nid = [], 0, 0
    for _ in range(50):
        t += int(rng.integers(0, 3000))
        i = int(rng.integers(1, 3000))
        share = int(rng.integers(0, 2))  # share a system-prompt block, or not
        ids = ([0] if share else []) + list(range(nid, nid + -(-i // 512) - share))
        nid += len(ids)
        recs.append(rec(t, i, int(rng.integers(1, 500)), ids))
    p = jsonl(tmp_path, recs)
    outs = []
    for rows in (7, 1 << 16):
        monkeypatch.setattr(importers, "IMPORT_BLOCK_ROWS", rows)
        out = tmp_path / f"b{rows}.h5"
        import_trace(ImportTraceOptions(file=str(p), format="mooncake", out=str(out), devices=3, seed=4))
        outs.append(out)
    with h5py.File(outs[0], "r") as a, h5py.File(outs[1], "r") as b:
        for name in ("requests/arrival_s", "requests/z", "requests/in_tokens", "prefix/offsets", "prefix/block_ids"):
            assert np.array_equal(a[name][:], b[name][:]), name
    # blocks() of the trace are the same without the /prefix group (replays read only blocks)
    bare = tmp_path / "bare.h5"
    shutil.copy(outs[0], bare)
    with h5py.File(bare, "a") as f:
        del f["prefix"]
    with open_trace(outs[0]) as tr, open_trace(bare) as tb:
        assert tb.prefix_block_tokens is None
        x, y = tr.read_all(), tb.read_all()
        assert all(np.array_equal(x[k], y[k]) for k in x)
    assert inspect_trace(bare)["prefix"] is None
    assert inspect_trace(outs[0])["prefix"]["reused_tokens"] == naive_reuse(recs)
    from e3fast.tracefile.inspect import PrefixReuse
    monkeypatch.setattr(PrefixReuse, "ROWS", 3)  # reuse across the steps of one block
    assert inspect_trace(outs[0])["prefix"]["reused_tokens"] == naive_reuse(recs)


def test_mooncake_skips_are_counted(tmp_path):
    recs = [rec(0, 100, 5), rec(1, 100, 0), rec(2, 131_000, 100), rec(3, 131_000, 72), rec(4, 200, 9)]
    s = import_trace(ImportTraceOptions(file=str(jsonl(tmp_path, recs)), format="mooncake",
                                        out=str(tmp_path / "o.h5"), time_scale=1.0))
    # prompt + output over llama3.1-8b's 131,072 tokens: skipped (a server rejects it), counted
    assert s["rows_read"] == 5 and s["imported"] == 3
    assert s["skipped"] == {"no output tokens": 1,
                            "prompt + output over the model's 131,072-token context": 1}
    with open_trace(tmp_path / "o.h5") as tr:
        assert tr.read_all()["in_tokens"].tolist() == [100, 131_000, 200]


def _lines_of(*recs):
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in recs)


MOONCAKE_BAD = [
    (_lines_of(rec(0, 10, 1), '{"timestamp": 5, "input_length": 10, "outp'), 2, "not valid JSON"),
    (_lines_of(rec(0, 10, 1), {"timestamp": 5, "input_length": 10, "hash_ids": [0]}), 2,
     "missing field 'output_length'"),
    (_lines_of(rec(-1, 10, 1)), 1, "negative timestamp"),
    (_lines_of(rec(0, 10, 1), rec(10**400, 10, 1)), 2, "bad timestamp"),
    (_lines_of(rec(0, 10, 1), rec(0, 10, 1)).replace("0,", "NaN,", 1), 1, "bad timestamp"),
    (_lines_of(rec(0, 10, 1), rec(9, 10, 1), rec(8, 10, 1)), 3, "before the previous line"),
    (_lines_of(rec(0, 10, 1), rec(1, 10.5, 1, [0])), 2, "not an integer"),
    (_lines_of(rec(0, "10", 1, [0])), 1, "not an integer"),
    (_lines_of(rec(0, 10, -2)), 1, "negative output_length"),
    (_lines_of(rec(0, 10, 1), rec(0, 1000, 1, [0])), 2, "1 hash_ids for a 1,000-token prompt"),
    (_lines_of(rec(0, 10, 1, ["a"])), 1, "not a list of integers"),
    (_lines_of(rec(0, 10, 1), "[1, 2]"), 2, "not an object"),
    (_lines_of(rec(0, 10, 1), "x" * (2 << 20)), 2, "longer than"),
    ("", 0, "empty file"),
    ("\n\n", 0, "empty file"),
]


@pytest.mark.parametrize("body,line,needle", MOONCAKE_BAD, ids=[c[2] for c in MOONCAKE_BAD])
def test_mooncake_bad_input_cli(tmp_path, monkeypatch, capsys, body, line, needle):
    """One message naming the line, exit 2, nothing written."""
    from e3fast.cli import main
    monkeypatch.chdir(tmp_path)
    write(tmp_path, body, "bad.jsonl")
    try:
        rc = main(["import-trace", "bad.jsonl", "--format", "mooncake", "--out", "o.h5"])
    except SystemExit as exc:
        rc = exc.code
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert rc == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert needle in err[0] and (f"bad.jsonl, line {line}:" if line else "bad.jsonl:") in err[0], err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_prefix_group_is_checked(tmp_path):
    p = jsonl(tmp_path, [rec(0, 600, 1), rec(5, 100, 2)])
    out = tmp_path / "o.h5"
    import_trace(ImportTraceOptions(file=str(p), format="mooncake", out=str(out), time_scale=1.0))
    for name, value, needle in (("offsets", [0, 1, 3], "1 blocks for a 600-token prompt"),
                                ("block_ids", [0, -1, 2], "negative block id")):
        bad = tmp_path / f"bad-{name}.h5"
        shutil.copy(out, bad)
        with h5py.File(bad, "a") as f:
            f["prefix/" + name][:] = value
        with pytest.raises(E3Error, match=needle):
            inspect_trace(bad)
    # a block count that does not match the prompt is refused by the writer too
    from e3fast.tracefile.writer import TraceWriter
    with open_trace(out) as tr, pytest.raises(E3Error, match="blocks for a 600-token"):
        with TraceWriter(tmp_path / "w.h5", tr.env, scenario="real", seed=0, params={},
                         prefix_block_tokens=512) as w:
            w.append([0.0], [1], [600], [1], [0], [0.0], prefix_counts=[1], prefix_ids=[7])
    assert not (tmp_path / "w.h5").exists()


def test_mc_real_takes_the_source_format(tmp_path):
    from e3fast.montecarlo import McOptions, _trace_options, sweep_config
    p = jsonl(tmp_path, [rec(0, 600, 1), rec(5, 100, 2)])
    cfg = sweep_config(McOptions(out=str(tmp_path / "mc"), scenario="real", source=str(p),
                                 source_format="mooncake"))
    assert cfg["source_format"] == "mooncake" and _trace_options(cfg, 0, "x.h5").format == "mooncake"
    with pytest.raises(E3Error, match="unknown format"):
        sweep_config(McOptions(out=str(tmp_path / "mc"), scenario="real", source=str(p), source_format="x"))
    with pytest.raises(E3Error, match="--scenario real"):
        sweep_config(McOptions(out=str(tmp_path / "mc"), scenario="drift", source_format="mooncake"))


def test_committed_mooncake_spec():
    from e3fast.tracefile.importers import IMPORT_DEFAULTS, merge_options
    spec = Path(__file__).resolve().parents[1] / "traces" / "real-mooncake-conv.toml"
    o = merge_options(ImportTraceOptions(spec=str(spec)), IMPORT_DEFAULTS)
    assert o["format"] == "mooncake" and o["file"].endswith("mooncake_fast25/conversation_trace.jsonl")
    assert o["out"] == "traces/mooncake_conv.h5" and o["scenario"] == "cold-start"
