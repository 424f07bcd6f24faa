"""Replay a trace through a routing policy: the Python driver around the kernel.

``replay(trace, policy, ...)`` streams the trace block by block into ``sim.kernel.run_segment``,
grows the request pool when asked, holds checkpoints for the slow-path controller (E3 only)
and applies its actions after the decision delay, then returns a ``ReplayResult``.
``write_outputs`` writes ``summary.json``, ``timeseries.h5``, optionally ``requests.h5`` and
``control.jsonl`` into a folder, atomically. ``run_replay`` is the CLI face.
"""
import heapq
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from . import __version__
from . import interrupts
from .errors import E3Error, hdf5_write_error
from .jsonsafe import json_safe
from .router.config import default_config
from .router.view import DEFAULT_LENGTH_INFO, LENGTH_INFO, LENGTH_INFO_ID, information
from .detect.detectors import reset_detectors
from .router.estimators import (inflate_pair, predict_decode, predict_prefill, reset_all,
                                reset_pair)
from .sim import kernel as K
from .sim.metrics import WINDOW_FIELDS, new_metrics, new_per_request, summarize
from .sim.state import (ALARM_NAMES, FV_ALARM_STAT, FV_NOW, FV_WINDOW_S, IV_ALARM_DEV,
                        IV_ALARM_KIND, IV_ALARM_MODEL, IV_BLOCK_POS, IV_CHECKPOINTS_ON,
                        POLICIES, POLICY_ID, STATUS_CHECKPOINT, STATUS_FINISHED,
                        STATUS_HORIZON, STATUS_NEED_BLOCK, STATUS_POOL_FULL, build_state,
                        build_world, grow_pool)
from .tracefile.reader import check_block, open_trace
from .tracefile.writer import new_h5_file
from .tracefile.schema import DEFAULT_BLOCK_ROWS, REQUEST_FIELDS

CONTROLLERS = ("rule", "llm", "replay", "none")
BOUND = "lower-bound"  # a pseudo-policy: the reference of sim.bound, not a router
TIMING_KEYS = ("wall_s", "compile_s", "requests_per_s", "kernel_s", "read_s", "control_s")
DEFAULT_EARLY_S = 600.0     # early_mean_latency_s: arrivals in the first 10 simulated minutes
CONVERGE_LATE = 0.25        # convergence_s: blocks of early_s against the mean latency of
                            # the last 25% of the trace ...
CONVERGE_TOL = 0.20         # ... exceeded by at most 20%, or by CONVERGE_Z standard
CONVERGE_Z = 3.0            # deviations of the late part's own (non-overlapping) blocks


@dataclass
class ReplayResult:
    """Everything a replay produced. Times in seconds."""
    summary: dict
    windows: np.ndarray          # [n_windows, len(WINDOW_FIELDS)]
    window_s: float
    per_request: object = None   # sim.metrics.PerRequest or None
    control_log: list = field(default_factory=list)
    events: list = field(default_factory=list)


def check_length_info(length_info) -> None:
    """One clear message for an unknown --length-info value."""
    if length_info not in LENGTH_INFO_ID:
        raise E3Error(f"unknown length information {length_info!r}", where="--length-info",
                      fix=f"choose one of {', '.join(LENGTH_INFO)}")


def check_early_s(early_s) -> float:
    """One clear message for a bad --early-s value; the value as a float."""
    try:
        v = float(early_s)
    except (TypeError, ValueError):
        v = float("nan")
    if not (v > 0 and math.isfinite(v)):
        raise E3Error(f"early span must be > 0 s, got {early_s}", where="--early-s",
                      fix=f"use e.g. {DEFAULT_EARLY_S:g} (the first 10 simulated minutes)")
    return v


