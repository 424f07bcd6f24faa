"""`e3fast inspect`: summarise a trace file (one streaming pass, constant memory).

`inspect_trace(path)` is the API; `run_inspect(options)` prints it as text or, with
``--json``, as one JSON object. In JSON, times are seconds and an infinite time (a device
that never leaves, an open-ended semantic window) is ``null``; an undefined rate (0 s
duration) is ``null`` too.
"""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..jsonsafe import json_safe
from .reader import check_servable, open_trace
from .schema import DEFAULT_CHUNK_ROWS, ENV_ARRAYS, MODEL_KIND_LLM


@dataclass
class InspectOptions:
    path: str = field(metadata={"args": ["path"], "help": "trace file (.h5)"})
    json: bool = field(default=False, metadata={"help": "print one JSON object instead of text"})
    validate: bool = field(default=False, metadata={
        "help": "strict validation: also fail if requests use a model no device hosts "
                "(every row is always checked)"})


def _finite(x):
    """float(x), or None when infinite (JSON has no inf)."""
    x = float(x)
    return x if math.isfinite(x) else None


def env_nbytes(env) -> int:
    """Bytes of the /env arrays of `env` (schema.ENV_ARRAYS): what a replay holds in memory
    for the environment, whatever the number of requests."""
    return int(sum(np.asarray(getattr(env, attr)).nbytes for attr, _, _ in ENV_ARRAYS.values()))


class PrefixReuse:
    """Prefix-block reuse of a stream of requests under a perfect shared prefix cache (every
    block ever computed is kept, on every device). A request reuses its longest run of
    leading blocks whose ids all appeared in earlier requests (block ids stand for whole
    prefixes, so this is prefix matching); the reused tokens are those blocks' tokens (the
    prompt's last block may be partial). Memory: the distinct block ids seen (8 bytes each).
    """

    ROWS = 16_384  #: requests per step (bounds the temporaries: ~10 arrays of their ids)

    def __init__(self, block_tokens: int):
        self.block_tokens = block_tokens
        self.seen = np.zeros(0, np.int64)  # sorted distinct ids of earlier requests
        self.n_blocks = self.prompt_tokens = self.reused_tokens = self.requests_reusing = 0

    def add(self, counts: np.ndarray, ids: np.ndarray, in_tokens: np.ndarray) -> None:
        """Requests in arrival order: `counts` blocks each, `ids` concatenated, `in_tokens`."""
        offsets = np.concatenate(([0], np.cumsum(counts)))
        for lo in range(0, len(counts), self.ROWS):
            hi = min(lo + self.ROWS, len(counts))
            self._add(counts[lo:hi], ids[offsets[lo]:offsets[hi]], in_tokens[lo:hi])

    def _add(self, counts, ids, in_tokens) -> None:
        n = len(counts)
        self.prompt_tokens += int(in_tokens.sum())
        self.n_blocks += len(ids)
        if not len(ids):
            return
        row = np.repeat(np.arange(n), counts)              # request of each block
        first = np.concatenate(([0], np.cumsum(counts)[:-1]))
        pos = np.arange(len(ids)) - first[row]              # position in its request
        # seen before: in an earlier block of rows, or first met in an earlier request of these
        uniq, at, inv = np.unique(ids, return_index=True, return_inverse=True)
        hit = np.isin(ids, self.seen, assume_unique=False) | (row[at][inv] < row)
        # leading hits: the first miss of each request (its block count if none)
        lead = np.asarray(counts, np.int64).copy()
        miss = ~hit
        np.minimum.at(lead, row[miss], pos[miss])
        reused = np.minimum(lead * self.block_tokens, in_tokens)
        self.reused_tokens += int(reused.sum())
        self.requests_reusing += int(np.count_nonzero(lead))
        self.seen = np.union1d(self.seen, uniq)

    def summary(self) -> dict:
        return {"block_tokens": self.block_tokens, "n_blocks": self.n_blocks,
                "distinct_blocks": int(len(self.seen)), "prompt_tokens": self.prompt_tokens,
                "reused_tokens": self.reused_tokens, "requests_reusing": self.requests_reusing,
                "reuse_share": self.reused_tokens / self.prompt_tokens if self.prompt_tokens else None}


