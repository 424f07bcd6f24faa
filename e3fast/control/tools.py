"""The slow path's control surface: a short list of tools with JSON schemas and bounds.

The same schemas are sent to an LLM (OpenAI "tools" format) and used to validate every
call, whoever makes it. ``validate_call`` turns a (name, arguments) pair into normalised
arguments or raises ``ToolError`` with a message the caller can act on.
"""
import math

from ..errors import E3Error
from ..router.config import HIGH, INDEX, LOW, NAMES, PARAMS

MAX_CALLS_PER_CHECKPOINT = 8
MAX_INFLATE = 1000.0
MIN_HOLD_S, DEFAULT_HOLD_S, MAX_HOLD_S = 1.0, 600.0, 86400.0


class ToolError(ValueError):
    """A rejected tool call; the message says what to change."""


def tool_schemas(device_count: int, models: list, classes: list) -> list:
    """OpenAI-style tool definitions for a fleet of `device_count` devices."""
    dev = {"type": "integer", "minimum": 0, "maximum": device_count - 1,
           "description": "device index"}
    return [
        {"type": "function", "function": {
            "name": "get_status",
            "description": "Return the current observation (devices, estimates, stutter).",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}},
        {"type": "function", "function": {
            "name": "set_risk_gate",
            "description": "Close (or re-open) the risk gate of one device for one semantic "
                           "class: the E3 router avoids closed pairs unless no open device "
                           "can serve the request. A closed gate re-opens by itself after "
                           "hold_s simulated seconds.",
            "parameters": {"type": "object", "properties": {
                "device": dev,
                "klass": {"type": "string", "enum": list(classes), "description": "class"},
                "closed": {"type": "boolean"},
                "hold_s": {"type": "number", "minimum": MIN_HOLD_S, "maximum": MAX_HOLD_S,
                           "description": f"seconds the gate stays closed (default "
                                          f"{DEFAULT_HOLD_S:g})"}},
                "required": ["device", "klass", "closed"], "additionalProperties": False}}},
        {"type": "function", "function": {
            "name": "configure_router",
            "description": "Set one router/detector parameter. " + "; ".join(
                f"{p[0]} in [{p[2]}, {p[3]}]: {p[4]}" for p in PARAMS),
            "parameters": {"type": "object", "properties": {
                "parameter": {"type": "string", "enum": list(NAMES)},
                "value": {"type": "number"}},
                "required": ["parameter", "value"], "additionalProperties": False}}},
        {"type": "function", "function": {
            "name": "calibrate",
            "description": "Reset the service-time estimate of (device, model) to its MLPerf "
                           "prior with its uncertainty inflated, so it is relearned fast "
                           "(from_prior false: keep the current estimate, only inflate its "
                           "uncertainty).",
            "parameters": {"type": "object", "properties": {
                "device": dev,
                "model": {"type": "string", "enum": list(models)},
                "inflate": {"type": "number", "minimum": 1.0, "maximum": MAX_INFLATE,
                            "description": "uncertainty inflation (default 10)"},
                "from_prior": {"type": "boolean",
                               "description": "restart from the prior (default true)"}},
                "required": ["device", "model"], "additionalProperties": False}}},
    ]


TOOL_NAMES = ("get_status", "set_risk_gate", "configure_router", "calibrate")
#: tool family -> its tools: the unit an ablation switches off (``--disable-tools``);
#: get_status is in no family and is never switched off
TOOL_FAMILIES = {"gate": ("set_risk_gate",), "calibrate": ("calibrate",),
                 "router": ("configure_router",)}


def _int(args, key, low, high):
    v = args.get(key)
    if isinstance(v, float) and v.is_integer():  # 2.0 -> 2 (False for inf and nan)
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ToolError(f"{key} must be an integer, got {v!r}")
    if not low <= v <= high:
        raise ToolError(f"{key}={v} out of range [{low}, {high}]")
    return v