def convergence_summary(windows: np.ndarray, window_s: float, duration_s: float,
                        early_s: float = DEFAULT_EARLY_S) -> dict:
    """How fast a router settles, from the per-window sums (windows by arrival time).

    ``early_mean_latency_s``: mean latency of the completed requests arriving in the first
    ``k = ceil(early_s / window_s)`` windows, i.e. before ``early_end_s = k * window_s``
    (`early_s` rounded up to whole windows; the whole trace if that reaches the last window).

    ``convergence_s``: blocks of the same ``k`` consecutive windows, one starting at each
    window; a block's mean latency is its latency sum over its completions. The late level
    ``L`` is the mean latency of the arrivals in the last CONVERGE_LATE of the trace (the
    windows starting there, and the last window, which holds any later arrivals).
    The band is ``L + max(CONVERGE_TOL * L, CONVERGE_Z * sd)``, ``sd`` the standard deviation
    of the means of the non-overlapping full blocks of the late part (0 with fewer than 2):
    a router whose latency fluctuates that much late does not count the same fluctuation
    earlier as not converged. ``convergence_s`` is the start of the window after the last
    full block whose mean is above the band (0 if none is; at most the trace's duration):
    from there on every block stays within it. One-sided because queues start empty, so
    every router (the Oracle too) is faster than its level at first; blocks rather than
    single windows so that one heavy-tailed request does not move the result; blocks of
    `early_s` rather than of a fraction of the trace so that the value does not depend on
    the trace's length. Cost: O(windows) NumPy after the replay, nothing in the kernel.
    NaN without completions in the late part."""
    from .sim.metrics import W_COMPLETED, W_LATENCY
    n = windows.shape[0]
    k = max(1, math.ceil(early_s / window_s - 1e-9))
    done, lat = windows[:, W_COMPLETED], windows[:, W_LATENCY]
    early_n, early_sum = done[:min(k, n)].sum(), lat[:min(k, n)].sum()
    out = {"early_s": early_s, "early_end_s": k * window_s if k < n else duration_s,
           "early_mean_latency_s": early_sum / early_n if early_n else float("nan")}
    late = np.arange(n) * window_s >= (1.0 - CONVERGE_LATE) * duration_s
    late[-1] = True
    late_n = done[late].sum()
    s = min(n, k)
    conv = band = float("nan")
    if late_n:
        level = lat[late].sum() / late_n
        cd, cl = np.concatenate(([0.0], np.cumsum(done))), np.concatenate(([0.0], np.cumsum(lat)))
        bn, bl = cd[s:] - cd[:-s], cl[s:] - cl[:-s]  # block i = windows i .. i+s-1
        own = np.arange(np.flatnonzero(late)[0], n - s + 1, s)  # late, non-overlapping
        own = own[bn[own] > 0]
        sd = float(np.std(bl[own] / bn[own], ddof=1)) if len(own) >= 2 else 0.0
        band = level + max(CONVERGE_TOL * level, CONVERGE_Z * sd)
        over = np.flatnonzero(bl > band * bn)
        conv = min((over[-1] + 1) * window_s, duration_s) if len(over) else 0.0
    out["convergence_s"] = conv
    out["convergence_band_s"] = band
    out["convergence_definition"] = (
        f"start of the window after the last block of {s} windows (early_end_s) whose mean "
        f"latency is above convergence_band_s = L + max({CONVERGE_TOL:g} L, {CONVERGE_Z:g} sd), "
        f"L the mean latency of the last {CONVERGE_LATE:.0%} of the trace, sd that of its "
        "blocks' means; 0: none is")
    return out


def _empty_block():
    return [np.zeros(0, dt) for dt in REQUEST_FIELDS.values()]


_COMPILED = {"helpers": False, "policies": set()}


