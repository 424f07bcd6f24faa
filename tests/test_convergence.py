"""How fast a router converges: early_mean_latency_s and convergence_s (runner.convergence_summary)."""
import h5py
import numpy as np
import pytest

from e3fast.runner import (CONVERGE_TOL, convergence_summary, format_table, replay,
                           write_outputs)
from e3fast.sim.metrics import N_WINDOW_FIELDS, W_COMPLETED, W_LATENCY
from e3fast.tracefile.generator import GenTraceOptions, generate_trace


def _windows(means, counts=10):
    """Per-window sums of `counts` requests with the given mean latencies."""
    w = np.zeros((len(means), N_WINDOW_FIELDS))
    w[:, W_COMPLETED] = counts
    w[:, W_LATENCY] = np.asarray(means, float) * w[:, W_COMPLETED]
    return w


def test_hand_built_series():
    # 20 windows of 10 s; slow (3 s) for 6 windows, then 1 s. Blocks of early_s = 20 s = 2
    # windows; the late level (last 25%: windows 15..19) is 1 s; block 5 = windows 5, 6 has
    # mean 2 > 1.2, block 6 = windows 6, 7 has mean 1: converged at the start of window 6.
    s = convergence_summary(_windows([3.0] * 6 + [1.0] * 14), 10.0, 200.0, early_s=20.0)
    assert s["early_end_s"] == 20.0
    assert s["early_mean_latency_s"] == 3.0
    assert s["convergence_s"] == 60.0


def test_one_spike_is_diluted_by_the_block_but_a_lasting_excess_is_not():
    tol = CONVERGE_TOL
    spike = [1.0] * 20
    spike[12] = 1.0 + 1.5 * tol  # block mean (1 + 1.5 tol + 1) / 2 stays within the band
    assert convergence_summary(_windows(spike), 10.0, 200.0, early_s=20.0)["convergence_s"] == 0.0
    lasting = [1.0] * 20
    lasting[12] = lasting[13] = 1.0 + 1.5 * tol  # block 12 = windows 12, 13 exceeds the band
    assert convergence_summary(_windows(lasting), 10.0, 200.0, early_s=20.0)["convergence_s"] == 130.0


def test_the_band_widens_with_the_late_blocks_own_spread():
    # late windows 30..39: non-overlapping blocks of 2 with means 1, 2, 1, 2, 1: L = 1.4,
    # sd = 0.548, band = 1.4 + 3 sd = 3.04 (wider than 1.2 L)
    late = [1, 1, 2, 2, 1, 1, 2, 2, 1, 1]
    for early, conv in ((2.9, 0.0), (3.2, 110.0)):
        means = [1.0] * 10 + [early] * 2 + [1.0] * 18 + late
        s = convergence_summary(_windows(means), 10.0, 400.0, early_s=20.0)
        assert s["convergence_band_s"] == pytest.approx(1.4 + 3 * np.std([1, 2, 1, 2, 1], ddof=1))
        assert s["convergence_s"] == conv


def test_faster_start_and_empty_windows_count_as_converged():
    means = [0.2] * 5 + [1.0] * 15  # queues start empty: faster than the late level
    w = _windows(means)
    w[7:9] = 0.0  # no arrivals: nothing to exceed
    s = convergence_summary(w, 10.0, 200.0, early_s=30.0)
    assert s["convergence_s"] == 0.0
    assert s["early_end_s"] == 30.0
    assert s["early_mean_latency_s"] == pytest.approx(0.2)


def test_early_span_rounds_up_to_whole_windows_and_caps_at_the_trace():
    w = _windows(np.arange(1.0, 21.0))
    s = convergence_summary(w, 10.0, 200.0, early_s=25.0)  # 3 windows: 1, 2, 3
    assert s["early_end_s"] == 30.0 and s["early_mean_latency_s"] == 2.0
    s = convergence_summary(w, 10.0, 200.0, early_s=1e6)  # the whole trace
    assert s["early_end_s"] == 200.0 and s["early_mean_latency_s"] == 10.5
    # blocks of one window; late level (windows 15..19) 18 s: none is above 21.6 s
    assert convergence_summary(w, 10.0, 200.0, early_s=10.0)["convergence_s"] == 0.0
    w = _windows([1.0] * 19 + [5.0])  # late level 1.8 s; one late outlier widens the band
    s = convergence_summary(w, 10.0, 200.0, early_s=10.0)
    assert s["convergence_s"] == 0.0 and s["convergence_band_s"] > 5.0
    w = _windows([5.0] + [1.0] * 19)  # the same outlier early is above 1.2 x 1 s
    assert convergence_summary(w, 10.0, 200.0, early_s=10.0)["convergence_s"] == 10.0


def test_no_late_completions_gives_nan():
    w = _windows([1.0] * 20)
    w[15:] = 0.0
    assert np.isnan(convergence_summary(w, 10.0, 200.0, early_s=20.0)["convergence_s"])


@pytest.fixture(scope="module")
def cold_trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("conv") / "cold.h5"
    generate_trace(GenTraceOptions(scenario="cold-start", requests=3000, devices=4, seed=3,
                                   out=str(path)), progress=False)
    return path


@pytest.mark.parametrize("policy", ["sect", "e3"])
def test_early_mean_equals_brute_force_from_requests_h5(cold_trace, tmp_path, policy):
    res = replay(cold_trace, policy, per_request=True, window_s=7.3, early_s=100.0,
                 progress=False)
    out = write_outputs(res, tmp_path / policy)
    with h5py.File(cold_trace, "r") as f:
        arrival = f["requests/arrival_s"][()]
    with h5py.File(out / "requests.h5", "r") as f:
        device, completion = f["device"][()], f["completion_s"][()]
    s = res.summary
    k = round(s["early_end_s"] / s["window_s"])
    assert k == 14  # ceil(100 / 7.3)
    early = (np.floor(arrival / s["window_s"]) < k) & (device >= 0)
    assert early.sum() > 10
    assert s["early_mean_latency_s"] == pytest.approx(
        np.mean(completion[early] - arrival[early]), rel=1e-12)
    assert 0.0 <= s["convergence_s"] <= s["duration_s"]
    assert "early s" in format_table([s]) and "conv s" in format_table([s])


def test_lower_bound_has_the_metrics(cold_trace):
    s = replay(cold_trace, "lower-bound", early_s=100.0).summary
    assert np.isfinite(s["early_mean_latency_s"]) and np.isfinite(s["convergence_s"])
