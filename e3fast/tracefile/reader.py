"""Trace reader and validator (format v2, reads v1; see docs/TRACE_FORMAT.md).

`open_trace(path)` checks the cheap things on open (root attributes, /env, dataset names,
shapes and dtypes) and every block as it streams (finite values, sorted arrivals across
block boundaries, token ranges, model and class ids). `validate_trace(path)` streams the
whole file. Every problem is one `E3Error` naming the file, the dataset and the row.
"""
import json
import weakref
from pathlib import Path
from typing import Iterator, NamedTuple

import h5py
import numpy as np
from numba import njit

from .. import __version__
from ..errors import E3Error
from .rows import HDF5Rows, MappedRows, is_native, memory_type
from .schema import (DEFAULT_CHUNK_ROWS, ENV_ARRAYS, ENV_SINCE, ENV_STRINGS, MAX_TOKENS, MIN_IN_TOKENS, MIN_OUT_TOKENS,
                     MODEL_KIND_DIFFUSION, MODEL_KIND_LLM, PREFIX_BLOCK_ATTR, PREFIX_FIELDS, PREFIX_GROUP,
                     REQUEST_FIELDS, ROOT_ATTRS, SCHEMA_VERSION, Env)


class Block(NamedTuple):
    """Rows ``start .. start+len-1`` of /requests. Arrays are views of the file or of
    buffers the reader reuses: valid until the next block (copy what you keep)."""
    start: int
    arrival_s: np.ndarray   # f8 seconds
    model: np.ndarray       # i2 index into env.models
    in_tokens: np.ndarray   # i4 prompt tokens (0 allowed for diffusion)
    out_tokens: np.ndarray  # i4 output tokens (LLM) or denoising steps (diffusion)
    klass: np.ndarray       # i2 index into env.classes
    z: np.ndarray           # f8 standard-normal common random number


def _same_type(did: h5py.h5d.DatasetID, want: np.dtype) -> bool:
    """The dataset's type has the kind and size of `want` (byte order may differ: HDF5
    converts on read). The native type is tried first (``rows.is_native``: the common case,
    and cheaper than building ``did.dtype``; a trace has ~25 datasets)."""
    if is_native(did, want):
        return True
    found = did.dtype
    return found.kind == want.kind and found.itemsize == want.itemsize


def _bad(fname, dataset, what, fix):
    return E3Error(what, where=f"{fname} {dataset}", fix=fix)


def _dataset(group: h5py.Group, path: str, fname) -> h5py.h5d.DatasetID:
    """The dataset `path` of `group` as h5py's low-level object (its high-level `Dataset`
    costs ~0.05 ms more to open and ~0.1 ms more for a first read, per dataset)."""
    try:
        return h5py.h5d.open(group.id, path.encode())
    except KeyError:
        pass
    raise _bad(fname, f"{group.name}/{path}", "missing dataset" if path not in group else "not a dataset",
               "this is not a complete e3fast trace; regenerate it")


_STRING = h5py.string_dtype()                  # variable-length UTF-8, read as str objects
_STRING_MTYPE = h5py.h5t.py_create(_STRING)


def _python_value(v):
    return v.decode() if isinstance(v, bytes) else v.item() if isinstance(v, np.generic) else v


def _attributes(obj, names=None) -> dict:
    """Attributes `names` (default: all) of the h5py object `obj` that it has, as Python
    values. Scalar numbers and variable-length strings are read through h5py's low-level
    calls (~50 us each here, against ~80 us through ``obj.attrs``), anything else through
    ``obj.attrs``."""
    out = {}
    for name in list(obj.attrs) if names is None else names:
        key = name.encode()
        if names is not None and not h5py.h5a.exists(obj.id, key):
            continue
        aid = h5py.h5a.open(obj.id, key)
        htype = aid.get_type()
        kind = htype.get_class()
        scalar = aid.get_space().get_simple_extent_type() == h5py.h5s.SCALAR
        if scalar and kind in (h5py.h5t.INTEGER, h5py.h5t.FLOAT):
            value = np.empty((), htype.dtype)
            aid.read(value, mtype=memory_type(value.dtype))
            value = value[()]
        elif scalar and kind == h5py.h5t.STRING and htype.is_variable_str():
            value = np.empty((), _STRING)
            aid.read(value, mtype=_STRING_MTYPE)
            value = value[()]
        else:
            value = obj.attrs[name]
        out[name] = _python_value(value)
    return out


