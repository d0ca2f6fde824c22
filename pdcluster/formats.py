"""The two file formats the plan writes, small enough to own: TOML (agent files) and YAML
(Kubernetes manifests). Strings are always quoted (JSON's escapes are valid in both), so
no value changes type on the way (``"8019"`` stays a string, ``on`` stays text)."""

from __future__ import annotations

import json
from typing import Any


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table (env)
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise TypeError(f"no TOML form for {value!r}")


def dump_toml(data: dict[str, Any], header: str = "") -> str:
    """Top-level keys, then one ``[section]`` per nested dict whose values are scalars."""
    sections = {k: v for k, v in data.items() if isinstance(v, dict) and k != "env"}
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += [f"{k} = {toml_value(v)}" for k, v in data.items() if k not in sections]
    for name, values in sections.items():
        lines.append(f"\n[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def _empty(value: dict[str, Any] | list[Any]) -> str:
    return "{}" if isinstance(value, dict) else "[]"


def _yaml(value: Any, indent: int) -> list[str]:
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return [pad + "{}"]
        lines = []
        for key, item in value.items():
            head = f"{pad}{key}:"
            if isinstance(item, str) and "\n" in item:
                lines.append(head + " |")
                lines += [
                    f"{pad}  {line}" if line else "" for line in item.rstrip("\n").split("\n")
                ]
            elif isinstance(item, dict | list) and item:
                lines.append(head)
                lines += _yaml(item, indent + 1)
            else:
                lines.append(
                    f"{head} {_empty(item) if isinstance(item, dict | list) else _scalar(item)}"
                )
        return lines
    if isinstance(value, list):
        lines = []
        for item in value:
            if isinstance(item, dict | list) and item:
                inner = _yaml(item, indent + 1)
                lines.append(f"{pad}- {inner[0].lstrip()}")
                lines += inner[1:]
            else:
                lines.append(f"{pad}- {_scalar(item)}")
        return lines
    return [pad + _scalar(value)]


def dump_yaml(documents: list[dict[str, Any]], header: str = "") -> str:
    out = [f"# {line}".rstrip() for line in header.splitlines()]
    for document in documents:
        out.append("---")
        out += _yaml(document, 0)
    return "\n".join(out) + "\n"
