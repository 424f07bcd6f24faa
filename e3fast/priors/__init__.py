"""MLPerf-derived service-time priors per device type and model (see docs/PRIORS.md).

`load_priors()` returns the packaged `PriorTable`; `python -m e3fast.priors.derive`
regenerates it from the raw MLPerf rows in `data/`.
"""
from .table import MODELS, NOTICE, PriorTable, load_priors

__all__ = ["MODELS", "NOTICE", "PriorTable", "load_priors"]
