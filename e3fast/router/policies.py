"""Routing policies, one function each, behind one dispatch function (nopython).

``choose_<policy>(world, st, now, model, in_tokens, out_tokens, klass)`` returns
``(device, estimate_s)``: the chosen online device hosting `model` (-1 if none) and the
policy's estimate of the request's service time there (kept to estimate queued work).
`out_tokens` is what the router is handed (``router.view``): the predicted output length
of an LLM request when lengths are hidden (the default), the true one for the Oracle.
``CHOOSERS`` lists them by policy id: each kernel variant (``sim.kernel``) compiles its own.
``choose_device(policy, ...)`` dispatches on a policy id known only at run time.

Policies (ids in ``sim.state.POLICIES``):

* rr: round robin over the candidates.  * random: uniform (seeded xorshift64*).
* jsq: fewest queued requests.
* sect: shortest expected completion using the static MLPerf priors, never updated.
* oracle: shortest expected completion using the true output length, the true current mean
  service times and the true remaining work of each queue (online: it never sees future
  arrivals or drift). Full information whatever ``--length-info`` says.
* e3: SECT on the online estimates (times the learned class factor), with an exploration
  bonus for idle devices on pairs with few observations, a risk penalty from recent
  stutter, and the controller's risk gates (closed until a time). With hidden output
  lengths its cost fits the uncertainty (``e3_wait``, ``head_view``): the request in
  service is expected to need time according to its spread and how long it has run (never
  0 while it runs), and a device's cost may add ``length_risk`` standard deviations of the
  request's service time there (default 0: the expected completion time).
"""
import numpy as np
from numba import njit

from ..sim.service import prior_mean_service, true_mean_service
from ..sim.state import IV_LENGTH_INFO, IV_RNG, IV_RR_NEXT
from ..numba_private import disable_cmov_converter
from .config import CFG_EXPLORE, CFG_LENGTH_RISK, CFG_RISK, CFG_TAIL_GROWTH
from .estimators import predict_class_service, predict_decode
from .view import LENGTH_HIDDEN, out_spread

P_RR, P_RANDOM, P_JSQ, P_SECT, P_ORACLE, P_E3 = range(6)

