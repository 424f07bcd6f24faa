"""Streaming, constant-memory metrics of a replay.

Counters and sums, log-bucketed histograms of latency and TTFT (quantiles with a relative
error of at most ``HIST_RATIO - 1`` / 2, about 0.5%), per-window time series (windows by
arrival time) and per-device totals. The kernel records into these arrays; ``summarize``
turns them into the numbers of ``summary.json``.
"""
import math
from typing import NamedTuple

import numpy as np
from numba import njit

# counters
C_ARRIVED, C_COMPLETED, C_DROPPED_NO_DEVICE, C_REROUTE_EVENTS, C_LLM_COMPLETED, C_STUTTER, \
    C_ALARMS, C_REROUTED_REQUESTS, C_JOINS, C_LEAVES = range(10)
N_COUNTS = 10
# float sums (seconds)
S_LATENCY, S_TTFT, S_TPOT, S_WAIT, S_SERVICE, S_LATENCY_SQ = range(6)
N_SUMS = 6
# per-window columns
W_COMPLETED, W_LATENCY, W_LLM, W_STUTTER, W_TTFT, W_DROPPED, W_REROUTED = range(7)
WINDOW_FIELDS = ("completed", "latency_sum_s", "llm_completed", "stutter", "ttft_sum_s",
                 "dropped", "rerouted")
N_WINDOW_FIELDS = 7

HIST_MIN_S = 1e-4     # first bucket edge (seconds); smaller values land in bucket 0
HIST_RATIO = 1.01     # bucket edges grow geometrically by this ratio
HIST_BUCKETS = 2400   # up to 1e-4 * 1.01**2400 s, about 2.2e6 s
LOG_RATIO = math.log(HIST_RATIO)
LOG_MIN = math.log(HIST_MIN_S)
MAX_WINDOWS = 20_000


# --- fast exact bucket: no log() in the hot path --------------------------------------
# A table indexed by the exponent and the top 8 mantissa bits of x gives the bucket of the
# cell's first value; a cell (relative width 2**-8 = 0.4%) is narrower than a bucket (1%),
# so one comparison with the next bucket's exact lower edge finishes the job. The edges
# are computed with the same formula (math.log is the libm log the kernel calls), so the
# result equals _bucket_by_log for every double x (tests/bench checks it).
import struct as _struct
from numba import types as _types
from numba.extending import intrinsic as _intrinsic
from llvmlite import ir as _ir

_CELL_SHIFT = 44  # 52 - 8 mantissa bits


def _bucket_by_log(x):
    if x <= HIST_MIN_S:
        return 0
    return min(int((math.log(x) - LOG_MIN) / LOG_RATIO) + 1, HIST_BUCKETS - 1)


def _bits(x):
    return _struct.unpack("<q", _struct.pack("<d", x))[0]


def _edges():
    """edge[b] = the smallest double whose bucket is >= b (edge[0] = -inf, edge[B] = inf)."""
    edge = np.full(HIST_BUCKETS + 1, np.inf)
    edge[0] = -np.inf
    for b in range(1, HIST_BUCKETS):
        x = math.exp(LOG_MIN + (b - 1) * LOG_RATIO)  # within a few dozen ulps of the edge
        while _bucket_by_log(x) >= b:
            x = math.nextafter(x, 0.0)
        while _bucket_by_log(x) < b:
            x = math.nextafter(x, math.inf)
        edge[b] = x
    return edge


_EDGE = _edges()
_CELL_BASE = _bits(HIST_MIN_S) >> _CELL_SHIFT
_N_CELLS = (_bits(_EDGE[HIST_BUCKETS - 1]) >> _CELL_SHIFT) - _CELL_BASE + 1
_CELL_START = ((_CELL_BASE + np.arange(_N_CELLS, dtype=np.int64)) << _CELL_SHIFT).view(np.float64)
_CELL_BUCKET = np.maximum(np.searchsorted(_EDGE, _CELL_START, side="right") - 1, 1).astype(np.int64)


@_intrinsic
def _float_bits(typingctx, x):
    if not isinstance(x, _types.Float) or x.bitwidth != 64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], _ir.IntType(64))

    return _types.int64(x), codegen


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
    """Histogram bucket of a positive duration `x` seconds."""
    if x <= HIST_MIN_S:
        return 0
    i = (_float_bits(x) >> _CELL_SHIFT) - _CELL_BASE
    if i >= _N_CELLS or x != x:
        return HIST_BUCKETS - 1
    b = _CELL_BUCKET[i]
    return b + (1 if x >= _EDGE[b + 1] else 0)  # a conditional move, not a branch


@njit(cache=True, inline="always")
def window_of(met, arrival_s, window_s):
    """Index of the time window holding `arrival_s`."""
    w = int(arrival_s / window_s)
    return min(max(w, 0), met.windows.shape[0] - 1)


def bucket_value(b: np.ndarray) -> np.ndarray:
    """Representative value (geometric mid-point) of histogram buckets `b`, seconds."""
    lo = HIST_MIN_S * HIST_RATIO ** (b - 1.0)
    return np.where(b == 0, HIST_MIN_S, lo * math.sqrt(HIST_RATIO))


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
        "quantile_relative_error": (HIST_RATIO - 1) / 2,
    }
