"""The true service-time model (docs/MODEL.md), one definition for the kernel and the Oracle.

``S(r, d, t) = (a + b*out + c*in) * drift[d](t) * sem[type, klass](t) * exp(sigma*z - sigma^2/2)``

with the TRUE parameters (``World.true_*``); the routers' priors are ``World.dev_*`` (the
same, except for a device type without prior: ``tracefile.schema.router_priors``).

``a + c*in`` is the prefill (time to first token, seconds), ``b*out`` the decode part
(seconds; ``b`` is the time per output token, or per denoising step for diffusion).

Failures (``World.fail_*``): inside a failure window a device makes no progress. The pause
is work-conserving: the prefill's work starts at the service start and is stretched by the
overlap of the windows with it (one started inside a window progresses from the recovery);
the decode's work starts when the prefill ends and is stretched likewise. So the time to
first token and the completion both come after the pause.
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
def min_drift_after(world, cursor, device, t_s):
    """The least drift multiplier of `device` over [t_s, inf): hidden instance and type
    factors, drift and interference (not the class-dependent semantic windows, nor failures,
    which pause rather than slow). O(1) per call, as ``drift_multiplier`` (for a lower bound)."""
    g = drift_multiplier(world.drift_first, world.drift_end, world.drift_t_s, world.drift_mult,
                         cursor, device, t_s)
    return min(g, world.drift_suffix_min[cursor[device]])


@njit(cache=True, inline="always")
def semantic_multiplier(sem_device_type, sem_klass, sem_t0_s, sem_t1_s, sem_factor, sem_t1_max,
                        device_type, klass, t_s):
    """Product of the factors of the semantic windows that cover (device type, class, t).
    The windows are sorted by start and ``sem_t1_max[w]`` is the latest end among windows
    0..w (``World``), so only the windows from the first that may still be open to the last
    started one are visited (O(log W + open windows)); factors multiply in window order."""
    f = 1.0
    i = 0
    hi = sem_t0_s.shape[0]
    while i < hi:  # hi = the number of windows that start at or before t_s
        mid = (i + hi) >> 1
        if sem_t0_s[mid] <= t_s:
            i = mid + 1
        else:
            hi = mid
    lo = hi
    while lo > 0 and sem_t1_max[lo - 1] > t_s:
        lo -= 1
    for w in range(lo, hi):
        if sem_device_type[w] == device_type and sem_klass[w] == klass and t_s < sem_t1_s[w]:
            f *= sem_factor[w]
    return f


@njit(cache=True, inline="always")
def slowdown(world, cursor, device, klass, t_s):
    """drift x semantic multiplier for `device` serving class `klass` at time `t_s`
    (`cursor`: the drift knot positions, ``State.drift_cursor``)."""
    return (drift_multiplier(world.drift_first, world.drift_end, world.drift_t_s,
                             world.drift_mult, cursor, device, t_s)
            * semantic_multiplier(world.sem_device_type, world.sem_klass, world.sem_t0_s,
                                  world.sem_t1_s, world.sem_factor, world.sem_t1_max,
                                  world.device_type[device], klass, t_s))


#: the Oracle's expected service time (s) on a device that has failed (``true_mean_service``):
#: infinite in effect, finite so that a request whose every candidate has failed still goes
#: to one (the lowest index) and waits for its recovery instead of being dropped
FAILED_SERVICE_S = 1e18


@njit(cache=True, inline="always")
def first_window_after(fail_ptr, fail_t1_s, device, t_s):
    """Index of the first failure window of `device` that ends after `t_s` (binary search;
    ``fail_ptr[device + 1]`` if none)."""
    i = fail_ptr[device]
    j = fail_ptr[device + 1]
    while i < j:
        mid = (i + j) >> 1
        if fail_t1_s[mid] <= t_s:
            i = mid + 1
        else:
            j = mid
    return i


@njit(cache=True, inline="always")
def failure_pause(fail_ptr, fail_t0_s, fail_t1_s, device, t_s, work_s):
    """Seconds `device` makes no progress while doing `work_s` seconds of work from `t_s`:
    the work ends at ``t_s + work_s + pause`` (0.0 exactly when no window overlaps)."""
    p = 0.0
    end = fail_ptr[device + 1]
    if fail_ptr[device] == end:
        return p
    i = first_window_after(fail_ptr, fail_t1_s, device, t_s)
    while i < end and fail_t0_s[i] < t_s + work_s + p:
        p += fail_t1_s[i] - max(fail_t0_s[i], t_s)
        i += 1
    return p


@njit(cache=True, inline="always")
def is_failed(world, device, t_s):
    """Whether `device` is inside one of its failure windows at `t_s`."""
    i = first_window_after(world.fail_ptr, world.fail_t1_s, device, t_s)
    return i < world.fail_ptr[device + 1] and world.fail_t0_s[i] <= t_s


@njit(cache=True, inline="always")
def true_service_parts(world, cursor, device, model, in_tokens, out_tokens, klass, z, t_s):
    """(prefill_s, decode_s) of a request whose service starts on `device` at `t_s`, the
    failure pauses included (the prefill ends at ``t_s + prefill_s``)."""
    sig = world.true_sigma[model, device]
    m = slowdown(world, cursor, device, klass, t_s) * np.exp(sig * z - 0.5 * sig * sig)
    prefill = (world.true_a[model, device] + world.true_c[model, device] * in_tokens) * m
    decode = world.true_b[model, device] * out_tokens * m
    if world.fail_ptr[device] == world.fail_ptr[device + 1]:
        return prefill, decode
    prefill += failure_pause(world.fail_ptr, world.fail_t0_s, world.fail_t1_s, device, t_s,
                             prefill)
    decode += failure_pause(world.fail_ptr, world.fail_t0_s, world.fail_t1_s, device,
                            t_s + prefill, decode)
    return prefill, decode


@njit(cache=True, inline="always")
def prior_mean_service(world, device, model, in_tokens, out_tokens):
    """Service time (seconds) the static priors predict for `device` (no drift, no noise)."""
    return (world.dev_a[model, device] + world.dev_b[model, device] * out_tokens
            + world.dev_c[model, device] * in_tokens)


@njit(cache=True, inline="always")
def true_mean_service(world, cursor, device, model, in_tokens, out_tokens, klass, t_s):
    """Expected service time (seconds) on `device` at `t_s` (the noise has mean 1), as the
    Oracle sees it: it knows a device has failed, not when it recovers (FAILED_SERVICE_S)."""
    if is_failed(world, device, t_s):
        return FAILED_SERVICE_S
    return ((world.true_a[model, device] + world.true_b[model, device] * out_tokens
             + world.true_c[model, device] * in_tokens)
            * slowdown(world, cursor, device, klass, t_s))
