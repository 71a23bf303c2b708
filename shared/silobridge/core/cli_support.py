"""What every ``silobridge`` sub-command shares: consoles, and domain errors as exit status 1."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

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
