"""``e3fast gen-trace``: synthetic scenario traces, vectorised, streamed in blocks.

Pipeline per block of rows (default 1M): arrival times (Poisson or bursty MMPP at rate
U x fleet capacity) -> mix regime at each arrival -> class (one uniform per row) ->
prompt and output lengths (one uniform each, inverse CDFs of workload.py) -> model of
the class -> z ~ N(0, 1). Each column has its own RNG stream spawned from the seed, and
each row consumes a fixed number of draws per stream, so the file is identical whatever
the block size. The environment (fleet, drift, windows, events) comes from scenarios.py.

Options resolve as: flags given > ``--spec`` TOML (keys = option names) > defaults.
"""
import sys
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .. import interrupts
from ..errors import E3Error
from . import scenarios
from .importers import merge_options
from .schema import DEFAULT_CHUNK_ROWS
from .workload import CLASSES, Arrivals, sample_in, sample_out


def _opt(help_text, **kw):
    return field(default=None, metadata={"help": help_text, **kw})


@dataclass
class GenTraceOptions:
    """Options of ``e3fast gen-trace`` (None = from --spec, else the default shown)."""
    scenario: Optional[str] = _opt(" | ".join(scenarios.SCENARIOS) + " (default cold-start; "
                                   "mixed = every dynamic at once, the recommended start)",
                                   choices=scenarios.SCENARIOS)
    requests: Optional[int] = _opt("number of requests (default 100000)")
    devices: Optional[int] = _opt("initial fleet size (default 8)")
    seed: Optional[int] = _opt("random seed (default 0)")
    out: Optional[str] = _opt("output trace file, .h5 (required)")
    force: bool = field(default=False, metadata={"help": "overwrite --out if it exists"})
    spec: Optional[str] = _opt("TOML file of these options (keys = option names); flags override it")
    arrivals: Optional[str] = _opt("poisson | bursty (2-state MMPP) (default poisson)",
                                   choices=("poisson", "bursty"))
    utilization: Optional[float] = _opt("offered load as a fraction of fleet capacity under the "
                                        "priors for the baseline mix (default 0.7)")
    load_basis: Optional[str] = _opt(
        "what --utilization is a fraction of: 'priors' = the initial fleet's capacity under the "
        "MLPerf priors (default); 'worst' = the fleet's true capacity in its worst regime "
        "(hidden instance factors, drift, churn and slowdown windows included), so the fleet "
        "stays stable throughout", choices=("priors", "worst"))
    fleet: Optional[str] = _opt("explicit initial fleet 'type:count,...' (overrides --devices)")
    instance_spread: Optional[float] = _opt(
        "log-sd of each device's hidden static speed factor exp(N(0, s^2)) (default 0.3)")
    burst_ratio: Optional[float] = _opt("bursty: high/low arrival-rate ratio (default 5)")
    burst_frac: Optional[float] = _opt("bursty: fraction of time in the high state (default 0.2)")
    burst_len: Optional[float] = _opt("bursty: mean arrivals per high-state sojourn (default 200)")


def _scenario_field(name, default, kind, text):
    users = "/".join(s for s in scenarios.SCENARIOS if name in scenarios.scenario_params(s))
    tp = Optional[int] if kind == scenarios.COUNT else Optional[float]
    return name, tp, _opt(f"{users}: {text} (default {default:g})")


#: the options class: the fields above, then one per scenario parameter (scenarios.ALL_PARAMS)
GenTraceOptions = make_dataclass(
    "GenTraceOptions", [_scenario_field(k, *v) for k, v in scenarios.ALL_PARAMS.items()],
    bases=(GenTraceOptions,))
GenTraceOptions.__doc__ = "Options of ``e3fast gen-trace`` (None = from --spec, else the default shown)."


DEFAULTS = {"scenario": "cold-start", "requests": 100_000, "devices": 8, "seed": 0,
            "arrivals": "poisson", "utilization": 0.7, "load_basis": "priors", "instance_spread": 0.3,
            "burst_ratio": 5.0, "burst_frac": 0.2, "burst_len": 200.0}
_SCENARIO_KEYS = set(scenarios.ALL_PARAMS)


def resolve(options: GenTraceOptions) -> dict:
    """Merged and checked options (flags > spec > defaults); scenario parameters filled in."""
    o = merge_options(options, DEFAULTS)
    if o["scenario"] not in scenarios.SCENARIOS:
        raise E3Error(f"unknown scenario {o['scenario']!r}", where="--scenario",
                      fix=f"choose one of {', '.join(scenarios.SCENARIOS)}")
    if o["arrivals"] not in ("poisson", "bursty"):
        raise E3Error(f"unknown arrival process {o['arrivals']!r}", where="--arrivals",
                      fix="use poisson or bursty")
    if o["requests"] < 1:
        raise E3Error(f"requests {o['requests']} must be >= 1", where="--requests", fix="e.g. --requests 100000")
    if o["seed"] < 0:
        raise E3Error(f"seed {o['seed']} must be >= 0", where="--seed", fix="e.g. --seed 7")
    if o["load_basis"] not in ("priors", "worst"):
        raise E3Error(f"unknown load basis {o['load_basis']!r}", where="--load-basis",
                      fix="use priors or worst")
    scenarios.check_common(o)
    scenarios.check_utilization(o["utilization"])
    if not (o["burst_ratio"] >= 1 and 0 < o["burst_frac"] < 1 and o["burst_len"] > 0):
        raise E3Error("bad bursty parameters", where="--burst-ratio/--burst-frac/--burst-len",
                      fix="use burst_ratio >= 1, 0 < burst_frac < 1, burst_len > 0")
    if not o.get("out"):
        raise E3Error("no output file", where="gen-trace", fix="add --out PATH.h5 (or out = ... in the spec)")
    o.update(scenarios.resolve_params(o["scenario"], {k: o.pop(k) for k in list(o) if k in _SCENARIO_KEYS}))
    return o