# --- environment -------------------------------------------------------------------------

def check_env(env: Env, fname="<env>") -> None:
    """Check shapes, dtypes and consistency of an `Env`; raise `E3Error` on the first problem.

    Priors must be finite and >= 0 where ``prior_available`` (NaN allowed elsewhere);
    every device hosts >= 1 model its type can host; join <= leave (leave may be inf);
    drift CSR pointers monotone and knots sorted per device; windows with t0 < t1.
    """
    M, C, T, D = len(env.models), len(env.classes), len(env.device_types), len(env.device_type)
    for ds, n, what in (("models", M, "model"), ("classes", C, "semantic class"),
                        ("device_types", T, "device type"), ("devices/type", D, "device")):
        if n == 0:
            raise _bad(fname, f"/env/{ds}", f"no {what} defined", f"the environment needs at least one {what}")
    sizes = {"M": M, "C": C, "T": T, "D": D, "D+1": D + 1,
             "K": len(env.drift_t_s), "W": len(env.sem_device_type), "F": len(env.fail_t0_s)}
    for ds, (attr, dtype, dims) in ENV_ARRAYS.items():
        arr, shape = getattr(env, attr), tuple(sizes[s] for s in dims)
        if not isinstance(arr, np.ndarray) or arr.shape != shape or arr.dtype != dtype:
            got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise _bad(fname, f"/env/{ds}", f"expected {dtype} of shape {shape} "
                       f"({' x '.join(dims)}), got {got}", "regenerate the trace with a current e3fast")

    def need(ok, ds, what, fix):
        ok = np.asarray(ok)
        if not ok.all():
            i = np.unravel_index(np.argmin(ok), ok.shape) if ok.ndim else ()
            idx = f" at index {tuple(int(j) for j in i) if len(i) > 1 else int(i[0])}" if len(i) else ""
            raise _bad(fname, f"/env/{ds}", what + idx, fix)

    need(np.isin(env.model_kind, (MODEL_KIND_LLM, MODEL_KIND_DIFFUSION)), "model_kind",
         "model kind not 0 (LLM) or 1 (diffusion)", "use 0 for LLMs and 1 for diffusion models")
    av = env.prior_available
    for name in "abc":
        v = getattr(env, f"prior_{name}")
        need(~av | (np.isfinite(v) & (v >= 0)), f"priors/{name}",
             "prior not finite or negative for an available (type, model) pair",
             "give finite non-negative service-time parameters in seconds")
    need(~av | (np.isfinite(env.prior_sigma) & (env.prior_sigma >= 0)), "priors/sigma",
         "sigma not finite or negative for an available (type, model) pair", "use sigma >= 0")
    need((env.device_type >= 0) & (env.device_type < T), "devices/type",
         f"device type id out of range 0..{T - 1}", "use indices into /env/device_types")
    need(env.hosts.any(axis=1), "devices/hosts", "device hosts no model",
         "give every device at least one model, or remove it")
    need(~env.hosts | av[env.device_type], "devices/hosts",
         "device hosts a model its type cannot run (priors/available is false)",
         "host only models with priors on the device's type")
    need(np.isfinite(env.join_s) & (env.join_s >= 0), "devices/join_s",
         "join time not finite or negative", "use seconds >= 0 from trace start")
    need(~np.isnan(env.leave_s) & (env.leave_s >= env.join_s), "devices/leave_s",
         "leave time NaN or before join time", "use leave_s >= join_s, or inf for never")
    ptr, K = env.drift_ptr, sizes["K"]
    if ptr[0] != 0 or ptr[-1] != K:
        raise _bad(fname, "/env/drift/ptr", f"pointers run {ptr[0]}..{ptr[-1]}, must run 0..K={K}",
                   "rebuild drift/ptr from the knot counts per device")
    need(np.diff(ptr) >= 0, "drift/ptr", "CSR pointers decrease after index", "pointers must be non-decreasing")
    need(np.isfinite(env.drift_t_s), "drift/t_s", "knot time not finite", "use finite seconds")
    sorted_ok = np.ones(K, bool)  # knot i is not earlier than knot i-1 of the same device
    sorted_ok[1:] = np.diff(env.drift_t_s) >= 0
    sorted_ok[ptr[:-1][ptr[:-1] < K]] = True
    need(sorted_ok, "drift/t_s", "knot times not sorted within a device", "sort each device's knots by time")
    need(np.isfinite(env.drift_mult) & (env.drift_mult > 0), "drift/mult",
         "multiplier not finite or <= 0", "use slowdown multipliers > 0 (1 = none)")
    need((env.sem_device_type >= 0) & (env.sem_device_type < T), "semantic/device_type",
         f"device type id out of range 0..{T - 1}", "use indices into /env/device_types")
    need((env.sem_klass >= 0) & (env.sem_klass < C), "semantic/klass",
         f"class id out of range 0..{C - 1}", "use indices into /env/classes")
    need(np.isfinite(env.sem_t0_s), "semantic/t0_s", "window start not finite", "use finite seconds")
    need(env.sem_t1_s > env.sem_t0_s, "semantic/t1_s", "window end not after its start",
         "use t1_s > t0_s (t1_s may be inf)")
    need(np.isfinite(env.sem_factor) & (env.sem_factor > 0), "semantic/factor",
         "factor not finite or <= 0", "use multipliers > 0")
    need(~env.prior_known | av, "priors/known", "a prior for a (type, model) pair the type cannot host",
         "mark known only pairs of priors/available")
    need(env.prior_known.any(axis=0) | ~av.any(axis=0), "priors/known",
         "a model with no known prior on any device type",
         "give every model a prior on at least one type (routers guess unknown types from them)")
    fp, F = env.fail_ptr, sizes["F"]
    if fp[0] != 0 or fp[-1] != F:
        raise _bad(fname, "/env/failure/ptr", f"pointers run {fp[0]}..{fp[-1]}, must run 0..F={F}",
                   "rebuild failure/ptr from the window counts per device")
    need(np.diff(fp) >= 0, "failure/ptr", "CSR pointers decrease after index", "pointers must be non-decreasing")
    need(np.isfinite(env.fail_t0_s) & np.isfinite(env.fail_t1_s) & (env.fail_t0_s >= 0),
         "failure/t0_s", "failure window not finite or negative", "use finite seconds >= 0")
    need(env.fail_t1_s > env.fail_t0_s, "failure/t1_s", "recovery not after the failure",
         "use t1_s > t0_s")
    apart = np.ones(F, bool)  # window i starts at or after the end of window i-1 of its device
    apart[1:] = env.fail_t0_s[1:] >= env.fail_t1_s[:-1]
    apart[fp[:-1][fp[:-1] < F]] = True
    need(apart, "failure/t0_s", "failure windows of a device overlap or are not sorted",
         "sort each device's windows by time and merge overlapping ones")


