"""Interrupts at any moment (issue 14): SIGINT and SIGTERM sent at many offsets into
``gen-trace``, ``replay``, ``mc`` and ``demo`` started with an empty Numba cache
(``NUMBA_CACHE_DIR`` a fresh folder, so the signal lands in imports, compilation, cache
writes, HDF5 I/O, worker start-up, clean-up...). Every run must end with exit 130 (or 0 if
it finished first, outputs complete), no traceback or "Exception ignored" on stderr, no
partial output and no temporary file or folder left (``.e3fast-tmp-*``, and nothing in the
run's own TMPDIR).

Offsets count from the moment the process has installed its handlers (SIGTERM appears in
/proc/PID/status SigCgt; before that no program can catch SIGTERM). The suite runs a seeded
sample of offsets over the first 3 s (imports, compilation, the start of the I/O) plus
signals anchored on a temporary output appearing (the I/O phase), two processes at a time.
``E3FAST_INTERRUPT_SWEEP=1`` (``make test-interrupts``) runs the exhaustive sweep instead:
every 50 ms over the first 3 s, both signals, all four commands.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import pytest

from e3fast.tracefile.generator import GenTraceOptions, generate_trace

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")

SWEEP = os.environ.get("E3FAST_INTERRUPT_SWEEP") == "1"
SIGNALS = (signal.SIGINT, signal.SIGTERM)
WINDOW_S, STEP_S = 3.0, 0.05
PARALLEL = 2
#: stderr lines an interrupted command may print (nothing else)
ALLOWED = ("interrupted; finished outputs are intact, nothing half-written was left",
           "interrupt received; stopping after the current compilation step",
           "interrupted after the command finished")

COMMANDS = {
    "gen-trace": ["gen-trace", "--scenario", "drift", "--requests", "300000", "--seed", "4",
                  "--out", "out/t.h5"],
    "replay": ["replay", "{trace}", "--out", "out/run", "--policy", "e3", "--quiet",
               "--block-rows", "5000"],
    "mc": ["mc", "--scenario", "drift", "--reps", "2", "--requests", "2000", "--policies", "rr",
           "--workers", "1", "--out", "out/mc", "--quiet"],
    "demo": ["demo", "--requests", "20000"],
}


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("interrupts") / "small.h5"
    generate_trace(GenTraceOptions(scenario="drift", requests=20_000, devices=8, seed=2,
                                   out=str(path)), progress=False)
    return path


def _handlers_installed(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(int(x.split()[1], 16) for x in status.splitlines() if x.startswith("SigCgt:"))
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.startswith(".e3fast-"))


def _check_outputs(cmd: str, out: Path, finished: bool) -> list[str]:
    """What is wrong with the outputs under `out` (complete if `finished`)."""
    bad = []
    if cmd == "gen-trace":
        f = out / "t.h5"
        if finished:
            with h5py.File(f, "r") as h:
                if h.attrs["n_requests"] != 300_000 or len(h["requests/arrival_s"]) != 300_000:
                    bad.append("incomplete trace")
        elif f.exists():
            bad.append("t.h5 exists after an interrupt")
    elif cmd == "replay":
        run = out / "run"
        if finished or run.exists():
            if sorted(p.name for p in run.iterdir()) != ["control.jsonl", "summary.json",
                                                         "timeseries.h5"]:
                bad.append(f"incomplete run folder {sorted(run.iterdir())}")
            elif json.loads((run / "summary.json").read_text())["requests"] != 20_000:
                bad.append("summary of a partial replay")
    elif cmd == "mc":
        mc = out / "mc"
        for f in sorted((mc / "reps").glob("*")) if (mc / "reps").exists() else []:
            try:
                json.loads(f.read_text())
            except ValueError:
                bad.append(f"unreadable {f.name}")
        if finished != (mc / "summary.json").exists():
            bad.append(f"summary.json {'missing' if finished else 'written'}")
    return bad


def run_one(cmd: str, sig: int, delay_s: float, root: Path, trace_path: Path,
            anchor: str = "start", cold: bool = True) -> dict:
    """Start `cmd` in a fresh folder (empty Numba cache if `cold`), send `sig` `delay_s`
    after the handlers are installed (anchor "start") or after a temporary output appears
    (anchor "tmp"); return what went wrong (an empty "bad" list if nothing)."""
    work = root / f"{cmd}-{signal.Signals(sig).name}-{anchor}-{delay_s:.3f}"
    tmpdir, out = work / "tmp", work / "work"
    tmpdir.mkdir(parents=True)
    (out / "out").mkdir(parents=True)
    env = dict(os.environ, TMPDIR=str(tmpdir))
    if cold:
        env["NUMBA_CACHE_DIR"] = str(work / "numba-cache")
    args = [a.format(trace=trace_path) for a in COMMANDS[cmd]]
    proc = subprocess.Popen([sys.executable, "-m", "e3fast.cli", *args], cwd=out, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready = (lambda: _handlers_installed(proc.pid)) if anchor == "start" else \
        (lambda: bool(_leftovers(out) or _leftovers(tmpdir)))
    t0 = time.monotonic()
    while not ready() and proc.poll() is None and time.monotonic() - t0 < 600:
        time.sleep(0.002)
    time.sleep(delay_s)
    sent = proc.poll() is None
    if sent:
        proc.send_signal(sig)
    t_sig = time.monotonic()
    try:
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    rc, bad = proc.returncode, []
    lines = [x.strip() for x in err.splitlines() if x.strip()]
    if "Traceback" in err or "Exception ignored" in err:
        bad.append("traceback")
    late = any("interrupted after the command finished" in x for x in lines)
    if rc == 130:
        if not lines or not all(any(a in x for a in ALLOWED) for x in lines):
            bad.append("unexpected stderr")
    elif rc != 0:
        bad.append(f"exit {rc}")
    bad += _check_outputs(cmd, out / "out", rc == 0 or late)
    left = _leftovers(out) + [str(p.relative_to(tmpdir)) for p in tmpdir.iterdir()]
    if left:
        bad.append(f"left behind: {left}")
    return {"cmd": cmd, "signal": signal.Signals(sig).name, "anchor": anchor,
            "delay_s": delay_s, "rc": rc, "exit_after_s": time.monotonic() - t_sig,
            "bad": bad, "stderr": err[-2000:]}


def _plan(cmd: str):
    """(signal, delay) pairs: every STEP_S over WINDOW_S for both signals (sweep), or a
    seeded sample of 4 (suite)."""
    grid = [(sig, round(i * STEP_S, 3)) for i in range(int(WINDOW_S / STEP_S)) for sig in SIGNALS]
    return grid if SWEEP else random.Random(f"interrupts-{cmd}").sample(grid, 4)


def _run_all(jobs, root, trace_path):
    with ThreadPoolExecutor(PARALLEL) as pool:
        results = list(pool.map(lambda j: run_one(*j[:3], root, trace_path, *j[3:]), jobs))
    failures = [r for r in results if r["bad"]]
    slowest = max(r["exit_after_s"] for r in results)
    print(f"{len(results)} runs, {len(failures)} failures, slowest exit after the signal "
          f"{slowest:.1f} s")
    assert not failures, "\n".join(json.dumps(r) for r in failures[:5])


@pytest.mark.parametrize("cmd", list(COMMANDS))
def test_interrupt_cold_cache_at_any_offset(cmd, trace, tmp_path):
    _run_all([(cmd, sig, d) for sig, d in _plan(cmd)], tmp_path, trace)


def test_interrupt_during_output_io(trace, tmp_path):
    """Signals right after a temporary output appears: gen-trace (cold cache, blocks being
    written) and replay (the kernels cached by the first run: results being written)."""
    rng = random.Random("interrupts-io")
    jobs = [("gen-trace", sig, rng.uniform(0, 0.3), "tmp") for sig in SIGNALS]
    jobs += [("replay", sig, rng.uniform(0, 0.02), "tmp", False) for sig in SIGNALS]
    _run_all(jobs, tmp_path, trace)
