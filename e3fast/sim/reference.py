"""A slow, plainly written reference simulator of the e3fast model (pure Python, for tests).

It simulates the same model as the Numba kernel (``sim.kernel``), written for clarity
instead of speed and sharing none of the kernel's code: no Numba, no ``sim.service``, no
``router.policies``. The tests (tests/test_reference.py) check that the kernel's
per-request results equal these, bit for bit, for the policies rr, random, jsq, sect and
oracle. The E3 router is out of scope here (its estimators are tested on their own).

The model (docs/MODEL.md):

* True service time of request r started on device d at time t::

      S = (a + c*in + b*out) * drift_d(t) * sem(type_d, class_r, t) * exp(sigma*z - sigma^2/2)

  with ``(a, b, c, sigma)`` the priors of (type of d, model of r); ``prefill = (a + c*in) * f``
  and ``decode = b*out * f`` where ``f`` is the product of the three factors.
  ``drift_d`` is piecewise linear through the device's knots (constant before the first and
  after the last; two knots at one time make a step that applies from that time on);
  ``sem`` multiplies the factors of every window ``[t0, t1)`` for (type, class) holding t.
* Failures: inside a failure window ``[t0, t1)`` of its device a request makes no progress.
  The prefill's work ``p`` starts at the service start ``t``; each window that begins before
  the (growing) end ``t + p + pause`` adds ``t1 - max(t0, t)`` to the pause, window by window
  in time order. The decode's work starts at ``t + prefill`` (the paused prefill) and is
  paused the same way; so TTFT and completion both come after a failure's recovery.
* Each device serves one request at a time, first come first served. A request queued on
  device d at time ``now`` starts at ``max(now, completion of the request before it on d)``
  (Lindley's recursion), and its service time is evaluated at that start time.
* Events are processed in time order; on equal times completions come first (lowest device
  index first, FIFO within a device), then joins/leaves (joins before leaves, then lowest
  device index), then arrivals (in trace order).
* A device with ``join_s > 0`` comes online at ``join_s`` (else it is online from t = 0) and
  goes offline at ``leave_s`` (if finite). A leaving device's requests (the one in service
  first, then the queue, FIFO) are dispatched again at that instant, each counting a reroute.
* A request whose model no online device hosts when it is dispatched is dropped (device -1).

What routers know (``length_info``, docs/MODEL.md "What a router knows"): with "hidden"
(the default) a router is handed, instead of an LLM request's output length, the running
mean of the output lengths of the completed requests of its (model, class): a Welford mean
with weight ``max(1/n, 1/LENGTH_MEMORY)`` on the n-th observation, the start value counting
as the first (``LENGTH_PRIOR_WEIGHT``). The start value and those two constants are
parameters of the model, taken from ``router.view`` (they are data, not kernel code); the
update is written out again here. A diffusion request's steps are always seen; with "exact"
every router sees the true length. The Oracle always sees the true length.

Routers (what each knows):

* rr: a pointer over device indices; the next online device hosting the model, starting at
  the pointer, which then moves past the chosen device.
* random: uniform among the online devices hosting the model, drawn from the xorshift64*
  stream seeded like ``sim.state.build_state`` (one draw per dispatch that has a candidate).
* jsq: fewest requests on the device (in service + queued); lowest index on ties.
* sect: least ``estimated wait + prior service`` where the prior service is
  ``a + b*out + c*in`` of the device's type (``out`` the length the router is handed) (no drift, semantic or noise), and the
  estimated wait is the prior work queued on the device minus the time its current request
  has been in service (at least 0; 0 for an idle device).
* oracle: least ``true remaining work + true mean service now`` (the drift and semantic
  factors at the dispatch time, noise mean 1): the remaining work is exact (the completion
  time of the device's last queued request minus now). A device inside a failure window
  costs 1e18 s (it knows the failure, not the recovery time).
"""
import heapq
import math
from collections import deque
from typing import NamedTuple

import numpy as np

from ..tracefile.schema import router_priors

POLICIES = ("rr", "random", "jsq", "sect", "oracle")
LENGTH_INFO = ("hidden", "exact")
DEFAULT_STUTTER_TPOT_S = 0.1
_MASK64 = (1 << 64) - 1

