"""Fleets and scenario timelines -> `Env` (pure functions of the priors, options and an RNG).

Every scenario time is in seconds, and the dynamics recur (renewal processes with mean
gaps in seconds), so a longer trace means more changes, not slower ones. The scenario is
built up to a horizon (the generator's: past the last arrival); see docs/SCENARIOS.md.

* Fleet: ``--fleet type:count,...`` or ``--devices D`` cycling over ``DEFAULT_FLEET``
  (slow and fast types interleaved). A device hosts every model its type has priors for.
* Instance factors (all scenarios): device d runs ``f_d = exp(N(0, spread^2))`` times
  slower than its type's prior (``--instance-spread``, default 0.3), encoded by scaling its
  drift knots (one knot at t=0 when it has no drift).
* Processes (parameter groups, ``PROCESS_PARAMS``), combined per scenario (``SCENARIO_PROCESSES``):
  cold-start (wrong and missing priors), semantic (mix bursts, (type, class) slowdown
  windows), churn (departures and joins), drift (recurring ramp/step episodes),
  interference (on/off slowdowns), failure (hangs). ``mixed`` = all but cold-start.
* Drift, interference and the instance and type factors multiply exactly into one
  piecewise-linear knot list per device (`combine_steps`); failures are windows per device.
"""
from dataclasses import dataclass, field

import numpy as np

from ..errors import E3Error
from .schema import Env
from .workload import BASELINE_MIX, BURST_IMAGE_STEPS, CLASS_MODEL, CLASSES, IMAGE_STEPS, class_means

#: default fleet order: interleaves slow and fast device types (filtered to the priors).
DEFAULT_FLEET = ("jetson-agx-orin-64g", "rtx-4090", "nvidia-l4", "l40s", "arc-pro-b60")

# parameter kinds: what a value must be (checked by resolve_params)
FRACTION, DURATION, SLOWDOWN, SPEEDUP, SHARE, COUNT = "fraction", "duration", "slowdown", \
    "speedup", "share", "count"
_ALLOWED = {FRACTION: ("in (0, 1] (a fraction of the devices)", lambda v: 0 < v <= 1),
            DURATION: ("> 0 (seconds)", lambda v: 0 < v < np.inf),
            SLOWDOWN: (">= 1 (a slowdown factor)", lambda v: 1 <= v < np.inf),
            SPEEDUP: ("in (0, 1] (a speed-up: the true time is this times the prior)",
                      lambda v: 0 < v <= 1),
            SHARE: ("in (0, 1] (a share of the requests)", lambda v: 0 < v <= 1),
            COUNT: ("a whole number >= 1", lambda v: v >= 1 and v == int(v))}

