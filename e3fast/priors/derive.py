"""Derive the packaged service-time priors (``data/priors.csv``) from the raw MLPerf rows.

Regenerate with ``python -m e3fast.priors.derive`` (add ``--docs docs/PRIORS.md`` to refresh
the generated table in the docs). The raw inputs are verbatim copies of
``../shared/mlperf/edge_priors.csv`` and ``benchmarks.csv`` in ``data/``.

Service model (docs/PRIORS.md "The model"), all times in seconds::

    S = (a + b*out + c*in) * exp(sigma*z - sigma**2/2),   z ~ N(0, 1)

LLM: ``a + c*in`` is the prefill (TTFT) and ``b`` the time per output token (TPOT);
SDXL: ``b`` is seconds per denoising step, ``a`` the fixed overhead, ``c = 0``.
Every modelling assumption is a named constant below and is repeated in the ``method``
column of each row; docs/PRIORS.md explains the choices.
"""
import argparse
import csv
import io
import math
import re
import statistics
import sys
from importlib import resources
from pathlib import Path

from ..atomic import write_text_atomic

#: Model names of the table, in table order, with their kind.
MODELS = ("gptj-6b", "llama3.1-8b", "sdxl")
KIND = {"gptj-6b": "llm", "llama3.1-8b": "llm", "sdxl": "diffusion"}
#: MLPerf benchmark folder -> model.
BENCHMARK_MODEL = {"gptj-99": "gptj-6b", "gptj-99.9": "gptj-6b",
                   "llama3.1-8b-edge": "llama3.1-8b", "stable-diffusion-xl": "sdxl"}
#: accelerator_model_name -> device type slug, in table order (the CPU-only row is not a device).
DEVICE_SLUG = {
    "NVIDIA Jetson AGX Orin 64G": "jetson-agx-orin-64g",
    "NVIDIA Jetson AGX Thor 128G": "jetson-agx-thor",
    "NVIDIA RTX-2000E-Ada-16GB": "rtx-2000e-ada",
    "NVIDIA L4": "nvidia-l4",
    "NVIDIA GeForce RTX 4090": "rtx-4090",
    "NVIDIA L40S": "l40s",
    "[MAXSUN] MS-Intel Arc Pro B60 Dual 48G Turbo": "arc-pro-b60",
    "QUALCOMM Cloud AI 100 Pro": "cloud-ai-100-pro",
}

# ---- assumptions (each one is stated in the method column and in docs/PRIORS.md) ----
#: Mean prompt length (tokens) of the CNN-DailyMail summarisation prompts of both LLM
#: benchmarks. ASSUMED: benchmarks.csv has no input-length fact; CNN/DM articles average
#: ~781 word tokens (See et al. 2017), plus the instruction template.
IN_MEAN_TOKENS = 800.0
#: Shortest prompt (tokens) of the llama3.1-8b-edge 5000-sample subset. ASSUMED.
IN_MIN_TOKENS = 150.0
#: Share of the SDXL query spent outside the 20 UNet steps (2 text encoders + VAE decode
#: at 1024x1024). ASSUMED: MLPerf only runs 20 steps, so this cannot be fitted.
SDXL_OVERHEAD_SHARE = 0.10
#: Lower bound on sigma: MLPerf SingleStream runs on an idle, tuned box (SDXL p90/p50 is
#: ~1.0005); a real edge device has at least ~1% run-to-run jitter. ASSUMED.
SIGMA_FLOOR = 0.01
#: Parameter counts (model cards: EleutherAI GPT-J 6,053,381,344; Meta Llama-3.1-8B
#: 8,030,261,248). Decode streams all weights once per step and prefill costs 2*params
#: FLOPs per token, so on one device llama3.1-8b per-token times are GPT-J's x this ratio.
PARAMS = {"gptj-6b": 6.053381344e9, "llama3.1-8b": 8.030261248e9}
KAPPA = PARAMS["llama3.1-8b"] / PARAMS["gptj-6b"]
#: Standard-normal 90th percentile: sigma = ln(p90 / p50) / Z90 for a lognormal.
Z90 = 1.2815515655446004

COLUMNS = ("device_type", "model", "kind", "a_s", "b_s", "c_s", "sigma", "imputed",
           "mlperf_mean_s", "method", "version", "submitter", "system", "accelerator",
           "division", "source_path")


def _read_data(name: str) -> str:
    return resources.files("e3fast.priors").joinpath("data", name).read_text(encoding="utf-8")


def _seconds(value: str, unit: str) -> float:
    """A raw value in seconds for time units (ns, ms); unchanged otherwise."""
    return float(value) * {"ns": 1e-9, "ms": 1e-3}.get(unit, 1.0)


