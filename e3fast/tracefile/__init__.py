"""Trace files (HDF5, format v1): schema, writer, streaming reader and validator.

See docs/TRACE_FORMAT.md for the layout.
"""
from .. import numba_private  # noqa: F401  (first: Numba version check, cache fingerprint)
from .reader import Block, TraceReader, check_block, check_env, open_trace, read_env, validate_trace
from .schema import DEFAULT_CHUNK_ROWS, MAX_TOKENS, REQUEST_FIELDS, SCHEMA_VERSION, Env
from .writer import TraceWriter, write_env, write_trace

__all__ = ["Block", "Env", "TraceReader", "TraceWriter", "open_trace", "read_env", "validate_trace",
           "write_env", "write_trace", "check_block", "check_env", "REQUEST_FIELDS", "SCHEMA_VERSION",
           "DEFAULT_CHUNK_ROWS", "MAX_TOKENS"]
