"""What every ``silobridge`` sub-command shares: consoles, progress bars, ``--json`` output,
and domain errors as exit status 1."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from silobridge.core.errors import SiloBridgeError

T = TypeVar("T")


def stdout_console() -> Console:
    # soft_wrap: paths and ids in messages must never be split across lines.
    return Console(highlight=False, soft_wrap=True, emoji=False)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def fail(message: str) -> NoReturn:
    """Print ``error: message`` in red on stderr and exit with status 1."""
    stderr_console().print(f"[red]error: {escape(message)}[/red]")
    raise typer.Exit(code=1)


def error_text(err: SiloBridgeError) -> str:
    """What a user is shown: a peer's refusal keeps its status name (``NOT_FOUND: ...``)."""
    return f"{err.status_name}: {err.message}" if err.status_name else err.message


def run_or_exit(action: Callable[[], T]) -> T:
    """Run an action; a domain error becomes ``error: ...`` on stderr and exit status 1."""
    try:
        return action()
    except SiloBridgeError as err:
        fail(error_text(err))


def run_async_or_exit(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion; a domain error becomes ``error: ...`` and exit status 1."""
    return run_or_exit(lambda: asyncio.run(main()))


def serve_or_exit(main: Callable[[], Coroutine[Any, Any, None]], log_level: str) -> None:
    """What every ``... serve`` command does: configure logging, run the server until stopped."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run_async_or_exit(main)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def print_json(data: Any) -> None:
    """What every ``--json`` prints: one JSON document on stdout and nothing else there.

    A listing prints a JSON array of its rows with the keys its table shows; dataclasses,
    enums and paths become objects, values and strings.
    """
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=_jsonable))


BYTES = "bytes"


def progress_display(
    *,
    unit: str = "",
    eta: bool = True,
    enabled: bool = True,
    console: Console | None = None,
) -> Progress | None:
    """The progress display every long command draws on stderr, or None where none is drawn.

    None when ``enabled`` is false (``--json``) or the console is not a terminal (a pipe, a
    file, CI): a bar's redraws would only clutter a log. Each task shows its description, the
    bar, done/total in ``unit`` (``BYTES``: sizes), the percentage, time elapsed and, with
    ``eta``, the time left at the rate so far. A task without a total pulses and shows ``n/?``.
    """
    shown = console or stderr_console()
    if not enabled or not shown.is_terminal:
        return None
    amount: list[ProgressColumn] = (
        [DownloadColumn(binary_units=True)]
        if unit == BYTES
        else [MofNCompleteColumn(), TextColumn(escape(unit))]
    )
    timing: list[ProgressColumn] = [TimeElapsedColumn()]
    if eta:
        timing += [TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        *amount,
        TaskProgressColumn(),
        *timing,
        console=shown,
        transient=False,
    )


class ProgressBar:
    """One task of a ``progress_display``; every method does nothing where none is drawn."""

    def __init__(self, progress: Progress | None, task: TaskID | None) -> None:
        self._progress = progress
        self._task = task

    @property
    def shown(self) -> bool:
        return self._progress is not None

    def update(
        self,
        completed: float | None = None,
        *,
        total: float | None = None,
        advance: float | None = None,
        description: str | None = None,
    ) -> None:
        if self._progress is None or self._task is None:
            return
        self._progress.update(
            self._task,
            completed=completed,
            total=total,
            advance=advance,
            description=None if description is None else escape(description),
        )

    def note(self, message: str) -> None:
        """A line above the bar (on stderr as a plain line where no bar is drawn)."""
        console = self._progress.console if self._progress is not None else stderr_console()
        console.print(message, highlight=False)


@contextmanager
def progress_bar(
    description: str,
    *,
    total: float | None = None,
    unit: str = "",
    eta: bool = True,
    enabled: bool = True,
    console: Console | None = None,
) -> Iterator[ProgressBar]:
    """A bar for one long task on stderr (see ``progress_display``: off for --json or a pipe)."""
    progress = progress_display(unit=unit, eta=eta, enabled=enabled, console=console)
    if progress is None:
        yield ProgressBar(None, None)
        return
    with progress:
        task = progress.add_task(escape(description), total=total)
        yield ProgressBar(progress, task)