#: process -> {parameter: (default, kind, help)}. Times in seconds; reasons in docs/SCENARIOS.md.
PROCESS_PARAMS = {
    "cold-start": {
        "cs_slow_factor": (2.0, SLOWDOWN, "true speed of one fleet type vs its prior: x2 slower "
                           "(a power-capped mode instead of the submission's maximum)"),
        "cs_fast_factor": (0.6, SPEEDUP, "true time of another fleet type vs its prior: x0.6 "
                           "(a lower-precision quantisation than the submission's)"),
        "cs_unknown": (1, COUNT, "devices of a type absent from the priors the routers see "
                       "(no prior at all)"),
    },
    "semantic": {
        "sem_burst_gap_s": (3600.0, DURATION, "mean gap between mix bursts (exponential), s"),
        "sem_burst_s": (600.0, DURATION, "length of a mix burst (longform, then 50-step image, "
                        "alternating), s"),
        "sem_burst_share": (0.6, SHARE, "share of requests of the burst class during a burst"),
        "sem_degrade_gap_s": (3600.0, DURATION, "mean gap between slowdown windows of one "
                              "(type, class) pair (exponential), s"),
        "sem_degrade_s": (900.0, DURATION, "length of a slowdown window, s"),
        "sem_factor": (8.0, SLOWDOWN, "service-time multiplier inside a slowdown window (8 "
                       "pushes the fastest types past the 0.1 s/token stutter threshold)"),
    },
    "churn": {
        "churn_leave": (0.25, FRACTION, "fraction of the initial devices that leave (>= 1 device)"),
        "churn_leave_at_s": (1800.0, DURATION, "time of the first departure, s"),
        "churn_join": (0.25, FRACTION, "new devices joining, as a fraction of the initial fleet (>= 1)"),
        "churn_join_at_s": (3600.0, DURATION, "time of the first join of a new device, s"),
        "churn_spacing_s": (600.0, DURATION, "gap between successive departures (and joins), s"),
    },
    "drift": {
        "drift_devices": (0.5, FRACTION, "fraction of devices that drift (>= 1 device)"),
        "drift_gap_s": (1800.0, DURATION, "mean gap between drift episodes of a device (exponential), s"),
        "drift_ramp_mult": (3.0, SLOWDOWN, "slowdown reached by a gradual ramp"),
        "drift_ramp_s": (300.0, DURATION, "duration of a ramp (up, and down again), s"),
        "drift_step_mult": (4.0, SLOWDOWN, "slowdown of an abrupt step"),
        "drift_hold_s": (600.0, DURATION, "mean time an episode stays at its peak (exponential), s"),
    },
    "interference": {
        "intf_devices": (0.5, FRACTION, "fraction of devices with co-located load or thermal "
                         "throttling (>= 1 device)"),
        "intf_factor": (2.0, SLOWDOWN, "slowdown while interference is on"),
        "intf_on_s": (60.0, DURATION, "mean length of an on period (exponential), s"),
        "intf_off_s": (240.0, DURATION, "mean length of an off period (exponential), s"),
    },
    "failure": {
        "fail_devices": (0.25, FRACTION, "fraction of devices that fail now and then (>= 1 device)"),
        "fail_mtbf_s": (14400.0, DURATION, "mean time between failures (exponential up time), s"),
        "fail_mttr_s": (300.0, DURATION, "mean time to recover (exponential down time), s"),
    },
}

#: scenario -> the processes it combines (instance factors are always on).
SCENARIO_PROCESSES = {
    "cold-start": ("cold-start",), "semantic": ("semantic",), "churn": ("churn",),
    "drift": ("drift",), "interference": ("interference",), "failure": ("failure",),
    "mixed": ("drift", "interference", "failure", "churn", "semantic"),
}
SCENARIOS = tuple(SCENARIO_PROCESSES)

#: every scenario parameter: name -> (default, kind, help)
ALL_PARAMS = {k: v for table in PROCESS_PARAMS.values() for k, v in table.items()}

#: at most this many events are listed in env.extra["events"] (the first ones in time; the
#: count of all is env.extra["n_events"]): recurring processes have millions on long traces
MAX_EVENTS = 1000


def scenario_params(name: str) -> dict:
    """The parameters of scenario `name`: {parameter: (default, kind, help)}."""
    return {k: v for proc in SCENARIO_PROCESSES[name] for k, v in PROCESS_PARAMS[proc].items()}


@dataclass
class Scenario:
    """A built scenario: the environment, the request-mix timeline and the event list.

    ``mix_t_s`` [R] start times of mix regimes (first 0), ``mix_w`` [R, C] class shares,
    ``image_steps`` [R, 2] inclusive step range of image requests per regime.
    ``stationary`` [D] long-run capacity factor of the fast on/off processes per device
    (interference, failures), used by ``worst_capacity_ratio``; ``slow_env`` the Env without
    them (drift, churn and windows only).
    """
    env: Env
    mix_t_s: np.ndarray
    mix_w: np.ndarray
    image_steps: np.ndarray
    events: list = field(default_factory=list)
    params: dict = field(default_factory=dict)
    stationary: np.ndarray = None
    slow_env: Env = None


