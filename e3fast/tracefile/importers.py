"""Import public LLM request traces (CSV) into an e3fast trace file.

Supported formats (columns are read by name, case-insensitively, so extra columns and
reordered ones are fine):

* ``azure``: Azure LLM inference traces (2023 Splitwise, 2024 DynamoLLM):
  ``TIMESTAMP,ContextTokens,GeneratedTokens``. TIMESTAMP is wall-clock text
  ``YYYY-MM-DD HH:MM:SS.fffffff`` (7 fractional digits, parsed exactly: the fraction is
  split off by hand) with an optional ``Z``/``+HH:MM`` offset; CRLF line ends and a
  missing final newline are fine.
* ``burstgpt``: BurstGPT (``Timestamp,Model,Request tokens,Response tokens,...``; the v2
  files insert ``Session ID,Elapsed time``). ``Timestamp`` is seconds. Rows with
  ``Response tokens == 0`` are failed requests: they are skipped and counted.

Arrivals are made relative to the first imported row (seconds). Token counts become
``in_tokens``/``out_tokens`` of one model (``--model``). The fleet, drift and semantic
windows come from a scenario *overlay* (``--scenario``, default cold-start) built exactly
as ``gen-trace`` builds it, except that the overlay cannot change real requests (no mix
shifts). Time is rescaled so the requested fleet (before an overlay adds devices) runs at
``--utilization`` (default 0.7) under the published priors, or by an
explicit ``--time-scale``. The file's ``scenario`` attribute is ``"real"``.
"""
import csv
import re
import sys
from array import array
from dataclasses import asdict, dataclass, field, fields
from datetime import date
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import E3Error
from .scenarios import SCENARIOS
from ..specfile import read_toml

MAX_LINE_CHARS = 4096       #: a longer CSV line is corrupt input, not a request
ABSURD_TOKENS = 1_000_000   #: rows with more tokens than this are skipped (schema.MAX_TOKENS)

FORMATS = {
    # format -> (required columns as (key, header name)), the header names users see
    "azure": (("timestamp", "TIMESTAMP"), ("in", "ContextTokens"), ("out", "GeneratedTokens")),
    "burstgpt": (("timestamp", "Timestamp"), ("model", "Model"), ("in", "Request tokens"),
                 ("out", "Response tokens")),
}

_TS = re.compile(r"(\d{4}-\d{2}-\d{2})[ T](\d{2}):(\d{2}):(\d{2}(?:\.\d{1,9})?)"
                 r"(Z|[+-]\d{2}:?\d{2})?")


@dataclass
class CsvRows:
    """What a reader returns: columns of the imported rows and the counts of the rest.

    ``arrival_s`` is seconds after the first imported row (sorted, float64); ``in_tokens``
    and ``out_tokens`` are int32 token counts; ``source_models`` counts the ``Model``
    column (BurstGPT); ``skipped`` maps reason -> rows.
    """
    arrival_s: np.ndarray
    in_tokens: np.ndarray
    out_tokens: np.ndarray
    rows_read: int = 0
    skipped: dict = field(default_factory=dict)
    source_models: dict = field(default_factory=dict)
    reordered: int = 0  # rows that were out of time order (the import sorts them)

    @property
    def n(self) -> int:
        return int(self.arrival_s.shape[0])


def _bad(path, line_no, what, fix):
    return E3Error(what, where=f"{path}, line {line_no}", fix=fix)


