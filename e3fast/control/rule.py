"""The embedded, deterministic rule controller (the default slow path).

Rules, applied at every checkpoint in this order:

1. a detector alarm on device d: calibrate every model d hosts, keeping the current
   estimate but inflating its uncertainty (``from_prior`` false: restarting from the MLPerf
   prior would also forget the device's learned instance speed; measured in docs/CONTROLLER.md),
   so the drifted speed is relearned within a few requests, unless one of d's
   learned class factors shows a class-specific slowdown (>= ``class_factor_bound``): that
   is the semantic case, answered by rule 2, and recalibrating would only throw away what
   the estimators know about d;
2. a (device, class) whose recent stutter rate exceeds ``stutter_bound`` *and* whose learned
   class factor shows a class-specific slowdown (>= ``class_factor_bound``; a device-wide
   slowdown is the estimators' job, not the gate's) gets its risk gate closed for
   ``gate_hold_s`` simulated seconds; it re-opens by itself (no stale gates), and is closed
   again at a later checkpoint if the class still stutters there;
3. a device joined: raise exploration to ``explore_after_join`` so the newcomer is tried;
   restore the default exploration ``explore_hold_s`` after the last join.
"""
from ..router.config import DEFAULTS, INDEX


class RuleController:
    """Deterministic rules over the observation; state: the last join."""
    name = "rule"

    def __init__(self, stutter_bound: float = 0.3, class_factor_bound: float = 2.0,
                 gate_hold_s: float = 600.0, explore_after_join: float = 1.5,
                 explore_hold_s: float = 60.0, inflate: float = 10.0):
        self.stutter_bound = stutter_bound
        self.class_factor_bound = class_factor_bound
        self.gate_hold_s = gate_hold_s
        self.explore_after_join = explore_after_join
        self.explore_hold_s = explore_hold_s
        self.inflate = inflate
        self.last_join_s = None
        self.exploring = False

    def decide(self, obs: dict, call) -> dict:
        """Issue tool calls through `call(name, arguments)` for observation `obs`."""
        now = obs["t_s"]
        alarm = obs["alarm"]
        devices = obs["devices"]
        if alarm["kind"] in ("cusum", "page-hinkley"):
            d = alarm["device"]
            semantic = max(devices[d]["class_factor"].values()) >= self.class_factor_bound
            if not semantic:  # a class-specific slowdown is gated below, not recalibrated
                for model in devices[d]["models"]:
                    call("calibrate", {"device": d, "model": model, "inflate": self.inflate,
                                       "from_prior": False})
        for dev in devices:
            for klass, rate in dev["stutter_by_class"].items():
                if (dev["online"] and rate > self.stutter_bound
                        and dev["class_factor"][klass] >= self.class_factor_bound
                        and klass not in dev["gates_closed_until_s"]):
                    call("set_risk_gate", {"device": dev["device"], "klass": klass,
                                           "closed": True, "hold_s": self.gate_hold_s})
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
