"""``e3fast mc``: Monte-Carlo replications with common random numbers and paired CIs.

Replication ``r`` (0-based) generates one trace with seed ``seed0 + r`` (``gen-trace``, or
``import-trace`` of a CSV for ``--scenario real``) inside the worker, replays every policy
variant on it (same requests, same ``z``: paired comparisons) and returns one small record.
The parent writes each record atomically to ``OUT/reps/rep-00042.json`` as soon as its task
finishes, so ``--resume`` recomputes only missing replications and a crash loses only the
tasks in flight. Tasks hold several replications (chunks) so that scheduling overhead stays
small. Execution: local worker processes (``--workers``), or a dask.distributed cluster
(``--scheduler ADDRESS``) running the same task function. At the end the rep files are read
back in replication order (never completion order) and aggregated: per variant and metric
the mean and a 95% CI (``--ci``: BCa bootstrap by default, seeded), per pair of variants the
paired difference and relative reduction, and the headline numbers (E3 versus the best
static baseline, gap to the Oracle). Outputs: ``table.csv``, ``summary.json`` (keys in
docs/MONTECARLO.md), both atomic. Times are seconds throughout.
"""
import json
import math
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from . import interrupts
from .atomic import write_text_atomic
from .errors import E3Error
from .jsonsafe import json_safe
from .router.view import DEFAULT_LENGTH_INFO, LENGTH_INFO

#: variant name -> (policy, controller)
VARIANTS = {"rr": ("rr", "none"), "random": ("random", "none"), "jsq": ("jsq", "none"),
            "sect": ("sect", "none"), "oracle": ("oracle", "none"), "e3": ("e3", "rule"),
            "e3-nocontrol": ("e3", "none"), "e3-llm": ("e3", "llm"),
            "lower-bound": ("lower-bound", "none")}
#: the references E3 is compared with -> the key suffix (headline ``<m>_gap_to_<suffix>``)
REFERENCES = {"oracle": "oracle", "lower-bound": "lower_bound"}
#: how tables name the references (neither is a router a fleet can run)
LABELS = {"lower-bound": "lower-bound (bound, not a router)",
          "oracle": "oracle (full information, not a bound)"}
#: the non-learning routers; "best baseline" = the one with the lowest mean latency in a sweep
BASELINES = ("rr", "random", "jsq", "sect")
E3_VARIANTS = ("e3", "e3-nocontrol", "e3-llm")
#: the E3 variants with a controller that an ablation variant can start from:
#: ``<base>-no-<FAMILY>[-no-<FAMILY>...]`` is <base> with those tool families of
#: ``control.tools.TOOL_FAMILIES`` switched off (``resolve_variant``), e.g. e3-no-gate
ABLATION_BASES = ("e3-llm", "e3")
METRICS = ("mean_latency_s", "p50_latency_s", "p95_latency_s", "p99_latency_s",
           "mean_ttft_s", "p95_ttft_s", "mean_tpot_s", "mean_wait_s", "stutter_rate",
           "dropped", "rerouted", "alarms", "early_mean_latency_s", "convergence_s")
HEADLINE_METRICS = ("mean_latency_s", "p95_latency_s", "p99_latency_s")
#: the metrics compared between every pair of variants (paired differences and reductions)
PAIR_METRICS = HEADLINE_METRICS + ("mean_ttft_s", "stutter_rate", "early_mean_latency_s",
                                   "convergence_s")
#: the slow path's work and what it costs requests (None where a variant has no controller,
#: or the summary lacks the counter): ``<counter>_per_h`` is the replay summary's
#: <counter> per hour of simulated time; llm_tokens is prompt + completion tokens
CONTROL_METRICS = ("abandoned", "checkpoints_per_h", "tool_calls_per_h",
                   "tool_calls_rejected_per_h", "controller_fallbacks", "llm_tokens",
                   "llm_tool_calls", "llm_tool_calls_accepted")
METRICS += CONTROL_METRICS
TIMING_KEYS = ("wall_s", "compile_s", "requests_per_s", "kernel_s", "read_s", "control_s")
CURVE_BINS = 50                    # time-series bins per replication (fractions of the trace)
CONFIDENCE = 0.95
BOOT_RESAMPLES = 9999
BOOT_SEED = 0                      # every bootstrap CI resamples with this seed: reproducible
CI_METHODS = {  # --ci name -> what summary.json's ci_method says
    "bca": "BCa bootstrap of the mean over replications (scipy.stats.bootstrap, "
           f"{BOOT_RESAMPLES} resamples, seed {BOOT_SEED})",
    "percentile": "percentile bootstrap of the mean over replications (scipy.stats.bootstrap, "
                  f"{BOOT_RESAMPLES} resamples, seed {BOOT_SEED})",
    "t": "Student-t over replications",
    "log-t": "t interval on logs (modified Cox, lognormal mean) for positive values; "
             "Student-t for differences and reductions"}
DEFAULT_CI = "bca"
MAX_POOL_RESTARTS = 3
SCHEMA = "e3fast-mc/1"
CRASH_ENV = "E3FAST_MC_TEST_CRASH"  # test only: "FLAGFILE:REP" -> a worker dies once at REP


