"""The per-policy kernels of ``sim.kernel``: each binds its own router, and each is loaded
from Numba's cache by a new process instead of being compiled again (a variant made by
copying a function with other globals must not lose the cache: a first compile is 12-20 s).
Their results are checked against the pure-Python reference in ``test_reference.py``."""
import json
import subprocess
import sys

from e3fast.router.policies import CHOOSERS
from e3fast.sim import kernel as K
from e3fast.sim.state import POLICIES, POLICY_ID

_CHILD = """
import json, sys
from e3fast.runner import ensure_compiled
from e3fast.sim import kernel as K
from e3fast.sim.state import POLICY_ID
ensure_compiled(sys.argv[1])
stats = K.KERNELS[POLICY_ID[sys.argv[1]]].stats
print(json.dumps({"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values())}))
"""


def test_one_kernel_per_policy_with_its_router():
    assert len(K.KERNELS) == len(POLICIES) == len(CHOOSERS)
    for name, pid in POLICY_ID.items():
        kernel = K.KERNELS[pid]
        assert kernel.py_func.__globals__["POLICY"] == pid
        assert kernel.py_func.__globals__["choose"] is CHOOSERS[pid]
        assert kernel.py_func.__qualname__ == f"run_segment_{name}"
    assert len({k.py_func.__qualname__ for k in K.KERNELS}) == len(POLICIES)  # own cache files


def _load_in_new_process(policy):
    out = subprocess.run([sys.executable, "-c", _CHILD, policy], capture_output=True, text=True,
                         timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_new_process_loads_the_kernel_from_the_cache():
    _load_in_new_process("jsq")  # compiles it if no earlier test (or run) has
    second = _load_in_new_process("jsq")
    assert second == {"hits": 1, "misses": 0}
