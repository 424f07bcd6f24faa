"""Reading TOML spec files (gen-trace --spec, import-trace --spec, gen-corpus) with one
clear message for every problem."""
import tomllib
from pathlib import Path

from .errors import E3Error


def read_toml(path, option: str = "the spec path") -> dict:
    """The TOML document at `path` as a dict; E3Error naming the file if it is missing,
    unreadable or not valid TOML. `option` names what to fix (e.g. "--spec")."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise E3Error("spec file not found", where=str(p), fix=f"check {option}") from None
    except OSError as exc:
        raise E3Error(f"cannot read spec: {exc.strerror}", where=str(p),
                      fix=f"check {option}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise E3Error(f"invalid TOML: {exc}", where=str(p), fix="fix the spec's syntax") from None
