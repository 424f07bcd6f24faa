"""The discrete-event kernel: one nopython segment of the event loop.

Events, in time order (ties: completions, then join/leave, then arrivals; among devices the
lowest index first):

* a completion: the request at the head of a device's FIFO queue finishes;
* a join or leave of a device (a leaving device's queued and in-service requests are
  re-dispatched at that instant, each counted as a reroute; nothing is lost);
* an arrival from the current trace block, dispatched at once by the policy.

Service is FIFO with one request at a time per device, so a request's start and
completion are fixed when it is queued: ``start = max(now, device free time)`` and the true
service time is evaluated at that start (``sim.service``). Feedback (the observed prefill
and decode times) reaches the E3 estimators and detectors at completion, in simulated order.
What a router is handed at dispatch and learns at completion is ``router.view``'s
information model (an LLM request's output length hidden unless ``length_info`` is exact;
the Oracle sees everything).

``run_segment(policy, ...)`` returns a status (``sim.state.STATUS_*``) so the Python driver
can stream the next block, apply a controller action at a horizon, or hold a checkpoint.
Each policy has its own compiled kernel (``KERNELS``, made by ``_variant`` from the templates
``_run_segment``, ``_dispatch`` and ``_environment_event``) holding only that policy's code.
"""
import math

import numpy as np
from numba import njit

from ..detect.detectors import cusum_update, page_hinkley_update, reset_detectors
from ..numba_private import rebind
from ..router.config import (CFG_CLASS_ALPHA, CFG_CUSUM_H, CFG_CUSUM_K, CFG_DET_MIN_GAP,
                             CFG_DET_MIN_SAMPLES, CFG_DETECTORS, CFG_FORGET, CFG_PH_DELTA,
                             CFG_PH_LAMBDA, CFG_STUTTER_ALPHA, CFG_STUTTER_TPOT)
from ..router.estimators import predict_class_service, update_pair
from ..router.policies import CHOOSERS, P_E3, P_ORACLE, head_view
from ..router.view import learn_length, seen_out_tokens
from .metrics import (C_ALARMS, C_ARRIVED, C_COMPLETED, C_DROPPED_NO_DEVICE, C_JOINS,
                      C_LEAVES, C_LLM_COMPLETED, C_REROUTE_EVENTS, C_REROUTED_REQUESTS,
                      C_STUTTER, S_LATENCY, S_LATENCY_SQ, S_SERVICE, S_TPOT, S_TTFT, S_WAIT,
                      W_COMPLETED, W_DROPPED, W_LATENCY, W_LLM, W_REROUTED, W_STUTTER, W_TTFT,
                      bucket, window_of)
from .borrow import make_borrow
from .metrics import Metrics, PerRequest
from .scan import lowest
from .service import true_service_parts
from ..tracefile.schema import MODEL_KIND_LLM
from .state import (SF_ARRIVAL, SF_DECODE, SF_DISPATCH, SF_DONE, SF_EST, SF_PREFILL, SF_START,
                    SF_Z, SI_IN, SI_KLASS, SI_MODEL, SI_NEXT, SI_OUT, SI_REQ, SI_REROUTES,
                    SI_WINDOW, POLICIES,
                    State, World, set_online, ALARM_CUSUM, ALARM_NONE, ALARM_JOIN, ALARM_LEAVE,
                    ALARM_PAGE_HINKLEY, DET_LAST_ALARM_S,
                    DET_LAST_RESID, DET_SINCE_ALARM, EV_JOIN, FV_ALARM_STAT, FV_NEXT_DONE,
                    FV_NOW, FV_WINDOW_S, IV_ALARM_DEV, IV_ALARM_KIND, IV_ALARM_MODEL,
                    IV_BLOCK_POS, IV_CHECKPOINTS_ON, IV_ENV_POS, IV_FREE_TOP, IV_NEXT_DEV,
                    STATUS_CHECKPOINT, STATUS_FINISHED, STATUS_HORIZON, STATUS_NEED_BLOCK,
                    STATUS_POOL_FULL)


