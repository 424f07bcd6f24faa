"""``e3fast report DIR [--plots]``: tables and paper figures from result folders.

DIR may be a replay output (``summary.json`` + ``timeseries.h5``, from ``e3fast replay``),
an mc output (``summary.json`` with schema ``e3fast-mc/1``), or a folder holding several of
either (searched two levels deep). Tables go to stdout. With ``--plots`` figures are written
as PNG (150 dpi) and PDF into ``--fig-dir`` (default ``DIR/figures``), matplotlib Agg backend:

* replays of one trace: mean latency per window over time for every policy, with the
  trace's events (``timeseries.h5`` attribute ``events_json``) as vertical lines
  (``latency_time``); stutter rate per window in the semantic scenario (``stutter_time``);
  latency CDFs when ``requests.h5`` exists (``latency_cdf``; skipped with a note otherwise).
* an mc folder: mean, p95, p99 latency and stutter per variant with 95% CIs (``ci_bars``);
  mean latency over the trace (fractions of its length), averaged over replications, with
  the interquartile range over replications as a band and the events of replication 0
  (``latency_curves``; stutter too for semantic).
* several mc folders: E3's reduction versus the best baseline (the best non-learning router) and gap to the Oracle
  per scenario with 95% CIs, next to the paper's reported ranges (``headline``).

Tables name the references for what they are: ``oracle (full information, not a bound)``
and ``lower-bound (bound, not a router)`` (``montecarlo.LABELS``).
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import E3Error

MC_SCHEMA = "e3fast-mc/1"
COLORS = {"rr": "#9e9e9e", "random": "#bcbd22", "jsq": "#8c564b", "sect": "#1f77b4",
          "e3": "#d62728", "e3-nocontrol": "#ff7f0e", "e3-llm": "#9467bd", "oracle": "#2ca02c",
          "lower-bound": "#17becf"}
PAPER = {"reduction": (0.65, 0.73), "gap": (0.07, 0.10), "cold_start_reduction": 0.30}


@dataclass
class ReportOptions:
    """Options of ``e3fast report``."""
    dir: str = field(metadata={"args": ["dir"], "help": "a replay or mc output folder, or a folder of them"})
    plots: bool = field(default=False, metadata={"help": "also write PNG and PDF figures"})
    fig_dir: Optional[str] = field(default=None, metadata={
        "help": "where figures go (default DIR/figures)"})


# ---------------------------------------------------------------- finding results

def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise E3Error(f"unreadable summary: {exc}", where=str(path),
                      fix="re-run the command that wrote it") from None


def find_results(root) -> tuple[list[Path], list[Path]]:
    """(replay folders, mc folders) under `root` (itself, or up to two levels below)."""
    root = Path(root)
    if not root.is_dir():
        raise E3Error("not a folder", where=str(root), fix="give a replay or mc output folder")
    replays, mcs = [], []
    for cand in [root, *sorted(p for p in root.glob("*") if p.is_dir()),
                 *sorted(p for p in root.glob("*/*") if p.is_dir())]:
        s = cand / "summary.json"
        if not s.is_file():
            continue
        if _read_json(s).get("schema") == MC_SCHEMA:
            mcs.append(cand)
        elif (cand / "timeseries.h5").is_file():
            replays.append(cand)
    if not replays and not mcs:
        raise E3Error("no results found (no summary.json with timeseries.h5, no mc summary)",
                      where=str(root), fix="point at the --out folder of `e3fast replay` or `e3fast mc`")
    return replays, mcs


def variant_name(summary: dict) -> str:
    """rr, sect, ..., e3 (rule), e3-nocontrol, e3-llm, e3-replay from a replay summary."""
    if summary.get("policy") != "e3":
        return summary.get("policy", "?")
    ctl = summary.get("controller", "rule")
    return {"rule": "e3", "none": "e3-nocontrol"}.get(ctl, f"e3-{ctl}")


def load_replay(folder: Path) -> dict:
    """Summary, windows (dict of arrays), events and window width of one replay folder."""
    import h5py
    s = _read_json(folder / "summary.json")
    try:
        with h5py.File(folder / "timeseries.h5", "r") as f:
            win = {k: f[k][()] for k in f.keys()}
            events = json.loads(f.attrs.get("events_json", "[]"))
            window_s = float(f.attrs["window_s"])
    except (OSError, KeyError, ValueError) as exc:
        raise E3Error(f"unreadable time series: {exc}", where=str(folder / "timeseries.h5"),
                      fix="re-run the replay") from None
    return {"folder": folder, "summary": s, "windows": win, "events": events, "window_s": window_s,
            "name": variant_name(s)}


# ---------------------------------------------------------------- tables

def replay_table(runs: list[dict]) -> str:
    from .montecarlo import LABELS
    from .runner import format_table
    rows = []
    for r in runs:
        s = dict(r["summary"])
        s["policy"] = LABELS.get(r["name"], r["name"])
        rows.append(s)
    return format_table(rows)


def headline_table(mcs: list[dict]) -> str:
    """One row per mc folder: scenario, n, E3's reduction vs best baseline and gap to the Oracle
    and to the lower bound."""
    from .montecarlo import _ci
    rows = [["folder", "scenario", "reps", "variant", "best baseline", "reduction [95% CI]",
             "ratio of means", "gap to oracle (full information, not a bound) [95% CI]",
             "gap to lower-bound (bound, not a router) [95% CI]", "stutter e3 / best"]]
    for m in mcs:
        s, h = m["summary"], m["summary"]["headline"]
        for v in ("e3", "e3-nocontrol", "e3-llm"):
            if v not in h:
                continue
            red = h[v].get("mean_latency_s_reduction_vs_best_baseline", {})
            gap = h[v].get("mean_latency_s_gap_to_oracle", {})
            gap_lb = h[v].get("mean_latency_s_gap_to_lower_bound", {})
            best = h.get("best_baseline")
            st = s["policies"]
            stut = (f"{100 * st[v]['stutter_rate']['mean']:.2f}% / "
                    f"{100 * st[best]['stutter_rate']['mean']:.2f}%") if best else "-"
            rows.append([m["folder"].name, s["scenario"], str(s["n_reps"]), v, best or "-",
                         _ci(red, "{:.1f}", pct=True) if red else "-",
                         f"{100 * red['of_means']:.1f}%" if red.get("of_means") is not None else "-",
                         _ci(gap, "{:.1f}", pct=True) if gap else "-",
                         _ci(gap_lb, "{:.1f}", pct=True) if gap_lb else "-", stut])
    widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


# ---------------------------------------------------------------- figures

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "savefig.bbox": "tight", "legend.frameon": False})
    return plt


def _save(fig, fig_dir: Path, stem: str) -> list[Path]:
    from .atomic import atomic_path
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        final = fig_dir / f"{stem}.{ext}"
        with atomic_path(final) as tmp:
            fig.savefig(tmp, dpi=150, format=ext)
        paths.append(final)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return paths


def _events(ax, events, scale: float = 1.0, key: str = "t_s", label: bool = True):
    """Vertical lines at the events (except `start`), labelled by kind at the top (events at
    the same time share one line: "leave+join")."""
    at: dict = {}
    for e in events:
        if e.get("kind") != "start" and e.get(key) is not None:
            kinds = at.setdefault(round(e[key] * scale, 9), [])
            if e["kind"] not in kinds:
                kinds.append(e["kind"])
    for x, kinds in at.items():
        ax.axvline(x, color="0.35", lw=0.7, ls=":", zorder=0)
        if label:
            ax.text(x, 1.0, " " + "+".join(kinds), transform=ax.get_xaxis_transform(),
                    rotation=90, va="top", ha="right", fontsize=6, color="0.35")


def _legend(ax):
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _log_if_wide(ax, values):
    v = np.asarray([x for x in values if x is not None and np.isfinite(x) and x > 0], float)
    if len(v) and v.max() / max(v.min(), 1e-12) > 30:
        ax.set_yscale("log")


def _order(names):
    rank = list(COLORS)
    return sorted(names, key=lambda n: rank.index(n) if n in rank else len(rank))


def plot_replays(runs: list[dict], fig_dir: Path, stem: str) -> tuple[list[Path], list[str]]:
    """Figures of several replays of one trace; returns (files written, notes)."""
    plt = _plt()
    files, notes = [], []
    runs = sorted(runs, key=lambda r: _order([r["name"] for r in runs]).index(r["name"]))
    s0 = runs[0]["summary"]
    title = f"{s0.get('scenario', '?')} (trace seed {s0.get('trace_seed', '?')}, {s0.get('requests', 0):,} requests)"
    tunit, tscale = ("h", 1 / 3600) if s0.get("duration_s", 0) > 3 * 3600 else ("s", 1.0)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    allv = []
    for r in runs:
        w = r["windows"]
        with np.errstate(invalid="ignore", divide="ignore"):
            lat = w["latency_sum_s"] / w["completed"]
        t = (w["window_start_s"] + r["window_s"] / 2) * tscale
        ax.plot(t, lat, lw=1.1, color=COLORS.get(r["name"]), label=r["name"])
        allv += list(lat[np.isfinite(lat)])
    _log_if_wide(ax, allv)
    _events(ax, runs[0]["events"], tscale)
    ax.set(xlabel=f"arrival time ({tunit})", ylabel="mean latency per window (s)", title=title)
    _legend(ax)
    files += _save(fig, fig_dir, f"{stem}latency_time")
    if s0.get("scenario") == "semantic":
        fig, ax = plt.subplots(figsize=(7, 2.8))
        for r in runs:
            w = r["windows"]
            with np.errstate(invalid="ignore", divide="ignore"):
                st = w["stutter"] / w["llm_completed"]
            ax.plot((w["window_start_s"] + r["window_s"] / 2) * tscale, 100 * st, lw=1.1,
                    color=COLORS.get(r["name"]), label=r["name"])
        _events(ax, runs[0]["events"], tscale)
        ax.set(xlabel=f"arrival time ({tunit})", ylabel="stutter rate per window (%)", title=title)
        _legend(ax)
        files += _save(fig, fig_dir, f"{stem}stutter_time")
    cdfs = {r["name"]: lat for r in runs if (lat := _request_latencies(r, notes)) is not None}
    if cdfs:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for name, lat in cdfs.items():
            x = np.sort(lat)
            ax.plot(x, np.arange(1, len(x) + 1) / len(x), lw=1.1, color=COLORS.get(name), label=name)
        ax.set_xscale("log")
        ax.set(xlabel="latency (s)", ylabel="fraction of requests", title=title)
        ax.legend(fontsize=7, loc="lower right")
        files += _save(fig, fig_dir, f"{stem}latency_cdf")
    else:
        notes.append(f"{stem or 'replays'}: no requests.h5 (replay with --per-request): "
                     "latency CDF skipped")
    return files, notes


def _request_latencies(run: dict, notes: list) -> Optional[np.ndarray]:
    """Per-request latencies (s) of a replay from requests.h5 and the trace's arrivals
    (first dispatch times when the trace file is gone); None without requests.h5."""
    import h5py
    path = run["folder"] / "requests.h5"
    if not path.is_file():
        return None
    with h5py.File(path, "r") as f:
        done = f["completion_s"][()]
        arrival = None
        trace = Path(run["summary"].get("trace", ""))
        if trace.is_file():
            with h5py.File(trace, "r") as t:
                arrival = t["requests/arrival_s"][()]
        if arrival is None or len(arrival) != len(done):
            arrival = f["dispatch_s"][()]
            notes.append(f"{run['folder']}: trace file not found; latency CDF uses dispatch "
                         "times (equal to arrivals except for rerouted requests)")
    ok = np.isfinite(done)
    return done[ok] - arrival[ok]


def plot_mc(m: dict, fig_dir: Path, stem: str) -> list[Path]:
    """CI bar charts and averaged latency curves of one mc folder."""
    plt = _plt()
    s = m["summary"]
    names = _order(list(s["policies"]))
    title = f"{s['scenario']}: {s['n_reps']} replications x {s['requests_per_rep']:,} requests"
    panels = [("mean_latency_s", "mean latency (s)", 1), ("p95_latency_s", "p95 latency (s)", 1),
              ("p99_latency_s", "p99 latency (s)", 1), ("stutter_rate", "stutter rate (%)", 100)]
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
    for ax, (metric, label, k) in zip(axes, panels):
        st = [s["policies"][n][metric] for n in names]
        mean = np.array([_f(x["mean"]) for x in st]) * k
        lo = np.array([_f(x["ci_low"], x["mean"]) for x in st]) * k
        hi = np.array([_f(x["ci_high"], x["mean"]) for x in st]) * k
        ax.bar(range(len(names)), mean, color=[COLORS.get(n, "0.5") for n in names],
               yerr=[mean - lo, hi - mean], capsize=3, error_kw={"lw": 0.8})
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
        ax.set_ylabel(label)
        if metric != "stutter_rate":
            _log_if_wide(ax, mean)
    fig.suptitle(title + " (bars: mean, whiskers: 95% CI)", fontsize=9)
    fig.tight_layout()
    files = _save(fig, fig_dir, f"{stem}ci_bars")
    c = s.get("curves")
    if c:
        t = np.asarray(c["t_frac"])
        rows = [("latency_mean_s", "mean latency (s)", 1)]
        if s["scenario"] == "semantic":
            rows.append(("stutter_rate", "stutter rate (%)", 100))
        fig, axes = plt.subplots(len(rows), 1, figsize=(7, 2.9 * len(rows)), squeeze=False)
        for ax, (key, label, k) in zip(axes[:, 0], rows):
            allv = []
            for n in names:
                p = c["policies"][n]
                y = np.array([_f(v) for v in p[key]]) * k
                ax.plot(t, y, lw=1.1, color=COLORS.get(n), label=n)
                allv += list(y[np.isfinite(y)])
                if key == "latency_mean_s" and "latency_q25_s" in p:
                    lo = np.array([_f(v) for v in p["latency_q25_s"]])
                    hi = np.array([_f(v) for v in p["latency_q75_s"]])
                    ax.fill_between(t, lo, hi, color=COLORS.get(n), alpha=0.15, lw=0)
            if key == "latency_mean_s":
                _log_if_wide(ax, allv)
            _events(ax, c.get("events", []), key="t_frac")
            ax.set(xlabel="arrival time (fraction of the trace)", ylabel=label)
            _legend(ax)
        axes[0, 0].set_title(title + " (lines: mean over replications; bands: middle 50% of replications)", fontsize=9)
        fig.tight_layout()
        files += _save(fig, fig_dir, f"{stem}latency_curves")
    return files


def plot_headline(mcs: list[dict], fig_dir: Path) -> list[Path]:
    """Reduction vs the best baseline (the best non-learning router) and gap to the Oracle per scenario (95% CIs),
    with the paper's reported ranges shaded."""
    plt = _plt()
    variants = [v for v in ("e3", "e3-nocontrol", "e3-llm")
                if any(v in m["summary"]["headline"] for m in mcs)]
    labels = [m["folder"].name for m in mcs]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    width = 0.8 / max(len(variants), 1)
    for ax, key, band, ylabel in (
            (axes[0], "mean_latency_s_reduction_vs_best_baseline", PAPER["reduction"],
             "mean-latency reduction vs best baseline (%)"),
            (axes[1], "mean_latency_s_gap_to_oracle", PAPER["gap"], "mean-latency gap to Oracle (%)")):
        ax.axhspan(100 * band[0], 100 * band[1], color="0.85", zorder=0, label="paper (dynamic regimes)")
        for i, v in enumerate(variants):
            st = [m["summary"]["headline"].get(v, {}).get(key, {}) for m in mcs]
            mean = np.array([_f(x.get("mean")) for x in st]) * 100
            lo = np.array([_f(x.get("ci_low"), x.get("mean")) for x in st]) * 100
            hi = np.array([_f(x.get("ci_high"), x.get("mean")) for x in st]) * 100
            x = np.arange(len(mcs)) + (i - (len(variants) - 1) / 2) * width
            ax.bar(x, mean, width, color=COLORS.get(v), label=v, yerr=[mean - lo, hi - mean],
                   capsize=2, error_kw={"lw": 0.8})
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(range(len(mcs)), labels)
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize=7)
    fig.suptitle("E3 versus the best baseline (the best non-learning router) and the Oracle: "
                 "per-replication paired ratios, mean and 95% CI", fontsize=9)
    fig.tight_layout()
    return _save(fig, fig_dir, "headline")