@dataclass
class McOptions:
    """Options of ``e3fast mc``."""
    out: str = field(metadata={"help": "output folder (reps/, table.csv, summary.json)"})
    scenario: Optional[str] = field(default=None, metadata={
        "help": "cold-start | semantic | churn | drift | interference | failure | mixed | real "
                "(real needs --source)"})
    reps: int = field(default=100, metadata={"help": "replications (default 100)"})
    requests: int = field(default=100_000, metadata={
        "help": "requests per replication (real: at most this many CSV rows; default 100000)"})
    policies: str = field(default="rr,sect,e3,oracle", metadata={
        "help": "comma-separated variants: " + ", ".join(VARIANTS) + ", or an ablation "
                "e3-no-FAMILY[-no-FAMILY...] (also e3-llm-no-...; families in "
                "docs/CONTROLLER.md) (default rr,sect,e3,oracle)"})
    disable_tools: Optional[str] = field(default=None, metadata={
        "help": "comma-separated tool families every E3 controller of the sweep may not use"})
    devices: Optional[int] = field(default=None, metadata={"help": "initial fleet size (default 8)"})
    utilization: Optional[float] = field(default=None, metadata={
        "help": "offered load as a fraction of fleet capacity under the priors (default 0.7)"})
    load_basis: Optional[str] = field(default=None, metadata={
        "help": "generated scenarios: priors | worst, what --utilization is a fraction of "
                "(see gen-trace --load-basis; default priors)"})
    seed0: int = field(default=0, metadata={"help": "replication r uses seed seed0 + r (default 0)"})
    spec: Optional[str] = field(default=None, metadata={
        "help": "gen-trace (or import-trace for real) TOML with scenario parameters; mc flags override it"})
    source: Optional[str] = field(default=None, metadata={
        "help": "--scenario real: the trace file, e.g. the Azure CSV (arrivals and token counts; "
                "seed varies z and overlay)"})
    source_format: Optional[str] = field(default=None, metadata={
        "help": "--scenario real: format of --source, as import-trace --format (default azure)"})
    overlay: str = field(default="cold-start", metadata={
        "help": "--scenario real: environment overlay (cold-start | semantic | churn | drift | "
                "interference | failure | mixed)"})
    workers: Optional[int] = field(default=None, metadata={
        "help": "local worker processes (default: all cores)"})
    scheduler: Optional[str] = field(default=None, metadata={
        "help": "dask.distributed scheduler address (tcp://host:port) instead of local workers"})
    chunk: Optional[int] = field(default=None, metadata={
        "help": "replications per task (default: about 4 tasks per worker, at most 20)"})
    decision_delay_s: float = field(default=2.0, metadata={
        "help": "simulated seconds between an E3 checkpoint and its actions (default 2)"})
    early_s: Optional[float] = field(default=None, metadata={
        "help": "early_mean_latency_s covers the arrivals of the first EARLY_S simulated "
                "seconds, rounded up to whole windows (default 600)"})
    length_info: str = field(default=DEFAULT_LENGTH_INFO, metadata={
        "choices": list(LENGTH_INFO),
        "help": "what routers see of an LLM request's output length: hidden (predicted from "
                "completed requests; default) or exact. The oracle always sees everything"})
    trace_dir: Optional[str] = field(default=None, metadata={
        "help": "keep the traces here (default: a temporary folder, each trace deleted after use)"})
    resume: bool = field(default=False, metadata={
        "help": "continue an existing --out: compute only the missing replications"})
    force: bool = field(default=False, metadata={"help": "replace an existing --out"})
    ci: str = field(default=DEFAULT_CI, metadata={
        "choices": list(CI_METHODS), "help": "confidence intervals: bca (default), percentile "
        "(scipy.stats.bootstrap, seeded), t, log-t (docs/MONTECARLO.md)"})
    quiet: bool = field(default=False, metadata={"help": "no progress bar and no table"})


# ---------------------------------------------------------------- the sweep's definition

def resolve_variant(name: str):
    """(policy, controller, tool families switched off) of variant `name`: one of VARIANTS,
    or ``<base>-no-<FAMILY>...`` (ABLATION_BASES, ``control.tools.TOOL_FAMILIES``); None for
    anything else. An unknown family in an ablation name is an E3Error."""
    if name in VARIANTS:
        return (*VARIANTS[name], ())
    from .control.tools import TOOL_FAMILIES
    base = next((b for b in ABLATION_BASES if name.startswith(b + "-no-")), None)
    if base is None:
        return None
    off = name[len(base):].split("-no-")[1:]
    bad = [f for f in off if f not in TOOL_FAMILIES]
    if bad or len(set(off)) != len(off):
        raise E3Error(f"variant {name!r}: " + (f"unknown tool family {bad[0]!r}" if bad
                                               else "a family is switched off twice"),
                      where="--policies", fix=f"families: {', '.join(TOOL_FAMILIES)}")
    return (*VARIANTS[base], tuple(f for f in TOOL_FAMILIES if f in off))


def tools_off(cfg: dict, name: str) -> tuple:
    """The tool families switched off for variant `name` of sweep `cfg`: its own and the
    sweep's ``--disable-tools`` (() for a variant that is not E3)."""
    from .control.tools import parse_tool_families
    policy, _, off = resolve_variant(name)
    return parse_tool_families(off + tuple(cfg.get("disable_tools", ()))) if policy == "e3" else ()


def ablation_variants(base: str = "e3") -> list[str]:
    """`base` with each tool family switched off in turn: e3-no-gate, e3-no-calibrate, ..."""
    from .control.tools import TOOL_FAMILIES
    return [f"{base}-no-{f}" for f in TOOL_FAMILIES]


def parse_variants(text: str) -> list[str]:
    """``"rr,sect,e3"`` -> ``["rr", "sect", "e3"]`` (checked, order kept, no duplicates)."""
    names = [p.strip() for p in str(text).split(",") if p.strip()]
    bad = [n for n in names if resolve_variant(n) is None]
    if bad or not names:
        raise E3Error(f"unknown policy variant(s) {', '.join(bad) or '(none given)'}",
                      where="--policies", fix=f"choose from {', '.join(VARIANTS)}, or an "
                      "ablation e3-no-FAMILY[-no-FAMILY...] (e.g. " + ", ".join(
                          ablation_variants()) + ")")
    specs = [(p, c, frozenset(f)) for p, c, f in map(resolve_variant, names)]
    if len(set(names)) != len(names) or len(set(specs)) != len(specs):
        raise E3Error("a variant is listed twice", where="--policies", fix="list each once")
    return names