def check_utilization(u) -> None:
    if not (isinstance(u, (int, float)) and 0 < u < 5):
        raise E3Error(f"utilisation {u} out of range", where="--utilization",
                      fix="use 0 < U < 5 (0.7 = the fleet busy 70% of the time under the priors)")


def check_common(o: dict) -> None:
    """Check the options shared by gen-trace and import-trace (devices, spread, fleet)."""
    if o.get("devices") is not None and o["devices"] < 1:
        raise E3Error(f"devices {o['devices']} must be >= 1", where="--devices", fix="e.g. --devices 8")
    spread = o.get("instance_spread")
    if spread is not None and not 0 <= spread <= 2:
        raise E3Error(f"instance spread {spread} out of range", where="--instance-spread",
                      fix="use 0 (devices exactly as their priors) .. 2; default 0.3")


def resolve_params(name: str, given: dict) -> dict:
    """Parameters of scenario ``name``: ``given`` values (None = default), range-checked.

    A parameter of a process the scenario does not have, given explicitly, is an error.
    """
    if name not in SCENARIOS:
        raise E3Error(f"unknown scenario {name!r}", where="--scenario", fix=f"choose one of {', '.join(SCENARIOS)}")
    mine = scenario_params(name)
    for key in ALL_PARAMS:
        if key not in mine and given.get(key) is not None:
            users = [s for s in SCENARIOS if key in scenario_params(s)]
            raise E3Error(f"{key} is a parameter of scenario {' / '.join(users)}, not {name}",
                          where="--" + key.replace("_", "-"), fix=f"drop it or use --scenario {users[0]}")
    out = {}
    for key, (default, kind, _) in mine.items():
        v = given.get(key)
        v = default if v is None else float(v)
        allowed, ok = _ALLOWED[kind]
        if not ok(v):
            raise E3Error(f"{key} = {v:g} must be {allowed}", where="--" + key.replace("_", "-"),
                          fix=f"see `e3fast gen-trace --help`; default {default:g}")
        out[key] = int(v) if kind == COUNT else v
    return out


def make_fleet(priors, devices: int, fleet: str | None = None) -> np.ndarray:
    """Device type index per device: from ``fleet`` "type:count,..." or ``devices`` cycling DEFAULT_FLEET."""
    types = list(priors.device_types)
    if not fleet:
        order = [t for t in DEFAULT_FLEET if t in types] or types
        return np.array([types.index(order[i % len(order)]) for i in range(devices)], np.int32)
    out = []
    for part in fleet.split(","):
        name, _, count = part.strip().partition(":")
        if name not in types:
            raise E3Error(f"unknown device type {name!r}", where="--fleet",
                          fix=f"choose from {', '.join(types)}")
        try:
            n = int(count) if count else 1
            if n < 1:
                raise ValueError
        except ValueError:
            raise E3Error(f"bad count {count!r} for {name}", where="--fleet",
                          fix="write type:count with count >= 1, e.g. nvidia-l4:2,rtx-4090:1") from None
        out += [types.index(name)] * n
    return np.array(out, np.int32)


def _class_models(priors) -> np.ndarray:
    missing = [m for m in CLASS_MODEL.values() if m not in priors.models]
    if missing:
        raise E3Error(f"the priors table has no model {missing[0]!r}", where="priors",
                      fix="use a priors table with " + ", ".join(sorted(set(CLASS_MODEL.values()))))
    return np.array([list(priors.models).index(CLASS_MODEL[k]) for k in CLASSES], np.int16)


def class_service_s(priors) -> np.ndarray:
    """[T, C] mean prior service time (s) of a request of each class on each type (inf if not hostable)."""
    cm = _class_models(priors)
    s = np.full((len(priors.device_types), len(CLASSES)), np.inf)
    for j, klass in enumerate(CLASSES):
        mean_in, mean_out = class_means(klass)
        for t in np.flatnonzero(priors.available[:, cm[j]]):
            s[t, j] = priors.mean_service_s(int(t), int(cm[j]), mean_in, mean_out)
    return s


