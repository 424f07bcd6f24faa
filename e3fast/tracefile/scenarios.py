"""Fleets and scenario timelines -> `Env` (pure functions of the priors, options and an RNG).

All event times are fractions of the nominal trace duration T (= requests / arrival rate),
so a scenario keeps its shape at any length. See docs/SCENARIOS.md for the reasoning.

* Fleet: ``--fleet type:count,...`` or ``--devices D`` cycling over ``DEFAULT_FLEET``
  (slow and fast types interleaved). A device hosts every model its type has priors for.
* Instance factors (all scenarios): device d runs ``f_d = exp(N(0, spread^2))`` times
  slower than its type's prior (``--instance-spread``, default 0.3), encoded by scaling its
  drift knots (one knot at t=0 when it has no drift). Real deployments differ from tuned
  MLPerf submissions (MLPerf itself shows 2.4x on the same Jetson Orin across software
  versions), so static priors are wrong by design here, which favours learning routers.
* cold-start: static fleet, nothing else.
* semantic: mix bursts (longform, then many-step image) and (device type, class) slowdown
  windows on the fastest types (the stutter case).
* churn: random devices leave, new ones join later, the first of a type absent at start.
* drift: hidden ramps and steps on some devices, half of them recovering.
"""
from dataclasses import dataclass, field

import numpy as np

from ..errors import E3Error
from .schema import Env
from .workload import BASELINE_MIX, BURST_IMAGE_STEPS, CLASS_MODEL, CLASSES, IMAGE_STEPS, class_means

SCENARIOS = ("cold-start", "semantic", "churn", "drift")

#: default fleet order: interleaves slow and fast device types (filtered to the priors).
DEFAULT_FLEET = ("jetson-agx-orin-64g", "rtx-4090", "nvidia-l4", "l40s", "arc-pro-b60")

#: scenario -> {parameter: (default, help)}. Times ("_at") and lengths ("_len", "_spacing",
#: "_hold") are fractions of the nominal duration T.
SCENARIO_PARAMS = {
    "cold-start": {},
    "semantic": {
        "sem_longform_at": (0.25, "start of the longform burst; longform also slows on the fastest type from here"),
        "sem_image_at": (0.60, "start of the many-step (50) image burst"),
        "sem_burst_len": (0.15, "length of each mix burst"),
        "sem_burst_share": (0.6, "share of requests of the burst class during a burst"),
        "sem_degrade_at": (0.50, "start of the chat slowdown on the second-fastest type"),
        "sem_degrade_len": (0.35, "length of each slowdown window"),
        "sem_factor": (8.0, "service-time multiplier inside a slowdown window (8 pushes the fastest types past the 0.1 s/token stutter threshold)"),
    },
    "churn": {
        "churn_leave": (0.25, "fraction of the initial devices that leave (>= 1 device)"),
        "churn_leave_at": (0.30, "time of the first departure"),
        "churn_join": (0.25, "new devices joining, as a fraction of the initial fleet (>= 1)"),
        "churn_join_at": (0.60, "time of the first arrival of a new device"),
        "churn_spacing": (0.05, "gap between successive departures (and between joins)"),
    },
    "drift": {
        "drift_devices": (0.5, "fraction of devices that drift (>= 1)"),
        "drift_at": (0.15, "onset of the first drift"),
        "drift_spacing": (0.10, "gap between onsets on successive drifting devices"),
        "drift_ramp_mult": (3.0, "slowdown reached by a gradual ramp"),
        "drift_ramp_len": (0.20, "duration of a ramp (up, and down when recovering)"),
        "drift_step_mult": (4.0, "slowdown of an abrupt step"),
        "drift_hold": (0.15, "time a recovering drift stays at its peak before recovering"),
    },
}


