"""Import public LLM request traces (CSV or JSON lines) into an e3fast trace file.

Supported formats (CSV columns, case-insensitively, and JSON fields are read by name, so
extra or reordered ones are fine):

* ``azure``: Azure LLM inference traces (2023 Splitwise, 2024 DynamoLLM):
  ``TIMESTAMP,ContextTokens,GeneratedTokens``. TIMESTAMP is wall-clock text
  ``YYYY-MM-DD HH:MM:SS.fffffff`` (7 fractional digits, parsed exactly: the fraction is
  split off by hand) with an optional ``Z``/``+HH:MM`` offset; CRLF line ends and a
  missing final newline are fine.
* ``burstgpt``: BurstGPT (``Timestamp,Model,Request tokens,Response tokens,...``; the v2
  files insert ``Session ID,Elapsed time``). ``Timestamp`` is seconds. Rows with
  ``Response tokens == 0`` are failed requests: they are skipped and counted.
* ``mooncake``: the Mooncake FAST'25 traces, one JSON object a line: ``timestamp``
  (milliseconds, non-decreasing), ``input_length``, ``output_length``, ``hash_ids`` (the
  prompt's 512-token blocks as integer ids, one per started block). Read in two streaming
  passes (statistics, then the rows), so memory does not grow with the file; the blocks are
  kept in the trace's ``/prefix`` group (docs/TRACE_FORMAT.md). A line out of time order is
  an error (the traces are sorted; a shuffled file is not this format).

Arrivals are made relative to the first imported row (seconds). Token counts become
``in_tokens``/``out_tokens`` of one model (``--model``). Every imported request gets one
semantic class, ``--klass`` (default ``chat``; ``code`` for an Azure file whose name says
code): the traces carry no semantic label, and a class derived from the lengths would only
repeat what the routers already see in the prompt length. A request whose prompt plus output
exceeds the context window of the model (``CONTEXT_TOKENS``) is skipped and counted, as a
serving engine rejects it; it is not clipped, which would give it a prompt its prefix blocks
do not describe. Rows with no output, no prompt or absurd token counts are skipped and
counted too; the summary lists every reason. The fleet, drift and semantic windows come from
a scenario *overlay* (``--scenario``, default cold-start) built exactly as ``gen-trace``
builds it, except that the overlay cannot change real requests (no mix shifts). Time is
rescaled so the requested fleet (before an overlay adds devices) runs at ``--utilization``
(default 0.7) under the published priors, or by an explicit ``--time-scale``. The file's
``scenario`` attribute is ``"real"``.
"""
import csv
import json
import math
import re
import sys
from array import array
from dataclasses import asdict, dataclass, field, fields
from datetime import date
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from ..errors import E3Error
from .scenarios import SCENARIOS
from ..specfile import read_toml

MAX_LINE_CHARS = 4096       #: a longer CSV line is corrupt input, not a request
#: a longer JSON line is corrupt input: a 1,000,000-token prompt has 1,954 block ids (~40 kB)
MAX_JSONL_CHARS = 1 << 20
ABSURD_TOKENS = 1_000_000   #: rows with more tokens than this are skipped (schema.MAX_TOKENS)
#: context window (prompt + output tokens) per model; a longer request is skipped and counted.
#: Llama 3.1 8B: 128K tokens (its model card). gptj-6b stands for "a 6B-class model"
#: (tracefile.workload), so no limit is applied to it.
CONTEXT_TOKENS = {"llama3.1-8b": 131_072}
#: rows per block the import streams into the writer
IMPORT_BLOCK_ROWS = 65_536

FORMATS = {
    # format -> (required columns as (key, header name)), the header names users see
    "azure": (("timestamp", "TIMESTAMP"), ("in", "ContextTokens"), ("out", "GeneratedTokens")),
    "burstgpt": (("timestamp", "Timestamp"), ("model", "Model"), ("in", "Request tokens"),
                 ("out", "Response tokens")),
}

