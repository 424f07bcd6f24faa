"""Trace writer (format v1, see docs/TRACE_FORMAT.md).

`TraceWriter` streams request blocks into /requests under a temporary name in the target
folder and renames it into place only when the ``with`` block ends cleanly; on any
exception (or Ctrl-C) the temporary file is deleted and nothing appears under the final
name. Every block is checked like the reader checks it, so a written file always reads.
"""
import contextlib
import json
from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from ..atomic import atomic_path
from ..errors import E3Error, hdf5_write_error
from .reader import check_block, check_env, check_prefix
from .schema import (DEFAULT_CHUNK_ROWS, ENV_ARRAYS, ENV_STRINGS, GENERATOR, PREFIX_BLOCK_ATTR, PREFIX_FIELDS,
                     PREFIX_GROUP, REQUEST_FIELDS, SCHEMA_VERSION, UNITS, Env)


def _json(obj, what, where) -> str:
    """Canonical JSON (sorted keys); NumPy scalars and arrays become plain numbers and lists."""
    def plain(o):
        if isinstance(o, (np.generic, np.ndarray)):
            return o.tolist()
        raise TypeError(f"{type(o).__name__} is not JSON-serialisable")
    try:
        return json.dumps(obj, sort_keys=True, default=plain)
    except (TypeError, ValueError) as exc:
        raise E3Error(f"{what} cannot be stored as JSON: {exc}", where=where,
                      fix="use only numbers, strings, lists and dicts") from None


def write_env(group: h5py.Group, env: Env) -> None:
    """Write `env` into `group` (normally /env) with the layout of schema.ENV_ARRAYS.

    Arrays are stored with the schema dtypes exactly; call `check_env` first.
    """
    for path, attr in ENV_STRINGS.items():
        group.create_dataset(path, data=np.array(list(getattr(env, attr)), dtype=object),
                             dtype=h5py.string_dtype())
    for path, (attr, dtype, _) in ENV_ARRAYS.items():
        group.create_dataset(path, data=np.asarray(getattr(env, attr), dtype=dtype))
    group["priors"].attrs["provenance_json"] = env.prior_provenance or ""
    group.attrs["extra_json"] = _json(env.extra, "Env.extra", "/env")


def _cast_env(env: Env) -> Env:
    """A copy of `env` with every array cast to its schema dtype (values must survive)."""
    kw = dict(env.__dict__)
    for path, (attr, dtype, _) in ENV_ARRAYS.items():
        arr = np.asarray(kw[attr])
        cast = arr.astype(dtype)
        if arr.shape == cast.shape and arr.size and arr.dtype.kind in "iub" and not np.array_equal(arr, cast):
            raise E3Error(f"values do not fit {dtype}", where=f"Env.{attr} (/env/{path})",
                          fix="use smaller values or correct ids")
        kw[attr] = cast
    for attr in ENV_STRINGS.values():
        kw[attr] = [str(s) for s in kw[attr]]
    return Env(**kw)


def _cast_column(name: str, values, where: str) -> np.ndarray:
    dtype = REQUEST_FIELDS[name]
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise E3Error(f"expected a 1-D array, got shape {arr.shape}", where=f"{where} /requests/{name}",
                      fix="pass one value per request")
    if arr.dtype == dtype:
        return arr
    try:
        cast = arr.astype(dtype)
    except (TypeError, ValueError) as exc:
        raise E3Error(f"cannot convert to {dtype}: {exc}", where=f"{where} /requests/{name}",
                      fix="pass numbers") from None
    if dtype.kind == "i" and arr.size:
        with np.errstate(invalid="ignore"):
            bad = cast != arr
        if bad.any():
            i = int(np.argmax(bad))
            raise E3Error(f"value {arr[i]!r} at block row {i} cannot be stored as {dtype} unchanged "
                          "(NaN, fraction or out of range)", where=f"{where} /requests/{name}",
                          fix="pass whole numbers in range")
    return cast


_UNCLOSABLE = []  # HDF5 files whose write failed: never closed or freed again (HDF5 crashes)


@contextlib.contextmanager
def new_h5_file(path):
    """A new HDF5 file at `path`, closed at the end of the block. If the block or the close
    fails (e.g. a full disk), the file object is kept alive instead: closing or freeing it
    again makes the HDF5 library crash."""
    f = h5py.File(path, "w")
    try:
        yield f
        f.close()
    except BaseException:
        _UNCLOSABLE.append(f)
        raise


