"""The one-pass block check (`check_block`) on large blocks: a bad row anywhere is reported
with its global row number, and when a block has several problems the one reported is the
first in the fixed check order (then its first row), whatever the rows' positions."""
import h5py
import numpy as np
import pytest

from tiny_env import make_tiny_env
from e3fast.errors import E3Error
from e3fast.tracefile import TraceWriter, check_block, open_trace, write_trace

N = 200_000  # one block
START = 3_000_000  # global row of the block's first row
ROW = 123_457


def good_block(n=N):
    rng = np.random.default_rng(1)
    model = rng.integers(0, 3, n).astype("i2")  # tiny env: models 0, 1 are LLMs, 2 is diffusion
    return {"arrival_s": 100.0 + np.arange(n) * 0.25, "model": model,
            "in_tokens": np.where(model == 2, 0, rng.integers(1, 500, n)).astype("i4"),
            "out_tokens": rng.integers(1, 500, n).astype("i4"), "klass": rng.integers(0, 3, n).astype("i2"),
            "z": rng.standard_normal(n)}


def rejected(cols, prev=-np.inf, env=None):
    with pytest.raises(E3Error) as exc:
        check_block(cols, env or make_tiny_env(), "t.h5", START, prev)
    assert exc.value.fix
    return str(exc.value)


def test_good_block_passes():
    env = make_tiny_env()
    check_block(good_block(), env, "t.h5", START, 100.0)
    check_block(good_block(1), env, "t.h5", START)


# (column, row, value, expected substrings)
CASES = [
    ("arrival_s", ROW, np.nan, ["/requests/arrival_s", f"row {START + ROW}: value nan is not finite"]),
    ("z", ROW, -np.inf, ["/requests/z", f"row {START + ROW}: value -inf is not finite"]),
    ("arrival_s", ROW, 1.0,
     ["/requests/arrival_s", f"row {START + ROW}: arrivals not sorted (arrival 1.0 s < previous row's "
      f"{100.0 + (ROW - 1) * 0.25} s)", "stable sort"]),
    ("arrival_s", 0, -2.0, ["/requests/arrival_s", f"row {START}: negative arrival time"]),
    ("model", ROW, 3, ["/requests/model", f"row {START + ROW}: unknown model id 3 (valid 0..2)"]),
    ("model", N - 1, -7, ["/requests/model", f"row {START + N - 1}: unknown model id -7"]),
    ("klass", ROW, 32767, ["/requests/klass", f"row {START + ROW}: unknown class id 32767 (valid 0..2)"]),
    ("in_tokens", ROW, -1, ["/requests/in_tokens", f"row {START + ROW}: in_tokens -1 outside 0..1000000"]),
    ("out_tokens", ROW, 0, ["/requests/out_tokens", f"row {START + ROW}: out_tokens 0 outside 1..1000000"]),
    ("out_tokens", ROW, 1_000_001, ["/requests/out_tokens", "out_tokens 1000001 outside"]),
]


@pytest.mark.parametrize("name, row, value, needles", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_bad_row_of_a_large_block(name, row, value, needles):
    cols = good_block()
    cols[name][row] = value
    msg = rejected(cols)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


def test_llm_row_without_prompt():
    cols = good_block()
    cols["model"][ROW], cols["in_tokens"][ROW] = 0, 0
    assert f"row {START + ROW}: an LLM request with 0 input tokens" in rejected(cols)
    cols["model"][ROW] = 2  # a diffusion row may have 0 prompt tokens
    check_block(cols, make_tiny_env(), "t.h5", START)


def test_first_row_against_the_previous_block():
    msg = rejected(good_block(), prev=200.0)
    assert f"row {START}: arrivals not sorted (arrival 100.0 s < previous row's 200.0 s)" in msg
    assert "from trace start" in msg
    check_block(good_block(), make_tiny_env(), "t.h5", START, 100.0)  # equal is sorted


def test_the_first_check_in_order_is_reported_not_the_first_row():
    cols = good_block()
    cols["out_tokens"][10] = 0           # tokens: checked after model ids
    cols["model"][150_000] = 9           # model ids: checked after sortedness
    cols["arrival_s"][199_000] = 0.5     # unsorted
    assert f"row {START + 199_000}: arrivals not sorted" in rejected(cols)
    cols["z"][199_999] = np.nan          # non-finite values come first of all
    cols["z"][180_000] = np.inf
    assert f"/requests/z: row {START + 180_000}: value inf is not finite" in rejected(cols)
    cols["arrival_s"][190_000] = np.nan  # arrival_s before z
    assert f"/requests/arrival_s: row {START + 190_000}: value nan is not finite" in rejected(cols)


def test_negative_first_arrival_wins_over_later_unsorted_rows():
    cols = good_block()
    cols["arrival_s"][0] = -1.0
    cols["arrival_s"][5] = 0.0
    assert f"row {START}: negative arrival time" in rejected(cols, prev=3.0)


@pytest.mark.parametrize("block_rows", [65_536, 1 << 20])
def test_reader_reports_the_global_row(tmp_path, block_rows):
    path = tmp_path / "bad.h5"
    write_trace(path, make_tiny_env(), good_block(), scenario="s", seed=1, params={})
    with h5py.File(path, "r+") as f:
        f["requests/klass"][ROW] = 5
    with open_trace(path) as tr, pytest.raises(E3Error, match=f"/requests/klass: row {ROW}: unknown class id 5"):
        for _ in tr.blocks(block_rows):
            pass


def test_writer_checks_strided_columns(tmp_path):
    cols = {k: np.repeat(v[:1000], 2)[::2] for k, v in good_block().items()}  # views, not contiguous
    cols["in_tokens"][700] = -3
    assert not cols["in_tokens"].flags.c_contiguous
    with pytest.raises(E3Error, match="row 700: in_tokens -3 outside"):
        with TraceWriter(tmp_path / "s.h5", make_tiny_env(), scenario="s", seed=1, params={}) as w:
            w.append(**cols)