@dataclass
class Scenario:
    """A built scenario: the environment, the request-mix timeline and the event list.

    ``mix_t_s`` [R] start times of mix regimes (first 0), ``mix_w`` [R, C] class shares,
    ``image_steps`` [R, 2] inclusive step range of image requests per regime.
    """
    env: Env
    mix_t_s: np.ndarray
    mix_w: np.ndarray
    image_steps: np.ndarray
    events: list = field(default_factory=list)
    params: dict = field(default_factory=dict)


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

    A parameter of another scenario given explicitly is an error (a likely typo).
    """
    if name not in SCENARIOS:
        raise E3Error(f"unknown scenario {name!r}", where="--scenario", fix=f"choose one of {', '.join(SCENARIOS)}")
    for other, table in SCENARIO_PARAMS.items():
        for key in table:
            if other != name and given.get(key) is not None:
                raise E3Error(f"{key} is a parameter of scenario {other}, not {name}",
                              where="--" + key.replace("_", "-"), fix=f"drop it or use --scenario {other}")
    out = {}
    for key, (default, _) in SCENARIO_PARAMS[name].items():
        v = given.get(key)
        v = default if v is None else float(v)
        if key.endswith("mult") or key == "sem_factor":
            ok, allowed = v >= 1, ">= 1 (a slowdown)"
        elif key.endswith(("_at", "_spacing", "_hold")):
            ok, allowed = 0 <= v <= 1, "in [0, 1] (a fraction of the trace duration)"
        else:
            ok, allowed = 0 < v <= 1, "in (0, 1] (a fraction)"
        if not ok:
            raise E3Error(f"{key} = {v} must be {allowed}", where="--" + key.replace("_", "-"),
                          fix=f"see `e3fast gen-trace --help`; default {default}")
        out[key] = v
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


def worst_capacity_ratio(env, priors, mix: dict = BASELINE_MIX, points: int = 2001) -> float:
    """min over the timeline of the fleet's true capacity / the initial fleet's capacity under
    the priors, for a scenario `env` built over a duration of 1 (times are fractions).

    True capacity at t: the devices online at t, each slowed by its drift multiplier (hidden
    instance factor included) and by the slowdown windows of its type, mix-weighted per class.
    """
    s = class_service_s(priors)[env.device_type]                # [D, C] seconds
    w = np.array([mix[k] for k in CLASSES])
    ts = np.linspace(0.0, 1.0, points)
    base = 0.0
    cap = np.zeros(points)
    for d in range(env.n_devices):
        ok = np.isfinite(s[d])
        if not ok.any():
            continue
        lo, hi = env.drift_ptr[d], env.drift_ptr[d + 1]
        mult = np.interp(ts, env.drift_t_s[lo:hi], env.drift_mult[lo:hi]) if hi > lo else 1.0
        f = np.ones((points, len(CLASSES)))                     # slowdown windows per class
        for j in np.flatnonzero(env.sem_device_type == env.device_type[d]):
            inside = (ts >= env.sem_t0_s[j]) & (ts < env.sem_t1_s[j])
            f[inside, env.sem_klass[j]] *= env.sem_factor[j]
        mean = (f[:, ok] * s[d, ok] * w[ok]).sum(1) / w[ok].sum()
        online = (ts >= env.join_s[d]) & (ts < env.leave_s[d])
        cap += np.where(online, 1.0 / (mean * mult), 0.0)
        if env.join_s[d] <= 0:
            base += 1.0 / ((s[d, ok] * w[ok]).sum() / w[ok].sum())
    return float(cap.min() / base)


def build_scenario(name, priors, types, duration_s, rng, params, instance_spread=0.3,
                   overlay=False) -> Scenario:
    """Build scenario ``name`` over the initial fleet ``types`` for a trace of ``duration_s``.

    ``params`` are resolved scenario parameters (see ``resolve_params``; missing = default);
    ``rng`` a NumPy Generator used in a fixed order; ``overlay`` (importers) drops mix
    shifts, which cannot apply to real requests.
    """
    p = resolve_params(name, params)
    T = float(duration_s)
    D0 = len(types)
    f = np.exp(instance_spread * rng.standard_normal(D0))
    dev_types = list(types)
    join, leave = [0.0] * D0, [np.inf] * D0
    knots = [[] for _ in range(D0)]                        # (t, mult) per device
    windows = []                                          # (type, class, t0, t1, factor)
    events = [{"t_s": 0.0, "kind": "start", "what": f"{name}: {D0} devices, estimates start empty"}]
    regimes = [(0.0, dict(BASELINE_MIX), IMAGE_STEPS)]
    tname = list(priors.device_types)

    if name == "semantic":
        speed = class_service_s(priors)[:, CLASSES.index("chat")]
        fleet_types = sorted(set(int(t) for t in types), key=lambda t: speed[t])
        fast = [t for t in fleet_types if np.isfinite(speed[t])] or fleet_types
        a, b = fast[0], fast[1] if len(fast) > 1 else fast[0]
        L, share = p["sem_burst_len"], p["sem_burst_share"]
        if abs(p["sem_longform_at"] - p["sem_image_at"]) < L:
            raise E3Error("the longform and image bursts overlap", where="--sem-image-at",
                          fix="start the bursts at least --sem-burst-len apart")
        for at, k, steps in ((p["sem_longform_at"], "longform", IMAGE_STEPS),
                             (p["sem_image_at"], "image", BURST_IMAGE_STEPS)):
            mix = {c: w * (1 - share) + (share if c == k else 0) for c, w in BASELINE_MIX.items()}
            regimes += [(at * T, mix, steps), ((at + L) * T, dict(BASELINE_MIX), IMAGE_STEPS)]
            what = f"{k} share -> {share:.0%}" + (f", steps {steps[0]}" if k == "image" else "")
            events += [{"t_s": at * T, "kind": "mix-shift", "what": what},
                       {"t_s": (at + L) * T, "kind": "mix-shift", "what": "baseline mix"}]
        for t, k, at in ((a, "longform", p["sem_longform_at"]), (b, "chat", p["sem_degrade_at"])):
            t1 = min(at + p["sem_degrade_len"], 1.0) * T
            windows.append((t, CLASSES.index(k), at * T, t1, p["sem_factor"]))
            events += [{"t_s": at * T, "kind": "degrade",
                        "what": f"{k} x{p['sem_factor']:g} on {tname[t]}"},
                       {"t_s": t1, "kind": "degrade-end", "what": f"{k} on {tname[t]} back to normal"}]

    elif name == "churn":
        n_leave = min(max(1, round(p["churn_leave"] * D0)), max(D0 - 1, 1))  # one stays if D0 > 1
        n_join = max(1, round(p["churn_join"] * D0))
        gone = rng.permutation(D0)[:n_leave]
        for i, d in enumerate(gone):
            leave[d] = min(p["churn_leave_at"] + i * p["churn_spacing"], 1.0) * T
            events.append({"t_s": leave[d], "kind": "leave", "what": f"device {d} ({tname[types[d]]}) leaves"})
        unseen = [t for t in range(len(tname)) if t not in set(int(x) for x in types)
                  and priors.available[t].any()]
        if not unseen:
            raise E3Error("every device type with priors is already in the fleet, so no unseen "
                          "type can join", where="--fleet",
                          fix="leave at least one device type out of the initial fleet")
        new = [unseen[0]] + [int(types[i % D0]) for i in range(n_join - 1)]
        fj = np.exp(instance_spread * rng.standard_normal(n_join))
        for i, t in enumerate(new):
            d = len(dev_types)
            dev_types.append(t)
            join.append(min(p["churn_join_at"] + i * p["churn_spacing"], 1.0) * T)
            leave.append(np.inf)
            knots.append([])
            f = np.append(f, fj[i])
            seen = " (a type never seen before)" if i == 0 else ""
            events.append({"t_s": join[d], "kind": "join", "what": f"device {d} ({tname[t]}) joins{seen}"})

    elif name == "drift":
        n = min(max(1, round(p["drift_devices"] * D0)), D0)
        for i, d in enumerate(rng.permutation(D0)[:n]):
            t0 = (p["drift_at"] + i * p["drift_spacing"]) * T
            ramp, recover = i % 2 == 0, i % 4 < 2
            label = f"device {d} ({tname[types[d]]})"
            if ramp:
                m, up = p["drift_ramp_mult"], p["drift_ramp_len"] * T
                knots[d] = [(t0, 1.0), (t0 + up, m)]
                events.append({"t_s": t0, "kind": "drift-ramp", "what": f"{label} ramps to x{m:g} over {up:.0f} s"})
                if recover:
                    t1 = t0 + up + p["drift_hold"] * T
                    knots[d] += [(t1, m), (t1 + up, 1.0)]
                    events.append({"t_s": t1, "kind": "recover", "what": f"{label} ramps back to x1"})
            else:
                m = p["drift_step_mult"]
                knots[d] = [(t0, 1.0), (t0, m)]
                events.append({"t_s": t0, "kind": "drift-step", "what": f"{label} steps to x{m:g}"})
                if recover:
                    t1 = t0 + p["drift_hold"] * T
                    knots[d] += [(t1, m), (t1, 1.0)]
                    events.append({"t_s": t1, "kind": "recover", "what": f"{label} steps back to x1"})

    if overlay:
        events = [e for e in events if e["kind"] != "mix-shift"]
        regimes = regimes[:1]
    env = _env(priors, np.array(dev_types, np.int32), join, leave, knots, f, windows)
    events.sort(key=lambda e: e["t_s"])
    env.extra = {"scenario": name, "events": events, "instance_factor": f.round(6).tolist(),
                 "scenario_params": p, "classes_model": dict(CLASS_MODEL)}
    order = np.argsort([r[0] for r in regimes], kind="stable")
    regimes = [regimes[i] for i in order]
    return Scenario(env=env, mix_t_s=np.array([r[0] for r in regimes]),
                    mix_w=np.array([[r[1][k] for k in CLASSES] for r in regimes]),
                    image_steps=np.array([r[2] for r in regimes], np.int32),
                    events=events, params=p)


def _env(priors, dev_types, join, leave, knots, f, windows) -> Env:
    """Assemble the Env; instance factors multiply every knot (one knot at 0 if none)."""
    knots = [[(t, m * fd) for t, m in k] or [(0.0, fd)] for k, fd in zip(knots, f)]
    ptr = np.concatenate(([0], np.cumsum([len(k) for k in knots]))).astype(np.int64)
    flat = [x for k in knots for x in k]
    w = list(zip(*windows)) if windows else [[]] * 5
    return Env(
        models=list(priors.models), model_kind=np.asarray(priors.model_kind, np.int8),
        classes=list(CLASSES), device_types=list(priors.device_types),
        prior_a=np.asarray(priors.a, float), prior_b=np.asarray(priors.b, float),
        prior_c=np.asarray(priors.c, float), prior_sigma=np.asarray(priors.sigma, float),
        prior_available=np.asarray(priors.available, bool),
        device_type=dev_types, hosts=np.asarray(priors.available, bool)[dev_types],
        join_s=np.array(join, float), leave_s=np.array(leave, float),
        drift_ptr=ptr, drift_t_s=np.array([t for t, _ in flat], float),
        drift_mult=np.array([m for _, m in flat], float),
        sem_device_type=np.array(w[0], np.int32), sem_klass=np.array(w[1], np.int16),
        sem_t0_s=np.array(w[2], float), sem_t1_s=np.array(w[3], float),
        sem_factor=np.array(w[4], float), prior_provenance=priors.provenance_json())