def read_env(group: h5py.Group, schema_version: int = SCHEMA_VERSION) -> Env:
    """Read an /env group into an `Env` (exact dtypes; see schema.ENV_ARRAYS) and check it.
    Datasets added after `schema_version` (schema.ENV_SINCE) may be missing: defaults."""
    fname, kw = group.file.filename, {}
    for path, attr in ENV_STRINGS.items():
        did = _dataset(group, path, fname)
        info = h5py.check_string_dtype(did.dtype)
        if info is None or len(did.shape) != 1:
            raise _bad(fname, f"/env/{path}", f"expected a 1-D UTF-8 string dataset, got {did.dtype} {did.shape}",
                       "write names with h5py.string_dtype()")
        # read as h5py's high-level Dataset does, without its selection layer (~0.25 ms each)
        names = np.empty(did.shape, _STRING if info.length is None else did.dtype)
        if names.size:
            did.read(h5py.h5s.ALL, h5py.h5s.ALL, names,
                     mtype=_STRING_MTYPE if info.length is None else memory_type(did.dtype))
        kw[attr] = [s.decode(info.encoding) if isinstance(s, bytes) else str(s) for s in names]
    for path, (attr, dtype, _) in ENV_ARRAYS.items():
        if ENV_SINCE.get(path, 1) > schema_version and path not in group:
            continue  # an older trace: Env's default (no failure windows)
        did = _dataset(group, path, fname)
        if not _same_type(did, dtype):
            raise _bad(fname, f"/env/{path}", f"wrong dtype {did.dtype}, expected {dtype}",
                       "regenerate the trace with a current e3fast")
        kw[attr] = np.empty(did.shape, dtype)
        if kw[attr].size:
            did.read(h5py.h5s.ALL, h5py.h5s.ALL, kw[attr], mtype=memory_type(dtype))
    try:
        kw["prior_provenance"] = str(_attributes(group["priors"], ("provenance_json",)).get("provenance_json", ""))
        kw["extra"] = json.loads(_attributes(group, ("extra_json",)).get("extra_json", "{}"))
    except (ValueError, TypeError) as exc:
        raise _bad(fname, "/env attrs extra_json", f"not valid JSON ({exc})", "regenerate the trace") from None
    env = Env(**kw)
    check_env(env, fname)
    return env