def fleet_capacity(priors, types, mix: dict = BASELINE_MIX) -> np.ndarray:
    """[D] requests/s each device serves flat out under the priors, for the request ``mix``.

    capacity_d = 1 / (mix-weighted mean prior service time over the classes whose model the
    device hosts); the fleet capacity is the sum. The arrival rate is U x fleet capacity.
    """
    s = class_service_s(priors)[types]                      # [D, C]
    w = np.array([mix[k] for k in CLASSES]) * np.isfinite(s)
    mean = (w * np.where(np.isfinite(s), s, 0)).sum(1) / np.maximum(w.sum(1), 1e-300)
    return np.where(w.sum(1) > 0, 1.0 / mean, 0.0)


def knot_multiplier(t_knots, m_knots, ts) -> np.ndarray:
    """A device's drift multiplier at times `ts` (right-continuous at a step: two knots at
    one time apply the second from that time), as ``sim.service.drift_multiplier``."""
    if len(t_knots) == 0:
        return np.ones(len(ts))
    i = np.searchsorted(t_knots, ts, side="right")      # first knot strictly after t
    lo, hi = np.maximum(i - 1, 0), np.minimum(i, len(t_knots) - 1)
    span = t_knots[hi] - t_knots[lo]
    w = np.where(span > 0, (ts - t_knots[lo]) / np.where(span > 0, span, 1.0), 0.0)
    return m_knots[lo] + w * (m_knots[hi] - m_knots[lo])


def worst_capacity_ratio(scen, priors, horizon_s, mix: dict = BASELINE_MIX,
                         max_points: int = 200_001, step_s: float = 10.0) -> float:
    """min over [0, horizon_s] of the fleet's true capacity / the initial fleet's capacity
    under the priors.

    True capacity at t: the devices online at t, each slowed by its drift multiplier (hidden
    instance and type factors included) and the slowdown windows of its type, mix-weighted
    per class, times the long-run capacity factor of its fast on/off processes
    (interference: the mean of 1 and 1/factor weighted by the on share; failures: the up
    share MTBF / (MTBF + MTTR)). The minimum is taken every `step_s` seconds (at most
    `max_points` points).
    """
    env = scen.slow_env
    s = class_service_s(priors)[env.device_type]                # [D, C] seconds
    w = np.array([mix[k] for k in CLASSES])
    ts = np.linspace(0.0, horizon_s, int(min(max_points, max(2001, horizon_s / step_s))))
    base = 0.0
    cap = np.zeros(len(ts))
    for d in range(env.n_devices):
        ok = np.isfinite(s[d])
        if not ok.any():
            continue
        lo, hi = env.drift_ptr[d], env.drift_ptr[d + 1]
        mult = knot_multiplier(env.drift_t_s[lo:hi], env.drift_mult[lo:hi], ts)
        f = np.ones((len(ts), len(CLASSES)))                   # slowdown windows per class
        for k in range(len(CLASSES)):  # log f: +log(factor) from each window's start to its end
            j = (env.sem_device_type == env.device_type[d]) & (env.sem_klass == k)
            if j.any():
                log_f = np.zeros(len(ts) + 1)
                np.add.at(log_f, np.searchsorted(ts, env.sem_t0_s[j]), np.log(env.sem_factor[j]))
                np.add.at(log_f, np.searchsorted(ts, env.sem_t1_s[j]), -np.log(env.sem_factor[j]))
                f[:, k] = np.exp(np.cumsum(log_f)[:-1])
        mean = (f[:, ok] * s[d, ok] * w[ok]).sum(1) / w[ok].sum()
        online = (ts >= env.join_s[d]) & (ts < env.leave_s[d])
        cap += np.where(online, scen.stationary[d] / (mean * mult), 0.0)
        if env.join_s[d] <= 0:
            base += 1.0 / ((s[d, ok] * w[ok]).sum() / w[ok].sum())
    return float(cap.min() / base)


