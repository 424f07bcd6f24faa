"""Trace file format v2: names, dtypes and the in-memory environment.

A trace is one HDF5 file:

* ``/requests/<field>``: one 1-D chunked column per field of ``REQUEST_FIELDS``, all the
  same length, sorted by ``arrival_s``. ``out_tokens`` holds output tokens for an LLM and
  denoising steps for a diffusion model.
* ``/env/...``: the environment (see ``Env``): models, device types, the priors table
  used, the fleet with join/leave times, drift knots, semantic slowdown windows and failure
  windows (new in v2; a v1 trace reads as one without failures).
* ``/prefix/...`` (optional): the prompt's prefix blocks of each request, ragged (CSR):
  ``PREFIX_FIELDS``; replays ignore it, ``inspect`` reports its reuse.
* root attributes ``ROOT_ATTRS``.

Units: seconds for times, tokens (or steps) for counts.
"""
from dataclasses import dataclass, field

import numpy as np

SCHEMA_VERSION = 2
GENERATOR = "e3fast"

#: /requests columns: name -> numpy dtype (exact; the validator rejects others).
REQUEST_FIELDS = {
    "arrival_s": np.dtype("f8"),   # arrival time, seconds from trace start, non-decreasing
    "model": np.dtype("i2"),       # index into /env/models
    "in_tokens": np.dtype("i4"),   # prompt tokens (0 for diffusion)
    "out_tokens": np.dtype("i4"),  # output tokens (LLM) or denoising steps (diffusion), >= 1
    "klass": np.dtype("i2"),       # semantic class, index into /env/classes
    "z": np.dtype("f8"),           # standard-normal common random number of the service time
}

#: /prefix (optional group): the ids of each request's prompt blocks, ragged. The blocks of
#: request i are ``block_ids[offsets[i]:offsets[i+1]]``; ``offsets`` has n_requests + 1
#: entries from 0 to len(block_ids). Request i has ceil(in_tokens[i] / block_tokens)
#: blocks (the last one may be partial); equal ids mean equal prefixes up to that block.
PREFIX_GROUP = "prefix"
PREFIX_FIELDS = {
    "offsets": np.dtype("i8"),    # [n_requests + 1] CSR pointers into block_ids, from 0
    "block_ids": np.dtype("i8"),  # [sum of blocks] block ids, >= 0
}
#: attribute of /prefix: tokens per block (Mooncake: 512)
PREFIX_BLOCK_ATTR = "block_tokens"

#: root attributes every trace carries.
ROOT_ATTRS = ("schema_version", "generator", "generator_version", "scenario", "seed",
              "n_requests", "duration_s", "units", "params_json")

MODEL_KIND_LLM = 0
MODEL_KIND_DIFFUSION = 1

#: bounds used by the validator (tokens / steps per request; MAX_TOKENS rejects absurd input).
#: An LLM row also needs >= 1 prompt token: 0 is for diffusion rows.
MIN_IN_TOKENS, MIN_OUT_TOKENS, MAX_TOKENS = 0, 1, 1_000_000
#: rows per HDF5 chunk the writer makes (0.5-2 MiB per column; reads bypass HDF5's chunk
#: cache, so chunks may exceed its 1 MiB)
DEFAULT_CHUNK_ROWS = 262_144
#: rows per block a replay streams: one chunk, so that every block is a view of the file
#: (see tracefile.rows; a block across chunk boundaries goes through H5Dread)
DEFAULT_BLOCK_ROWS = DEFAULT_CHUNK_ROWS


@dataclass
class Env:
    """The simulated world of a trace, as plain arrays (what the kernel consumes).

    Shapes: T device types, M models, D devices, K drift knots, W semantic windows,
    C semantic classes. Times in seconds; ``inf`` in ``leave_s`` means never leaves.
    """
    models: list            # [M] model names, e.g. "llama3.1-8b"
    model_kind: np.ndarray  # [M] int8, MODEL_KIND_*
    classes: list           # [C] semantic class names
    device_types: list      # [T] device type names
    prior_a: np.ndarray     # [T, M] f8 seconds: fixed part (LLM: prefill overhead; SDXL: overhead)
    prior_b: np.ndarray     # [T, M] f8 seconds per output token (TPOT) or per denoising step
    prior_c: np.ndarray     # [T, M] f8 seconds per input token (prefill slope)
    prior_sigma: np.ndarray  # [T, M] f8 lognormal shape of the service-time noise
    prior_available: np.ndarray  # [T, M] bool: the type can host the model
    device_type: np.ndarray  # [D] int32 index into device_types
    hosts: np.ndarray       # [D, M] bool: device d hosts model m
    join_s: np.ndarray      # [D] f8 time the device comes online (0 = from the start)
    leave_s: np.ndarray     # [D] f8 time the device goes offline (inf = never)
    drift_ptr: np.ndarray   # [D+1] int64 CSR pointers into the knot arrays
    drift_t_s: np.ndarray   # [K] f8 knot times, sorted within a device
    drift_mult: np.ndarray  # [K] f8 slowdown multiplier at the knot (piecewise linear between
                            #     knots, constant before the first and after the last; 1 if none)
    sem_device_type: np.ndarray  # [W] int32 device type the window applies to
    sem_klass: np.ndarray   # [W] int16 semantic class it applies to
    sem_t0_s: np.ndarray    # [W] f8 window start (inclusive)
    sem_t1_s: np.ndarray    # [W] f8 window end (exclusive)
    sem_factor: np.ndarray  # [W] f8 service-time multiplier inside the window
    prior_provenance: str = ""  # JSON text: where the priors came from (per type x model)
    extra: dict = field(default_factory=dict)  # free-form scenario metadata (JSON-able)
    # failure windows of device d: [fail_t0_s[i], fail_t1_s[i]) for i in fail_ptr[d]:fail_ptr[d+1],
    # sorted and disjoint; the device makes no progress inside one (None: no failures)
    fail_ptr: np.ndarray = None   # [D+1] int64 CSR pointers into the window arrays
    fail_t0_s: np.ndarray = None  # [F] f8 failure start (inclusive)
    fail_t1_s: np.ndarray = None  # [F] f8 recovery (exclusive), finite
    # [T, M] bool: the routers have a prior for the pair (a subset of prior_available; None:
    # all). prior_a/b/c/sigma are the TRUE parameters; for an unknown pair the routers see
    # `router_priors` instead (the mean of the model's known pairs)
    prior_known: np.ndarray = None

    def __post_init__(self):
        if self.prior_known is None:
            self.prior_known = np.array(self.prior_available, bool)
        if self.fail_ptr is None:
            self.fail_ptr = np.zeros(len(self.device_type) + 1, np.int64)
            self.fail_t0_s = np.zeros(0)
            self.fail_t1_s = np.zeros(0)

    @property
    def n_devices(self) -> int:
        return int(self.device_type.shape[0])

    @property
    def n_models(self) -> int:
        return len(self.models)


