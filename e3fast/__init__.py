"""e3fast: a Numba-compiled discrete-event trace simulator for edge generative inference.

The public API mirrors the command line (`e3fast --help`): every subcommand is a thin
parser over a function here or in a subpackage.
"""
__version__ = "0.1.0"
