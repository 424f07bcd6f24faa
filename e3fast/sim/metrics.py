"""Streaming, constant-memory metrics of a replay.

Counters and sums, log-linear histograms of latency and TTFT (quantiles with a relative
error of at most ``QUANTILE_RELATIVE_ERROR`` = 2**-9, about 0.2%), per-window time series
(windows by arrival time) and per-device totals. The kernel records into these arrays;
``summarize`` turns them into the numbers of ``summary.json``.
"""
import math
from typing import NamedTuple

import numpy as np
from numba import njit

from ..fields import declare

# counters (C_<NAME>), float sums in seconds (S_<NAME>), per-window columns (W_<NAME>, named
# in summaries by WINDOW_FIELDS)
COUNTS = declare(globals(), "C_", count="N_COUNTS", names=(
    "arrived", "completed", "dropped_no_device", "reroute_events", "llm_completed", "stutter",
    "alarms", "rerouted_requests", "joins", "leaves"))
SUMS = declare(globals(), "S_", count="N_SUMS", names=(
    "latency", "ttft", "tpot", "wait", "service", "latency_sq"))
_WINDOW_COLUMNS = {"completed": "completed", "latency": "latency_sum_s",
                   "llm": "llm_completed", "stutter": "stutter", "ttft": "ttft_sum_s",
                   "dropped": "dropped", "rerouted": "rerouted"}
declare(globals(), "W_", _WINDOW_COLUMNS, count="N_WINDOW_FIELDS")
WINDOW_FIELDS = tuple(_WINDOW_COLUMNS.values())

HIST_MIN_S = 1e-4     # durations below about this (seconds) land in bucket 0
HIST_MAX_S = 2.0**22  # and from this (about 48 days) on in the last bucket
HIST_SUB_BITS = 8     # buckets per power of two: 2**8
MAX_WINDOWS = 20_000  # time windows kept; later arrivals count in the last one


# --- the histogram bucket is a bit pattern: no log(), no table ---------------------------
# As in HdrHistogram: a positive double's exponent and its top HIST_SUB_BITS mantissa bits,
# i.e. its bits shifted right by 52 - HIST_SUB_BITS, number buckets that are monotone in
# the value. Within [2**e, 2**(e+1)) the buckets are 2**(e-8) s wide, so a bucket spans at
# most 2**-8 = 0.39% of its lower edge and its mid-point is within 2**-9 (relative) of
# every value in it.
import struct as _struct

from ..numba_private import float_bits as _float_bits

_SHIFT = 52 - HIST_SUB_BITS
QUANTILE_RELATIVE_ERROR = 2.0 ** -(HIST_SUB_BITS + 1)  # 0.195%


def _bits(x: float) -> int:
    return _struct.unpack("<q", _struct.pack("<d", x))[0]


_BASE = _bits(HIST_MIN_S) >> _SHIFT
HIST_BUCKETS = (_bits(HIST_MAX_S) >> _SHIFT) - _BASE + 1  # 9,054


class Metrics(NamedTuple):
    counts: np.ndarray         # [N_COUNTS] int64
    sums: np.ndarray           # [N_SUMS] float64
    hist_latency: np.ndarray   # [HIST_BUCKETS] int64
    hist_ttft: np.ndarray      # [HIST_BUCKETS] int64
    windows: np.ndarray        # [n_windows, N_WINDOW_FIELDS] float64
    dev_completed: np.ndarray  # [D] int64
    dev_busy_s: np.ndarray     # [D] float64


class PerRequest(NamedTuple):
    """Per-request output in trace order (length N when asked for, else 0)."""
    device: np.ndarray       # int32, -1 = dropped
    dispatch_s: np.ndarray   # last dispatch (a rerouted request is dispatched again)
    start_s: np.ndarray
    completion_s: np.ndarray
    ttft_s: np.ndarray
    tpot_s: np.ndarray       # effective TPOT (decode time / output tokens); NaN for diffusion
    stutter: np.ndarray      # uint8
    reroutes: np.ndarray     # int16