def ensure_compiled(policies=POLICIES) -> float:
    """Compile (or load from the cache) the kernels of `policies` (names; default: all) and
    the helpers a replay calls from Python, once per process. Returns the seconds it took
    (0 if everything was ready). A kernel compiles in 12-20 s the first time on a machine;
    after that Numba's cache loads one policy's kernel and the helpers in under a second."""
    policies = [policies] if isinstance(policies, str) else list(policies)
    todo = [p for p in policies if p not in _COMPILED["policies"]]
    if not todo and _COMPILED["helpers"]:
        return 0.0
    from .tracefile.schema import Env
    t0 = time.perf_counter()
    env = Env(models=["m"], model_kind=np.zeros(1, np.int8), classes=["c"], device_types=["t"],
              prior_a=np.ones((1, 1)), prior_b=np.ones((1, 1)), prior_c=np.zeros((1, 1)),
              prior_sigma=np.full((1, 1), 0.1), prior_available=np.ones((1, 1), bool),
              device_type=np.zeros(1, np.int32), hosts=np.ones((1, 1), bool),
              join_s=np.zeros(1), leave_s=np.full(1, np.inf), drift_ptr=np.zeros(2, np.int64),
              drift_t_s=np.zeros(0), drift_mult=np.zeros(0), sem_device_type=np.zeros(0, np.int32),
              sem_klass=np.zeros(0, np.int16), sem_t0_s=np.zeros(0), sem_t1_s=np.zeros(0),
              sem_factor=np.zeros(0))
    world = build_world(env)
    cols = [np.array([0.0, 1.0]), np.zeros(2, np.int16), np.ones(2, np.int32),
            np.ones(2, np.int32), np.zeros(2, np.int16), np.zeros(2)]
    for policy in todo:
        interrupts.check()  # between kernels (a kernel's compilation stops at its next step)
        st = build_state(world, 1, pool=4)
        reset_all(world, st, 1.0)
        st.ivar[IV_CHECKPOINTS_ON] = 0
        K.run_segment(POLICY_ID[policy], world, st, new_metrics(1, 1), new_per_request(0),
                      *cols, 0, True, np.inf)
        _COMPILED["policies"].add(policy)
    if not _COMPILED["helpers"]:
        interrupts.check()
        st = build_state(world, 1, pool=4)
        reset_pair(world, st, 0, 0, 10.0)  # called from Python by the `calibrate` tool
        inflate_pair(st, 0, 0, 10.0)
        predict_prefill(st, 0, 0, 1000)  # called from Python to build checkpoint observations
        predict_decode(st, 0, 0, 100)
        reset_detectors(st.det, 0)
        check_block(dict(zip(REQUEST_FIELDS, cols)), env, "<warm-up>")  # the validator: ~8 ms to load
        _COMPILED["helpers"] = True
    return time.perf_counter() - t0


