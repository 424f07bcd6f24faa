"""JSON-safe copies of results: NumPy scalars become Python numbers, and non-finite floats
(which JSON cannot hold) become None or a string, as the output format wants."""
import math

import numpy as np


def json_safe(obj, nonfinite: str = "null"):
    """Copy of `obj` (dicts, lists, tuples, scalars) that `json.dumps` accepts.

    ``nonfinite="null"``: NaN and infinities become None; ``"string"``: "nan", "inf", "-inf".
    """
    if isinstance(obj, dict):
        return {str(k): json_safe(v, nonfinite) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, nonfinite) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        if nonfinite == "null":
            return None
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj
