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
from dataclasses import dataclass, field
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
    scenario: Optional[str] = _opt("cold-start | semantic | churn | drift (default cold-start)",
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
    sem_longform_at: Optional[float] = _opt("semantic: " + scenarios.SCENARIO_PARAMS["semantic"]["sem_longform_at"][1])
    sem_image_at: Optional[float] = _opt("semantic: " + scenarios.SCENARIO_PARAMS["semantic"]["sem_image_at"][1])
    sem_burst_len: Optional[float] = _opt("semantic: " + scenarios.SCENARIO_PARAMS["semantic"]["sem_burst_len"][1])
    sem_burst_share: Optional[float] = _opt("semantic: " + scenarios.SCENARIO_PARAMS["semantic"]["sem_burst_share"][1])
    sem_degrade_at: Optional[float] = _opt("semantic: " + scenarios.SCENARIO_PARAMS["semantic"]["sem_degrade_at"][1])
    sem_degrade_len: Optional[float] = _opt("semantic: " + scenarios.SCENARIO_PARAMS["semantic"]["sem_degrade_len"][1])
    sem_factor: Optional[float] = _opt("semantic: " + scenarios.SCENARIO_PARAMS["semantic"]["sem_factor"][1])
    churn_leave: Optional[float] = _opt("churn: " + scenarios.SCENARIO_PARAMS["churn"]["churn_leave"][1])
    churn_leave_at: Optional[float] = _opt("churn: " + scenarios.SCENARIO_PARAMS["churn"]["churn_leave_at"][1])
    churn_join: Optional[float] = _opt("churn: " + scenarios.SCENARIO_PARAMS["churn"]["churn_join"][1])
    churn_join_at: Optional[float] = _opt("churn: " + scenarios.SCENARIO_PARAMS["churn"]["churn_join_at"][1])
    churn_spacing: Optional[float] = _opt("churn: " + scenarios.SCENARIO_PARAMS["churn"]["churn_spacing"][1])
    drift_devices: Optional[float] = _opt("drift: " + scenarios.SCENARIO_PARAMS["drift"]["drift_devices"][1])
    drift_at: Optional[float] = _opt("drift: " + scenarios.SCENARIO_PARAMS["drift"]["drift_at"][1])
    drift_spacing: Optional[float] = _opt("drift: " + scenarios.SCENARIO_PARAMS["drift"]["drift_spacing"][1])
    drift_ramp_mult: Optional[float] = _opt("drift: " + scenarios.SCENARIO_PARAMS["drift"]["drift_ramp_mult"][1])
    drift_ramp_len: Optional[float] = _opt("drift: " + scenarios.SCENARIO_PARAMS["drift"]["drift_ramp_len"][1])
    drift_step_mult: Optional[float] = _opt("drift: " + scenarios.SCENARIO_PARAMS["drift"]["drift_step_mult"][1])
    drift_hold: Optional[float] = _opt("drift: " + scenarios.SCENARIO_PARAMS["drift"]["drift_hold"][1])


DEFAULTS = {"scenario": "cold-start", "requests": 100_000, "devices": 8, "seed": 0,
            "arrivals": "poisson", "utilization": 0.7, "load_basis": "priors", "instance_spread": 0.3,
            "burst_ratio": 5.0, "burst_frac": 0.2, "burst_len": 200.0}
_SCENARIO_KEYS = {k for table in scenarios.SCENARIO_PARAMS.values() for k in table}


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
    rate = o["utilization"] * capacity  # arrivals/s under the baseline mix
    seeds = np.random.SeedSequence(o["seed"]).spawn(7)
    s_gap, s_state, s_class, s_in, s_out, s_z = (np.random.default_rng(s) for s in seeds[1:])
    sp = {k: o[k] for k in scenarios.SCENARIO_PARAMS[o["scenario"]]}

    def build(T):  # the scenario stream restarts each time: same draws for any T
        return scenarios.build_scenario(o["scenario"], priors, types, T, np.random.default_rng(seeds[0]),
                                        sp, o["instance_spread"])
    # Mix regimes keep the offered load at U: regime r arrives at rate x g_r, g_r = capacity
    # under its mix / capacity under the baseline mix. Arrivals are drawn in "operational
    # time" at the baseline rate and warped to real time; T solves n / rate = sum g_r len_r(T).
    unit = build(1.0)
    load_ratio = 1.0
    if o["load_basis"] == "worst":  # true capacity in the worst regime / capacity under the priors
        load_ratio = scenarios.worst_capacity_ratio(unit.env, priors)
        rate *= load_ratio
    g = np.array([scenarios.fleet_capacity(priors, types, dict(zip(CLASSES, w))).sum()
                  for w in unit.mix_w]) / capacity
    frac = np.diff(np.append(unit.mix_t_s, 1.0))
    T = n / rate / float(g @ frac)  # nominal duration: scenario event times are fractions of it
    scen = build(T)
    warp_t = scen.mix_t_s                                           # regime starts, real time
    warp_s = np.concatenate(([0.0], np.cumsum(g[:-1] * np.diff(warp_t))))  # ... operational time
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
                  worst_capacity_ratio=load_ratio,
                  regime_rate_factor=g.tolist(),
                  n_devices_total=scen.env.n_devices, fleet_types=[priors.device_types[t] for t in types],
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
            "initial_devices": len(types), "scenario": o["scenario"], "arrivals": o["arrivals"],
            "seed": o["seed"], "events": len(scen.events), "worst_capacity_ratio": load_ratio,
            "fleet": ", ".join(f"{priors.device_types[t]} x{c}" for t, c in
                               zip(*np.unique(types, return_counts=True)))}


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