# The scans below pick the cheapest device with conditional moves; LLVM's x86 pass that turns
# conditional moves inside loops back into branches would make them mispredict about every
# other device (the SECT scan was 40% of the kernel). Set before anything using this module
# compiles; process-wide, code generation only (results are identical).
disable_cmov_converter()


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
    queued there minus the time its current request has already been served.

    No branch on an idle device: its backlog is exactly 0 and its last start lies in the
    past, so the formula gives (+-)0 there, and ``wait + estimate`` equals the estimate bit
    for bit. (A branch on the queue length mispredicts about every other device.)"""
    return max(st.backlog_est[d] - (now - st.head_start_s[d]), 0.0)


@njit(cache=True, inline="always")
def head_view(world, st, d, model, klass, est):
    """E3's model of the remaining time of a request of (model, klass) with service estimate
    `est` (s) that starts service on device d: ``(est, beta, floor)`` for ``e3_wait``.

    The remaining time after e seconds of service is modelled by the linear mean residual
    life family (Hall and Wellner 1981), ``E[S - e | S > e] = est + beta * e``, with the
    beta that gives the service time's coefficient of variation c (the spread the unknown
    output length implies, ``router.view.out_spread``): ``c^2 = (1 + beta) / (1 - beta)``,
    ``beta = (c^2 - 1) / (c^2 + 1)``. c = 0 (a known length) gives beta = -1, the rule
    ``max(est - e, 0)`` of SECT; c = 1 the memoryless constant est; c > 1 (heavy tails) a
    remaining time that grows with e. Where a light-tailed model would run out (a request
    that outlived est / -beta), the expectation stays at `floor` = c x est, one standard
    deviation, instead of 0.

    Growth (beta > 0) is scaled by ``cfg[tail_growth]`` (default 0: none). A request that
    runs long may be long, or its device slower than E3 believes; a remaining time that grows
    without bound then withdraws the device exactly when capacity is short (measured in
    docs/MODEL.md), so by default a heavy-tailed request is expected to need `est` more
    whatever its elapsed time (the memoryless case)."""
    sd = predict_decode(st, d, model, out_spread(world, st, model, klass)) * st.class_factor[d, klass]
    c = sd / est
    c2 = c * c
    beta = (c2 - 1.0) / (c2 + 1.0)
    return est, min(beta, 0.0) + st.cfg[CFG_TAIL_GROWTH] * max(beta, 0.0), sd


@njit(cache=True, inline="always")
def e3_wait(st, d, now):
    """E3's expected time (s) until device d finishes its queue, lengths hidden: the queued
    estimates behind the request in service plus that request's expected remaining time
    given how long it has run (``head_view``). 0 for an idle device (its head fields are 0)."""
    rest = max(st.backlog_est[d] - st.head_est[d], 0.0)
    remaining = max(st.head_est[d] + st.head_beta[d] * (now - st.head_start_s[d]),
                    st.head_floor[d])
    return rest + remaining


@njit(cache=True, inline="always")
def choose_rr(world, st, now, model, in_tokens, out_tokens, klass):
    """Round robin over the candidates: (device, prior service estimate s), (-1, 0) if none."""
    n_dev = st.online.shape[0]
    unavailable = st.unavailable_s[model]  # 0: online and hosts the model; inf: not
    start = st.ivar[IV_RR_NEXT]
    for j in range(n_dev):
        d = (start + j) % n_dev
        if unavailable[d] == 0.0:
            st.ivar[IV_RR_NEXT] = (d + 1) % n_dev
            return d, prior_mean_service(world, d, model, in_tokens, out_tokens)
    return -1, 0.0


@njit(cache=True, inline="always")
def choose_random(world, st, now, model, in_tokens, out_tokens, klass):
    """A uniformly random candidate (seeded stream in ``st.ivar``)."""
    n_dev = st.online.shape[0]
    unavailable = st.unavailable_s[model]
    count = 0
    for d in range(n_dev):
        if unavailable[d] == 0.0:
            count += 1
    if count == 0:
        return -1, 0.0
    k = int(next_uniform(st.ivar) * count)
    for d in range(n_dev):
        if unavailable[d] == 0.0:
            if k == 0:
                return d, prior_mean_service(world, d, model, in_tokens, out_tokens)
            k -= 1
    return -1, 0.0


# The scans below are branch-free (a non-candidate costs inf, the lowest device wins ties):
# the compiler emits conditional moves instead of branches that mispredict.

@njit(cache=True, inline="always")
def choose_jsq(world, st, now, model, in_tokens, out_tokens, klass):
    """The candidate with the fewest queued requests."""
    unavailable = st.unavailable_s[model]
    best = -1
    best_cost = np.inf
    for d in range(st.online.shape[0]):
        cost = float(st.q_len[d]) + unavailable[d]
        best = d if cost < best_cost else best
        best_cost = min(best_cost, cost)
    if best < 0:
        return -1, 0.0
    return best, prior_mean_service(world, best, model, in_tokens, out_tokens)


@njit(cache=True, inline="always")
def choose_sect(world, st, now, model, in_tokens, out_tokens, klass):
    """Shortest expected completion from the static priors (never updated)."""
    n_dev = st.online.shape[0]
    unavailable = st.unavailable_s[model]
    cost = st.route_cost  # first every device's cost (a loop the compiler vectorises) ...
    for d in range(n_dev):
        cost[d] = ((estimated_wait(st, d, now)
                    + prior_mean_service(world, d, model, in_tokens, out_tokens))
                   + unavailable[d])
    # ... then the cheapest, in one chain of comparisons (two, as in sim.scan.lowest,
    # measured 6 ns slower here: 88-89 vs 94-95 ns/req)
    best = -1
    best_cost = np.inf
    for d in range(n_dev):
        best = d if cost[d] < best_cost else best
        best_cost = min(best_cost, cost[d])
    if best < 0:
        return -1, 0.0
    return best, prior_mean_service(world, best, model, in_tokens, out_tokens)


@njit(cache=True, inline="always")
def choose_oracle(world, st, now, model, in_tokens, out_tokens, klass):
    """Shortest expected completion from the true current mean service times and the true
    remaining work of each queue."""
    unavailable = st.unavailable_s[model]
    best = -1
    best_cost = np.inf
    for d in range(st.online.shape[0]):
        est = true_mean_service(world, st.drift_cursor, d, model, in_tokens, out_tokens,
                                klass, now)
        cost = (max(st.free_at[d] - now, 0.0) + est) + unavailable[d]
        best = d if cost < best_cost else best
        best_cost = min(best_cost, cost)
    if best < 0:
        return -1, 0.0
    return best, true_mean_service(world, st.drift_cursor, best, model, in_tokens, out_tokens,
                                   klass, now)


@njit(cache=True, inline="always")
def choose_e3(world, st, now, model, in_tokens, out_tokens, klass):
    """SECT on the online estimates with exploration, stutter risk and the risk gates: open
    gates first; if every candidate is gated, the least risky gated one."""
    unavailable = st.unavailable_s[model]
    explore = st.cfg[CFG_EXPLORE]
    risk = st.cfg[CFG_RISK]
    hidden = st.ivar[IV_LENGTH_INFO] == LENGTH_HIDDEN
    # hidden lengths: length_risk standard deviations of the length (tokens); 0 when seen
    spread = st.cfg[CFG_LENGTH_RISK] * out_spread(world, st, model, klass)
    best = -1
    best_cost = np.inf
    gated_best = -1
    gated_cost = np.inf
    for d in range(st.online.shape[0]):
        est = predict_class_service(st, d, model, klass, in_tokens, out_tokens)
        # optimism only for idle devices (a multiplication by 0/1, not a branch): try a
        # little-known pair, do not flood it
        bonus = explore * st.inv_sqrt_obs[d, model] * np.float64(st.q_len[d] == 0)
        cost = est * (1.0 + risk * st.stutter_ewma[d, klass] - bonus)
        if hidden:  # loop-invariant: the exact-length rule is the model before issue 15
            cost = e3_wait(st, d, now) + cost
            if spread > 0.0:  # loop-invariant too: no work at the default length_risk 0
                cost += predict_decode(st, d, model, spread) * st.class_factor[d, klass]
        else:
            cost = estimated_wait(st, d, now) + cost
        cost += unavailable[d]
        if now >= st.gate_until_s[d, klass]:  # predictable: gates are rarely closed
            best = d if cost < best_cost else best
            best_cost = min(best_cost, cost)
        else:
            gated_best = d if cost < gated_cost else gated_best
            gated_cost = min(gated_cost, cost)
    if best < 0:
        best = gated_best
    if best < 0:
        return -1, 0.0
    return best, predict_class_service(st, best, model, klass, in_tokens, out_tokens)


#: the router of each policy id (``sim.state.POLICIES``); the kernel compiles one variant per
#: entry, with only that router in it (``sim.kernel``)
CHOOSERS = (choose_rr, choose_random, choose_jsq, choose_sect, choose_oracle, choose_e3)


@njit(cache=True, inline="always")
def choose_device(policy, world, st, now, model, in_tokens, out_tokens, klass):
    """The device for a request arriving at `now` and the policy's service estimate (s),
    for a policy id known only at run time (the micro-benchmarks of one decision)."""
    if policy == P_RR:
        return choose_rr(world, st, now, model, in_tokens, out_tokens, klass)
    if policy == P_RANDOM:
        return choose_random(world, st, now, model, in_tokens, out_tokens, klass)
    if policy == P_JSQ:
        return choose_jsq(world, st, now, model, in_tokens, out_tokens, klass)
    if policy == P_SECT:
        return choose_sect(world, st, now, model, in_tokens, out_tokens, klass)
    if policy == P_ORACLE:
        return choose_oracle(world, st, now, model, in_tokens, out_tokens, klass)
    return choose_e3(world, st, now, model, in_tokens, out_tokens, klass)