def _dispatch(world, st, met, prq, slot, now, next_done, next_dev):
    """Route the request in `slot` at time `now` with the variant's router `choose`: queue it
    on the chosen device, or drop it (counted; the caller frees the slot). Returns the
    updated earliest completion ``(next_done, next_dev)`` and whether the request was
    dropped. (A template: compiled inline in each kernel variant, see `_variant`.)"""
    sf = st.slot_f[slot]  # this request's fields (views of one pool row)
    si = st.slot_i[slot]
    model, n_in, n_out, klass = si[SI_MODEL], si[SI_IN], si[SI_OUT], si[SI_KLASS]
    if POLICY == P_ORACLE:  # full information: the true output length
        d, est = choose(world, st, now, model, n_in, n_out, klass)
    else:  # the router's view (router.view): a predicted length when lengths are hidden
        d, est = choose(world, st, now, model, n_in,
                        seen_out_tokens(world, st, model, klass, n_out), klass)
    if d < 0:
        met.counts[C_DROPPED_NO_DEVICE] += 1
        w = si[SI_WINDOW]
        met.windows[w, W_DROPPED] += 1.0
        if prq.device.shape[0] > 0:
            r = si[SI_REQ]
            prq.device[r] = -1
            prq.dispatch_s[r] = now
            prq.reroutes[r] = si[SI_REROUTES]
        return next_done, next_dev, True
    start = max(now, st.free_at[d])
    pre, dec = true_service_parts(world, st.drift_cursor, d, model, n_in, n_out, klass, sf[SF_Z],
                                  start)
    done = start + pre + dec
    sf[SF_DISPATCH] = now
    sf[SF_START] = start
    sf[SF_DONE] = done
    sf[SF_PREFILL] = pre
    sf[SF_DECODE] = dec
    sf[SF_EST] = est
    si[SI_NEXT] = -1
    if st.q_len[d] == 0:
        st.q_head[d] = slot
        st.head_done_s[d] = done
        st.head_start_s[d] = start
        if POLICY == P_E3:
            st.head_est[d], st.head_beta[d], st.head_floor[d] = head_view(world, st, d, model,
                                                                          klass, est)
        # the invariant: next_dev is the lowest device whose head completes at next_done
        if done < next_done or (done == next_done and d < next_dev):
            next_done = done
            next_dev = d
    else:
        st.slot_i[st.q_tail[d], SI_NEXT] = slot
    st.q_tail[d] = slot
    st.q_len[d] += 1
    st.backlog_est[d] += est
    st.free_at[d] = done
    return next_done, next_dev, False


@njit(cache=True, inline="always")
def _learning_config(cfg):
    """The configuration `_learn` reads, as a tuple of scalars read once per segment (the
    controller changes `cfg` only between segments): forgetting factor, class-factor and
    stutter learning rates, detector warm-up (observations), enabled-detector mask, CUSUM
    k, Page-Hinkley delta, minimum alarm gap (s), CUSUM h, Page-Hinkley lambda."""
    return (cfg[CFG_FORGET], cfg[CFG_CLASS_ALPHA], cfg[CFG_STUTTER_ALPHA],
            cfg[CFG_DET_MIN_SAMPLES], int(cfg[CFG_DETECTORS]), cfg[CFG_CUSUM_K],
            cfg[CFG_PH_DELTA], cfg[CFG_DET_MIN_GAP], cfg[CFG_CUSUM_H], cfg[CFG_PH_LAMBDA])


