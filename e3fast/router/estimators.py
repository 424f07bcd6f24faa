"""Online service-time estimators: recursive least squares with forgetting, per (device, model).

Two linear models per pair, learned from execution feedback (docs/DETECTORS.md "Estimators"):

* prefill (TTFT part): ``th_pre[0] + th_pre[1] * in_tokens / IN_SCALE`` seconds
* decode: ``th_dec * out_tokens / OUT_SCALE`` seconds (TPOT x tokens, or per-step x steps)

Every estimator has the same shape: ``reset_pair`` (start from the MLPerf prior with a given
confidence), ``predict_*`` and ``update_pair``. All functions are nopython kernels over the
State arrays (see ``sim.state``).
"""
import math

from numba import njit

from .config import CFG_PRIOR_WEIGHT

# Feature scales: powers of two, so that ``tokens / SCALE`` is exact and compiles to a
# multiplication (a division costs ~13 cycles on the kernel's completion path).
IN_SCALE = 1024.0   # input tokens per feature unit
OUT_SCALE = 128.0   # output tokens (or steps) per feature unit
COV_MAX = 1e4       # anti-windup bound on the covariance diagonal
MIN_PREDICTION_S = 1e-6


@njit(cache=True, inline="always")
def reset_pair(world, st, d, m, inflate):
    """Reset the estimate of (device d, model m) to its type's prior; the prior counts as
    ``cfg[prior_weight] / inflate`` observations (inflate > 1: relearn fast)."""
    p0 = inflate / st.cfg[CFG_PRIOR_WEIGHT]
    st.th_pre[d, m, 0] = world.dev_a[m, d]
    st.th_pre[d, m, 1] = world.dev_c[m, d] * IN_SCALE
    st.cov_pre[d, m, 0, 0] = p0
    st.cov_pre[d, m, 0, 1] = 0.0
    st.cov_pre[d, m, 1, 0] = 0.0
    st.cov_pre[d, m, 1, 1] = p0
    st.th_dec[d, m] = world.dev_b[m, d] * OUT_SCALE
    st.cov_dec[d, m] = p0
    st.n_obs[d, m] = 0
    st.inv_sqrt_obs[d, m] = 1.0
    s = world.dev_sigma[m, d]
    st.resid_var[d, m] = s * s


@njit(cache=True)
def inflate_pair(st, d, m, inflate):
    """Keep the estimate of (device d, model m) but multiply its covariance by `inflate`
    (> 1: the next observations move it fast). The gentle form of `calibrate`."""
    for i in range(2):
        for j in range(2):
            st.cov_pre[d, m, i, j] = min(st.cov_pre[d, m, i, j] * inflate, COV_MAX)
    st.cov_dec[d, m] = min(st.cov_dec[d, m] * inflate, COV_MAX)


@njit(cache=True)
def reset_all(world, st, inflate):
    """Reset every (device, model) pair to its prior."""
    for d in range(st.th_dec.shape[0]):
        for m in range(st.th_dec.shape[1]):
            reset_pair(world, st, d, m, inflate)


@njit(cache=True, inline="always")
def predict_prefill(st, d, m, in_tokens):
    """Estimated prefill time (seconds) of a request with `in_tokens` on (d, m)."""
    v = st.th_pre[d, m, 0] + st.th_pre[d, m, 1] * (in_tokens / IN_SCALE)
    return max(v, MIN_PREDICTION_S)


@njit(cache=True, inline="always")
def predict_decode(st, d, m, out_tokens):
    """Estimated decode time (seconds) for `out_tokens` tokens (or steps) on (d, m)."""
    return max(st.th_dec[d, m] * (out_tokens / OUT_SCALE), 0.0)


@njit(cache=True, inline="always")
def predict_service(st, d, m, in_tokens, out_tokens):
    """Estimated service time (seconds) on (d, m)."""
    return predict_prefill(st, d, m, in_tokens) + predict_decode(st, d, m, out_tokens)


@njit(cache=True, inline="always")
def predict_class_service(st, d, m, k, in_tokens, out_tokens):
    """Estimated service time (seconds) on (d, m) of a request of semantic class k: the
    class-free linear model times the learned class factor of (d, k)."""
    return predict_service(st, d, m, in_tokens, out_tokens) * st.class_factor[d, k]


@njit(cache=True, inline="always")
def update_pair(st, d, m, in_tokens, out_tokens, prefill_s, decode_s, log_resid, lam):
    """One RLS step of both models with the observed prefill and decode times (seconds) and
    the forgetting factor `lam` (``cfg[forget]``; a loop-invariant argument, so that the
    kernel computes ``1 / lam`` once per segment)."""
    inv_lam = 1.0 / lam  # multiplications instead of divisions: the kernel's hot path
    # prefill: x = (1, in/IN_SCALE)
    x1 = in_tokens / IN_SCALE
    p00 = st.cov_pre[d, m, 0, 0]
    p01 = st.cov_pre[d, m, 0, 1]
    p11 = st.cov_pre[d, m, 1, 1]
    px0 = p00 + p01 * x1
    px1 = p01 + p11 * x1
    inv_denom = 1.0 / (lam + px0 + x1 * px1)
    g0 = px0 * inv_denom
    g1 = px1 * inv_denom
    err = prefill_s - (st.th_pre[d, m, 0] + st.th_pre[d, m, 1] * x1)
    st.th_pre[d, m, 0] += g0 * err
    st.th_pre[d, m, 1] += g1 * err
    n00 = min((p00 - g0 * px0) * inv_lam, COV_MAX)
    n01 = (p01 - g0 * px1) * inv_lam
    n11 = min((p11 - g1 * px1) * inv_lam, COV_MAX)
    st.cov_pre[d, m, 0, 0] = n00
    st.cov_pre[d, m, 0, 1] = n01
    st.cov_pre[d, m, 1, 0] = n01
    st.cov_pre[d, m, 1, 1] = n11
    # decode: x = out/OUT_SCALE
    x = out_tokens / OUT_SCALE
    p = st.cov_dec[d, m]
    g = p * x / (lam + x * p * x)
    st.th_dec[d, m] += g * (decode_s - st.th_dec[d, m] * x)
    st.cov_dec[d, m] = min((p - g * x * p) * inv_lam, COV_MAX)
    st.n_obs[d, m] += 1
    st.inv_sqrt_obs[d, m] = 1.0 / math.sqrt(1.0 + st.n_obs[d, m])
    st.resid_var[d, m] += 0.05 * (log_resid * log_resid - st.resid_var[d, m])


def uncertainty(st, d: int, m: int) -> float:
    """Relative standard error of the service estimate of (d, m) (Python helper)."""
    rv = float(st.resid_var[d, m])
    return math.sqrt(max(rv, 0.0) / (1.0 + float(st.n_obs[d, m])))


__all__ = ["reset_pair", "inflate_pair", "reset_all", "predict_class_service", "predict_prefill", "predict_decode", "predict_service",
           "update_pair", "uncertainty", "IN_SCALE", "OUT_SCALE"]
