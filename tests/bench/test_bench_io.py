"""Trace I/O: one 64k-row block read from HDF5 with the reader ``e3fast replay`` uses.

* ``test_block_read[validated]``: ``read_direct`` of the six columns + ``check_block``
  (what a replay pays per block).
* ``test_block_read[raw]``: the same without validation.
``extra_info`` ``ns_per_row`` = fastest round / rows. The file is in the page cache (a warm
read: the disk is not what is measured).
"""
import pytest

from benchutil import best_seconds, pick, record

ROWS = 65536


@pytest.mark.parametrize("mode", ["validated", "raw"])
def test_block_read(benchmark, quick, make_trace, mode):
    from e3fast.tracefile.reader import open_trace

    rows = pick(quick, 4096, ROWS)
    path = make_trace("drift", 2 * rows, 8)
    validate = mode == "validated"
    with open_trace(path) as tr:
        def read_block():
            return next(tr.blocks(rows, validate=validate))

        block = read_block()
        assert len(block.arrival_s) == rows
        benchmark.group = "trace-io"
        benchmark.pedantic(read_block, rounds=pick(quick, 1, 50), iterations=1,
                           warmup_rounds=pick(quick, 0, 2))
    if benchmark.enabled:
        record(benchmark, rows=rows, ns_per_row=best_seconds(benchmark, 0.0) / rows * 1e9,
               mb_per_s=rows * 28 / best_seconds(benchmark, 1.0) / 1e6)
