"""``e3fast gen-corpus``: many traces from one TOML spec, in parallel, with a manifest.

Spec (``traces/corpus.toml`` is an example)::

    out = "traces/corpus"              # optional; --out overrides
    [defaults]                         # gen-trace options applied to every entry
    devices = 8
    [grid]                             # the cartesian product of these lists (or scalars)
    scenario = ["cold-start", "drift"]
    utilization = [0.5, 0.7]
    seed = [0, 1]
    requests = [10000]
    [[entry]]                          # optional single entries (over the defaults)
    name = "drift-big"                 # optional file name (else derived from the parameters)
    scenario = "drift"
    requests = 100000
    drift_step_mult = 6.0

Keys are ``gen-trace`` option names (``-`` or ``_``) except out/force/spec; an ``[[entry]]``
may also set ``name``, so that editing its parameters regenerates it in place. Other files
are named from scenario, utilisation, size and seed (plus a short digest of the parameters
that differ from gen-trace's defaults). Each entry is checked like ``gen-trace`` before
anything is generated; a bad spec is an E3Error naming the key. ``OUT/manifest.json`` lists
per entry its path (relative to OUT), parameters, sha256, request count, duration (s) and
size (bytes). A re-run regenerates only entries that are missing, whose parameters changed,
or whose file no longer matches its checksum; the manifest is rewritten atomically after
each finished entry. Traces the spec no longer lists are kept (``--prune`` deletes them).
"""
import hashlib
import json
import os
from dataclasses import dataclass, field, fields
from itertools import product
from pathlib import Path
from typing import Optional

from . import __version__
from .atomic import write_text_atomic
from .errors import E3Error
from .specfile import read_toml

SCHEMA = "e3fast-corpus/1"
_RESERVED = {"out", "force", "spec"}


@dataclass
class CorpusOptions:
    """Options of ``e3fast gen-corpus``."""
    spec: str = field(metadata={"args": ["spec"], "help": "corpus spec (TOML)"})
    out: Optional[str] = field(default=None, metadata={
        "help": "output folder (default: the spec's `out`)"})
    workers: Optional[int] = field(default=None, metadata={
        "help": "parallel worker processes (default: all cores)"})
    force: bool = field(default=False, metadata={"help": "regenerate every entry"})
    prune: bool = field(default=False, metadata={
        "help": "delete traces of the manifest that the spec no longer lists"})
    quiet: bool = field(default=False, metadata={"help": "no progress bar and no summary line"})


def _option_types() -> dict:
    from .tracefile.generator import GenTraceOptions
    from .tracefile.importers import _base_type
    return {f.name: _base_type(f.type) for f in fields(GenTraceOptions) if f.name not in _RESERVED}


