"""e3fast.priors: the packaged table, its derivation from the raw MLPerf rows, and the CLI."""
import csv
import io
import json
import math
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from e3fast.errors import E3Error
from e3fast.priors import MODELS, PriorTable, load_priors
from e3fast.priors import derive
from e3fast.priors.table import table_from_csv

ROOT = Path(__file__).resolve().parents[1]
DATA = resources.files("e3fast.priors").joinpath("data")


def _packaged_rows() -> list[dict]:
    return list(csv.DictReader(io.StringIO(DATA.joinpath("priors.csv").read_text(encoding="utf-8"))))


def test_table_loads_with_expected_shapes_and_values():
    t = load_priors()
    assert isinstance(t, PriorTable) and load_priors() is t  # cached
    T, M = len(t.device_types), len(t.models)
    assert t.models == MODELS == ("gptj-6b", "llama3.1-8b", "sdxl") and T >= 5
    assert t.model_kind.dtype == np.int8 and t.model_kind.tolist() == [0, 0, 1]
    for name in ("a", "b", "c", "sigma"):
        arr = getattr(t, name)
        assert arr.shape == (T, M) and arr.dtype == np.float64 and np.isfinite(arr).all()
        assert not arr.flags.writeable
    assert t.available.dtype == bool and t.imputed.dtype == bool
    av = t.available
    assert (t.a[av] > 0).all() and (t.b[av] > 0).all() and (t.sigma[av] > 0).all()
    assert (t.c[av] >= 0).all() and (t.c[:, 2] == 0).all()
    assert (t.a[~av] == 0).all() and not (t.imputed & ~av).any()
    assert (av.sum(axis=1) >= 2).all(), "every device type hosts at least 2 models"
    assert av.any(axis=0).all(), "every model is hosted somewhere"
    assert len(t.provenance) == int(av.sum())


def test_provenance_and_imputed_rows_carry_a_method():
    t = load_priors()
    for p in t.provenance:
        assert set(p) == {"device_type", "model", "imputed", "method", "version", "submitter",
                          "system", "source_path"}
        assert p["method"] and p["source_path"].startswith(("mlcommons/", "ntuhpc/"))
        ti, mi = t.type_index(p["device_type"]), t.model_index(p["model"])
        assert t.available[ti, mi] and t.imputed[ti, mi] == p["imputed"]
        assert p["method"].startswith("imputed:") == p["imputed"]
    doc = json.loads(t.provenance_json())
    assert len(doc["rows"]) == len(t.provenance) and "MLCommons" in doc["notice"]


def test_json_round_trip_and_mean_service():
    t = load_priors()
    d = json.loads(json.dumps(t.to_json()))
    back = PriorTable.from_json(d)
    assert back.device_types == t.device_types and np.array_equal(back.b, t.b)
    assert "Apache-2.0" in d["notice"]
    i = t.type_index("arc-pro-b60")
    assert t.mean_service_s("arc-pro-b60", "llama3.1-8b", 800, 128) == pytest.approx(
        t.a[i, 1] + 128 * t.b[i, 1] + 800 * t.c[i, 1])
    assert t.mean_service_s(i, 2, 0, 20) == pytest.approx(t.a[i, 2] + 20 * t.b[i, 2])
    with pytest.raises(E3Error, match="unknown model"):
        t.mean_service_s(i, "gpt-4", 1, 1)


def test_packaged_csv_is_what_derive_produces():
    """priors.csv cannot rot: re-deriving from the packaged raw CSVs gives the same table."""
    fresh = list(csv.DictReader(io.StringIO(derive.to_csv(derive.derive_rows()))))
    packaged = _packaged_rows()
    assert [r.keys() for r in fresh] == [r.keys() for r in packaged]
    numeric = {"a_s", "b_s", "c_s", "sigma", "mlperf_mean_s"}
    for f, p in zip(fresh, packaged, strict=True):
        for k in f:
            if k in numeric and f[k]:
                assert float(f[k]) == pytest.approx(float(p[k]), rel=1e-9), (f["device_type"], k)
            else:
                assert f[k] == p[k], (f["device_type"], f["model"], k)