def replay(trace, policy: str = "e3", *, seed: int = 0, block_rows: int = DEFAULT_BLOCK_ROWS,
           per_request: bool = False, controller="rule", decision_delay_s: float = 2.0,
           window_s: float | None = None, config: dict | None = None,
           prior_inflate: float = 1.0, length_info: str = DEFAULT_LENGTH_INFO,
           early_s: float = DEFAULT_EARLY_S, progress: bool = False,
           disable_tools=()) -> ReplayResult:
    """Replay the trace file `trace` with `policy` (one of POLICIES).

    `controller` is a controller name (CONTROLLERS) or an object with ``checkpoint(ctx)``
    (see ``control``); it is used by the E3 policy only. `decision_delay_s` is the simulated
    time between a checkpoint and its actions taking effect. `config` overrides router
    parameters by name (``router.config``). `prior_inflate` > 1 weakens the MLPerf priors the
    E3 estimators start from (cold start). `window_s` is the width of the time-series windows
    (default: duration / 200). `length_info` is what routers see of an LLM request's output
    length (``router.view``): "hidden" (predicted from completions; the default) or "exact"
    (the true length; the model before issue 15). The Oracle always sees everything.
    `early_s`: the span of ``early_mean_latency_s`` (``convergence_summary``).
    `disable_tools`: tool families (``control.tools.TOOL_FAMILIES``; a list or
    "gate,router") the controller may not use (an ablation; E3 only).
    """
    from .control.tools import parse_tool_families
    disable_tools = parse_tool_families(disable_tools)
    if disable_tools and policy != "e3":
        raise E3Error(f"tools are switched off for E3's controller, not for --policy {policy}",
                      where="--disable-tools", fix="drop it, or use --policy e3")
    if policy not in POLICY_ID and policy != BOUND:
        raise E3Error(f"unknown policy {policy!r}", where="--policy",
                      fix=f"choose one of {', '.join(POLICIES + (BOUND,))}")
    check_length_info(length_info)
    early_s = check_early_s(early_s)
    if block_rows < 1:
        raise E3Error(f"block size must be >= 1, got {block_rows}", where="--block-rows",
                      fix="use e.g. 65536")
    if not (decision_delay_s >= 0 and math.isfinite(decision_delay_s)):
        raise E3Error(f"decision delay must be >= 0 s, got {decision_delay_s}",
                      where="--decision-delay-s", fix="use e.g. 2.0")
    if window_s is not None and not (window_s > 0 and math.isfinite(window_s)):
        raise E3Error(f"window width must be > 0 s, got {window_s}", where="--window-s",
                      fix="use e.g. 60, or leave it out (duration / 200)")
    if policy == BOUND:
        if per_request:
            raise E3Error("--per-request is for routing policies (lower-bound keeps no "
                          "per-request rows)", where="--per-request",
                          fix="drop it, or choose a routing --policy")
        return _replay_bound(trace, block_rows, window_s, early_s)
    try:
        cfg = default_config(**(config or {}))
    except (KeyError, ValueError) as exc:
        raise E3Error(str(exc), where="router configuration", fix="see `router.config.PARAMS`")
    compile_s = ensure_compiled(policy)
    t_start = time.perf_counter()
    reader = open_trace(trace)
    with reader:
        env = reader.env
        world = build_world(env)
        n_dev = world.device_type.shape[0]
        duration = max(reader.duration_s, 1e-9)
        window_s = float(window_s or max(duration / 200.0, 1e-3))
        n_windows = int(math.ceil(duration / window_s)) + 1
        st = build_state(world, len(env.classes), cfg, seed=seed,
                         length_info=LENGTH_INFO_ID[length_info])
        st.fvar[FV_WINDOW_S] = window_s
        reset_all(world, st, prior_inflate)
        met = new_metrics(n_dev, n_windows)
        prq = new_per_request(reader.n_requests if per_request else 0)
        pid = POLICY_ID[policy]
        ctl = None
        if policy == "e3":
            from .control import make_controller
            ctl = make_controller(controller) if isinstance(controller, str) else controller
        st.ivar[IV_CHECKPOINTS_ON] = int(ctl is not None and ctl.name != "none")
        session = None
        if ctl is not None:
            from .control.session import ControlSession
            from .control.tools import disabled_tool_names
            off = disabled_tool_names(disable_tools)
            if off and hasattr(ctl, "disabled_tools"):
                ctl.disabled_tools = off  # the LLM controller does not offer them
            session = ControlSession(ctl, env, world, decision_delay_s, disabled=off)
        pending = []  # heap of (effect time s, sequence, action)
        blocks = reader.blocks(block_rows)
        cols, start, last = _empty_block(), 0, reader.n_requests == 0
        kernel_s = control_s = 0.0
        bar = _progress(reader.n_requests, progress)
        t_read = time.perf_counter()
        if not last:
            b = next(blocks)
            cols, start = list(b[1:]), b.start
            last = start + len(b.arrival_s) >= reader.n_requests
        read_s = time.perf_counter() - t_read
        while True:
            interrupts.check()
            horizon = pending[0][0] if pending else np.inf
            t0 = time.perf_counter()
            status = K.run_segment(pid, world, st, met, prq, *cols, start, last, horizon)
            kernel_s += time.perf_counter() - t0
            if status == STATUS_NEED_BLOCK:
                bar.update(len(cols[0]))
                t0 = time.perf_counter()
                b = next(blocks)
                read_s += time.perf_counter() - t0
                cols, start = list(b[1:]), b.start
                last = start + len(b.arrival_s) >= reader.n_requests
                st.ivar[IV_BLOCK_POS] = 0
            elif status == STATUS_POOL_FULL:
                st = grow_pool(st)
            elif status == STATUS_HORIZON:
                now = st.fvar[FV_NOW]
                while pending and pending[0][0] <= now:
                    session.apply(heapq.heappop(pending)[2], st, now)
            elif status == STATUS_CHECKPOINT:
                t0 = time.perf_counter()
                alarm = {"kind": ALARM_NAMES[int(st.ivar[IV_ALARM_KIND])],
                         "device": int(st.ivar[IV_ALARM_DEV]),
                         "model": int(st.ivar[IV_ALARM_MODEL]),
                         "statistic": float(st.fvar[FV_ALARM_STAT])}
                for action in session.checkpoint(st, met, float(st.fvar[FV_NOW]), alarm):
                    heapq.heappush(pending, (action["effect_s"], action["seq"], action))
                control_s += time.perf_counter() - t0
            elif status == STATUS_FINISHED:
                bar.update(len(cols[0]))
                break
        bar.close()
    wall_s = time.perf_counter() - t_start
    summary = {"policy": policy, "trace": str(trace), "scenario": reader.scenario,
               "trace_seed": reader.seed, "seed": seed, "n_devices": n_dev,
               "duration_s": reader.duration_s, "e3fast_version": __version__,
               "block_rows": block_rows, "window_s": window_s, "length_info": length_info,
               "information": information(policy, length_info)}
    summary.update(summarize(met))
    summary.update(convergence_summary(met.windows, window_s, reader.duration_s, early_s))
    if session is not None:
        summary.update(session.summary())
        summary["tools_disabled"] = list(disable_tools)
    summary.update({"wall_s": wall_s, "compile_s": compile_s, "kernel_s": kernel_s,
                    "read_s": read_s, "control_s": control_s,
                    "requests_per_s": summary["requests"] / wall_s if wall_s > 0 else 0.0})
    summary["device_utilization"] = [float(x) for x in met.dev_busy_s / duration]
    summary["device_completed"] = [int(x) for x in met.dev_completed]
    return ReplayResult(summary=summary, windows=met.windows.copy(), window_s=window_s,
                        per_request=prq if per_request else None,
                        control_log=session.log if session else [],
                        events=env.extra.get("events", []) if isinstance(env.extra, dict) else [])