@njit(cache=True, inline="always")
def _learn(world, st, met, d, slot, now, is_llm, stutter, lcfg):
    """E3 feedback at a completion: detectors on the residual, then the estimators and the
    stutter rate. `lcfg` holds the configuration it uses (``_learning_config``). Returns the
    alarm kind (0: none)."""
    forget, class_alpha, stutter_alpha, min_samples, detectors, cusum_k, ph_delta, min_gap, \
        cusum_h, ph_lambda = lcfg
    si = st.slot_i[slot]
    m, n_in, n_out, k = si[SI_MODEL], si[SI_IN], si[SI_OUT], si[SI_KLASS]
    pre = st.slot_f[slot, SF_PREFILL]
    dec = st.slot_f[slot, SF_DECODE]
    f = st.class_factor[d, k]
    sig = max(world.dev_sigma[m, d], 0.05)
    log_resid = math.log((pre + dec) / predict_class_service(st, d, m, k, n_in, n_out))
    centred = log_resid + 0.5 * sig * sig  # E[log of the lognormal noise] = -sigma^2/2
    u = centred / sig
    # the (device, model) linear model learns the class-free time, the class factor the rest
    inv_f = 1.0 / f
    update_pair(st, d, m, n_in, n_out, pre * inv_f, dec * inv_f, log_resid, forget)
    st.class_factor[d, k] = f * math.exp(class_alpha * centred)
    if is_llm:
        st.stutter_ewma[d, k] += stutter_alpha * (stutter - st.stutter_ewma[d, k])
    det = st.det
    det[d, DET_LAST_RESID] = u
    det[d, DET_SINCE_ALARM] += 1.0
    if det[d, DET_SINCE_ALARM] <= min_samples:
        return ALARM_NONE  # warm-up after a reset: the estimate is still settling
    stat_c = cusum_update(det, d, u, cusum_k) if detectors & 1 else 0.0
    stat_p = page_hinkley_update(det, d, u, ph_delta) if detectors & 2 else 0.0
    if det[d, DET_LAST_ALARM_S] > 0 and now - det[d, DET_LAST_ALARM_S] < min_gap:
        return ALARM_NONE
    kind = ALARM_NONE
    if stat_c > cusum_h:
        kind = ALARM_CUSUM
        st.fvar[FV_ALARM_STAT] = stat_c
    elif stat_p > ph_lambda:
        kind = ALARM_PAGE_HINKLEY
        st.fvar[FV_ALARM_STAT] = stat_p
    if kind:
        met.counts[C_ALARMS] += 1
        reset_detectors(det, d)
        det[d, DET_LAST_ALARM_S] = now
        st.ivar[IV_ALARM_KIND] = kind
        st.ivar[IV_ALARM_DEV] = d
        st.ivar[IV_ALARM_MODEL] = m
    return kind


@njit(cache=True, inline="always")
def _idle_head(st, d):
    """E3's view of device d's request in service when there is none (``e3_wait`` gives 0)."""
    st.head_est[d] = 0.0
    st.head_beta[d] = 0.0
    st.head_floor[d] = 0.0


def _environment_event(world, st, met, prq, e, next_done, next_dev, free_top):
    """Apply join/leave event `e` (a leaving device's queue is re-dispatched at once).
    Returns ``(alarm kind, next_done, next_dev, free_top)`` with the loop's updated locals.
    (A template, as `_dispatch`.)"""
    now = world.ev_t_s[e]
    d = world.ev_device[e]
    st.ivar[IV_ALARM_DEV] = d
    st.ivar[IV_ALARM_MODEL] = -1
    if world.ev_kind[e] == EV_JOIN:
        met.counts[C_JOINS] += 1
        set_online(world, st, d, 1)
        st.free_at[d] = now
        reset_detectors(st.det, d)
        return ALARM_JOIN, next_done, next_dev, free_top
    met.counts[C_LEAVES] += 1
    set_online(world, st, d, 0)
    slot = st.q_head[d]
    st.q_head[d] = -1
    st.q_tail[d] = -1
    st.head_done_s[d] = np.inf
    st.q_len[d] = 0
    st.backlog_est[d] = 0.0
    if POLICY == P_E3:
        _idle_head(st, d)
    st.free_at[d] = now
    next_done, next_dev = lowest(st.head_done_s)
    while slot >= 0:
        following = st.slot_i[slot, SI_NEXT]
        st.slot_i[slot, SI_REROUTES] += 1
        met.counts[C_REROUTE_EVENTS] += 1
        next_done, next_dev, dropped = _dispatch(world, st, met, prq, slot, now, next_done,
                                                 next_dev)
        if dropped:
            st.free_stack[free_top] = slot
            free_top += 1
        slot = following
    return ALARM_LEAVE, next_done, next_dev, free_top


