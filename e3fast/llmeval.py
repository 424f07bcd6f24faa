"""``e3fast llm-eval``: the LLM controller against the rule controller, paired on the same traces.

Replication ``r`` generates the trace that ``e3fast mc`` replication ``r`` would (same options,
seed ``seed0 + r``) and replays E3 on it twice: with the rule controller (variant ``e3``) and
with the LLM controller (``e3-llm``). Replications run one after the other in this process,
so the endpoint sees one conversation at a time and each LLM replay shows its progress. The
result is an mc sweep (``montecarlo.aggregate``): per controller mean, p99 and stutter, the
paired difference llm - rule with its 95% interval, and the LLM's own counters: tool-call
validity (accepted / made, at the checkpoints the LLM decided), fallbacks to the rule
controller, tokens (prompt + completion).

An endpoint that is down, slow or answers garbage never stops the run: the rule controller
decides those checkpoints (``control.llm``: bounded time per checkpoint, the LLM is dropped
for the rest of a replay after 3 failures in a row) and the output says how many and why.
The API key is read from the environment only (E3FAST_LLM_API_KEY, else OPENAI_API_KEY) and
is never written or printed; the base URL is not written either (only the model name).
"""
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from . import interrupts
from .errors import E3Error
from .montecarlo import (CI_METHODS, DEFAULT_CI, McOptions, _ci, _negate, _write_rep,
                         aggregate, check_ci, format_summary, iter_reps, prepare_folder,
                         rep_path, run_replication, sweep_config, write_outputs)

RULE, LLM = "e3", "e3-llm"  # the two variants of the sweep
COMPARED = ("mean_latency_s", "p99_latency_s", "stutter_rate")
#: replay's option names (in control.llm's messages) -> this command's
OPTION_NAMES = {"--llm-base-url": "--base-url", "--llm-model": "--model",
                "--llm-timeout-s": "--timeout-s"}


@dataclass
class LlmEvalOptions:
    """Options of ``e3fast llm-eval``."""
    base_url: Optional[str] = field(default=None, metadata={
        "help": "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (or E3FAST_LLM_BASE_URL)"})
    model: Optional[str] = field(default=None, metadata={
        "help": "model name as the server lists it (or E3FAST_LLM_MODEL)"})
    scenario: str = field(default="mixed", metadata={
        "help": "cold-start | semantic | churn | drift | interference | failure | mixed (default mixed)"})
    reps: int = field(default=10, metadata={"help": "replications (default 10)"})
    requests: int = field(default=20_000, metadata={
        "help": "requests per replication (default 20000)"})
    devices: Optional[int] = field(default=None, metadata={"help": "initial fleet size (default 8)"})
    utilization: Optional[float] = field(default=None, metadata={
        "help": "offered load as a fraction of fleet capacity (default 0.7)"})
    load_basis: str = field(default="worst", metadata={
        "help": "priors | worst: what --utilization is a fraction of (gen-trace --load-basis; "
                "default worst, as make experiments: the fleet stays stable in every regime)"})
    seed0: int = field(default=0, metadata={"help": "replication r uses seed seed0 + r (default 0)"})
    timeout_s: float = field(default=20.0, metadata={
        "help": "seconds to wait for one LLM reply before the rule controller decides (default 20)"})
    disable_tools: Optional[str] = field(default=None, metadata={
        "help": "comma-separated tool families neither controller may use"})
    decision_delay_s: float = field(default=2.0, metadata={
        "help": "simulated seconds between a checkpoint and its actions (default 2)"})
    ci: str = field(default=DEFAULT_CI, metadata={
        "choices": list(CI_METHODS), "help": "confidence intervals, as in mc (default bca)"})
    out: Optional[str] = field(default=None, metadata={
        "help": "keep the sweep here (reps/, table.csv, summary.json; --resume continues it); "
                "default: a temporary folder"})
    resume: bool = field(default=False, metadata={"help": "continue an existing --out"})
    force: bool = field(default=False, metadata={"help": "replace an existing --out"})
    quiet: bool = field(default=False, metadata={"help": "no progress and no table"})


def endpoint(o: LlmEvalOptions) -> dict:
    """The LLM endpoint of `o` (options, else environment), checked by building a controller
    (the same messages as ``replay --controller llm``)."""
    from .control.llm import LLMController
    try:
        ctl = LLMController(base_url=o.base_url, model=o.model, timeout_s=o.timeout_s)
    except E3Error as exc:  # the same check, named by this command's options
        def ours(text):
            for a, b in OPTION_NAMES.items():
                text = text.replace(a, b)
            return text
        raise E3Error(exc.what, where=exc.where and ours(exc.where),
                      fix=exc.fix and ours(exc.fix)) from None
    return {"base_url": ctl.base_url, "model": ctl.model, "timeout_s": ctl.timeout_s}


def shown_url(url: str) -> str:
    """`url` without user info, query and fragment (what may be printed)."""
    u = urlsplit(url)
    return f"{u.scheme}://{u.hostname or ''}{f':{u.port}' if u.port else ''}{u.path}"


def llm_counters(out, reps: int) -> dict:
    """Totals over the replications in `out`: checkpoints, fallbacks, the LLM's tool calls
    and accepted ones, tokens, and the first fallback reason."""
    tot = {"checkpoints": 0, "fallbacks": 0, "tool_calls": 0, "accepted": 0, "tokens": 0,
           "reps_with_fallbacks": 0, "first_fallback": None}
    for r in iter_reps(out, reps):
        s = r["policies"][LLM]
        tot["checkpoints"] += s.get("checkpoints") or 0
        tot["fallbacks"] += s.get("controller_fallbacks") or 0
        tot["reps_with_fallbacks"] += bool(s.get("controller_fallbacks"))
        tot["tool_calls"] += s.get("llm_tool_calls") or 0
        tot["accepted"] += s.get("llm_tool_calls_accepted") or 0
        tot["tokens"] += s.get("llm_tokens") or 0
        tot["first_fallback"] = tot["first_fallback"] or s.get("llm_first_fallback")
    tot["validity_rate"] = tot["accepted"] / tot["tool_calls"] if tot["tool_calls"] else None
    return tot


