"""The device-type x model service-time prior table, loaded from the packaged priors.csv.

Units: seconds. For (device type t, model m) the mean service time of a request is
``a[t, m] + b[t, m] * out + c[t, m] * in`` where, for an LLM, ``out`` is output tokens and
``in`` input tokens (``a + c*in`` is the prefill / TTFT, ``b`` the TPOT); for a diffusion
model ``out`` is denoising steps (``b`` = seconds per step, ``a`` = fixed overhead, c = 0).
The realised time multiplies this by ``exp(sigma*z - sigma**2/2)`` (mean-one lognormal).
How each number was derived from MLPerf is in the ``method`` column and docs/PRIORS.md.
"""
import csv
import functools
import io
import json
from dataclasses import dataclass
from importlib import resources

import numpy as np

from ..errors import E3Error

#: Models of every table, in this order (index m).
MODELS = ("gptj-6b", "llama3.1-8b", "sdxl")
#: model_kind codes.
KIND_LLM, KIND_DIFFUSION = 0, 1
MODEL_KIND = {"gptj-6b": KIND_LLM, "llama3.1-8b": KIND_LLM, "sdxl": KIND_DIFFUSION}
#: Licence and credit line, printed with the table and stored with it.
NOTICE = ("Derived from MLPerf(R) Inference results v3.1-v5.1 published by MLCommons under "
          "Apache-2.0; credit MLCommons and the submitters (NVIDIA, ConnectTechInc, Lenovo, Dell, "
          "Wiwynn, Qualcomm, CTuning, Intel). Not an official MLPerf result; see "
          "e3fast/priors/data/NOTICE.md.")
PROVENANCE_KEYS = ("device_type", "model", "imputed", "method", "version", "submitter",
                   "system", "source_path")


@dataclass(frozen=True, eq=False)
class PriorTable:
    """Service-time priors per device type (T) and model (M); arrays are read-only.

    a, b, c, sigma: float64 [T, M], seconds (c: s/input token; b: s/output token or s/step),
    0 where unavailable. available, imputed: bool [T, M]. model_kind: int8 [M] (0 LLM,
    1 diffusion). provenance: one dict per available pair (PROVENANCE_KEYS).
    """
    device_types: tuple[str, ...]
    models: tuple[str, ...]
    model_kind: np.ndarray
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    sigma: np.ndarray
    available: np.ndarray
    imputed: np.ndarray
    provenance: tuple[dict, ...]

    def type_index(self, device_type: str | int) -> int:
        """Row index of a device type (name or index)."""
        return _index(device_type, self.device_types, "device type")

    def model_index(self, model: str | int) -> int:
        """Column index of a model (name or index)."""
        return _index(model, self.models, "model")

    def mean_service_s(self, t: str | int, m: str | int, in_tokens: float, out_tokens: float) -> float:
        """Mean service time (s) of one request on device type `t` for model `m`:
        a + b*out_tokens + c*in_tokens (out_tokens = denoising steps for diffusion)."""
        ti, mi = self.type_index(t), self.model_index(m)
        if not self.available[ti, mi]:
            raise E3Error(f"model {self.models[mi]} is not available on {self.device_types[ti]}",
                          where="priors", fix="route it to a device type that hosts it")
        return float(self.a[ti, mi] + self.b[ti, mi] * out_tokens + self.c[ti, mi] * in_tokens)

    def to_json(self) -> dict:
        """The whole table as a JSON-able dict (inverse: `from_json`)."""
        return {"device_types": list(self.device_types), "models": list(self.models),
                "model_kind": self.model_kind.tolist(),
                **{k: getattr(self, k).tolist() for k in ("a", "b", "c", "sigma", "available", "imputed")},
                "provenance": [dict(p) for p in self.provenance], "notice": NOTICE,
                "units": "seconds; b per output token (LLM) or per denoising step (diffusion); c per input token"}

    @classmethod
    def from_json(cls, d: dict) -> "PriorTable":
        """Rebuild a table from `to_json()` output (e.g. as stored in a trace file)."""
        f8 = lambda k: _ro(np.asarray(d[k], np.float64))  # noqa: E731
        return cls(tuple(d["device_types"]), tuple(d["models"]),
                   _ro(np.asarray(d["model_kind"], np.int8)), f8("a"), f8("b"), f8("c"), f8("sigma"),
                   _ro(np.asarray(d["available"], bool)), _ro(np.asarray(d["imputed"], bool)),
                   tuple(dict(p) for p in d["provenance"]))

    def provenance_json(self) -> str:
        """Provenance as one JSON string: {"source", "notice", "rows": [one dict per pair]}."""
        return json.dumps({"source": "e3fast.priors (MLPerf Inference edge results)",
                           "notice": NOTICE, "rows": [dict(p) for p in self.provenance]})


def _index(key: str | int, names: tuple[str, ...], what: str) -> int:
    if isinstance(key, (int, np.integer)) and 0 <= key < len(names):
        return int(key)
    if key in names:
        return names.index(key)
    raise E3Error(f"unknown {what} {key!r}", where="priors", fix=f"use one of {', '.join(names)}")


def _ro(arr: np.ndarray) -> np.ndarray:
    arr.setflags(write=False)
    return arr


def table_from_csv(text: str) -> PriorTable:
    """Build a PriorTable from priors.csv text (derive.COLUMNS); pairs absent from the CSV
    are unavailable."""
    rows = list(csv.DictReader(io.StringIO(text)))
    types = tuple(dict.fromkeys(r["device_type"] for r in rows))
    shape = (len(types), len(MODELS))
    arrays = {k: np.zeros(shape) for k in ("a_s", "b_s", "c_s", "sigma")}
    available, imputed = np.zeros(shape, bool), np.zeros(shape, bool)
    for r in rows:
        t, m = types.index(r["device_type"]), _index(r["model"], MODELS, "model")
        for k, arr in arrays.items():
            arr[t, m] = float(r[k])
        available[t, m], imputed[t, m] = True, r["imputed"] == "1"
    provenance = tuple({k: (r[k] == "1" if k == "imputed" else r[k]) for k in PROVENANCE_KEYS}
                       for r in rows)
    return PriorTable(types, MODELS, _ro(np.array([MODEL_KIND[m] for m in MODELS], np.int8)),
                      *(_ro(arrays[k]) for k in ("a_s", "b_s", "c_s", "sigma")),
                      _ro(available), _ro(imputed), provenance)


@functools.cache
def load_priors() -> PriorTable:
    """The packaged table (e3fast/priors/data/priors.csv), read once and cached."""
    text = resources.files("e3fast.priors").joinpath("data", "priors.csv").read_text(encoding="utf-8")
    return table_from_csv(text)
