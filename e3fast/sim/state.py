"""Simulator state as plain NumPy arrays grouped in named tuples (what the kernel takes).

* ``World``: the read-only environment of a trace (fleet, priors, drift, semantic windows,
  join/leave events, failure windows), built from an ``Env``.
* ``State``: everything the event loop mutates: devices, FIFO queues (linked lists through a
  pool of request slots), the online estimators, detectors, risk gates and router config.
* ``Metrics`` (see ``metrics.py``) and ``PerRequest`` (optional per-request output).

Scalars that the kernel mutates live in the small arrays ``ivar`` (int64) and ``fvar``
(float64) at the indices named below.
"""
from typing import NamedTuple

import numpy as np
from numba import njit

from ..fields import declare
from ..router.config import default_config
from ..tracefile.schema import router_priors

# --- kernel status codes (returned by run_segment): STATUS_<NAME> ---
STATUSES = declare(globals(), "STATUS_", (
    "need_block",   # the current block of arrivals is consumed; give the next one
    "finished",     # no more arrivals and every request has ended
    "checkpoint",   # a detector fired or a device joined/left: the slow path may act
    "horizon",      # simulated time reached the requested horizon (a pending action)
    "pool_full",    # more requests in flight than slots: grow the pool and call again
))

# --- ivar / fvar indices: IV_<NAME> and FV_<NAME> (fields.declare) ---
IVAR = declare(globals(), "IV_", count="N_IVAR", names=(
    "block_pos",       # next row of the current block
    "env_pos",         # next environment event
    "free_top",        # number of free slots on the free stack
    "rr_next",         # round-robin pointer
    "next_dev",        # device holding the earliest completion (-1: none)
    "alarm_kind",      # what caused the last checkpoint (ALARM_*)
    "alarm_dev",
    "alarm_model",
    "rng",             # xorshift64* state (bit pattern of a uint64)
    "checkpoints_on",  # 1: return at alarms and join/leave
    "length_info",     # what routers see of output lengths (router.view.LENGTH_INFO id)
))
FVAR = declare(globals(), "FV_", count="N_FVAR", names=(
    "now",             # simulated clock, seconds
    "next_done",       # earliest completion time among device queue heads (inf: none)
    "alarm_stat",      # detector statistic at the last alarm
    "window_s",        # width of the metrics time windows, seconds
))

# --- request slots: the fields of the request in slot s are slot_f[s, SF_*] (float64,
# seconds) and slot_i[s, SI_*] (int64); one row each, so a request sits in two cache lines ---
SLOT_F = declare(globals(), "SF_", count="N_SF", names=(
    "arrival", "z", "dispatch", "start", "done", "prefill", "decode", "est"))
SLOT_I = declare(globals(), "SI_", count="N_SI", names=(  # a row of 8 is 64 bytes
    "req", "model", "in", "out", "klass", "next", "reroutes", "window"))
# SF_Z: the trace's standard-normal draw; SF_DISPATCH/START/DONE: times (s) of the last
# dispatch, service start and completion; SF_PREFILL/DECODE: true service parts (s);
# SF_EST: the router's service estimate at dispatch (s). SI_REQ: trace row; SI_IN/OUT:
# tokens (or steps); SI_NEXT: next slot in the device queue (-1: last); SI_WINDOW: the
# metrics time window of the arrival.

# --- alarm kinds (ALARM_<NAME>) and environment event kinds (EV_<NAME>) ---
ALARM_NAMES = declare(globals(), "ALARM_", ("none", "cusum", "page-hinkley", "join", "leave"))
EV_KINDS = declare(globals(), "EV_", ("join", "leave"))

# --- per-device detector state columns ---
DET = declare(globals(), "DET_", count="N_DET", names=(
    "cusum_pos", "cusum_neg", "ph_n", "ph_mean", "ph_up", "ph_up_min", "ph_down", "ph_down_max",
    "since_alarm", "last_alarm_s", "last_resid"))

# --- policies ---
POLICIES = ("rr", "random", "jsq", "sect", "oracle", "e3")
POLICY_ID = {name: i for i, name in enumerate(POLICIES)}