# --- requests ------------------------------------------------------------------------------

# The block checks, in the order they are reported: the first check any row of a block
# fails is reported, at its first failing row. Check c is bit c of `_row_problems`; its
# message is `_BLOCK_CHECKS[c]`.
(_ARRIVAL_NAN, _Z_NAN, _FIRST_ARRIVAL, _UNSORTED, _MODEL, _KLASS, _IN_TOKENS, _OUT_TOKENS,
 _LLM_NO_PROMPT) = range(9)


@njit(cache=True)
def _row_problems(i, p, first, block, llm, n_models, n_classes):
    """Bit mask of the block checks row `i` of `block` fails; `p` is the previous row's arrival
    (s), `first` whether row `i` is the block's first (compared with the previous block's last),
    `llm` whether the row's model is an LLM (False: the prompt check is left out)."""
    a, z, model, in_tokens, out_tokens, klass = block
    x, m, k, n_in, n_out = a[i], model[i], klass[i], in_tokens[i], out_tokens[i]
    return ((not np.isfinite(x)) << _ARRIVAL_NAN
            | (not np.isfinite(z[i])) << _Z_NAN
            | ((x < p) | (first & (x < 0))) << (_FIRST_ARRIVAL if first else _UNSORTED)
            | ((m < 0) | (m >= n_models)) << _MODEL
            | ((k < 0) | (k >= n_classes)) << _KLASS
            | ((n_in < MIN_IN_TOKENS) | (n_in > MAX_TOKENS)) << _IN_TOKENS
            | ((n_out < MIN_OUT_TOKENS) | (n_out > MAX_TOKENS)) << _OUT_TOKENS
            | ((n_in == 0) & llm) << _LLM_NO_PROMPT)


@njit(cache=True)
def _is_llm(i, model, model_kind):
    """Whether row `i`'s model is an LLM (False for an unknown id: _MODEL is reported first)."""
    m = model[i]
    return (m >= 0) & (m < len(model_kind)) and model_kind[m] == MODEL_KIND_LLM


@njit(cache=True)
def _problems(block, prev, model_kind, n_classes, exact):
    """OR of `_row_problems` over the rows of `block`; `exact`: with each row's LLM flag (a
    table lookup per row), else without the prompt check."""
    a, model = block[0], block[2]
    n_models = len(model_kind)
    found = _row_problems(0, prev, True, block, exact and _is_llm(0, model, model_kind),
                          n_models, n_classes)
    for i in range(1, len(a)):
        found |= _row_problems(i, a[i - 1], False, block, exact and _is_llm(i, model, model_kind),
                               n_models, n_classes)
    return found


@njit(cache=True)
def _first_problem(block, prev, model_kind, n_classes):
    """(check, row) of the first failing check of `block` (arrival_s, z, model, in_tokens,
    out_tokens, klass), at its first failing row; (-1, -1) if none.

    A good block costs one pass without a table lookup per row (1.7-2.0 against 2.7-2.9
    ns/row with one): the prompt check only sees which model ids (mod 64) have rows with 0
    input tokens, and only if one of those ids is an LLM's does an exact pass look row by row.
    `prev` is the previous block's last arrival (s).
    """
    a, model, in_tokens = block[0], block[2], block[3]
    found = _problems(block, prev, model_kind, n_classes, False)
    no_prompt = 0  # bit (id mod 64) set: some row of that model id has 0 input tokens
    for i in range(len(a)):
        no_prompt |= np.int64(in_tokens[i] == 0) << (np.int64(model[i]) & 63)
    llm_ids = 0    # bit (id mod 64) set: that model id is an LLM's
    for m in range(len(model_kind)):
        llm_ids |= np.int64(model_kind[m] == MODEL_KIND_LLM) << (m & 63)
    if no_prompt & llm_ids:
        found = _problems(block, prev, model_kind, n_classes, True)
    if found == 0:
        return -1, -1
    check = 0
    while not (found >> check) & 1:
        check += 1
    for i in range(len(a)):
        p = prev if i == 0 else a[i - 1]
        if (_row_problems(i, p, i == 0, block, _is_llm(i, model, model_kind), len(model_kind),
                          n_classes) >> check) & 1:
            return check, i
    return -1, -1  # not reached


