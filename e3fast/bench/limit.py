"""The simplest possible Numba SECT loop: our practical speed limit.

One pass over the requests in arrival order; for each: every device that hosts the model
costs ``max(free_at - t, 0) + mean service``; the cheapest (lowest index on ties) gets the
request, whose true service time is ``(a + c*in + b*out) * mult * exp(sigma*z - sigma^2/2)``;
``free_at`` advances. No event queue, no slots, no metrics, no per-request output (unless an
output array is given), no churn, no time-varying drift or semantic windows: each device's
slowdown is frozen at its value at t = 0.

On a static trace (``cold-start``: no churn, no semantic windows, one drift knot per device =
the instance factor) this *is* the kernel's ``oracle`` policy, so the per-request latencies
agree with ``e3fast replay --policy oracle`` (checked in tests/bench/test_peer_simpy.py).
Everything else the kernel does (events, FIFO queues through a slot pool, histograms,
time windows, block streaming, checkpoints) is what the ratio kernel/limit measures.
"""
import time

import numpy as np
from numba import njit

from ..tracefile.reader import open_trace


def device_tables(env):
    """Per-device arrays ``(A, B, C, SIG, HOST, MULT)``: A, B, C, SIG, HOST are [D, M], the
    priors of each device's type; MULT [D] the device's slowdown frozen at t = 0 (drift knots:
    the multiplier of the first knot, else 1)."""
    t = np.asarray(env.device_type)
    mult = np.ones(len(t))
    for d in range(len(t)):
        lo, hi = int(env.drift_ptr[d]), int(env.drift_ptr[d + 1])
        if hi > lo:
            mult[d] = float(env.drift_mult[lo])
    a, b, c, sig = (np.ascontiguousarray(np.nan_to_num(np.asarray(x, float)[t]))
                    for x in (env.prior_a, env.prior_b, env.prior_c, env.prior_sigma))
    host = np.ascontiguousarray(env.hosts, dtype=np.uint8)
    return a, b, c, sig, host, mult


@njit(cache=True, nogil=True)
def sect_loop(arrival_s, model, in_tokens, out_tokens, z, A, B, C, SIG, HOST, MULT, free_at,
              latency):
    """SECT over one block of requests; `free_at` [D] carries over between blocks. Writes
    each request's latency into `latency` when it has one slot per request (else skips).
    Returns (sum of latencies s, requests served)."""
    n_dev = free_at.shape[0]
    record = latency.shape[0] > 0
    total = 0.0
    served = 0
    for i in range(arrival_s.shape[0]):
        t = arrival_s[i]
        m = model[i]
        x_in = in_tokens[i]
        x_out = out_tokens[i]
        best = -1
        best_cost = np.inf
        for d in range(n_dev):
            if HOST[d, m]:
                cost = (max(free_at[d] - t, 0.0)
                        + (A[d, m] + B[d, m] * x_out + C[d, m] * x_in) * MULT[d])
                if cost < best_cost:
                    best = d
                    best_cost = cost
        if best < 0:
            continue
        s = SIG[best, m]
        f = MULT[best] * np.exp(s * z[i] - 0.5 * s * s)
        pre = (A[best, m] + C[best, m] * x_in) * f
        dec = B[best, m] * x_out * f
        done = max(t, free_at[best]) + pre + dec
        free_at[best] = done
        total += done - t
        served += 1
        if record:
            latency[i] = done - t
    return total, served


def load_columns(path):
    """The request columns of trace `path` in memory (arrival_s, model, in, out, z) and
    its Env."""
    with open_trace(path) as tr:
        cols = tr.read_all()
        env = tr.env
    return (cols["arrival_s"], cols["model"], cols["in_tokens"], cols["out_tokens"],
            cols["z"]), env


def run_limit(path, *, repeat: int = 3, from_file: bool = False, block_rows: int = 65536,
              latencies: bool = False) -> dict:
    """Time ``sect_loop`` on trace `path`; best of `repeat`. In memory by default (the pure
    loop); ``from_file=True`` also streams the blocks from HDF5 with the same reader (and
    validation) as ``e3fast replay``. Returns requests, seconds, requests_per_s,
    ns_per_request, compile_s, mean_latency_s (and ``latency`` [N] when asked)."""
    t0 = time.perf_counter()
    dummy = np.zeros(1)
    one = np.ones((1, 1))
    sect_loop(dummy, np.zeros(1, np.int16), np.zeros(1, np.int32), np.ones(1, np.int32), dummy,
              one, one, one, one, np.ones((1, 1), np.uint8), np.ones(1), np.zeros(1), np.zeros(0))
    compile_s = time.perf_counter() - t0
    cols, env = load_columns(path) if not from_file else (None, open_trace(path).env)
    tables = device_tables(env)
    n = len(cols[0]) if cols is not None else None
    best, result = np.inf, None
    for _ in range(max(1, repeat)):
        free_at = np.zeros(len(env.device_type))
        t0 = time.perf_counter()
        if from_file:
            total = served = 0
            with open_trace(path) as tr:
                n = tr.n_requests
                lat = np.zeros(n if latencies else 0)
                for b in tr.blocks(block_rows):
                    out = lat[b.start:b.start + len(b.arrival_s)] if latencies else lat
                    s, k = sect_loop(b.arrival_s, b.model, b.in_tokens, b.out_tokens, b.z,
                                     *tables, free_at, out)
                    total += s
                    served += k
        else:
            lat = np.zeros(n if latencies else 0)
            total, served = sect_loop(*cols, *tables, free_at, lat)
        dt = time.perf_counter() - t0
        if dt < best:
            best, result = dt, (total, served, lat)
    total, served, lat = result
    out = {"requests": int(n), "seconds": best, "requests_per_s": n / best,
           "ns_per_request": best / n * 1e9, "compile_s": compile_s,
           "mean_latency_s": total / max(served, 1), "from_file": from_file}
    if latencies:
        out["latency"] = lat
    return out
