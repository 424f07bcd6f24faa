"""Change-point detectors (detect.detectors) through the evaluation driver (detect.evaluate,
which calls the same nopython update functions with the kernel's gating) and the kernel.

Documented numbers (docs/DETECTORS.md; sigma 0.3, default thresholds, a fixed predictor):

* a x2 step (+2.31 residual sd) is detected by CUSUM (k 0.5, h 12) within 15 samples and by
  Page-Hinkley (delta 0.25, lambda 25) within 25 samples, in every seeded run;
* false alarms on stationary N(0, 1) residuals: CUSUM 0.22, Page-Hinkley 0.07 per 10^5
  samples (10^7 samples); the tests allow at most 1 and 0.5 per 10^5 on 10^6 samples; at twice
  the default thresholds there is none.
"""
import numpy as np
import pytest

from e3fast.detect.detectors import cusum_update, page_hinkley_update, reset_detectors
from e3fast.detect.evaluate import (CUSUM, PAGE_HINKLEY, evaluate_change, evaluate_stationary,
                                    run_streams, shift_profile)
from e3fast.router.config import DEFAULTS, INDEX
from e3fast.runner import replay
from e3fast.sim.state import DET_CUSUM_NEG, DET_CUSUM_POS, N_DET
from e3fast.tracefile.generator import GenTraceOptions, generate_trace

K, H = DEFAULTS[INDEX["cusum_k"]], DEFAULTS[INDEX["cusum_h"]]
DELTA, LAM = DEFAULTS[INDEX["ph_delta"]], DEFAULTS[INDEX["ph_lambda"]]
DEFAULT = {CUSUM: (K, H), PAGE_HINKLEY: (DELTA, LAM)}
DELAY_BOUND = {CUSUM: 15, PAGE_HINKLEY: 25}          # samples, x2 step
FALSE_ALARM_BOUND = {CUSUM: 1.0, PAGE_HINKLEY: 0.5}  # per 10^5 stationary samples


def test_defaults_are_the_documented_ones():
    assert (K, H, DELTA, LAM) == (0.5, 12.0, 0.25, 25.0)
    assert DEFAULTS[INDEX["det_min_samples"]] == 30 and DEFAULTS[INDEX["det_min_gap_s"]] == 5


def test_cusum_matches_its_recursion():
    rng = np.random.default_rng(0)
    u = rng.normal(0.3, 1.0, 500)
    det = np.zeros((2, N_DET))
    gp = gn = 0.0
    for x in u:
        gp, gn = max(0.0, gp + x - K), max(0.0, gn - x - K)
        assert cusum_update(det, 1, x, K) == pytest.approx(max(gp, gn))
    assert det[1, DET_CUSUM_POS] == pytest.approx(gp) and det[1, DET_CUSUM_NEG] == pytest.approx(gn)
    assert not det[0].any()  # other devices untouched
    reset_detectors(det, 1)
    assert not det[1].any()


def test_page_hinkley_is_two_sided():
    for sign in (+1.0, -1.0):
        det = np.zeros((1, N_DET))
        stat = 0.0
        for i in range(400):
            stat = page_hinkley_update(det, 0, 0.0 if i < 200 else sign * 3.0, DELTA)
        assert stat > LAM


@pytest.mark.parametrize("kind", [CUSUM, PAGE_HINKLEY])
def test_alarm_within_documented_delay_after_a_x2_step(kind):
    r = evaluate_change(kind, *DEFAULT[kind], 2.0, 0, runs=300, seed=11)
    print(f"\n{kind=} x2 step: {r}")
    assert r["missed"] == 0
    assert r["max_delay"] <= DELAY_BOUND[kind]
    assert r["false_alarms_before"] <= 3


@pytest.mark.parametrize("kind", [CUSUM, PAGE_HINKLEY])
def test_false_alarms_on_1M_stationary_residuals(kind):
    r = evaluate_stationary(kind, *DEFAULT[kind], samples=1_000_000, seed=12)
    print(f"\n{kind=} 1M stationary: {r}")
    assert r["per_1e5"] <= FALSE_ALARM_BOUND[kind]
    slack, thr = DEFAULT[kind]
    assert evaluate_stationary(kind, slack, 2 * thr, samples=1_000_000, seed=12)["alarms"] == 0


def test_bigger_changes_are_found_sooner_and_ramps_later():
    d = {k: evaluate_change(CUSUM, K, H, k, 0, runs=200, seed=3)["mean_delay"] for k in (1.5, 2, 4)}
    assert d[4] < d[2] < d[1.5]
    ramp = evaluate_change(CUSUM, K, H, 2.0, 100, runs=200, seed=3)
    assert ramp["missed"] == 0 and ramp["mean_delay"] > d[2]


