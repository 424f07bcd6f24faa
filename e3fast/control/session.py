"""A replay's slow path: checkpoints, the observation, tool calls and delayed actions.

At each checkpoint the runner calls ``ControlSession.checkpoint``: it builds the compact
observation, lets the controller call tools (validated, capped per checkpoint, all
recorded), and returns the accepted state-changing calls as actions that take effect
``decision_delay_s`` later in simulated time (``apply``). The log is what control.jsonl holds.
"""


from ..detect.detectors import reset_detectors
from ..router.config import INDEX, NAMES
from ..router.estimators import (inflate_pair, predict_decode, predict_prefill, reset_pair,
                                 uncertainty)
from ..sim.metrics import C_LLM_COMPLETED, C_STUTTER
from ..sim.state import DET_LAST_RESID
from .tools import MAX_CALLS_PER_CHECKPOINT, ToolError, validate_call


def build_observation(env, world, st, met, now: float, alarm: dict) -> dict:
    """Compact, JSON-able view of the fleet for the controller (times in seconds)."""
    devices = []
    for d in range(world.device_type.shape[0]):
        models = {}
        for m, name in enumerate(env.models):
            if world.hosts[d, m]:
                models[name] = {
                    "prefill_s_at_1k_in": round(float(predict_prefill(st, d, m, 1000)), 4),
                    "per_token_s": round(float(predict_decode(st, d, m, 100)) / 100.0, 5),
                    "rel_uncertainty": round(uncertainty(st, d, m), 4),
                    "observations": int(st.n_obs[d, m])}
        devices.append({
            "device": d, "type": env.device_types[int(world.device_type[d])],
            "online": bool(st.online[d]), "queue": int(st.q_len[d]), "models": models,
            "last_residual": round(float(st.det[d, DET_LAST_RESID]), 3),
            "stutter_by_class": {k: round(float(st.stutter_ewma[d, j]), 3)
                                 for j, k in enumerate(env.classes)},
            "class_factor": {k: round(float(st.class_factor[d, j]), 3)
                             for j, k in enumerate(env.classes)},
            "gates_closed_until_s": {k: round(float(st.gate_until_s[d, j]), 3)
                                     for j, k in enumerate(env.classes)
                                     if st.gate_until_s[d, j] > now}})
    llm = int(met.counts[C_LLM_COMPLETED])
    alarm = dict(alarm)
    alarm["model"] = env.models[alarm["model"]] if alarm.get("model", -1) >= 0 else None
    return {"t_s": round(now, 6), "alarm": alarm, "devices": devices,
            "fleet_stutter_rate": round(int(met.counts[C_STUTTER]) / llm, 4) if llm else 0.0,
            "router": {n: float(st.cfg[i]) for i, n in enumerate(NAMES)}}


class ControlSession:
    """Checkpoints of one replay with controller `ctl` (see ``control.make_controller``).
    `disabled`: tool names switched off (rejected like unknown tools; the ablation)."""

    def __init__(self, ctl, env, world, decision_delay_s: float,
                 max_calls: int = MAX_CALLS_PER_CHECKPOINT, disabled=()):
        self.ctl, self.env, self.world = ctl, env, world
        self.delay = float(decision_delay_s)
        self.max_calls = max_calls
        self.disabled = frozenset(disabled)
        self.log = []
        self.seq = 0
        self.stats = {"checkpoints": 0, "controller_calls": 0, "tool_calls": 0,
                      "tool_calls_rejected": 0, "controller_fallbacks": 0,
                      "llm_tokens": {"prompt": 0, "completion": 0}}

    def checkpoint(self, st, met, now: float, alarm: dict) -> list:
        """Run the controller at a checkpoint; returns the actions to apply later."""
        obs = build_observation(self.env, self.world, st, met, now, alarm)
        record = {"checkpoint": len(self.log), "t_s": now, "alarm": obs["alarm"],
                  "observation": obs, "controller": self.ctl.name, "calls": [],
                  "fallback": None}
        actions = []
        n_dev = self.world.device_type.shape[0]

        def call(name, args):
            entry = {"tool": name, "arguments": args}
            record["calls"].append(entry)
            self.stats["tool_calls"] += 1
            if len(record["calls"]) > self.max_calls:
                return self._reject(entry, f"at most {self.max_calls} tool calls per "
                                           "checkpoint; this call was ignored")
            try:
                clean = validate_call(name, args, n_dev, self.env.models, self.env.classes,
                                      self.disabled)
            except ToolError as exc:
                return self._reject(entry, str(exc))
            entry.update(accepted=True, message="ok")
            if name == "get_status":
                entry["effect_s"] = now
                return {"ok": True, "status": obs}
            self.seq += 1
            entry["effect_s"] = now + self.delay
            actions.append({"tool": name, "arguments": clean, "effect_s": now + self.delay,
                            "seq": self.seq, "checkpoint": record["checkpoint"]})
            return {"ok": True, "message": f"accepted; takes effect at t={now + self.delay:.3f} s"}

        self.stats["checkpoints"] += 1
        self.stats["controller_calls"] += 1
        info = self.ctl.decide(obs, call) or {}
        if info.get("fallback"):
            record["fallback"] = info["fallback"]
            record["controller"] = info.get("decided_by", record["controller"])
            self.stats["controller_fallbacks"] += 1
        for key in ("prompt", "completion"):
            self.stats["llm_tokens"][key] += int(info.get("tokens", {}).get(key, 0))
        self.log.append(record)
        return actions

    def _reject(self, entry, message):
        entry.update(accepted=False, message=message)
        self.stats["tool_calls_rejected"] += 1
        return {"ok": False, "error": message}

    def apply(self, action: dict, st, now: float) -> None:
        """Make an accepted action take effect on the kernel state at time `now`."""
        a = action["arguments"]
        if action["tool"] == "set_risk_gate":
            k = self.env.classes.index(a["klass"])
            st.gate_until_s[a["device"], k] = now + a["hold_s"] if a["closed"] else 0.0
            # the pair's stutter history is stale once gated: start afresh when it re-opens
            st.stutter_ewma[a["device"], k] = 0.0
        elif action["tool"] == "configure_router":
            st.cfg[INDEX[a["parameter"]]] = a["value"]
        elif action["tool"] == "calibrate":
            m = self.env.models.index(a["model"])
            if a["from_prior"]:
                reset_pair(self.world, st, a["device"], m, a["inflate"])
            else:
                inflate_pair(st, a["device"], m, a["inflate"])
            reset_detectors(st.det, a["device"])
        self.log[action["checkpoint"]].setdefault("applied_s", []).append(now)

    def summary(self) -> dict:
        """Counters for summary.json."""
        out = dict(self.stats)
        out["controller"] = self.ctl.name
        if not out["llm_tokens"]["prompt"] and not out["llm_tokens"]["completion"]:
            out["llm_tokens"] = None
        return out


__all__ = ["ControlSession", "build_observation"]