# event kinds, in their tie-breaking order at equal times
_COMPLETION, _ENVIRONMENT, _ARRIVAL = 0, 1, 2
_JOIN, _LEAVE = 0, 1


class ReferenceResult(NamedTuple):
    """Per-request results in trace order (the fields of the kernel's ``PerRequest``)."""
    device: np.ndarray        # int32, -1 = dropped
    dispatch_s: np.ndarray    # time of the last dispatch (dropped: time of the drop)
    start_s: np.ndarray       # NaN if dropped
    completion_s: np.ndarray  # NaN if dropped
    ttft_s: np.ndarray        # start + prefill - arrival (NaN if dropped)
    tpot_s: np.ndarray        # decode / out_tokens for an LLM (NaN for diffusion or dropped)
    stutter: np.ndarray       # uint8: LLM with tpot > threshold
    reroutes: np.ndarray      # int16: times the request was re-dispatched by a leave


# --- the service model ---------------------------------------------------------------------

def drift_factor(env, device: int, t: float) -> float:
    """Hidden slowdown of `device` at time `t` (piecewise linear in its knots; 1 if none)."""
    lo, hi = int(env.drift_ptr[device]), int(env.drift_ptr[device + 1])
    times = [float(x) for x in env.drift_t_s[lo:hi]]
    mults = [float(x) for x in env.drift_mult[lo:hi]]
    if not times:
        return 1.0
    if t < times[0]:
        return mults[0]
    last = max(k for k in range(len(times)) if times[k] <= t)  # last knot at or before t
    if last == len(times) - 1:
        return mults[-1]
    w = (t - times[last]) / (times[last + 1] - times[last])
    return mults[last] + w * (mults[last + 1] - mults[last])


def semantic_factor(env, device_type: int, klass: int, t: float) -> float:
    """Product of the factors of the semantic windows covering (type, class) at time `t`,
    multiplied in the order of the windows' starts (stable)."""
    f = 1.0
    for w in np.argsort(env.sem_t0_s, kind="stable").tolist():
        if (int(env.sem_device_type[w]) == device_type and int(env.sem_klass[w]) == klass
                and float(env.sem_t0_s[w]) <= t < float(env.sem_t1_s[w])):
            f *= float(env.sem_factor[w])
    return f


def _priors(env, device: int, model: int):
    """The TRUE (a, b, c, sigma) of the device's type for `model` (the trace's table)."""
    tp = int(env.device_type[device])
    return (float(env.prior_a[tp, model]), float(env.prior_b[tp, model]),
            float(env.prior_c[tp, model]), float(env.prior_sigma[tp, model]))


FAILED_SERVICE_S = 1e18  # the oracle's expected service time on a failed device


def failure_windows(env, device: int):
    """[(t0, t1)] failure windows of `device`, in time order."""
    lo, hi = int(env.fail_ptr[device]), int(env.fail_ptr[device + 1])
    return list(zip(env.fail_t0_s[lo:hi].tolist(), env.fail_t1_s[lo:hi].tolist()))


def pause(env, device: int, t: float, work: float) -> float:
    """Seconds without progress while `device` does `work` seconds of work from `t`."""
    p = 0.0
    for t0, t1 in failure_windows(env, device):
        if t1 <= t:
            continue  # over before the work starts
        if t0 >= t + work + p:
            break     # starts after the work is done
        p += t1 - max(t0, t)
    return p


def failed(env, device: int, t: float) -> bool:
    return any(t0 <= t < t1 for t0, t1 in failure_windows(env, device))


def service_parts(env, device: int, model: int, in_tokens: int, out_tokens: int, klass: int,
                  z: float, t: float):
    """(prefill_s, decode_s) of a request whose service starts on `device` at time `t`,
    failure pauses included."""
    a, b, c, sigma = _priors(env, device, model)
    slow = drift_factor(env, device, t) * semantic_factor(env, int(env.device_type[device]),
                                                          klass, t)
    factor = slow * math.exp(sigma * z - sigma * sigma / 2)
    prefill, decode = (a + c * in_tokens) * factor, b * out_tokens * factor
    if not failure_windows(env, device):
        return prefill, decode
    prefill = prefill + pause(env, device, t, prefill)
    return prefill, decode + pause(env, device, t + prefill, decode)


