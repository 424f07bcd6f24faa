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

``run_segment`` returns a status (``sim.state.STATUS_*``) so the Python driver can stream
the next block, apply a controller action at a horizon, or hold a checkpoint.
"""
import hashlib
import math
import os
from pathlib import Path

import numpy as np
from numba import njit

from ..detect.detectors import cusum_update, page_hinkley_update, reset_detectors
from ..router.config import (CFG_CLASS_ALPHA, CFG_CUSUM_H, CFG_CUSUM_K, CFG_DET_MIN_GAP, CFG_DET_MIN_SAMPLES,
                             CFG_DETECTORS, CFG_PH_DELTA, CFG_PH_LAMBDA, CFG_STUTTER_ALPHA,
                             CFG_STUTTER_TPOT)
from ..router.estimators import predict_class_service, update_pair
from ..router.policies import P_E3, choose_device
from .metrics import (C_ALARMS, C_ARRIVED, C_COMPLETED, C_DROPPED_NO_DEVICE, C_JOINS,
                      C_LEAVES, C_LLM_COMPLETED, C_REROUTE_EVENTS, C_REROUTED_REQUESTS,
                      C_STUTTER, S_LATENCY, S_LATENCY_SQ, S_SERVICE, S_TPOT, S_TTFT, S_WAIT,
                      W_COMPLETED, W_DROPPED, W_LATENCY, W_LLM, W_REROUTED, W_STUTTER, W_TTFT,
                      bucket, window_of)
from .borrow import make_borrow
from .metrics import Metrics, PerRequest
from .service import true_service_parts
from ..tracefile.schema import MODEL_KIND_LLM
from .state import (State, World, ALARM_CUSUM, ALARM_NONE, ALARM_JOIN, ALARM_LEAVE,
                    ALARM_PAGE_HINKLEY, DET_LAST_ALARM_S,
                    DET_LAST_RESID, DET_SINCE_ALARM, EV_JOIN, FV_ALARM_STAT, FV_NEXT_DONE,
                    FV_NOW, FV_WINDOW_S, IV_ALARM_DEV, IV_ALARM_KIND, IV_ALARM_MODEL,
                    IV_BLOCK_POS, IV_CHECKPOINTS_ON, IV_ENV_POS, IV_FREE_TOP, IV_NEXT_DEV,
                    STATUS_CHECKPOINT, STATUS_FINISHED, STATUS_HORIZON, STATUS_NEED_BLOCK,
                    STATUS_POOL_FULL)


def _drop_stale_cache() -> None:
    """Numba keys a cached function on its own source file only, but run_segment inlines
    code from sim/, router/ and detect/: after an edit there, its cached machine code would
    be stale. A fingerprint of those sources sits next to the cache; when it differs, the
    kernel's cache files are removed (it then compiles afresh, about 40 s)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return  # a custom cache location: its owner manages it
    pkg = Path(__file__).resolve().parents[1]
    sources = sorted([*pkg.glob("sim/*.py"), *pkg.glob("router/*.py"), *pkg.glob("detect/*.py")])
    digest = hashlib.sha1(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    cache = Path(__file__).parent / "__pycache__"
    try:
        if (cache / f"kernel-sources-{digest}").exists():
            return
        for f in [*cache.glob("kernel.*.nbi"), *cache.glob("kernel.*.nbc"),
                  *cache.glob("kernel-sources-*")]:
            f.unlink(missing_ok=True)
        cache.mkdir(exist_ok=True)
        (cache / f"kernel-sources-{digest}").touch()
    except OSError:
        pass  # a read-only install: nothing was cached by us there


_drop_stale_cache()


@njit(cache=True, inline="always")
def _rescan_next_completion(st):
    """Earliest completion among the devices' queue heads (lowest device on ties)."""
    head_done = st.head_done_s  # contiguous: a branch-light scan, no slot lookups
    best_d = 0
    best_t = head_done[0]
    for d in range(1, head_done.shape[0]):
        if head_done[d] < best_t:
            best_t = head_done[d]
            best_d = d
    if best_t == np.inf:
        best_d = -1
    st.fvar[FV_NEXT_DONE] = best_t
    st.ivar[IV_NEXT_DEV] = best_d


@njit(cache=True, inline="always")
def _free_slot(st, slot):
    st.free_stack[st.ivar[IV_FREE_TOP]] = slot
    st.ivar[IV_FREE_TOP] += 1


@njit(cache=True, inline="always")
def _dispatch(policy, world, st, met, prq, slot, now):
    """Route the request in `slot` at time `now`: queue it on the chosen device or drop it."""
    model = st.s_model[slot]
    d, est = choose_device(policy, world, st, now, model, st.s_in[slot], st.s_out[slot],
                           st.s_klass[slot])
    if d < 0:
        met.counts[C_DROPPED_NO_DEVICE] += 1
        w = window_of(met, st.s_arrival[slot], st.fvar[FV_WINDOW_S])
        met.windows[w, W_DROPPED] += 1.0
        if prq.device.shape[0] > 0:
            r = st.s_req[slot]
            prq.device[r] = -1
            prq.dispatch_s[r] = now
            prq.reroutes[r] = st.s_reroutes[slot]
        _free_slot(st, slot)
        return
    start = max(now, st.free_at[d])
    pre, dec = true_service_parts(world, d, model, st.s_in[slot], st.s_out[slot],
                                  st.s_klass[slot], st.s_z[slot], start)
    done = start + pre + dec
    st.s_dispatch[slot] = now
    st.s_start[slot] = start
    st.s_done[slot] = done
    st.s_prefill[slot] = pre
    st.s_decode[slot] = dec
    st.s_est[slot] = est
    st.s_next[slot] = -1
    if st.q_len[d] == 0:
        st.q_head[d] = slot
        st.head_done_s[d] = done
        if done < st.fvar[FV_NEXT_DONE] or (done == st.fvar[FV_NEXT_DONE]
                                            and d < st.ivar[IV_NEXT_DEV]):
            st.fvar[FV_NEXT_DONE] = done
            st.ivar[IV_NEXT_DEV] = d
    else:
        st.s_next[st.q_tail[d]] = slot
    st.q_tail[d] = slot
    st.q_len[d] += 1
    st.backlog_est[d] += est
    st.free_at[d] = done


@njit(cache=True, inline="always")
def _learn(world, st, met, d, slot, now, is_llm, stutter):
    """E3 feedback at a completion: detectors on the residual, then the estimators and the
    stutter rate. Returns the alarm kind (0: none)."""
    m = st.s_model[slot]
    n_in = st.s_in[slot]
    n_out = st.s_out[slot]
    pre = st.s_prefill[slot]
    dec = st.s_decode[slot]
    cfg = st.cfg
    k = st.s_klass[slot]
    f = st.class_factor[d, k]
    sig = max(world.prior_sigma[world.device_type[d], m], 0.05)
    log_resid = math.log((pre + dec) / predict_class_service(st, d, m, k, n_in, n_out))
    centred = log_resid + 0.5 * sig * sig  # E[log of the lognormal noise] = -sigma^2/2
    u = centred / sig
    # the (device, model) linear model learns the class-free time, the class factor the rest
    update_pair(st, d, m, n_in, n_out, pre / f, dec / f, log_resid)
    st.class_factor[d, k] = f * math.exp(cfg[CFG_CLASS_ALPHA] * centred)
    if is_llm:
        st.stutter_ewma[d, k] += cfg[CFG_STUTTER_ALPHA] * (stutter - st.stutter_ewma[d, k])
    det = st.det
    det[d, DET_LAST_RESID] = u
    det[d, DET_SINCE_ALARM] += 1.0
    if det[d, DET_SINCE_ALARM] <= cfg[CFG_DET_MIN_SAMPLES]:
        return ALARM_NONE  # warm-up after a reset: the estimate is still settling
    mask = int(cfg[CFG_DETECTORS])
    stat_c = cusum_update(det, d, u, cfg[CFG_CUSUM_K]) if mask & 1 else 0.0
    stat_p = page_hinkley_update(det, d, u, cfg[CFG_PH_DELTA]) if mask & 2 else 0.0
    if det[d, DET_LAST_ALARM_S] > 0 and now - det[d, DET_LAST_ALARM_S] < cfg[CFG_DET_MIN_GAP]:
        return ALARM_NONE
    kind = ALARM_NONE
    if stat_c > cfg[CFG_CUSUM_H]:
        kind = ALARM_CUSUM
        st.fvar[FV_ALARM_STAT] = stat_c
    elif stat_p > cfg[CFG_PH_LAMBDA]:
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
def _complete_next(policy, world, st, met, prq):
    """Finish the request at the head of the device with the earliest completion.
    Returns the alarm kind raised by the E3 detectors (0: none)."""
    d = st.ivar[IV_NEXT_DEV]
    slot = st.q_head[d]
    now = st.s_done[slot]
    st.fvar[FV_NOW] = now
    st.q_head[d] = st.s_next[slot]
    st.q_len[d] -= 1
    if st.q_len[d] == 0:
        st.q_tail[d] = -1
        st.head_done_s[d] = np.inf
        st.backlog_est[d] = 0.0
    else:
        st.head_done_s[d] = st.s_done[st.q_head[d]]
        st.backlog_est[d] = max(st.backlog_est[d] - st.s_est[slot], 0.0)
    arrival = st.s_arrival[slot]
    pre = st.s_prefill[slot]
    dec = st.s_decode[slot]
    latency = now - arrival
    m = st.s_model[slot]
    is_llm = world.model_kind[m] == MODEL_KIND_LLM
    ttft = st.s_start[slot] + pre - arrival
    tpot = dec / st.s_out[slot] if is_llm else np.nan
    stutter = 1.0 if is_llm and tpot > st.cfg[CFG_STUTTER_TPOT] else 0.0
    # metrics
    c = met.counts
    s = met.sums
    c[C_COMPLETED] += 1
    s[S_LATENCY] += latency
    s[S_LATENCY_SQ] += latency * latency
    s[S_WAIT] += st.s_start[slot] - arrival
    s[S_SERVICE] += pre + dec
    met.hist_latency[bucket(latency)] += 1
    w = window_of(met, arrival, st.fvar[FV_WINDOW_S])
    met.windows[w, W_COMPLETED] += 1.0
    met.windows[w, W_LATENCY] += latency
    if st.s_reroutes[slot] > 0:
        c[C_REROUTED_REQUESTS] += 1
        met.windows[w, W_REROUTED] += 1.0
    if is_llm:
        c[C_LLM_COMPLETED] += 1
        s[S_TTFT] += ttft
        s[S_TPOT] += tpot
        met.hist_ttft[bucket(ttft)] += 1
        met.windows[w, W_LLM] += 1.0
        met.windows[w, W_TTFT] += ttft
        if stutter > 0.0:
            c[C_STUTTER] += 1
            met.windows[w, W_STUTTER] += 1.0
    met.dev_completed[d] += 1
    met.dev_busy_s[d] += pre + dec
    if prq.device.shape[0] > 0:
        r = st.s_req[slot]
        prq.device[r] = d
        prq.dispatch_s[r] = st.s_dispatch[slot]
        prq.start_s[r] = st.s_start[slot]
        prq.completion_s[r] = now
        prq.ttft_s[r] = ttft
        prq.tpot_s[r] = tpot
        prq.stutter[r] = np.uint8(stutter)
        prq.reroutes[r] = st.s_reroutes[slot]
    alarm = ALARM_NONE
    if policy == P_E3:
        alarm = _learn(world, st, met, d, slot, now, is_llm, stutter)
    _free_slot(st, slot)
    _rescan_next_completion(st)
    return alarm


@njit(cache=True, inline="always")
def _environment_event(policy, world, st, met, prq, e):
    """Apply join/leave event `e`; returns the alarm kind for the checkpoint."""
    now = world.ev_t_s[e]
    st.fvar[FV_NOW] = now
    d = world.ev_device[e]
    st.ivar[IV_ALARM_DEV] = d
    st.ivar[IV_ALARM_MODEL] = -1
    if world.ev_kind[e] == EV_JOIN:
        met.counts[C_JOINS] += 1
        st.online[d] = 1
        st.free_at[d] = now
        reset_detectors(st.det, d)
        return ALARM_JOIN
    met.counts[C_LEAVES] += 1
    st.online[d] = 0
    slot = st.q_head[d]
    st.q_head[d] = -1
    st.q_tail[d] = -1
    st.head_done_s[d] = np.inf
    st.q_len[d] = 0
    st.backlog_est[d] = 0.0
    st.free_at[d] = now
    _rescan_next_completion(st)
    while slot >= 0:
        following = st.s_next[slot]
        st.s_reroutes[slot] += 1
        met.counts[C_REROUTE_EVENTS] += 1
        _dispatch(policy, world, st, met, prq, slot, now)
        slot = following
    return ALARM_LEAVE


_borrow_world = make_borrow(World)
_borrow_state = make_borrow(State)
_borrow_metrics = make_borrow(Metrics)
_borrow_per_request = make_borrow(PerRequest)


@njit(cache=True)
def run_segment(policy, world, st, met, prq, arrival_s, model, in_tokens, out_tokens, klass,
                z, block_start, last_block, horizon_s):
    """Run the event loop until the block is consumed (STATUS_NEED_BLOCK), every request has
    ended (STATUS_FINISHED), a checkpoint is due (STATUS_CHECKPOINT), simulated time reaches
    `horizon_s` (STATUS_HORIZON) or the slot pool is full (STATUS_POOL_FULL).

    The block arrays hold trace rows ``block_start ..``; ``st.ivar[IV_BLOCK_POS]`` is the next
    row to read and must be reset to 0 by the caller with each new block.
    """
    world = _borrow_world(world)
    st = _borrow_state(st)
    met = _borrow_metrics(met)
    prq = _borrow_per_request(prq)
    iv = st.ivar
    fv = st.fvar
    n = arrival_s.shape[0]
    n_env = world.ev_t_s.shape[0]
    while True:
        i = iv[IV_BLOCK_POS]
        if i < n:
            t_arr = arrival_s[i]
        elif last_block:
            t_arr = np.inf
        else:
            return STATUS_NEED_BLOCK
        t_done = fv[FV_NEXT_DONE]
        e = iv[IV_ENV_POS]
        t_env = world.ev_t_s[e] if e < n_env else np.inf
        if t_done == np.inf and t_arr == np.inf:
            return STATUS_FINISHED
        t_next = min(t_done, t_env, t_arr)
        if horizon_s <= t_next:
            fv[FV_NOW] = horizon_s
            return STATUS_HORIZON
        if t_done <= t_env and t_done <= t_arr:
            alarm = _complete_next(policy, world, st, met, prq)
            if alarm and iv[IV_CHECKPOINTS_ON]:
                return STATUS_CHECKPOINT
        elif t_env <= t_arr:
            iv[IV_ENV_POS] = e + 1
            iv[IV_ALARM_KIND] = _environment_event(policy, world, st, met, prq, e)
            if iv[IV_CHECKPOINTS_ON]:
                return STATUS_CHECKPOINT
        else:
            if iv[IV_FREE_TOP] == 0:
                return STATUS_POOL_FULL
            fv[FV_NOW] = t_arr
            iv[IV_BLOCK_POS] = i + 1
            met.counts[C_ARRIVED] += 1
            iv[IV_FREE_TOP] -= 1
            slot = st.free_stack[iv[IV_FREE_TOP]]
            st.s_req[slot] = block_start + i
            st.s_arrival[slot] = t_arr
            st.s_model[slot] = model[i]
            st.s_in[slot] = in_tokens[i]
            st.s_out[slot] = out_tokens[i]
            st.s_klass[slot] = klass[i]
            st.s_z[slot] = z[i]
            st.s_reroutes[slot] = 0
            _dispatch(policy, world, st, met, prq, slot, t_arr)
