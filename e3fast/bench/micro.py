"""Jitted drivers for the micro-benchmarks: each calls one building block of the kernel N times.

The building blocks are ``inline="always"`` functions, so inside a driver they compile the
way they do inside ``sim.kernel.run_segment`` (same inlining, same owner-free array views
from ``sim.borrow``). A driver's time divided by its number of calls is the cost of one call
inside the kernel, without the Python call overhead (which ``tests/bench`` measures apart).

``prepare_routing(trace, policy, ...)`` runs the real kernel over a prefix of a trace so the
routers see realistic state (queues, learned estimates), then hands out the next requests.

The drivers are cached like the kernels: an edit of an inlined callee recompiles them
(docs/CACHE.md).
"""
import numpy as np
from numba import njit

from ..detect.detectors import cusum_update, page_hinkley_update
from ..router.config import CFG_FORGET
from ..router.estimators import reset_all, update_pair
from ..router.policies import choose_device
from ..sim.borrow import make_borrow
from ..sim.service import true_service_parts
from ..sim.state import (IV_BLOCK_POS, IV_CHECKPOINTS_ON, POLICY_ID, STATUS_FINISHED,
                         STATUS_HORIZON, STATUS_POOL_FULL, State, World, build_state, build_world,
                         grow_pool)

_borrow_world = make_borrow(World)
_borrow_state = make_borrow(State)


@njit(cache=True)
def route_batch(policy, world, st, now, model, in_tokens, out_tokens, klass, reps):
    """``reps`` passes of ``choose_device`` over the prepared requests; returns a checksum.
    (``policy`` is a run-time id here: each decision also pays ``choose_device``'s switch,
    a few predictable branches that the kernels, one per policy, do not have.)"""
    world = _borrow_world(world)
    st = _borrow_state(st)
    acc = 0
    for _ in range(reps):
        for i in range(model.shape[0]):
            d, est = choose_device(policy, world, st, now, model[i], in_tokens[i],
                                   out_tokens[i], klass[i])
            acc += d
    return acc


@njit(cache=True)
def update_batch(st, dev, model, in_tokens, out_tokens, prefill_s, decode_s, reps):
    """``reps`` passes of the RLS ``update_pair`` over prepared observations."""
    st = _borrow_state(st)
    for _ in range(reps):
        for i in range(dev.shape[0]):
            update_pair(st, dev[i], model[i], in_tokens[i], out_tokens[i], prefill_s[i],
                        decode_s[i], 0.01, st.cfg[CFG_FORGET])
    return st.th_dec[0, 0]


@njit(cache=True)
def cusum_batch(det, dev, u, k, reps):
    """``reps`` passes of the two-sided CUSUM step over prepared residuals."""
    s = 0.0
    for _ in range(reps):
        for i in range(u.shape[0]):
            s += cusum_update(det, dev[i], u[i], k)
    return s


@njit(cache=True)
def page_hinkley_batch(det, dev, u, delta, reps):
    """``reps`` passes of the two-sided Page-Hinkley step over prepared residuals."""
    s = 0.0
    for _ in range(reps):
        for i in range(u.shape[0]):
            s += page_hinkley_update(det, dev[i], u[i], delta)
    return s


@njit(cache=True)
def service_batch(world, dev, model, in_tokens, out_tokens, klass, z, t_s, reps):
    """``reps`` passes of ``true_service_parts`` (drift knots, semantic windows, noise); give
    `t_s` in increasing order, as a replay evaluates them."""
    world = _borrow_world(world)
    s = 0.0
    for _ in range(reps):
        cursor = world.drift_first.copy()
        for i in range(dev.shape[0]):
            pre, dec = true_service_parts(world, cursor, dev[i], model[i], in_tokens[i],
                                          out_tokens[i], klass[i], z[i], t_s[i])
            s += pre + dec
    return s


def prepare_routing(trace, policy: str, warm: int = 20_000, n: int = 4096):
    """Replay the first `warm` requests of `trace` with `policy` (kernel, checkpoints off) and
    stop at the arrival of request `warm`. Returns ``(policy_id, world, state, now, requests)``
    where ``requests`` = (model, in_tokens, out_tokens, klass) of the next `n` requests in the
    dtypes of the kernel's slots (the arguments of ``choose_device`` inside the kernel)."""
    from ..runner import ensure_compiled
    from ..sim import kernel as K
    from ..sim.metrics import new_metrics, new_per_request
    from ..tracefile.reader import open_trace

    ensure_compiled(policy)
    with open_trace(trace) as tr:
        env, cols = tr.env, tr.read_all()
    total = len(cols["arrival_s"])
    warm = min(warm, max(total - n, 0))
    world = build_world(env)
    st = build_state(world, len(env.classes), seed=0)
    reset_all(world, st, 1.0)
    st.ivar[IV_CHECKPOINTS_ON] = 0
    met = new_metrics(world.device_type.shape[0], 1)
    prq = new_per_request(0)
    now = float(cols["arrival_s"][warm]) if warm < total else np.inf
    block = [cols[k] for k in ("arrival_s", "model", "in_tokens", "out_tokens", "klass", "z")]
    pid = POLICY_ID[policy]
    st.ivar[IV_BLOCK_POS] = 0
    while True:
        status = K.run_segment(pid, world, st, met, prq, *block, 0, True, now)
        if status == STATUS_POOL_FULL:
            st = grow_pool(st)
        elif status in (STATUS_HORIZON, STATUS_FINISHED):
            break
    sel = slice(warm, warm + n)
    reqs = (cols["model"][sel].astype(np.int32), cols["in_tokens"][sel].astype(np.int64),
            cols["out_tokens"][sel].astype(np.int64), cols["klass"][sel].astype(np.int32))
    return pid, world, st, now, reqs


def observations(world, n: int, seed: int = 0):
    """`n` synthetic feedback observations (device, model, in, out, prefill_s, decode_s) on
    pairs the fleet hosts: the inputs of the estimator micro-benchmark."""
    rng = np.random.default_rng(seed)
    pairs = np.argwhere(world.hosts == 1)
    pick = pairs[rng.integers(0, len(pairs), n)]
    dev = pick[:, 0].astype(np.int64)
    model = pick[:, 1].astype(np.int64)
    in_tokens = rng.integers(1, 2000, n).astype(np.int64)
    out_tokens = rng.integers(1, 500, n).astype(np.int64)
    noise = np.exp(0.2 * rng.standard_normal(n))
    pre = (world.dev_a[model, dev] + world.dev_c[model, dev] * in_tokens) * noise
    dec = world.dev_b[model, dev] * out_tokens * noise
    return dev, model, in_tokens, out_tokens, pre, dec