def _f(x, default=None) -> float:
    if x is None:
        x = default
    return float("nan") if x is None else float(x)


# ---------------------------------------------------------------- the command

def report(root, plots: bool = False, fig_dir=None) -> dict:
    """Tables (text) and, with `plots`, figures of the results under `root`.
    Returns {"text": str, "files": [paths], "notes": [str]}."""
    from .montecarlo import format_summary
    root = Path(root)
    replay_dirs, mc_dirs = find_results(root)
    fig_dir = Path(fig_dir) if fig_dir else root / "figures"
    text, files, notes = [], [], []
    groups: dict = {}
    for d in replay_dirs:
        r = load_replay(d)
        key = (r["summary"].get("trace"), r["summary"].get("scenario"), r["summary"].get("trace_seed"))
        groups.setdefault(key, []).append(r)
    many = len(groups) > 1 or len(mc_dirs) > 1 or (groups and mc_dirs)
    used = set()
    for (trace, scen, seed), runs in groups.items():
        text.append(f"== replays of {trace} ({scen}, seed {seed})")
        text.append(replay_table(runs))
        if plots:
            stem = f"{scen}-s{seed}_" if many else ""
            while stem and stem in used:
                stem = stem[:-1] + "x_"
            used.add(stem)
            f, n = plot_replays(runs, fig_dir, stem)
            files += f
            notes += n
    mcs = [{"folder": d, "summary": _read_json(d / "summary.json")} for d in mc_dirs]
    order = ["cold-start", "semantic", "churn", "drift", "real"]
    mcs.sort(key=lambda m: (order.index(m["summary"]["scenario"]) if m["summary"]["scenario"]
                            in order else len(order), m["folder"].name))
    for m in mcs:
        text.append(f"== mc {m['folder']}")
        text.append(format_summary(m["summary"]))
        if plots:
            files += plot_mc(m, fig_dir, f"{m['folder'].name}_" if many else "")
    if len(mcs) > 1:
        text.append("== E3 versus the best baseline (the best non-learning router) and the Oracle (mean latency)")
        text.append(headline_table(mcs))
        if plots:
            files += plot_headline(mcs, fig_dir)
    return {"text": "\n".join(text), "files": files, "notes": notes}


def run_report(opts: ReportOptions) -> int:
    """CLI face of `report`."""
    r = report(opts.dir, opts.plots, opts.fig_dir)
    print(r["text"])
    for n in r["notes"]:
        print("note: " + n)
    if r["files"]:
        print(f"wrote {len(r['files'])} figure files to {Path(r['files'][0]).parent}/")
    return 0
