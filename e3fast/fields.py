"""Named indices: a group of array columns (state scalars, slot fields, detector columns,
metric counters, tunables) declared once by name, its index constants derived.

``declare(globals(), "IV_", ("block_pos", "env_pos"), count="N_IVAR")`` sets the module
constants ``IV_BLOCK_POS = 0``, ``IV_ENV_POS = 1`` and ``N_IVAR = 2`` and returns the names.
Module-level ints are compile-time constants in Numba, so kernels index with them at no
cost; adding a column is one edit (its name in the declaration).
"""


def declare(namespace: dict, prefix: str, names, count: str | None = None) -> tuple:
    """Set ``namespace[prefix + NAME] = i`` for the i-th of `names` (upper-cased, '-' as '_') and, if
    `count` is given, ``namespace[count] = len(names)``; returns `names` as a tuple. A
    name declared twice, or a constant that already exists with another value, is an error
    (two groups sharing a prefix would otherwise overwrite each other silently)."""
    names = tuple(names)
    if len(set(names)) != len(names):
        raise ValueError(f"{prefix}: a name is declared twice in {names}")
    constants = {prefix + n.upper().replace("-", "_"): i for i, n in enumerate(names)}
    if count is not None:
        constants[count] = len(names)
    for key, value in constants.items():
        if namespace.get(key, value) != value:
            raise ValueError(f"{key} is declared twice ({namespace[key]} and {value})")
    namespace.update(constants)
    return names
