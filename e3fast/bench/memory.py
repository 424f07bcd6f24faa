"""Replay in a fresh subprocess and report its peak memory (and its timings).

A fresh process so the peak resident set size belongs to this replay alone. It is read from
``VmHWM`` in ``/proc/self/status`` (the high-water mark of this process image), not from
``ru_maxrss``: on Linux a forked child inherits its parent's ``ru_maxrss``, so a child of a
big pytest process would report the parent's peak.
The process first imports e3fast and loads the compiled kernel (``ensure_compiled``); its
resident size at that point is reported as ``baseline_rss_mb`` (Python, NumPy, h5py, LLVM
and the machine code: the fixed cost), the peak after the replay as ``peak_rss_mb``.

``python -m e3fast.bench.memory TRACE [--policy sect] [--block-rows N]`` prints the JSON.
"""
import json
import os
import subprocess
import sys

from ..tracefile.schema import DEFAULT_BLOCK_ROWS

_CHILD = r"""
import json, resource, sys, time
import psutil


def hwm():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


t0 = time.perf_counter()
from e3fast.runner import ensure_compiled, replay
import_s = time.perf_counter() - t0
args = json.loads(sys.argv[1])
compile_s = ensure_compiled(args["policy"])
base = psutil.Process().memory_info().rss
r = replay(args["trace"], args["policy"], block_rows=args["block_rows"])
s = r.summary
peak = hwm()
print(json.dumps({"policy": s["policy"], "requests": s["requests"], "n_devices": s["n_devices"],
                  "wall_s": s["wall_s"], "kernel_s": s["kernel_s"], "read_s": s["read_s"],
                  "control_s": s["control_s"], "requests_per_s": s["requests_per_s"],
                  "compile_s": compile_s, "import_s": import_s,
                  "baseline_rss_mb": base / 2**20, "peak_rss_mb": peak / 2**20,
                  "mean_latency_s": s["mean_latency_s"]}))
"""


def replay_in_subprocess(trace, policy: str = "sect", block_rows: int = DEFAULT_BLOCK_ROWS,
                         env: dict | None = None, timeout: float | None = None) -> dict:
    """Replay `trace` with `policy` in a new Python process; returns its JSON report
    (timings in seconds, memory in MiB). `env` adds environment variables (e.g. an empty
    ``NUMBA_CACHE_DIR`` to measure a first compile)."""
    args = json.dumps({"trace": str(trace), "policy": policy, "block_rows": block_rows})
    proc = subprocess.run([sys.executable, "-c", _CHILD, args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"replay subprocess failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m e3fast.bench.memory", description=__doc__.split("\n")[0])
    p.add_argument("trace")
    p.add_argument("--policy", default="sect")
    p.add_argument("--block-rows", type=int, default=DEFAULT_BLOCK_ROWS)
    a = p.parse_args(argv)
    print(json.dumps(replay_in_subprocess(a.trace, a.policy, a.block_rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