def sweep_config(o: McOptions) -> dict:
    """The parameters that define the replications' results (checked on --resume)."""
    if o.reps < 1:
        raise E3Error(f"reps must be >= 1, got {o.reps}", where="--reps", fix="e.g. --reps 100")
    if o.requests < 1:
        raise E3Error(f"requests must be >= 1, got {o.requests}", where="--requests",
                      fix="e.g. --requests 100000")
    if o.seed0 < 0:
        raise E3Error(f"seed0 must be >= 0, got {o.seed0}", where="--seed0", fix="e.g. --seed0 0")
    if o.workers is not None and o.workers < 1:
        raise E3Error(f"workers must be >= 1, got {o.workers}", where="--workers", fix="e.g. --workers 2")
    if o.chunk is not None and o.chunk < 1:
        raise E3Error(f"chunk must be >= 1, got {o.chunk}", where="--chunk", fix="e.g. --chunk 5")
    if o.decision_delay_s < 0:
        raise E3Error("decision delay must be >= 0 s", where="--decision-delay-s", fix="e.g. 2.0")
    if o.resume and o.force:
        raise E3Error("--resume and --force both given", where="mc",
                      fix="--resume continues a sweep, --force replaces it: choose one")
    variants = parse_variants(o.policies)
    from .control.tools import parse_tool_families
    disable_tools = parse_tool_families(o.disable_tools or ())
    from .runner import DEFAULT_EARLY_S, check_early_s, check_length_info
    check_length_info(o.length_info)
    early_s = check_early_s(DEFAULT_EARLY_S if o.early_s is None else o.early_s)
    spec = None
    if o.spec:
        try:
            spec = Path(o.spec).read_text(encoding="utf-8")
        except OSError as exc:
            raise E3Error(f"cannot read spec: {exc.strerror}", where=o.spec, fix="check --spec") from None
    cfg = {"scenario": o.scenario, "requests": o.requests, "policies": variants,
           "devices": o.devices, "utilization": o.utilization, "seed0": o.seed0,
           "load_basis": o.load_basis, "length_info": o.length_info,
           "decision_delay_s": o.decision_delay_s, "early_s": early_s, "spec": o.spec,
           "spec_text": spec}
    if disable_tools:  # absent when none: sweeps from before the option resume unchanged
        cfg["disable_tools"] = list(disable_tools)
    if o.scenario == "real":
        if not o.source:
            raise E3Error("--scenario real needs the CSV", where="--source",
                          fix="e.g. --source ../shared/data/azure_llm_2023/AzureLLMInferenceTrace_conv.csv")
        src = Path(o.source)
        if not src.is_file():
            raise E3Error("source CSV not found", where=str(src), fix="check the --source path")
        if o.load_basis not in (None, "priors"):
            raise E3Error("--load-basis is for generated scenarios only", where="--load-basis",
                          fix="drop it for --scenario real (its time scale sets the load)")
        cfg.update(source=str(src.resolve()), source_bytes=src.stat().st_size, overlay=o.overlay)
        if o.source_format not in (None, "azure"):  # absent for azure: older sweeps still resume
            cfg["source_format"] = o.source_format
        _trace_options(cfg, 0, "check.h5", check=True)
    else:
        if o.source or o.source_format:
            flag = "--source" if o.source else "--source-format"
            raise E3Error(f"{flag} is only for --scenario real", where=flag,
                          fix=f"drop {flag} or add --scenario real")
        if o.scenario is None and not o.spec:
            raise E3Error("no scenario", where="mc",
                          fix="add --scenario cold-start|semantic|churn|drift|interference|failure|mixed|real "
                              "(or --spec)")
        from .tracefile.generator import resolve
        resolved = resolve(_trace_options(cfg, 0, "check.h5"))  # validates every option
        cfg["scenario"] = resolved["scenario"]
    return cfg


def _trace_options(cfg: dict, rep: int, out: str, check: bool = False):
    """gen-trace / import-trace options of replication `rep` written to `out`."""
    seed = cfg["seed0"] + rep
    if cfg["scenario"] == "real":
        from .tracefile.importers import ImportTraceOptions
        opts = ImportTraceOptions(file=cfg["source"], format=cfg.get("source_format", "azure"),
                                  out=out, devices=cfg["devices"],
                                  scenario=cfg["overlay"], utilization=cfg["utilization"],
                                  seed=seed, limit=cfg["requests"], force=True, spec=cfg["spec"])
        if check:
            from .tracefile import scenarios
            from .tracefile.importers import ALL_FORMATS
            if opts.format not in ALL_FORMATS:
                raise E3Error(f"unknown format {opts.format!r}", where="--source-format",
                              fix="one of " + ", ".join(ALL_FORMATS))
            if cfg["overlay"] not in scenarios.SCENARIOS:
                raise E3Error(f"unknown overlay {cfg['overlay']!r}", where="--overlay",
                              fix=f"choose one of {', '.join(scenarios.SCENARIOS)}")
            if cfg["utilization"] is not None:
                scenarios.check_utilization(cfg["utilization"])
        return opts
    from .tracefile.generator import GenTraceOptions
    return GenTraceOptions(scenario=cfg["scenario"], requests=cfg["requests"], devices=cfg["devices"],
                           utilization=cfg["utilization"], seed=seed, out=out, force=True,
                           spec=cfg["spec"], load_basis=cfg.get("load_basis"))


# ---------------------------------------------------------------- the task (runs in workers)

def _kernel_policies(cfg: dict) -> set:
    """The kernel policies (``sim.state.POLICIES``) the sweep's variants replay."""
    from .runner import BOUND
    return {resolve_variant(name)[0] for name in cfg["policies"]} - {BOUND}


def run_chunk(cfg: dict, reps: list[int], trace_dir: Optional[str] = None,
              tmp_root: Optional[str] = None) -> list[dict]:
    """Run replications `reps` of the sweep `cfg`; return one record per replication.

    Runs in a worker process (local pool or Dask). The trace of each replication is
    written to `trace_dir` (kept) or a temporary folder in `tmp_root` (default: the system's)
    that is deleted after its replication.
    """
    from .runner import ensure_compiled
    ensure_compiled(_kernel_policies(cfg))
    records = []
    with tempfile.TemporaryDirectory(prefix="e3fast-mc-", dir=tmp_root) as tmp:
        for rep in reps:
            _maybe_crash(rep)
            folder = Path(trace_dir) if trace_dir else Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{cfg['scenario']}-rep{rep:05d}.h5"
            records.append(run_replication(cfg, rep, path))
            if not trace_dir:
                path.unlink(missing_ok=True)
    return records