def new_metrics(n_devices: int, n_windows: int) -> Metrics:
    """Zeroed metrics for a fleet of `n_devices` and `n_windows` time windows."""
    return Metrics(np.zeros(N_COUNTS, np.int64), np.zeros(N_SUMS),
                   np.zeros(HIST_BUCKETS, np.int64), np.zeros(HIST_BUCKETS, np.int64),
                   np.zeros((max(1, min(n_windows, MAX_WINDOWS)), N_WINDOW_FIELDS)),
                   np.zeros(n_devices, np.int64), np.zeros(n_devices))


def new_per_request(n: int) -> PerRequest:
    """Per-request arrays for `n` requests (n = 0: not recorded)."""
    return PerRequest(np.full(n, -1, np.int32), np.full(n, np.nan), np.full(n, np.nan),
                      np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan),
                      np.zeros(n, np.uint8), np.zeros(n, np.int16))


@njit(cache=True, inline="always")
def bucket(x):
    """Histogram bucket of a duration `x` seconds (branch-free; NaN lands in the last)."""
    return min(max((_float_bits(x) >> _SHIFT) - _BASE, 0), HIST_BUCKETS - 1)


@njit(cache=True, inline="always")
def window_of(met, arrival_s, window_s):
    """Index of the time window holding `arrival_s`."""
    w = int(arrival_s / window_s)
    return min(max(w, 0), met.windows.shape[0] - 1)


def bucket_value(b: np.ndarray) -> np.ndarray:
    """Representative value (mid-point) of histogram buckets `b`, seconds."""
    first = (np.asarray(b, np.int64) + _BASE) << _SHIFT
    return 0.5 * (first.view(np.float64) + (first + (1 << _SHIFT)).view(np.float64))


def quantile(hist: np.ndarray, q: float) -> float:
    """The q-quantile (0..1) of the values counted in `hist`, seconds (NaN if empty)."""
    total = int(hist.sum())
    if total == 0:
        return float("nan")
    rank = max(1, math.ceil(q * total))
    b = int(np.searchsorted(np.cumsum(hist), rank))
    return float(bucket_value(np.array([b]))[0])


def summarize(met: Metrics) -> dict:
    """The metric part of summary.json (seconds; rates as fractions)."""
    c, s = met.counts, met.sums
    done = int(c[C_COMPLETED])
    llm = int(c[C_LLM_COMPLETED])
    mean = s[S_LATENCY] / done if done else float("nan")
    var = s[S_LATENCY_SQ] / done - mean * mean if done else float("nan")
    return {
        "requests": int(c[C_ARRIVED]),
        "completed": done,
        "dropped": int(c[C_DROPPED_NO_DEVICE]),
        "dropped_by_reason": {"no_online_device_hosts_model": int(c[C_DROPPED_NO_DEVICE])},
        "rerouted": int(c[C_REROUTED_REQUESTS]),
        "reroute_events": int(c[C_REROUTE_EVENTS]),
        "device_joins": int(c[C_JOINS]),
        "device_leaves": int(c[C_LEAVES]),
        "alarms": int(c[C_ALARMS]),
        "mean_latency_s": mean,
        "std_latency_s": math.sqrt(max(var, 0.0)) if done else float("nan"),
        "p50_latency_s": quantile(met.hist_latency, 0.50),
        "p95_latency_s": quantile(met.hist_latency, 0.95),
        "p99_latency_s": quantile(met.hist_latency, 0.99),
        "mean_wait_s": s[S_WAIT] / done if done else float("nan"),
        "mean_service_s": s[S_SERVICE] / done if done else float("nan"),
        "llm_completed": llm,
        "mean_ttft_s": s[S_TTFT] / llm if llm else float("nan"),
        "p95_ttft_s": quantile(met.hist_ttft, 0.95),
        "mean_tpot_s": s[S_TPOT] / llm if llm else float("nan"),
        "stutter_rate": c[C_STUTTER] / llm if llm else 0.0,
        "quantile_relative_error": QUANTILE_RELATIVE_ERROR,
    }