def mean_service(env, device: int, model: int, in_tokens: int, out_tokens: int, klass: int,
                 t: float) -> float:
    """True expected service time on `device` if started at `t` (the noise has mean 1);
    FAILED_SERVICE_S inside a failure window."""
    if failed(env, device, t):
        return FAILED_SERVICE_S
    a, b, c, _ = _priors(env, device, model)
    return (a + b * out_tokens + c * in_tokens) * (
        drift_factor(env, device, t)
        * semantic_factor(env, int(env.device_type[device]), klass, t))


def prior_service(env, device: int, model: int, in_tokens: int, out_tokens: int) -> float:
    """Service time the static priors predict (no drift, no semantic factor, no noise): the
    routers' priors (``router_priors``: a type without prior gets the known types' mean)."""
    tp = int(env.device_type[device])
    a, b, c, _ = (float(x[tp, model]) for x in router_priors(env))
    return a + b * out_tokens + c * in_tokens


# --- the random stream -----------------------------------------------------------------------

class XorShift64Star:
    """The xorshift64* generator of the kernel's random router, on Python ints."""

    def __init__(self, seed: int):
        self.state = (seed * 0x9E3779B97F4A7C15) % (1 << 64) or 0x2545F4914F6CDD1D

    def uniform(self) -> float:
        """A float in [0, 1) from the top 53 bits of the scrambled state."""
        x = self.state
        x ^= x >> 12
        x ^= (x << 25) & _MASK64
        x ^= x >> 27
        self.state = x
        r = (x * 0x2545F4914F6CDD1D) & _MASK64
        return (r >> 11) / 9007199254740992.0


# --- the simulator ---------------------------------------------------------------------------

class _Request:
    __slots__ = ("row", "arrival", "model", "n_in", "n_out", "klass", "z", "device", "ticket",
                 "dispatch", "start", "done", "prefill", "decode", "estimate", "reroutes",
                 "ended")

    def __init__(self, row, arrival, model, n_in, n_out, klass, z):
        self.row, self.arrival, self.model = row, arrival, model
        self.n_in, self.n_out, self.klass, self.z = n_in, n_out, klass, z
        self.device = -1
        self.ticket = -1          # id of the current dispatch (stale completions are skipped)
        self.dispatch = self.start = self.done = math.nan
        self.prefill = self.decode = self.estimate = 0.0
        self.reroutes = 0
        self.ended = False


class _Device:
    __slots__ = ("index", "type", "hosts", "online", "queue", "backlog")

    def __init__(self, index, tp, hosts, online):
        self.index, self.type, self.hosts, self.online = index, tp, hosts, online
        self.queue = deque()      # requests on the device, the one in service first
        self.backlog = 0.0        # SECT's estimate of the work queued here (s)