_NOT_FINITE = (lambda v, i, p, env: f"value {v[i]} is not finite", "remove or repair rows with NaN/inf")
_TOKENS = "token/step counts must be {}..{}; drop or repair the row"
#: check -> (dataset, what(column, block row, previous arrival, env), fix)
_BLOCK_CHECKS = {
    _ARRIVAL_NAN: ("arrival_s", *_NOT_FINITE),
    _Z_NAN: ("z", *_NOT_FINITE),
    _FIRST_ARRIVAL: ("arrival_s", lambda v, i, p, env: "negative arrival time" if v[0] < 0 else
                     f"arrivals not sorted (arrival {v[0]} s < previous row's {p} s)",
                     "sort requests by arrival_s, times in seconds >= 0 from trace start"),
    _UNSORTED: ("arrival_s", lambda v, i, p, env: f"arrivals not sorted (arrival {v[i]} s < previous row's "
                f"{v[i - 1]} s)", "sort requests by arrival_s (stable sort)"),
    _MODEL: ("model", lambda v, i, p, env: f"unknown model id {v[i]} (valid 0..{len(env.models) - 1})",
             "use indices into /env/models"),
    _KLASS: ("klass", lambda v, i, p, env: f"unknown class id {v[i]} (valid 0..{len(env.classes) - 1})",
             "use indices into /env/classes"),
    _IN_TOKENS: ("in_tokens", lambda v, i, p, env: f"in_tokens {v[i]} outside {MIN_IN_TOKENS}..{MAX_TOKENS}",
                 _TOKENS.format(MIN_IN_TOKENS, MAX_TOKENS)),
    _OUT_TOKENS: ("out_tokens", lambda v, i, p, env: f"out_tokens {v[i]} outside {MIN_OUT_TOKENS}..{MAX_TOKENS}",
                  _TOKENS.format(MIN_OUT_TOKENS, MAX_TOKENS)),
    _LLM_NO_PROMPT: ("in_tokens", lambda v, i, p, env: "an LLM request with 0 input tokens",
                     "LLM prompts need >= 1 token (only diffusion rows may have 0)"),
}


def check_block(cols: dict, env: Env, fname, start: int = 0, prev_arrival: float = -np.inf) -> None:
    """Check one block of request columns (schema dtypes) whose first row is global row `start`.

    `prev_arrival` is the last arrival of the previous block (s; sortedness across blocks).
    """
    a = cols["arrival_s"]
    if len(a) == 0:
        return
    block = tuple(cols[k] for k in ("arrival_s", "z", "model", "in_tokens", "out_tokens", "klass"))
    check, i = _first_problem(block, float(prev_arrival), env.model_kind, len(env.classes))
    if check >= 0:
        ds, what, fix = _BLOCK_CHECKS[check]
        raise _bad(fname, f"/requests/{ds}", f"row {start + i}: {what(cols[ds], i, prev_arrival, env)}", fix)


