"""One test per malformed trace: one E3Error naming file, dataset and problem; the CLI
(`e3fast inspect --validate`) exits non-zero with no traceback."""
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tiny_env import make_tiny_env
from e3fast.errors import E3Error
from e3fast.tracefile import open_trace, validate_trace, write_trace
from e3fast.tracefile.inspect import inspect_trace

N = 300


def good_trace(path, n=N, **env_changes):
    rng = np.random.default_rng(0)
    model = rng.integers(0, 3, n)
    cols = {"arrival_s": np.arange(n) * 0.5, "model": model,
            "in_tokens": np.where(model == 2, 0, rng.integers(1, 500, n)),
            "out_tokens": rng.integers(1, 500, n), "klass": rng.integers(0, 3, n), "z": rng.standard_normal(n)}
    env = make_tiny_env()
    for k, v in env_changes.items():
        setattr(env, k, v)
    write_trace(path, env, cols, scenario="s", seed=1, params={}, chunk_rows=64)
    return path


def replace(f, name, data):
    del f[name]
    f.create_dataset(name, data=data)


def set_rows(name, rows, value):
    def mutate(f):
        f[name][rows] = value
    return mutate


def cli(path, *flags):
    return subprocess.run([sys.executable, "-m", "e3fast.cli", "inspect", *flags, str(path)],
                          capture_output=True, text=True)


def assert_rejected(path, *needles, strict=True):
    """validate_trace raises one E3Error with the file and every needle; the CLI fails cleanly."""
    with pytest.raises(E3Error) as exc:
        validate_trace(path, strict=strict, block_rows=100)
    msg = str(exc.value)
    assert str(path) in msg, msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert exc.value.fix, "every error says how to fix it"
    r = cli(path, "--validate")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert needles[0] in r.stderr and str(path) in r.stderr
    return msg


# (id, mutation of a good file, expected substrings: dataset first, then the problem)
CASES = [
    ("missing_dataset", lambda f: f["requests"].__delitem__("z"), ["/requests/z", "missing dataset"]),
    ("missing_env_dataset", lambda f: f["env/drift"].__delitem__("mult"), ["/env/drift/mult", "missing dataset"]),
    ("extra_dataset", lambda f: f["requests"].create_dataset("user", data=np.zeros(N)),
     ["/requests/user", "unexpected dataset"]),
    ("wrong_dtype", lambda f: replace(f, "requests/model", np.zeros(N, "f8")),
     ["/requests/model", "wrong dtype float64, expected int16"]),
    ("wrong_shape", lambda f: replace(f, "requests/z", np.zeros(N - 1)), ["/requests/z", "shape (299,)"]),
    ("nan_arrival", set_rows("requests/arrival_s", 150, np.nan), ["/requests/arrival_s", "row 150", "not finite"]),
    ("inf_z", set_rows("requests/z", 7, np.inf), ["/requests/z", "row 7", "not finite"]),
    ("unsorted", set_rows("requests/arrival_s", 42, 1.0),
     ["/requests/arrival_s", "row 42", "not sorted", "1.0 s < previous row's 20.5 s"]),
    ("unsorted_at_block_boundary", set_rows("requests/arrival_s", 99, 1e3),
     ["/requests/arrival_s", "row 100", "not sorted"]),
    ("negative_arrival", set_rows("requests/arrival_s", 0, -1.0), ["/requests/arrival_s", "row 0", "negative"]),
    ("negative_tokens", set_rows("requests/in_tokens", 9, -5), ["/requests/in_tokens", "row 9", "-5 outside"]),
    ("zero_out_tokens", set_rows("requests/out_tokens", 3, 0), ["/requests/out_tokens", "row 3", "0 outside 1.."]),
    ("absurd_tokens", set_rows("requests/out_tokens", 250, 10**9),
     ["/requests/out_tokens", "row 250", "1000000000 outside"]),
    ("llm_zero_prompt",
     lambda f: (set_rows("requests/model", 11, 0)(f), set_rows("requests/in_tokens", 11, 0)(f)),
     ["/requests/in_tokens", "row 11", "LLM request with 0 input tokens"]),
    ("unknown_model", set_rows("requests/model", 20, 3), ["/requests/model", "row 20", "unknown model id 3"]),
    ("negative_model", set_rows("requests/model", 21, -1), ["/requests/model", "row 21", "unknown model id -1"]),
    ("unknown_class", set_rows("requests/klass", 30, 7), ["/requests/klass", "row 30", "unknown class id 7"]),
    ("device_without_models", set_rows("env/devices/hosts", 1, False),
     ["/env/devices/hosts", "device hosts no model at index 1"]),
    ("hosts_shape_vs_models", lambda f: replace(f, "env/devices/hosts", np.ones((3, 2), bool)),
     ["/env/devices/hosts", "shape (3, 3)", "(3, 2)"]),
    ("hosts_unavailable_model", set_rows("env/devices/hosts", (0, 2), True),
     ["/env/devices/hosts", "cannot run", "(0, 2)"]),
    ("drift_ptr_not_monotone", lambda f: replace(f, "env/drift/ptr", np.array([0, 2, 1, 3], "i8")),
     ["/env/drift/ptr", "decrease"]),
    ("drift_ptr_wrong_end", lambda f: replace(f, "env/drift/ptr", np.array([0, 1, 1, 2], "i8")),
     ["/env/drift/ptr", "must run 0..K=3"]),
    ("drift_knots_unsorted", set_rows("env/drift/t_s", 1, 1.0), ["/env/drift/t_s", "not sorted", "index 1"]),
    ("leave_before_join", set_rows("env/devices/leave_s", 2, 10.0), ["/env/devices/leave_s", "before join"]),
    ("unknown_device_type", set_rows("env/devices/type", 0, 5), ["/env/devices/type", "out of range"]),
    ("bad_prior", set_rows("env/priors/b", (1, 1), np.nan), ["/env/priors/b", "not finite"]),
    ("semantic_window_inverted", set_rows("env/semantic/t1_s", 0, 10.0), ["/env/semantic/t1_s", "not after"]),
    ("no_schema_version", lambda f: f.attrs.__delitem__("schema_version"), ["no schema_version", "another program"]),
    ("newer_schema", lambda f: f.attrs.__setitem__("schema_version", 99),
     ["attr schema_version", "newer e3fast", "upgrade"]),
    ("missing_root_attr", lambda f: f.attrs.__delitem__("seed"), ["attr seed", "missing root attribute"]),
    ("n_requests_mismatch", lambda f: f.attrs.__setitem__("n_requests", np.int64(N + 1)),
     ["/requests/arrival_s", "n_requests is 301"]),
    ("duration_too_short", lambda f: f.attrs.__setitem__("duration_s", 1.0), ["attr duration_s", "shorter"]),
    ("bad_params_json", lambda f: f.attrs.__setitem__("params_json", "{oops"), ["attr params_json", "not valid JSON"]),
]


