"""What a router knows (router.view): with hidden output lengths no router but the Oracle
can use the output length of the request it is routing.

For each of several LLM requests of a small random world: a copy of the trace where only
that request's output length differs. With ``length_info="hidden"`` its device is the same
in both replays for every non-oracle policy; with ``"exact"`` the length-aware policies
(sect, e3) route some of them elsewhere, so the check can fail.
"""
import numpy as np
import pytest

from e3fast.runner import replay
from e3fast.router.view import LENGTH_INFO, length_prior
from e3fast.sim.reference import random_case
from e3fast.sim.state import POLICIES
from e3fast.tracefile.schema import MODEL_KIND_LLM
from e3fast.tracefile.writer import write_trace

ROUTERS = tuple(p for p in POLICIES if p != "oracle")
N_CHANGED = 12


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(original trace, [(request index, trace with its output length changed)])."""
    folder = tmp_path_factory.mktemp("information")
    rng = np.random.default_rng(15)
    env, req = random_case(rng, 1500, churn=False, n_devices=5, n_types=3, n_models=2,
                           load=0.9)
    path = folder / "base.h5"
    write_trace(path, env, req, scenario="test", seed=15, params={}, force=True)
    llm = np.flatnonzero(np.asarray(env.model_kind)[req["model"]] == MODEL_KIND_LLM)
    picks = rng.choice(llm[(llm > 300) & (llm < 1400)], N_CHANGED, replace=False)
    copies = []
    for i in sorted(picks):
        changed = {k: v.copy() for k, v in req.items()}
        changed["out_tokens"][i] = changed["out_tokens"][i] * 8 + 50
        p = folder / f"changed-{i}.h5"
        write_trace(p, env, changed, scenario="test", seed=15, params={}, force=True)
        copies.append((int(i), p))
    return path, copies


def devices(path, policy, length_info):
    return replay(path, policy, per_request=True, seed=3, length_info=length_info).per_request.device


@pytest.mark.parametrize("policy", ROUTERS)
def test_hidden_length_does_not_steer_its_own_request(world, policy):
    path, copies = world
    base = devices(path, policy, "hidden")
    for i, changed in copies:
        assert devices(changed, policy, "hidden")[i] == base[i], (policy, i)


def test_exact_lengths_do_steer_length_aware_routers(world):
    path, copies = world
    for policy in ("sect", "e3"):
        base = devices(path, policy, "exact")
        moved = sum(int(devices(changed, policy, "exact")[i] != base[i]) for i, changed in copies)
        assert moved > 0, policy


def test_summary_records_the_information(world):
    path, _ = world
    for policy in ("sect", "oracle"):
        for info in LENGTH_INFO:
            s = replay(path, policy, length_info=info).summary
            assert s["length_info"] == info
            assert s["information"] == ("full" if policy == "oracle" else info)


def test_length_predictor_learns_from_completions():
    """Before any completion the predictor's start value is the packaged chat class's
    statistics, counting as one observation; each completion of the pair then moves it: a
    plain running mean while the pair has fewer than LENGTH_MEMORY observations."""
    from e3fast.router.view import learn_length, length_arrays
    from e3fast.sim.reference import random_case
    from e3fast.sim.state import build_state, build_world
    env, _ = random_case(np.random.default_rng(0), 10, n_models=2, n_classes=3)
    st = build_state(build_world(env), 3)
    mean, sd = length_prior()
    assert np.all(st.len_mean == mean) and np.all(st.len_var == sd * sd)
    assert 150 < mean < 300 and sd > 0
    x = np.random.default_rng(1).integers(1, 2000, 500)
    for v in x:
        learn_length(st, 1, 2, v)
    assert st.len_mean[1, 2] == pytest.approx(np.mean([mean, *x]), rel=1e-12)
    assert st.len_mean[0, 2] == mean and st.len_n[1, 2] == 501
    assert st.len_var[1, 2] == pytest.approx(np.var(x), rel=0.05)
    assert length_arrays(2, 3)["len_n"].shape == (2, 3)


def test_unknown_length_info_is_one_clear_message(world):
    from e3fast.errors import E3Error
    with pytest.raises(E3Error, match="length-info"):
        replay(world[0], "sect", length_info="partial")