def _maybe_crash(rep: int) -> None:
    """Test hook: with E3FAST_MC_TEST_CRASH=FLAG:REP the worker dies (once) at REP."""
    spec = os.environ.get(CRASH_ENV)
    if spec:
        flag, _, at = spec.rpartition(":")
        if int(at) == rep and not os.path.exists(flag):
            Path(flag).write_text("crashed\n")
            os._exit(13)


def run_replication(cfg: dict, rep: int, path: Path, llm: Optional[dict] = None,
                    progress: bool = False, control_dir: Optional[Path] = None) -> dict:
    """Generate (or import) the trace of replication `rep` at `path` and replay every variant.
    `llm`: the LLM controller's endpoint (``base_url``, ``model``, ``timeout_s``; default: the
    environment, see ``control.llm``); `progress`: a progress bar for each LLM replay;
    `control_dir`: write there each LLM replay's control log (``rep-00042-e3-llm.jsonl``, a
    transcript for ``--controller replay``)."""
    from .runner import control_jsonl, replay
    t0 = time.perf_counter()
    opts = _trace_options(cfg, rep, str(path))
    if cfg["scenario"] == "real":
        from .tracefile.importers import import_trace
        info = import_trace(opts)
    else:
        from .tracefile.generator import generate_trace
        info = generate_trace(opts, progress=False)
    gen_s = time.perf_counter() - t0
    rec = {"rep": rep, "seed": cfg["seed0"] + rep, "policies": {}, "curves": {},
           "timing": {"trace_s": gen_s}}
    for name in cfg["policies"]:
        policy, controller, _ = resolve_variant(name)
        ctl = controller
        if controller == "llm" and llm:
            from .control import make_controller
            ctl = make_controller("llm", base_url=llm["base_url"], model=llm["model"],
                                  timeout_s=llm["timeout_s"])
        res = replay(path, policy, seed=cfg["seed0"] + rep, controller=ctl,
                     decision_delay_s=cfg["decision_delay_s"], length_info=cfg["length_info"],
                     early_s=cfg["early_s"], disable_tools=tools_off(cfg, name),
                     progress=progress and controller == "llm")
        s = dict(res.summary)
        rec["timing"][name] = {k: s.pop(k) for k in TIMING_KEYS if k in s}
        s.pop("trace", None)  # a temporary path: not part of the result
        s["controller"] = s.get("controller", controller if policy == "e3" else None)
        s.update(control_metrics(s, res.control_log))
        if control_dir is not None and controller == "llm":
            write_text_atomic(Path(control_dir) / f"rep-{rep:05d}-{name}.jsonl",
                              control_jsonl(res.control_log))
        rec["policies"][name] = s
        rec["curves"][name] = _curve(res.windows, res.window_s, s["duration_s"])
        if "trace" not in rec:
            dur = max(s["duration_s"], 1e-9)
            rec["trace"] = {"scenario": s["scenario"], "requests": s["requests"],
                            "duration_s": s["duration_s"], "n_devices": s["n_devices"],
                            "events": [{**e, "t_frac": _sig(e["t_s"] / dur)} for e in res.events]}
    rec["trace"]["info"] = {k: v for k, v in info.items() if k != "path"}
    return json_safe(rec)


def control_metrics(s: dict, log: list) -> dict:
    """CONTROL_METRICS of one replay from its summary `s` and control log `log`. The LLM's
    tool calls count only at checkpoints the LLM decided (not where the rule fell back)."""
    per_h = 3600.0 / max(s["duration_s"], 1e-9)
    out = {k: s.get(k) for k in ("abandoned", "controller_fallbacks")}
    for k in ("checkpoints", "tool_calls", "tool_calls_rejected"):
        out[f"{k}_per_h"] = s[k] * per_h if s.get(k) is not None else None
    llm = s.get("controller") == "llm"
    tokens = s.get("llm_tokens") or {}
    out["llm_tokens"] = sum(tokens.values()) if llm else None
    calls = [c for r in log if r.get("controller") == "llm" for c in r["calls"]]
    out["llm_tool_calls"] = len(calls) if llm else None
    out["llm_tool_calls_accepted"] = sum(bool(c.get("accepted")) for c in calls) if llm else None
    if llm:  # why the rule controller had to decide (the reason is scrubbed of the key)
        out["llm_first_fallback"] = next((r["fallback"] for r in log if r.get("fallback")), None)
    return out


def _curve(windows: np.ndarray, window_s: float, duration_s: float) -> dict:
    """Per-window sums rebinned to CURVE_BINS equal fractions of the trace: mean latency (s)
    and stutter rate per bin (by arrival time; NaN where nothing completed)."""
    from .sim.metrics import WINDOW_FIELDS
    col = {n: j for j, n in enumerate(WINDOW_FIELDS)}
    frac = np.arange(windows.shape[0]) * window_s / max(duration_s, 1e-9)
    b = np.minimum((frac * CURVE_BINS).astype(int), CURVE_BINS - 1)
    sums = np.zeros((CURVE_BINS, windows.shape[1]))
    np.add.at(sums, b, windows)
    with np.errstate(invalid="ignore", divide="ignore"):
        lat = sums[:, col["latency_sum_s"]] / sums[:, col["completed"]]
        stut = sums[:, col["stutter"]] / sums[:, col["llm_completed"]]
    return {"latency_mean_s": [_sig(x) for x in lat], "stutter_rate": [_sig(x) for x in stut]}


def _sig(x: float) -> float | None:
    """6 significant digits (small files; NaN -> None)."""
    x = float(x)
    return float(f"{x:.6g}") if math.isfinite(x) else None


# ---------------------------------------------------------------- execution

def rep_path(out: Path, rep: int) -> Path:
    return Path(out) / "reps" / f"rep-{rep:05d}.json"