def test_driver_gating_min_samples_and_gap():
    """With a threshold every sample exceeds, alarms come exactly every min_samples + 1
    samples; a larger minimum gap spaces them by the gap instead."""
    noise = np.full((1, 1000), 5.0)
    zero = np.zeros((1, 1000))
    _, a, _ = run_streams(noise, zero, CUSUM, K, 1.0, 30.0, 0, 0.0, 1000, 0)
    assert a[0] == 1000 // 31
    _, a, _ = run_streams(noise, zero, CUSUM, K, 1.0, 30.0, 100, 0.0, 1000, 0)
    # after an alarm the statistic restarts (30-sample warm-up) but may only fire 100 later
    assert a[0] == len(range(30, 1000, 100))


def test_shift_profile():
    s = shift_profile(20, 10, 2.0, 0)
    assert not s[:10].any() and s[10:] == pytest.approx(np.log(2) / 0.3)
    r = shift_profile(20, 10, 2.0, 5)
    assert r[10] == pytest.approx(np.log(2) / 0.3 / 5) and r[14:] == pytest.approx(np.log(2) / 0.3)


class Recorder:
    """A controller that only records when each checkpoint happened (no actions)."""
    name = "recorder"

    def __init__(self):
        self.alarms = []

    def decide(self, obs, call):
        if obs["alarm"]["kind"] in ("cusum", "page-hinkley"):
            self.alarms.append((obs["alarm"]["device"], obs["t_s"]))
        return {}


@pytest.fixture(scope="module")
def drift_trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("det") / "drift.h5"
    generate_trace(GenTraceOptions(scenario="drift", requests=20_000, devices=8, seed=3,
                                   out=str(path)), progress=False)
    return path


def _gaps(alarms):
    by_dev = {}
    for d, t in alarms:
        by_dev.setdefault(d, []).append(t)
    return [b - a for ts in by_dev.values() for a, b in zip(ts, ts[1:])]


def test_kernel_respects_the_minimum_gap_between_alarms(drift_trace):
    """Hair-trigger thresholds make the kernel's detectors fire often; each device's alarms
    are still at least det_min_gap_s apart in simulated time (and closer without the gap)."""
    hair = {"cusum_h": 1.0, "ph_lambda": 1.0, "det_min_samples": 1.0}
    free, gapped = Recorder(), Recorder()
    replay(drift_trace, "e3", controller=free, config={**hair, "det_min_gap_s": 0.0})
    replay(drift_trace, "e3", controller=gapped, config={**hair, "det_min_gap_s": 500.0})
    assert min(_gaps(free.alarms)) < 500.0
    assert len(gapped.alarms) > 10
    assert min(_gaps(gapped.alarms)) >= 500.0
    assert len(gapped.alarms) < len(free.alarms)


def test_kernel_min_samples_after_an_alarm(drift_trace):
    """With min samples = n, a device that alarmed needs n more completions before it may
    alarm again: raising it from 1 to 200 cuts the alarm count."""
    counts = {}
    for n in (1.0, 200.0):
        rec = Recorder()
        replay(drift_trace, "e3", controller=rec,
               config={"cusum_h": 1.0, "ph_lambda": 1.0, "det_min_samples": n, "det_min_gap_s": 0.0})
        counts[n] = len(rec.alarms)
    assert counts[200.0] * 5 < counts[1.0]


def test_kernel_default_detectors_find_the_drift_step(drift_trace):
    """At the defaults, the drift scenario's abrupt x4 steps that last (held >= 10 min) raise
    an alarm on the stepped device while it is slow, and each alarm is a checkpoint."""
    from e3fast.tracefile.reader import open_trace
    with open_trace(drift_trace) as r:
        events, duration = r.env.extra["events"], r.duration_s
    dev = lambda e: int(e["what"].split()[1])  # noqa: E731 ("device d (...) ...")
    steps = []
    for e in events:
        if e["kind"] == "drift-step":
            back = next(x["t_s"] for x in events if x["kind"] == "recover" and dev(x) == dev(e)
                        and x["t_s"] >= e["t_s"])
            if back - e["t_s"] >= 600.0 and back <= duration:  # (events run past the trace)
                steps.append((dev(e), e["t_s"], back))
    assert len(steps) >= 3
    rec = Recorder()
    res = replay(drift_trace, "e3", controller=rec)
    assert res.summary["checkpoints"] >= len(steps)
    for d, t, back in steps:
        hits = [ta for dv, ta in rec.alarms if dv == d and t <= ta <= back]
        assert hits, f"no alarm on device {d} during its step at {t:.0f} s (held until {back:.0f} s)"