#: JSON-lines formats: format -> (fields every line needs, tokens per prefix block)
JSONL_FORMATS = {"mooncake": (("timestamp", "input_length", "output_length", "hash_ids"), 512)}
ALL_FORMATS = (*FORMATS, *JSONL_FORMATS)

_TS = re.compile(r"(\d{4}-\d{2}-\d{2})[ T](\d{2}):(\d{2}):(\d{2}(?:\.\d{1,9})?)"
                 r"(Z|[+-]\d{2}:?\d{2})?")


class RowBlock(NamedTuple):
    """Consecutive imported rows: arrivals in seconds after the first imported row, token
    counts, and (formats with prefix blocks, else None) blocks per row and their ids."""
    arrival_s: np.ndarray
    in_tokens: np.ndarray
    out_tokens: np.ndarray
    block_counts: Optional[np.ndarray] = None
    block_ids: Optional[np.ndarray] = None


class ImportedRows:
    """What a reader returns (`CsvRows`, `JsonlRows`): ``n`` imported rows, ``span_s`` (the
    last imported arrival, seconds after the first), ``in_mean``/``out_mean`` (mean prompt
    and output tokens), the counts of the other rows, and ``blocks(rows)`` streaming the
    imported ones in order (`RowBlock`s of up to `rows` rows). ``skipped`` maps reason ->
    rows; ``source_models`` counts the ``Model`` column (BurstGPT); ``block_tokens`` is the
    size of a prefix block (None: the format has none)."""
    rows_read: int = 0
    reordered: int = 0  # rows that were out of time order (the import sorts them)
    block_tokens: Optional[int] = None

    def __init__(self):
        self.skipped, self.source_models = {}, {}


class CsvRows(ImportedRows):
    """The rows of a CSV file, in memory (sorted by time: the CSV formats may be unsorted).

    ``arrival_s`` is seconds after the first imported row (sorted, float64); ``in_tokens``
    and ``out_tokens`` are int32 token counts.
    """

    def __init__(self, arrival_s, in_tokens, out_tokens, rows_read=0, skipped=None,
                 source_models=None, reordered=0):
        super().__init__()
        self.arrival_s, self.in_tokens, self.out_tokens = arrival_s, in_tokens, out_tokens
        self.rows_read, self.reordered = rows_read, reordered
        self.skipped.update(skipped or {})
        self.source_models.update(source_models or {})

    @property
    def n(self) -> int:
        return int(self.arrival_s.shape[0])

    @property
    def span_s(self) -> float:
        return float(self.arrival_s[-1]) if self.n else 0.0

    @property
    def in_mean(self) -> float:
        return float(self.in_tokens.mean())

    @property
    def out_mean(self) -> float:
        return float(self.out_tokens.mean())

    def blocks(self, rows: int):
        for lo in range(0, self.n, rows):
            sl = slice(lo, lo + rows)
            yield RowBlock(self.arrival_s[sl], self.in_tokens[sl], self.out_tokens[sl])


def _bad(path, line_no, what, fix):
    return E3Error(what, where=f"{path}, line {line_no}", fix=fix)