def renewal(rng, horizon_s, mean_gap_s, mean_on_s, on_len):
    """On intervals of an alternating renewal process that starts off, up to `horizon_s`:
    off periods ~ Exp(mean `mean_gap_s`), on lengths ``on_len(n)`` (the next n, drawn after
    each batch's gaps). Returns (starts, ends) of the on periods that start before the
    horizon (an end may lie past it)."""
    starts, ends, t = [], [], 0.0
    n = int(horizon_s / (mean_gap_s + mean_on_s) * 1.1) + 16
    while t < horizon_s:
        gap = rng.exponential(mean_gap_s, n)
        edge = t + np.cumsum(np.column_stack([gap, on_len(n)]).ravel())
        keep = edge[0::2] < horizon_s
        starts.append(edge[0::2][keep])
        ends.append(edge[1::2][keep])
        t = float(edge[-1])
    return np.concatenate(starts), np.concatenate(ends)


def combine_steps(t_knots, m_knots, change_t, level_after):
    """Knots of (piecewise-linear g) x (piecewise-constant h), exactly: g through the knots
    (t_knots, m_knots) (constant outside; no knots = 1), h = 1 before the first change time and
    ``level_after[j]`` from ``change_t[j]`` on. The product is linear between the union of the
    knot and change times: a change becomes a step (two knots at one time)."""
    t_knots, m_knots = np.asarray(t_knots, float), np.asarray(m_knots, float)
    change_t, level_after = np.asarray(change_t, float), np.asarray(level_after, float)
    if len(change_t) == 0:
        return t_knots, m_knots
    if len(t_knots) == 0:
        t_knots, m_knots = np.zeros(1), np.ones(1)
    j = np.searchsorted(change_t, t_knots, side="right") - 1
    h_knots = np.where(j >= 0, level_after[np.maximum(j, 0)], 1.0)
    g = knot_multiplier(t_knots, m_knots, change_t)
    before = np.concatenate(([1.0], level_after[:-1]))
    t = np.concatenate([t_knots, np.repeat(change_t, 2)])
    m = np.concatenate([m_knots * h_knots, np.column_stack([g * before, g * level_after]).ravel()])
    order = np.argsort(t, kind="stable")
    return t[order], m[order]


def _pick(rng, n_total, frac):
    """`frac` of `n_total` items (at least 1, at most all), in random order."""
    n = min(max(1, round(frac * n_total)), n_total)
    return rng.permutation(n_total)[:n]


def _fastest_types(priors, types, klass="chat"):
    speed = class_service_s(priors)[:, CLASSES.index(klass)]
    fleet_types = sorted(set(int(t) for t in types), key=lambda t: speed[t])
    return [t for t in fleet_types if np.isfinite(speed[t])] or fleet_types


def _unseen_type(priors, types, where, what):
    unseen = [t for t in range(len(priors.device_types)) if t not in set(int(x) for x in types)
              and priors.available[t].any()]
    if not unseen:
        raise E3Error(f"every device type with priors is already in the fleet, so no unseen "
                      f"type can {what}", where=where,
                      fix="leave at least one device type out of the initial fleet")
    return unseen[0]


