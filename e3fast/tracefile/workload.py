"""Request classes, token-length distributions and arrival processes (pure NumPy).

Every sampler maps uniform draws ``u`` in [0, 1) to values by an inverse CDF, so one
uniform per row per column is consumed whatever the class: the stream of a column never
depends on how rows are split into blocks.

Classes (index = position in ``CLASSES``; ``CLASS_MODEL`` is the model each class uses):

* ``chat``: Azure 2023 *conversation* trace lengths (empirical quantiles), llama3.1-8b.
* ``longform``: chat-like prompts, long outputs: lognormal median 1,000 tokens, log-sd 0.5,
  clipped to 256..4,096 (essays, reports; an assumption, no public trace), llama3.1-8b.
* ``code``: Azure 2023 *coding* trace lengths (long prompts, short outputs), gptj-6b (the
  MLPerf GPT-J task is summarisation: long input, short output, the closest match). Token
  counts are not clipped to GPT-J's 2,048-token context: the service model is linear in
  tokens, so read gptj-6b as "a 6B-class model".
* ``image``: SDXL, ``in_tokens`` 0, ``out_tokens`` = denoising steps uniform in 20..50.

The Azure quantile tables are packaged in ``data/azure2023_lengths.json`` with provenance
(regenerate: ``python -m e3fast.tracefile.workload ../shared/data/azure_llm_2023``). In the
Azure data prompt and output lengths are nearly independent (normal-scores correlation
0.01 for conv, -0.01 for code), so they are drawn independently.
"""
import functools
import hashlib
import json
import sys
from importlib import resources
from pathlib import Path

import numpy as np
from scipy.special import ndtri

CLASSES = ("chat", "longform", "code", "image")
CLASS_MODEL = {"chat": "llama3.1-8b", "longform": "llama3.1-8b", "code": "gptj-6b",
               "image": "sdxl"}
#: request mix outside scenario events (fractions of requests; sums to 1).
BASELINE_MIX = {"chat": 0.50, "longform": 0.05, "code": 0.25, "image": 0.20}

LLM_IN_BOUNDS = (1, 16_384)    #: prompt tokens are clipped to this range
LLM_OUT_BOUNDS = (1, 4_096)    #: output tokens are clipped to this range
LONGFORM_OUT = {"median": 1000.0, "log_sd": 0.5, "lo": 256, "hi": 4096}
IMAGE_STEPS = (20, 50)         #: default SDXL denoising steps, inclusive
BURST_IMAGE_STEPS = (50, 50)   #: steps of image requests during a many-step image burst

LENGTHS_FILE = "azure2023_lengths.json"
N_QUANTILES = 1001


@functools.cache
def length_table() -> dict:
    """The packaged Azure 2023 length tables (quantiles + lognormal fit + provenance)."""
    text = resources.files("e3fast.tracefile").joinpath("data", LENGTHS_FILE).read_text("utf-8")
    return json.loads(text)


def _quantile(u, q, lo, hi):
    """Inverse empirical CDF: interpolate the quantile table ``q`` at ``u``; round; clip."""
    x = np.interp(u, np.linspace(0.0, 1.0, len(q)), q)
    return np.clip(np.rint(x), lo, hi).astype(np.int32)


def sample_in(klass: str, u: np.ndarray) -> np.ndarray:
    """Prompt tokens of ``klass`` requests from uniforms ``u`` (0 for image)."""
    if klass == "image":
        return np.zeros(u.shape, np.int32)
    src = "code" if klass == "code" else "conv"
    return _quantile(u, length_table()[src]["in"]["quantiles"], *LLM_IN_BOUNDS)


def sample_out(klass: str, u: np.ndarray, steps=IMAGE_STEPS) -> np.ndarray:
    """Output tokens (LLM) or denoising steps (image, uniform in ``steps``) from ``u``."""
    if klass == "image":
        lo, hi = steps
        return np.minimum(lo + np.floor(u * (hi - lo + 1)), hi).astype(np.int32)
    if klass == "longform":
        p = LONGFORM_OUT
        x = p["median"] * np.exp(p["log_sd"] * ndtri(np.clip(u, 1e-12, 1 - 1e-12)))
        return np.clip(np.rint(x), p["lo"], p["hi"]).astype(np.int32)
    src = "code" if klass == "code" else "conv"
    return _quantile(u, length_table()[src]["out"]["quantiles"], *LLM_OUT_BOUNDS)


@functools.cache
def class_means(klass: str, steps=IMAGE_STEPS) -> tuple:
    """(mean in_tokens, mean out_tokens) of a class, exactly as sampled (midpoint rule on u)."""
    u = (np.arange(1 << 16) + 0.5) / (1 << 16)
    return float(sample_in(klass, u).mean()), float(sample_out(klass, u, steps).mean())


# --------------------------------------------------------------------------- arrivals

