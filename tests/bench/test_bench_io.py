"""Trace I/O: streaming a whole 1M-row trace with the reader ``e3fast replay`` uses.

* ``test_trace_stream[validated]``: ``for b in tr.blocks(): ...`` over every block, each a
  view of the mapped file (``tracefile.rows``) checked by ``check_block``: what a replay
  pays to read a trace, the stream's set-up (chunk offsets, the map) included.
* ``test_trace_stream[raw]``: the same without validation (the views alone touch no page).
``extra_info`` ``ns_per_row`` = fastest round / rows. The file is in the page cache (a warm
read: the disk is not what is measured).
"""
import pytest

from benchutil import best_seconds, pick, record

ROWS = 1_000_000


@pytest.mark.parametrize("mode", ["validated", "raw"])
def test_trace_stream(benchmark, quick, make_trace, mode):
    from e3fast.tracefile.reader import open_trace

    rows = pick(quick, 20_000, ROWS)
    path = make_trace("drift", rows, 8)
    validate = mode == "validated"
    with open_trace(path) as tr:
        def stream():
            n = 0
            for b in tr.blocks(validate=validate):
                n += len(b.arrival_s)
            return n

        assert stream() == rows
        benchmark.group = "trace-io"
        benchmark.pedantic(stream, rounds=pick(quick, 1, 20), iterations=1,
                           warmup_rounds=pick(quick, 0, 2))
    if benchmark.enabled:
        record(benchmark, rows=rows, ns_per_row=best_seconds(benchmark, 0.0) / rows * 1e9,
               mb_per_s=rows * 28 / best_seconds(benchmark, 1.0) / 1e6)