def _replay_bound(trace, block_rows: int, window_s, early_s: float) -> ReplayResult:
    """`replay` of the pseudo-policy lower-bound (``sim.bound``): the same outputs, no kernel."""
    from .sim.bound import bound_summary, bound_trace
    t_start = time.perf_counter()
    with open_trace(trace) as reader:
        duration = max(reader.duration_s, 1e-9)
        window_s = float(window_s or max(duration / 200.0, 1e-3))
        met, read_s = bound_trace(reader, block_rows, window_s,
                                  int(math.ceil(duration / window_s)) + 1)
        env = reader.env
    wall_s = time.perf_counter() - t_start
    summary = {"policy": BOUND, "trace": str(trace), "scenario": reader.scenario,
               "trace_seed": reader.seed, "seed": None, "n_devices": len(env.device_type),
               "duration_s": reader.duration_s, "e3fast_version": __version__,
               "block_rows": block_rows, "window_s": window_s,
               "information": information(BOUND, DEFAULT_LENGTH_INFO)}
    summary.update(bound_summary(met))
    summary.update(convergence_summary(met.windows, window_s, reader.duration_s, early_s))
    summary.update({"wall_s": wall_s, "compile_s": 0.0, "kernel_s": wall_s - read_s,
                    "read_s": read_s, "control_s": 0.0,
                    "requests_per_s": summary["requests"] / wall_s if wall_s > 0 else 0.0})
    return ReplayResult(summary=summary, windows=met.windows.copy(), window_s=window_s,
                        events=env.extra.get("events", []) if isinstance(env.extra, dict) else [])


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, unit="req", unit_scale=True, desc="replay", disable=None,
                mininterval=0.5)


