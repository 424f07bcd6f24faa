"""Change-point detectors on normalised service-time residuals, per device (nopython).

The residual of a completion is ``u = (log(observed / predicted) + sigma^2/2) / sigma``:
about N(0, 1) while the estimate is right, shifted by ``log(k)/sigma`` after a k-fold
slowdown. Both detectors are two-sided and share one shape: ``*_update(det, d, u, ...)``
returns the statistic after the update; the caller compares it with the threshold.

* CUSUM (Page 1954): ``g+ = max(0, g+ + u - k)``, ``g- = max(0, g- - u - k)``; alarm when
  ``max(g+, g-) > h``.
* Page-Hinkley: cumulative deviation from the running mean minus ``delta``; alarm when it
  rises more than ``lambda`` above its minimum (or falls below its maximum).
"""
from numba import njit

from ..sim.state import (DET_CUSUM_NEG, DET_CUSUM_POS, DET_PH_DOWN, DET_PH_DOWN_MAX,
                         DET_PH_MEAN, DET_PH_N, DET_PH_UP, DET_PH_UP_MIN, DET_SINCE_ALARM)


@njit(cache=True, inline="always")
def cusum_update(det, d, u, k):
    """Two-sided CUSUM step with residual `u` and allowance `k`; returns max(g+, g-)."""
    gp = max(0.0, det[d, DET_CUSUM_POS] + u - k)
    gn = max(0.0, det[d, DET_CUSUM_NEG] - u - k)
    det[d, DET_CUSUM_POS] = gp
    det[d, DET_CUSUM_NEG] = gn
    return max(gp, gn)


@njit(cache=True, inline="always")
def page_hinkley_update(det, d, u, delta):
    """Two-sided Page-Hinkley step with residual `u` and tolerance `delta`; returns the larger
    of the upward and downward test statistics."""
    n = det[d, DET_PH_N] + 1.0
    mean = det[d, DET_PH_MEAN] + (u - det[d, DET_PH_MEAN]) / n
    det[d, DET_PH_N] = n
    det[d, DET_PH_MEAN] = mean
    up = det[d, DET_PH_UP] + u - mean - delta
    down = det[d, DET_PH_DOWN] + u - mean + delta
    det[d, DET_PH_UP] = up
    det[d, DET_PH_DOWN] = down
    det[d, DET_PH_UP_MIN] = min(det[d, DET_PH_UP_MIN], up)
    det[d, DET_PH_DOWN_MAX] = max(det[d, DET_PH_DOWN_MAX], down)
    return max(up - det[d, DET_PH_UP_MIN], det[d, DET_PH_DOWN_MAX] - down)


@njit(cache=True, inline="always")
def reset_detectors(det, d):
    """Forget the statistics of device `d` (after an alarm, a join or a recalibration)."""
    for j in range(DET_SINCE_ALARM + 1):
        det[d, j] = 0.0
