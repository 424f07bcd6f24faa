"""The peer model, written plainly in SimPy: Poisson arrivals from a trace, FIFO devices
(one request at a time), SECT dispatch on known service times, lognormal service.

It is the model of e3fast's ``oracle`` policy on a static trace (``cold-start``: no churn,
no drift ramps or steps, no semantic windows; each device keeps its hidden instance factor):

* a request arriving at ``t`` goes to the device hosting its model with the smallest
  ``max(free_at[d] - t, 0) + mean_service(d)``, lowest index on ties. ``free_at[d]`` is when
  the device finishes the work already queued there: the router knows the service times of
  the queued requests (that is the "known service times" and exactly what the oracle uses).
  ``mean_service(d) = (a + b*out + c*in) * mult[d]`` is the true mean for that device.
* its service time is ``(a + c*in) * m + b*out * m`` with ``m = mult[d] * exp(sigma*z -
  sigma^2/2)``, with the trace's common random number ``z``;
* each device is a ``simpy.Resource`` of capacity 1 (FIFO); latency = completion - arrival.

``e3fast``'s ``sect`` policy is not this model even with exact priors: it estimates the
queued work from prior means (``backlog_est``), not from the realised service times.
"""
import math
import time

import numpy as np
import simpy

from .limit import device_tables, load_columns


def simpy_sect(arrival_s, model, in_tokens, out_tokens, z, A, B, C, SIG, HOST, MULT):
    """Run the SimPy model; returns the per-request latencies (s), NaN if not served."""
    env = simpy.Environment()
    n_dev = len(MULT)
    devices = [simpy.Resource(env, capacity=1) for _ in range(n_dev)]
    free_at = [0.0] * n_dev
    latency = np.full(len(arrival_s), np.nan)
    # plain Python lists: what a SimPy user would write (and faster than numpy scalars)
    arrival = arrival_s.tolist()
    model, in_tokens, out_tokens, z = (x.tolist() for x in (model, in_tokens, out_tokens, z))
    A, B, C, SIG, HOST, MULT = (x.tolist() for x in (A, B, C, SIG, HOST, MULT))

    def serve(i, d, service):
        with devices[d].request() as req:
            yield req
            yield env.timeout(service)
        latency[i] = env.now - arrival[i]

    def source():
        for i, t in enumerate(arrival):
            if t > env.now:
                yield env.timeout(t - env.now)
            m, x_in, x_out = model[i], in_tokens[i], out_tokens[i]
            best, best_cost = -1, math.inf
            for d in range(n_dev):
                if HOST[d][m]:
                    cost = (max(free_at[d] - t, 0.0)
                            + (A[d][m] + B[d][m] * x_out + C[d][m] * x_in) * MULT[d])
                    if cost < best_cost:
                        best, best_cost = d, cost
            if best < 0:
                continue
            s = SIG[best][m]
            f = MULT[best] * math.exp(s * z[i] - 0.5 * s * s)
            pre = (A[best][m] + C[best][m] * x_in) * f
            dec = B[best][m] * x_out * f
            start = max(t, free_at[best])
            free_at[best] = start + pre + dec
            env.process(serve(i, best, free_at[best] - start))

    env.process(source())
    env.run()
    return latency


def run_simpy(path, limit: int | None = None) -> dict:
    """Run the SimPy model on trace `path` (its first `limit` requests). Returns requests,
    seconds (simulation only, the trace already in memory), requests_per_s, latency [N]."""
    cols, env = load_columns(path)
    if limit is not None:
        cols = tuple(c[:limit] for c in cols)
    tables = device_tables(env)
    t0 = time.perf_counter()
    lat = simpy_sect(*cols, *tables)
    dt = time.perf_counter() - t0
    n = len(cols[0])
    return {"requests": n, "seconds": dt, "requests_per_s": n / dt, "latency": lat}


def static_trace_problems(env) -> list:
    """Why trace env `env` is not a static trace this model describes (empty list: it is)."""
    out = []
    if np.any(np.asarray(env.join_s) > 0) or np.any(np.isfinite(env.leave_s)):
        out.append("devices join or leave (churn)")
    if len(env.sem_factor):
        out.append("semantic slowdown windows")
    counts = np.diff(np.asarray(env.drift_ptr))
    if np.any(counts > 1):
        out.append("time-varying drift (more than one knot on a device)")
    return out
