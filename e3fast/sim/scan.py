"""Branch-free scans over per-device arrays (nopython).

``lowest(values)`` is the minimum of a small array and the lowest index holding it: the
event loop's earliest completion among the devices' queue heads. Written with conditional
moves in two interleaved chains (even and odd indices), so that the comparisons do not
mispredict and do not all wait on each other. (The routing scans of ``router.policies``
keep one chain: two measured slower there.)
"""
import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def lowest(values):
    """(minimum, lowest index holding it) of `values`; (inf, -1) if every value is inf
    (or the array is empty). Values must not be NaN."""
    n = values.shape[0]
    even_i, even_v = -1, np.inf
    odd_i, odd_v = -1, np.inf
    for i in range(0, n - 1, 2):
        v = values[i]
        even_i = i if v < even_v else even_i
        even_v = min(even_v, v)
        u = values[i + 1]
        odd_i = i + 1 if u < odd_v else odd_i
        odd_v = min(odd_v, u)
    if n % 2:
        v = values[n - 1]
        even_i = n - 1 if v < even_v else even_i
        even_v = min(even_v, v)
    odd_first = (odd_v < even_v) | ((odd_v == even_v) & (odd_i < even_i))
    return min(even_v, odd_v), (odd_i if odd_first else even_i)
