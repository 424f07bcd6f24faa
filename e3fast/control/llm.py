"""The LLM meta-controller: an OpenAI-compatible chat-completions endpoint with tool calling.

At each checkpoint the model gets ``SYSTEM_PROMPT`` and the observation as JSON, may call
the tools of ``control.tools`` (validated, capped and recorded by the session; rejections go
back to the model as tool messages), and stops by answering without tool calls. Any
endpoint failure (HTTP 429/5xx after bounded retries, timeout, refused connection, an
unreadable reply) makes the embedded ``RuleController`` decide that checkpoint instead;
after ``max_consecutive_failures`` failures in a row the rule decides for the rest of the
run. Malformed, unknown or out-of-range tool calls are rejections, not failures.

Time bound: one checkpoint costs at most ``timeout_s * (max_retries + 1)`` plus the backoff
sleeps (0.2 s, 0.4 s, ...), whatever the endpoint does; after the consecutive-failure
limit the endpoint is not contacted again.

The API key comes from the environment only (E3FAST_LLM_API_KEY, else OPENAI_API_KEY; a
placeholder for local servers that need none) and is scrubbed from everything this module
returns or records.
"""
import json
import math
import os
import time

from ..errors import E3Error
from .rule import RuleController
from .tools import MAX_CALLS_PER_CHECKPOINT, tool_schemas

SYSTEM_PROMPT = ("""\
You are the slow-path meta-controller of an inference router for a heterogeneous edge \
fleet (LLM and diffusion models on devices of different speeds). A fast compiled router \
(E3: shortest expected completion time on online service-time estimates, with exploration \
and a risk penalty) dispatches every request; you are consulted only at checkpoints, when \
a change-point detector fires on a device (cusum, page-hinkley) or a device joins or leaves.

The user message is the observation at the checkpoint, as JSON: t_s (simulated seconds), \
the alarm (kind, device, model, statistic), per device its type, online flag, queue \
length, per hosted model the current estimate (prefill_s_at_1k_in, per_token_s), its \
relative uncertainty and number of observations, last_residual (log of observed / \
predicted service time of the last completion, in standard deviations: about 0 when the \
estimate is right, positive when slower than predicted), stutter_by_class (recent fraction \
of requests slower than the stutter threshold), class_factor (learned slowdown of each class \
on the device, 1 = none), gates_closed_until_s; fleet_stutter_rate; the \
router parameters.

Act only through the tools. Typical good actions:
- a cusum or page-hinkley alarm on device d: calibrate the models d hosts (the estimate is \
reset to its prior with inflated uncertainty and relearned within a few requests);
- a (device, class) with a stutter rate well above the others (e.g. > 0.3): close its risk \
gate; re-open gates whose device has recovered;
- a device joined: raise explore (e.g. 1.5) so the newcomer is tried; lower it back to \
0.5 later.
Doing nothing is fine when nothing is wrong. Actions take effect after a short decision \
delay. At most %d tool calls per checkpoint; a rejected call comes back with the reason: \
fix it or drop it. When you are done, answer with one short sentence and no tool call.""" \
                 % MAX_CALLS_PER_CHECKPOINT)

MAX_ROUNDS = 4          # model replies per checkpoint (each may carry several tool calls)
MAX_RAW_CHARS = 1000    # malformed arguments are recorded up to this length
PLACEHOLDER_KEY = "not-needed"


class _Failure(Exception):
    """The endpoint failed for this checkpoint (the message is the recorded reason)."""


