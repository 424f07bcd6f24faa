"""Packaging for e3fast (setuptools). `pip install -e .[dev]` is what the Makefile runs."""
from setuptools import find_packages, setup

setup(
    name="e3fast",
    version="0.1.0",
    description="Numba-compiled discrete-event trace simulator for routing generative-AI "
                "requests across heterogeneous edge devices (E^3-Agent).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["e3fast", "e3fast.*"]),
    package_data={"e3fast.priors": ["data/*.csv", "data/*.md", "data/*.json"],
                  "e3fast.tracefile": ["data/*"]},
    install_requires=[
        "numpy>=1.26",
        # numba and llvmlite: internals are used (e3fast/numba_private.py, whose CHECKED_NUMBA
        # says the same); bounds at the versions the suite passed on (`make check-deps`:
        # 0.60.0/0.43.0 and 0.68.1/0.50.0).
        # h5py's low-level API (h5d, h5t, h5s, h5a) is public and documented: no upper bound.
        "numba>=0.60,<0.69",
        "llvmlite>=0.43,<0.51",
        "h5py>=3.10",
        "scipy>=1.11",
        "openai>=1.30",
        "argparse-dataclass>=2.0",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        "dask[distributed]>=2024.1",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-benchmark>=4", "hypothesis>=6.100", "simpy>=4.1", "psutil>=5.9"],
    },
    entry_points={"console_scripts": ["e3fast=e3fast.cli:entry"]},
    license="Apache-2.0",
)