def _check_table(table, where: str, spec: str, lists: bool) -> dict:
    """Normalise keys and check value types of one spec table."""
    if not isinstance(table, dict):
        raise E3Error(f"[{where}] must be a table", where=spec, fix="see traces/corpus.toml")
    types, out = _option_types(), {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in types:
            raise E3Error(f"unknown key {key!r} in [{where}]", where=spec,
                          fix=f"use gen-trace option names: {', '.join(sorted(types))}")
        values = value if lists and isinstance(value, list) else [value]
        if lists and not values:
            raise E3Error(f"key {key!r} in [{where}] is an empty list", where=spec,
                          fix="give at least one value")
        want = types[name]
        for v in values:
            ok = isinstance(v, want) and not (want in (int, float) and isinstance(v, bool))
            ok = ok or (want is float and isinstance(v, int) and not isinstance(v, bool))
            if not ok:
                raise E3Error(f"key {key!r} in [{where}] must be {want.__name__}, got {v!r}",
                              where=spec, fix="fix the value in the spec")
        out[name] = [float(v) if want is float else v for v in values] if lists else \
            (float(value) if want is float else value)
    return out


def load_corpus_spec(path) -> tuple[list[dict], Optional[str]]:
    """Read a corpus spec; return (entries as gen-trace parameter dicts, spec's `out`)."""
    p = Path(path)
    data = read_toml(p, "the corpus spec path")
    unknown = set(data) - {"out", "defaults", "grid", "entry"}
    if unknown:
        raise E3Error(f"unknown key {sorted(unknown)[0]!r}", where=str(p),
                      fix="top-level keys are out, [defaults], [grid] and [[entry]]")
    out = data.get("out")
    if out is not None and not isinstance(out, str):
        raise E3Error("key 'out' must be a string", where=str(p), fix='e.g. out = "traces/corpus"')
    defaults = _check_table(data.get("defaults", {}), "defaults", str(p), lists=False)
    entries = []
    if "grid" in data:
        grid = _check_table(data["grid"], "grid", str(p), lists=True)
        keys = list(grid)
        for combo in product(*(grid[k] for k in keys)):
            entries.append({**defaults, **dict(zip(keys, combo))})
    extra = data.get("entry", [])
    if not isinstance(extra, list):
        raise E3Error("[[entry]] must be an array of tables", where=str(p), fix="write [[entry]]")
    for i, e in enumerate(extra):
        e = dict(e) if isinstance(e, dict) else e
        name = e.pop("name", None) if isinstance(e, dict) else None
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise E3Error(f"key 'name' in [entry {i + 1}] must be a plain file name", where=str(p),
                          fix='e.g. name = "drift-big"')
        entry = {**defaults, **_check_table(e, f"entry {i + 1}", str(p), lists=False)}
        entries.append({**entry, "name": name} if name else entry)
    if not entries:
        raise E3Error("the spec lists no traces", where=str(p), fix="add a [grid] or [[entry]]")
    return entries, out


def resolve_entries(entries: list[dict], spec: str) -> list[dict]:
    """Resolve each entry like gen-trace (defaults filled in, every value checked) and name it:
    returns dicts with ``name`` (file name) and ``params`` (the resolved options)."""
    from .tracefile.generator import GenTraceOptions, resolve
    from .tracefile.generator import DEFAULTS
    out, names = [], {}
    for i, e in enumerate(entries):
        e = dict(e)
        fixed = e.pop("name", None)
        try:
            r = resolve(GenTraceOptions(**e, out="x.h5"))
        except E3Error as exc:
            raise E3Error(f"entry {i + 1} ({_brief(e)}): {exc.what}", where=f"{spec}: {exc.where}",
                          fix=exc.fix) from None
        params = {k: v for k, v in r.items() if k not in _RESERVED}
        main = {k: params[k] for k in ("scenario", "utilization", "requests", "seed")}
        name = f"{main['scenario']}_u{main['utilization']:g}_n{main['requests']}_s{main['seed']}"
        others = {k: v for k, v in e.items() if k not in main and DEFAULTS.get(k) != v}
        if others:
            name += "_" + hashlib.sha256(json.dumps(others, sort_keys=True).encode()).hexdigest()[:8]
        name = (fixed.removesuffix(".h5") if fixed else name) + ".h5"
        if name in names:
            raise E3Error(f"entries {names[name] + 1} and {i + 1} describe the same trace ({name})",
                          where=spec, fix="remove the duplicate")
        names[name] = i
        out.append({"name": name, "params": _jsonable(params), "options": e})
    return out


def _brief(e: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in e.items()) or "defaults"


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def sha256_file(path) -> str:
    """Hex sha256 of a file (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _generate(entry: dict, folder: str) -> dict:
    """Worker: generate one entry; return its manifest record."""
    from .tracefile.generator import GenTraceOptions, generate_trace
    path = Path(folder) / entry["name"]
    info = generate_trace(GenTraceOptions(**entry["options"], out=str(path), force=True),
                          progress=False)
    return {"path": entry["name"], "params": entry["params"], "sha256": sha256_file(path),
            "n_requests": info["n_requests"], "duration_s": info["duration_s"],
            "bytes": path.stat().st_size, "generator": f"e3fast {__version__}"}


def _ignore_sigint():
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _up_to_date(rec: Optional[dict], entry: dict, folder: Path) -> bool:
    if not rec or rec.get("params") != entry["params"]:
        return False
    path = folder / entry["name"]
    return path.is_file() and path.stat().st_size == rec.get("bytes") and \
        sha256_file(path) == rec.get("sha256")


def gen_corpus(opts: CorpusOptions) -> dict:
    """Generate the corpus of `opts.spec`; return {"generated", "up_to_date", "pruned",
    "stale", "manifest"} (names and the manifest path)."""
    if opts.workers is not None and opts.workers < 1:
        raise E3Error(f"workers must be >= 1, got {opts.workers}", where="--workers", fix="e.g. --workers 2")
    raw, spec_out = load_corpus_spec(opts.spec)
    entries = resolve_entries(raw, opts.spec)
    if not (opts.out or spec_out):
        raise E3Error("no output folder", where="gen-corpus", fix="add --out DIR (or out = ... in the spec)")
    folder = Path(opts.out or spec_out)
    mpath = folder / "manifest.json"
    old = {}
    if mpath.exists():
        try:
            old = {r["path"]: r for r in json.loads(mpath.read_text(encoding="utf-8"))["entries"]}
        except (OSError, ValueError, KeyError, TypeError):
            old = {}  # unreadable manifest: everything is regenerated
    records = {e["name"]: old[e["name"]] for e in entries
               if not opts.force and _up_to_date(old.get(e["name"]), e, folder)}
    todo = [e for e in entries if e["name"] not in records]
    wanted = {e["name"] for e in entries}
    stale = sorted(set(old) - wanted)
    pruned = []
    if opts.prune:
        for name in stale:
            (folder / name).unlink(missing_ok=True)
            pruned.append(name)
    keep_stale = {n: old[n] for n in stale if n not in pruned}

    def save():
        order = [e["name"] for e in entries if e["name"] in records] + sorted(keep_stale)
        man = {"schema": SCHEMA, "spec": str(opts.spec),
               "entries": [records.get(n) or keep_stale[n] for n in order]}
        write_text_atomic(mpath, json.dumps(man, indent=1, sort_keys=True) + "\n")

    folder.mkdir(parents=True, exist_ok=True)
    if todo:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        from tqdm import tqdm
        workers = min(opts.workers or os.cpu_count() or 1, len(todo))
        with ProcessPoolExecutor(workers, initializer=_ignore_sigint) as pool, \
                tqdm(total=len(todo), unit="trace", desc="gen-corpus",
                     disable=True if opts.quiet else None) as bar:
            futures = [pool.submit(_generate, e, str(folder)) for e in todo]
            try:
                for fut in as_completed(futures):
                    rec = fut.result()
                    records[rec["path"]] = rec
                    save()
                    bar.update(1)
            except BaseException:  # Ctrl-C: running entries finish (atomic) and are recorded
                pool.shutdown(wait=True, cancel_futures=True)
                for f in futures:
                    if f.done() and not f.cancelled() and f.exception() is None:
                        records[f.result()["path"]] = f.result()
                save()
                raise
    save()
    return {"generated": [e["name"] for e in todo], "up_to_date": len(entries) - len(todo),
            "stale": [n for n in stale if n not in pruned], "pruned": pruned, "manifest": str(mpath)}


def run_gen_corpus(opts: CorpusOptions) -> int:
    """CLI face of `gen_corpus`."""
    r = gen_corpus(opts)
    if not opts.quiet:
        print(f"{len(r['generated'])} traces generated, {r['up_to_date']} up to date"
              + (f", {len(r['pruned'])} pruned" if r["pruned"] else "")
              + (f", {len(r['stale'])} no longer in the spec (kept; --prune deletes them)"
                 if r["stale"] else "") + f"; manifest: {r['manifest']}")
    return 0