class World(NamedTuple):
    """Read-only environment arrays (see ``tracefile.schema.Env``); times in seconds."""
    device_type: np.ndarray
    hosts: np.ndarray        # [D, M] uint8
    join_s: np.ndarray
    leave_s: np.ndarray
    # drift knots of device d: drift_t_s/drift_mult[drift_first[d]:drift_end[d]], at least one
    # (1.0 at t=0 if the trace has none), between a -inf and a +inf sentinel (_drift_knots)
    drift_first: np.ndarray  # [D]
    drift_end: np.ndarray    # [D]
    drift_t_s: np.ndarray
    drift_mult: np.ndarray
    drift_suffix_min: np.ndarray  # [like drift_mult] min of drift_mult[i:] within the device's list
    sem_device_type: np.ndarray
    sem_klass: np.ndarray
    sem_t0_s: np.ndarray
    sem_t1_s: np.ndarray
    sem_factor: np.ndarray
    sem_t1_max: np.ndarray   # [W] latest end among windows 0..w (the windows sorted by start)
    # the priors the routers see of each device's type, laid out [model, device] so that a
    # routing scan over the devices of one model reads contiguous memory (seconds, seconds
    # per token, shape); the mean of the known types for a type without prior (router_priors)
    dev_a: np.ndarray        # [M, D] fixed part of the service time
    dev_b: np.ndarray        # [M, D] per output token (TPOT) or per denoising step
    dev_c: np.ndarray        # [M, D] per input token
    dev_sigma: np.ndarray    # [M, D] lognormal shape of the noise
    model_kind: np.ndarray
    ev_t_s: np.ndarray       # [E] join/leave event times, sorted
    ev_kind: np.ndarray      # [E] EV_JOIN / EV_LEAVE
    ev_device: np.ndarray    # [E]
    # failure windows of device d: [fail_t0_s[i], fail_t1_s[i]) for i in fail_ptr[d]:fail_ptr[d+1],
    # sorted and disjoint (service.failure_pause)
    fail_ptr: np.ndarray     # [D+1] int64
    fail_t0_s: np.ndarray    # [F]
    fail_t1_s: np.ndarray    # [F]
    # the true parameters (the trace's priors table; equal to dev_* where the prior is known):
    # what the service model (sim.service) and the Oracle use
    true_a: np.ndarray       # [M, D]
    true_b: np.ndarray       # [M, D]
    true_c: np.ndarray       # [M, D]
    true_sigma: np.ndarray   # [M, D]


class State(NamedTuple):
    """Mutable simulation state. Slot arrays have length P (the pool capacity)."""
    ivar: np.ndarray
    fvar: np.ndarray
    online: np.ndarray       # [D] uint8
    unavailable_s: np.ndarray  # [M, D] added to routing costs: 0 if device d is online and hosts
                               # model m, inf if not (branch-free candidate test)
    free_at: np.ndarray      # [D] completion time of the last queued request (s)
    route_cost: np.ndarray   # [D] scratch: the routing cost of each device in one decision (s)
    drift_cursor: np.ndarray  # [D] first drift knot after the last time evaluated (service.py)
    q_head: np.ndarray       # [D] slot of the request in service (-1: idle)
    q_tail: np.ndarray       # [D]
    head_done_s: np.ndarray  # [D] completion time of the request in service (inf: idle)
    head_start_s: np.ndarray  # [D] start time of the request in service (s; stale when idle)
    q_len: np.ndarray        # [D] requests queued incl. the one in service
    backlog_est: np.ndarray  # [D] router's estimate of the queued work (s)
    # E3's view of the request in service (router.policies.e3_wait; kept by E3's kernel only,
    # 0 when idle): its estimate (s), the slope of its expected remaining time in its elapsed
    # time, and the floor of that expectation (s)
    head_est: np.ndarray     # [D]
    head_beta: np.ndarray    # [D]
    head_floor: np.ndarray   # [D]
    slot_f: np.ndarray       # [P, N_SF] float fields of the request in each slot (SF_*)
    slot_i: np.ndarray       # [P, N_SI] integer fields (SI_*)
    free_stack: np.ndarray   # [P]
    # online estimators, per (device, model): prefill = th_pre[0] + th_pre[1]*in/IN_SCALE,
    # decode = th_dec * out/OUT_SCALE (recursive least squares with forgetting)
    th_pre: np.ndarray       # [D, M, 2]
    cov_pre: np.ndarray      # [D, M, 2, 2]
    th_dec: np.ndarray       # [D, M]
    cov_dec: np.ndarray      # [D, M]
    n_obs: np.ndarray        # [D, M] observations since the last reset
    inv_sqrt_obs: np.ndarray  # [D, M] 1 / sqrt(1 + n_obs): the exploration bonus's decay
    resid_var: np.ndarray    # [D, M] EWMA of the squared log residual
    class_factor: np.ndarray  # [D, C] learned service-time factor of a class on a device (1 = none)
    stutter_ewma: np.ndarray  # [D, C] recent stutter frequency per device and class
    gate_until_s: np.ndarray  # [D, C] the risk gate of (device, class) is closed until then (s)
    det: np.ndarray          # [D, N_DET] change-point detector state
    cfg: np.ndarray          # router/detector configuration (router.config)
    # the output-length predictor of every router (router.view.learn_length), per (model,
    # class): observations (incl. the start value's weight), mean and variance (tokens)
    len_n: np.ndarray        # [M, C]
    len_mean: np.ndarray     # [M, C]
    len_var: np.ndarray      # [M, C]