def _chunks(todo: list[int], size: int) -> list[list[int]]:
    return [todo[i:i + size] for i in range(0, len(todo), size)]


def _write_rep(out: Path, rec: dict) -> None:
    write_text_atomic(rep_path(out, rec["rep"]), json.dumps(rec, sort_keys=True) + "\n")


def _worker_init():
    """Workers leave Ctrl-C to the parent and die quietly when it terminates them (a forked
    worker would otherwise inherit the CLI's handler); the parent then removes their
    temporary folders (see `_run_local`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run_local(cfg, chunks, workers, trace_dir, on_records):
    """Run `chunks` in local worker processes; a dying worker breaks the pool: the chunks
    not finished are retried in a new pool (at most MAX_POOL_RESTARTS times)."""
    import multiprocessing as mp
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with interrupts.deferred():  # the workers' temporary folders: removed after they end
        tmp_root = tempfile.TemporaryDirectory(prefix="e3fast-mc-")
    with tmp_root:
        _run_pools(ctx, cfg, chunks, workers, trace_dir, tmp_root.name, on_records)


def _run_pools(ctx, cfg, chunks, workers, trace_dir, tmp_root, on_records):
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool
    pending, restarts = list(chunks), 0
    while pending:
        pool = ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=ctx,
                                   initializer=_worker_init)
        broken = False
        try:
            with interrupts.deferred():  # forks the workers: none left unregistered
                futures = {pool.submit(run_chunk, cfg, c, trace_dir, tmp_root): c
                           for c in pending}
            left = set(futures)
            while left:  # a timeout: a deferred interrupt cannot wake a blocked wait
                interrupts.check()
                done, left = wait(left, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in done:
                    try:
                        recs = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        continue
                    on_records(recs)
                    pending.remove(futures[fut])
        except BaseException:
            procs = list(getattr(pool, "_processes", {}).values())
            for p in procs:
                p.terminate()
            for p in procs:  # before their temporary folders are removed
                p.join()
            # wait: the manager thread sees the dead workers and ends; left running, it could
            # close its wake-up pipe under Python's exit hook (an OSError printed at exit)
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        if broken and pending:
            restarts += 1
            if restarts > MAX_POOL_RESTARTS:
                raise E3Error(f"worker processes died {restarts} times; replications "
                              f"{pending[0][0]}..{pending[-1][-1]} unfinished", where="mc",
                              fix="check memory (dmesg) and rerun with --resume")


def _run_dask(cfg, chunks, address, trace_dir, on_records):
    """Run `chunks` on a dask.distributed cluster; Dask retries tasks of dead workers."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise E3Error("dask.distributed is not installed", where="--scheduler",
                      fix="pip install 'dask[distributed]'") from None
    try:
        client = Client(address, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise E3Error(f"cannot connect to the Dask scheduler: {exc}", where=address,
                      fix="check the address (tcp://host:port) and that the scheduler runs") from None
    try:
        futures = [client.submit(run_chunk, cfg, c, trace_dir, pure=False, retries=2) for c in chunks]
        for fut in as_completed(futures):
            interrupts.check()  # signals are held while the client waits in threading code
            on_records(fut.result())
            fut.release()
    finally:
        client.close()


def prepare_folder(o, cfg: dict) -> Path:
    """The sweep folder `o.out`, ready for replications of `cfg`: created, or replaced
    (`o.force`), or checked against its sweep.json (`o.resume`); sweep.json written."""
    out = Path(o.out)
    sweep_file = out / "sweep.json"
    if out.exists() and not (o.resume or o.force):
        raise E3Error("output folder already exists", where=str(out),
                      fix="add --resume to finish it, --force to replace it, or choose another --out")
    if out.exists() and o.resume and sweep_file.exists():
        old = json.loads(sweep_file.read_text(encoding="utf-8"))
        diff = sorted(k for k in set(old) | set(cfg) if old.get(k) != cfg.get(k))
        if diff:
            raise E3Error(f"--resume with different parameters ({', '.join(diff)})", where=str(out),
                          fix="use the original parameters, or --force to start over")
    elif out.exists() and o.resume and any(out.iterdir()):
        raise E3Error("not an mc folder (no sweep.json)", where=str(out), fix="check --out")
    if out.exists() and o.force:
        if any(out.iterdir()) and not (sweep_file.exists() or (out / "reps").exists()):
            raise E3Error("--force would delete a folder that is not an mc output", where=str(out),
                          fix="choose another --out")
        shutil.rmtree(out)
    (out / "reps").mkdir(parents=True, exist_ok=True)
    write_text_atomic(sweep_file, json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return out


def run_sweep(o: McOptions) -> dict:
    """Run (or resume) the sweep of `o`, aggregate, write table.csv and summary.json;
    return the summary dict."""
    cfg = sweep_config(o)
    check_ci(o.ci)
    out = prepare_folder(o, cfg)
    todo = [r for r in range(o.reps) if not rep_path(out, r).exists()]
    workers = o.workers or os.cpu_count() or 1
    size = o.chunk or max(1, min(20, math.ceil(len(todo) / (4 * workers))))
    chunks = _chunks(todo, size)
    bar = _bar(o.reps, o.reps - len(todo), o.quiet)
    t0 = time.perf_counter()

    def on_records(recs):
        for rec in recs:
            _write_rep(out, rec)
        bar.update(len(recs))

    old_term = signal.getsignal(signal.SIGTERM)
    if old_term in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _raise_interrupt)  # API use: SIGTERM as Ctrl-C
    try:
        if chunks and o.scheduler:
            _run_dask(cfg, chunks, o.scheduler, o.trace_dir, on_records)
        elif chunks:
            from .runner import ensure_compiled
            ensure_compiled(_kernel_policies(cfg))  # forked workers inherit the kernels
            _run_local(cfg, chunks, workers, o.trace_dir, on_records)
    finally:
        bar.close()
        if old_term in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    wall = time.perf_counter() - t0
    summary = aggregate(out, o.reps, ci=o.ci)
    summary["timing"].update(wall_s=wall, reps_computed=len(todo), workers=workers,
                             executor=f"dask {o.scheduler}" if o.scheduler else "local processes",
                             chunk=size, reps_per_s=len(todo) / wall if wall > 0 else 0.0)
    write_outputs(out, summary)
    return summary


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _bar(total, initial, quiet):
    if quiet:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="rep", desc="mc", disable=None, mininterval=0.5)


