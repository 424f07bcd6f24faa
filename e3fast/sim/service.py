"""The true service-time model (docs/MODEL.md), one definition for the kernel and the Oracle.

``S(r, d, t) = (a + b*out + c*in) * drift[d](t) * sem[type, klass](t) * exp(sigma*z - sigma^2/2)``

``a + c*in`` is the prefill (time to first token, seconds), ``b*out`` the decode part
(seconds; ``b`` is the time per output token, or per denoising step for diffusion).
"""
import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def drift_multiplier(drift_first, drift_end, drift_t_s, drift_mult, cursor, device, t_s):
    """Hidden slowdown of `device` at time `t_s`: piecewise linear in its knots, constant
    before the first and after the last (``World`` gives every device at least one knot and
    pads its list with -inf/+inf sentinels).

    ``cursor[device]`` is the first knot strictly after the last time asked about (so a step,
    two knots at one time, applies at that time); it walks from there, forward or back, and
    a replay's nearly increasing times cost O(1)."""
    lo = drift_first[device]     # first real knot
    hi = drift_end[device]       # one past the last (its +inf sentinel)
    left = cursor[device]
    while drift_t_s[left] <= t_s:
        left += 1
    while drift_t_s[left - 1] > t_s:
        left -= 1
    cursor[device] = left
    i0 = max(left - 1, lo)
    i1 = min(left, hi - 1)
    if i0 == i1:  # before the first knot or after the last: constant (no division)
        return drift_mult[i0]
    w = (t_s - drift_t_s[i0]) / (drift_t_s[i1] - drift_t_s[i0])
    return drift_mult[i0] + w * (drift_mult[i1] - drift_mult[i0])


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
def slowdown(world, cursor, device, klass, t_s):
    """drift x semantic multiplier for `device` serving class `klass` at time `t_s`
    (`cursor`: the drift knot positions, ``State.drift_cursor``)."""
    return (drift_multiplier(world.drift_first, world.drift_end, world.drift_t_s,
                             world.drift_mult, cursor, device, t_s)
            * semantic_multiplier(world.sem_device_type, world.sem_klass, world.sem_t0_s,
                                  world.sem_t1_s, world.sem_factor, world.device_type[device],
                                  klass, t_s))


@njit(cache=True, inline="always")
def true_service_parts(world, cursor, device, model, in_tokens, out_tokens, klass, z, t_s):
    """(prefill_s, decode_s) of a request whose service starts on `device` at `t_s`."""
    sig = world.dev_sigma[model, device]
    m = slowdown(world, cursor, device, klass, t_s) * np.exp(sig * z - 0.5 * sig * sig)
    prefill = (world.dev_a[model, device] + world.dev_c[model, device] * in_tokens) * m
    decode = world.dev_b[model, device] * out_tokens * m
    return prefill, decode


@njit(cache=True, inline="always")
def prior_mean_service(world, device, model, in_tokens, out_tokens):
    """Service time (seconds) the static priors predict for `device` (no drift, no noise)."""
    return (world.dev_a[model, device] + world.dev_b[model, device] * out_tokens
            + world.dev_c[model, device] * in_tokens)


@njit(cache=True, inline="always")
def true_mean_service(world, cursor, device, model, in_tokens, out_tokens, klass, t_s):
    """Expected service time (seconds) on `device` at `t_s` (the noise has mean 1)."""
    return (prior_mean_service(world, device, model, in_tokens, out_tokens)
            * slowdown(world, cursor, device, klass, t_s))
