"""The true service-time model of DESIGN.md, one definition for the kernel and the Oracle.

``S(r, d, t) = (a + b*out + c*in) * drift[d](t) * sem[type, klass](t) * exp(sigma*z - sigma^2/2)``

``a + c*in`` is the prefill (time to first token, seconds), ``b*out`` the decode part
(seconds; ``b`` is the time per output token, or per denoising step for diffusion).
"""
import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def drift_multiplier(drift_ptr, drift_t_s, drift_mult, device, t_s):
    """Hidden slowdown of `device` at time `t_s`: piecewise linear in its knots, 1 if none."""
    lo = drift_ptr[device]
    hi = drift_ptr[device + 1]
    if lo == hi:
        return 1.0
    # first knot strictly after t (binary search), so a step (two knots at one time) applies at t
    left, right = lo, hi
    while left < right:
        mid = (left + right) >> 1
        if drift_t_s[mid] <= t_s:
            left = mid + 1
        else:
            right = mid
    if left == lo:
        return drift_mult[lo]
    if left == hi:
        return drift_mult[hi - 1]
    t0 = drift_t_s[left - 1]
    t1 = drift_t_s[left]
    w = (t_s - t0) / (t1 - t0)
    return drift_mult[left - 1] + w * (drift_mult[left] - drift_mult[left - 1])


@njit(cache=True, inline="always")
def semantic_multiplier(sem_device_type, sem_klass, sem_t0_s, sem_t1_s, sem_factor,
                        device_type, klass, t_s):
    """Product of the factors of the semantic windows that cover (device type, class, t)."""
    f = 1.0
    for w in range(sem_factor.shape[0]):
        if (sem_device_type[w] == device_type and sem_klass[w] == klass
                and sem_t0_s[w] <= t_s < sem_t1_s[w]):
            f *= sem_factor[w]
    return f


@njit(cache=True, inline="always")
def slowdown(world, device, klass, t_s):
    """drift x semantic multiplier for `device` serving class `klass` at time `t_s`."""
    return (drift_multiplier(world.drift_ptr, world.drift_t_s, world.drift_mult, device, t_s)
            * semantic_multiplier(world.sem_device_type, world.sem_klass, world.sem_t0_s,
                                  world.sem_t1_s, world.sem_factor, world.device_type[device],
                                  klass, t_s))


@njit(cache=True, inline="always")
def true_service_parts(world, device, model, in_tokens, out_tokens, klass, z, t_s):
    """(prefill_s, decode_s) of a request whose service starts on `device` at `t_s`."""
    sig = world.dev_sigma[model, device]
    m = slowdown(world, device, klass, t_s) * np.exp(sig * z - 0.5 * sig * sig)
    prefill = (world.dev_a[model, device] + world.dev_c[model, device] * in_tokens) * m
    decode = world.dev_b[model, device] * out_tokens * m
    return prefill, decode


@njit(cache=True, inline="always")
def prior_mean_service(world, device, model, in_tokens, out_tokens):
    """Service time (seconds) the static priors predict for `device` (no drift, no noise)."""
    return (world.dev_a[model, device] + world.dev_b[model, device] * out_tokens
            + world.dev_c[model, device] * in_tokens)


@njit(cache=True, inline="always")
def true_mean_service(world, device, model, in_tokens, out_tokens, klass, t_s):
    """Expected service time (seconds) on `device` at `t_s` (the noise has mean 1)."""
    return (prior_mean_service(world, device, model, in_tokens, out_tokens)
            * slowdown(world, device, klass, t_s))
