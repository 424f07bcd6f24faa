"""Micro-benchmarks of the kernel's building blocks, each called N times from a jitted driver
(``e3fast.bench.micro``); ``extra_info`` ``ns_per_call`` = fastest round / calls.

* ``test_estimator_update``: one RLS step of a (device, model) pair (``update_pair``).
* ``test_detector_update[cusum|page-hinkley]``: one detector step on a residual.
* ``test_service_time[drift|semantic]``: ``true_service_parts`` on a drift trace (knots,
  found by a per-device cursor) and on a semantic trace (slowdown windows), 8 devices, at
  increasing times as in a replay.
"""
import numpy as np
import pytest

from benchutil import best_seconds, pick, record

N_OBS = 4096


def _run(benchmark, quick, fn, args, calls_per_rep, group, **info):
    reps = pick(quick, 1, 500)
    fn(*args, 1)  # compile / load from the cache
    benchmark.group = group
    benchmark.pedantic(fn, args=(*args, reps), rounds=pick(quick, 1, 7), iterations=1,
                       warmup_rounds=pick(quick, 0, 1))
    if benchmark.enabled:
        calls = reps * calls_per_rep
        record(benchmark, calls=calls, ns_per_call=best_seconds(benchmark, 0.0) / calls * 1e9,
               **info)


@pytest.fixture(scope="module")
def world8(make_trace):
    from e3fast.sim.state import build_world
    from e3fast.tracefile.reader import open_trace

    with open_trace(make_trace("drift", 1000, 8)) as tr:
        return build_world(tr.env), len(tr.env.classes)


def test_estimator_update(benchmark, quick, world8):
    from e3fast.bench.micro import observations, update_batch
    from e3fast.router.estimators import reset_all
    from e3fast.sim.state import build_state

    world, n_classes = world8
    st = build_state(world, n_classes)
    reset_all(world, st, 1.0)
    obs = observations(world, N_OBS)
    _run(benchmark, quick, update_batch, (st, *obs), N_OBS, "estimator", what="update_pair")
    assert np.isfinite(st.th_dec).all()


@pytest.mark.parametrize("detector", ["cusum", "page-hinkley"])
def test_detector_update(benchmark, quick, detector):
    from e3fast.bench.micro import cusum_batch, page_hinkley_batch
    from e3fast.sim.state import N_DET

    rng = np.random.default_rng(0)
    det = np.zeros((8, N_DET))
    dev = rng.integers(0, 8, N_OBS).astype(np.int64)
    u = rng.standard_normal(N_OBS)
    fn, param = (cusum_batch, 0.5) if detector == "cusum" else (page_hinkley_batch, 0.25)
    _run(benchmark, quick, fn, (det, dev, u, param), N_OBS, "detector", what=detector)


@pytest.mark.parametrize("scenario", ["drift", "semantic"])
def test_service_time(benchmark, quick, make_trace, scenario):
    from e3fast.bench.micro import service_batch
    from e3fast.sim.state import build_world
    from e3fast.tracefile.reader import open_trace

    with open_trace(make_trace(scenario, N_OBS, 8)) as tr:
        world, cols, duration = build_world(tr.env), tr.read_all(), tr.duration_s
    rng = np.random.default_rng(0)
    model = cols["model"].astype(np.int32)
    hosts = [np.flatnonzero(world.hosts[:, m]) for m in range(world.hosts.shape[1])]
    dev = np.array([rng.choice(hosts[m]) for m in model], np.int64)
    args = (world, dev, model, cols["in_tokens"].astype(np.int64),
            cols["out_tokens"].astype(np.int64), cols["klass"].astype(np.int32), cols["z"],
            np.sort(rng.uniform(0, duration, len(model))))
    _run(benchmark, quick, service_batch, args, len(model), "service",
         what="true_service_parts", scenario=scenario,
         drift_knots=int(tr.env.drift_t_s.shape[0]), semantic_windows=int(world.sem_factor.shape[0]))