def format_eval(summary: dict) -> str:
    """The mc table of the two controllers, the paired differences and the LLM's counters."""
    lines = format_summary(summary).split("\n")[:3]  # the header and the two controllers
    pol = summary["policies"]
    lines.append("per hour of simulated time: " + "; ".join(
        f"{v} {_ci(pol[v]['checkpoints_per_h'], '{:.0f}')} checkpoints, "
        f"{_ci(pol[v]['tool_calls_per_h'], '{:.0f}')} tool calls" for v in (RULE, LLM)))
    pairs = summary["pairs"][f"{LLM} vs {RULE}"]
    for m in COMPARED:
        d, red = pairs[m]["diff"], pairs[m]["reduction"]
        lines.append(f"llm - rule, {m}: {_ci(d, '{:+.4g}')}"
                     + (f"  (relative: {_ci(_negate(red), '{:+.2f}', pct=True)})"
                        if red.get("mean") is not None else ""))
    c = summary["llm_eval"]
    rate = "-" if c["validity_rate"] is None else f"{100 * c['validity_rate']:.1f}%"
    lines.append(f"LLM tool calls: {c['tool_calls']} at the checkpoints it decided, "
                 f"{c['accepted']} valid ({rate}); tokens: {c['tokens']:,} (prompt + completion)")
    lines.append(f"fallbacks to the rule controller: {c['fallbacks']} of {c['checkpoints']} "
                 f"checkpoints, in {c['reps_with_fallbacks']} of {summary['n_reps']} replications"
                 + (f"; first reason: {c['first_fallback']}" if c["first_fallback"] else ""))
    if c["checkpoints"] and c["fallbacks"] == c["checkpoints"]:
        lines.append("the LLM decided no checkpoint: its rows are the rule controller's "
                     "(check the endpoint, --model and --timeout-s)")
    lines.append(f"{summary['n_reps']} replications x {summary['requests_per_rep']:,} requests, "
                 f"{summary['scenario']}, model {summary['config']['llm_model']}; paired over the "
                 f"same traces, 95% CIs: {summary['ci_method']}")
    return "\n".join(lines)


def llm_eval(o: LlmEvalOptions) -> dict:
    """Run (or resume) the evaluation of `o`; returns the mc summary with ``llm_eval`` (the
    LLM's counters, ``llm_counters``) added. Written to `o.out` when given."""
    if o.scenario == "real":
        raise E3Error("llm-eval replays generated scenarios", where="--scenario",
                      fix="choose cold-start, semantic, churn, drift, interference, failure or "
                          "mixed (e3fast mc --policies e3,e3-llm runs the real trace)")
    check_ci(o.ci)
    llm = endpoint(o)
    with tempfile.TemporaryDirectory(prefix="e3fast-llm-eval-") as tmp:
        mo = McOptions(out=o.out or str(Path(tmp) / "sweep"), scenario=o.scenario, reps=o.reps,
                       requests=o.requests, policies=f"{RULE},{LLM}", devices=o.devices,
                       utilization=o.utilization, load_basis=o.load_basis, seed0=o.seed0,
                       decision_delay_s=o.decision_delay_s, disable_tools=o.disable_tools,
                       ci=o.ci, resume=o.resume, force=o.force, quiet=o.quiet)
        cfg = sweep_config(mo)
        cfg["llm_model"] = llm["model"]  # a resume with another model is refused
        out = prepare_folder(mo, cfg)
        todo = [r for r in range(o.reps) if not rep_path(out, r).exists()]
        say = (lambda *a: None) if o.quiet else print
        say(f"llm-eval: {cfg['scenario']}, {o.reps} replications x {o.requests:,} requests "
            f"({o.reps - len(todo)} done), model {llm['model']} at {shown_url(llm['base_url'])}")
        t0 = time.perf_counter()
        for k, rep in enumerate(todo):
            interrupts.check()
            path = Path(tmp) / f"rep{rep:05d}.h5"
            rec = run_replication(cfg, rep, path, llm=llm, progress=not o.quiet,
                                  control_dir=out / "control")
            path.unlink(missing_ok=True)
            _write_rep(out, rec)
            a, b = rec["policies"][RULE], rec["policies"][LLM]
            say(f"rep {rep} ({k + 1}/{len(todo)}): mean latency rule {a['mean_latency_s']:.4g} s, "
                f"llm {b['mean_latency_s']:.4g} s; {b.get('checkpoints', 0)} checkpoints, "
                f"{b.get('controller_fallbacks', 0)} decided by the rule after an endpoint "
                f"failure; {time.perf_counter() - t0:.0f} s so far")
        summary = aggregate(out, o.reps, ci=o.ci)
        summary["llm_eval"] = llm_counters(out, o.reps)
        summary["timing"].update(wall_s=time.perf_counter() - t0, reps_computed=len(todo))
        if o.out:
            write_outputs(out, summary)
    return summary


def run_llm_eval(o: LlmEvalOptions) -> int:
    """CLI face of `llm_eval`."""
    summary = llm_eval(o)
    if not o.quiet:
        print(format_eval(summary))
        if o.out:
            print(f"wrote {o.out}/ (reps/, table.csv, summary.json)")
    return 0
