"""A config file as documented tables: every key with its comment, unset keys shown commented.

A kit's config lists every key its role reads. Keys the kit sets are written as ``key = value``;
the others as ``# key = default`` (``# example: key = value`` for a key unset by default) so
an operator sees what exists and what it defaults to.
``overrides`` (``{"table": {"key": value}}``) set keys the kit would otherwise leave commented;
a key no table declares is refused (and ``build.check_loads`` loads the result with the role's
own loader, so a bad value is refused too).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from silobridge.core.errors import InvalidArgument

TomlValue = str | bool | int | float | list[str]
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Key:
    """One key of a table: its value (the default when not ``active``) and what it means."""

    name: str
    value: TomlValue
    comment: str
    active: bool = False
    # Unset by default: ``value`` is an example, written ``# example: key = value``.
    example: bool = False


@dataclass(frozen=True)
class Table:
    name: str
    comment: str
    keys: Sequence[Key]
    # Any key may be set (a table keyed by silo names, as ``[policy.query]``).
    open: bool = False


def toml_value(value: object) -> str:
    """``value`` as a TOML literal (strings, booleans, numbers and lists of strings only)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(f"{value} is not a finite number")
        return repr(value)
    if isinstance(value, str):
        # A JSON string literal is a valid TOML basic string.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise InvalidArgument(f"cannot write {value!r} into a config file")


def toml_key(name: str) -> str:
    """``name`` as a TOML key: bare when it can be, quoted otherwise (``"*"``)."""
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name)


def _check_overrides(tables: Sequence[Table], overrides: Mapping[str, Mapping[str, Any]]) -> None:
    known = {table.name: {key.name for key in table.keys} for table in tables}
    open_tables = {table.name for table in tables if table.open}
    for table, keys in overrides.items():
        if table in open_tables:
            continue
        if table not in known:
            raise InvalidArgument(
                f"no table [{table}] in this config (tables: {', '.join(sorted(known))})"
            )
        unknown = sorted(set(keys) - known[table])
        if unknown:
            raise InvalidArgument(
                f"[{table}] has no key {', '.join(unknown)} "
                f"(keys: {', '.join(sorted(known[table]))})"
            )


def render(header: str, tables: Sequence[Table], overrides: Mapping[str, Mapping[str, Any]]) -> str:
    """The config file's text: ``header`` (comment lines), then each table, every key listed."""
    _check_overrides(tables, overrides)
    lines = [f"# {line}".rstrip() for line in header.strip().splitlines()]
    for table in tables:
        given = overrides.get(table.name, {})
        lines += ["", f"# {table.comment}", f"[{table.name}]"]
        for key in table.keys:
            lines += [f"# {line}".rstrip() for line in key.comment.strip().splitlines()]
            if key.name in given:
                lines.append(f"{toml_key(key.name)} = {toml_value(given[key.name])}")
            elif key.active:
                lines.append(f"{toml_key(key.name)} = {toml_value(key.value)}")
            elif key.example:
                lines.append(f"# example: {toml_key(key.name)} = {toml_value(key.value)}")
            else:
                lines.append(f"# {toml_key(key.name)} = {toml_value(key.value)}")
        declared = {key.name for key in table.keys}
        for name, value in given.items():
            if name not in declared:
                lines.append(f"{toml_key(name)} = {toml_value(value)}")
    return "\n".join(lines) + "\n"