def generate_trace(options: GenTraceOptions, block_rows: int = 1 << 20, progress: bool = True) -> dict:
    """Generate the trace described by ``options``; return a summary dict (``path``,
    ``n_requests``, ``duration_s``, ``rate_per_s``, ``capacity_per_s``, ``n_devices``...).

    ``block_rows`` only bounds memory: the output does not depend on it.
    """
    from tqdm import tqdm

    from ..priors import load_priors
    from .writer import TraceWriter

    o = resolve(options)
    out = Path(o["out"])
    if out.exists() and not o["force"]:
        raise E3Error("output file exists", where=str(out), fix="use --force to overwrite, or another name")
    priors = load_priors()
    types = scenarios.make_fleet(priors, o["devices"], o.get("fleet"))
    o["devices"] = len(types)  # --fleet overrides --devices
    n = int(o["requests"])
    capacity = float(scenarios.fleet_capacity(priors, types).sum())
    if capacity <= 0:
        raise E3Error("the fleet can serve none of the request classes", where="--fleet",
                      fix="use device types with priors")
    seeds = np.random.SeedSequence(o["seed"]).spawn(7)
    s_gap, s_state, s_class, s_in, s_out, s_z = (np.random.default_rng(s) for s in seeds[1:])
    sp = {k: o[k] for k in scenarios.scenario_params(o["scenario"])}

    def build(H):  # the scenario stream restarts each time: the same horizon, the same draws
        return scenarios.build_scenario(o["scenario"], priors, types, H, np.random.default_rng(seeds[0]),
                                        sp, o["instance_spread"])
    # Scenario times are seconds, so the scenario is built up to a horizon H past the last
    # arrival (T * 1.1 + 1 h, T the nominal duration), H doubling until it is. The offered
    # load is U x the capacity of the devices present at t = 0 (under the priors, baseline mix;
    # x the worst-regime ratio with --load-basis worst). Mix regimes keep it at U: regime r
    # arrives at rate x g_r = capacity under its mix / capacity under the baseline mix.
    # Arrivals are drawn in "operational time" at the baseline rate and warped to real time;
    # T solves n / rate = integral of g over [0, T].
    H = 1.2 * n / (o["utilization"] * capacity) + 3600.0
    for _ in range(20):
        scen = build(H)
        initial = scen.env.device_type[scen.env.join_s <= 0]
        capacity = float(scenarios.fleet_capacity(priors, initial).sum())
        rate = o["utilization"] * capacity  # arrivals/s under the baseline mix
        load_ratio = 1.0
        if o["load_basis"] == "worst":  # true capacity in the worst regime / capacity under the priors
            load_ratio = scenarios.worst_capacity_ratio(scen, priors, H)
            rate *= load_ratio
        mixes, which = np.unique(scen.mix_w, axis=0, return_inverse=True)
        g = (np.array([scenarios.fleet_capacity(priors, initial, dict(zip(CLASSES, w))).sum()
                       for w in mixes]) / capacity)[which.ravel()]
        warp_t = scen.mix_t_s                                                 # regime starts, real time
        warp_s = np.concatenate(([0.0], np.cumsum(g[:-1] * np.diff(warp_t))))  # ... operational time
        need = n / rate
        j = np.searchsorted(warp_s, need, side="right") - 1
        T = float(warp_t[j] + (need - warp_s[j]) / g[j])  # nominal duration
        if T * 1.1 + 3600.0 <= H:
            break
        H = 2.0 * (T * 1.1 + 3600.0)
    arrivals = Arrivals(rate, o["arrivals"], s_gap, s_state, o["burst_ratio"], o["burst_frac"],
                        o["burst_len"])
    cum = np.cumsum(scen.mix_w, axis=1)[:, :-1]  # [R, C-1] class thresholds per regime
    thresholds = (cum + np.arange(len(cum))[:, None]).ravel()
    step_ranges, regime_steps = np.unique(scen.image_steps, axis=0, return_inverse=True)
    regime_steps = regime_steps.ravel()
    class_model = np.array([priors.models.index(scenarios.CLASS_MODEL[k]) for k in CLASSES], np.int16)
    image = CLASSES.index("image")
    params = {k: v for k, v in o.items() if k != "force"}
    params.update(rate_per_s=rate, capacity_per_s=capacity, nominal_duration_s=T,
                  worst_capacity_ratio=load_ratio, horizon_s=H, n_events=scen.env.extra["n_events"],
                  regime_rate_factors=sorted(set(g.tolist())),
                  n_devices_total=scen.env.n_devices, fleet_types=[priors.device_types[t] for t in initial],
                  mix=dict(scenarios.BASELINE_MIX),
                  class_model=dict(scenarios.CLASS_MODEL), events=scen.events)
    last = 0.0
    with TraceWriter(out, scen.env, scenario=o["scenario"], seed=o["seed"], params=params,
                     chunk_rows=min(DEFAULT_CHUNK_ROWS, n), force=o["force"]) as writer, \
            tqdm(total=n, unit="req", unit_scale=True, disable=None if progress else True,
                 file=sys.stderr, desc="gen-trace") as bar:
        for lo in range(0, n, block_rows):
            b = min(block_rows, n - lo)
            t = arrivals.next(b)
            if len(g) > 1:
                j = np.searchsorted(warp_s, t, side="right") - 1
                t = warp_t[j] + (t - warp_s[j]) / g[j]
            reg = np.searchsorted(scen.mix_t_s, t, side="right") - 1
            # class = number of the regime's thresholds <= u: one searchsorted over all regimes
            # (u + r lies above every threshold of regimes < r and below those of regimes > r)
            klass = (np.searchsorted(thresholds, s_class.random(b) + reg, side="right")
                     - reg * (len(CLASSES) - 1)).astype(np.int16)
            u_in, u_out = s_in.random(b), s_out.random(b)
            in_tok, out_tok = np.zeros(b, np.int32), np.empty(b, np.int32)
            for k, name in enumerate(CLASSES):
                sel = np.flatnonzero(klass == k)
                if k != image:
                    in_tok[sel] = sample_in(name, u_in[sel])
                    out_tok[sel] = sample_out(name, u_out[sel])
                    continue
                step_id = regime_steps[reg[sel]]
                for i, steps in enumerate(step_ranges):  # image step range of each regime
                    s2 = sel[step_id == i]
                    out_tok[s2] = sample_out(name, u_out[s2], tuple(steps))
            writer.append(t, class_model[klass], in_tok, out_tok, klass, s_z.standard_normal(b))
            last = float(t[-1])
            bar.update(b)
            interrupts.check()
    return {"path": str(out), "n_requests": n, "duration_s": last, "rate_per_s": n / last,
            "capacity_per_s": capacity, "utilization": o["utilization"], "n_devices": scen.env.n_devices,
            "initial_devices": len(initial), "scenario": o["scenario"], "arrivals": o["arrivals"],
            "seed": o["seed"], "events": scen.env.extra["n_events"], "worst_capacity_ratio": load_ratio,
            "fleet": ", ".join(f"{priors.device_types[t]} x{c}" for t, c in
                               zip(*np.unique(initial, return_counts=True)))}


def run_gen_trace(options: GenTraceOptions) -> int:
    """CLI entry: generate, then print a one-paragraph summary."""
    s = generate_trace(options)
    joined = s["n_devices"] - s["initial_devices"]
    print(f"wrote {s['path']}: {s['n_requests']:,} {s['scenario']} requests over "
          f"{s['duration_s']:,.1f} s ({s['arrivals']} arrivals, {s['rate_per_s']:.4g} req/s on average: "
          + (f"utilisation {s['utilization']:g} of the fleet's {s['capacity_per_s']:.4g} req/s under the "
             "priors" if s["worst_capacity_ratio"] == 1.0 else
             f"utilisation {s['utilization']:g} of the fleet's worst-regime capacity, "
             f"{s['worst_capacity_ratio']:.3g} x {s['capacity_per_s']:.4g} req/s under the priors")
          + f") on {s['initial_devices']} devices ({s['fleet']})"
          + (f" + {joined} joining later" if joined else "")
          + f"; {s['events']} scenario events in /env; seed {s['seed']}.")
    return 0
