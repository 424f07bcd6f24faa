"""E3 versus the baselines, paired on the same traces (common random numbers).

Generated traces (drift, churn, semantic; 100k requests, 8 initial devices, seeds 10, 11,
12 each, the first three tried) are replayed with RoundRobin, static SECT, E3 with the rule
controller, E3 without controller and the Oracle. `pytest -s` prints the table.

Asserted, per scenario: E3 (rule) beats RoundRobin on every trace; it beats static SECT on
mean latency on at least 2 of the 3 traces and on the geometric mean of the paired ratios;
it cuts the stutter rate against SECT on every semantic trace. The rule controller costs at
most 10 % of mean latency against no controller on every trace (output lengths hidden, the
default). (Before the scenarios moved to seconds, drift seed 11 broke that bound with hidden
lengths: 37.4 vs 32.6 s; the trace it named no longer exists.)
"""
import json

import numpy as np
import pytest

from e3fast.runner import replay, write_outputs
from e3fast.tracefile.generator import GenTraceOptions, generate_trace
from e3fast.tracefile.reader import open_trace

SCENARIOS = ("drift", "churn", "semantic")
SEEDS = (10, 11, 12)
N_REQUESTS = 100_000
RUNS = (("rr", "rule"), ("sect", "rule"), ("e3", "rule"), ("e3", "none"), ("oracle", "rule"))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("e3")
    out = {}
    for scenario in SCENARIOS:
        for seed in SEEDS:
            path = folder / f"{scenario}-{seed}.h5"
            generate_trace(GenTraceOptions(scenario=scenario, requests=N_REQUESTS, devices=8,
                                           seed=seed, out=str(path)), progress=False)
            for policy, ctl in RUNS:
                key = policy if policy != "e3" else f"e3-{ctl}"
                out[scenario, seed, key] = replay(path, policy, controller=ctl)
            out[scenario, seed, "trace"] = path
    cols = ("rr", "sect", "e3-rule", "e3-none", "oracle")
    lines = ["mean latency s (stutter rate) per policy; E3 checkpoints",
             f"{'scenario':9} {'seed':>4} " + " ".join(f"{c:>18}" for c in cols) + "  checkpts"]
    for scenario in SCENARIOS:
        for seed in SEEDS:
            row = [out[scenario, seed, c].summary for c in cols]
            lines.append(f"{scenario:9} {seed:4d} " + " ".join(
                f"{s['mean_latency_s']:9.1f} ({s['stutter_rate']:.4f})" for s in row)
                + f"  {row[2]['checkpoints']:8d}")
    print("\n" + "\n".join(lines))
    return out


def _traces(results):
    return [(k[0], k[1]) for k in results if k[2] == "trace"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_e3_beats_static_sect_and_round_robin(results, scenario):
    ratios = []
    for seed in SEEDS:
        e3 = results[scenario, seed, "e3-rule"].summary
        sect = results[scenario, seed, "sect"].summary
        rr = results[scenario, seed, "rr"].summary
        assert sect["requests"] == rr["requests"] == e3["requests"] == N_REQUESTS  # paired
        assert e3["mean_latency_s"] < rr["mean_latency_s"], (scenario, seed)
        ratios.append(e3["mean_latency_s"] / sect["mean_latency_s"])
    wins = sum(r < 1.0 for r in ratios)
    assert wins >= len(SEEDS) - 1, (scenario, ratios)
    assert float(np.exp(np.mean(np.log(ratios)))) < 1.0, (scenario, ratios)


def test_e3_cuts_stutter_in_semantic(results):
    for seed in SEEDS:
        e3 = results["semantic", seed, "e3-rule"].summary["stutter_rate"]
        sect = results["semantic", seed, "sect"].summary["stutter_rate"]
        assert sect > 0.0
        assert e3 < 0.5 * sect, seed


def test_rule_controller_does_not_cost_latency(results):
    for scenario, seed in _traces(results):
        rule = results[scenario, seed, "e3-rule"].summary["mean_latency_s"]
        none = results[scenario, seed, "e3-none"].summary["mean_latency_s"]
        assert rule <= 1.1 * none, (scenario, seed, rule, none)


def test_every_request_ends_once(results):
    for key, r in results.items():
        if key[2] == "trace":
            continue
        s = r.summary
        assert s["completed"] + s["dropped"] == N_REQUESTS, key


def test_joining_device_gets_work(results):
    for seed in SEEDS:
        with open_trace(results["churn", seed, "trace"]) as r:
            joiners = np.flatnonzero(r.env.join_s > 0)
        assert joiners.size
        util = results["churn", seed, "e3-rule"].summary["device_utilization"]
        for d in joiners:
            assert util[d] > 0.0, f"seed {seed}: device {d} joined and got no work"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_checkpoints_by_controller(results, scenario, tmp_path):
    none = results[scenario, SEEDS[0], "e3-none"]
    assert none.summary["checkpoints"] == 0 and none.control_log == []
    rule = results[scenario, SEEDS[0], "e3-rule"]
    n = rule.summary["checkpoints"]
    assert n > 0
    write_outputs(rule, tmp_path / "out")
    lines = (tmp_path / "out" / "control.jsonl").read_text().splitlines()
    assert len(lines) == n
    recs = [json.loads(x) for x in lines]
    assert [r["checkpoint"] for r in recs] == list(range(n))
    assert all(r["controller"] == "rule" for r in recs)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["checkpoints"] == n
