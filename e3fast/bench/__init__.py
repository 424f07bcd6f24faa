"""Benchmark helpers (not used by the simulator itself).

* ``limit``: the simplest possible Numba SECT loop over a trace (no events, no metrics): the
  practical speed limit the kernel is compared with.
* ``micro``: small jitted drivers that call one kernel building block N times (routing
  decision, estimator update, detector update, service-time evaluation).
* ``peer_simpy``: the same queueing model written plainly in SimPy (the peer comparison).
* ``memory``: run a replay in a fresh subprocess and report its peak resident memory.
* ``scaling``: ``python -m e3fast.bench.scaling``, throughput versus devices and trace length.

See docs/PERFORMANCE.md for the numbers and how to reproduce them.
"""
from .. import numba_private  # noqa: F401  (first: Numba version check, cache fingerprint)