@pytest.mark.parametrize("mutate, needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_trace(tmp_path, mutate, needles):
    path = good_trace(tmp_path / "bad.h5")
    with h5py.File(path, "r+") as f:
        mutate(f)
    assert_rejected(path, *needles)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.h5"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    assert_rejected(path, "not an HDF5 file")


def test_truncated_file(tmp_path):
    path = good_trace(tmp_path / "t.h5", n=20_000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_rejected(path, "truncated")


def test_hdf5_of_another_program(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.arange(10)
    assert_rejected(path, "not an e3fast trace")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(E3Error, match="no such file"):
        open_trace(tmp_path / "nope.h5")
    with pytest.raises(E3Error, match="is a folder"):
        open_trace(tmp_path)
    r = cli(tmp_path / "nope.h5")
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_model_hosted_by_no_device_is_accepted_unless_strict(tmp_path):
    hosts = make_tiny_env().hosts
    hosts[:, 2] = False  # nobody hosts sdxl, but requests use it
    hosts[1, 0] = True   # device 1 keeps a model
    path = good_trace(tmp_path / "orphan.h5", hosts=hosts)
    summary = validate_trace(path)  # the simulator drops these requests with a counted reason
    assert summary["unservable_requests"] == summary["model_counts"][2] > 0
    assert inspect_trace(path)["unservable_requests"] == summary["unservable_requests"]
    r = cli(path)
    assert r.returncode == 0 and "no device hosts" in r.stdout
    assert_rejected(path, "/env/devices/hosts", "no device hosts", "'sdxl'", strict=True)


def test_empty_trace_is_valid(tmp_path):
    path = good_trace(tmp_path / "empty.h5", n=0)
    assert validate_trace(path, strict=True)["n_requests"] == 0
    r = cli(path, "--validate")
    assert r.returncode == 0 and "empty trace" in r.stdout
