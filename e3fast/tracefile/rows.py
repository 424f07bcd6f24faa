"""How /requests rows get from the file into arrays, one block at a time.

Two sources with one shape, ``read(start, n) -> {field: array}`` (rows ``start .. start+n-1``;
the arrays are valid until the next read), ``release(end)`` (rows before `end` are done) and
``close()`` (the stream ended or the reader closes):

* `MappedRows`: uncompressed chunked columns in native byte order (what the e3fast writer
  makes) are read in place. HDF5 gives the file offset of every chunk (``H5Dchunk_iter``);
  a block inside one chunk is a view of a private memory map of the file, with no copy and
  no HDF5 call per block; a block across chunk boundaries is read as `HDF5Rows` reads. The
  pages of chunks behind the reader are handed back (``madvise(MADV_DONTNEED)``), so memory
  stays constant whatever the trace length.
* `HDF5Rows`: anything else (compressed, byte-swapped, contiguous, a user block, an h5py
  without ``chunk_iter``, a system without ``madvise``) goes through ``H5Dread`` into
  buffers allocated once.

Both give the same arrays bit for bit (tests/test_tracefile.py checks it).
"""
import mmap
import os
from functools import partial

import h5py
import numpy as np

from ..errors import E3Error

#: file pages the mapped reader holds before handing consumed chunks back (bytes): bounds
#: its resident memory whatever the trace length
RELEASE_BYTES = 16 << 20


_MEMORY_TYPES = {}


def memory_type(dtype) -> h5py.h5t.TypeID:
    """h5py's memory type for a numeric or fixed-length string `dtype`, made once per dtype
    (``h5t.py_create`` costs ~15 us)."""
    dtype = np.dtype(dtype)
    if dtype not in _MEMORY_TYPES:
        _MEMORY_TYPES[dtype] = h5py.h5t.py_create(dtype)
    return _MEMORY_TYPES[dtype]


def is_native(dataset: h5py.h5d.DatasetID, dtype) -> bool:
    """Whether `dataset` stores exactly `dtype` in this machine's byte order, compared by HDF5
    (~9 us; building h5py's ``dataset.dtype`` costs ~25 us)."""
    return dataset.get_type().equal(memory_type(dtype))