def write_outputs(result: ReplayResult, out, force: bool = False) -> Path:
    """Write the result into folder `out`: summary.json, timeseries.h5, requests.h5 (when
    recorded) and control.jsonl (E3). Built in a temporary folder and renamed into place;
    an existing `out` is refused unless `force` (see `check_output_folder`)."""
    out = Path(out)
    check_output_folder(out, force, protect=(result.summary["trace"],))
    tmp = out.parent / f".e3fast-tmp-{out.name}-{time.time_ns()}"
    try:  # created inside the try that removes it: an interrupt cannot come in between
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
        except OSError as exc:
            raise E3Error(f"cannot create the output folder: {exc.strerror}", where=str(out),
                          fix="choose a writable location") from None
        (tmp / "summary.json").write_text(json.dumps(json_safe(result.summary, "string"), indent=2,
                                                     sort_keys=True) + "\n")
        with new_h5_file(tmp / "timeseries.h5") as f:
            f.attrs["window_s"] = result.window_s
            f.attrs["events_json"] = json.dumps(json_safe(result.events, "string"))
            f.attrs["policy"] = result.summary["policy"]
            f.create_dataset("window_start_s",
                             data=np.arange(result.windows.shape[0]) * result.window_s)
            for j, name in enumerate(WINDOW_FIELDS):
                f.create_dataset(name, data=result.windows[:, j])
        if result.per_request is not None:
            with new_h5_file(tmp / "requests.h5") as f:
                for name in result.per_request._fields:  # contiguous: written at once
                    f.create_dataset(name, data=getattr(result.per_request, name))
        if result.summary["policy"] == "e3":
            (tmp / "control.jsonl").write_text(control_jsonl(result.control_log),
                                               encoding="utf-8")
        if out.exists():
            old = out.parent / f".e3fast-old-{out.name}-{time.time_ns()}"
            with interrupts.deferred():  # never between the two renames
                out.rename(old)
                tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except (OSError, RuntimeError) as exc:  # h5py reports a full disk as RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        raise hdf5_write_error(exc, str(out), "check free disk space and permissions") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def control_jsonl(log: list) -> str:
    """The text of control.jsonl: one JSON object per checkpoint record of `log`."""
    return "".join(json.dumps(json_safe(rec, "string"), sort_keys=True) + "\n" for rec in log)


