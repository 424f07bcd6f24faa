"""`e3fast priors`: print the device-type x model prior table with its MLPerf provenance."""
import json
from dataclasses import dataclass, field
from typing import Optional

from ..errors import E3Error
from .table import NOTICE, load_priors


@dataclass
class PriorsOptions:
    """Options of `e3fast priors`."""
    json: bool = field(default=False, metadata={"help": "print one JSON object instead of a table"})
    model: Optional[str] = field(default=None, metadata={
        "help": "only this model (gptj-6b, llama3.1-8b, sdxl)"})


def _rows(model: str | None) -> list[dict]:
    """One dict per available (device type, model), numbers in seconds."""
    table = load_priors()
    if model is not None and model not in table.models:
        raise E3Error(f"unknown model {model!r}", where="--model",
                      fix=f"choose one of {', '.join(table.models)}")
    prov = {(p["device_type"], p["model"]): p for p in table.provenance}
    rows = []
    for t, dt in enumerate(table.device_types):
        for m, name in enumerate(table.models):
            if table.available[t, m] and model in (None, name):
                rows.append({"device_type": dt, "model": name,
                             "kind": "llm" if table.model_kind[m] == 0 else "diffusion",
                             "a_s": float(table.a[t, m]), "b_s": float(table.b[t, m]),
                             "c_s": float(table.c[t, m]), "sigma": float(table.sigma[t, m]),
                             **prov[dt, name]})
    return rows


def run_priors(options: PriorsOptions) -> int:
    """Print the prior table (aligned text, or JSON with --json); returns the exit code."""
    rows = _rows(options.model)
    table = load_priors()
    if options.json:
        print(json.dumps({"device_types": list(table.device_types),
                          "models": [m for m in table.models if options.model in (None, m)],
                          "units": "seconds; b per output token (LLM) or per step (diffusion); "
                                   "c per input token",
                          "rows": rows, "notice": NOTICE}, indent=1))
        return 0
    head = ("device type", "model", "a [ms]", "b [ms/tok|step]", "c [us/tok]", "sigma",
            "imputed", "source (round submitter)")
    body = [(r["device_type"], r["model"], f"{r['a_s'] * 1e3:.1f}", f"{r['b_s'] * 1e3:.2f}",
             f"{r['c_s'] * 1e6:.1f}", f"{r['sigma']:.4f}", "yes" if r["imputed"] else "no",
             f"{r['version']} {r['submitter']}" + (" (anchor)" if r["imputed"] else ""))
            for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    numeric = {2, 3, 4, 5}
    lines = ["  ".join(x.rjust(w) if i in numeric else x.ljust(w)
                       for i, (x, w) in enumerate(zip(line, widths))).rstrip()
             for line in (head, *body)]
    lines += ["", "mean service time = a + b*out + c*in (LLM: out = output tokens, a + c*in = "
              "TTFT; SDXL: out = denoising steps); method per row: e3fast priors --json", NOTICE]
    print("\n".join(lines))  # one write: `| head` does not break the pipe mid-table
    return 0