def build_scenario(name, priors, types, horizon_s, rng, params, instance_spread=0.3,
                   overlay=False) -> Scenario:
    """Build scenario ``name`` over the initial fleet ``types`` up to ``horizon_s`` seconds.

    ``params`` are scenario parameters (see ``resolve_params``; missing = default);
    ``rng`` a NumPy Generator used in a fixed order (processes in the order of
    ``PROCESS_PARAMS``); ``overlay`` (importers) drops mix shifts, which cannot apply to
    real requests.
    """
    p = resolve_params(name, params)
    procs = SCENARIO_PROCESSES[name]
    H = float(horizon_s)
    D0 = len(types)
    f = np.exp(instance_spread * rng.standard_normal(D0))
    dev_types = list(types)
    join, leave = [0.0] * D0, [np.inf] * D0
    drift = [(np.zeros(0), np.zeros(0)) for _ in range(D0)]   # (t, mult) per device
    steps = [(np.zeros(0), np.zeros(0)) for _ in range(D0)]   # interference changes per device
    fails = [(np.zeros(0), np.zeros(0)) for _ in range(D0)]   # failure windows per device
    stationary = [1.0] * D0
    windows = []                                              # (type, class, t0, t1, factor)
    events = [{"t_s": 0.0, "kind": "start", "what": f"{name}: {D0} devices, estimates start empty"}]
    regimes = [(0.0, dict(BASELINE_MIX), IMAGE_STEPS)]
    tname = list(priors.device_types)
    known = np.ones(len(tname), bool)                         # the routers have priors of the type
    n_events = 0

    def add_device(t, fd, at=0.0):
        dev_types.append(t)
        join.append(at)
        leave.append(np.inf)
        for per_device in (drift, steps, fails):
            per_device.append((np.zeros(0), np.zeros(0)))
        stationary.append(1.0)
        return np.append(f, fd)

    if "cold-start" in procs:
        order = rng.permutation(sorted(set(int(t) for t in types)))
        factors = {int(order[0]): p["cs_slow_factor"]}
        if len(order) > 1:
            factors[int(order[1])] = p["cs_fast_factor"]
        u = _unseen_type(priors, types, "--fleet", "be the type without priors")
        known[u] = False
        fu = np.exp(instance_spread * rng.standard_normal(p["cs_unknown"]))
        for i in range(p["cs_unknown"]):
            f = add_device(u, fu[i])
            events.append({"t_s": 0.0, "kind": "no-prior",
                           "what": f"device {len(dev_types) - 1} ({tname[u]}): no prior for its type"})
        for t, x in factors.items():
            f = np.where(np.array(dev_types) == t, f * x, f)
            events.append({"t_s": 0.0, "kind": "wrong-prior",
                           "what": f"{tname[t]} runs x{x:g} its prior (every device of the type)"})

    if "semantic" in procs:
        fast = _fastest_types(priors, types)
        a, b = fast[0], fast[1] if len(fast) > 1 else fast[0]
        L, share = p["sem_burst_s"], p["sem_burst_share"]
        t0, t1 = renewal(rng, H, p["sem_burst_gap_s"], L, lambda n: np.full(n, L))
        for i, (x, y) in enumerate(zip(t0.tolist(), t1.tolist())):
            k, st = ("longform", IMAGE_STEPS) if i % 2 == 0 else ("image", BURST_IMAGE_STEPS)
            mix = {c: w * (1 - share) + (share if c == k else 0) for c, w in BASELINE_MIX.items()}
            regimes += [(x, mix, st), (y, dict(BASELINE_MIX), IMAGE_STEPS)]
            what = f"{k} share -> {share:.0%}" + (f", steps {st[0]}" if k == "image" else "")
            events += [{"t_s": x, "kind": "mix-shift", "what": what},
                       {"t_s": y, "kind": "mix-shift", "what": "baseline mix"}]
        for t, k in ((a, "longform"), (b, "chat")):
            t0, t1 = renewal(rng, H, p["sem_degrade_gap_s"], p["sem_degrade_s"],
                             lambda n: np.full(n, p["sem_degrade_s"]))
            windows += [(t, CLASSES.index(k), x, y, p["sem_factor"]) for x, y in zip(t0, t1)]
            n_events += 2 * len(t0)
            for x, y in zip(t0[:MAX_EVENTS].tolist(), t1[:MAX_EVENTS].tolist()):
                events += [{"t_s": x, "kind": "degrade", "what": f"{k} x{p['sem_factor']:g} on {tname[t]}"},
                           {"t_s": y, "kind": "degrade-end", "what": f"{k} on {tname[t]} back to normal"}]

    if "churn" in procs:
        n_leave = min(max(1, round(p["churn_leave"] * D0)), max(D0 - 1, 1))  # one stays if D0 > 1
        n_join = max(1, round(p["churn_join"] * D0))
        gone = rng.permutation(D0)[:n_leave]
        for i, d in enumerate(gone):
            leave[d] = p["churn_leave_at_s"] + i * p["churn_spacing_s"]
            events.append({"t_s": leave[d], "kind": "leave", "what": f"device {d} ({tname[types[d]]}) leaves"})
        new = [_unseen_type(priors, types, "--fleet", "join")] + [int(types[i % D0]) for i in range(n_join - 1)]
        fj = np.exp(instance_spread * rng.standard_normal(n_join))
        for i, t in enumerate(new):
            f = add_device(t, fj[i], p["churn_join_at_s"] + i * p["churn_spacing_s"])
            seen = " (a type never seen before)" if i == 0 else ""
            events.append({"t_s": join[-1], "kind": "join",
                           "what": f"device {len(dev_types) - 1} ({tname[t]}) joins{seen}"})

    D = len(dev_types)
    if "drift" in procs:
        R = p["drift_ramp_s"]
        for d in _pick(rng, D, p["drift_devices"]):
            kinds = []                                           # ramp (True) or step per episode

            def on_len(n, kinds=kinds):
                ramp = rng.random(n) < 0.5
                kinds.append(ramp)
                return np.where(ramp, 2 * R, 0.0) + rng.exponential(p["drift_hold_s"], n)
            t0, t1 = renewal(rng, H, p["drift_gap_s"], R + p["drift_hold_s"], on_len)
            n = len(t0)
            r = np.concatenate(kinds)[:n]
            up = np.where(r, R, 0.0)
            m = np.where(r, p["drift_ramp_mult"], p["drift_step_mult"])
            peak_end = t1 - up
            kt = np.column_stack([t0, t0 + up, peak_end, t1]).ravel()
            km = np.column_stack([np.ones(n), m, m, np.ones(n)]).ravel()
            drift[d] = (kt, km)
            n_events += 2 * n
            label = f"device {d} ({tname[dev_types[d]]})"
            for x, y, rr, mm in list(zip(t0.tolist(), peak_end.tolist(), r.tolist(), m.tolist()))[:MAX_EVENTS]:
                kind = "drift-ramp" if rr else "drift-step"
                how = f"ramps to x{mm:g} over {R:g} s" if rr else f"steps to x{mm:g}"
                events += [{"t_s": x, "kind": kind, "what": f"{label} {how}"},
                           {"t_s": y, "kind": "recover", "what": f"{label} back to x1"}]

    if "interference" in procs:
        x = p["intf_factor"]
        on_share = p["intf_on_s"] / (p["intf_on_s"] + p["intf_off_s"])
        for d in _pick(rng, D, p["intf_devices"]):
            t0, t1 = renewal(rng, H, p["intf_off_s"], p["intf_on_s"],
                             lambda n: rng.exponential(p["intf_on_s"], n))
            steps[d] = (np.column_stack([t0, t1]).ravel(),
                        np.tile([x, 1.0], len(t0)))
            stationary[d] *= on_share / x + (1 - on_share)
            n_events += 2 * len(t0)
            if len(t0):
                events.append({"t_s": float(t0[0]), "kind": "interference",
                               "what": f"device {d} ({tname[dev_types[d]]}): x{x:g} on/off, "
                                       f"{len(t0)} on periods"})

    if "failure" in procs:
        up = p["fail_mtbf_s"] / (p["fail_mtbf_s"] + p["fail_mttr_s"])
        for d in _pick(rng, D, p["fail_devices"]):
            t0, t1 = renewal(rng, H, p["fail_mtbf_s"], p["fail_mttr_s"],
                             lambda n: rng.exponential(p["fail_mttr_s"], n))
            fails[d] = (t0, t1)
            stationary[d] *= up
            n_events += 2 * len(t0)
            label = f"device {d} ({tname[dev_types[d]]})"
            for x, y in list(zip(t0.tolist(), t1.tolist()))[:MAX_EVENTS]:
                events += [{"t_s": x, "kind": "fail", "what": f"{label} hangs"},
                           {"t_s": y, "kind": "recover", "what": f"{label} back"}]

    if overlay:
        events = [e for e in events if e["kind"] != "mix-shift"]
        regimes = regimes[:1]
    dev_types = np.array(dev_types, np.int32)
    combined = [combine_steps(*g, *h) for g, h in zip(drift, steps)]
    env = _env(priors, dev_types, join, leave, combined, f, windows, fails, known)
    slow_env = _env(priors, dev_types, join, leave, drift, f, windows, None, known)
    events.sort(key=lambda e: e["t_s"])
    n_events += len(events)
    if len(events) > MAX_EVENTS:
        events = events[:MAX_EVENTS]
    env.extra = {"scenario": name, "events": events, "n_events": n_events,
                 "instance_factor": f.round(6).tolist(), "scenario_params": p,
                 "classes_model": dict(CLASS_MODEL), "horizon_s": H}
    order = np.argsort([r[0] for r in regimes], kind="stable")
    regimes = [regimes[i] for i in order]
    return Scenario(env=env, mix_t_s=np.array([r[0] for r in regimes]),
                    mix_w=np.array([[r[1][k] for k in CLASSES] for r in regimes]),
                    image_steps=np.array([r[2] for r in regimes], np.int32),
                    events=events, params=p, stationary=np.array(stationary), slow_env=slow_env)