def inspect_trace(path, strict: bool = False, block_rows: int = DEFAULT_CHUNK_ROWS) -> dict:
    """Summary of a trace, computed by streaming every row (each block is validated).

    Keys: path, file_bytes, schema_version, generator, generator_version, scenario, seed,
    n_requests, duration_s, first_arrival_s, last_arrival_s, arrival_rate_per_s (requests per
    second over duration_s, None if 0 s), n_devices, device_types, models, model_kinds,
    classes, fleet (per device: device, type, models, join_s, leave_s (None = never)),
    model_mix / class_mix (request counts by name), tokens (per model: mean_in, mean_out;
    None for a model without requests), n_drift_knots, n_semantic_windows,
    n_failure_windows, env_bytes (the /env arrays in memory, as `env_nbytes`),
    unservable_requests (requests of models no device hosts), params, prefix (None for a
    trace without prefix blocks, else `PrefixReuse.summary`: block_tokens, n_blocks,
    distinct_blocks, prompt_tokens, reused_tokens, requests_reusing, reuse_share).
    With ``strict=True`` unservable requests raise `E3Error`.
    """
    with open_trace(path) as tr:
        env, M, C = tr.env, tr.env.n_models, len(tr.env.classes)
        mc, cc = np.zeros(M, np.int64), np.zeros(C, np.int64)
        sum_in, sum_out = np.zeros(M), np.zeros(M)
        first = last = None
        reuse = PrefixReuse(tr.prefix_block_tokens) if tr.prefix_block_tokens else None
        for b in tr.blocks(block_rows):
            if reuse is not None:
                reuse.add(*tr.prefix_blocks(b.start, b.in_tokens), b.in_tokens)
            mc += np.bincount(b.model, minlength=M)
            cc += np.bincount(b.klass, minlength=C)
            sum_in += np.bincount(b.model, weights=b.in_tokens, minlength=M)
            sum_out += np.bincount(b.model, weights=b.out_tokens, minlength=M)
            first = float(b.arrival_s[0]) if first is None else first
            last = float(b.arrival_s[-1])
        unserved = check_servable(env, mc, tr.path, strict)
        kinds = ["llm" if k == MODEL_KIND_LLM else "diffusion" for k in env.model_kind]
        return {
            "path": str(tr.path), "file_bytes": Path(tr.path).stat().st_size,
            "schema_version": tr.schema_version, "generator": str(tr.attrs["generator"]),
            "generator_version": tr.generator_version, "scenario": tr.scenario, "seed": tr.seed,
            "n_requests": tr.n_requests, "duration_s": tr.duration_s,
            "first_arrival_s": first, "last_arrival_s": last,
            "arrival_rate_per_s": tr.n_requests / tr.duration_s if tr.duration_s > 0 else None,
            "n_devices": env.n_devices, "device_types": list(env.device_types),
            "models": list(env.models), "model_kinds": kinds, "classes": list(env.classes),
            "fleet": [{"device": d, "type": env.device_types[env.device_type[d]],
                       "models": [env.models[m] for m in np.flatnonzero(env.hosts[d])],
                       "join_s": _finite(env.join_s[d]), "leave_s": _finite(env.leave_s[d])}
                      for d in range(env.n_devices)],
            "model_mix": {m: int(n) for m, n in zip(env.models, mc)},
            "class_mix": {c: int(n) for c, n in zip(env.classes, cc)},
            "tokens": {m: ({"mean_in": sum_in[i] / mc[i], "mean_out": sum_out[i] / mc[i]} if mc[i] else None)
                       for i, m in enumerate(env.models)},
            "n_drift_knots": int(len(env.drift_t_s)), "n_semantic_windows": int(len(env.sem_t0_s)),
            "n_failure_windows": int(len(env.fail_t0_s)), "env_bytes": env_nbytes(env),
            "unservable_requests": unserved, "params": tr.params,
            "prefix": reuse.summary() if reuse is not None else None,
        }