class Arrivals:
    """Arrival times (seconds) of a Poisson or 2-state MMPP process, drawn block by block.

    Both are a unit-rate Poisson process (cumulative sums of standard exponentials) mapped
    through the inverse of the cumulative intensity Lambda(t), so the times depend only on
    the draws, never on the block sizes. Poisson: Lambda(t) = rate * t. MMPP ("bursty"):
    the intensity alternates between a low and a high state (high = ``burst_ratio`` x low),
    exponential sojourns, a fraction ``burst_frac`` of the time in the high state, starting
    in the low state; a high sojourn lasts ``burst_len`` high-state arrivals on average.
    The long-run mean rate is ``rate`` in both cases.
    """

    def __init__(self, rate: float, kind: str, rng_gaps, rng_states=None,
                 burst_ratio=5.0, burst_frac=0.2, burst_len=200.0):
        self.kind, self.rate, self._gaps, self._states = kind, float(rate), rng_gaps, rng_states
        self._e = 0.0  # cumulative unit-rate time of the last arrival
        if kind == "bursty":
            lo = rate / (burst_frac * burst_ratio + 1.0 - burst_frac)
            self._lam = np.array([lo, lo * burst_ratio])
            high_s = burst_len / self._lam[1]
            self._mean_s = np.array([high_s * (1.0 - burst_frac) / burst_frac, high_s])
            self._tau = np.zeros(1)    # sojourn start times (s)
            self._Lam = np.zeros(1)    # cumulative intensity at those times
            self._state = np.zeros(1, np.int8)

    def _extend(self, need: float) -> None:
        """Append sojourns (1,024 at a time, from their own stream) until Lambda passes need.

        The last stored sojourn's length is not known yet: a batch draws the lengths of
        that sojourn and the next 1,023, and stores the 1,024 start times they imply.
        """
        while self._Lam[-1] <= need:
            states = ((np.arange(1024) + int(self._state[-1])) % 2).astype(np.int8)
            lens = self._states.standard_exponential(1024) * self._mean_s[states]
            self._tau = np.concatenate((self._tau, self._tau[-1] + np.cumsum(lens)))
            self._Lam = np.concatenate((self._Lam, self._Lam[-1] + np.cumsum(lens * self._lam[states])))
            self._state = np.concatenate((self._state, 1 - states))

    def next(self, n: int) -> np.ndarray:
        """The next ``n`` arrival times (seconds, sorted)."""
        e = np.cumsum(np.concatenate(([self._e], self._gaps.standard_exponential(n))))[1:]
        self._e = float(e[-1]) if n else self._e
        if self.kind == "poisson":
            return e / self.rate
        self._extend(float(e[-1]) if n else 0.0)
        j = np.searchsorted(self._Lam, e, side="right") - 1
        t = self._tau[j] + (e - self._Lam[j]) / self._lam[self._state[j]]
        if n:  # forget sojourns before this block's last arrival (bounded memory)
            k = int(j[-1])
            self._tau, self._Lam, self._state = self._tau[k:], self._Lam[k:], self._state[k:]
        return t


# --------------------------------------------------------------------------- refit

def fit_lengths(folder) -> dict:
    """Fit the length tables from the Azure 2023 CSVs in ``folder`` (conv and code).

    Per file and column: N_QUANTILES empirical quantiles (linear interpolation, p = 0..1),
    a lognormal fit (mean and sd of log tokens) for reference, and summary statistics.
    """
    from .importers import read_csv
    out = {"source": {
        "dataset": "Azure LLM inference trace 2023 (Azure/AzurePublicDataset, "
                   "data/AzureLLMInferenceTrace_{conv,code}.csv)",
        "licence": "CC-BY 4.0",
        "citation": "Patel et al., Splitwise: Efficient generative LLM inference using phase "
                    "splitting, ISCA 2024",
        "method": f"{N_QUANTILES} empirical quantiles (numpy linear) per column; lognormal = "
                  "mean/sd of log(tokens)",
        "command": "python -m e3fast.tracefile.workload ../shared/data/azure_llm_2023"}}
    for src in ("conv", "code"):
        path = Path(folder) / f"AzureLLMInferenceTrace_{src}.csv"
        rows = read_csv(path, "azure")
        entry = {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                 "rows": rows.n}
        for col, v in (("in", rows.in_tokens), ("out", rows.out_tokens)):
            lv = np.log(v)
            entry[col] = {
                "quantiles": np.quantile(v, np.linspace(0, 1, N_QUANTILES)).round(3).tolist(),
                "lognormal": {"mu": round(float(lv.mean()), 6), "sigma": round(float(lv.std()), 6)},
                "mean": round(float(v.mean()), 3), "median": float(np.median(v)),
                "min": int(v.min()), "max": int(v.max())}
        out[src] = entry
    return out


if __name__ == "__main__":
    folder = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/azure_llm_2023"
    target = Path(__file__).parent / "data" / LENGTHS_FILE
    target.write_text(json.dumps(fit_lengths(folder), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {target}")
