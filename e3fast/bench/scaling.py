"""Scaling tables: replay throughput versus fleet size and versus trace length (memory flat).

    python -m e3fast.bench.scaling                          # devices 8..1024 at 1M, lengths 1e5..1e7 at 8
    python -m e3fast.bench.scaling --lengths 1e5,1e6,1e7,1e8 --devices none   # + 100M requests (2.8 GB file)
    python -m e3fast.bench.scaling --quick                  # tiny sizes (checks the script)

Every replay runs in a fresh process (``e3fast.bench.memory``), end to end from the HDF5
file, so its peak resident memory is its own. Traces are generated once into ``--dir`` (kept
for the next run) with ``e3fast gen-trace --scenario SCENARIO --seed 1``. The limit loop
(``e3fast.bench.limit``, in memory) runs in this process on the same trace, up to 1e7 rows.
Prints Markdown tables; ``--json FILE`` also writes the rows.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

from .limit import run_limit
from .memory import replay_in_subprocess


def _ints(text):
    if text in (None, "", "none"):
        return []
    return [int(float(x)) for x in text.split(",")]


def trace_path(folder: Path, scenario: str, requests: int, devices: int) -> Path:
    """The trace for (scenario, requests, devices) in `folder`, generated when missing."""
    from ..tracefile.generator import GenTraceOptions, generate_trace

    path = folder / f"{scenario}-{requests}-{devices}dev-seed1.h5"
    if not path.exists():
        print(f"  generating {path.name} ...", file=sys.stderr, flush=True)
        generate_trace(GenTraceOptions(scenario=scenario, requests=requests, devices=devices,
                                       seed=1, out=str(path)), progress=False)
    return path


def measure(path: Path, policy: str, limit_rows: int = 10_000_000) -> dict:
    """One row: the replay in a fresh process, plus the limit loop when the trace is small
    enough to hold in memory."""
    row = replay_in_subprocess(path, policy)
    n = row["requests"]
    row["kernel_ns_per_request"] = row["kernel_s"] / n * 1e9
    row["read_ns_per_request"] = row["read_s"] / n * 1e9
    if n <= limit_rows:
        lim = run_limit(path, repeat=2)
        row["limit_requests_per_s"] = lim["requests_per_s"]
        row["limit_over_e3fast"] = lim["requests_per_s"] / row["requests_per_s"]
    return row


def table(rows, key: str, title: str) -> str:
    head = (f"| {key} | requests | requests/s | kernel ns/req | read ns/req | wall s | "
            "peak RSS MiB | baseline RSS MiB | limit loop req/s | limit / e3fast |")
    lines = [f"**{title}**", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lim = r.get("limit_requests_per_s")
        lines.append(
            f"| {r[key]:,} | {r['requests']:,} | {r['requests_per_s']:,.0f} | "
            f"{r['kernel_ns_per_request']:.0f} | {r['read_ns_per_request']:.0f} | "
            f"{r['wall_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['baseline_rss_mb']:.0f} | "
            + (f"{lim:,.0f} | {r['limit_over_e3fast']:.1f} |" if lim else "- | - |"))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m e3fast.bench.scaling",
                                description="throughput versus devices and trace length")
    p.add_argument("--policy", default="sect")
    p.add_argument("--scenario", default="drift")
    p.add_argument("--devices", default="8,16,32,64,128,256,512,1024",
                   help="fleet sizes for the device sweep ('none' to skip)")
    p.add_argument("--device-requests", type=float, default=1e6,
                   help="requests per trace in the device sweep")
    p.add_argument("--lengths", default="1e5,1e6,1e7",
                   help="trace lengths for the length sweep ('none' to skip)")
    p.add_argument("--length-devices", type=int, default=8)
    p.add_argument("--dir", default=None, help="where traces are kept (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    a = p.parse_args(argv)
    devices, lengths = _ints(a.devices), _ints(a.lengths)
    n_dev_sweep = int(a.device_requests)
    if a.quick:
        devices, lengths, n_dev_sweep = [8, 64], [10_000, 30_000], 10_000
    folder = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="e3fast-scaling-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"# e3fast scaling ({a.policy}, {a.scenario} traces in {folder}); "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", flush=True)
    out = {"policy": a.policy, "scenario": a.scenario, "devices": [], "lengths": []}
    for d in devices:
        row = measure(trace_path(folder, a.scenario, n_dev_sweep, d), a.policy)
        row["devices"] = d
        out["devices"].append(row)
        print(f"  devices {d}: {row['requests_per_s']:,.0f} req/s, peak {row['peak_rss_mb']:.0f} MiB",
              file=sys.stderr, flush=True)
    for n in lengths:
        row = measure(trace_path(folder, a.scenario, n, a.length_devices), a.policy)
        row["length"] = n
        out["lengths"].append(row)
        print(f"  length {n:,}: {row['requests_per_s']:,.0f} req/s, peak {row['peak_rss_mb']:.0f} MiB",
              file=sys.stderr, flush=True)
    if out["devices"]:
        print(table(out["devices"], "devices",
                    f"Throughput versus fleet size ({a.policy}, {n_dev_sweep:,} requests)"))
        print()
    if out["lengths"]:
        print(table(out["lengths"], "length",
                    f"Throughput and memory versus trace length ({a.policy}, "
                    f"{a.length_devices} devices)"))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
