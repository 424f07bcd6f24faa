"""Slow-path meta-controllers: they act only through the tools of ``control.tools``.

``make_controller(name, ...)`` returns one of: ``rule`` (embedded, deterministic, the
default), ``llm`` (an OpenAI-compatible endpoint with tool calling, falling back to rule),
``replay`` (re-applies a recorded control.jsonl), ``none`` (no checkpoints: ablation).
"""
from ..errors import E3Error
from .rule import RuleController


class NoController:
    """The ablation: checkpoints are not even held."""
    name = "none"

    def decide(self, obs, call):
        return {}


def make_controller(name: str, *, transcript=None, base_url=None, model=None,
                    timeout_s: float = 20.0):
    """A controller by name (see the module docstring)."""
    if name == "rule":
        return RuleController()
    if name == "none":
        return NoController()
    if name == "replay":
        from .replay import ReplayController
        return ReplayController(transcript)
    if name == "llm":
        from .llm import LLMController
        return LLMController(base_url=base_url, model=model, timeout_s=timeout_s)
    raise E3Error(f"unknown controller {name!r}", where="--controller",
                  fix="choose one of rule, llm, replay, none")
