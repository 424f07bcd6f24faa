"""Micro-benchmarks of one routing decision (``router.policies.choose_device``).

* ``test_route_jit[policy-Ddev]``: the decision as the kernel makes it: a jitted driver
  calls ``choose_device`` over 4096 prepared requests, many times; ``extra_info``
  ``ns_per_decision`` = fastest round / calls. Group ``route-jit-Ddev``.
* ``test_route_python_call[policy]``: one call from Python (argument unboxing of the
  World/State tuples dominates). Group ``route-python-call``.

The router state comes from replaying the first 20k requests of a drift trace with the same
policy (queues filled, E3 estimates learned); the decisions then use the next requests.
"""
import pytest

from benchutil import best_seconds, pick, record
from e3fast.sim.state import POLICIES

DEVICES = (8, 64, 256)
N_REQ = 4096


@pytest.fixture(scope="module")
def routing_trace(make_trace, quick):
    warm = pick(quick, 2_000, 20_000)

    def get(devices):
        return make_trace("drift", warm + N_REQ + 1, devices), warm

    return get


@pytest.mark.parametrize("devices", DEVICES, ids=[f"{d}dev" for d in DEVICES])
@pytest.mark.parametrize("policy", POLICIES)
def test_route_jit(benchmark, routing_trace, quick, policy, devices):
    from e3fast.bench.micro import prepare_routing, route_batch

    path, warm = routing_trace(devices)
    pid, world, st, now, reqs = prepare_routing(path, policy, warm=warm, n=N_REQ)
    reps = pick(quick, 1, max(1, 200 // max(1, devices // 8)))
    route_batch(pid, world, st, now, *reqs, 1)  # compile / load from the cache
    benchmark.group = f"route-jit-{devices}dev"
    benchmark.pedantic(route_batch, args=(pid, world, st, now, *reqs, reps),
                       rounds=pick(quick, 1, 7), iterations=1, warmup_rounds=pick(quick, 0, 1))
    calls = reps * len(reqs[0])
    if benchmark.enabled:
        record(benchmark, policy=policy, devices=devices, calls=calls,
               ns_per_decision=best_seconds(benchmark, 0.0) / calls * 1e9)


@pytest.mark.parametrize("policy", POLICIES)
def test_route_python_call(benchmark, routing_trace, policy):
    from e3fast.bench.micro import prepare_routing
    from e3fast.router.policies import choose_device

    path, warm = routing_trace(8)
    pid, world, st, now, reqs = prepare_routing(path, policy, warm=warm, n=16)
    args = (pid, world, st, float(now), int(reqs[0][0]), int(reqs[1][0]), int(reqs[2][0]),
            int(reqs[3][0]))
    d, est = choose_device(*args)  # compile / load from the cache
    assert -1 <= d < 8
    benchmark.group = "route-python-call"
    benchmark(choose_device, *args)
    if benchmark.enabled:
        record(benchmark, policy=policy, devices=8,
               us_per_call=best_seconds(benchmark, 0.0) * 1e6)