def _csr(per_device):
    """CSR pointers and the concatenated (a, b) arrays of a list of per-device array pairs."""
    ptr = np.concatenate(([0], np.cumsum([len(a) for a, _ in per_device]))).astype(np.int64)
    a = np.concatenate([np.asarray(a, float) for a, _ in per_device]) if per_device else np.zeros(0)
    b = np.concatenate([np.asarray(b, float) for _, b in per_device]) if per_device else np.zeros(0)
    return ptr, a, b


def _env(priors, dev_types, join, leave, knots, f, windows, fails, known) -> Env:
    """Assemble the Env; instance (and type) factors multiply every knot (one knot at 0 if
    none); semantic windows sorted by start."""
    knots = [(t, m * fd) if len(t) else (np.zeros(1), np.full(1, fd)) for (t, m), fd in zip(knots, f)]
    ptr, kt, km = _csr(knots)
    windows = sorted(windows, key=lambda w: w[2])
    w = list(zip(*windows)) if windows else [[]] * 5
    fp, f0, f1 = _csr(fails) if fails is not None else (None, None, None)
    return Env(
        models=list(priors.models), model_kind=np.asarray(priors.model_kind, np.int8),
        classes=list(CLASSES), device_types=list(priors.device_types),
        prior_a=np.asarray(priors.a, float), prior_b=np.asarray(priors.b, float),
        prior_c=np.asarray(priors.c, float), prior_sigma=np.asarray(priors.sigma, float),
        prior_available=np.asarray(priors.available, bool),
        device_type=dev_types, hosts=np.asarray(priors.available, bool)[dev_types],
        join_s=np.array(join, float), leave_s=np.array(leave, float),
        drift_ptr=ptr, drift_t_s=kt, drift_mult=km,
        sem_device_type=np.array(w[0], np.int32), sem_klass=np.array(w[1], np.int16),
        sem_t0_s=np.array(w[2], float), sem_t1_s=np.array(w[3], float),
        sem_factor=np.array(w[4], float), prior_provenance=priors.provenance_json(),
        fail_ptr=fp, fail_t0_s=f0, fail_t1_s=f1,
        prior_known=np.asarray(priors.available, bool) & known[:, None])
