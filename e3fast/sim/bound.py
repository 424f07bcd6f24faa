"""The ``lower-bound`` reference: a true lower bound on every policy's latency, per request.

Each request is served alone (no waiting) on the device that would serve it fastest, at the
most favourable service start time at or after its arrival. For request r (arrival t, model
m, class k, noise draw z) and device d the service time started at s is (``sim.service``)::

    S(d, s) = (a + b*out + c*in)[type_d, m] * mult(d, k, s) * exp(sigma z - sigma^2/2)

where ``mult`` is the product of the time-varying multipliers (drift x semantic). Every
policy starts r on some device d that hosts m, at some time s >= t while d is online
(``join_d <= s < leave_d``), and its latency is at least S(d, s). So::

    bound(r) = min over d hosting m with max(join_d, t) < leave_d of
               (a + b*out + c*in) * noise * MIN_MULT(d, k, t)

is at most the latency of r under every policy, where ``MIN_MULT(d, k, t)`` is at most
``mult(d, k, s)`` for every ``s >= t`` (``min_multiplier``: the product of each factor's own
minimum over ``[t, inf)``; the minimum over the trace's remaining time, not over the whole
trace, so a device that has slowed down for good is not counted as fast). TTFT and TPOT are
bounded the same way with the prefill part ``(a + c*in)`` and the decode part per token
``b*out/out`` (each its own minimum over devices). Quantiles: a policy's latencies dominate
the bound's request by request, so its order statistics do too (the replay quantiles are
histogram buckets: a latency rounded one ulp below a bucket edge can cost one bucket, 0.4%).

Requests whose model no online device hosts at arrival are dropped by every policy; the
bound drops them too. A policy can additionally drop a request at a reroute (its device left
and no online device hosts the model); the bound still serves it, so the bound's mean is over
a superset of that policy's completed requests (compare per request, or where no policy
dropped more than the bound: tests/test_bound.py).

Vectorised NumPy over blocks of the trace (``tracefile.reader``), [SUB_ROWS x devices]
arrays at a time: constant memory. Recording into the replay metrics (``sim.metrics``) is a small
nopython loop.
"""
import time

import numpy as np
from numba import njit

from .metrics import (C_ARRIVED, C_COMPLETED, C_DROPPED_NO_DEVICE, C_LLM_COMPLETED, S_LATENCY,
                      S_LATENCY_SQ, S_SERVICE, S_TPOT, S_TTFT, W_COMPLETED, W_DROPPED, W_LATENCY,
                      W_LLM, W_TTFT, bucket, new_metrics, summarize, window_of)

NAME = "lower-bound"
SUB_ROWS = 16_384  # requests evaluated at once: [SUB_ROWS x devices] temporaries
LABEL = "lower-bound (bound, not a router)"


#: relative slack of the semantic bound inside windows (a product computed as exp(sum of logs))
SEM_SLACK = 1e-14


