"""Evaluate the change-point detectors on synthetic residual streams (river-style).

The evaluation protocol follows river's drift-detector benchmarks: many seeded streams of
N(0, 1) noise with one known change, the detector run over each stream exactly as the
kernel runs it, and three numbers per (detector, thresholds, change):

* **detection delay**: samples from the change to the first alarm at or after it
  (mean, median and 95th percentile over the runs that detected it);
* **missed detections**: runs with no alarm within ``window`` (1000) samples after the change;
* **false-alarm rate**: alarms per 10^5 samples on long stationary streams (and the mean
  run length between them, ARL0).

The streams are the normalised residuals of ``sim.kernel._learn``:
``u = (log(observed / predicted) + sigma^2 / 2) / sigma`` is N(0, 1) while the estimate is
right and shifts by ``log(k) / sigma`` after a k-fold slowdown. A step jumps to the shift at
the change; a ramp rises linearly to it over ``ramp`` samples (delay counted from the start
of the ramp).

The driver (``run_streams``) calls the same nopython update functions the kernel calls
(``cusum_update``, ``page_hinkley_update``, ``reset_detectors`` over a ``det[D, N_DET]``
array) with the kernel's gating: no alarm in the first ``det_min_samples`` residuals after
a reset, a reset after each alarm, and a minimum gap between alarms (in samples here; the
kernel's gap is in simulated seconds). Optionally the predictor *tracks* the change the
way the online estimators do, as an EWMA of the log residual with gain ``track`` per sample
(``--track``), which shrinks the residual after the change and makes small steps harder
to catch: the kernel's RLS forgetting (0.98, gain ~0.02) and per-class factor (0.1 per
sample of the class, ~0.025 per device sample with 4 classes) add up to about 0.045.

Command (the table in docs/DETECTORS.md)::

    python -m e3fast.detect.evaluate --runs 1000 --stationary 10000000 --seed 0
"""
import argparse
import math
import sys
import time

import numpy as np
from numba import njit

from ..router.config import DEFAULTS, INDEX
from ..sim.state import DET_LAST_ALARM_S, DET_SINCE_ALARM, N_DET
from .detectors import cusum_update, page_hinkley_update, reset_detectors

CUSUM = 0
PAGE_HINKLEY = 1
DETECTOR_NAMES = ("cusum", "page-hinkley")

SIGMA = 0.3          # residual log-sd used to turn a k-fold slowdown into a shift log(k)/sigma
PRE_CHANGE = 1000    # stationary samples before the change (after the warm-up)
WINDOW = 1000        # a change not detected within this many samples counts as missed

#: (label, factor k, ramp length in samples; 0 = step)
CHANGES = (("step x1.5", 1.5, 0), ("step x2", 2.0, 0), ("step x4", 4.0, 0),
           ("step x0.5", 0.5, 0), ("ramp x2 /100", 2.0, 100), ("ramp x2 /500", 2.0, 500))


def default_detectors():
    """(detector, slack, threshold) at the router defaults and at half / double thresholds."""
    k, h = DEFAULTS[INDEX["cusum_k"]], DEFAULTS[INDEX["cusum_h"]]
    delta, lam = DEFAULTS[INDEX["ph_delta"]], DEFAULTS[INDEX["ph_lambda"]]
    return [(CUSUM, k, h / 2), (CUSUM, k, h), (CUSUM, k, 2 * h), (CUSUM, 2 * k, h),
            (PAGE_HINKLEY, delta, lam / 2), (PAGE_HINKLEY, delta, lam),
            (PAGE_HINKLEY, delta, 2 * lam), (PAGE_HINKLEY, 2 * delta, lam)]


