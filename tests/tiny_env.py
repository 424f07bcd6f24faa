"""A tiny valid environment for trace tests (importable as `tiny_env` from any test)."""
import numpy as np

from e3fast.tracefile.schema import MODEL_KIND_DIFFUSION, MODEL_KIND_LLM, Env


def make_tiny_env() -> Env:
    """2 device types, 3 models (2 LLMs + 1 diffusion), 3 classes, 3 devices, drift and semantic windows."""
    T, M = 2, 3
    avail = np.array([[True, True, False], [True, True, True]])
    rng = np.random.default_rng(0)
    a, b, c = (np.where(avail, rng.uniform(0.01, 0.2, (T, M)), np.nan) for _ in range(3))
    return Env(
        models=["gptj-6b", "llama3.1-8b", "sdxl"],
        model_kind=np.array([MODEL_KIND_LLM, MODEL_KIND_LLM, MODEL_KIND_DIFFUSION], np.int8),
        classes=["chat", "code", "image"],
        device_types=["jetson-orin", "l4"],
        prior_a=a, prior_b=b, prior_c=c,
        prior_sigma=np.where(avail, 0.1, np.nan),
        prior_available=avail,
        device_type=np.array([0, 1, 1], np.int32),
        hosts=np.array([[True, True, False], [True, False, True], [False, True, True]]),
        join_s=np.array([0.0, 0.0, 50.0]),
        leave_s=np.array([np.inf, 80.0, np.inf]),
        drift_ptr=np.array([0, 2, 2, 3], np.int64),
        drift_t_s=np.array([10.0, 20.0, 5.0]),
        drift_mult=np.array([1.0, 1.5, 2.0]),
        sem_device_type=np.array([0], np.int32),
        sem_klass=np.array([1], np.int16),
        sem_t0_s=np.array([30.0]),
        sem_t1_s=np.array([np.inf]),
        sem_factor=np.array([3.0]),
        prior_provenance='{"source": "test"}',
        extra={"note": "tiny", "n": 3},
    )