def build_world(env) -> World:
    """Arrays of `env` (a tracefile Env) in the dtypes the kernel is compiled for."""
    joins = [(float(t), EV_JOIN, d) for d, t in enumerate(env.join_s) if t > 0]
    leaves = [(float(t), EV_LEAVE, d) for d, t in enumerate(env.leave_s) if np.isfinite(t)]
    events = sorted(joins + leaves)  # by time, then joins before leaves, then device
    seen = router_priors(env)
    w = np.argsort(env.sem_t0_s, kind="stable")  # semantic windows by start
    f8 = lambda x: np.ascontiguousarray(x, dtype=np.float64)  # noqa: E731
    i4 = lambda x: np.ascontiguousarray(x, dtype=np.int32)    # noqa: E731
    # NaN marks (type, model) pairs without priors (never hosted): 0 keeps NaN out of the kernel
    per_device = lambda x: np.ascontiguousarray(  # noqa: E731
        np.nan_to_num(np.asarray(x, np.float64), nan=0.0, posinf=np.inf, neginf=-np.inf)
        [np.asarray(env.device_type, np.int64)].T)
    return World(
        device_type=i4(env.device_type), hosts=np.ascontiguousarray(env.hosts, dtype=np.uint8),
        join_s=f8(env.join_s), leave_s=f8(env.leave_s),
        **_drift_knots(env),
        sem_device_type=i4(env.sem_device_type[w]), sem_klass=i4(env.sem_klass[w]),
        sem_t0_s=f8(env.sem_t0_s[w]), sem_t1_s=f8(env.sem_t1_s[w]), sem_factor=f8(env.sem_factor[w]),
        sem_t1_max=f8(np.maximum.accumulate(env.sem_t1_s[w]) if len(w) else np.zeros(0)),
        dev_a=per_device(seen[0]), dev_b=per_device(seen[1]),
        dev_c=per_device(seen[2]), dev_sigma=per_device(seen[3]),
        model_kind=np.ascontiguousarray(env.model_kind, dtype=np.int8),
        ev_t_s=f8([e[0] for e in events]), ev_kind=i4([e[1] for e in events]),
        ev_device=i4([e[2] for e in events]),
        fail_ptr=np.ascontiguousarray(env.fail_ptr, dtype=np.int64),
        fail_t0_s=f8(env.fail_t0_s), fail_t1_s=f8(env.fail_t1_s),
        true_a=per_device(env.prior_a), true_b=per_device(env.prior_b),
        true_c=per_device(env.prior_c), true_sigma=per_device(env.prior_sigma),
    )


def _drift_knots(env) -> dict:
    """The trace's drift knots laid out for ``service.drift_multiplier``: each device's list
    between a -inf and a +inf sentinel (so the cursor's walks need no bounds test), and one
    knot for a device without any (multiplier 1.0 at t=0: the same function)."""
    first, end, t, mult, suffix = [], [], [], [], []
    for d in range(len(env.device_type)):
        lo, hi = int(env.drift_ptr[d]), int(env.drift_ptr[d + 1])
        kt = np.asarray(env.drift_t_s[lo:hi], np.float64) if hi > lo else np.zeros(1)
        km = np.asarray(env.drift_mult[lo:hi], np.float64) if hi > lo else np.ones(1)
        first.append(sum(len(x) for x in t) + 1)
        t.append(np.concatenate(([-np.inf], kt, [np.inf])))
        mult.append(np.concatenate((km[:1], km, km[-1:])))
        suffix.append(np.minimum.accumulate(mult[-1][::-1])[::-1])
        end.append(first[-1] + len(kt))
    cat = lambda x: np.concatenate(x) if x else np.zeros(0)  # noqa: E731
    return dict(drift_first=np.array(first, np.int64), drift_end=np.array(end, np.int64),
                drift_t_s=cat(t), drift_mult=cat(mult), drift_suffix_min=cat(suffix))