@njit(cache=True)
def run_streams(noise, shift, kind, slack, threshold, min_samples, min_gap, track,
                change_at, window):
    """Run one detector over each row of `noise` + `shift` (both [R, N]).

    Returns (first_alarm [R]: samples from `change_at` to the first alarm at or after it
    within `window`, -1 if none; alarms [R]: every alarm of the row; before [R]: alarms before
    `change_at`). `track` > 0 subtracts an EWMA (gain `track`) of the past residuals, like an
    estimator that learns the new level. Gating as in ``sim.kernel._learn``.
    """
    runs, n = noise.shape
    det = np.zeros((1, N_DET))
    first = np.full(runs, -1, np.int64)
    alarms = np.zeros(runs, np.int64)
    before = np.zeros(runs, np.int64)
    for r in range(runs):
        for j in range(N_DET):
            det[0, j] = 0.0
        last_alarm = -1
        level = 0.0  # the tracking predictor's estimate of the residual mean
        for i in range(n):
            x = noise[r, i] + shift[r, i]
            u = x - level
            level += track * u
            det[0, DET_SINCE_ALARM] += 1.0
            if det[0, DET_SINCE_ALARM] <= min_samples:
                continue
            if kind == 0:
                stat = cusum_update(det, 0, u, slack)
            else:
                stat = page_hinkley_update(det, 0, u, slack)
            if last_alarm >= 0 and i - last_alarm < min_gap:
                continue
            if stat > threshold:
                alarms[r] += 1
                reset_detectors(det, 0)
                det[0, DET_LAST_ALARM_S] = i
                last_alarm = i
                if i < change_at:
                    before[r] += 1
                elif first[r] < 0 and i - change_at < window:
                    first[r] = i - change_at
    return first, alarms, before


def shift_profile(n: int, change_at: int, k: float, ramp: int, sigma: float = SIGMA) -> np.ndarray:
    """Residual mean over a stream of `n` samples: 0, then log(k)/sigma from `change_at`
    (a step) or rising linearly to it over `ramp` samples."""
    s = np.zeros(n)
    size = math.log(k) / sigma
    if ramp <= 0:
        s[change_at:] = size
    else:
        i = np.arange(n - change_at)
        s[change_at:] = size * np.minimum((i + 1) / ramp, 1.0)
    return s


def evaluate_change(kind, slack, threshold, k, ramp, *, runs=1000, seed=0,
                    min_samples=None, min_gap=0, track=0.0, pre=PRE_CHANGE,
                    window=WINDOW, sigma=SIGMA) -> dict:
    """Delay and missed detections of one detector on `runs` seeded streams with one change."""
    if min_samples is None:
        min_samples = int(DEFAULTS[INDEX["det_min_samples"]])
    change_at = int(min_samples) + pre
    n = change_at + window
    rng = np.random.default_rng([seed, kind, int(k * 1000), ramp])
    noise = rng.standard_normal((runs, n))
    shift = np.broadcast_to(shift_profile(n, change_at, k, ramp, sigma), (runs, n))
    first, _, before = run_streams(noise, np.ascontiguousarray(shift), kind, float(slack),
                                   float(threshold), float(min_samples), int(min_gap),
                                   float(track), change_at, window)
    hit = first[first >= 0]
    return {"runs": runs, "missed": int((first < 0).sum()),
            "mean_delay": float(hit.mean()) if hit.size else float("nan"),
            "median_delay": float(np.median(hit)) if hit.size else float("nan"),
            "p95_delay": float(np.percentile(hit, 95)) if hit.size else float("nan"),
            "max_delay": int(hit.max()) if hit.size else -1,
            "false_alarms_before": int(before.sum())}


def evaluate_stationary(kind, slack, threshold, *, samples=10_000_000, seed=0,
                        min_samples=None, min_gap=0, track=0.0, chunk=1_000_000) -> dict:
    """False alarms on `samples` stationary N(0, 1) residuals (streams of `chunk` samples)."""
    if min_samples is None:
        min_samples = int(DEFAULTS[INDEX["det_min_samples"]])
    rng = np.random.default_rng([seed, kind, 7])
    total = alarms = 0
    while total < samples:
        b = min(chunk, samples - total)
        noise = rng.standard_normal((1, b))
        _, a, _ = run_streams(noise, np.zeros((1, b)), kind, float(slack), float(threshold),
                              float(min_samples), int(min_gap), float(track), b, 0)
        alarms += int(a.sum())
        total += b
    return {"samples": total, "alarms": alarms, "per_1e5": alarms * 1e5 / total,
            "arl0": total / alarms if alarms else float("inf")}