_borrow_world = make_borrow(World)
_borrow_state = make_borrow(State)
_borrow_metrics = make_borrow(Metrics)
_borrow_per_request = make_borrow(PerRequest)


def _run_segment(world, st, met, prq, arrival_s, model, in_tokens, out_tokens, klass, z,
                 block_start, last_block, horizon_s):
    """The event loop of policy `POLICY` (a template, compiled once per policy: `_variant`).

    Run the event loop until the block is consumed (STATUS_NEED_BLOCK), every request has
    ended (STATUS_FINISHED), a checkpoint is due (STATUS_CHECKPOINT), simulated time reaches
    `horizon_s` (STATUS_HORIZON) or the slot pool is full (STATUS_POOL_FULL).

    The block arrays hold trace rows ``block_start ..``; ``st.ivar[IV_BLOCK_POS]`` is the next
    row to read and must be reset to 0 by the caller with each new block.

    The loop keeps its scalars (clock, earliest completion, block and event positions, free
    stack top) and the hot metric sums in locals, and writes them back on return: stores to
    state arrays would otherwise force reloads (LLVM cannot prove the arrays distinct).
    """
    world = _borrow_world(world)
    st = _borrow_state(st)
    met = _borrow_metrics(met)
    prq = _borrow_per_request(prq)
    iv = st.ivar
    fv = st.fvar
    n = arrival_s.shape[0]
    n_env = world.ev_t_s.shape[0]
    record = prq.device.shape[0] > 0
    checkpoints_on = iv[IV_CHECKPOINTS_ON] != 0
    window_s = fv[FV_WINDOW_S]
    stutter_tpot = st.cfg[CFG_STUTTER_TPOT]
    lcfg = _learning_config(st.cfg)
    model_kind = world.model_kind
    q_head, q_tail, q_len = st.q_head, st.q_tail, st.q_len
    head_done_s, backlog_est = st.head_done_s, st.backlog_est
    slot_f, slot_i = st.slot_f, st.slot_i
    free_stack = st.free_stack
    windows = met.windows
    counts = met.counts
    sums = met.sums
    # loop state and hot metrics, in locals until the segment returns
    now = fv[FV_NOW]
    next_done = fv[FV_NEXT_DONE]
    next_dev = iv[IV_NEXT_DEV]
    pos = iv[IV_BLOCK_POS]
    env_pos = iv[IV_ENV_POS]
    free_top = iv[IV_FREE_TOP]
    t_env = world.ev_t_s[env_pos] if env_pos < n_env else np.inf
    n_arrived = counts[C_ARRIVED]
    n_completed = counts[C_COMPLETED]
    n_llm = counts[C_LLM_COMPLETED]
    n_stutter = counts[C_STUTTER]
    sum_latency = sums[S_LATENCY]
    sum_latency_sq = sums[S_LATENCY_SQ]
    sum_wait = sums[S_WAIT]
    sum_service = sums[S_SERVICE]
    sum_ttft = sums[S_TTFT]
    sum_tpot = sums[S_TPOT]
    while True:
        if pos < n:
            t_arr = arrival_s[pos]
        elif last_block:
            t_arr = np.inf
        else:
            status = STATUS_NEED_BLOCK
            break
        if next_done == np.inf and t_arr == np.inf:
            status = STATUS_FINISHED
            break
        if horizon_s <= min(next_done, t_env, t_arr):
            now = horizon_s
            status = STATUS_HORIZON
            break
        if next_done <= t_env and next_done <= t_arr:
            # --- completion of the head of device next_dev ---
            d = next_dev
            slot = q_head[d]
            now = next_done
            following = slot_i[slot, SI_NEXT]
            q_head[d] = following
            q_len[d] -= 1
            if q_len[d] == 0:
                q_tail[d] = -1
                head_done_s[d] = np.inf
                backlog_est[d] = 0.0
                if POLICY == P_E3:
                    _idle_head(st, d)
            else:
                head_done_s[d] = slot_f[following, SF_DONE]
                st.head_start_s[d] = slot_f[following, SF_START]
                backlog_est[d] = max(backlog_est[d] - slot_f[slot, SF_EST], 0.0)
                if POLICY == P_E3:
                    st.head_est[d], st.head_beta[d], st.head_floor[d] = head_view(
                        world, st, d, slot_i[following, SI_MODEL], slot_i[following, SI_KLASS],
                        slot_f[following, SF_EST])
            arrival = slot_f[slot, SF_ARRIVAL]
            start = slot_f[slot, SF_START]
            pre = slot_f[slot, SF_PREFILL]
            dec = slot_f[slot, SF_DECODE]
            m = slot_i[slot, SI_MODEL]
            latency = now - arrival
            is_llm = model_kind[m] == MODEL_KIND_LLM
            ttft = start + pre - arrival
            n_completed += 1
            sum_latency += latency
            sum_latency_sq += latency * latency
            sum_wait += start - arrival
            sum_service += pre + dec
            met.hist_latency[bucket(latency)] += 1
            w = slot_i[slot, SI_WINDOW]
            windows[w, W_COMPLETED] += 1.0
            windows[w, W_LATENCY] += latency
            if slot_i[slot, SI_REROUTES] > 0:
                counts[C_REROUTED_REQUESTS] += 1
                windows[w, W_REROUTED] += 1.0
            tpot = np.nan
            stutter = 0.0
            if is_llm:
                # the completion reveals the output length: every router's predictor learns
                learn_length(st, m, slot_i[slot, SI_KLASS], slot_i[slot, SI_OUT])
                tpot = dec / slot_i[slot, SI_OUT]
                n_llm += 1
                sum_ttft += ttft
                sum_tpot += tpot
                met.hist_ttft[bucket(ttft)] += 1
                windows[w, W_LLM] += 1.0
                windows[w, W_TTFT] += ttft
                if tpot > stutter_tpot:
                    stutter = 1.0
                    n_stutter += 1
                    windows[w, W_STUTTER] += 1.0
            met.dev_completed[d] += 1
            met.dev_busy_s[d] += pre + dec
            if record:
                r = slot_i[slot, SI_REQ]
                prq.device[r] = d
                prq.dispatch_s[r] = slot_f[slot, SF_DISPATCH]
                prq.start_s[r] = start
                prq.completion_s[r] = now
                prq.ttft_s[r] = ttft
                prq.tpot_s[r] = tpot
                prq.stutter[r] = np.uint8(stutter)
                prq.reroutes[r] = slot_i[slot, SI_REROUTES]
            alarm = ALARM_NONE
            if POLICY == P_E3:
                alarm = _learn(world, st, met, d, slot, now, is_llm, stutter, lcfg)
            free_stack[free_top] = slot
            free_top += 1
            next_done, next_dev = lowest(head_done_s)
            if alarm != ALARM_NONE and checkpoints_on:
                status = STATUS_CHECKPOINT
                break
        elif t_env <= t_arr:
            # --- a device joins or leaves ---
            now = t_env
            kind, next_done, next_dev, free_top = _environment_event(
                world, st, met, prq, env_pos, next_done, next_dev, free_top)
            iv[IV_ALARM_KIND] = kind
            env_pos += 1
            t_env = world.ev_t_s[env_pos] if env_pos < n_env else np.inf
            if checkpoints_on:
                status = STATUS_CHECKPOINT
                break
        else:
            # --- an arrival from the block, dispatched at once ---
            if free_top == 0:
                status = STATUS_POOL_FULL
                break
            now = t_arr
            n_arrived += 1
            free_top -= 1
            slot = free_stack[free_top]
            slot_i[slot, SI_REQ] = block_start + pos
            slot_f[slot, SF_ARRIVAL] = t_arr
            slot_i[slot, SI_WINDOW] = window_of(met, t_arr, window_s)
            slot_i[slot, SI_MODEL] = model[pos]
            slot_i[slot, SI_IN] = in_tokens[pos]
            slot_i[slot, SI_OUT] = out_tokens[pos]
            slot_i[slot, SI_KLASS] = klass[pos]
            slot_f[slot, SF_Z] = z[pos]
            slot_i[slot, SI_REROUTES] = 0
            pos += 1
            next_done, next_dev, dropped = _dispatch(world, st, met, prq, slot, t_arr,
                                                     next_done, next_dev)
            if dropped:
                free_stack[free_top] = slot
                free_top += 1
    fv[FV_NOW] = now
    fv[FV_NEXT_DONE] = next_done
    iv[IV_NEXT_DEV] = next_dev
    iv[IV_BLOCK_POS] = pos
    iv[IV_ENV_POS] = env_pos
    iv[IV_FREE_TOP] = free_top
    counts[C_ARRIVED] = n_arrived
    counts[C_COMPLETED] = n_completed
    counts[C_LLM_COMPLETED] = n_llm
    counts[C_STUTTER] = n_stutter
    sums[S_LATENCY] = sum_latency
    sums[S_LATENCY_SQ] = sum_latency_sq
    sums[S_WAIT] = sum_wait
    sums[S_SERVICE] = sum_service
    sums[S_TTFT] = sum_ttft
    sums[S_TPOT] = sum_tpot
    return status