def test_raw_data_is_a_verbatim_copy():
    shared = ROOT.parent / "shared" / "mlperf"
    if not shared.is_dir():
        pytest.skip("../shared/mlperf not present")
    for name in ("edge_priors.csv", "benchmarks.csv"):
        assert DATA.joinpath(name).read_bytes() == (shared / name).read_bytes()


def test_docs_table_is_generated():
    docs = ROOT / "docs" / "PRIORS.md"
    if not docs.is_file():
        pytest.skip("docs not present")
    text = docs.read_text(encoding="utf-8")
    block = text[text.index(derive.BEGIN) + len(derive.BEGIN):text.index(derive.END)]
    assert block.strip() == derive.to_markdown(derive.derive_rows()).strip()


def test_llama_tpot_is_the_mlperf_tpot_mean():
    raw = list(csv.DictReader(io.StringIO(DATA.joinpath("edge_priors.csv").read_text(encoding="utf-8"))))
    t = load_priors()
    measured = [p for p in t.provenance if p["model"] == "llama3.1-8b" and not p["imputed"]]
    assert len(measured) >= 2
    for p in measured:
        (ns,) = [r["value"] for r in raw if r["metric"] == "tpot_mean" and r["system"] == p["system"]
                 and r["version"] == p["version"] and r["scenario"] == "SingleStream"]
        assert t.b[t.type_index(p["device_type"]), 1] == pytest.approx(int(ns) * 1e-9, rel=1e-12)


def test_measured_rows_reproduce_mlperf_means():
    """Measured rows give back the MLPerf SingleStream mean at the reference workload."""
    n_gptj, steps, in_mean = 69, 20, derive.IN_MEAN_TOKENS
    for r in _packaged_rows():
        if r["imputed"] == "1":
            continue
        a, b, c, mean = (float(r[k]) for k in ("a_s", "b_s", "c_s", "mlperf_mean_s"))
        if r["model"] == "gptj-6b":  # LoadGen: TTFT + TPOT * (n - 1)
            assert a + c * in_mean + b * (n_gptj - 1) == pytest.approx(mean, rel=1e-9)
        elif r["model"] == "sdxl":
            assert a + b * steps == pytest.approx(mean, rel=1e-9)
        else:  # llama: TTFT + 127 * TPOT, within LoadGen's own rounding of the mean
            assert a + c * in_mean + 127 * b == pytest.approx(mean, rel=2e-3)


def test_table_from_csv_marks_missing_pairs_unavailable():
    text = derive.to_csv([r for r in derive.derive_rows() if (r["device_type"], r["model"])
                          != ("nvidia-l4", "sdxl")])
    t = table_from_csv(text)
    i = t.type_index("nvidia-l4")
    assert not t.available[i, 2] and t.a[i, 2] == 0 and t.available[i, :2].all()
    with pytest.raises(E3Error, match="not available"):
        t.mean_service_s(i, "sdxl", 0, 20)


def _cli(*args):
    exe = Path(sys.executable).with_name("e3fast")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "e3fast.cli"]
    return subprocess.run([*cmd, "priors", *args], capture_output=True, text=True, timeout=120)


def test_cli_prints_table_and_notice():
    p = _cli()
    assert p.returncode == 0, p.stderr
    t = load_priors()
    assert all(dt in p.stdout for dt in t.device_types) and "MLCommons" in p.stdout
    assert "sdxl" in p.stdout and "imputed" in p.stdout


def test_cli_json():
    p = _cli("--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    t = load_priors()
    assert doc["device_types"] == list(t.device_types) and doc["models"] == list(MODELS)
    assert len(doc["rows"]) == int(t.available.sum()) and "Apache-2.0" in doc["notice"]
    row = doc["rows"][0]
    assert {"a_s", "b_s", "c_s", "sigma", "imputed", "method", "source_path"} <= row.keys()
    assert all(math.isfinite(r["b_s"]) for r in doc["rows"])
    p = _cli("--json", "--model", "sdxl")
    assert p.returncode == 0 and {r["model"] for r in json.loads(p.stdout)["rows"]} == {"sdxl"}


def test_cli_bad_model_is_a_clean_error():
    p = _cli("--model", "gpt-5")
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and "gptj-6b" in p.stderr and "gpt-5" in p.stderr