def _params(kind, slack, threshold) -> str:
    if kind == CUSUM:
        return f"k={slack:g} h={threshold:g}"
    return f"delta={slack:g} lambda={threshold:g}"


def _tag(kind, slack, threshold) -> str:
    k, h = DEFAULTS[INDEX["cusum_k"]], DEFAULTS[INDEX["cusum_h"]]
    delta, lam = DEFAULTS[INDEX["ph_delta"]], DEFAULTS[INDEX["ph_lambda"]]
    default = (slack, threshold) == ((k, h) if kind == CUSUM else (delta, lam))
    return " (default)" if default else ""


def _fmt(x, spec="{:.1f}"):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else spec.format(x)


def markdown_tables(runs=1000, stationary=10_000_000, seed=0, track=0.0, detectors=None,
                    changes=CHANGES) -> str:
    """The false-alarm table and the detection table, in Markdown."""
    detectors = detectors or default_detectors()
    fa_rows = ["| detector | parameters | stationary samples | alarms | per 10^5 samples | ARL0 (samples) |",
               "|---|---|---:|---:|---:|---:|"]
    det_rows = ["| detector | parameters | change (shift in sd) | mean delay | median | p95 | "
                "missed (of runs) |",
                "|---|---|---|---:|---:|---:|---:|"]
    for kind, slack, thr in detectors:
        name, params = DETECTOR_NAMES[kind], _params(kind, slack, thr) + _tag(kind, slack, thr)
        fa = evaluate_stationary(kind, slack, thr, samples=stationary, seed=seed, track=track)
        fa_rows.append(f"| {name} | {params} | {fa['samples']:,} | {fa['alarms']} | "
                       f"{fa['per_1e5']:.3f} | {_fmt(fa['arl0'], '{:,.0f}')} |")
        for label, k, ramp in changes:
            r = evaluate_change(kind, slack, thr, k, ramp, runs=runs, seed=seed, track=track)
            det_rows.append(
                f"| {name} | {params} | {label} ({math.log(k) / SIGMA:+.2f}) | "
                f"{_fmt(r['mean_delay'])} | {_fmt(r['median_delay'], '{:.0f}')} | "
                f"{_fmt(r['p95_delay'], '{:.0f}')} | {r['missed']} / {r['runs']} |")
    return "\n".join(fa_rows) + "\n\n" + "\n".join(det_rows) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m e3fast.detect.evaluate",
                                description="detection delay, false-alarm rate and missed "
                                            "detections of CUSUM and Page-Hinkley on synthetic "
                                            "residual streams (Markdown tables on stdout)")
    p.add_argument("--runs", type=int, default=1000, help="seeded streams per change (default 1000)")
    p.add_argument("--stationary", type=int, default=10_000_000,
                   help="stationary samples for the false-alarm rate (default 10^7)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--track", type=float, default=0.0,
                   help="gain of a tracking predictor (0 = fixed predictor; ~0.045 mimics the "
                        "kernel's estimators)")
    p.add_argument("--defaults-only", action="store_true",
                   help="only the default thresholds of both detectors")
    a = p.parse_args(argv)
    if a.runs < 1 or a.stationary < 1 or not (0.0 <= a.track < 1.0):
        p.error("--runs and --stationary must be >= 1 and 0 <= --track < 1")
    detectors = default_detectors()
    if a.defaults_only:
        detectors = [d for d in detectors if _tag(*d)]
    t0 = time.perf_counter()
    print(markdown_tables(a.runs, a.stationary, a.seed, a.track, detectors), end="")
    print(f"\n({a.runs} runs per change, sigma {SIGMA}, {PRE_CHANGE} samples before the change "
          f"after a {int(DEFAULTS[INDEX['det_min_samples']])}-sample warm-up, missed = no alarm "
          f"within {WINDOW} samples, track {a.track:g}, seed {a.seed}; "
          f"{time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