def check_output_folder(out, force: bool, protect=()) -> None:
    """Refuse an output folder that cannot be (re)placed: it exists and not `force`; it is
    not a folder; with `force`, it is not an earlier replay output (no summary.json) or it
    holds one of the `protect` paths or the current folder. A new folder's nearest existing
    parent must be a writable folder."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not force:
            raise E3Error("output folder already exists", where=str(out),
                          fix="choose another --out or add --force to replace it")
        if not out.is_dir():
            raise E3Error("exists and is not a folder", where=str(out),
                          fix="remove it or choose another --out")
        if any(out.iterdir()) and not (out / "summary.json").exists():
            raise E3Error("is not an earlier replay output (no summary.json); --force only "
                          "replaces those", where=str(out), fix="choose another --out")
        real = out.resolve()
        for inside, what in ([(Path(p).resolve(), f"{p}") for p in protect]
                             + [(Path.cwd(), "the current folder")]):
            if inside == real or real in inside.parents:
                raise E3Error(f"--force would delete {what}, which is inside it", where=str(out),
                              fix="choose another --out")
        return
    anc = out.absolute().parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise E3Error(f"{anc} is a file, not a folder", where=f"--out {out}",
                      fix="choose an --out under a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise E3Error(f"no permission to create folders in {anc}", where=f"--out {out}",
                      fix="choose a writable location")


def format_table(summaries: list[dict]) -> str:
    """A short fixed-width table of replay summaries (one row per policy). Column `info`:
    what the policy saw of output lengths ("hidden", "exact", or "full" for the Oracle)."""
    cols = [("policy", "policy", "{}"), ("controller", "controller", "{}"),
            ("mean s", "mean_latency_s", "{:.3f}"), ("p95 s", "p95_latency_s", "{:.3f}"),
            ("p99 s", "p99_latency_s", "{:.3f}"), ("ttft s", "mean_ttft_s", "{:.3f}"),
            ("stutter", "stutter_rate", "{:.4f}"), ("early s", "early_mean_latency_s", "{:.3f}"),
            ("conv s", "convergence_s", "{:.0f}"), ("done", "completed", "{}"),
            ("dropped", "dropped", "{}"), ("rerouted", "rerouted", "{}"),
            ("req/s", "requests_per_s", "{:,.0f}"), ("info", "information", "{}")]
    rows = [[h for h, _, _ in cols]]
    for s in summaries:
        rows.append([fmt.format(s[k]) if k in s and s[k] is not None else "-"
                     for _, k, fmt in cols])
    widths = [max(len(r[j]) for r in rows) for j in range(len(cols))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)


def format_profile(summary: dict, write_s: float) -> str:
    """Where the time of a replay went (``e3fast replay --profile``): compile (outside the
    wall time), reading the trace, the kernel, checkpoints (slow-path controller), the rest
    of the driver (opening the trace, state, summary) and writing the outputs."""
    wall = summary["wall_s"]
    other = max(wall - summary["read_s"] - summary["kernel_s"] - summary["control_s"], 0.0)
    total = wall + write_s
    n = max(summary["requests"], 1)
    rows = [("compile (JIT, cached)", summary["compile_s"], False),
            ("read trace (HDF5 + validation)", summary["read_s"], True),
            ("kernel (event loop)", summary["kernel_s"], True),
            ("checkpoints / control", summary["control_s"], True),
            ("driver, open, summary", other, True),
            ("write outputs", write_s, True)]
    lines = [f"profile: {summary['requests']:,} requests, {summary['requests_per_s']:,.0f} req/s "
             f"(requests / wall {wall:.3f} s; compile and write excluded)",
             f"  {'part':<32}{'seconds':>10}{'share':>8}{'ns/req':>9}"]
    for name, sec, counted in rows:
        share = f"{100 * sec / total:.1f}%" if counted and total > 0 else "-"
        per = f"{sec / n * 1e9:.1f}" if counted else "-"
        lines.append(f"  {name:<32}{sec:>10.3f}{share:>8}{per:>9}")
    return "\n".join(lines)


@dataclass
class ReplayOptions:
    """Options of `e3fast replay` (see `replay` for their meaning)."""
    trace: str = field(metadata={"args": ["trace"], "help": "trace file (HDF5)"})
    out: str = field(metadata={"help": "output folder (summary.json, timeseries.h5, ...)"})
    policy: str = field(default="e3", metadata={
        "choices": [*POLICIES, BOUND], "help": "routing policy (default e3), or lower-bound: "
        "each request alone on its fastest device, a bound on every policy, not a router"})
    controller: str = field(default="rule", metadata={
        "choices": list(CONTROLLERS), "help": "E3 slow-path controller (default rule)"})
    transcript: Optional[str] = field(default=None, metadata={
        "help": "control.jsonl to re-apply with --controller replay"})
    llm_base_url: Optional[str] = field(default=None, metadata={
        "help": "OpenAI-compatible endpoint for --controller llm (or E3FAST_LLM_BASE_URL)"})
    llm_model: Optional[str] = field(default=None, metadata={
        "help": "model name for --controller llm (or E3FAST_LLM_MODEL)"})
    llm_timeout_s: float = field(default=20.0, metadata={
        "help": "seconds to wait for one LLM reply before falling back to the rule controller"})
    disable_tools: Optional[str] = field(default=None, metadata={
        "help": "comma-separated tool families the E3 controller may not use (an ablation): "
                "a call is rejected with a message; families in docs/CONTROLLER.md"})
    decision_delay_s: float = field(default=2.0, metadata={
        "help": "simulated seconds between a checkpoint and its actions (default 2)"})
    seed: int = field(default=0, metadata={"help": "seed of the random policy"})
    length_info: str = field(default=DEFAULT_LENGTH_INFO, metadata={
        "choices": list(LENGTH_INFO),
        "help": "what routers see of an LLM request's output length: hidden (predicted from "
                "completed requests; default) or exact. The oracle always sees everything"})
    block_rows: int = field(default=DEFAULT_BLOCK_ROWS, metadata={
        "help": "requests read per block (results do not depend on it)"})
    window_s: Optional[float] = field(default=None, metadata={
        "help": "width of the time-series windows, seconds (default duration/200)"})
    early_s: float = field(default=DEFAULT_EARLY_S, metadata={
        "help": "early_mean_latency_s covers the arrivals of the first EARLY_S simulated "
                "seconds, rounded up to whole windows (default 600)"})
    stutter_tpot_s: float = field(default=0.1, metadata={
        "help": "stutter threshold on effective TPOT, seconds per token (default 0.1)"})
    per_request: bool = field(default=False, metadata={
        "help": "also write requests.h5 with one row per request (memory grows with N)"})
    force: bool = field(default=False, metadata={"help": "replace an existing output folder"})
    quiet: bool = field(default=False, metadata={"help": "no progress bar and no table"})
    profile: bool = field(default=False, metadata={
        "help": "print where the time went: compile, read, kernel, checkpoints, write"})


def check_replay_options(opts: ReplayOptions) -> None:
    """Option mistakes `replay` itself cannot see (CLI level), before any work is done:
    conflicting flags, bad numbers, and (early, as `write_outputs` will again) an output
    location that cannot be (re)placed."""
    from .control.tools import parse_tool_families
    from .router.config import check_value
    parse_tool_families(opts.disable_tools or ())
    if opts.seed < 0:
        raise E3Error(f"seed must be >= 0, got {opts.seed}", where="--seed", fix="use e.g. --seed 0")
    try:
        check_value("stutter_tpot_s", opts.stutter_tpot_s)
    except ValueError as exc:
        raise E3Error(str(exc), where="--stutter-tpot-s", fix="use e.g. 0.1 (seconds per token)") from None
    if opts.policy != "e3":
        given = [flag for flag, on in (("--controller " + opts.controller, opts.controller in ("llm", "replay")),
                                       ("--transcript", opts.transcript),
                                       ("--llm-base-url", opts.llm_base_url),
                                       ("--llm-model", opts.llm_model),
                                       ("--disable-tools", opts.disable_tools)) if on]
        if given:
            raise E3Error(f"{given[0]} only applies to --policy e3 (got --policy {opts.policy})",
                          where=given[0].split()[0], fix="drop it, or use --policy e3")
    if opts.transcript and opts.controller != "replay":
        raise E3Error(f"--transcript is only read by --controller replay (got --controller {opts.controller})",
                      where="--transcript", fix="add --controller replay, or drop --transcript")
    check_output_folder(opts.out, opts.force, protect=(opts.trace,))


def run_replay(opts: ReplayOptions) -> int:
    """CLI face of `replay` + `write_outputs`."""
    check_replay_options(opts)
    controller = opts.controller
    if opts.policy == "e3":
        from .control import make_controller
        controller = make_controller(opts.controller, transcript=opts.transcript,
                                     base_url=opts.llm_base_url, model=opts.llm_model,
                                     timeout_s=opts.llm_timeout_s)
    result = replay(opts.trace, opts.policy, seed=opts.seed, block_rows=opts.block_rows,
                    per_request=opts.per_request, controller=controller,
                    decision_delay_s=opts.decision_delay_s, window_s=opts.window_s,
                    config={"stutter_tpot_s": opts.stutter_tpot_s},
                    length_info=opts.length_info, early_s=opts.early_s,
                    progress=not opts.quiet, disable_tools=opts.disable_tools or ())
    t_write = time.perf_counter()
    write_outputs(result, opts.out, force=opts.force)
    write_s = time.perf_counter() - t_write
    if opts.profile:
        print(format_profile(result.summary, write_s))
    if not opts.quiet:
        print(format_table([result.summary]))
        print(f"wrote {opts.out}/ (summary.json, timeseries.h5"
              + (", requests.h5" if opts.per_request else "")
              + (", control.jsonl" if opts.policy == "e3" else "") + ")")
    return 0