class MappedRows:
    """Rows read in place from a memory map of the file; `open` says whether it can."""

    def __init__(self, fmap, dtypes: dict, offsets: dict, chunk_rows: int, make_spanning):
        self._map = fmap
        self._dtypes = dtypes        # field -> np.dtype
        self._offsets = offsets      # field -> file offset (bytes) of each chunk, in row order
        self._chunk_rows = chunk_rows
        self._make_spanning = make_spanning  # -> the HDF5Rows for blocks across chunks ...
        self._spanning = None                # ... made when first needed
        self._released = 0           # chunks before this one are done with ...
        self._pending = []           # ... and their (first, end) byte ranges not yet handed back
        self._pending_bytes = 0

    @classmethod
    def open(cls, file: h5py.File, datasets: dict, dtypes: dict, n_rows: int,
             block_rows: int) -> "MappedRows | None":
        """A `MappedRows` over `datasets` (field -> ``h5py.h5d.DatasetID``) if every column
        is chunked, unfiltered, of exactly its dtype in native byte order, with all its
        chunks allocated, aligned and inside the file; else None."""
        if (n_rows == 0 or not hasattr(h5py.h5d.DatasetID, "chunk_iter")
                or not hasattr(mmap, "MADV_DONTNEED")):  # e.g. Windows: no madvise
            return None
        if file.id.get_create_plist().get_userblock() != 0:
            return None  # chunk addresses would be relative to the user block's end
        size = os.path.getsize(file.filename)
        chunk_rows, offsets = None, {}
        for name, ds in datasets.items():
            plist, dtype = ds.get_create_plist(), np.dtype(dtypes[name])
            if (plist.get_layout() != h5py.h5d.CHUNKED or plist.get_nfilters() != 0
                    or not is_native(ds, dtype) or chunk_rows not in (None, plist.get_chunk()[0])):
                return None
            chunk_rows = plist.get_chunk()[0]
            chunks = []
            ds.chunk_iter(lambda info: chunks.append((info.chunk_offset[0], info.byte_offset,
                                                      info.size)))
            chunks.sort()
            want = np.arange(0, n_rows, chunk_rows)
            got = np.array(chunks, np.int64).reshape(-1, 3)
            if (len(got) != len(want) or (got[:, 0] != want).any()
                    or (got[:, 2] != chunk_rows * dtype.itemsize).any()
                    or (got[:, 1] % dtype.itemsize).any() or (got[:, 1] + got[:, 2] > size).any()):
                return None
            offsets[name] = got[:, 1]
        try:
            with open(file.filename, "rb") as fh:  # the map keeps its own descriptor
                fmap = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)  # writable views
        except (OSError, ValueError):
            return None
        return cls(fmap, {k: np.dtype(v) for k, v in dtypes.items()}, offsets, chunk_rows,
                   partial(HDF5Rows, file.filename, datasets, dtypes, n_rows, block_rows))

    def _view(self, name: str, chunk: int, row: int, rows: int) -> np.ndarray:
        dtype = self._dtypes[name]
        return np.frombuffer(self._map, dtype, rows, int(self._offsets[name][chunk]) + row * dtype.itemsize)

    def read(self, start: int, n: int) -> dict:
        """Rows ``start .. start+n-1``: views of the map inside one chunk; a block across
        chunk boundaries goes through `HDF5Rows` (copying it out of the map measured slower,
        7.6 against 6.3 ns/row, validated: the copy faults the pages in as well)."""
        chunk, row = divmod(start, self._chunk_rows)
        if row + n <= self._chunk_rows:
            return {name: self._view(name, chunk, row, n) for name in self._dtypes}
        if self._spanning is None:
            self._spanning = self._make_spanning()
        return self._spanning.read(start, n)

    def release(self, end: int) -> None:
        """Hand back the pages of the chunks wholly before row `end`, RELEASE_BYTES at a time
        (one ``madvise`` per run of adjacent chunks; 0.5-0.6 ms per 16 MiB of faulted pages
        here, as much as unmapping them). Views of
        them stay valid: a later access reads the page again from the file."""
        done = end // self._chunk_rows
        for chunk in range(self._released, done):
            for name, dtype in self._dtypes.items():
                first = int(self._offsets[name][chunk])
                self._pending.append((first, first + self._chunk_rows * dtype.itemsize))
                self._pending_bytes += self._chunk_rows * dtype.itemsize
        self._released = max(self._released, done)
        if self._pending_bytes < RELEASE_BYTES:
            return
        self._pending.sort()
        runs = [list(self._pending[0])]
        for first, last in self._pending[1:]:
            if first <= runs[-1][1]:
                runs[-1][1] = max(runs[-1][1], last)
            else:
                runs.append([first, last])
        for first, last in runs:
            first = first // mmap.PAGESIZE * mmap.PAGESIZE
            self._map.madvise(mmap.MADV_DONTNEED, first, min(last, len(self._map)) - first)
        self._pending, self._pending_bytes = [], 0

    def close(self) -> None:
        """Hand back every page of the map now (its stream ended, or the reader closes), not
        whenever the last view of it is collected; views stay valid."""
        self._map.madvise(mmap.MADV_DONTNEED, 0, len(self._map))
        self._pending, self._pending_bytes = [], 0
        if self._spanning is not None:
            self._spanning.close()


class HDF5Rows:
    """Rows read by ``H5Dread`` (h5py's low-level ``DatasetID.read``, dataspaces and memory
    types made once: ``Dataset.read_direct`` costs ~0.1 ms more per call) into buffers
    allocated once."""

    def __init__(self, path, datasets: dict, dtypes: dict, n_rows: int, block_rows: int):
        rows = min(block_rows, n_rows)
        self._path = path
        self._datasets = datasets
        self._buffers = {k: np.empty(rows, dt) for k, dt in dtypes.items()}
        self._mtypes = {k: memory_type(dt) for k, dt in dtypes.items()}
        self._fspaces = {k: ds.get_space() for k, ds in datasets.items()}
        self._mspace, self._mspace_rows = h5py.h5s.create_simple((rows,)), rows

    def read(self, start: int, n: int) -> dict:
        """Rows ``start .. start+n-1`` in the buffers (`E3Error` if the file cannot be read)."""
        if n != self._mspace_rows:  # the last block
            self._mspace, self._mspace_rows = h5py.h5s.create_simple((n,)), n
        cols = {k: b[:n] for k, b in self._buffers.items()}
        for k, ds in self._datasets.items():
            try:
                self._fspaces[k].select_hyperslab((start,), (n,))
                ds.read(self._mspace, self._fspaces[k], cols[k], mtype=self._mtypes[k])
            except (OSError, RuntimeError) as exc:
                raise E3Error(f"cannot read rows {start}..{start + n - 1}: truncated or corrupt "
                              f"file ({exc})", where=f"{self._path} /requests/{k}",
                              fix="regenerate the trace") from None
        return cols

    def release(self, end: int) -> None:
        """Nothing to hand back: the buffers are reused."""

    def close(self) -> None:
        """Nothing to close: the buffers go with the object."""