class ReferenceSimulator:
    """One replay of `requests` (dict of the trace columns) in `env` under `policy`."""

    def __init__(self, env, requests: dict, policy: str, seed: int = 0,
                 stutter_tpot_s: float = DEFAULT_STUTTER_TPOT_S, length_info: str = "hidden"):
        from ..router.view import LENGTH_MEMORY, LENGTH_PRIOR_WEIGHT, length_prior
        if policy not in POLICIES:
            raise ValueError(f"reference policies are {POLICIES}, not {policy!r}")
        if length_info not in LENGTH_INFO:
            raise ValueError(f"length_info is one of {LENGTH_INFO}, not {length_info!r}")
        self.env, self.policy, self.stutter_tpot_s = env, policy, float(stutter_tpot_s)
        self.hidden = length_info == "hidden"
        mean, sd = length_prior()
        self.length_memory = LENGTH_MEMORY
        # (model, class) -> [observations, mean, variance] of completed output lengths
        self.lengths = {(m, k): [LENGTH_PRIOR_WEIGHT, mean, sd * sd]
                        for m in range(len(env.model_kind)) for k in range(len(env.classes))}
        self.llm = [int(k) == 0 for k in env.model_kind]
        cols = [np.asarray(requests[k]).tolist() for k in
                ("arrival_s", "model", "in_tokens", "out_tokens", "klass", "z")]
        self.requests = [_Request(i, *row) for i, row in enumerate(zip(*cols))]
        self.devices = [_Device(d, int(env.device_type[d]),
                                [bool(h) for h in env.hosts[d]], float(env.join_s[d]) <= 0)
                        for d in range(len(env.device_type))]
        self.rr_next = 0
        self.rng = XorShift64Star(seed)
        self.tickets = 0

    # what routers know --------------------------------------------------------------------
    def seen_out(self, req):
        """The output length a router is handed for `req` (the Oracle does not ask)."""
        if self.hidden and self.llm[req.model]:
            return self.lengths[(req.model, req.klass)][1]
        return float(req.n_out)

    def learn_length(self, req):
        """A completed LLM request reveals its output length."""
        stats = self.lengths[(req.model, req.klass)]
        stats[0] += 1.0
        w = max(1.0 / stats[0], 1.0 / self.length_memory)
        delta = req.n_out - stats[1]
        stats[1] += w * delta
        stats[2] = (1.0 - w) * (stats[2] + w * delta * delta)

    # routing ----------------------------------------------------------------------------
    def candidates(self, model):
        return [dev for dev in self.devices if dev.online and dev.hosts[model]]

    @staticmethod
    def free_time(dev, now):
        """When the device would start a request queued now."""
        return max(now, dev.queue[-1].done) if dev.queue else now

    def sect_wait(self, dev, now):
        if not dev.queue:
            return 0.0
        return max(dev.backlog - (now - dev.queue[0].start), 0.0)

    def choose(self, req, now):
        """(device or None, the policy's service estimate)."""
        env, p = self.env, self.policy
        cands = self.candidates(req.model)
        if not cands:
            return None, 0.0
        out = self.seen_out(req)
        prior = lambda dev: prior_service(env, dev.index, req.model, req.n_in, out)  # noqa
        if p == "rr":
            n = len(self.devices)
            dev = min(cands, key=lambda dv: (dv.index - self.rr_next) % n)
            self.rr_next = (dev.index + 1) % n
            return dev, prior(dev)
        if p == "random":
            dev = cands[int(self.rng.uniform() * len(cands))]
            return dev, prior(dev)
        if p == "jsq":
            dev = min(cands, key=lambda dv: (len(dv.queue), dv.index))
            return dev, prior(dev)
        best = best_cost = best_est = None
        for dev in cands:  # lowest index wins ties
            if p == "sect":
                est = prior(dev)
                cost = self.sect_wait(dev, now) + est
            else:  # oracle
                est = mean_service(env, dev.index, req.model, req.n_in, req.n_out, req.klass,
                                   now)
                cost = (self.free_time(dev, now) - now) + est
            if best is None or cost < best_cost:
                best, best_cost, best_est = dev, cost, est
        return best, best_est

    def dispatch(self, req, now, events):
        dev, est = self.choose(req, now)
        req.dispatch = now
        if dev is None:
            req.device, req.ended = -1, True
            return
        start = self.free_time(dev, now)
        pre, dec = service_parts(self.env, dev.index, req.model, req.n_in, req.n_out,
                                 req.klass, req.z, start)
        req.device, req.start, req.prefill, req.decode = dev.index, start, pre, dec
        req.done = start + pre + dec
        req.estimate = est
        self.tickets += 1
        req.ticket = self.tickets
        dev.queue.append(req)
        dev.backlog += est
        heapq.heappush(events, (req.done, _COMPLETION, dev.index, req.ticket, req.row))

    # events -----------------------------------------------------------------------------
    def complete(self, req, now):
        dev = self.devices[req.device]
        assert dev.queue and dev.queue[0] is req, "completion of a request not in service"
        assert dev.online, "completion on an offline device"
        dev.queue.popleft()
        dev.backlog = max(dev.backlog - req.estimate, 0.0) if dev.queue else 0.0
        req.ended = True
        if self.llm[req.model]:
            self.learn_length(req)

    def leave(self, dev, now, events):
        dev.online = False
        moved = list(dev.queue)
        dev.queue.clear()
        dev.backlog = 0.0
        for req in moved:  # the one in service first, then FIFO
            req.reroutes += 1
            req.device, req.ticket = -1, -1
            req.start = req.done = math.nan
            self.dispatch(req, now, events)

    def run(self) -> ReferenceResult:
        env = self.env
        events = []
        for d, dev in enumerate(self.devices):
            if float(env.join_s[d]) > 0:
                events.append((float(env.join_s[d]), _ENVIRONMENT, _JOIN, d, 0))
            if math.isfinite(float(env.leave_s[d])):
                events.append((float(env.leave_s[d]), _ENVIRONMENT, _LEAVE, d, 0))
        for req in self.requests:
            events.append((req.arrival, _ARRIVAL, req.row, 0, 0))
        heapq.heapify(events)
        while events:
            now, kind, x, y, row = heapq.heappop(events)
            if kind == _COMPLETION:
                req = self.requests[row]
                if req.ticket == y and not req.ended:  # else: stale (the request moved)
                    self.complete(req, now)
            elif kind == _ENVIRONMENT:
                if x == _JOIN:
                    self.devices[y].online = True
                else:
                    self.leave(self.devices[y], now, events)
            else:
                self.dispatch(self.requests[x], now, events)
        return self.result()

    def result(self) -> ReferenceResult:
        n = len(self.requests)
        out = ReferenceResult(np.full(n, -1, np.int32), np.full(n, np.nan), np.full(n, np.nan),
                              np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan),
                              np.zeros(n, np.uint8), np.zeros(n, np.int16))
        for r in self.requests:
            assert r.ended, f"request {r.row} never ended"
            out.dispatch_s[r.row] = r.dispatch
            out.reroutes[r.row] = r.reroutes
            if r.device < 0:
                continue
            out.device[r.row] = r.device
            out.start_s[r.row] = r.start
            out.completion_s[r.row] = r.done
            out.ttft_s[r.row] = r.start + r.prefill - r.arrival
            if self.llm[r.model]:
                tpot = r.decode / r.n_out
                out.tpot_s[r.row] = tpot
                out.stutter[r.row] = tpot > self.stutter_tpot_s
        return out


