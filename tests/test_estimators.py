"""Online service-time estimators (router.estimators) and the per-class factor (kernel._learn).

Documented numbers (also in docs/DETECTORS.md, "Estimators"):

* without forgetting (forget = 1) the RLS estimates of the slopes b and c are within 2% and
  the intercept a within 5% of the truth after 20,000 lognormal-noisy observations
  (sigma 0.3), starting from a prior off by x2 (a is small next to c x in, so it is the
  hardest to pin down);
* with the default forgetting factor 0.98, after a x2 step of every parameter the predicted
  service time of typical requests is within 10% of the new truth after N = 150
  observations (STEP_N below), in every one of 20 seeded runs;
* after a x3 step, `calibrate` (reset_pair with inflate 10) brings the mean prediction
  error over 10 seeds below 25% within 10 observations; without the reset it stays > 50%.
"""
import math

import numpy as np
import pytest

from e3fast.router.config import INDEX
from e3fast.router.estimators import (COV_MAX, IN_SCALE, OUT_SCALE, predict_decode,
                                      predict_prefill, predict_service, reset_all, reset_pair,
                                      update_pair)
from e3fast.sim import kernel as K
from e3fast.sim.metrics import new_metrics, new_per_request
from e3fast.sim.state import IV_CHECKPOINTS_ON, POLICY_ID, build_state, build_world
from e3fast.tracefile.schema import MODEL_KIND_DIFFUSION, MODEL_KIND_LLM, Env

# truth of device 0 (type 0): LLM a, b, c and diffusion a, b (c = 0); priors are off by x2
TRUE_A, TRUE_B, TRUE_C = 0.08, 0.025, 0.0004
DIFF_A, DIFF_B = 0.5, 0.12
SIGMA = 0.3
STEP_N = 150


def make_env(sem_factor=None, sigma=SIGMA) -> Env:
    """One device of one type hosting an LLM and a diffusion model; two classes. Priors are
    the truth (the kernel's true service uses the priors); tests that need a wrong prior
    overwrite the estimator state directly."""
    sem = [] if sem_factor is None else [sem_factor]
    return Env(
        models=["llm", "diff"], model_kind=np.array([MODEL_KIND_LLM, MODEL_KIND_DIFFUSION], np.int8),
        classes=["fast", "slow"], device_types=["t0"],
        prior_a=np.array([[TRUE_A, DIFF_A]]), prior_b=np.array([[TRUE_B, DIFF_B]]),
        prior_c=np.array([[TRUE_C, 0.0]]), prior_sigma=np.full((1, 2), sigma),
        prior_available=np.ones((1, 2), bool), device_type=np.zeros(1, np.int32),
        hosts=np.ones((1, 2), bool), join_s=np.zeros(1), leave_s=np.full(1, np.inf),
        drift_ptr=np.zeros(2, np.int64), drift_t_s=np.zeros(0), drift_mult=np.zeros(0),
        sem_device_type=np.zeros(len(sem), np.int32), sem_klass=np.ones(len(sem), np.int16),
        sem_t0_s=np.zeros(len(sem)), sem_t1_s=np.full(len(sem), np.inf),
        sem_factor=np.array(sem, dtype=float))


def fresh(forget=None, prior_scale=2.0):
    """World and state with the estimators reset to priors `prior_scale` x the truth."""
    env = make_env()
    world = build_world(env)
    st = build_state(world, len(env.classes))
    if forget is not None:
        st.cfg[INDEX["forget"]] = forget
    world = world._replace(dev_a=world.dev_a * prior_scale, dev_b=world.dev_b * prior_scale,
                           dev_c=world.dev_c * prior_scale)
    reset_all(world, st, 1.0)
    return world, st


def feed(st, m, n, rng, a, b, c, diffusion=False):
    """`n` observations of (device 0, model m) with lognormal noise of mean 1 (as the kernel)."""
    for _ in range(n):
        n_in = 0 if diffusion else int(rng.integers(50, 2000))
        n_out = int(rng.integers(10, 50)) if diffusion else int(rng.integers(10, 500))
        noise = math.exp(SIGMA * rng.standard_normal() - 0.5 * SIGMA ** 2)
        update_pair(st, 0, m, n_in, n_out, (a + c * n_in) * noise, b * n_out * noise, 0.0,
                    st.cfg[INDEX["forget"]])