def check_prefix(counts: np.ndarray, ids: np.ndarray, in_tokens: np.ndarray, block_tokens: int,
                 fname, start: int = 0) -> None:
    """Check the prefix blocks of rows ``start ..``: `counts` blocks per row (int64), `ids`
    their block ids (int64, concatenated), `in_tokens` the rows' prompt tokens. A row has
    ceil(in_tokens / block_tokens) blocks; ids are >= 0."""
    ds = f"/{PREFIX_GROUP}"
    if counts.shape != in_tokens.shape:
        raise _bad(fname, f"{ds}/offsets", f"{counts.shape[0]} rows of blocks for {in_tokens.shape[0]} "
                   "requests", "give one block count per request")
    if len(counts) and counts.min() < 0:
        i = int(np.argmax(counts < 0))
        raise _bad(fname, f"{ds}/offsets", f"row {start + i}: offsets decrease",
                   "offsets are non-decreasing CSR pointers into block_ids")
    want = -(-in_tokens.astype(np.int64) // block_tokens)
    if not np.array_equal(counts, want):
        i = int(np.argmax(counts != want))
        raise _bad(fname, f"{ds}/offsets", f"row {start + i}: {counts[i]} blocks for a {in_tokens[i]}-token "
                   f"prompt (it has {want[i]} of {block_tokens} tokens)",
                   f"give one block id per started {block_tokens}-token block of the prompt")
    if int(counts.sum()) != len(ids):
        raise _bad(fname, f"{ds}/block_ids", f"{len(ids)} block ids for {int(counts.sum())} blocks",
                   "give one id per block")
    if len(ids) and ids.min() < 0:
        raise _bad(fname, f"{ds}/block_ids", f"negative block id {ids.min()} (rows from {start})",
                   "block ids are integers >= 0")


# --- the reader ------------------------------------------------------------------------

def _open_h5(path) -> h5py.File:
    p = Path(path)
    if not p.exists():
        raise E3Error("no such file", where=str(p), fix="check the path")
    if p.is_dir():
        raise E3Error("is a folder, not a trace file", where=str(p), fix="give the .h5 file")
    try:
        return h5py.File(p, "r", rdcc_nbytes=0)  # blocks are read once: no chunk cache
    except OSError as exc:
        msg = str(exc)
        what = ("not an HDF5 file (random bytes or another format)" if "signature" in msg
                else f"truncated or corrupt HDF5 file ({msg})")
        raise E3Error(what, where=str(p), fix="regenerate it with `e3fast gen-trace` or `e3fast import-trace`") \
            from None


class TraceReader:
    """An open trace: metadata and env on attributes, requests streamed by `blocks()`.

    Attributes: ``path``, ``env`` (`Env`), ``attrs`` (root attributes), ``n_requests``,
    ``duration_s`` (seconds), ``scenario``, ``seed``, ``params`` (dict from params_json),
    ``schema_version``, ``generator_version``, ``prefix_block_tokens`` (tokens per prefix
    block; None: the trace keeps no prefix blocks, see `prefix_blocks`).
    """

    def __init__(self, path):
        self.path = Path(path)
        self._f = _open_h5(self.path)
        self._sources = weakref.WeakSet()  # row sources of unfinished blocks() streams
        try:
            self._check_open()
        except (OSError, RuntimeError, KeyError, TypeError, ValueError) as exc:  # h5py on damaged files
            self.close()
            raise E3Error(f"truncated, corrupt or unreadable HDF5 file ({exc})", where=str(self.path),
                          fix="regenerate it") from None
        except BaseException:
            self.close()
            raise

    def _check_open(self):
        f, fname = self._f, str(self.path)
        self.attrs = _attributes(f)
        if "schema_version" not in self.attrs:
            raise E3Error("not an e3fast trace (no schema_version attribute; an HDF5 file of another program?)",
                          where=fname, fix="give a trace written by `e3fast gen-trace` or `e3fast import-trace`")
        sv = self.attrs["schema_version"]
        if not isinstance(sv, int) or sv < 1:
            raise _bad(fname, "attr schema_version", f"invalid value {sv!r}", "regenerate the trace")
        if sv > SCHEMA_VERSION:
            raise _bad(fname, "attr schema_version",
                       f"schema version {sv} was written by a newer e3fast (this is {__version__}, reads "
                       f"<= {SCHEMA_VERSION})", "upgrade e3fast (pip install -U e3fast)")
        for key in ROOT_ATTRS:
            if key not in self.attrs:
                raise _bad(fname, f"attr {key}", "missing root attribute", "regenerate the trace")
        try:
            self.params = json.loads(self.attrs["params_json"])
        except (TypeError, ValueError) as exc:
            raise _bad(fname, "attr params_json", f"not valid JSON ({exc})", "regenerate the trace") from None
        self.schema_version, self.scenario = sv, str(self.attrs["scenario"])
        self.seed, self.generator_version = self.attrs["seed"], str(self.attrs["generator_version"])
        self.n_requests, self.duration_s = self.attrs["n_requests"], self.attrs["duration_s"]
        if not isinstance(self.n_requests, int) or self.n_requests < 0:
            raise _bad(fname, "attr n_requests", f"invalid value {self.n_requests!r}", "regenerate the trace")
        if not isinstance(self.duration_s, (int, float)) or not np.isfinite(self.duration_s) or self.duration_s < 0:
            raise _bad(fname, "attr duration_s", f"invalid value {self.duration_s!r}", "regenerate the trace")
        self.duration_s = float(self.duration_s)
        env = f.get("env")
        if not isinstance(env, h5py.Group):
            raise _bad(fname, "/env", "missing group", "this is not a complete e3fast trace; regenerate it")
        self.env = read_env(env, sv)
        req = f.get("requests")
        if not isinstance(req, h5py.Group):
            raise _bad(fname, "/requests", "missing group", "this is not a complete e3fast trace; regenerate it")
        extra = sorted(set(req) - set(REQUEST_FIELDS)) if len(req) != len(REQUEST_FIELDS) else []
        if extra:
            raise _bad(fname, f"/requests/{extra[0]}", f"unexpected dataset (not in schema v{sv})",
                       "remove it, or keep extra columns outside /requests (e.g. /extra)")
        self._ds = {}  # name -> h5py.h5d.DatasetID
        for name, dtype in REQUEST_FIELDS.items():
            ds = _dataset(req, name, fname)
            if not _same_type(ds, dtype):
                raise _bad(fname, f"/requests/{name}", f"wrong dtype {ds.dtype}, expected {dtype}",
                           f"store {name} as {dtype}")
            if ds.shape != (self.n_requests,):
                raise _bad(fname, f"/requests/{name}", f"shape {ds.shape} but n_requests is {self.n_requests}",
                           "all /requests columns must be 1-D with n_requests rows")
            self._ds[name] = ds
        self._check_prefix_group(f, fname)
        last = 0.0
        if self.n_requests:  # one row, read as the row sources do (h5py's Dataset: ~0.1 ms)
            f8 = REQUEST_FIELDS["arrival_s"]
            rows = HDF5Rows(self.path, {"arrival_s": self._ds["arrival_s"]}, {"arrival_s": f8},
                            self.n_requests, 1)
            last = float(rows.read(self.n_requests - 1, 1)["arrival_s"][0])
        if last > self.duration_s:
            raise _bad(fname, "attr duration_s", f"duration {self.duration_s} s is shorter than the last "
                       f"arrival {last} s", "set duration_s >= the last arrival")

    def _check_prefix_group(self, f, fname):
        """Shapes, dtypes and the block size of the optional /prefix group."""
        self.prefix_block_tokens, self._prefix = None, None
        group = f.get(PREFIX_GROUP)
        if group is None:
            return
        if not isinstance(group, h5py.Group):
            raise _bad(fname, f"/{PREFIX_GROUP}", "not a group", "regenerate the trace")
        bt = _attributes(group, (PREFIX_BLOCK_ATTR,)).get(PREFIX_BLOCK_ATTR)
        if not isinstance(bt, int) or bt < 1:
            raise _bad(fname, f"/{PREFIX_GROUP} attr {PREFIX_BLOCK_ATTR}", f"invalid value {bt!r}",
                       "tokens per prefix block, an integer >= 1 (Mooncake: 512)")
        self._prefix = {}
        for name, dtype in PREFIX_FIELDS.items():
            ds = group.get(name)
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or ds.dtype.kind != dtype.kind \
                    or ds.dtype.itemsize != dtype.itemsize:
                raise _bad(fname, f"/{PREFIX_GROUP}/{name}", "missing, not 1-D or not " + str(dtype),
                           "regenerate the trace")
            self._prefix[name] = ds
        offsets = self._prefix["offsets"]
        if offsets.shape != (self.n_requests + 1,):
            raise _bad(fname, f"/{PREFIX_GROUP}/offsets", f"shape {offsets.shape}, n_requests + 1 is "
                       f"{self.n_requests + 1}", "one offset per request and one at the end")
        ends = int(offsets[0]), int(offsets[self.n_requests])
        if ends[0] != 0 or ends[1] != self._prefix["block_ids"].shape[0]:
            raise _bad(fname, f"/{PREFIX_GROUP}/offsets", f"offsets run {ends[0]}..{ends[1]}, must run "
                       f"0..{self._prefix['block_ids'].shape[0]} (the number of block ids)",
                       "rebuild offsets from the block counts per request")
        self.prefix_block_tokens = bt

    def prefix_blocks(self, start: int, in_tokens: np.ndarray):
        """(counts, ids): the number of prefix blocks of rows ``start .. start+len(in_tokens)-1``
        and their block ids concatenated (int64), checked against the rows' prompt tokens
        `in_tokens` (`check_prefix`). Only for a trace with ``prefix_block_tokens``."""
        if self._prefix is None:
            raise E3Error("the trace keeps no prefix blocks", where=str(self.path),
                          fix="import a trace format with prefix blocks (e.g. --format mooncake)")
        offsets = self._prefix["offsets"][start:start + len(in_tokens) + 1]
        ids = self._prefix["block_ids"][offsets[0]:offsets[-1]] if len(offsets) else np.zeros(0, np.int64)
        counts = np.diff(offsets)
        check_prefix(counts, ids, np.asarray(in_tokens), self.prefix_block_tokens, self.path, start)
        return counts, ids

    def blocks(self, block_rows: int = DEFAULT_CHUNK_ROWS, validate: bool = True) -> Iterator[Block]:
        """Yield consecutive `Block`s of up to `block_rows` rows with constant memory.

        Rows come in place from a memory map of the file where its layout allows (the
        writer's does), else by ``H5Dread`` (see `rows`); each block is checked (unless
        ``validate=False``) before it is yielded.
        """
        block_rows = int(block_rows)
        if block_rows < 1:
            raise E3Error(f"block_rows must be >= 1, got {block_rows}", fix="use e.g. 65536")
        source = (MappedRows.open(self._f, self._ds, REQUEST_FIELDS, self.n_requests, block_rows)
                  or HDF5Rows(self.path, self._ds, REQUEST_FIELDS, self.n_requests, block_rows))
        self._sources.add(source)  # closed when the stream ends, or else with the reader
        try:
            prev = -np.inf
            for start in range(0, self.n_requests, block_rows):
                n = min(block_rows, self.n_requests - start)
                cols = source.read(start, n)
                if validate:
                    check_block(cols, self.env, self.path, start, prev)
                prev = cols["arrival_s"][-1]
                yield Block(start, **cols)
                source.release(start + n)
        finally:
            source.close()
            self._sources.discard(source)

    def read_all(self) -> dict:
        """All request columns as arrays (validated). For small traces and tests only."""
        out = {k: np.empty(self.n_requests, dt) for k, dt in REQUEST_FIELDS.items()}
        for b in self.blocks():
            for k in REQUEST_FIELDS:
                out[k][b.start:b.start + len(b.arrival_s)] = getattr(b, k)
        return out

    def close(self) -> None:
        """Close the file and the row sources of its streams (a mapped one hands back its pages)."""
        for source in list(self._sources):
            source.close()
        self._sources.clear()
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def open_trace(path) -> TraceReader:
    """Open and check a trace file (cheap checks; blocks are checked as they stream)."""
    return TraceReader(path)


def check_servable(env: Env, model_counts, fname, strict: bool = False) -> int:
    """Number of requests whose model no device hosts; with `strict` a nonzero count is an `E3Error`."""
    model_counts = np.asarray(model_counts)
    orphan = ~env.hosts.any(axis=0) & (model_counts > 0)
    unserved = int(model_counts[orphan].sum())
    if strict and unserved:
        m = int(np.flatnonzero(orphan)[0])
        raise _bad(fname, "/env/devices/hosts", f"{unserved} requests use models no device hosts "
                   f"(first: {env.models[m]!r}, {int(model_counts[m])} requests)",
                   "host that model on a device, or drop those requests")
    return unserved


def validate_trace(path, strict: bool = False, block_rows: int = DEFAULT_CHUNK_ROWS) -> dict:
    """Read the whole trace, checking every row; return summary counts.

    Returns ``n_requests``, ``duration_s``, ``first_arrival_s``, ``last_arrival_s``,
    ``model_counts`` and ``class_counts`` (lists by id) and ``unservable_requests`` (requests
    whose model no device hosts: the simulator drops them with a counted reason). With
    ``strict=True`` such requests are an `E3Error`.
    """
    with open_trace(path) as tr:
        env = tr.env
        mc = np.zeros(env.n_models, np.int64)
        cc = np.zeros(len(env.classes), np.int64)
        first = last = None
        for b in tr.blocks(block_rows):
            mc += np.bincount(b.model, minlength=env.n_models)
            cc += np.bincount(b.klass, minlength=len(env.classes))
            first = float(b.arrival_s[0]) if first is None else first
            last = float(b.arrival_s[-1])
        unserved = check_servable(env, mc, tr.path, strict)
        return {"path": str(tr.path), "n_requests": tr.n_requests, "duration_s": tr.duration_s,
                "first_arrival_s": first, "last_arrival_s": last, "model_counts": mc.tolist(),
                "class_counts": cc.tolist(), "unservable_requests": unserved}