# ---------------------------------------------------------------- statistics

def check_ci(method: str) -> str:
    """`method` if it is one of CI_METHODS, else the --ci error."""
    if method not in CI_METHODS:
        raise E3Error(f"unknown CI method {method!r}", where="--ci",
                      fix=f"choose one of {', '.join(CI_METHODS)} (default {DEFAULT_CI})")
    return method


def ci_rows(x, method: str = DEFAULT_CI, confidence: float = CONFIDENCE,
            positive: bool = True, n_resamples: int = BOOT_RESAMPLES):
    """(low, high) arrays: the CI of the mean of each row of `x` (2-D, finite values, at
    least 2 per row), vectorised over rows. `positive` says the quantity is > 0 by nature
    (a latency, not a difference): only then does ``log-t`` work on logs.

    bca/percentile: ``scipy.stats.bootstrap`` seeded with BOOT_SEED (the same numbers on
    every call), so the interval lies within the range of the row's values: never negative
    for positive values, never above 100% for a reduction. A row whose values are all equal
    gets (value, value); a row where BCa is undefined falls back to the percentile interval."""
    from scipy import stats
    x = np.atleast_2d(np.asarray(x, float))
    n = x.shape[1]
    tq = stats.t.ppf(0.5 + confidence / 2, n - 1)
    if method in ("t", "log-t"):
        m = x.mean(axis=1)
        half = tq * x.std(axis=1, ddof=1) / math.sqrt(n)
        lo, hi = m - half, m + half
        logs = (x > 0).all(axis=1) & positive & (method == "log-t")  # rows on logs
        if logs.any():
            y = np.log(x[logs])
            m, s2 = y.mean(axis=1), y.var(axis=1, ddof=1)
            half = tq * np.sqrt(s2 / n + s2 * s2 / (2 * (n - 1)))
            lo[logs], hi[logs] = np.exp(m + s2 / 2 - half), np.exp(m + s2 / 2 + half)
        return lo, hi
    lo, hi = x[:, 0].copy(), x[:, 0].copy()  # rows of equal values: (value, value)
    todo = np.ptp(x, axis=1) > 0
    for how in ("BCa", "percentile") if method == "bca" else ("percentile",):
        if todo.any():
            lo[todo], hi[todo] = _bootstrap(x[todo], how, confidence, n_resamples)
            todo &= ~(np.isfinite(lo) & np.isfinite(hi))  # BCa undefined: percentile
    return lo, hi