def estimates(st, m=0):
    return (float(st.th_pre[0, m, 0]), float(st.th_dec[0, m]) / OUT_SCALE,
            float(st.th_pre[0, m, 1]) / IN_SCALE)


def service_error(st, a, b, c, m=0) -> float:
    """Largest relative error of the predicted service time over typical request sizes."""
    worst = 0.0
    for n_in, n_out in [(100, 50), (500, 200), (1500, 400), (2000, 30)]:
        truth = a + b * n_out + c * n_in
        worst = max(worst, abs(predict_service(st, 0, m, n_in, n_out) / truth - 1.0))
    return worst


def test_rls_converges_to_true_parameters_without_forgetting():
    world, st = fresh(forget=1.0)
    assert estimates(st) == pytest.approx((2 * TRUE_A, 2 * TRUE_B, 2 * TRUE_C))
    feed(st, 0, 20000, np.random.default_rng(1), TRUE_A, TRUE_B, TRUE_C)
    a, b, c = estimates(st)
    assert a == pytest.approx(TRUE_A, rel=0.05)
    assert b == pytest.approx(TRUE_B, rel=0.02)
    assert c == pytest.approx(TRUE_C, rel=0.02)
    assert int(st.n_obs[0, 0]) == 20000


def test_rls_with_default_forgetting_is_unbiased_and_close():
    world, st = fresh()
    rng = np.random.default_rng(2)
    feed(st, 0, 500, rng, TRUE_A, TRUE_B, TRUE_C)
    trail = []
    for _ in range(100):
        feed(st, 0, 20, rng, TRUE_A, TRUE_B, TRUE_C)
        trail.append(estimates(st))
    mean = np.mean(trail, axis=0)
    assert mean == pytest.approx([TRUE_A, TRUE_B, TRUE_C], rel=0.05)
    assert service_error(st, TRUE_A, TRUE_B, TRUE_C) < 0.15


def test_diffusion_per_step_model_and_covariance_bound():
    world, st = fresh(forget=0.98)
    feed(st, 1, 3000, np.random.default_rng(3), DIFF_A, DIFF_B, 0.0, diffusion=True)
    a, b, _ = estimates(st, 1)
    assert a == pytest.approx(DIFF_A, rel=0.15)
    assert b == pytest.approx(DIFF_B, rel=0.1)
    # the input-token direction is never excited (in = 0): its variance stops at the bound
    assert st.cov_pre[0, 1, 1, 1] == pytest.approx(COV_MAX)
    assert np.all(np.isfinite(st.th_pre[0, 1]))


@pytest.mark.parametrize("seed", range(20))
def test_forgetting_tracks_a_x2_step(seed):
    """After 1000 observations at the truth, every parameter doubles: STEP_N observations
    later the prediction is within 10% of the new truth (forget = 0.98, the default)."""
    world, st = fresh(prior_scale=1.0)
    rng = np.random.default_rng(100 + seed)
    feed(st, 0, 1000, rng, TRUE_A, TRUE_B, TRUE_C)
    assert service_error(st, TRUE_A, TRUE_B, TRUE_C) < 0.15
    assert service_error(st, 2 * TRUE_A, 2 * TRUE_B, 2 * TRUE_C) > 0.4
    feed(st, 0, STEP_N, rng, 2 * TRUE_A, 2 * TRUE_B, 2 * TRUE_C)
    assert service_error(st, 2 * TRUE_A, 2 * TRUE_B, 2 * TRUE_C) < 0.10


def test_without_forgetting_the_step_is_not_tracked():
    """The contrast that shows forgetting is what tracks: with forget = 1 the estimate after
    the same STEP_N observations is still far from the new truth."""
    world, st = fresh(forget=1.0, prior_scale=1.0)
    rng = np.random.default_rng(7)
    feed(st, 0, 1000, rng, TRUE_A, TRUE_B, TRUE_C)
    feed(st, 0, STEP_N, rng, 2 * TRUE_A, 2 * TRUE_B, 2 * TRUE_C)
    assert service_error(st, 2 * TRUE_A, 2 * TRUE_B, 2 * TRUE_C) > 0.2


