"""Reading config files: YAML as configs read it, earlier key names, one-line errors.

Helpers of :mod:`tempstop.config`, kept apart so the schema reads as a schema.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tempstop.utils import first_line


class LegacyKeyError(ValueError):
    """A key is given both under its earlier and its current name, with different values."""


def upgrade_legacy_keys(raw: dict[str, Any], moves: dict[str, str]) -> dict[str, Any]:
    """``raw`` with every ``section.key`` of ``moves`` moved to its new place (a copy)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for old, new in moves.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section = out.get(old_section)
        if not isinstance(section, dict) or old_key not in section:
            continue
        value = section.pop(old_key)
        target = out.setdefault(new_section, {})
        if not isinstance(target, dict):
            continue  # the section itself has the wrong type: validation names it
        if new_key in target and target[new_key] != value:
            raise LegacyKeyError(
                f"'{old}' is the earlier name of '{new}': give one of them "
                f"(got {value!r} and {target[new_key]!r})"
            )
        target[new_key] = value
    return out


# PyYAML reads YAML 1.1: 1e-4 is a string there, and yes/no/on/off are booleans. Configs are
# read as YAML 1.2 (and JSON) read them, as people writing them expect: 1e-4 is a number, and
# only true/false are booleans, so a strict schema refuses "yes" for a bool.
class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """YAML as a config reads it (safe; ``1e-4`` is a float, ``yes`` a string)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def read_text(path: Path, error: type[Exception]) -> str:
    """The text of a config file; ``error`` (one line naming the file) when it cannot be read."""
    if not path.is_file():
        raise error(f"{path}: config file not found")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read: {first_line(exc)}") from None


def format_errors(exc: ValidationError, source: str) -> str:
    """One line per pydantic error: ``SOURCE: section.key: message (got VALUE)``."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]).replace("validate_", "validate")
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        else:
            lines.append(f"{source}: {key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)
