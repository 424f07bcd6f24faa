"""The embedded, deterministic rule controller (the default slow path).

Rules, applied at every checkpoint in this order:

1. a detector alarm on device d: calibrate every model d hosts (prior with inflated
   uncertainty, so the drifted speed is relearned within a few requests);
2. a (device, class) whose recent stutter rate exceeds ``stutter_bound`` gets its risk gate
   closed; a gate closed more than ``reopen_after_s`` ago is re-opened to probe recovery;
3. a device joined: raise exploration to ``explore_after_join`` so the newcomer is tried;
   restore the default exploration ``explore_hold_s`` after the last join.
"""
from ..router.config import DEFAULTS, INDEX


class RuleController:
    """Deterministic rules over the observation; state: when gates closed, last join."""
    name = "rule"

    def __init__(self, stutter_bound: float = 0.3, reopen_after_s: float = 120.0,
                 explore_after_join: float = 1.5, explore_hold_s: float = 60.0,
                 inflate: float = 10.0):
        self.stutter_bound = stutter_bound
        self.reopen_after_s = reopen_after_s
        self.explore_after_join = explore_after_join
        self.explore_hold_s = explore_hold_s
        self.inflate = inflate
        self.closed_at = {}       # (device, class) -> time the gate was closed (s)
        self.last_join_s = None
        self.exploring = False

    def decide(self, obs: dict, call) -> dict:
        """Issue tool calls through `call(name, arguments)` for observation `obs`."""
        now = obs["t_s"]
        alarm = obs["alarm"]
        devices = obs["devices"]
        if alarm["kind"] in ("cusum", "page-hinkley"):
            d = alarm["device"]
            for model in devices[d]["models"]:
                call("calibrate", {"device": d, "model": model, "inflate": self.inflate})
        for dev in devices:
            for klass, rate in dev["stutter_by_class"].items():
                key = (dev["device"], klass)
                if key in self.closed_at:
                    if now - self.closed_at[key] >= self.reopen_after_s:
                        call("set_risk_gate", {"device": key[0], "klass": klass,
                                               "closed": False})
                        del self.closed_at[key]
                elif dev["online"] and rate > self.stutter_bound:
                    call("set_risk_gate", {"device": key[0], "klass": klass, "closed": True})
                    self.closed_at[key] = now
        if alarm["kind"] == "join":
            self.last_join_s = now
            if not self.exploring:
                call("configure_router", {"parameter": "explore",
                                          "value": self.explore_after_join})
                self.exploring = True
        elif self.exploring and now - self.last_join_s >= self.explore_hold_s:
            call("configure_router", {"parameter": "explore",
                                      "value": float(DEFAULTS[INDEX["explore"]])})
            self.exploring = False
        return {}