def simulate(env, requests: dict, policy: str, seed: int = 0,
             stutter_tpot_s: float = DEFAULT_STUTTER_TPOT_S,
             length_info: str = "hidden") -> ReferenceResult:
    """Per-request results of replaying `requests` (the /requests columns by name) in `env`
    (a tracefile ``Env``) with `policy` (one of ``POLICIES``); `seed` seeds `random`;
    `length_info` (one of ``LENGTH_INFO``) is what the routers see of output lengths."""
    return ReferenceSimulator(env, requests, policy, seed, stutter_tpot_s, length_info).run()


def simulate_trace(path, policy: str, seed: int = 0,
                   stutter_tpot_s: float = DEFAULT_STUTTER_TPOT_S,
                   length_info: str = "hidden") -> ReferenceResult:
    """`simulate` on a trace file (small traces only: everything is held in memory)."""
    from ..tracefile.reader import open_trace
    with open_trace(path) as reader:
        return simulate(reader.env, reader.read_all(), policy, seed, stutter_tpot_s,
                        length_info)


# --- metrics from per-request output ---------------------------------------------------------

def summarize_requests(per_request, requests: dict, model_kind) -> dict:
    """Summary metrics recomputed from per-request output (kernel's or reference's) and the
    trace columns: the counts and means of ``summary.json`` (exact order statistics for
    the quantiles). ``rerouted`` counts completed requests that were rerouted at least once;
    ``reroute_events`` every re-dispatch (of completed and dropped requests)."""
    dev = np.asarray(per_request.device)
    done = dev >= 0
    arrival = np.asarray(requests["arrival_s"], np.float64)
    llm = (np.asarray(model_kind)[np.asarray(requests["model"])] == 0) & done
    latency = per_request.completion_s[done] - arrival[done]
    n_done, n_llm = int(done.sum()), int(llm.sum())

    def mean(x, n):
        return float(np.sum(x) / n) if n else float("nan")

    def order_stat(q):  # the value of rank ceil(q n), as the histogram quantile targets
        if not n_done:
            return float("nan")
        return float(np.sort(latency)[max(1, math.ceil(q * n_done)) - 1])

    reroutes = np.asarray(per_request.reroutes, np.int64)
    return {
        "requests": int(dev.shape[0]),
        "completed": n_done,
        "dropped": int((dev < 0).sum()),
        "rerouted": int(((reroutes > 0) & done).sum()),
        "reroute_events": int(reroutes.sum()),
        "mean_latency_s": mean(latency, n_done),
        "p50_latency_s": order_stat(0.50),
        "p95_latency_s": order_stat(0.95),
        "p99_latency_s": order_stat(0.99),
        "mean_wait_s": mean(per_request.start_s[done] - arrival[done], n_done),
        "mean_service_s": mean(per_request.completion_s[done] - per_request.start_s[done],
                               n_done),
        "llm_completed": n_llm,
        "mean_ttft_s": mean(per_request.ttft_s[llm], n_llm),
        "mean_tpot_s": mean(per_request.tpot_s[llm], n_llm),
        "stutter_rate": float(per_request.stutter[llm].sum() / n_llm) if n_llm else 0.0,
    }


