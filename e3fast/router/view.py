"""What a router knows: the information model, in one place (docs/MODEL.md "What a router
knows").

At dispatch a router sees the request's arrival time, model, class and prompt tokens, the
fleet (which devices are online and what they host), its own queue bookkeeping (the
estimates it queued, when each device's current request started) and what *completed*
requests revealed (their service times and, for an LLM, their output length). It does not
see true device speeds, the future, or the output length of the request it is routing:

* ``length_info = "hidden"`` (the default): an LLM request's output length is hidden. The
  router is handed a prediction instead: ``seen_out_tokens`` returns the running mean of the
  output lengths of the completed requests of the same (model, class), and ``out_spread``
  their standard deviation (E3's risk term and remaining-work model use it). A diffusion
  request's number of denoising steps is a request parameter: it stays visible.
* ``length_info = "exact"``: every router is handed the true output length (the model of
  e3fast before issue 15; it reproduces those results bit for bit).

The Oracle (``router.policies.choose_oracle``) is not a router of this model: it always sees
the true output length, the true current slowdowns and the true queue state, whatever
``length_info`` says, and summaries and tables label it "full".

The length predictor (kernel-maintained, one per (model, class), learned from completions
only, the same for every policy; ``learn_length``):

* a running mean and variance (Welford's update) with a floor ``1 / LENGTH_MEMORY`` on the
  weight of a new observation: an exact running mean over the first LENGTH_MEMORY
  completions of the pair, then an exponentially weighted one with that memory (it follows
  a workload whose lengths change, and the mean of a heavy-tailed class with coefficient of
  variation 2.3, the Azure coding trace, still has ~4 % standard error);
* the start value, before any completion, is ``LENGTH_PRIOR`` (mean, standard deviation)
  for every LLM (model, class), counting as one observation: the output-length statistics of
  the packaged Azure 2023 *conversation* class (``tracefile.workload``, the ``chat`` class),
  "a typical chat answer". It is deliberately not the per-class truth of the packaged
  workload (that would hand the router the distribution it is meant to learn); one
  completion of the pair already carries half the weight.
* The prediction does not use the prompt length: in the Azure 2023 data prompt and output
  lengths are nearly independent (normal-scores correlation 0.01 / -0.01, see
  ``tracefile.workload``); the prompt enters every router's cost through the prefill time.
"""
import functools

import numpy as np
from numba import njit

from ..sim.state import IV_LENGTH_INFO
from ..tracefile.schema import MODEL_KIND_LLM

LENGTH_INFO = ("hidden", "exact")  #: the values of --length-info, by id
LENGTH_HIDDEN, LENGTH_EXACT = range(len(LENGTH_INFO))
LENGTH_INFO_ID = {name: i for i, name in enumerate(LENGTH_INFO)}
DEFAULT_LENGTH_INFO = "hidden"
LENGTH_MEMORY = 4096.0  #: completions of a (model, class) the predictor averages over at most
LENGTH_PRIOR_WEIGHT = 1.0  #: the start value counts as this many completions
ORACLE_INFORMATION = "full"  #: what summaries and tables call the Oracle's information


@functools.cache
def length_prior() -> tuple:
    """(mean, standard deviation) of the output tokens of the packaged ``chat`` class (Azure
    2023 conversation trace), as sampled (midpoint rule on the uniforms): the predictor's
    start value for every LLM (model, class)."""
    from ..tracefile.workload import sample_out
    u = (np.arange(1 << 16) + 0.5) / (1 << 16)
    x = sample_out("chat", u).astype(np.float64)
    return float(x.mean()), float(x.std())


def length_arrays(n_models: int, n_classes: int) -> dict:
    """The predictor's state at the start of a replay: ``len_n`` (observations, incl. the
    prior's weight), ``len_mean`` and ``len_var`` (tokens, tokens^2), each [models, classes]."""
    mean, sd = length_prior()
    shape = (n_models, n_classes)
    return dict(len_n=np.full(shape, LENGTH_PRIOR_WEIGHT), len_mean=np.full(shape, mean),
                len_var=np.full(shape, sd * sd))


def information(policy: str, length_info: str) -> str:
    """What `policy` saw of the requests' output lengths in a run: "full" for the Oracle and
    the lower-bound reference (it uses the true lengths and speeds), else `length_info`."""
    return ORACLE_INFORMATION if policy in ("oracle", "lower-bound") else length_info


@njit(cache=True, inline="always")
def learn_length(st, model, klass, n_out):
    """A completed LLM request of (model, klass) revealed its output length `n_out`: one
    weighted Welford step of the pair's mean and variance."""
    n = st.len_n[model, klass] + 1.0
    st.len_n[model, klass] = n
    # = max(1 / n, 1 / LENGTH_MEMORY), with a division only in the pair's first completions
    w = 1.0 / n if n <= LENGTH_MEMORY else 1.0 / LENGTH_MEMORY
    delta = n_out - st.len_mean[model, klass]
    st.len_mean[model, klass] += w * delta
    st.len_var[model, klass] = (1.0 - w) * (st.len_var[model, klass] + w * delta * delta)


@njit(cache=True, inline="always")
def lengths_hidden(world, st, model):
    """True when a router may not see the output length of a request of `model`."""
    return st.ivar[IV_LENGTH_INFO] == LENGTH_HIDDEN and world.model_kind[model] == MODEL_KIND_LLM


@njit(cache=True, inline="always")
def seen_out_tokens(world, st, model, klass, n_out):
    """The output tokens (or denoising steps) a router is handed for a request: its true
    `n_out` unless lengths are hidden, else the predicted mean of (model, klass)."""
    if lengths_hidden(world, st, model):
        return st.len_mean[model, klass]
    return float(n_out)


@njit(cache=True, inline="always")
def out_spread(world, st, model, klass):
    """Standard deviation (tokens) of the router's output-length prediction for a request of
    (model, klass): 0 when the length is seen."""
    if lengths_hidden(world, st, model):
        return np.sqrt(st.len_var[model, klass])
    return 0.0
