"""Blocking work (SQLite, files, models, FAISS) runs in a worker pool, off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

T = TypeVar("T")


async def off_loop(executor: Executor, work: Callable[[], T]) -> T:
    """Run ``work`` in ``executor`` and await its result, so queries keep flowing meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(executor, work)