def _finite(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise ValueError(f"non-finite number {s}")
    return v


def _reject_constant(s: str):
    raise ValueError(f"non-standard JSON constant {s}")


def parse_arguments(raw):
    """Tool-call arguments as the model sent them: a JSON object string becomes a dict; a
    dict passes; anything else (bad JSON, NaN/Infinity, huge nesting) stays a (truncated)
    string, which the tool validation rejects with a message the model can act on."""
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        return repr(raw)[:MAX_RAW_CHARS]
    try:
        return json.loads(raw or "{}", parse_float=_finite, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return raw[:MAX_RAW_CHARS]


class LLMController:
    """Controller "llm" (see the module docstring). `timeout_s`: seconds per HTTP request;
    `max_retries`: extra attempts on 429/5xx/timeout/connection errors; `temperature`: sent
    to the endpoint (None: not sent)."""
    name = "llm"
    #: tool names switched off in this run (set by ``runner.replay``): not offered
    disabled_tools = frozenset()

    def __init__(self, base_url=None, model=None, timeout_s: float = 20.0, max_retries: int = 2,
                 max_consecutive_failures: int = 3, backoff_s: float = 0.2,
                 temperature: float | None = 0.0):
        import openai
        base_url = base_url or os.environ.get("E3FAST_LLM_BASE_URL")
        model = model or os.environ.get("E3FAST_LLM_MODEL")
        if not base_url:
            raise E3Error("the llm controller needs an endpoint", where="--llm-base-url",
                          fix="pass --llm-base-url http://127.0.0.1:8000/v1 (any "
                              "OpenAI-compatible server) or set E3FAST_LLM_BASE_URL")
        if not base_url.startswith(("http://", "https://")):
            raise E3Error(f"endpoint must be an http(s) URL, got {base_url!r}",
                          where="--llm-base-url", fix="e.g. http://127.0.0.1:8000/v1")
        if not model:
            raise E3Error("the llm controller needs a model name", where="--llm-model",
                          fix="pass --llm-model NAME (as the server lists it) or set "
                              "E3FAST_LLM_MODEL")
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise E3Error(f"timeout must be a positive number of seconds, got {timeout_s}",
                          where="--llm-timeout-s", fix="use e.g. 20")
        if max_retries < 0 or max_consecutive_failures < 1:
            raise E3Error("max_retries must be >= 0 and max_consecutive_failures >= 1",
                          where="LLMController", fix="use the defaults (2 and 3)")
        self._secret = os.environ.get("E3FAST_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self._openai = openai
        self.client = openai.OpenAI(base_url=base_url, api_key=self._secret or PLACEHOLDER_KEY,
                                    timeout=timeout_s, max_retries=0)
        self.base_url, self.model, self.timeout_s = base_url, model, float(timeout_s)
        self.max_retries, self.max_failures = int(max_retries), int(max_consecutive_failures)
        self.backoff_s, self.temperature = float(backoff_s), temperature
        self.budget_s = self.timeout_s * (self.max_retries + 1) + sum(
            self.backoff_s * 2 ** k for k in range(self.max_retries))
        self.rule = RuleController()
        self.failures = 0          # consecutive failed checkpoints
        self.disabled = None       # reason, once the rule decides for the rest of the run

    def __repr__(self):
        return f"LLMController(base_url={self.base_url!r}, model={self.model!r})"

    def decide(self, obs: dict, call) -> dict:
        """Let the model act at this checkpoint, or the rule controller if it cannot."""
        tokens = {"prompt": 0, "completion": 0}
        if self.disabled:
            return self._fallback(obs, call, tokens, "llm disabled for the rest of the run "
                                  f"after {self.max_failures} consecutive failures "
                                  f"(last: {self.disabled})")
        n_calls = [0]
        try:
            self._converse(obs, call, tokens, n_calls)
        except _Failure as exc:
            self.failures += 1
            reason = self._scrub(str(exc))
            if n_calls[0]:
                reason += f" (after {n_calls[0]} tool call(s) by the model)"
            if self.failures >= self.max_failures:
                self.disabled = reason
                reason += (f"; {self.failures} consecutive failures: the rule controller "
                           "decides for the rest of the run")
            return self._fallback(obs, call, tokens, reason)
        self.failures = 0
        return {"tokens": tokens}

    def _fallback(self, obs, call, tokens, reason):
        self.rule.decide(obs, call)
        return {"fallback": reason, "decided_by": "rule", "tokens": tokens}

    def _converse(self, obs, call, tokens, n_calls):
        """The tool-use loop of one checkpoint; raises _Failure when the endpoint fails."""
        devices = obs["devices"]
        models = list(dict.fromkeys(m for d in devices for m in d["models"]))
        classes = list(devices[0]["stutter_by_class"]) if devices else []
        tools = [t for t in tool_schemas(len(devices), models, classes)
                 if t["function"]["name"] not in self.disabled_tools]  # not offered
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": json.dumps(obs, separators=(",", ":"))}]
        deadline = time.monotonic() + self.budget_s
        for _ in range(MAX_ROUNDS):
            reply = self._complete(messages, tools, deadline)
            try:
                usage = getattr(reply, "usage", None)
                tokens["prompt"] += int(getattr(usage, "prompt_tokens", 0) or 0)
                tokens["completion"] += int(getattr(usage, "completion_tokens", 0) or 0)
            except (TypeError, ValueError):
                pass
            try:
                msg = reply.choices[0].message
                tcs = list(msg.tool_calls or [])
                calls = [(tc.id or f"call_{i}", tc.function.name, tc.function.arguments)
                         for i, tc in enumerate(tcs)]
            except Exception as exc:  # the reply is not a chat completion
                raise _Failure(self._short(f"unreadable reply: {type(exc).__name__}: {exc}")) \
                    from None
            if not calls:
                return
            messages.append({"role": "assistant", "content": msg.content, "tool_calls": [
                {"id": cid, "type": "function", "function": {
                    "name": str(name), "arguments": raw if isinstance(raw, str)
                    else json.dumps(raw)}} for cid, name, raw in calls]})
            for cid, name, raw in calls:
                name = self._scrub(name if isinstance(name, str) else repr(name))
                result = call(name, self._scrub(parse_arguments(raw)))
                n_calls[0] += 1
                messages.append({"role": "tool", "tool_call_id": cid,
                                 "content": json.dumps(result, default=str)})
            if n_calls[0] >= MAX_CALLS_PER_CHECKPOINT:
                return

    def _complete(self, messages, tools, deadline):
        """One chat completion with bounded retries and backoff, within `deadline`."""
        oa = self._openai
        extra = {} if self.temperature is None else {"temperature": self.temperature}
        last, tried = "no time left", 0
        for attempt in range(self.max_retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0.01:
                break
            tried += 1
            try:
                return self.client.chat.completions.create(
                    model=self.model, messages=messages, tools=tools, tool_choice="auto",
                    timeout=min(self.timeout_s, remaining), **extra)
            except oa.APITimeoutError:
                last = f"no reply within {min(self.timeout_s, remaining):.3g} s"
            except oa.APIConnectionError as exc:
                last = f"connection failed: {exc}"
            except oa.APIStatusError as exc:
                last = f"HTTP {exc.status_code}: {exc}"
                if exc.status_code != 429 and exc.status_code < 500:
                    raise _Failure(self._short(last)) from None  # 4xx: retrying won't help
            except Exception as exc:  # garbage body, protocol errors: not retried
                raise _Failure(self._short(f"unreadable reply: {type(exc).__name__}: {exc}")) \
                    from None
            if attempt < self.max_retries:
                time.sleep(max(0.0, min(self.backoff_s * 2 ** attempt,
                                        deadline - time.monotonic())))
        raise _Failure(self._short(f"endpoint failed after {tried} attempt(s): {last}"))

    def _short(self, text: str) -> str:
        """A reason for the log: key scrubbed first, then cut to 300 characters."""
        return self._scrub(text)[:300]

    def _scrub(self, obj):
        """`obj` with every occurrence of the API key replaced (strings, lists, dicts)."""
        if not self._secret:
            return obj
        if isinstance(obj, str):
            return obj.replace(self._secret, "[redacted]")
        if isinstance(obj, dict):
            return {self._scrub(k): self._scrub(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self._scrub(v) for v in obj]
        return obj
