"""The replay controller: re-applies the tool calls of a recorded ``control.jsonl``.

At checkpoint i it checks that the simulated time and the alarm equal those recorded at
checkpoint i (else the transcript belongs to another trace or other options) and re-issues
exactly the recorded calls, in order, rejected ones included, and the recorded fallback
note; a call accepted when recorded and rejected now (or the reverse: other
``--disable-tools``) is a mismatch too. Same trace + same options + the transcript => the
same control log and the same summary.json, except timing fields, the controller name and
``llm_tokens`` (a replay spends no tokens).
"""
import json
from pathlib import Path

from ..errors import E3Error
from ..jsonsafe import json_safe

FIX = "replay with the trace, policy and options of the run that wrote the transcript"


def _load(path: Path) -> list:
    """Checkpoint records of a control.jsonl, checked for the fields a replay needs."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise E3Error("transcript not found", where=str(path),
                      fix="pass the control.jsonl of an earlier e3 replay") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise E3Error(f"cannot read the transcript: {exc}", where=str(path),
                      fix="pass the control.jsonl of an earlier e3 replay") from None
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise E3Error(f"not a JSON record ({exc.msg})", where=where,
                          fix="use an unmodified control.jsonl written by e3fast replay") \
                from None
        ok = (isinstance(rec, dict) and rec.get("checkpoint") == len(records)
              and isinstance(rec.get("t_s"), (int, float)) and isinstance(rec.get("alarm"), dict)
              and isinstance(rec.get("calls"), list)
              and all(isinstance(c, dict) and isinstance(c.get("tool"), str) and "arguments" in c
                      for c in rec["calls"]))
        if not ok:
            raise E3Error(f"not a checkpoint record of e3fast (expected checkpoint "
                          f"{len(records)} with t_s, alarm and calls)", where=where,
                          fix="use an unmodified control.jsonl written by e3fast replay")
        records.append(rec)
    return records


class ReplayController:
    """Controller "replay" over the transcript file `transcript_path` (control.jsonl)."""
    name = "replay"

    def __init__(self, transcript_path):
        if not transcript_path:
            raise E3Error("--controller replay needs a transcript", where="--transcript",
                          fix="pass --transcript RUN/control.jsonl of an earlier e3 replay")
        self.path = Path(transcript_path)
        self.records = _load(self.path)
        self.next = 0

    def decide(self, obs: dict, call) -> dict:
        """Re-issue the calls recorded for this checkpoint; E3Error if it does not match."""
        i = self.next
        if i >= len(self.records):
            raise E3Error(f"transcript does not match this trace/options at checkpoint {i}: "
                          f"it records only {len(self.records)} checkpoint(s)",
                          where=str(self.path), fix=FIX)
        rec = self.records[i]
        alarm = json_safe(obs["alarm"], "string")
        if round(rec["t_s"], 6) != obs["t_s"] or rec["alarm"] != alarm:
            raise E3Error(f"transcript does not match this trace/options at checkpoint {i}: "
                          f"recorded t={rec['t_s']:.6f} s alarm {rec['alarm']}, this run "
                          f"t={obs['t_s']:.6f} s alarm {alarm}", where=str(self.path), fix=FIX)
        self.next += 1
        for c in rec["calls"]:
            got = bool(call(c["tool"], c["arguments"]).get("ok"))
            if "accepted" in c and got != bool(c["accepted"]):  # e.g. other --disable-tools
                was = {True: "accepted", False: "rejected"}
                raise E3Error(f"transcript does not match this trace/options at checkpoint {i}: "
                              f"its {c['tool']} call was {was[bool(c['accepted'])]} when "
                              f"recorded and is {was[got]} in this run", where=str(self.path),
                              fix=FIX + " (--disable-tools included)")
        if rec.get("fallback"):
            return {"fallback": rec["fallback"], "decided_by": rec.get("controller") or "rule"}
        return {}