class MultiplierBounds:
    """Lower bounds of each device's time-varying service multipliers from a time on.

    Built once per trace from its ``Env``; ``min_multiplier(t, klass)`` gives the [n, D]
    array for a block of requests. Each factor of ``sim.service.slowdown`` has one method
    here (``_drift_min``, ``_semantic_min``); a new factor (e.g. interference or failure
    windows) adds one such method returning a lower bound of that factor over ``[t, inf)``
    and multiplies it into ``min_multiplier``: a product of per-factor lower bounds of
    positive factors bounds the product from below.
    """

    def __init__(self, env):
        self.env = env
        self.device_type = np.asarray(env.device_type, np.int64)
        D = len(self.device_type)
        # drift: per device its knots (t, m) and the suffix minimum of m (inf past the last)
        self.drift = []
        for d in range(D):
            lo, hi = int(env.drift_ptr[d]), int(env.drift_ptr[d + 1])
            t = np.asarray(env.drift_t_s[lo:hi], np.float64)
            m = np.asarray(env.drift_mult[lo:hi], np.float64)
            suffix = np.append(np.minimum.accumulate(m[::-1])[::-1], np.inf)
            self.drift.append((t, m, suffix))
        # semantic: per (type, class) the breakpoints of the piecewise-constant product of
        # its windows' factors and the suffix minimum of the values (index 0: before any)
        n_types = len(env.device_types)
        n_classes = len(env.classes)
        self.sem = {}
        wt = np.asarray(env.sem_device_type, np.int64)
        wk = np.asarray(env.sem_klass, np.int64)
        t0, t1 = np.asarray(env.sem_t0_s, float), np.asarray(env.sem_t1_s, float)
        f = np.asarray(env.sem_factor, float)
        for tp in range(n_types):
            for k in range(n_classes):
                w = np.flatnonzero((wt == tp) & (wk == k))
                if not len(w):
                    continue
                # a sweep over the window edges (O(W log W); recurring windows number tens
                # of thousands on long traces): a window multiplies its factor in at t0 and
                # out at t1, so the log of the product is a running sum of +-log(factor)
                fin = np.isfinite(t1[w])
                times = np.concatenate([t0[w], t1[w][fin]])
                steps = np.concatenate([np.log(f[w]), -np.log(f[w][fin])])
                active = np.concatenate([np.ones(len(w)), -np.ones(int(fin.sum()))])
                order = np.argsort(times, kind="stable")
                times, level = times[order], np.cumsum(steps[order])
                active = np.cumsum(active[order])
                # restart the sum where no window is open (rounding does not accumulate over
                # the trace, only within a group of overlapping windows)
                idle = np.flatnonzero(active < 0.5)
                if idle.size:
                    start = np.searchsorted(idle, np.arange(len(level)), side="left") - 1
                    level = level - np.where(start >= 0, level[idle[np.maximum(start, 0)]], 0.0)
                edges, last = np.unique(times[::-1], return_index=True)
                level, active = level[::-1][last], active[::-1][last]
                # no window open: exactly 1; else exp(sum of logs), lowered by SEM_SLACK so
                # that its rounding never lifts it above the kernel's product of the factors
                vals = np.concatenate([[1.0], np.where(active > 0.5,
                                                       np.exp(level) * (1 - SEM_SLACK), 1.0)])
                self.sem[tp, k] = (edges, np.minimum.accumulate(vals[::-1])[::-1])

    def _drift_min(self, t):
        """[n, D]: min over s >= t of each device's drift multiplier (piecewise linear in its
        knots, constant outside them: the value at t or a later knot)."""
        out = np.ones((len(t), len(self.drift)))
        for d, (kt, km, suffix) in enumerate(self.drift):
            if not len(kt):
                continue
            left = np.searchsorted(kt, t, side="right")  # knots at or before t
            i0 = np.maximum(left - 1, 0)
            i1 = np.minimum(left, len(kt) - 1)
            with np.errstate(invalid="ignore", divide="ignore"):
                w = (t - kt[i0]) / (kt[i1] - kt[i0])
            now = np.where(i0 == i1, km[i0], km[i0] + w * (km[i1] - km[i0]))
            out[:, d] = np.minimum(now, suffix[left])
        return out

    def _semantic_min(self, t, klass):
        """[n, D]: min over s >= t of the product of the semantic windows' factors."""
        out = np.ones((len(t), len(self.device_type)))
        for (tp, k), (edges, suffix) in self.sem.items():
            rows = np.flatnonzero(klass == k)
            if len(rows):
                v = suffix[np.searchsorted(edges, t[rows], side="right")]
                out[np.ix_(rows, np.flatnonzero(self.device_type == tp))] = v[:, None]
        return out

    def min_multiplier(self, t, klass):
        """[n, D]: a lower bound of ``slowdown(device, klass, s)`` over every s >= t."""
        return self._drift_min(t) * self._semantic_min(t, klass)