def _lines(path):
    """Yield (line number, text without line end) of a text file; line 1 is the header.

    Accepts LF, CRLF and a missing final newline; refuses lines over MAX_LINE_CHARS and
    undecodable bytes with the file and line number.
    """
    try:
        handle = open(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise E3Error(f"cannot read: {exc.strerror}", where=str(path),
                      fix="check the path of the CSV file") from None
    line_no = 0
    with handle:
        while True:
            try:
                line = handle.readline(MAX_LINE_CHARS + 1)
            except UnicodeDecodeError:
                raise _bad(path, line_no + 1, "not UTF-8 text (is this a CSV file?)",
                           "pass the uncompressed CSV file") from None
            if not line:
                return
            line_no += 1
            text = line.rstrip("\r\n")
            if len(text) > MAX_LINE_CHARS:
                raise _bad(path, line_no, f"line longer than {MAX_LINE_CHARS} characters",
                           "the file is corrupt or not a request trace CSV")
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


def read_csv(path, fmt: str, limit: int | None = None) -> CsvRows:
    """Read an ``azure`` or ``burstgpt`` CSV into columns, validating every row.

    Stops after ``limit`` imported rows. One ``E3Error`` naming the file and line number
    for a bad header, bad timestamp, wrong field count, negative or malformed token count,
    an over-long line or an empty file. Rows with 0 input tokens, absurd token counts (> 1e6)
    and, for BurstGPT, failed requests (response tokens 0) are skipped and counted.
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
            skipped["blank line"] = skipped.get("blank line", 0) + 1
            continue
        rows += 1
        cells = _split(text)
        if len(cells) != width:
            raise _bad(path, line_no, f"{len(cells)} fields, the header has {width}",
                       "every row needs one value per header column")
        t = clock(path, line_no, cells[col["timestamp"]])
        i = _count(path, line_no, cells[col["in"]], names["in"])
        o = _count(path, line_no, cells[col["out"]], names["out"])
        if o == 0:
            reason = ("failed request (Response tokens = 0)" if fmt == "burstgpt"
                      else "no output tokens")
        elif i == 0:
            reason = "no input tokens (an LLM prompt needs >= 1)"
        elif i > ABSURD_TOKENS or o > ABSURD_TOKENS:
            reason = f"absurd token count (> {ABSURD_TOKENS:,})"
        else:
            reason = None
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        if "model" in col:
            name = cells[col["model"]].strip()
            models[name] = models.get(name, 0) + 1
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


# --------------------------------------------------------------------------- import-trace

_OPT = {"spec": "TOML file of these options (keys = option names); flags given override it"}


@dataclass
class ImportTraceOptions:
    """Options of ``e3fast import-trace`` (None = from --spec, else the default shown)."""
    file: Optional[str] = field(default=None, metadata={
        "args": ["file"], "nargs": "?", "help": "the CSV file to import"})
    format: Optional[str] = field(default=None, metadata={
        "choices": tuple(FORMATS), "help": "CSV format: azure or burstgpt (required)"})
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
        "help": "semantic class of the requests (default: code for Azure code files, else chat)"})
    instance_spread: Optional[float] = field(default=None, metadata={
        "help": "log-sd of each device's hidden speed factor (default 0.3; see gen-trace)"})
    seed: Optional[int] = field(default=None, metadata={"help": "seed of z and the overlay (default 0)"})
    limit: Optional[int] = field(default=None, metadata={"help": "import at most N rows"})
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
    """Import a CSV trace per ``options``; write the trace file; return a summary dict.

    The summary has ``path``, ``rows_read``, ``imported``, ``skipped`` (reason -> rows),
    ``time_scale``, ``rate_per_s``, ``duration_s``, ``n_devices``.
    """
    from ..priors import load_priors
    from . import scenarios
    from .writer import TraceWriter

    o = merge_options(options, IMPORT_DEFAULTS)
    for key, fix in (("file", "give the CSV file to import"),
                     ("format", "add --format azure or --format burstgpt"),
                     ("out", "add --out PATH.h5")):
        if not o.get(key):
            raise E3Error(f"missing {key}", where="import-trace", fix=fix)
    if o["format"] not in FORMATS:
        raise E3Error(f"unknown format {o['format']!r}", where="--format", fix="azure or burstgpt")
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

    rows = read_csv(o["file"], o["format"], o.get("limit"))
    if rows.n == 0:
        raise E3Error("every row was skipped: " + _reasons(rows.skipped), where=str(o["file"]),
                      fix="check the file (all requests failed?)")
    m = priors.models.index(o["model"])
    rng = np.random.default_rng(np.random.SeedSequence(o["seed"]))
    types = scenarios.make_fleet(priors, o["devices"], o.get("fleet"))
    span = float(rows.arrival_s[-1])
    if utilization is not None:
        # per-device mean prior service time of these requests; capacity = sum of 1/mean
        in_mean, out_mean = float(rows.in_tokens.mean()), float(rows.out_tokens.mean())
        s = priors.a[types, m] + priors.b[types, m] * out_mean + priors.c[types, m] * in_mean
        ok = priors.available[types, m]
        capacity = float(np.sum(1.0 / s[ok])) if ok.any() else 0.0
        if capacity == 0.0:
            raise E3Error(f"no device of the fleet can host {o['model']}", where="--fleet",
                          fix="add a device type that hosts the model")
        native_rate = rows.n / span if span > 0 else float("inf")
        time_scale = native_rate / (utilization * capacity) if span > 0 else 1.0
    else:
        time_scale = float(o["time_scale"])
    arrival = rows.arrival_s * time_scale
    duration = max(float(arrival[-1]), 1e-9)
    scen = scenarios.build_scenario(o["scenario"], priors, types, duration,
                                    rng=np.random.default_rng(rng.integers(2**63)),
                                    params={}, instance_spread=o["instance_spread"],
                                    overlay=True)
    z = np.random.default_rng(rng.integers(2**63)).standard_normal(rows.n)
    params = {k: v for k, v in o.items() if k != "force"}
    params.update(utilization=utilization, time_scale=time_scale, klass=klass,
                  overlay=o["scenario"], rows_read=rows.rows_read, imported=rows.n,
                  skipped=rows.skipped, reordered=rows.reordered,
                  source_models=rows.source_models, scenario_params=scen.params,
                  source="file " + Path(o["file"]).name)
    model = np.full(rows.n, m, dtype=np.int16)
    kl = np.full(rows.n, scenarios.CLASSES.index(klass), dtype=np.int16)
    block = 1 << 20
    with TraceWriter(out, scen.env, scenario="real", seed=o["seed"], params=params,
                     duration_s=duration, force=o["force"]) as writer:
        for lo in range(0, rows.n, block):
            sl = slice(lo, lo + block)
            writer.append(arrival[sl], model[sl], rows.in_tokens[sl], rows.out_tokens[sl],
                          kl[sl], z[sl])
    return {"path": str(out), "rows_read": rows.rows_read, "imported": rows.n,
            "skipped": rows.skipped, "reordered": rows.reordered, "time_scale": time_scale,
            "utilization": utilization, "duration_s": duration,
            "rate_per_s": rows.n / duration, "n_devices": scen.env.n_devices,
            "model": o["model"], "klass": klass, "overlay": o["scenario"]}


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
          f"({s['overlay']} overlay).", file=sys.stdout)
    return 0
