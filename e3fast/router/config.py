"""The router/detector configuration array: one float64 vector the kernel reads and the
`configure_router` tool changes (within the bounds below).

Each entry: (name, default, low, high, meaning). Units in the meaning.
"""
import numpy as np

from ..fields import declare

PARAMS = (
    ("explore", 0.5, 0.0, 5.0,
     "exploration bonus: a pair with n observations looks explore/sqrt(1+n) cheaper (fraction)"),
    ("risk_weight", 2.0, 0.0, 20.0,
     "risk penalty: estimated service inflated by risk_weight x recent stutter rate of the "
     "(device, class)"),
    ("forget", 0.98, 0.9, 1.0,
     "forgetting factor of the recursive least squares estimators (1 = never forget)"),
    ("prior_weight", 1.0, 0.01, 100.0,
     "confidence in the MLPerf prior at (re)start, in equivalent observations"),
    ("class_alpha", 0.1, 0.0, 1.0,
     "learning rate of the per (device, class) service-time factor, in log space (semantic slowdowns)"),
    ("stutter_alpha", 0.05, 0.001, 1.0,
     "EWMA weight of the per (device, class) stutter rate"),
    ("stutter_tpot_s", 0.1, 0.001, 10.0,
     "a request stutters when its effective TPOT exceeds this (seconds per token; "
     "0.1 s = 10 tokens/s, about reading speed)"),
    ("cusum_k", 0.5, 0.0, 5.0, "CUSUM allowance, in residual standard deviations"),
    ("cusum_h", 12.0, 1.0, 1000.0, "CUSUM alarm threshold, in residual standard deviations"),
    ("ph_delta", 0.25, 0.0, 5.0, "Page-Hinkley tolerance, in residual standard deviations"),
    ("ph_lambda", 25.0, 1.0, 1000.0, "Page-Hinkley alarm threshold"),
    ("det_min_samples", 30.0, 1.0, 1e6,
     "observations a device needs (since its last alarm/reset) before it may alarm"),
    ("det_min_gap_s", 5.0, 0.0, 1e6, "minimum simulated time between two alarms of a device (s)"),
    ("detectors", 3.0, 0.0, 3.0, "bit mask of enabled detectors: 1 = CUSUM, 2 = Page-Hinkley"),
    ("tail_growth", 0.0, 0.0, 1.0,
     "hidden output lengths: how much of the heavy-tail growth of a running request's "
     "expected remaining time with its elapsed time E3 believes (1 = the linear "
     "mean-residual-life model; 0 = it never grows: a long run may also mean a slow device)"),
    ("length_risk", 0.0, 0.0, 10.0,
     "hidden output lengths: the cost of a device adds length_risk x the standard deviation "
     "of the request's service time there that the unknown length implies (0 = the expected "
     "completion time, which a mean-latency objective calls for; > 0 a risk premium)"),
)
NAMES = tuple(p[0] for p in PARAMS)
INDEX = {name: i for i, name in enumerate(NAMES)}
DEFAULTS = np.array([p[1] for p in PARAMS], dtype=np.float64)
LOW = np.array([p[2] for p in PARAMS], dtype=np.float64)
HIGH = np.array([p[3] for p in PARAMS], dtype=np.float64)

# index constants for the kernel, CFG_<NAME> (module-level ints are compile-time constants in
# Numba), and the shorter names the kernel has always used
declare(globals(), "CFG_", NAMES)
CFG_RISK, CFG_STUTTER_TPOT, CFG_DET_MIN_GAP = CFG_RISK_WEIGHT, CFG_STUTTER_TPOT_S, CFG_DET_MIN_GAP_S


def default_config(**overrides) -> np.ndarray:
    """A fresh configuration vector; `overrides` by name (validated against the bounds)."""
    cfg = DEFAULTS.copy()
    for name, value in overrides.items():
        cfg[INDEX[name]] = check_value(name, value)
    return cfg


def check_value(name: str, value) -> float:
    """`value` as float if `name` is a known parameter and value lies in its bounds, else
    ValueError with a message a user (or an LLM) can act on."""
    if name not in INDEX:
        raise ValueError(f"unknown router parameter {name!r}; known: {', '.join(NAMES)}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    i = INDEX[name]
    if not (LOW[i] <= v <= HIGH[i]):
        raise ValueError(f"{name}={v} out of range [{LOW[i]}, {HIGH[i]}]")
    return v
