# Imported first: it checks the Numba version and fingerprints compiled code (docs/CACHE.md).
from .. import numba_private  # noqa: F401