# --- additions (layout of /env, units text); existing names above are unchanged ---------

#: value of the root attribute ``units``.
UNITS = ("time: seconds; tokens: tokens; "
         "out_tokens: output tokens (LLM) or denoising steps (diffusion)")

#: /env string datasets (UTF-8, variable length): path under /env -> Env attribute.
ENV_STRINGS = {"models": "models", "classes": "classes", "device_types": "device_types"}

#: /env numeric datasets: path under /env -> (Env attribute, dtype, shape in size symbols).
#: Sizes: M models, C classes, T device types, D devices (len of devices/type),
#: K drift knots (len of drift/t_s), W semantic windows (len of semantic/device_type),
#: F failure windows (len of failure/t0_s).
ENV_ARRAYS = {
    "model_kind": ("model_kind", np.dtype("i1"), ("M",)),
    "priors/a": ("prior_a", np.dtype("f8"), ("T", "M")),
    "priors/b": ("prior_b", np.dtype("f8"), ("T", "M")),
    "priors/c": ("prior_c", np.dtype("f8"), ("T", "M")),
    "priors/sigma": ("prior_sigma", np.dtype("f8"), ("T", "M")),
    "priors/available": ("prior_available", np.dtype(bool), ("T", "M")),
    "devices/type": ("device_type", np.dtype("i4"), ("D",)),
    "devices/hosts": ("hosts", np.dtype(bool), ("D", "M")),
    "devices/join_s": ("join_s", np.dtype("f8"), ("D",)),
    "devices/leave_s": ("leave_s", np.dtype("f8"), ("D",)),
    "drift/ptr": ("drift_ptr", np.dtype("i8"), ("D+1",)),
    "drift/t_s": ("drift_t_s", np.dtype("f8"), ("K",)),
    "drift/mult": ("drift_mult", np.dtype("f8"), ("K",)),
    "semantic/device_type": ("sem_device_type", np.dtype("i4"), ("W",)),
    "semantic/klass": ("sem_klass", np.dtype("i2"), ("W",)),
    "semantic/t0_s": ("sem_t0_s", np.dtype("f8"), ("W",)),
    "semantic/t1_s": ("sem_t1_s", np.dtype("f8"), ("W",)),
    "semantic/factor": ("sem_factor", np.dtype("f8"), ("W",)),
    "priors/known": ("prior_known", np.dtype(bool), ("T", "M")),
    "failure/ptr": ("fail_ptr", np.dtype("i8"), ("D+1",)),
    "failure/t0_s": ("fail_t0_s", np.dtype("f8"), ("F",)),
    "failure/t1_s": ("fail_t1_s", np.dtype("f8"), ("F",)),
}

#: /env datasets added after v1 -> the schema version that added them. A trace of an older
#: version lacks them and reads with the Env defaults (no failure windows).
ENV_SINCE = {"priors/known": 2, "failure/ptr": 2, "failure/t0_s": 2, "failure/t1_s": 2}


def router_priors(env: Env):
    """(a, b, c, sigma) [T, M] the routers take as priors: the true parameters where
    ``prior_known``, elsewhere (a type with no prior) the mean over the known types of the
    model (NaN where the type cannot host the model). SECT keeps this guess; E3's estimators
    start from it and learn."""
    known = np.asarray(env.prior_known, bool)
    tables = (env.prior_a, env.prior_b, env.prior_c, env.prior_sigma)
    if np.array_equal(known, np.asarray(env.prior_available, bool)):
        return tuple(np.asarray(x, np.float64) for x in tables)
    out = []
    for x in tables:
        x = np.array(x, np.float64)
        mean = np.array([x[known[:, m], m].mean() if known[:, m].any() else np.nan
                         for m in range(x.shape[1])])
        out.append(np.where(known, x, np.where(np.asarray(env.prior_available, bool), mean, np.nan)))
    return tuple(out)