def bound_block(env, mb: MultiplierBounds, arrival_s, model, in_tokens, out_tokens, klass, z):
    """Per-request bounds of a block: (latency, ttft, tpot, device, served), seconds; device is
    the argmin of the latency bound, served is False for requests no online device can take at
    arrival (every policy drops those; their bounds are NaN)."""
    t = np.asarray(arrival_s, np.float64)
    model = np.asarray(model, np.int64)
    dt = mb.device_type
    hosts = np.asarray(env.hosts, bool)[:, model].T                      # [n, D]
    join, leave = np.asarray(env.join_s, float), np.asarray(env.leave_s, float)
    online_now = hosts & (join[None, :] <= t[:, None]) & (t[:, None] < leave[None, :])
    usable = hosts & (np.maximum(join[None, :], t[:, None]) < leave[None, :])
    a = np.asarray(env.prior_a)[dt[None, :], model[:, None]]
    b = np.asarray(env.prior_b)[dt[None, :], model[:, None]]
    c = np.asarray(env.prior_c)[dt[None, :], model[:, None]]
    sig = np.asarray(env.prior_sigma)[dt[None, :], model[:, None]]
    zz = np.asarray(z, float)[:, None]
    with np.errstate(invalid="ignore"):
        f = mb.min_multiplier(t, np.asarray(klass, np.int64)) * np.exp(sig * zz - 0.5 * sig * sig)
        prefill = (a + c * np.asarray(in_tokens, float)[:, None]) * f
        decode = b * np.asarray(out_tokens, float)[:, None] * f
    inf = np.inf
    total = np.where(usable, prefill + decode, inf)
    device = np.argmin(total, axis=1)
    served = online_now.any(axis=1)
    rows = np.arange(len(t))
    nan = np.nan
    latency = np.where(served, total[rows, device], nan)
    ttft = np.where(served, np.where(usable, prefill, inf).min(axis=1), nan)
    tpot = np.where(served, np.where(usable, decode, inf).min(axis=1)
                    / np.maximum(np.asarray(out_tokens, float), 1), nan)
    return latency, ttft, tpot, np.where(served, device, -1).astype(np.int32), served


@njit(cache=True)
def _record(met, arrival_s, latency, ttft, tpot, llm, window_s):
    """Count a block of bounds into the replay metrics (no waiting: wait 0, service =
    latency)."""
    for i in range(arrival_s.shape[0]):
        met.counts[C_ARRIVED] += 1
        w = window_of(met, arrival_s[i], window_s)
        if not np.isfinite(latency[i]):
            met.counts[C_DROPPED_NO_DEVICE] += 1
            met.windows[w, W_DROPPED] += 1
            continue
        met.counts[C_COMPLETED] += 1
        met.sums[S_LATENCY] += latency[i]
        met.sums[S_LATENCY_SQ] += latency[i] * latency[i]
        met.sums[S_SERVICE] += latency[i]
        met.hist_latency[bucket(latency[i])] += 1
        met.windows[w, W_COMPLETED] += 1
        met.windows[w, W_LATENCY] += latency[i]
        if llm[i]:
            met.counts[C_LLM_COMPLETED] += 1
            met.sums[S_TTFT] += ttft[i]
            met.sums[S_TPOT] += tpot[i]
            met.hist_ttft[bucket(ttft[i])] += 1
            met.windows[w, W_LLM] += 1
            met.windows[w, W_TTFT] += ttft[i]


def bound_trace(reader, block_rows: int, window_s: float, n_windows: int):
    """Stream the trace of `reader` block by block; return (metrics, read seconds)."""
    env = reader.env
    mb = MultiplierBounds(env)
    llm_model = np.asarray(env.model_kind) == 0
    met = new_metrics(len(mb.device_type), n_windows)
    read_s = 0.0
    if reader.n_requests == 0:
        return met, read_s
    blocks = reader.blocks(block_rows)
    while True:
        t0 = time.perf_counter()
        blk = next(blocks, None)
        read_s += time.perf_counter() - t0
        if blk is None:
            break
        for i in range(0, len(blk.arrival_s), SUB_ROWS):
            cols = [np.asarray(c[i:i + SUB_ROWS]) for c in blk[1:]]
            lat, ttft, tpot, _, _ = bound_block(env, mb, *cols)
            _record(met, np.ascontiguousarray(cols[0], np.float64), lat, ttft, tpot,
                    llm_model[cols[1].astype(np.int64)], float(window_s))
    return met, read_s


def bound_summary(met) -> dict:
    """The metric part of the bound's summary.json: the replay keys that are bounds, with no
    waiting, rerouting, alarms or stutter (a bound is not a router)."""
    s = summarize(met)
    s.update(reference=NAME, label=LABEL, mean_wait_s=0.0, stutter_rate=None, alarms=0,
             rerouted=0, reroute_events=0, device_joins=None, device_leaves=None)
    return s