class TraceWriter:
    """Write a trace in blocks: ``with TraceWriter(path, env, scenario=..., seed=..., params=...) as w:
    w.append(...)``.

    Parameters: ``duration_s`` trace length in seconds (default: the last arrival);
    ``chunk_rows`` HDF5 chunk length of every /requests column; ``compression`` None (default,
    fastest reads) or "gzip"; ``force`` overwrite an existing ``path``; ``prefix_block_tokens``
    tokens per prefix block: keep each request's prompt blocks in /prefix (then every
    ``append`` gives ``prefix_counts`` and ``prefix_ids``; None: no /prefix group).
    """

    def __init__(self, path, env: Env, *, scenario: str, seed: int, params: dict,
                 duration_s: float | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 force: bool = False, compression: str | None = None,
                 prefix_block_tokens: int | None = None):
        self.path = Path(path)
        where = str(self.path)
        if self.path.is_dir():
            raise E3Error("is a folder", where=where, fix="give a file name such as trace.h5")
        if self.path.exists() and not force:
            raise E3Error("output file exists", where=where, fix="use --force to overwrite, or another name")
        if int(chunk_rows) < 1:
            raise E3Error(f"chunk_rows must be >= 1, got {chunk_rows}", where=where, fix="use e.g. 65536")
        if compression not in (None, "gzip"):
            raise E3Error(f"unknown compression {compression!r}", where=where, fix="use None or 'gzip'")
        if prefix_block_tokens is not None and (not isinstance(prefix_block_tokens, (int, np.integer))
                                                or prefix_block_tokens < 1):
            raise E3Error(f"prefix_block_tokens must be an integer >= 1, got {prefix_block_tokens!r}",
                          where=where, fix="e.g. 512 (Mooncake), or None for no prefix blocks")
        self.prefix_block_tokens = None if prefix_block_tokens is None else int(prefix_block_tokens)
        if duration_s is not None and not (np.isfinite(duration_s) and duration_s >= 0):
            raise E3Error(f"duration_s must be finite and >= 0, got {duration_s}", where=where,
                          fix="give the trace length in seconds")
        self.env = _cast_env(env)
        check_env(self.env, where)
        self.n_requests, self._last, self._n_blocks = 0, -np.inf, 0
        self._duration = duration_s
        self._attrs = {"schema_version": SCHEMA_VERSION, "generator": GENERATOR,
                       "generator_version": __version__, "scenario": str(scenario), "seed": int(seed),
                       "units": UNITS, "params_json": _json(params, "params", where)}
        self._atomic = atomic_path(self.path, suffix=".h5")
        self._tmp = self._atomic.__enter__()
        try:
            # chunks (>= 64 KiB) start on page boundaries: the reader maps them in place
            self._file = h5py.File(self._tmp, "w", alignment_threshold=65536, alignment_interval=4096)
            write_env(self._file.create_group("env"), self.env)
            req = self._file.create_group("requests")
            self._ds = {name: req.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype,
                                                 chunks=(int(chunk_rows),), compression=compression)
                        for name, dtype in REQUEST_FIELDS.items()}
            self._prefix = None
            if self.prefix_block_tokens is not None:
                # replays never read /prefix: compressed (ids are small integers in 8 bytes)
                group = self._file.create_group(PREFIX_GROUP)
                group.attrs[PREFIX_BLOCK_ATTR] = np.int64(self.prefix_block_tokens)
                self._prefix = {name: group.create_dataset(
                    name, shape=(1 if name == "offsets" else 0,), maxshape=(None,), dtype=dtype,
                    chunks=(int(chunk_rows) if name == "offsets" else DEFAULT_CHUNK_ROWS,),
                    compression="gzip", shuffle=True) for name, dtype in PREFIX_FIELDS.items()}
        except BaseException as exc:
            self._abort(exc)
            if isinstance(exc, (OSError, RuntimeError)):  # h5py: full disk
                raise hdf5_write_error(exc, where, "check disk space and permissions") from None
            raise

    def append(self, arrival_s, model, in_tokens, out_tokens, klass, z,
               prefix_counts=None, prefix_ids=None) -> None:
        """Append equal-length 1-D arrays (any numeric dtype; cast losslessly to the schema dtypes).

        Arrivals in seconds, non-decreasing within and across appends. With
        ``prefix_block_tokens``: ``prefix_counts`` blocks per row (ceil(in_tokens /
        block tokens)) and ``prefix_ids`` their ids (>= 0), concatenated in row order.
        """
        where = str(self.path)
        cols = {name: _cast_column(name, v, where)
                for name, v in zip(REQUEST_FIELDS, (arrival_s, model, in_tokens, out_tokens, klass, z))}
        n = len(cols["arrival_s"])
        for name, v in cols.items():
            if len(v) != n:
                raise E3Error(f"{len(v)} values but arrival_s has {n}", where=f"{where} /requests/{name}",
                              fix="pass equal-length columns")
        if n == 0:
            return
        check_block(cols, self.env, where, self.n_requests, self._last)
        prefix = self._prefix_columns(prefix_counts, prefix_ids, cols["in_tokens"], where)
        start, self.n_requests = self.n_requests, self.n_requests + n
        try:
            for name, ds in self._ds.items():
                ds.resize((self.n_requests,))
                ds.write_direct(np.ascontiguousarray(cols[name]), dest_sel=np.s_[start:self.n_requests])
            if prefix is not None:
                counts, ids = prefix
                offsets = self._prefix["offsets"]
                offsets.resize((self.n_requests + 1,))
                offsets[start + 1:] = self._n_blocks + np.cumsum(counts)
                block_ids = self._prefix["block_ids"]
                block_ids.resize((self._n_blocks + len(ids),))
                if len(ids):
                    block_ids[self._n_blocks:] = ids
                self._n_blocks += len(ids)
        except (OSError, RuntimeError) as exc:  # h5py reports a full disk as RuntimeError
            raise hdf5_write_error(exc, where, "check free disk space") from None
        self._last = float(cols["arrival_s"][-1])

    def _prefix_columns(self, counts, ids, in_tokens, where):
        """(counts, ids) as int64, checked (`check_prefix`); None when the trace keeps no blocks."""
        if self._prefix is None:
            if counts is not None or ids is not None:
                raise E3Error("prefix blocks given, but the writer keeps none", where=where,
                              fix="open the TraceWriter with prefix_block_tokens=...")
            return None
        if counts is None or ids is None:
            raise E3Error("missing prefix blocks", where=f"{where} /{PREFIX_GROUP}",
                          fix="give prefix_counts and prefix_ids with every append")
        out = []
        for name, v in (("offsets", counts), ("block_ids", ids)):
            arr = np.asarray(v)
            if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
                raise E3Error(f"expected a 1-D integer array, got {arr.dtype} {arr.shape}",
                              where=f"{where} /{PREFIX_GROUP}/{name}", fix="pass integers")
            out.append(arr.astype(np.int64, copy=False))
        check_prefix(out[0], out[1], in_tokens, self.prefix_block_tokens, where, self.n_requests)
        return tuple(out)

    def close(self) -> None:
        """Write the root attributes and rename the temporary file to `path`."""
        where = str(self.path)
        try:
            last = self._last if self.n_requests else 0.0
            duration = last if self._duration is None else float(self._duration)
            if duration < last:
                raise E3Error(f"duration_s {duration} s is shorter than the last arrival {last} s",
                              where=where, fix="give duration_s >= the last arrival, or leave it unset")
            self._file.attrs.update(self._attrs, n_requests=np.int64(self.n_requests), duration_s=duration)
            self._file.close()
        except BaseException as exc:
            self._close_failed = True
            self._abort(exc)
            if isinstance(exc, (OSError, RuntimeError)):  # h5py: full disk
                raise hdf5_write_error(exc, where, "check free disk space") from None
            raise
        try:
            self._atomic.__exit__(None, None, None)
        except OSError as exc:
            raise E3Error(f"cannot rename into place: {exc.strerror}", where=where,
                          fix="check permissions of the output folder") from None

    def _abort(self, exc: BaseException) -> None:
        """Close and delete the temporary file (the final name is never touched).

        After a failed write HDF5 crashes when such a file is closed (or garbage-collected)
        a second time, so a file whose close failed is kept referenced, never closed again."""
        file = getattr(self, "_file", None)
        if file is not None and not getattr(self, "_close_failed", False):
            try:
                file.close()
            except Exception:
                self._close_failed = True
        if getattr(self, "_close_failed", False):
            _UNCLOSABLE.append(self)  # the file and its datasets
        self._atomic.__exit__(type(exc), exc, exc.__traceback__)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            self.close()
        else:
            self._abort(exc)
        return False


def write_trace(path, env: Env, columns: dict, **kwargs) -> None:
    """Write a whole trace at once; `columns` maps every REQUEST_FIELDS name to an array.

    `kwargs` are those of `TraceWriter` (scenario, seed, params, duration_s, force...);
    chunks are never longer than the trace (HDF5 allocates whole chunks).
    """
    missing = [k for k in REQUEST_FIELDS if k not in columns]
    if missing:
        raise E3Error(f"missing columns {missing}", where=str(path), fix=f"give all of {list(REQUEST_FIELDS)}")
    n = len(np.asarray(columns["arrival_s"]))
    kwargs["chunk_rows"] = max(1, min(kwargs.get("chunk_rows", DEFAULT_CHUNK_ROWS), n))  # small files stay small
    with TraceWriter(path, env, **kwargs) as w:
        w.append(**{k: columns[k] for k in REQUEST_FIELDS})