def test_reset_pair_restores_the_prior_with_inflated_covariance():
    world, st = fresh(prior_scale=1.0)
    feed(st, 0, 300, np.random.default_rng(4), 3 * TRUE_A, 3 * TRUE_B, 3 * TRUE_C)
    st.resid_var[0, 0] = 1.7
    assert estimates(st)[0] > 2 * TRUE_A
    reset_pair(world, st, 0, 0, 10.0)
    assert estimates(st) == pytest.approx((TRUE_A, TRUE_B, TRUE_C))
    p0 = 10.0 / st.cfg[INDEX["prior_weight"]]
    assert st.cov_pre[0, 0] == pytest.approx(np.diag([p0, p0]))
    assert st.cov_dec[0, 0] == pytest.approx(p0)
    assert st.n_obs[0, 0] == 0
    assert st.resid_var[0, 0] == pytest.approx(SIGMA ** 2)
    # the other pair is untouched
    assert st.n_obs[0, 1] == 0 and st.th_dec[0, 1] == pytest.approx(DIFF_B * OUT_SCALE)
    assert predict_prefill(st, 0, 0, 1000) == pytest.approx(TRUE_A + TRUE_C * 1000)
    assert predict_decode(st, 0, 0, 100) == pytest.approx(TRUE_B * 100)


def test_calibrate_relearns_a_drifted_pair_fast():
    """`calibrate` = reset_pair with inflate 10: after 1000 observations the covariance is
    small and a x3 step is learned slowly; reset, it is learned within 10 observations."""
    errors = {}
    for reset in (False, True):
        errs = []
        for seed in range(10):
            world, st = fresh(prior_scale=1.0)
            rng = np.random.default_rng(200 + seed)
            feed(st, 0, 1000, rng, TRUE_A, TRUE_B, TRUE_C)
            if reset:
                reset_pair(world, st, 0, 0, 10.0)
            feed(st, 0, 10, rng, 3 * TRUE_A, 3 * TRUE_B, 3 * TRUE_C)
            errs.append(service_error(st, 3 * TRUE_A, 3 * TRUE_B, 3 * TRUE_C))
        errors[reset] = float(np.mean(errs))
    assert errors[True] < 0.25
    assert errors[False] > 0.5


def _run_kernel(env, n, seed=0, klass=None):
    """Run the E3 kernel directly over `n` sparse requests (no queueing); returns the state."""
    world = build_world(env)
    st = build_state(world, len(env.classes))
    reset_all(world, st, 1.0)
    st.ivar[IV_CHECKPOINTS_ON] = 0
    rng = np.random.default_rng(seed)
    arrival = np.arange(n, dtype=np.float64) * 100.0  # far apart: each request finds the device idle
    model = np.zeros(n, np.int16)
    n_in = rng.integers(50, 2000, n).astype(np.int32)
    n_out = rng.integers(10, 500, n).astype(np.int32)
    k = (rng.integers(0, 2, n) if klass is None else np.full(n, klass)).astype(np.int16)
    z = rng.standard_normal(n)
    status = K.run_segment(POLICY_ID["e3"], world, st, new_metrics(1, 1), new_per_request(0),
                           arrival, model, n_in, n_out, k, z, 0, True, np.inf)
    assert status == 1  # STATUS_FINISHED
    return world, st


def test_class_factor_learns_a_semantic_slowdown():
    """Class 1 is x3 slower on the device from t = 0: the learned class factors separate it
    (ratio ~3) and the prediction of both classes is right, while the class-free linear
    model stays shared."""
    world, st = _run_kernel(make_env(sem_factor=3.0), 4000, seed=5)
    f_fast, f_slow = float(st.class_factor[0, 0]), float(st.class_factor[0, 1])
    assert f_slow / f_fast == pytest.approx(3.0, rel=0.15)
    for k, factor in ((0, 1.0), (1, 3.0)):
        pred = predict_service(st, 0, 0, 800, 200) * st.class_factor[0, k]
        truth = (TRUE_A + TRUE_B * 200 + TRUE_C * 800) * factor
        assert pred == pytest.approx(truth, rel=0.2)


def test_class_factor_stays_near_one_without_slowdown():
    world, st = _run_kernel(make_env(), 4000, seed=6)
    assert st.class_factor[0, 0] / st.class_factor[0, 1] == pytest.approx(1.0, abs=0.15)
    assert predict_service(st, 0, 0, 800, 200) * st.class_factor[0, 0] == pytest.approx(
        TRUE_A + TRUE_B * 200 + TRUE_C * 800, rel=0.2)
