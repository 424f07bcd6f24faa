"""Routing policies behind one dispatch function (nopython).

``choose_device(policy, world, st, now, model, in_tokens, out_tokens, klass)`` returns
``(device, estimate_s)``: the chosen online device hosting `model` (-1 if none) and the
policy's estimate of the request's service time there (kept to estimate queued work).

Policies (ids in ``sim.state.POLICIES``):

* rr: round robin over the candidates.  * random: uniform (seeded xorshift64*).
* jsq: fewest queued requests.
* sect: shortest expected completion using the static MLPerf priors, never updated.
* oracle: shortest expected completion using the true current mean service times and the
  true remaining work of each queue (online: it never sees future arrivals or drift).
* e3: SECT on the online estimates (times the learned class factor), with an exploration
  bonus for idle devices on pairs with few observations, a risk penalty from recent
  stutter, and the controller's risk gates (closed until a time).
"""
import math

import numpy as np
from numba import njit

from ..sim.service import prior_mean_service, true_mean_service
from ..sim.state import IV_RNG, IV_RR_NEXT
from .config import CFG_EXPLORE, CFG_RISK
from .estimators import predict_class_service

P_RR, P_RANDOM, P_JSQ, P_SECT, P_ORACLE, P_E3 = range(6)


@njit(cache=True, inline="always")
def next_uniform(ivar):
    """A uniform float in [0, 1) from the xorshift64* stream kept in ivar[IV_RNG]."""
    x = np.uint64(ivar[IV_RNG])
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    ivar[IV_RNG] = np.int64(x)
    r = x * np.uint64(0x2545F4914F6CDD1D)
    return float(r >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True, inline="always")
def estimated_wait(st, d, now):
    """Policy-estimated time (s) until device d finishes its queue: the estimated work
    queued there minus the time its current request has already been served."""
    if st.q_len[d] == 0:
        return 0.0
    elapsed = now - st.s_start[st.q_head[d]]
    return max(st.backlog_est[d] - elapsed, 0.0)


@njit(cache=True, inline="always")
def is_candidate(world, st, d, model):
    return st.online[d] == 1 and world.hosts[d, model] == 1


@njit(cache=True, inline="always")
def choose_device(policy, world, st, now, model, in_tokens, out_tokens, klass):
    """The device for a request arriving at `now` and the policy's service estimate (s)."""
    n_dev = st.online.shape[0]
    best = -1
    best_cost = np.inf
    best_est = 0.0
    if policy == P_RR:
        start = st.ivar[IV_RR_NEXT]
        for j in range(n_dev):
            d = (start + j) % n_dev
            if is_candidate(world, st, d, model):
                st.ivar[IV_RR_NEXT] = (d + 1) % n_dev
                return d, prior_mean_service(world, d, model, in_tokens, out_tokens)
        return -1, 0.0
    if policy == P_RANDOM:
        count = 0
        for d in range(n_dev):
            if is_candidate(world, st, d, model):
                count += 1
        if count == 0:
            return -1, 0.0
        k = int(next_uniform(st.ivar) * count)
        for d in range(n_dev):
            if is_candidate(world, st, d, model):
                if k == 0:
                    return d, prior_mean_service(world, d, model, in_tokens, out_tokens)
                k -= 1
        return -1, 0.0
    if policy == P_JSQ:
        for d in range(n_dev):
            if is_candidate(world, st, d, model) and st.q_len[d] < best_cost:
                best, best_cost = d, st.q_len[d]
        if best < 0:
            return -1, 0.0
        return best, prior_mean_service(world, best, model, in_tokens, out_tokens)
    if policy == P_SECT:
        for d in range(n_dev):
            if is_candidate(world, st, d, model):
                est = prior_mean_service(world, d, model, in_tokens, out_tokens)
                cost = estimated_wait(st, d, now) + est
                if cost < best_cost:
                    best, best_cost, best_est = d, cost, est
        return best, best_est
    if policy == P_ORACLE:
        for d in range(n_dev):
            if is_candidate(world, st, d, model):
                est = true_mean_service(world, d, model, in_tokens, out_tokens, klass, now)
                cost = max(st.free_at[d] - now, 0.0) + est
                if cost < best_cost:
                    best, best_cost, best_est = d, cost, est
        return best, best_est
    # E3: open gates first; if every candidate is gated, the least risky gated one
    explore = st.cfg[CFG_EXPLORE]
    risk = st.cfg[CFG_RISK]
    gated_best = -1
    gated_cost = np.inf
    gated_est = 0.0
    for d in range(n_dev):
        if is_candidate(world, st, d, model):
            est = predict_class_service(st, d, model, klass, in_tokens, out_tokens)
            # optimism only for idle devices: try a little-known pair, do not flood it
            bonus = explore / math.sqrt(1.0 + st.n_obs[d, model]) if st.q_len[d] == 0 else 0.0
            cost = (estimated_wait(st, d, now)
                    + est * (1.0 + risk * st.stutter_ewma[d, klass] - bonus))
            if now >= st.gate_until_s[d, klass]:
                if cost < best_cost:
                    best, best_cost, best_est = d, cost, est
            elif cost < gated_cost:
                gated_best, gated_cost, gated_est = d, cost, est
    if best < 0:
        return gated_best, gated_est
    return best, best_est