# --- small random worlds for cross-checks ----------------------------------------------------

def random_case(rng: np.random.Generator, n_requests: int, *, load=None, n_types=None,
                n_models=None, n_classes=None, n_devices=None, churn=True, drift=True,
                semantic=True, failures=True, grid_s=None, dyadic=False):
    """A random, valid tracefile ``Env`` and `n_requests` requests (the /requests columns).

    The world: a few device types and models (some maybe diffusion), devices hosting random
    subsets of what their type can run, joins and leaves, drift knots (ramps and steps),
    semantic windows (some never ending) and failure windows (sorted, disjoint, some
    back to back), all inside the trace's time span; about a quarter of the (type, model)
    pairs have no prior the routers see. Requests:
    Poisson arrivals at ``load x devices / mean prior service`` (load drawn in 0.3..1.2 when
    not given), uniform models and classes, LLM prompts of 1..2000 tokens and outputs of
    1..300, diffusion steps 5..40, standard-normal ``z``.

    `grid_s` rounds arrivals down and event times to multiples of it. With `dyadic` the
    priors, drift and semantic factors are small powers of two and sigma is 0, so service
    times are exact binary fractions: with a dyadic grid, completions, arrivals and
    joins/leaves then coincide often (this exercises the tie-breaking rules).
    """
    from ..tracefile.schema import Env
    T = n_types or int(rng.integers(1, 4))
    M = n_models or int(rng.integers(1, 4))
    C = n_classes or int(rng.integers(1, 4))
    D = n_devices or int(rng.integers(1, 7))
    kind = (rng.random(M) < 0.3).astype(np.int8)
    kind[0] = 0
    diff = kind == 1
    avail = rng.random((T, M)) < 0.8
    avail[np.arange(T), rng.integers(0, M, T)] = True
    if dyadic:
        a = rng.choice([0.125, 0.25, 0.5], (T, M))
        b = np.where(diff, rng.choice([0.0625, 0.125], (T, M)),
                     rng.choice([1 / 128, 1 / 64, 1 / 32], (T, M)))
        c = np.where(diff, 0.0, rng.choice([0.0, 1 / 4096], (T, M)))
        sigma = np.zeros((T, M))
    else:
        a = rng.uniform(0.02, 0.3, (T, M))
        b = np.where(diff, rng.uniform(0.02, 0.1, (T, M)), rng.uniform(0.002, 0.03, (T, M)))
        c = np.where(diff, 0.0, rng.uniform(0.0, 3e-4, (T, M)))
        sigma = rng.choice([0.0, 0.05, 0.3, 0.6], (T, M))
    mean_s = float(np.mean((a + b * np.where(diff, 22.5, 150.5)
                            + c * np.where(diff, 0.0, 1000.5))[avail]))
    a, b, c, sigma = (np.where(avail, x, np.nan) for x in (a, b, c, sigma))
    load = float(rng.uniform(0.3, 1.2)) if load is None else float(load)
    rate = load * D / mean_s
    horizon = n_requests / rate

    def snap(t):
        return float(np.round(t / grid_s) * grid_s) if grid_s else float(t)

    dtype = rng.integers(0, T, D).astype(np.int32)
    hosts = (rng.random((D, M)) < 0.6) & avail[dtype]
    for d in range(D):
        if not hosts[d].any():
            hosts[d, rng.choice(np.flatnonzero(avail[dtype[d]]))] = True
    join = np.zeros(D)
    leave = np.full(D, np.inf)
    if churn:
        for d in range(D):
            u = rng.random()
            if u < 0.3:
                join[d] = snap(rng.uniform(0, horizon))
            if rng.random() < 0.4:
                leave[d] = max(join[d], snap(rng.uniform(0, horizon)))
            if u < 0.05:  # joins and leaves at the same instant
                leave[d] = join[d]
    knots_t, knots_m, ptr = [], [], [0]
    for d in range(D):
        if drift and rng.random() < 0.7:
            ts = sorted(snap(t) for t in rng.uniform(0, horizon, int(rng.integers(1, 5))))
            if dyadic:  # steps only: constant between knots keeps the factors exact
                levels = list(rng.choice([0.5, 1.0, 2.0, 4.0], len(ts)))
                ms = [m for k in range(len(ts)) for m in ((levels[k - 1] if k else 1.0),
                                                          levels[k])]
                ts = [t for t in ts for _ in (0, 1)]
            else:
                if len(ts) >= 2 and rng.random() < 0.5:
                    ts[1] = ts[0]  # a step
                ms = list(rng.uniform(0.5, 2.5, len(ts)))
            knots_t += ts
            knots_m += ms
        ptr.append(len(knots_t))
    W = int(rng.integers(0, 4)) if semantic else 0
    t0 = np.array([snap(t) for t in rng.uniform(0, horizon, W)])
    t1 = t0 + np.array([max(snap(x), grid_s or 1e-3) for x in rng.uniform(0.01, 0.5, W) * horizon])
    t1[rng.random(W) < 0.3] = np.inf
    factor = rng.choice([0.5, 2.0, 4.0], W) if dyadic else rng.uniform(0.5, 5.0, W)
    fail_t0, fail_t1, fail_ptr = [], [], [0]
    for d in range(D):
        if failures and rng.random() < 0.5:
            edges = sorted(snap(t) for t in rng.uniform(0, horizon, 2 * int(rng.integers(1, 4))))
            for down, up in zip(edges[::2], edges[1::2]):
                up = max(up, down + (grid_s or 1e-3))
                if len(fail_t0) > fail_ptr[-1] and down < fail_t1[-1]:
                    down = fail_t1[-1]  # back to back with the previous window
                    up = max(up, down + (grid_s or 1e-3))
                fail_t0.append(down)
                fail_t1.append(up)
        fail_ptr.append(len(fail_t0))
    known = avail & (rng.random((T, M)) > 0.25)   # pairs the routers have no prior for
    for m in range(M):
        if avail[:, m].any() and not known[:, m].any():
            known[np.flatnonzero(avail[:, m])[0], m] = True
    env = Env(models=[f"m{m}" for m in range(M)], model_kind=kind,
              classes=[f"k{k}" for k in range(C)], device_types=[f"t{t}" for t in range(T)],
              prior_a=a, prior_b=b, prior_c=c, prior_sigma=sigma, prior_available=avail,
              device_type=dtype, hosts=hosts, join_s=join, leave_s=leave,
              drift_ptr=np.array(ptr, np.int64), drift_t_s=np.array(knots_t, float),
              drift_mult=np.array(knots_m, float),
              sem_device_type=rng.integers(0, T, W).astype(np.int32),
              sem_klass=rng.integers(0, C, W).astype(np.int16), sem_t0_s=t0, sem_t1_s=t1,
              sem_factor=factor, fail_ptr=np.array(fail_ptr, np.int64),
              fail_t0_s=np.array(fail_t0, float), fail_t1_s=np.array(fail_t1, float),
              prior_known=known)
    n = n_requests
    arrival = np.cumsum(rng.exponential(1.0 / rate, n))
    if grid_s:
        arrival = np.floor(arrival / grid_s) * grid_s
    model = rng.integers(0, M, n)
    rdiff = diff[model]
    requests = {"arrival_s": arrival, "model": model.astype(np.int16),
                "in_tokens": np.where(rdiff, 0, rng.integers(1, 2001, n)).astype(np.int32),
                "out_tokens": np.where(rdiff, rng.integers(5, 41, n),
                                       rng.integers(1, 301, n)).astype(np.int32),
                "klass": rng.integers(0, C, n).astype(np.int16),
                "z": rng.standard_normal(n)}
    return env, requests