# --- one compiled kernel per policy -------------------------------------------------------
# The templates above name the policy's router `choose` and its id `POLICY`. `_variant`
# compiles them with those two names bound as constants, in copies of this module's globals:
# Numba prunes the branches on `POLICY` and inlines only `choose`, before it types the code,
# so each kernel carries one policy (E3's learning only in E3's): it runs faster and compiles
# in 12-20 s (one kernel for all policies took 35-40 s; docs/PERFORMANCE.md). Each variant
# has its own name, hence its own cache files (kernel.run_segment_<policy>-*).
choose = None  # bound per variant: router.policies.CHOOSERS[POLICY]
POLICY = -1    # bound per variant: the policy id (sim.state.POLICIES)


def _variant(policy: int):
    """The kernel of policy id `policy`: `_run_segment` compiled with `POLICY` and `choose`
    bound, and its two inline templates with them."""
    names = dict(globals(), POLICY=policy, choose=CHOOSERS[policy])
    names["_dispatch"] = njit(inline="always")(rebind(_dispatch, names, "_dispatch"))
    names["_environment_event"] = njit(inline="always")(
        rebind(_environment_event, names, "_environment_event"))
    return njit(cache=True, error_model="numpy")(
        rebind(_run_segment, names, f"run_segment_{POLICIES[policy]}"))


KERNELS = tuple(_variant(p) for p in range(len(POLICIES)))  # by policy id; compiled at first use


def run_segment(policy, world, st, met, prq, arrival_s, model, in_tokens, out_tokens, klass,
                z, block_start, last_block, horizon_s):
    """Run policy id `policy`'s kernel for one segment (see `_run_segment`); returns a
    STATUS_* code."""
    return KERNELS[policy](world, st, met, prq, arrival_s, model, in_tokens, out_tokens, klass,
                           z, block_start, last_block, horizon_s)
