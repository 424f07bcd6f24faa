"""Markdown tables from a pytest-benchmark JSON file (the per-item numbers in ``extra_info``).

    python -m e3fast.bench.tables                      # the newest file under .benchmarks/
    python -m e3fast.bench.tables .benchmarks/Linux-CPython-3.11-64bit/0003_*.json

``pytest-benchmark compare`` shows the raw timings of each benchmark (one call of a driver,
one replay); this prints what they mean per item: ns per routing decision, ns per update,
requests per second, peak memory, ratios. docs/PERFORMANCE.md quotes them.
"""
import argparse
import json
import sys
from pathlib import Path

POLICY_ORDER = ("rr", "random", "jsq", "sect", "oracle", "e3")


def newest(root: Path = Path(".benchmarks")) -> Path:
    files = sorted(root.glob("*/*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise SystemExit(f"no pytest-benchmark JSON under {root}/ (run `make bench` first)")
    return files[-1]


def _by_group(data):
    out = {}
    for b in data["benchmarks"]:
        out.setdefault(b["group"] or "", []).append(b)
    return out


def _md(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render(data) -> str:
    g = _by_group(data)
    parts = []
    mi = data.get("machine_info", {})
    ci = data.get("commit_info", {})
    parts.append(f"Run {data.get('datetime', '?')}, commit {ci.get('id', '?')[:10]}"
                 f"{' (uncommitted changes)' if ci.get('dirty') else ''}, "
                 f"{mi.get('cpu', {}).get('brand_raw', mi.get('processor', '?'))}, "
                 f"Python {mi.get('python_version', '?')}.")
    route = {}
    for name, items in g.items():
        if name.startswith("route-jit-"):
            for b in items:
                e = b["extra_info"]
                route.setdefault(e["policy"], {})[e["devices"]] = e["ns_per_decision"]
    if route:
        devs = sorted({d for v in route.values() for d in v})
        rows = [[p] + [f"{route[p].get(d, float('nan')):.1f}" for d in devs]
                for p in POLICY_ORDER if p in route]
        parts.append("**One routing decision inside the kernel (ns, jitted batch)**\n\n"
                     + _md(["policy"] + [f"{d} devices" for d in devs], rows))
    if "route-python-call" in g:
        rows = [[b["extra_info"]["policy"], f"{b['extra_info']['us_per_call']:.2f}"]
                for b in sorted(g["route-python-call"],
                                key=lambda b: POLICY_ORDER.index(b["extra_info"]["policy"]))]
        parts.append("**One routing decision called from Python (µs, 8 devices)**\n\n"
                     + _md(["policy", "µs per call"], rows))
    rows = []
    for grp, key, unit in (("estimator", "ns_per_call", "ns per update"),
                           ("detector", "ns_per_call", "ns per update"),
                           ("service", "ns_per_call", "ns per evaluation"),
                           ("trace-io", "ns_per_row", "ns per row")):
        for b in g.get(grp, []):
            rows.append([grp, b["name"].replace("test_", ""), f"{b['extra_info'][key]:.1f}", unit])
    if rows:
        parts.append("**Building blocks**\n\n" + _md(["group", "benchmark", "time", "unit"], rows))
    rep = [b for name, items in g.items() if name.startswith("replay-") for b in items]
    if rep:
        rep.sort(key=lambda b: (b["extra_info"]["requests"], b["extra_info"]["devices"],
                                POLICY_ORDER.index(b["extra_info"]["policy"])))
        rows = []
        for b in rep:
            e = b["extra_info"]
            n = e["requests"]
            rows.append([e["policy"], e["devices"], f"{n:,}", f"{e['requests_per_s'] / 1e6:.2f}",
                         f"{e['kernel_s'] / n * 1e9:.0f}", f"{e['read_s'] / n * 1e9:.0f}",
                         f"{e['control_s']:.3f}", f"{e['ratio_to_limit']:.1f}",
                         f"{e['peak_rss_mb']:.0f}", f"{e['baseline_rss_mb']:.0f}"])
        parts.append("**Whole replays, end to end from HDF5 (drift traces)**\n\n" + _md(
            ["policy", "devices", "requests", "M req/s", "kernel ns/req", "read ns/req",
             "control s", "limit loop / e3fast", "peak RSS MiB", "baseline RSS MiB"], rows))
    if "scenario-replay" in g:
        rows = []
        for b in g["scenario-replay"]:
            e = b["extra_info"]
            n = e["requests"]
            rows.append([e["scenario"], e["policy"], f"{n:,}", f"{e['requests_per_s'] / 1e6:.2f}",
                         f"{e['kernel_s'] / n * 1e9:.0f}", f"{e['read_s'] / n * 1e9:.0f}",
                         f"{e['control_s']:.2f}", e["alarms"], e["length_info"]])
        parts.append("**Whole replays per scenario (8 devices, `e3` with the rule controller)**\n\n"
                     + _md(["scenario", "policy", "requests", "M req/s", "kernel ns/req",
                            "read ns/req", "control s", "alarms", "lengths"], rows))
    if "compile" in g:
        rows = [[b["name"].replace("test_", ""), f"{b['extra_info']['compile_s']:.2f}",
                 f"{b['extra_info']['import_s']:.2f}"] for b in g["compile"]]
        parts.append("**Compile (fresh process)**\n\n" + _md(["case", "compile s", "import s"], rows))
    for b in g.get("peer", []):
        e = b["extra_info"]
        parts.append("**Peer comparison (oracle = SECT on known service times, cold-start trace, "
                     f"{e['requests']:,} requests, 8 devices)**\n\n" + _md(
                         ["", "requests/s", "e3fast speed-up"],
                         [["e3fast replay (end to end from HDF5)",
                           f"{e['e3fast_requests_per_s']:,.0f}", "1"],
                          ["SimPy model (trace in memory)", f"{e['simpy_requests_per_s']:,.0f}",
                           f"{e['ratio_vs_simpy']:.0f}x"],
                          ["limit loop (trace in memory)", f"{e['limit_requests_per_s']:,.0f}",
                           f"1/{e['limit_over_e3fast']:.1f}"]]))
    return "\n\n".join(parts) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m e3fast.bench.tables",
                                description="Markdown tables from a pytest-benchmark JSON file")
    p.add_argument("json", nargs="?", help="benchmark JSON (default: newest under .benchmarks/)")
    a = p.parse_args(argv)
    path = Path(a.json) if a.json else newest()
    print(render(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
