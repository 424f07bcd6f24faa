"""`e3fast demo`: the main job on embedded defaults.

Generates a mixed-scenario trace (every dynamic at once; 8 devices, MLPerf priors, utilisation 0.7 of the fleet's
worst-regime capacity, as in experiments/) into a
temporary folder, prints what `e3fast inspect` prints, replays it with RoundRobin, JSQ,
static SECT, E3 with and without the rule controller, the Oracle (full information, not a
bound) and the lower bound (each request alone on its fastest device, not a router), and
prints the result table with E3's reduction versus the best non-learning router and its gap
to the Oracle.
"""
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import interrupts
from .errors import E3Error
from .router.view import DEFAULT_LENGTH_INFO, LENGTH_INFO
from .runner import BOUND, check_length_info, ensure_compiled, format_table, replay
from .tracefile.generator import GenTraceOptions, generate_trace
from .tracefile.inspect import _text, inspect_trace
from .tracefile.scenarios import SCENARIOS

#: (label, policy, controller) replayed by the demo
VARIANTS = (("rr", "rr", None), ("jsq", "jsq", None), ("sect", "sect", None),
            ("e3-nocontrol", "e3", "none"), ("e3", "e3", "rule"), ("oracle", "oracle", None),
            (BOUND, BOUND, None))


@dataclass
class DemoOptions:
    """Options of `e3fast demo`."""
    scenario: str = field(default="mixed", metadata={
        "choices": list(SCENARIOS), "help": "scenario (default mixed: every dynamic at once)"})
    requests: int = field(default=200_000, metadata={"help": "requests in the trace (default 200000)"})
    devices: int = field(default=8, metadata={"help": "devices in the fleet (default 8)"})
    seed: int = field(default=7, metadata={"help": "trace seed (default 7)"})
    length_info: str = field(default=DEFAULT_LENGTH_INFO, metadata={
        "choices": list(LENGTH_INFO),
        "help": "what routers see of an LLM request's output length: hidden (predicted from "
                "completed requests; default) or exact. The oracle always sees everything"})


def demo(scenario: str = "mixed", requests: int = 200_000, devices: int = 8, seed: int = 7,
         verbose: bool = True, length_info: str = DEFAULT_LENGTH_INFO) -> list[dict]:
    """Run the demo; returns one replay summary per variant of VARIANTS (`length_info`: what
    the routers see of output lengths, ``router.view``)."""
    if requests < 1 or devices < 1:
        raise E3Error("requests and devices must be >= 1", where="e3fast demo",
                      fix="e.g. --requests 200000 --devices 8")
    check_length_info(length_info)
    with interrupts.deferred():  # an interrupt after this leaves it to its finalizer
        tmpdir = tempfile.TemporaryDirectory(prefix="e3fast-demo-")
    with tmpdir as tmp:
        path = Path(tmp) / f"{scenario}.h5"
        generate_trace(GenTraceOptions(scenario=scenario, requests=requests, devices=devices,
                                       seed=seed, load_basis="worst", out=str(path)),
                       progress=False)
        if verbose:
            print(_text(inspect_trace(path)))
            print()
        if verbose:
            print("Loading the compiled kernels (a machine's first run compiles one per policy, "
                  "60-100 s for these five) ...", end=" ", flush=True)
        seconds = ensure_compiled(sorted({policy for _, policy, _ in VARIANTS} - {BOUND}))
        if verbose:
            print(f"{seconds:.1f} s\n")
        rows = []
        for label, policy, controller in VARIANTS:
            s = replay(path, policy, controller=controller or "none",
                       length_info=length_info).summary
            s["policy"], s["controller"] = label, controller or "-"
            rows.append(s)
    if verbose:
        print(format_table(rows))
        by = {s["policy"]: s["mean_latency_s"] for s in rows}
        from .montecarlo import BASELINES
        best = min((p for p in BASELINES if p in by), key=lambda p: by[p])
        print(f"\nE3 mean latency: {1 - by['e3'] / by[best]:.1%} lower than the best baseline "
              f"({best}); {by['e3'] / by['oracle'] - 1:+.1%} versus the Oracle.")
    return rows


def run_demo(opts: DemoOptions) -> int:
    """CLI face of `demo`."""
    demo(opts.scenario, opts.requests, opts.devices, opts.seed, length_info=opts.length_info)
    return 0