def build_state(world: World, n_classes: int, cfg=None, pool: int = 4096, seed: int = 0,
                length_info: int = 0) -> State:
    """Initial state: devices online from their join time, empty queues, estimators at the
    priors (``router.estimators.reset_all`` is applied by the runner), output-length
    predictor at its start value, `length_info` a ``router.view.LENGTH_INFO`` id."""
    from ..router.view import length_arrays  # (router.view reads this module's indices)
    n_dev = world.device_type.shape[0]
    n_mod = world.model_kind.shape[0]
    ivar = np.zeros(N_IVAR, np.int64)
    ivar[IV_FREE_TOP] = pool
    ivar[IV_NEXT_DEV] = -1
    ivar[IV_LENGTH_INFO] = length_info
    ivar[IV_RNG] = np.int64(np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64 or 0x2545F4914F6CDD1D)
                            .view(np.int64))
    fvar = np.zeros(N_FVAR, np.float64)
    fvar[FV_NEXT_DONE] = np.inf
    fvar[FV_WINDOW_S] = 1.0
    slots = _slot_arrays(pool)
    state = State(
        ivar=ivar, fvar=fvar, online=np.zeros(n_dev, np.uint8),
        unavailable_s=np.full((n_mod, n_dev), np.inf),
        free_at=np.zeros(n_dev), route_cost=np.zeros(n_dev),
        drift_cursor=world.drift_first.copy(), q_head=np.full(n_dev, -1, np.int64),
        q_tail=np.full(n_dev, -1, np.int64), head_done_s=np.full(n_dev, np.inf),
        head_start_s=np.zeros(n_dev), q_len=np.zeros(n_dev, np.int64),
        backlog_est=np.zeros(n_dev), head_est=np.zeros(n_dev), head_beta=np.zeros(n_dev),
        head_floor=np.zeros(n_dev), **slots,
        th_pre=np.zeros((n_dev, n_mod, 2)), cov_pre=np.zeros((n_dev, n_mod, 2, 2)),
        th_dec=np.zeros((n_dev, n_mod)), cov_dec=np.zeros((n_dev, n_mod)),
        n_obs=np.zeros((n_dev, n_mod), np.int64), inv_sqrt_obs=np.ones((n_dev, n_mod)),
        resid_var=np.zeros((n_dev, n_mod)),
        class_factor=np.ones((n_dev, n_classes)), stutter_ewma=np.zeros((n_dev, n_classes)),
        gate_until_s=np.zeros((n_dev, n_classes)),
        det=np.zeros((n_dev, N_DET)),
        cfg=default_config() if cfg is None else np.asarray(cfg, np.float64).copy(),
        **length_arrays(n_mod, n_classes),
    )
    _online_at_start(world, state)
    return state


@njit(cache=True, inline="always")
def set_online(world, st, d, online):
    """Bring device `d` online (`online` = 1) or take it offline (0), and with it its routing
    candidacy ``unavailable_s[:, d]``: 0 for each model it hosts while online, inf otherwise.
    The kernel calls it at joins and leaves, ``build_state`` at the start."""
    st.online[d] = online
    for m in range(st.unavailable_s.shape[0]):
        st.unavailable_s[m, d] = 0.0 if online == 1 and world.hosts[d, m] == 1 else np.inf


@njit(cache=True)
def _online_at_start(world, st):
    """`set_online` for every device: online if it joins at t <= 0 (one compiled call: each
    call from Python costs ~15 us of argument typing)."""
    for d in range(st.online.shape[0]):
        set_online(world, st, d, 1 if world.join_s[d] <= 0 else 0)


def _slot_arrays(pool: int) -> dict:
    slot_i = np.zeros((pool, N_SI), np.int64)
    slot_i[:, SI_NEXT] = -1
    return dict(slot_f=np.zeros((pool, N_SF)), slot_i=slot_i,
                free_stack=np.arange(pool - 1, -1, -1, dtype=np.int64))


def grow_pool(state: State) -> State:
    """A copy of `state` with twice the slots (the kernel asked with STATUS_POOL_FULL)."""
    old = state.slot_f.shape[0]
    new = _slot_arrays(2 * old)
    for name in new:
        if name != "free_stack":
            new[name][:old] = getattr(state, name)
    # slots old..2*old-1 are free; keep the free stack's existing order below them
    top = int(state.ivar[IV_FREE_TOP])
    fresh = np.arange(2 * old - 1, old - 1, -1, dtype=np.int64)
    new["free_stack"][:old] = fresh
    new["free_stack"][old:old + top] = state.free_stack[:top]
    state.ivar[IV_FREE_TOP] = top + old
    return state._replace(**new)