def _lines(path, max_chars=MAX_LINE_CHARS, kind="CSV"):
    """Yield (line number, text without line end) of a text file (a CSV's line 1 is the header).

    Accepts LF, CRLF and a missing final newline; refuses lines over `max_chars` and
    undecodable bytes with the file and line number. Reads at most `max_chars` + 1
    characters of a line, so a huge line costs no memory.
    """
    try:
        handle = open(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise E3Error(f"cannot read: {exc.strerror}", where=str(path),
                      fix=f"check the path of the {kind} file") from None
    line_no = 0
    with handle:
        while True:
            try:
                line = handle.readline(max_chars + 1)
            except UnicodeDecodeError:
                raise _bad(path, line_no + 1, f"not UTF-8 text (is this a {kind} file?)",
                           f"pass the uncompressed {kind} file") from None
            if not line:
                return
            line_no += 1
            text = line.rstrip("\r\n")
            if len(text) > max_chars:
                raise _bad(path, line_no, f"line longer than {max_chars:,} characters",
                           f"the file is corrupt or not a request trace {kind}")
            yield line_no, text


def _split(text):
    return next(csv.reader([text])) if '"' in text else text.split(",")


def _header(path, fmt, lines):
    """Map required column keys to indices from the header line; raise on a bad header."""
    first = next(lines, None)
    if first is None:
        raise E3Error("empty file (no header line)", where=str(path),
                      fix=f"pass a {fmt} CSV with a header line")
    line_no, text = first
    names = [c.strip().lower() for c in _split(text)]
    columns = {}
    for key, name in FORMATS[fmt]:
        if name.lower() not in names:
            expected = ",".join(n for _, n in FORMATS[fmt])
            raise _bad(path, line_no, f"bad header: no column {name!r} in {text[:200]!r}",
                       f"a {fmt} CSV starts with a header naming at least {expected}"
                       + (" (is this the other --format?)" if len(FORMATS) > 1 else ""))
        columns[key] = names.index(name.lower())
    return columns, len(names)


def _count(path, line_no, text, column):
    """Parse a non-negative integer token count; raise naming the line otherwise."""
    s = text.strip()
    if s.isascii() and s.isdigit():
        return int(s)
    if s.startswith("-") and s[1:].isdigit():
        raise _bad(path, line_no, f"negative token count {s} in column {column!r}",
                   "token counts must be >= 0")
    raise _bad(path, line_no, f"bad token count {s!r} in column {column!r}",
               "token counts are non-negative integers")


class _AzureClock:
    """Parse Azure TIMESTAMP text into seconds after the first row, exactly.

    The day is kept as an integer and the time of day as a float, so 100 ns resolution
    survives (a float of absolute seconds since year 1 would only keep ~8 us).
    """

    def __init__(self):
        self.days, self.day0, self.sod0 = {}, None, 0.0

    def __call__(self, path, line_no, text):
        m = _TS.fullmatch(text.strip())
        try:
            if not m:
                raise ValueError
            day = self.days.get(m[1])
            if day is None:
                day = self.days[m[1]] = date.fromisoformat(m[1]).toordinal()
            hh, mm, ss = int(m[2]), int(m[3]), float(m[4])
            if hh > 23 or mm > 59 or ss >= 61:
                raise ValueError
        except ValueError:
            raise _bad(path, line_no, f"bad timestamp {text.strip()[:60]!r}",
                       "TIMESTAMP must look like 2023-11-16 18:15:46.6805900") from None
        sod = hh * 3600 + mm * 60 + ss
        if m[5] and m[5] != "Z":
            sign = -1 if m[5][0] == "-" else 1
            off = m[5][1:].replace(":", "")
            sod -= sign * (int(off[:2]) * 3600 + int(off[2:]) * 60)
        if self.day0 is None:
            self.day0, self.sod0 = day, sod
        return (day - self.day0) * 86400.0 + (sod - self.sod0)


def _burst_clock(path, line_no, text):
    try:
        t = float(text)
        if not np.isfinite(t) or t < 0:
            raise ValueError
    except ValueError:
        raise _bad(path, line_no, f"bad timestamp {text.strip()[:60]!r}",
                   "Timestamp must be seconds >= 0, e.g. 5 or 45.25") from None
    return t


def _skip_reason(i, o, context, no_output="no output tokens"):
    """Why a row with `i` prompt and `o` output tokens is not imported (None: it is).
    `context`: the model's context window in tokens (None: no limit)."""
    if o == 0:
        return no_output
    if i == 0:
        return "no input tokens (an LLM prompt needs >= 1)"
    if i > ABSURD_TOKENS or o > ABSURD_TOKENS:
        return f"absurd token count (> {ABSURD_TOKENS:,})"
    if context is not None and i + o > context:
        return f"prompt + output over the model's {context:,}-token context"
    return None


def _tally(counts: dict, key) -> None:
    counts[key] = counts.get(key, 0) + 1


def read_csv(path, fmt: str, limit: int | None = None, context: int | None = None) -> CsvRows:
    """Read an ``azure`` or ``burstgpt`` CSV into columns, validating every row.

    Stops after ``limit`` imported rows. One ``E3Error`` naming the file and line number
    for a bad header, bad timestamp, wrong field count, negative or malformed token count,
    an over-long line or an empty file. Rows with 0 input tokens, absurd token counts (> 1e6),
    more tokens than the ``context`` window and, for BurstGPT, failed requests (response
    tokens 0) are skipped and counted.
    """
    if fmt not in FORMATS:
        raise E3Error(f"unknown format {fmt!r}", where="--format", fix="use azure or burstgpt")
    lines = _lines(path)
    col, width = _header(path, fmt, lines)
    clock = _AzureClock() if fmt == "azure" else _burst_clock
    names = dict(FORMATS[fmt])
    t_raw, n_in, n_out = array("d"), array("l"), array("l")
    skipped, models = {}, {}
    rows = 0
    for line_no, text in lines:
        if limit is not None and len(t_raw) >= limit:
            break
        if not text.strip():
            _tally(skipped, "blank line")
            continue
        rows += 1
        cells = _split(text)
        if len(cells) != width:
            raise _bad(path, line_no, f"{len(cells)} fields, the header has {width}",
                       "every row needs one value per header column")
        t = clock(path, line_no, cells[col["timestamp"]])
        i = _count(path, line_no, cells[col["in"]], names["in"])
        o = _count(path, line_no, cells[col["out"]], names["out"])
        reason = _skip_reason(i, o, context, "failed request (Response tokens = 0)"
                              if fmt == "burstgpt" else "no output tokens")
        if reason:
            _tally(skipped, reason)
            continue
        if "model" in col:
            _tally(models, cells[col["model"]].strip())
        t_raw.append(t)
        n_in.append(i)
        n_out.append(o)
    if rows == 0:
        raise E3Error("no data rows after the header", where=str(path),
                      fix="pass a CSV with at least one request row")
    t = np.frombuffer(t_raw, dtype="f8") if len(t_raw) else np.zeros(0)
    order = np.argsort(t, kind="stable")
    reordered = int(np.count_nonzero(order != np.arange(order.size)))
    t = t[order]
    if t.size:
        t = t - t[0]
    return CsvRows(arrival_s=t,
                   in_tokens=np.asarray(n_in, dtype=np.int64)[order].astype(np.int32),
                   out_tokens=np.asarray(n_out, dtype=np.int64)[order].astype(np.int32),
                   rows_read=rows, skipped=skipped, source_models=models, reordered=reordered)


def _json_count(path, line_no, rec, key):
    """The non-negative integer ``rec[key]`` of a JSON line; raise naming the line otherwise."""
    v = rec[key]
    if type(v) is not int:  # bool is an int subclass: refused too
        raise _bad(path, line_no, f"{key} is {json.dumps(v)[:40]}, not an integer",
                   f"{key} is a whole number of tokens")
    if v < 0:
        raise _bad(path, line_no, f"negative {key} {v}", "token counts must be >= 0")
    return v


def _mooncake_line(path, line_no, text, block_tokens):
    """(timestamp ms, input tokens, output tokens, block ids) of one Mooncake line, checked."""
    try:
        rec = json.loads(text)
    except ValueError as exc:
        msg = getattr(exc, "msg", str(exc))
        raise _bad(path, line_no, f"not valid JSON ({msg} at column {getattr(exc, 'colno', '?')}):"
                   " a truncated or corrupt line", "each line is one complete JSON object") from None
    except RecursionError:
        raise _bad(path, line_no, "JSON nested too deeply", "each line is one flat JSON object") from None
    fields = JSONL_FORMATS["mooncake"][0]
    if not isinstance(rec, dict):
        raise _bad(path, line_no, f"a JSON {type(rec).__name__}, not an object",
                   "each line is an object with " + ", ".join(fields))
    missing = [k for k in fields if k not in rec]
    if missing:
        raise _bad(path, line_no, f"missing field {missing[0]!r}",
                   "each line needs " + ", ".join(fields) + " (is this the other --format?)")
    ts = rec["timestamp"]
    if type(ts) not in (int, float) or abs(ts) >= 2**63 or not math.isfinite(ts):
        raise _bad(path, line_no, f"bad timestamp {json.dumps(ts)[:40]}",
                   "timestamp is milliseconds from the start of the trace, e.g. 1500")
    if ts < 0:
        raise _bad(path, line_no, f"negative timestamp {ts}", "timestamps are milliseconds >= 0")
    i = _json_count(path, line_no, rec, "input_length")
    o = _json_count(path, line_no, rec, "output_length")
    ids = rec["hash_ids"]
    if not isinstance(ids, list) or not all(type(x) is int and 0 <= x < 2**63 for x in ids):
        raise _bad(path, line_no, f"hash_ids {json.dumps(ids)[:60]} is not a list of integers >= 0",
                   "hash_ids lists the prompt's block ids, e.g. [0, 1, 2]")
    if len(ids) != -(-i // block_tokens):
        raise _bad(path, line_no, f"{len(ids)} hash_ids for a {i:,}-token prompt (it has "
                   f"{-(-i // block_tokens)} blocks of {block_tokens} tokens)",
                   f"one id per started {block_tokens}-token block of the prompt")
    return ts, i, o, ids


class JsonlRows(ImportedRows):
    """The rows of a Mooncake JSON-lines file, streamed: the constructor reads the file once
    (checks every line, counts, sums; constant memory) and ``blocks`` reads it again.

    Stops after ``limit`` imported rows. One ``E3Error`` naming the file and line number for
    invalid JSON (a truncated line), a missing field, a bad, negative or decreasing
    timestamp, a non-integer or negative token count, hash_ids that do not match the prompt
    length, an over-long line, and for an empty file. Rows are skipped and counted as in
    `read_csv`.
    """

    def __init__(self, path, fmt: str = "mooncake", limit: int | None = None,
                 context: int | None = None):
        super().__init__()
        self.path, self.limit, self.context = path, limit, context
        self.block_tokens = JSONL_FORMATS[fmt][1]
        self.n, sum_in, sum_out, first, last = 0, 0, 0, None, None
        for ts, i, o, _ in self._records(self.skipped):
            self.n, sum_in, sum_out = self.n + 1, sum_in + i, sum_out + o
            first = ts if first is None else first
            last = ts
        self.ts0 = first
        self.span_s = (last - first) / 1000.0 if self.n else 0.0
        self.in_mean = sum_in / self.n if self.n else 0.0
        self.out_mean = sum_out / self.n if self.n else 0.0

    def _records(self, skipped: dict):
        """Yield (timestamp ms, in, out, ids) of the imported lines; count the others."""
        path, rows, imported, prev = self.path, 0, 0, None
        for line_no, text in _lines(path, MAX_JSONL_CHARS, "JSON-lines"):
            if self.limit is not None and imported >= self.limit:
                break
            if not text.strip():
                _tally(skipped, "blank line")
                continue
            rows += 1
            ts, i, o, ids = _mooncake_line(path, line_no, text, self.block_tokens)
            if prev is not None and ts < prev:
                raise _bad(path, line_no, f"timestamp {ts} ms is before the previous line's {prev} ms",
                           "the lines must be sorted by timestamp (sort the file by it)")
            prev = ts
            reason = _skip_reason(i, o, self.context)
            if reason:
                _tally(skipped, reason)
                continue
            imported += 1
            yield ts, i, o, ids
        self.rows_read = rows
        if rows == 0:
            raise E3Error("empty file (no request lines)", where=str(path),
                          fix="pass a JSON-lines trace with one request per line")

    def blocks(self, rows: int):
        ts, n_in, n_out, counts, ids = array("d"), array("q"), array("q"), array("q"), array("q")
        for t, i, o, b in self._records({}):
            ts.append((t - self.ts0) / 1000.0)
            n_in.append(i)
            n_out.append(o)
            counts.append(len(b))
            ids.extend(b)
            if len(ts) == rows:
                yield _row_block(ts, n_in, n_out, counts, ids)
                ts, n_in, n_out, counts, ids = (array(a.typecode) for a in (ts, n_in, n_out, counts, ids))
        if len(ts):
            yield _row_block(ts, n_in, n_out, counts, ids)


def _row_block(ts, n_in, n_out, counts, ids) -> RowBlock:
    i8 = np.dtype(np.int64)
    return RowBlock(np.frombuffer(ts, dtype="f8"), np.frombuffer(n_in, i8).astype(np.int32),
                    np.frombuffer(n_out, i8).astype(np.int32), np.frombuffer(counts, i8),
                    np.frombuffer(ids, i8))


def read_rows(path, fmt: str, limit: int | None = None, context: int | None = None) -> ImportedRows:
    """The reader of format `fmt` (`read_csv` or `JsonlRows`)."""
    if fmt in JSONL_FORMATS:
        return JsonlRows(path, fmt, limit, context)
    return read_csv(path, fmt, limit, context)


# --------------------------------------------------------------------------- import-trace

_OPT = {"spec": "TOML file of these options (keys = option names); flags given override it"}


@dataclass
class ImportTraceOptions:
    """Options of ``e3fast import-trace`` (None = from --spec, else the default shown)."""
    file: Optional[str] = field(default=None, metadata={
        "args": ["file"], "nargs": "?", "help": "the CSV or JSON-lines file to import"})
    format: Optional[str] = field(default=None, metadata={
        "choices": ALL_FORMATS,
        "help": "file format: azure or burstgpt (CSV), mooncake (JSON lines) (required)"})
    out: Optional[str] = field(default=None, metadata={"help": "output trace file (.h5; required)"})
    devices: Optional[int] = field(default=None, metadata={"help": "fleet size (default 8)"})
    fleet: Optional[str] = field(default=None, metadata={
        "help": "explicit fleet 'type:count,...' (default: --devices cycling the default types)"})
    scenario: Optional[str] = field(default=None, metadata={
        "choices": SCENARIOS,
        "help": "environment overlay: fleet changes, drift, slowdown windows (default cold-start)"})
    utilization: Optional[float] = field(default=None, metadata={
        "help": "rescale time so the fleet runs at this utilisation (default 0.7)"})
    time_scale: Optional[float] = field(default=None, metadata={
        "help": "multiply arrival times by this instead of --utilization (1 = real time)"})
    model: Optional[str] = field(default=None, metadata={
        "help": "model of every request (default: the class's model: chat llama3.1-8b, "
                "code gptj-6b)"})
    klass: Optional[str] = field(default=None, metadata={
        "help": "semantic class of every request (default: code for Azure code files, else "
                "chat; the traces carry no class)"})
    instance_spread: Optional[float] = field(default=None, metadata={
        "help": "log-sd of each device's hidden speed factor (default 0.3; see gen-trace)"})
    seed: Optional[int] = field(default=None, metadata={"help": "seed of z and the overlay (default 0)"})
    limit: Optional[int] = field(default=None, metadata={"help": "import at most N rows (lines)"})
    force: bool = field(default=False, metadata={"help": "overwrite --out if it exists"})
    spec: Optional[str] = field(default=None, metadata={"help": _OPT["spec"]})


IMPORT_DEFAULTS = {"devices": 8, "scenario": "cold-start", "seed": 0,
                   "instance_spread": 0.3}


def load_spec(path, valid: set) -> dict:
    """Read a TOML spec whose keys are option names ('-' or '_'); raise E3Error on problems."""
    p = Path(path)
    data = read_toml(p, "the --spec path")
    spec = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in valid:
            raise E3Error(f"unknown key {key!r}", where=str(p),
                          fix=f"use option names: {', '.join(sorted(valid))}")
        spec[name] = value
    return spec


def merge_options(options, defaults: dict) -> dict:
    """Resolve options: explicit values (not None) > spec file > ``defaults``.

    Spec values are type-checked against the dataclass field types.
    """
    valid = {f.name for f in fields(options)} - {"spec"}
    given = asdict(options)
    spec = load_spec(given["spec"], valid) if given.get("spec") else {}
    for f in fields(options):
        if f.name in spec:
            value, want = spec[f.name], _base_type(f.type)
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise E3Error(f"key {f.name!r} must be {want.__name__}, got {value!r}",
                              where=str(given["spec"]), fix="fix the value in the spec")
            spec[f.name] = value
    out = dict(defaults)
    out.update(spec)
    out.update({k: v for k, v in given.items() if v is not None and k != "spec"
                and not (v is False and k in spec)})
    out["spec"] = given.get("spec")
    return out


def _base_type(tp):
    """``Optional[X]`` -> X."""
    args = getattr(tp, "__args__", None)
    return next(a for a in args if a is not type(None)) if args else tp


def import_trace(options: ImportTraceOptions) -> dict:
    """Import a trace file per ``options``; write the trace file; return a summary dict.

    The summary has ``path``, ``rows_read``, ``imported``, ``skipped`` (reason -> rows),
    ``time_scale``, ``rate_per_s``, ``duration_s``, ``n_devices``, ``prefix_block_tokens``
    (None: no prefix blocks kept).
    """
    from ..priors import load_priors
    from . import scenarios
    from .schema import DEFAULT_CHUNK_ROWS
    from .writer import TraceWriter

    o = merge_options(options, IMPORT_DEFAULTS)
    for key, fix in (("file", "give the CSV or JSON-lines file to import"),
                     ("format", "add --format " + ", --format ".join(ALL_FORMATS)),
                     ("out", "add --out PATH.h5")):
        if not o.get(key):
            raise E3Error(f"missing {key}", where="import-trace", fix=fix)
    if o["format"] not in ALL_FORMATS:
        raise E3Error(f"unknown format {o['format']!r}", where="--format",
                      fix="one of " + ", ".join(ALL_FORMATS))
    if o.get("utilization") is not None and o.get("time_scale") is not None:
        raise E3Error("--utilization and --time-scale both given", where="import-trace",
                      fix="give one: --utilization sets the time scale from the fleet")
    if o.get("time_scale") is not None and not o["time_scale"] > 0:
        raise E3Error(f"time scale {o['time_scale']} must be > 0", where="--time-scale",
                      fix="e.g. --time-scale 2 doubles every gap")
    utilization = o.get("utilization")
    if utilization is None and o.get("time_scale") is None:
        utilization = 0.7
    if utilization is not None:
        scenarios.check_utilization(utilization)
    if o.get("limit") is not None and o["limit"] < 1:
        raise E3Error(f"limit {o['limit']} must be >= 1", where="--limit", fix="e.g. --limit 1000")
    scenarios.check_common(o)
    out = Path(o["out"])
    if out.exists() and not o["force"]:
        raise E3Error("output exists", where=str(out), fix="pass --force or choose another --out")

    priors = load_priors()
    klass = o.get("klass") or ("code" if o["format"] == "azure"
                               and "code" in Path(o["file"]).name.lower() else "chat")
    if klass not in scenarios.CLASSES:
        raise E3Error(f"unknown class {klass!r}", where="--klass",
                      fix=f"choose one of {', '.join(scenarios.CLASSES)}")
    o["model"] = o.get("model") or scenarios.CLASS_MODEL[klass]
    if o["model"] not in priors.models or priors.model_kind[priors.models.index(o["model"])] != 0:
        raise E3Error(f"unknown or non-LLM model {o['model']!r}", where="--model",
                      fix="choose an LLM of the priors: " + ", ".join(
                          m for m, k in zip(priors.models, priors.model_kind) if k == 0))

    rows = read_rows(o["file"], o["format"], o.get("limit"), CONTEXT_TOKENS.get(o["model"]))
    if rows.n == 0:
        raise E3Error("every row was skipped: " + _reasons(rows.skipped), where=str(o["file"]),
                      fix="check the file (all requests failed?)")
    m = priors.models.index(o["model"])
    rng = np.random.default_rng(np.random.SeedSequence(o["seed"]))
    types = scenarios.make_fleet(priors, o["devices"], o.get("fleet"))
    span = rows.span_s
    if utilization is not None:
        # per-device mean prior service time of these requests; capacity = sum of 1/mean
        s = priors.a[types, m] + priors.b[types, m] * rows.out_mean + priors.c[types, m] * rows.in_mean
        ok = priors.available[types, m]
        capacity = float(np.sum(1.0 / s[ok])) if ok.any() else 0.0
        if capacity == 0.0:
            raise E3Error(f"no device of the fleet can host {o['model']}", where="--fleet",
                          fix="add a device type that hosts the model")
        native_rate = rows.n / span if span > 0 else float("inf")
        time_scale = native_rate / (utilization * capacity) if span > 0 else 1.0
    else:
        time_scale = float(o["time_scale"])
    duration = max(span * time_scale, 1e-9)
    scen = scenarios.build_scenario(o["scenario"], priors, types, duration,
                                    rng=np.random.default_rng(rng.integers(2**63)),
                                    params={}, instance_spread=o["instance_spread"],
                                    overlay=True)
    z_rng = np.random.default_rng(rng.integers(2**63))  # drawn block by block: the same stream
    params = {k: v for k, v in o.items() if k != "force"}
    params.update(utilization=utilization, time_scale=time_scale, klass=klass,
                  overlay=o["scenario"], rows_read=rows.rows_read, imported=rows.n,
                  skipped=rows.skipped, reordered=rows.reordered,
                  source_models=rows.source_models, scenario_params=scen.params,
                  source="file " + Path(o["file"]).name)
    c = scenarios.CLASSES.index(klass)
    with TraceWriter(out, scen.env, scenario="real", seed=o["seed"], params=params,
                     duration_s=duration, force=o["force"],
                     chunk_rows=min(DEFAULT_CHUNK_ROWS, rows.n),  # small imports stay small
                     prefix_block_tokens=rows.block_tokens) as writer:
        for b in rows.blocks(IMPORT_BLOCK_ROWS):
            k = len(b.arrival_s)
            writer.append(b.arrival_s * time_scale, np.full(k, m, np.int16), b.in_tokens,
                          b.out_tokens, np.full(k, c, np.int16), z_rng.standard_normal(k),
                          prefix_counts=b.block_counts, prefix_ids=b.block_ids)
    return {"path": str(out), "rows_read": rows.rows_read, "imported": rows.n,
            "skipped": rows.skipped, "reordered": rows.reordered, "time_scale": time_scale,
            "utilization": utilization, "duration_s": duration,
            "rate_per_s": rows.n / duration, "n_devices": scen.env.n_devices,
            "model": o["model"], "klass": klass, "overlay": o["scenario"],
            "prefix_block_tokens": rows.block_tokens}


def _reasons(skipped: dict) -> str:
    return ", ".join(f"{v:,} {k}" for k, v in skipped.items()) or "none"


def run_import_trace(options: ImportTraceOptions) -> int:
    """CLI entry: import, then print rows read / imported / skipped per reason."""
    s = import_trace(options)
    scale = (f"time scaled x{s['time_scale']:.4g} to utilisation {s['utilization']:g}"
             if s["utilization"] is not None else f"time scaled x{s['time_scale']:.4g}")
    print(f"imported {s['imported']:,} of {s['rows_read']:,} rows "
          f"(skipped: {_reasons(s['skipped'])}; reordered: {s['reordered']:,}) into "
          f"{s['path']}: {s['model']} requests of class {s['klass']}, {scale}, "
          f"{s['duration_s']:.1f} s at {s['rate_per_s']:.3g} req/s on {s['n_devices']} devices "
          f"({s['overlay']} overlay)"
          + (f"; prefix blocks of {s['prefix_block_tokens']} tokens kept in /prefix"
             if s["prefix_block_tokens"] else "") + ".", file=sys.stdout)
    return 0