def _bootstrap(x, how, confidence, n_resamples):
    """scipy.stats.bootstrap of the mean of each row of `x`, about 2e7 numbers at a time."""
    import warnings
    from scipy import stats
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples give NaN: handled by the caller
        r = stats.bootstrap((x,), np.mean, axis=-1, confidence_level=confidence,
                            n_resamples=n_resamples, method=how, batch=max(1, int(2e7 // x.size)),
                            rng=np.random.default_rng(BOOT_SEED))
    return r.confidence_interval.low, r.confidence_interval.high


def mean_ci(x, method: str = DEFAULT_CI, confidence: float = CONFIDENCE,
            positive: bool = True) -> dict:
    """Mean of `x` (NaNs dropped) with a confidence interval by `method` (CI_METHODS);
    no interval with fewer than 2 values."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return {"mean": None, "std": None, "n": 0, "ci_low": None, "ci_high": None}
    mean = float(x.mean())
    if n == 1:
        return {"mean": mean, "std": None, "n": 1, "ci_low": None, "ci_high": None}
    lo, hi = (v[0] for v in ci_rows(x, method, confidence, positive))
    return {"mean": mean, "std": float(x.std(ddof=1)), "n": n, "ci_low": _finite(lo),
            "ci_high": _finite(hi)}


def mean_ci_rows(x, method: str = DEFAULT_CI, positive: bool = True) -> list[dict]:
    """`mean_ci` of every row of the 2-D `x`: the rows without NaN in one vectorised call
    (every row gets the same resamples), the others one by one."""
    x = np.asarray(x, float)
    out = [None] * x.shape[0]
    full = np.isfinite(x).all(axis=1) if x.shape[1] >= 2 else np.zeros(x.shape[0], bool)
    if full.any():
        lo, hi = ci_rows(x[full], method, positive=positive)
        for k, i in enumerate(np.flatnonzero(full)):
            out[i] = {"mean": float(x[i].mean()), "std": float(x[i].std(ddof=1)), "n": x.shape[1],
                      "ci_low": _finite(lo[k]), "ci_high": _finite(hi[k])}
    for i in np.flatnonzero(~full):
        out[i] = mean_ci(x[i], method, positive=positive)
    return out


def _finite(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def paired(a, b, method: str = DEFAULT_CI) -> dict:
    """Paired comparison of per-replication values `a` and `b`: ``diff`` = a - b and
    ``reduction`` = 1 - a/b (reps with b <= 0 or non-finite values left out), each a mean
    with a CI by `method` on the per-replication values (log-t: Student-t, as these can be
    negative); ``ratio_of_means`` = 1 - mean(a)/mean(b)."""
    return paired_rows(np.asarray(a, float)[None], np.asarray(b, float)[None], method)[0]


def paired_rows(a, b, method: str = DEFAULT_CI) -> list[dict]:
    """`paired` of every row of the 2-D `a` and `b` (vectorised: `mean_ci_rows`)."""
    ok = np.isfinite(a) & np.isfinite(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        red = np.where(ok & (b > 0), 1.0 - a / b, np.nan)
    diff = mean_ci_rows(np.where(ok, a - b, np.nan), method, positive=False)
    reduction = mean_ci_rows(red, method, positive=False)
    out = []
    for i in range(a.shape[0]):
        ma, mb = (float(np.mean(v[i][ok[i]])) if ok[i].any() else float("nan") for v in (a, b))
        out.append({"diff": diff[i], "reduction": reduction[i],
                    "reduction_of_means": 1.0 - ma / mb if mb > 0 else None})
    return out


def iter_reps(out, reps: Optional[int] = None):
    """Rep records of folder `out`, one at a time, in replication order (the first `reps`,
    or all)."""
    for f in sorted((Path(out) / "reps").glob("rep-*.json")):
        if reps is None or int(f.stem.split("-")[1]) < reps:
            try:
                yield json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise E3Error(f"unreadable replication file: {exc}", where=str(f),
                              fix="delete it and rerun with --resume") from None


def aggregate(out, reps: Optional[int] = None, ci: str = DEFAULT_CI) -> dict:
    """Summary dict of the rep files in `out` (see docs/MONTECARLO.md for its keys), with
    confidence intervals by the method `ci` (CI_METHODS).
    Streams the files: only a few numbers per replication are kept in memory."""
    out = Path(out)
    cfg = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    variants = cfg["policies"]
    vals, lat, stut, rep_ids, walls, trace_s, first = [], [], [], [], [], [], None
    for r in iter_reps(out, reps):  # [rep, variant, metric] and [rep, variant, bin]
        first = first or r["trace"]
        rep_ids.append(r["rep"])
        vals.append([[_num(r["policies"][v].get(m)) for m in METRICS] for v in variants])
        lat.append([[_num(x) for x in r["curves"][v]["latency_mean_s"]] for v in variants])
        stut.append([[_num(x) for x in r["curves"][v]["stutter_rate"]] for v in variants])
        walls.append([_num(r["timing"][v].get("wall_s")) for v in variants])
        trace_s.append(_num(r["timing"]["trace_s"]))
    if not rep_ids:
        raise E3Error("no finished replications", where=str(out), fix="run the sweep (--resume)")
    check_ci(ci)
    vals, lat, stut, walls = (np.array(x) for x in (vals, lat, stut, walls))
    nv, nm = len(variants), len(METRICS)
    cis = mean_ci_rows(vals.transpose(1, 2, 0).reshape(nv * nm, -1), ci)
    pol = {v: {m: cis[i * nm + j] for j, m in enumerate(METRICS)} for i, v in enumerate(variants)}
    for i, v in enumerate(variants):
        policy, controller, _ = resolve_variant(v)
        pol[v]["controller"] = controller if policy == "e3" else None
        pol[v]["tools_disabled"] = list(tools_off(cfg, v)) if policy == "e3" else None
    pair_metrics = [(j, m) for j, m in enumerate(METRICS) if m in PAIR_METRICS]
    which = [(i, k, j) for i, a in enumerate(variants) for k, b in enumerate(variants) if a != b
             for j, _ in pair_metrics]
    shape = (len(which), len(rep_ids))
    got = iter(paired_rows(np.array([vals[:, i, j] for i, _, j in which]).reshape(shape),
                           np.array([vals[:, k, j] for _, k, j in which]).reshape(shape), ci))
    pairs = {f"{a} vs {b}": {m: next(got) for _, m in pair_metrics}
             for a in variants for b in variants if a != b}
    idx = {v: i for i, v in enumerate(variants)}
    j_mean = METRICS.index("mean_latency_s")
    statics = [v for v in BASELINES if v in idx]
    best = min(statics, key=lambda v: _nanmean(vals[:, idx[v], j_mean])) if statics else None
    headline = {"best_baseline": best, "note": "best baseline = the non-learning router (rr, random, jsq, sect) with "
                "the lower mean of mean_latency_s over replications; reduction = 1 - E3/best per "
                "replication (mean, CI), of_means = 1 - mean(E3)/mean(best); gap = E3/oracle - 1 "
                "per replication, of_means = mean(E3)/mean(oracle) - 1; the same against the "
                "lower bound (gap_to_lower_bound)"}
    for v in (v for v in E3_VARIANTS if v in idx):
        h = {}
        for m in HEADLINE_METRICS:
            if best:
                p = pairs[f"{v} vs {best}"][m]
                h[f"{m}_reduction_vs_best_baseline"] = {**p["reduction"],
                                                      "of_means": p["reduction_of_means"]}
            for ref in (r for r in REFERENCES if r in idx):
                p = pairs[f"{v} vs {ref}"][m]
                h[f"{m}_gap_to_{REFERENCES[ref]}"] = {
                    **_negate(p["reduction"]), "of_means": None if p["reduction_of_means"] is None
                    else -p["reduction_of_means"]}
        headline[v] = h
    curves = {"bins": CURVE_BINS, "t_frac": [(b + 0.5) / CURVE_BINS for b in range(CURVE_BINS)],
              "events": first["events"], "policies": {}}
    for v, i in idx.items():
        lm = mean_ci_rows(lat[:, i, :].T, ci)
        q25, q75 = (_nanquantile(lat[:, i, :], q) for q in (0.25, 0.75))
        curves["policies"][v] = {
            "latency_mean_s": [c["mean"] for c in lm], "latency_ci_low": [c["ci_low"] for c in lm],
            "latency_ci_high": [c["ci_high"] for c in lm], "latency_q25_s": q25, "latency_q75_s": q75,
            "stutter_rate": [_nanmean(stut[:, i, b]) for b in range(CURVE_BINS)]}
    timing = {"per_variant_mean_wall_s": {v: _nanmean(walls[:, i]) for v, i in idx.items()},
              "mean_trace_s": _nanmean(trace_s)}
    return json_safe({"schema": SCHEMA, "config": {k: v for k, v in cfg.items() if k != "spec_text"},
                   "n_reps": len(rep_ids), "reps": rep_ids if len(rep_ids) < 20 else
                   [rep_ids[0], rep_ids[-1]], "confidence": CONFIDENCE,
                   "ci": ci, "ci_method": CI_METHODS[ci],
                   "scenario": cfg["scenario"], "requests_per_rep": first["requests"],
                   "n_devices": first["n_devices"], "metrics": list(METRICS),
                   "policies": pol, "pairs": pairs, "headline": headline, "curves": curves,
                   "timing": timing})


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def _nanmean(x) -> float:
    x = np.array([_num(v) for v in x], float)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def _nanquantile(x: np.ndarray, q: float) -> list:
    """Per column q-quantile over rows, NaNs ignored (None where a column is all NaN)."""
    out = []
    for col in x.T:
        col = col[np.isfinite(col)]
        out.append(float(np.quantile(col, q)) if len(col) else None)
    return out


def _negate(s: dict) -> dict:
    """CI of -x from the CI of x (gap = a/b - 1 = -(1 - a/b))."""
    out = dict(s)
    for k in ("mean", "ci_low", "ci_high"):
        if s[k] is not None:
            out[k] = -s[k]
    out["ci_low"], out["ci_high"] = out["ci_high"], out["ci_low"]
    return out


# ---------------------------------------------------------------- outputs

def table_rows(summary: dict) -> list[list]:
    """Long-format rows of table.csv: kind, a, b, metric, mean, ci_low, ci_high, std, n."""
    rows = [["kind", "a", "b", "metric", "mean", "ci_low", "ci_high", "std", "n"]]
    for v, ms in summary["policies"].items():
        for m in summary["metrics"]:
            s = ms[m]
            rows.append(["policy", v, "", m, s["mean"], s["ci_low"], s["ci_high"], s["std"], s["n"]])
    for pair, ms in summary["pairs"].items():
        a, b = pair.split(" vs ")
        for m, p in ms.items():
            for kind in ("diff", "reduction"):
                s = p[kind]
                rows.append([kind, a, b, m, s["mean"], s["ci_low"], s["ci_high"], s["std"], s["n"]])
    h = summary["headline"]
    for v in E3_VARIANTS:
        for key, s in h.get(v, {}).items():
            m, _, what = key.partition("_reduction_vs_") if "_reduction_vs_" in key else key.partition("_gap_to_")
            kind, b = ("reduction_vs_best_baseline", h["best_baseline"]) if "best_baseline" in key \
                else ("gap_to_" + what, {k: r for r, k in REFERENCES.items()}[what])
            rows.append([kind, v, b, m, s["mean"], s["ci_low"], s["ci_high"], s["std"], s["n"]])
    return rows


def write_outputs(out, summary: dict) -> None:
    """table.csv and summary.json into `out`, atomically."""
    import csv
    import io
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for row in table_rows(summary):
        w.writerow(["" if x is None else (f"{x:.10g}" if isinstance(x, float) else x) for x in row])
    write_text_atomic(Path(out) / "table.csv", buf.getvalue())
    write_text_atomic(Path(out) / "summary.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")


def _ci(s: dict, fmt: str = "{:.3g}", pct: bool = False) -> str:
    if s.get("mean") is None:
        return "-"
    k = 100.0 if pct else 1.0
    text = fmt.format(s["mean"] * k)
    if s.get("ci_low") is not None:
        text += " [" + fmt.format(s["ci_low"] * k) + ", " + fmt.format(s["ci_high"] * k) + "]"
    return text + ("%" if pct else "")


def format_summary(summary: dict) -> str:
    """A fixed-width table of the sweep: one row per variant, then the headline lines."""
    head = ["variant", "mean latency s [95% CI]", "p95 s", "p99 s", "ttft s", "stutter",
            "early s", "conv s"]
    rows = [head]
    for v in summary["config"]["policies"]:
        ms = summary["policies"][v]
        rows.append([LABELS.get(v, v), _ci(ms["mean_latency_s"]), _ci({"mean": ms["p95_latency_s"]["mean"]}),
                     _ci({"mean": ms["p99_latency_s"]["mean"]}),
                     _ci({"mean": ms["mean_ttft_s"]["mean"]}),
                     _ci({"mean": ms["stutter_rate"]["mean"]}, "{:.2f}", pct=True),
                     _ci({"mean": ms.get("early_mean_latency_s", {}).get("mean")}),
                     _ci({"mean": ms.get("convergence_s", {}).get("mean")}, "{:.0f}")])
    widths = [max(len(r[j]) for r in rows) for j in range(len(head))]
    lines = ["  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    h = summary["headline"]
    for v in E3_VARIANTS:
        if v in h:
            red = h[v].get("mean_latency_s_reduction_vs_best_baseline")
            gap = h[v].get("mean_latency_s_gap_to_oracle")
            gap_lb = h[v].get("mean_latency_s_gap_to_lower_bound")
            parts = []
            if red:
                parts.append(f"{_ci(red, '{:.1f}', pct=True)} lower mean latency than "
                             f"{h['best_baseline']}" + (f" (ratio of means: {100 * red['of_means']:.1f}%)"
                                                      if red.get("of_means") is not None else ""))
            if gap:
                parts.append(f"{_ci(gap, '{:.1f}', pct=True)} above the oracle")
            if gap_lb:
                parts.append(f"{_ci(gap_lb, '{:.1f}', pct=True)} above the lower bound")
            if parts:
                lines.append(f"{v}: " + "; ".join(parts))
    lines.append(f"{summary['n_reps']} replications x {summary['requests_per_rep']:,} requests, "
                 f"{summary['scenario']}, 95% CIs: {summary.get('ci_method', 'Student-t')} "
                 "(paired over common random numbers)")
    lines.append(f"output lengths {summary['config'].get('length_info', 'exact')} for every "
                 "router; the oracle has full information")
    return "\n".join(lines)


def run_mc(o: McOptions) -> int:
    """CLI face of `run_sweep`: run, then print the table and where the outputs are."""
    summary = run_sweep(o)
    if not o.quiet:
        t = summary["timing"]
        print(format_summary(summary))
        print(f"computed {t['reps_computed']} replications in {t['wall_s']:.1f} s on "
              f"{t['executor']} ({t['workers']} workers, {t['chunk']} reps per task); "
              f"wrote {o.out}/ (reps/, table.csv, summary.json)")
    return 0
