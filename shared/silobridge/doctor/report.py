"""What ``silobridge doctor`` found: one row per check, each with a fix when it is not ok."""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from silobridge.core.errors import SiloBridgeError


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


_STYLE = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "red", Status.SKIP: "dim"}


@dataclass(frozen=True)
class Check:
    """One check's outcome: what was checked, what was found and, unless ok, how to fix it."""

    name: str
    status: Status
    detail: str
    hint: str = ""

    def as_json(self) -> dict[str, str]:
        return {
            "check": self.name,
            "status": self.status.value,
            "detail": self.detail,
            "hint": self.hint,
        }


def ok(name: str, detail: str) -> Check:
    return Check(name, Status.OK, detail)


def warn(name: str, detail: str, hint: str) -> Check:
    return Check(name, Status.WARN, detail, hint)


def fail(name: str, detail: str, hint: str) -> Check:
    return Check(name, Status.FAIL, detail, hint)


def skip(name: str, detail: str) -> Check:
    return Check(name, Status.SKIP, detail)


def guarded(name: str, hint: str, check: Callable[[], list[Check]]) -> list[Check]:
    """``check()``, or one failed row when it raised: doctor reports, it never crashes.

    A domain error's message is the detail; an unreadable file says so; anything else (a model
    that does not load, a damaged file) is named by its type and text.
    """
    try:
        return check()
    except SiloBridgeError as err:
        return [fail(name, err.message, hint)]
    except PermissionError as err:
        return [
            fail(
                name,
                f"cannot read {err.filename}: permission denied",
                "run doctor as the user the party runs as (the kit's owner)",
            )
        ]
    except Exception as err:  # any failure of a check is that check's row
        return [fail(name, f"{type(err).__name__}: {err}", hint)]


@dataclass(frozen=True)
class Report:
    """Every check run against one config file."""

    config: str
    role: str
    checks: tuple[Check, ...]

    @property
    def failed(self) -> bool:
        return any(c.status is Status.FAIL for c in self.checks)

    def counts(self) -> dict[str, int]:
        return {s.value: sum(c.status is s for c in self.checks) for s in Status}

    def to_json(self) -> str:
        body = {
            "config": self.config,
            "role": self.role,
            "passed": not self.failed,
            "counts": self.counts(),
            "checks": [c.as_json() for c in self.checks],
        }
        return json.dumps(body, indent=2)

    def print(self, console: Console) -> None:
        table = Table(title=f"silobridge doctor: {escape(self.config)} ({self.role})")
        table.add_column("check", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("detail")
        table.add_column("fix")
        for c in self.checks:
            style = _STYLE[c.status]
            table.add_row(
                escape(c.name),
                f"[{style}]{c.status.value}[/{style}]",
                escape(c.detail),
                escape(c.hint),
            )
        console.print(table)
        counts = self.counts()
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        verdict = "[red]FAILED[/red]" if self.failed else "[green]passed[/green]"
        console.print(f"{verdict}: {summary}")


def report(config: str, role: str, checks: Iterable[Check]) -> Report:
    return Report(config, role, tuple(checks))
