"""``silobridge query --file queries.jsonl``: many queries embedded at home in one call and
searched as batches under one signature each; a compact table per query, or JSON lines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from silobridge.core.cli_support import run_async_or_exit, run_or_exit
from silobridge.core.errors import InvalidArgument

if TYPE_CHECKING:
    from rich.console import Console

    from silobridge.client.config import ClientConfig
    from silobridge.core.federation import FederatedBatchAnswer


def read_queries(path: Path) -> list[tuple[str, str]]:
    """``(id, text)`` per non-blank line of a JSONL file of ``{"text": ..., "id": ...}`` objects;
    a line without an id is named by its line number."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise InvalidArgument(f"cannot read query file {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidArgument(f"query file {path} is not UTF-8 text") from None
    queries: list[tuple[str, str]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InvalidArgument(f"{path}:{number}: not a JSON object ({error.msg})") from None
        if not isinstance(record, dict):
            raise InvalidArgument(f'{path}:{number}: expected an object like {{"text": "..."}}')
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            raise InvalidArgument(f'{path}:{number}: "text" must be a non-empty string')
        query_id = record.get("id", number)
        if not isinstance(query_id, str | int) or isinstance(query_id, bool):
            raise InvalidArgument(f'{path}:{number}: "id" must be a string or a number')
        queries.append((str(query_id), text))
    if not queries:
        raise InvalidArgument(f"query file {path} holds no queries")
    return queries


def compact_table(answer: FederatedBatchAnswer, position: int, title: str) -> Table:
    table = Table("rank", "silo", "doc id", "merged", title=title, title_justify="left")
    for rank, hit in enumerate(answer.answers[position], 1):
        table.add_row(str(rank), Text(hit.silo), Text(hit.doc_id), f"{hit.merged_score:.3f}")
    return table


def query_file(
    cfg: ClientConfig,
    path: Path,
    *,
    k: int,
    silos: Sequence[str],
    merge: str,
    as_json: bool,
    out: Console,
    err: Console,
) -> None:
    """Run every query of ``path`` and print the answers in file order."""
    from silobridge.client.api import FederatedClient
    from silobridge.client.cli import status_table

    queries = run_or_exit(lambda: read_queries(path))
    texts = [text for _id, text in queries]

    async def run() -> FederatedBatchAnswer:
        async with FederatedClient(cfg) as client:
            return await client.query_many(texts, k=k, silos=silos, merge=merge)

    answer = run_async_or_exit(run)
    for position, (query_id, text) in enumerate(queries):
        if as_json:
            typer.echo(json.dumps({"id": query_id, **answer.answer(position).to_dict()}))
        else:
            out.print(compact_table(answer, position, f"{query_id}: {text[:60]!r}"))
    if not as_json:
        out.print(status_table(answer.answer(0)))
    if answer.failed:
        names = ", ".join(f"{status.silo} ({status.state.value})" for status in answer.failed)
        err.print(f"[yellow]partial answers: not every silo answered: {escape(names)}[/yellow]")
