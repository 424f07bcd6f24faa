"""Reference-count-free views of the state arrays for the duration of one kernel call.

Numba reference-counts every array it takes out of a tuple. In a loop as branchy as the
event loop, its pruning pass cannot remove those counts, and the atomic increments and
decrements cost more than the simulation itself (measured: about 60% of the run time).
``borrow(t)`` returns the same named tuple whose arrays are views *without* an owner
(null meminfo): accessing them costs nothing. They are only valid while the caller holds
the original arrays, which is true for the whole ``run_segment`` call that creates them.
"""
from numba import njit

from ..numba_private import borrow_array


def make_borrow(cls):
    """A jitted ``borrow(t)`` for the NamedTuple class `cls` whose fields are all arrays."""
    args = ", ".join(f"borrow_array(t.{name})" for name in cls._fields)
    namespace = {"cls": cls, "borrow_array": borrow_array}
    exec(f"def borrow(t):\n    return cls({args})\n", namespace)  # noqa: S102 (fixed template)
    return njit(inline="always")(namespace["borrow"])