def _results(raw_rows: list[dict]) -> dict:
    """Group metric rows into results keyed (version, submitter, system, benchmark, scenario)."""
    out = {}
    for r in raw_rows:
        key = (r["version"], r["submitter"], r["system"], r["benchmark"], r["scenario"])
        division = re.search(r"division=(\w+)", r["extra"])
        res = out.setdefault(key, {
            "version": r["version"], "submitter": r["submitter"], "system": r["system"],
            "accelerator": r["accelerator"], "n_acc": int(r["accelerator_count"]),
            "benchmark": r["benchmark"], "scenario": r["scenario"],
            "division": division.group(1) if division else "", "m": {}, "paths": {}})
        res["m"][r["metric"]] = _seconds(r["value"], r["unit"])
        res["paths"][r["metric"]] = r["source_path"]
    return out


def _pick(results: dict, model: str, device: str) -> dict | None:
    """The SingleStream result used for (device, model): latest round (software matters),
    then fewest accelerators, then lowest mean latency (the best-tuned stack)."""
    need = {"mean_latency", "p50_latency", "p90_latency"}
    cands = [r for r in results.values() if r["scenario"] == "SingleStream"
             and BENCHMARK_MODEL.get(r["benchmark"]) == model
             and DEVICE_SLUG.get(r["accelerator"]) == device and need <= r["m"].keys()]
    if not cands:
        return None
    def order(r):  # newest round first: "v5.1" -> (-5, -1)
        return (tuple(-int(x) for x in r["version"].lstrip("v").split(".")), r["n_acc"],
                r["m"]["mean_latency"])
    return min(cands, key=order)


def _per_accelerator(results: dict, res: dict) -> tuple[float, str]:
    """Factor (>= 1) that turns a SingleStream latency of a multi-accelerator box into one
    accelerator's service time, and the reason. If the box's Offline throughput per
    accelerator is lower than 1/SS-mean, one SS query must have used several accelerators:
    scale up to the per-accelerator Offline time (a lower bound for one accelerator)."""
    n = res["n_acc"]
    if n <= 1:
        return 1.0, ""
    key = (res["version"], res["submitter"], res["system"], res["benchmark"], "Offline")
    sps = results.get(key, {}).get("m", {}).get("samples_per_second")
    mean = res["m"]["mean_latency"]
    if sps is None:
        return 1.0, f"{n}-accelerator box, no Offline row to check: SS latency kept as one accelerator's"
    t_acc = n / sps
    if t_acc <= mean:
        return 1.0, (f"{n}-accelerator box: per-accelerator Offline time {t_acc:.3f} s <= SS mean "
                     f"{mean:.3f} s, so one query runs on one accelerator; SS latency kept")
    return t_acc / mean, (f"{n}-accelerator box: per-accelerator Offline time {t_acc:.3f} s > SS "
                          f"mean {mean:.3f} s, so one SS query spans accelerators; latencies "
                          f"scaled x{t_acc / mean:.3f} to one accelerator")


def _sigma(p50: float, p90: float) -> tuple[float, float]:
    """(sigma used, raw lognormal fit ln(p90/p50)/z90), floored at SIGMA_FLOOR."""
    raw = math.log(p90 / p50) / Z90
    return max(raw, SIGMA_FLOOR), raw


def _sig_text(raw: float) -> str:
    return f"{raw:.4f}" + (f", floored to {SIGMA_FLOOR}" if raw < SIGMA_FLOOR else "")


def _llm_from_tpot(tpot: float, ttft: float, phi: float) -> tuple[float, float, float]:
    """(a, b, c) from TPOT and mean TTFT, with a share `phi` of the TTFT fixed."""
    return phi * ttft, tpot, (1 - phi) * ttft / IN_MEAN_TOKENS