def _text(s: dict) -> str:
    n = s["n_requests"]
    pct = (lambda c: f"{100 * c / n:.1f}%") if n else (lambda c: "-")
    rate = s["arrival_rate_per_s"]
    lines = [f"trace      {s['path']}  ({s['file_bytes'] / 1e6:.1f} MB, schema v{s['schema_version']}, "
             f"{s['generator']} {s['generator_version']})",
             f"scenario   {s['scenario']}  (seed {s['seed']})"]
    if n:
        lines.append(f"requests   {n:,} over {s['duration_s']:.3f} s ({rate:.2f} req/s); "
                     f"arrivals {s['first_arrival_s']:.3f} .. {s['last_arrival_s']:.3f} s")
    else:
        lines.append(f"requests   0 (empty trace), duration {s['duration_s']:.3f} s")
    lines.append("models")
    for name, kind in zip(s["models"], s["model_kinds"]):
        tok, c = s["tokens"][name], s["model_mix"][name]
        unit = "tokens" if kind == "llm" else "steps (out)"
        detail = f"mean in {tok['mean_in']:.1f} / out {tok['mean_out']:.1f} {unit}" if tok else ""
        lines.append(f"  {name:<22} {kind:<9} {c:>12,} {pct(c):>6}  {detail}")
    lines.append("classes    " + ", ".join(f"{c} {pct(k)}" for c, k in s["class_mix"].items()))
    lines.append(f"fleet      {s['n_devices']} devices of {len(set(d['type'] for d in s['fleet']))} types")
    for d in s["fleet"]:
        leave = "never" if d["leave_s"] is None else f"{d['leave_s']:g} s"
        join = f"join {d['join_s']:g} s,"
        lines.append(f"  d{d['device']:<4} {d['type']:<20} {join:<16} leave {leave:<10} "
                     f"hosts {', '.join(d['models'])}")
    lines.append(f"env        {s['n_drift_knots']} drift knots, {s['n_semantic_windows']} semantic windows, "
                 f"{s['n_failure_windows']} failure windows ({s['env_bytes'] / 1e6:.3g} MB)")
    pre = s["prefix"]
    if pre and pre["reuse_share"] is not None:
        lines.append(f"prefix     {pre['n_blocks']:,} blocks of {pre['block_tokens']} tokens "
                     f"({pre['distinct_blocks']:,} distinct); a perfect shared prefix cache reuses "
                     f"{100 * pre['reuse_share']:.1f}% of prompt tokens ({pre['reused_tokens']:,} of "
                     f"{pre['prompt_tokens']:,}; {pre['requests_reusing']:,} requests reuse some)")
    scalars = {k: v for k, v in sorted(s["params"].items()) if isinstance(v, (str, int, float, bool))}
    more = " (lists and tables: --json)" if len(scalars) < len(s["params"]) else ""
    lines.append("params     " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in scalars.items()) + more)
    if s["unservable_requests"]:
        lines.append(f"warning    {s['unservable_requests']:,} requests use a model no device hosts "
                     "(the simulator drops them, counted)")
    return "\n".join(lines)


def run_inspect(options: InspectOptions) -> int:
    """Print the summary of ``options.path``; 0 on success (errors raise `E3Error`)."""
    summary = inspect_trace(options.path, strict=options.validate)
    if options.json:
        print(json.dumps(json_safe(summary), sort_keys=True, allow_nan=False))
    else:
        print(_text(summary))
        if options.validate:
            print(f"valid      all {summary['n_requests']:,} rows checked")
    return 0