def _number(v):
    """float(v) for a finite number (not a bool), else None (also for ints beyond float)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def validate_call(name, args, device_count: int, models: list, classes: list,
                  disabled=()) -> dict:
    """Normalised arguments of a tool call, or ToolError naming the problem. `disabled`:
    tool names switched off (the ablation), rejected like an unknown tool."""
    if name in disabled:
        raise ToolError(f"tool {name!r} is disabled in this run; available: "
                        f"{', '.join(t for t in TOOL_NAMES if t not in disabled)}")
    if name not in TOOL_NAMES:
        raise ToolError(f"unknown tool {name!r}; available: {', '.join(TOOL_NAMES)}")
    if not isinstance(args, dict):
        raise ToolError(f"arguments must be a JSON object, got {type(args).__name__}")
    allowed = {"get_status": set(), "set_risk_gate": {"device", "klass", "closed", "hold_s"},
               "configure_router": {"parameter", "value"},
               "calibrate": {"device", "model", "inflate", "from_prior"}}[name]
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise ToolError(f"unknown argument(s) {unknown} for {name}; allowed: {sorted(allowed)}")
    if name == "get_status":
        return {}
    if name == "set_risk_gate":
        d = _int(args, "device", 0, device_count - 1)
        k = args.get("klass")
        if k not in classes:
            raise ToolError(f"klass must be one of {list(classes)}, got {k!r}")
        if not isinstance(args.get("closed"), bool):
            raise ToolError(f"closed must be true or false, got {args.get('closed')!r}")
        hold = _number(args.get("hold_s", DEFAULT_HOLD_S))
        if hold is None or not MIN_HOLD_S <= hold <= MAX_HOLD_S:
            raise ToolError(f"hold_s must be a number in [{MIN_HOLD_S:g}, {MAX_HOLD_S:g}] s, "
                            f"got {args.get('hold_s')!r}")
        return {"device": d, "klass": k, "closed": args["closed"], "hold_s": hold}
    if name == "configure_router":
        p = args.get("parameter")
        if p not in INDEX:
            raise ToolError(f"parameter must be one of {list(NAMES)}, got {p!r}")
        v = _number(args.get("value"))
        i = INDEX[p]
        if v is None or not LOW[i] <= v <= HIGH[i]:
            raise ToolError(f"{p}: value must be a number in [{LOW[i]}, {HIGH[i]}], "
                            f"got {args.get('value')!r}")
        return {"parameter": p, "value": v}
    d = _int(args, "device", 0, device_count - 1)
    m = args.get("model")
    if m not in models:
        raise ToolError(f"model must be one of {list(models)}, got {m!r}")
    inflate = _number(args.get("inflate", 10.0))
    if inflate is None or not 1.0 <= inflate <= MAX_INFLATE:
        raise ToolError(f"inflate must be a number in [1, {MAX_INFLATE}], "
                        f"got {args.get('inflate')!r}")
    from_prior = args.get("from_prior", True)
    if not isinstance(from_prior, bool):
        raise ToolError(f"from_prior must be true or false, got {from_prior!r}")
    return {"device": d, "model": m, "inflate": inflate, "from_prior": from_prior}


def parse_tool_families(families) -> tuple:
    """``"gate,router"`` (or a list of names) -> the families of TOOL_FAMILIES, in its order,
    each once; E3Error naming the families for an unknown one."""
    names = [f.strip() for f in (families.split(",") if isinstance(families, str)
                                 else families or ()) if f.strip()]
    bad = [f for f in names if f not in TOOL_FAMILIES]
    if bad:
        raise E3Error(f"unknown tool family {', '.join(map(repr, bad))}", where="--disable-tools",
                      fix=f"choose from {', '.join(TOOL_FAMILIES)} (comma-separated; "
                          "get_status is never switched off)")
    return tuple(f for f in TOOL_FAMILIES if f in names)


def disabled_tool_names(families) -> frozenset:
    """The tool names switched off with the (checked) `families`."""
    return frozenset(t for f in families for t in TOOL_FAMILIES[f])