def derive_rows(raw_csv: str | None = None, facts_csv: str | None = None) -> list[dict]:
    """Build the derived table (one dict per available (device type, model), COLUMNS keys,
    floats in seconds) from the raw MLPerf CSV texts (default: the packaged copies)."""
    raw = list(csv.DictReader(io.StringIO(raw_csv or _read_data("edge_priors.csv"))))
    facts = {(f["benchmark"], f["fact"]): f["value"]
             for f in csv.DictReader(io.StringIO(facts_csv or _read_data("benchmarks.csv")))}
    n_gptj = float(facts["gptj-99 / gptj-99.9", "token_latency_scaling_factor"])  # 69
    n_gptj_max = float(facts["gptj-99 / gptj-99.9", "max_new_tokens"])  # 128
    steps = float(facts["stable-diffusion-xl", "denoising_steps"])  # 20
    results = _results(raw)
    devices = [d for d in DEVICE_SLUG.values() if any(_pick(results, m, d) for m in MODELS)]
    cells = {}  # (device, model) -> row dict

    def row(d, m, src, a, b, c, sigma, method, mean=None, imputed=False):
        """Store a cell; `src` is a raw result or, for imputed cells, the anchor cell."""
        cells[d, m] = {
            "device_type": d, "model": m, "kind": KIND[m], "a_s": a, "b_s": b, "c_s": c,
            "sigma": sigma, "imputed": int(imputed), "mlperf_mean_s": mean, "method": method,
            **{k: src[k] for k in ("version", "submitter", "system", "accelerator", "division")},
            "source_path": src.get("source_path") or src["paths"]["mean_latency"]}

    # 1. llama3.1-8b-edge: TTFT and TPOT are measured.
    for d in devices:
        res = _pick(results, "llama3.1-8b", d)
        if res:
            m = res["m"]
            c = max(m["ttft_mean"] - m["ttft_min"], 0.0) / (IN_MEAN_TOKENS - IN_MIN_TOKENS)
            sigma, rawsig = _sigma(m["tpot_p50"], m["tpot_p90"])
            row(d, "llama3.1-8b", res, m["ttft_mean"] - c * IN_MEAN_TOKENS, m["tpot_mean"], c,
                sigma, f"measured: b = TPOT mean {m['tpot_mean'] * 1e3:.3f} ms; a + c*in fitted "
                f"through TTFT mean {m['ttft_mean'] * 1e3:.1f} ms at {IN_MEAN_TOKENS:.0f} tokens "
                f"and TTFT min {m['ttft_min'] * 1e3:.1f} ms at {IN_MIN_TOKENS:.0f} tokens (assumed "
                f"prompt lengths); sigma = ln(TPOT p90/p50)/z90 = {_sig_text(rawsig)}",
                mean=m["mean_latency"])
    llama = [cells[k] for k in cells if k[1] == "llama3.1-8b"]
    ref = [r for r in llama if r["division"] == "closed"] or llama
    ttfts = [r["a_s"] + r["c_s"] * IN_MEAN_TOKENS for r in ref]
    rho = statistics.geometric_mean([t / r["b_s"] for t, r in zip(ttfts, ref)])  # TTFT / TPOT
    phi = statistics.fmean([r["a_s"] / t for t, r in zip(ttfts, ref)])  # fixed share of TTFT
    ref_names = ", ".join(r["device_type"] for r in ref)
    sigma_llm = statistics.median(r["sigma"] for r in llama)

    # 2. GPT-J: whole-query latency only; split with n_out = 69 and TTFT = rho * TPOT.
    for d in devices:
        res = _pick(results, "gptj-6b", d)
        if res:
            scale, why = _per_accelerator(results, res)
            mean, mx = res["m"]["mean_latency"] * scale, res["m"]["max_latency"] * scale
            tpot = mean / (rho + n_gptj - 1)
            full = (rho + n_gptj_max - 1) * tpot
            row(d, "gptj-6b", res, *_llm_from_tpot(tpot, rho * tpot, phi), sigma_llm,
                f"split: SS mean {mean:.3f} s = TTFT + ({n_gptj:.0f}-1)*TPOT ({n_gptj:.0f} = LoadGen "
                f"GPT-J tokens/sample constant; beam 4, b per returned token), TTFT = {rho:.2f}*TPOT "
                f"and a = {phi:.2f}*TTFT (closed llama3.1-8b-edge: {ref_names}); check: implied "
                f"{n_gptj_max:.0f}-token latency {full:.3f} s vs measured max {mx:.3f} s "
                f"({(full / mx - 1) * 100:+.0f}%); sigma = median llama TPOT sigma (GPT-J spread "
                "is output-length variation)" + (f"; {why}" if why else ""), mean=mean)

    # 3. SDXL: 20 steps, a fixed overhead share.
    for d in devices:
        res = _pick(results, "sdxl", d)
        if res:
            scale, why = _per_accelerator(results, res)
            mean = res["m"]["mean_latency"] * scale
            sigma, rawsig = _sigma(res["m"]["p50_latency"], res["m"]["p90_latency"])
            row(d, "sdxl", res, SDXL_OVERHEAD_SHARE * mean,
                (1 - SDXL_OVERHEAD_SHARE) * mean / steps, 0.0, sigma,
                f"split: SS mean {mean:.3f} s = a + {steps:.0f} steps * b with a = "
                f"{SDXL_OVERHEAD_SHARE:.0%} (text encoders + VAE, assumed); sigma = "
                f"ln(p90/p50)/z90 = {_sig_text(rawsig)}" + (f"; {why}" if why else ""), mean=mean)
    sigma_sdxl = statistics.median(r["sigma"] for k, r in cells.items() if k[1] == "sdxl")

    # 4. Imputation. x[d]: GPT-J-equivalent TPOT; y[d]: SDXL mean latency.
    measured = dict(cells)
    x = {d: r["b_s"] / (KAPPA if m == "llama3.1-8b" else 1.0) for (d, m), r in measured.items()
         if m == "gptj-6b" or (m == "llama3.1-8b" and (d, "gptj-6b") not in measured)}
    y = {d: r["mlperf_mean_s"] for (d, m), r in measured.items() if m == "sdxl"}
    both = sorted(set(x) & set(y), key=devices.index)
    ratio = statistics.geometric_mean([y[d] / x[d] for d in both])
    pool = f"R = {ratio:.1f} = geomean of SDXL mean / GPT-J TPOT over {', '.join(both)}"
    for d in devices:
        for m in MODELS:
            if (d, m) in measured:
                continue
            other = "llama3.1-8b" if m == "gptj-6b" else "gptj-6b"
            if KIND[m] == "llm" and (d, other) in measured:  # same device, other LLM
                src = measured[d, other]
                k = KAPPA if m == "llama3.1-8b" else 1 / KAPPA
                row(d, m, src, src["a_s"] * k, src["b_s"] * k, src["c_s"] * k, src["sigma"],
                    f"imputed: {other} a, b, c on this device x {k:.4f} (parameter ratio "
                    f"{PARAMS[m] / 1e9:.2f}B/{PARAMS[other] / 1e9:.2f}B: per-token cost scales with "
                    f"weights); sigma copied", imputed=True)
            elif KIND[m] == "llm" and d in y:  # from this device's SDXL speed
                src = measured[d, "sdxl"]
                tpot = y[d] / ratio * (KAPPA if m == "llama3.1-8b" else 1.0)
                k_txt = f" x {KAPPA:.4f} (parameter ratio)" if m == "llama3.1-8b" else ""
                row(d, m, src, *_llm_from_tpot(tpot, rho * tpot, phi), sigma_llm,
                    f"imputed: GPT-J TPOT = SDXL mean {y[d]:.3f} s / R{k_txt}; {pool}; TTFT = "
                    f"{rho:.2f}*TPOT, a = {phi:.2f}*TTFT as for GPT-J; sigma = median llama TPOT "
                    "sigma", imputed=True)
            elif m == "sdxl" and d in x:  # from this device's LLM speed
                src = measured.get((d, "gptj-6b")) or measured[d, "llama3.1-8b"]
                mean = x[d] * ratio
                row(d, m, src, SDXL_OVERHEAD_SHARE * mean, (1 - SDXL_OVERHEAD_SHARE) * mean / steps,
                    0.0, sigma_sdxl,
                    f"imputed: SDXL mean = GPT-J-equivalent TPOT {x[d] * 1e3:.2f} ms x R = "
                    f"{mean:.3f} s; {pool}; split as measured SDXL; sigma = median measured SDXL "
                    "sigma", imputed=True)
    return [cells[d, m] for d in devices for m in MODELS if (d, m) in cells]


