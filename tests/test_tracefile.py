"""Trace format v1: writer/reader round trip, streaming, atomic writes, inspect."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tracemalloc

import h5py
import numpy as np
import pytest

from tiny_env import make_tiny_env
from e3fast.errors import E3Error
from e3fast.tracefile import (REQUEST_FIELDS, SCHEMA_VERSION, TraceWriter, open_trace, read_env,
                              validate_trace, write_env, write_trace)
from e3fast.tracefile import rows as row_sources
from e3fast.tracefile.rows import MappedRows
from e3fast.tracefile.inspect import InspectOptions, inspect_trace, run_inspect
from e3fast.tracefile.schema import ENV_ARRAYS, UNITS


def make_columns(n: int, seed: int = 0, t0: float = 0.0) -> dict:
    """Valid random request columns (tiny env: models 0,1 LLM, 2 diffusion with in_tokens 0)."""
    rng = np.random.default_rng(seed)
    model = rng.integers(0, 3, n)
    return {"arrival_s": t0 + np.cumsum(rng.exponential(0.01, n)), "model": model,
            "in_tokens": np.where(model == 2, 0, rng.integers(1, 4000, n)),
            "out_tokens": rng.integers(1, 1000, n), "klass": rng.integers(0, 3, n),
            "z": rng.standard_normal(n)}


def assert_env_equal(a, b):
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape, f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)  # NaN == NaN, inf == inf
        else:
            assert x == y, f.name


def test_round_trip_every_column_env_and_attrs(tmp_path, tiny_env):
    path = tmp_path / "t.h5"
    parts = [make_columns(n, seed=i) for i, n in enumerate((1000, 1, 2500))]
    for i in range(1, 3):  # make the parts consecutive in time
        parts[i]["arrival_s"] += parts[i - 1]["arrival_s"][-1]
    with TraceWriter(path, tiny_env, scenario="drift", seed=7, params={"u": 0.8, "n": np.int64(3)},
                     chunk_rows=512) as w:
        for p in parts:
            w.append(**p)
    want = {k: np.concatenate([p[k] for p in parts]).astype(dt) for k, dt in REQUEST_FIELDS.items()}
    with open_trace(path) as tr:
        got = tr.read_all()
        assert_env_equal(tr.env, tiny_env)
        assert np.isinf(tr.env.leave_s[0]) and np.isnan(tr.env.prior_a[0, 2])
        assert tr.n_requests == 3501 and tr.scenario == "drift" and tr.seed == 7
        assert tr.params == {"u": 0.8, "n": 3} and tr.duration_s == want["arrival_s"][-1]
        assert tr.attrs["units"] == UNITS and tr.attrs["schema_version"] == SCHEMA_VERSION
        assert tr.attrs["generator"] == "e3fast"
        assert json.loads(tr.attrs["params_json"]) == tr.params
        assert tr._f["requests/z"].chunks == (512,) and tr._f["requests/z"].maxshape == (None,)
    for k, dt in REQUEST_FIELDS.items():
        assert got[k].dtype == dt
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_env_round_trip_with_empty_arrays(tmp_path, tiny_env):
    env = dataclasses.replace(
        tiny_env, drift_ptr=np.zeros(4, np.int64), drift_t_s=np.zeros(0), drift_mult=np.zeros(0),
        sem_device_type=np.zeros(0, np.int32), sem_klass=np.zeros(0, np.int16), sem_t0_s=np.zeros(0),
        sem_t1_s=np.zeros(0), sem_factor=np.zeros(0), extra={}, prior_provenance="")
    with h5py.File(tmp_path / "e.h5", "w") as f:
        write_env(f.create_group("env"), env)
        for path, (_, dtype, _) in ENV_ARRAYS.items():
            assert f["env"][path].dtype == dtype
    with h5py.File(tmp_path / "e.h5", "r") as f:
        assert_env_equal(read_env(f["env"]), env)


def test_writer_casts_and_plain_h5py_reads(tmp_path, tiny_env):
    cols = {k: list(v) for k, v in make_columns(50).items()}  # plain lists, int64/float64 values
    env = dataclasses.replace(tiny_env, device_type=np.array([0, 1, 1]))  # int64: cast losslessly
    write_trace(tmp_path / "c.h5", env, cols, scenario="s", seed=1, params={}, duration_s=100.0)
    with h5py.File(tmp_path / "c.h5") as f:  # plain h5py, no e3fast
        assert f.attrs["duration_s"] == 100.0 and f.attrs["n_requests"] == 50
        assert f["env/devices/type"].dtype == np.int32
        assert list(f["env/models"].asstr()[()]) == env.models
        np.testing.assert_array_equal(f["requests/in_tokens"][()], cols["in_tokens"])


def test_small_write_trace_stays_small(tmp_path, tiny_env):
    write_trace(tmp_path / "s.h5", tiny_env, make_columns(100), scenario="s", seed=1, params={})
    assert (tmp_path / "s.h5").stat().st_size < 60_000


@pytest.fixture(scope="module")
def mid_trace(tmp_path_factory):
    """A 1.2M-row trace (the writer's chunks of 262144 rows)."""
    path = tmp_path_factory.mktemp("mid") / "mid.h5"
    with TraceWriter(path, make_tiny_env(), scenario="s", seed=1, params={}) as w:
        t = 0.0
        for i in range(12):
            c = make_columns(100_000, seed=i, t0=t)
            w.append(**c)
            t = c["arrival_s"][-1]
    return path


def _concat(path, block_rows):
    with open_trace(path) as tr:
        parts, starts = {k: [] for k in REQUEST_FIELDS}, []
        for b in tr.blocks(block_rows):
            starts.append(b.start)
            assert len(b.arrival_s) <= block_rows
            for k in REQUEST_FIELDS:
                parts[k].append(getattr(b, k).copy())
        assert starts == list(range(0, tr.n_requests, block_rows))
        return {k: np.concatenate(v) for k, v in parts.items()}


def test_block_sizes_give_identical_concatenation(mid_trace, tmp_path, tiny_env):
    ref = _concat(mid_trace, 1_000_000)
    for rows in (1000, 65_536, 77_777):
        got = _concat(mid_trace, rows)
        for k in REQUEST_FIELDS:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{k} block_rows={rows}")
    small = tmp_path / "small.h5"  # block size 1 on a small trace (1.2M single-row reads would be slow)
    write_trace(small, tiny_env, make_columns(3000), scenario="s", seed=1, params={}, chunk_rows=1024)
    ref = _concat(small, 1_000_000)
    for rows in (1, 1000, 65_536):
        got = _concat(small, rows)
        for k in REQUEST_FIELDS:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{k} block_rows={rows}")


def test_streaming_memory_is_flat(tmp_path, tiny_env, monkeypatch):
    path, n_blocks, rows = tmp_path / "big.h5", 40, 100_000  # 4M rows, 144 MB of columns
    with TraceWriter(path, tiny_env, scenario="s", seed=1, params={}) as w:
        t = 0.0
        for i in range(n_blocks):
            c = make_columns(rows, seed=i, t0=t)
            w.append(**c)
            t = c["arrival_s"][-1]
    trace_bytes = n_blocks * rows * sum(dt.itemsize for dt in REQUEST_FIELDS.values())
    tracemalloc.start()
    try:
        total, checksum, resident = 0, 0.0, []
        with open_trace(path) as tr:
            for b in tr.blocks(65_536):
                total += len(b.arrival_s)
                checksum += float(b.z.sum())
                resident.append(_resident_bytes())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == n_blocks * rows
    assert peak < 12e6 and peak < trace_bytes / 10, f"peak {peak / 1e6:.1f} MB for a {trace_bytes / 1e6:.0f} MB trace"
    # the blocks are views of a map of the file: its pages must be handed back as it streams
    grown = max(resident) - resident[0]
    assert grown < 48e6 and grown < trace_bytes / 2, f"resident memory grew {grown / 1e6:.0f} MB"
    # with no hand-back while streaming, the end of a stream, or else closing the reader,
    # must hand back the whole map (a reader streamed many times must not pile maps up)
    monkeypatch.setattr(row_sources, "RELEASE_BYTES", 1 << 40)
    with open_trace(path) as tr:
        for _ in range(2):
            start = _resident_bytes()
            for b in tr.blocks(65_536):
                held = _resident_bytes() - start
            left = _resident_bytes() - start
            assert held > trace_bytes / 2 and left < 8e6, f"held {held / 1e6:.0f} MB, {left / 1e6:.0f} MB after"
        start = _resident_bytes()
        stream = tr.blocks(65_536)
        for b, _ in zip(stream, range(30)):  # left unfinished (the generator stays alive)
            pass
        held = _resident_bytes() - start
    left = _resident_bytes() - start
    assert held > trace_bytes / 4 and left < 8e6, f"held {held / 1e6:.0f} MB, {left / 1e6:.0f} MB after close"
    del stream


def _resident_bytes() -> int:
    """This process's resident set (bytes), file-mapped pages included (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_mapped_and_hdf5_reads_give_the_same_blocks(tmp_path, tiny_env):
    """The writer's files are read in place from a map; gzip-compressed, byte-swapped or
    contiguous columns go through H5Dread. Both give the same blocks, whatever the block
    size (views inside a chunk, H5Dread across chunk boundaries)."""
    cols = make_columns(30_000, seed=3)
    plain, gz = tmp_path / "plain.h5", tmp_path / "gzip.h5"
    write_trace(plain, tiny_env, cols, scenario="s", seed=1, params={}, chunk_rows=4096)
    write_trace(gz, tiny_env, cols, scenario="s", seed=1, params={}, chunk_rows=4096, compression="gzip")
    swapped = tmp_path / "swapped.h5"
    shutil.copy(plain, swapped)
    with h5py.File(swapped, "a") as f:  # big-endian z, contiguous arrival_s: what other tools write
        z, a = f["requests/z"][()], f["requests/arrival_s"][()]
        del f["requests/z"], f["requests/arrival_s"]
        f["requests"].create_dataset("z", data=z.astype(">f8"))
        f["requests"].create_dataset("arrival_s", data=a)
    for path, mapped in ((plain, True), (gz, False), (swapped, False)):
        with open_trace(path) as tr:
            source = MappedRows.open(tr._f, tr._ds, REQUEST_FIELDS, tr.n_requests, 1000)
            assert (source is not None) == mapped, path.name
        for rows in (1000, 4096, 7777, 1_000_000):
            got = _concat(path, rows)
            for k, dt in REQUEST_FIELDS.items():
                np.testing.assert_array_equal(got[k], np.asarray(cols[k], dt), err_msg=f"{path.name} {k} {rows}")


def test_writer_leaves_no_file_when_the_block_raises(tmp_path, tiny_env):
    path = tmp_path / "x.h5"
    with pytest.raises(RuntimeError):
        with TraceWriter(path, tiny_env, scenario="s", seed=1, params={}) as w:
            w.append(**make_columns(100))
            raise RuntimeError("generator crashed")
    assert list(tmp_path.iterdir()) == []


def test_writer_leaves_no_file_when_a_block_is_bad(tmp_path, tiny_env):
    path = tmp_path / "x.h5"
    a, b = make_columns(100), make_columns(100)  # b starts before a ends: unsorted across appends
    with pytest.raises(E3Error, match=r"/requests/arrival_s.*row 100: arrivals not sorted"):
        with TraceWriter(path, tiny_env, scenario="s", seed=1, params={}) as w:
            w.append(**a)
            w.append(**b)
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_to_overwrite_without_force(tmp_path, tiny_env):
    path = tmp_path / "x.h5"
    path.write_text("precious")
    with pytest.raises(E3Error, match="exists.*force"):
        write_trace(path, tiny_env, make_columns(10), scenario="s", seed=1, params={})
    assert path.read_text() == "precious"
    write_trace(path, tiny_env, make_columns(10), scenario="s", seed=1, params={}, force=True)
    assert open_trace(path).n_requests == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5"]


@pytest.mark.parametrize("column, value, problem", [
    ("model", 2.5, "cannot be stored as int16"), ("in_tokens", 2**40, "cannot be stored as int32"),
    ("z", np.nan, "not finite"), ("out_tokens", 0, "outside 1.."), ("klass", 9, "unknown class id 9"),
])
def test_writer_rejects_bad_values(tmp_path, tiny_env, column, value, problem):
    cols = make_columns(20)
    cols[column] = cols[column].astype(float if isinstance(value, float) else np.int64)
    cols[column][5] = value
    with pytest.raises(E3Error, match=problem) as exc:
        write_trace(tmp_path / "x.h5", tiny_env, cols, scenario="s", seed=1, params={})
    assert f"/requests/{column}" in str(exc.value)
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_short_duration_and_ragged_columns(tmp_path, tiny_env):
    cols = make_columns(20)
    with pytest.raises(E3Error, match="shorter than the last arrival"):
        write_trace(tmp_path / "x.h5", tiny_env, cols, scenario="s", seed=1, params={}, duration_s=0.01)
    cols["z"] = cols["z"][:-1]
    with pytest.raises(E3Error, match="/requests/z: 19 values but arrival_s has 20"):
        write_trace(tmp_path / "x.h5", tiny_env, cols, scenario="s", seed=1, params={})
    assert list(tmp_path.iterdir()) == []


def test_gzip_compression_round_trips(tmp_path, tiny_env):
    cols = make_columns(5000)
    write_trace(tmp_path / "g.h5", tiny_env, cols, scenario="s", seed=1, params={}, compression="gzip")
    with open_trace(tmp_path / "g.h5") as tr:
        assert tr._f["requests/arrival_s"].compression == "gzip"
        np.testing.assert_array_equal(tr.read_all()["out_tokens"], cols["out_tokens"])


def test_inspect_summary(tmp_path, tiny_env, capsys):
    cols = make_columns(3000)
    path = tmp_path / "i.h5"
    write_trace(path, tiny_env, cols, scenario="semantic", seed=3, params={"k": [1, 2]}, duration_s=60.0)
    s = inspect_trace(path)
    assert s["schema_version"] == SCHEMA_VERSION and s["scenario"] == "semantic" and s["seed"] == 3
    assert s["n_requests"] == 3000 and s["duration_s"] == 60.0 and s["arrival_rate_per_s"] == 50.0
    assert s["n_devices"] == 3 and s["models"] == tiny_env.models and s["params"] == {"k": [1, 2]}
    assert s["fleet"][0] == {"device": 0, "type": "jetson-orin", "models": ["gptj-6b", "llama3.1-8b"],
                             "join_s": 0.0, "leave_s": None}
    assert s["model_mix"] == {m: int((cols["model"] == i).sum()) for i, m in enumerate(tiny_env.models)}
    assert sum(s["class_mix"].values()) == 3000 and s["n_drift_knots"] == 3 and s["n_semantic_windows"] == 1
    assert s["tokens"]["sdxl"]["mean_in"] == 0
    assert s["tokens"]["gptj-6b"]["mean_out"] == pytest.approx(cols["out_tokens"][cols["model"] == 0].mean())
    assert run_inspect(InspectOptions(path=str(path), json=True)) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(s))
    assert run_inspect(InspectOptions(path=str(path), validate=True)) == 0
    out = capsys.readouterr().out
    assert "semantic" in out and "3,000" in out and "leave never" in out and "valid" in out


def test_empty_trace_is_allowed_and_reported(tmp_path, tiny_env):
    path = tmp_path / "empty.h5"
    with TraceWriter(path, tiny_env, scenario="s", seed=1, params={}):
        pass
    with open_trace(path) as tr:
        assert tr.n_requests == 0 and tr.duration_s == 0.0 and list(tr.blocks()) == []
        assert all(len(v) == 0 for v in tr.read_all().values())
    assert validate_trace(path)["n_requests"] == 0
    s = inspect_trace(path)
    assert s["n_requests"] == 0 and s["arrival_rate_per_s"] is None and s["tokens"]["sdxl"] is None
    r = subprocess.run([sys.executable, "-m", "e3fast.cli", "inspect", str(path)], capture_output=True, text=True)
    assert r.returncode == 0 and "empty trace" in r.stdout
    r = subprocess.run([sys.executable, "-m", "e3fast.cli", "inspect", "--json", str(path)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["n_requests"] == 0


def test_inspect_json_has_no_infinity(tmp_path, tiny_env, capsys):
    path = tmp_path / "p.h5"
    write_trace(path, tiny_env, make_columns(10), scenario="s", seed=1,
                params={"horizon_s": float("inf"), "x": [float("nan")]})
    assert open_trace(path).params["horizon_s"] == float("inf")  # Python keeps it
    run_inspect(InspectOptions(path=str(path), json=True))
    out = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert out["params"] == {"horizon_s": None, "x": [None]} and out["fleet"][0]["leave_s"] is None


def test_big_endian_columns_from_other_tools_are_read(tmp_path, tiny_env):
    path = tmp_path / "be.h5"
    cols = make_columns(100)
    write_trace(path, tiny_env, cols, scenario="s", seed=1, params={})
    with h5py.File(path, "r+") as f:
        del f["requests/arrival_s"]
        f["requests"].create_dataset("arrival_s", data=cols["arrival_s"].astype(">f8"))
    with open_trace(path) as tr:
        np.testing.assert_array_equal(tr.read_all()["arrival_s"], cols["arrival_s"])
