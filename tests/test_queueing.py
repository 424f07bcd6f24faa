"""Queueing theory: the kernel on one device against the M/G/1 Pollaczek-Khinchine formula.

One device, one model, Poisson arrivals at rate lambda, service S = s0 * exp(sigma z -
sigma^2/2) with z standard normal (the model's lognormal noise; no drift, no semantic
windows), so E[S] = s0 and E[S^2] = s0^2 exp(sigma^2) exactly. FIFO M/G/1 mean sojourn time:

    W = E[S] + lambda E[S^2] / (2 (1 - rho)),   rho = lambda E[S]

On a 2-million-request trace (written in blocks, fixed seed) the kernel's mean latency must
be within 2% of W at utilisation 0.5 and 0.8, for sigma = the largest sigma of the packaged
MLPerf priors (nearly deterministic service: M/D/1-like) and sigma = 0.5 (a noisier device).
Measured errors (seed 20260101): see docs/MODEL.md.
"""
import math

import numpy as np
import pytest

from e3fast.priors.table import load_priors
from e3fast.runner import replay
from e3fast.tracefile.schema import MODEL_KIND_LLM, Env
from e3fast.tracefile.writer import TraceWriter

N = 2_000_000
BLOCK = 250_000
SEED = 20260101
S0 = 1.0  # mean service time (s): a = 1, b = c = 0


def pk_sojourn(lam: float, sigma: float) -> float:
    """M/G/1 mean time in system for lognormal service of mean S0 and shape sigma."""
    es, es2 = S0, S0 * S0 * math.exp(sigma * sigma)
    rho = lam * es
    return es + lam * es2 / (2.0 * (1.0 - rho))


def env_one_device(sigma: float) -> Env:
    return Env(
        models=["m"], model_kind=np.array([MODEL_KIND_LLM], np.int8), classes=["c"],
        device_types=["t"], prior_a=np.array([[S0]]), prior_b=np.zeros((1, 1)),
        prior_c=np.zeros((1, 1)), prior_sigma=np.array([[sigma]]),
        prior_available=np.ones((1, 1), bool), device_type=np.zeros(1, np.int32),
        hosts=np.ones((1, 1), bool), join_s=np.zeros(1), leave_s=np.full(1, np.inf),
        drift_ptr=np.zeros(2, np.int64), drift_t_s=np.zeros(0), drift_mult=np.zeros(0),
        sem_device_type=np.zeros(0, np.int32), sem_klass=np.zeros(0, np.int16),
        sem_t0_s=np.zeros(0), sem_t1_s=np.zeros(0), sem_factor=np.zeros(0))


def write_mg1(path, rho: float, sigma: float) -> None:
    """Poisson(rho / S0) arrivals and standard-normal z, streamed in blocks."""
    lam = rho / S0
    rng = np.random.default_rng(SEED)  # the same draws (scaled) for every rho and sigma
    t = 0.0
    with TraceWriter(path, env_one_device(sigma), scenario="mg1", seed=SEED,
                     params={"rho": rho, "sigma": sigma}, chunk_rows=BLOCK) as w:
        for _ in range(N // BLOCK):
            gaps = rng.exponential(1.0, BLOCK) / lam
            arrival = t + np.cumsum(gaps)
            t = float(arrival[-1])
            ones = np.ones(BLOCK, np.int32)
            w.append(arrival, np.zeros(BLOCK, np.int16), ones, ones, np.zeros(BLOCK, np.int16),
                     rng.standard_normal(BLOCK))


SIGMAS = {"mlperf-max": float(np.max(load_priors().sigma)), "0.5": 0.5}


@pytest.mark.parametrize("rho", [0.5, 0.8])
@pytest.mark.parametrize("sigma_name", list(SIGMAS))
def test_mg1_pollaczek_khinchine(tmp_path, rho, sigma_name):
    sigma = SIGMAS[sigma_name]
    path = tmp_path / "mg1.h5"
    write_mg1(path, rho, sigma)
    s = replay(path, "sect", block_rows=1 << 20).summary
    assert s["completed"] == N and s["dropped"] == 0
    w = pk_sojourn(rho / S0, sigma)
    err = s["mean_latency_s"] / w - 1.0
    print(f"rho={rho} sigma={sigma:.4f}: kernel {s['mean_latency_s']:.5f} s, "
          f"P-K {w:.5f} s, error {100 * err:+.3f}%")
    assert abs(err) < 0.02
    # the service part alone: E[S] = S0 (relative std of the mean ~ sigma / sqrt(N))
    assert s["mean_service_s"] == pytest.approx(S0, rel=max(5 * sigma / math.sqrt(N), 1e-9))