def _fmt(v) -> str:
    if v is None:
        return ""
    return f"{v:.10g}" if isinstance(v, float) else str(v)


def to_csv(rows: list[dict]) -> str:
    """The rows as CSV text (floats with 10 significant digits, seconds)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([_fmt(r[k]) for k in COLUMNS])
    return buf.getvalue()


def to_markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table (ms and us for readability), for docs/PRIORS.md."""
    head = ("| device type | model | a (ms) | b (ms/token or /step) | c (us/token) | sigma | "
            "imputed | source (round, submitter, division) |\n|---|---|---:|---:|---:|---:|---|---|\n")
    return head + "".join(
        f"| {r['device_type']} | {r['model']} | {r['a_s'] * 1e3:.1f} | {r['b_s'] * 1e3:.2f} | "
        f"{r['c_s'] * 1e6:.1f} | {r['sigma']:.4f} | {'yes' if r['imputed'] else 'no'} | "
        f"{r['version']} {r['submitter']} ({r['division']}){' [anchor]' if r['imputed'] else ''} |\n"
        for r in rows)


BEGIN, END = "<!-- priors-table:begin -->", "<!-- priors-table:end -->"


def update_docs(path: Path, rows: list[dict]) -> None:
    """Replace the generated table between the BEGIN/END markers of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    i, j = text.index(BEGIN) + len(BEGIN), text.index(END)
    write_text_atomic(path, text[:i] + "\n" + to_markdown(rows) + text[j:])


def main(argv: list[str] | None = None) -> int:
    """Write data/priors.csv next to this module (and optionally refresh a docs table)."""
    p = argparse.ArgumentParser(prog="python -m e3fast.priors.derive", description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=Path, help="Markdown file whose generated table to refresh")
    args = p.parse_args(argv)
    rows = derive_rows()
    out = Path(__file__).with_name("data") / "priors.csv"
    write_text_atomic(out, to_csv(rows))
    print(f"wrote {out} ({len(rows)} rows)")
    if args.docs:
        update_docs(args.docs, rows)
        print(f"refreshed the table in {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
