"""`e3fast demo`: the main job on embedded defaults.

Generates a drift-scenario trace (8 devices, MLPerf priors, utilisation 0.7 of the fleet's
worst-regime capacity, as in experiments/) into a
temporary folder, prints what `e3fast inspect` prints, replays it with RoundRobin, static
SECT, E3 with and without the rule controller, and the Oracle, and prints the result table
with E3's reduction versus the best static baseline and its gap to the Oracle.
"""
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import interrupts
from .errors import E3Error
from .runner import ensure_compiled, format_table, replay
from .tracefile.generator import GenTraceOptions, generate_trace
from .tracefile.inspect import _text, inspect_trace

#: (label, policy, controller) replayed by the demo
VARIANTS = (("rr", "rr", None), ("sect", "sect", None), ("e3-nocontrol", "e3", "none"),
            ("e3", "e3", "rule"), ("oracle", "oracle", None))


@dataclass
class DemoOptions:
    """Options of `e3fast demo`."""
    scenario: str = field(default="drift", metadata={
        "choices": ["cold-start", "semantic", "churn", "drift"], "help": "scenario (default drift)"})
    requests: int = field(default=200_000, metadata={"help": "requests in the trace (default 200000)"})
    devices: int = field(default=8, metadata={"help": "devices in the fleet (default 8)"})
    seed: int = field(default=7, metadata={"help": "trace seed (default 7)"})


def demo(scenario: str = "drift", requests: int = 200_000, devices: int = 8, seed: int = 7,
         verbose: bool = True) -> list[dict]:
    """Run the demo; returns one replay summary per variant of VARIANTS."""
    if requests < 1 or devices < 1:
        raise E3Error("requests and devices must be >= 1", where="e3fast demo",
                      fix="e.g. --requests 200000 --devices 8")
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
                  "60-80 s for these four) ...", end=" ", flush=True)
        seconds = ensure_compiled(sorted({policy for _, policy, _ in VARIANTS}))
        if verbose:
            print(f"{seconds:.1f} s\n")
        rows = []
        for label, policy, controller in VARIANTS:
            s = replay(path, policy, controller=controller or "none").summary
            s["policy"], s["controller"] = label, controller or "-"
            rows.append(s)
    if verbose:
        print(format_table(rows))
        by = {s["policy"]: s["mean_latency_s"] for s in rows}
        static = min(("rr", "sect"), key=lambda p: by[p])
        print(f"\nE3 mean latency: {1 - by['e3'] / by[static]:.1%} lower than the best static "
              f"baseline ({static}); {by['e3'] / by['oracle'] - 1:+.1%} versus the Oracle.")
    return rows


def run_demo(opts: DemoOptions) -> int:
    """CLI face of `demo`."""
    demo(opts.scenario, opts.requests, opts.devices, opts.seed)
    return 0
