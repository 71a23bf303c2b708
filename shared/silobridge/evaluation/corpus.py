"""Read the demo corpus the harness uses: KJV/WEB verse pairs, Python-doc anchors and sections.

The corpus is repository data (``data/demo``), not part of the installed package: it is found
through ``$SILOBRIDGE_DEMO_DATA``, else ``data/demo`` under the current directory.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

from silobridge.core.errors import ConfigError, InvalidArgument

ENV_VAR = "SILOBRIDGE_DEMO_DATA"
DEMO_SETS = ("kjv", "web", "pydoc_anchors", "pydoc_sections")
REBUILD_COMMAND = (
    "apt-get install sword-text-kjv sword-text-web python3.11-doc && "
    ".venv/bin/python scripts/build_demo_data.py"
)


@dataclass(frozen=True)
class DemoRecord:
    """One demo text: a stable id ("Gen.1.1", "pydoc-000001", "pysec-000001"), text, metadata."""

    id: str
    text: str
    metadata: dict[str, str]


def demo_data_dir() -> Path:
    """``$SILOBRIDGE_DEMO_DATA`` if set, else ``data/demo`` under the current directory."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override)
    return Path.cwd() / "data" / "demo"


def load_records(name: str, limit: int | None = None) -> list[DemoRecord]:
    """The records of one demo set (one of ``DEMO_SETS``), in file order.

    ``limit`` keeps only the first ``limit`` records (and reads no further). The KJV and WEB sets
    hold the same verse ids in the same order, so record ``i`` of one is the translation of
    record ``i`` of the other. A "pydoc_sections" record's text is the first prose paragraph of
    a documentation section and ``metadata["heading"]`` is that section's title.
    """
    if name not in DEMO_SETS:
        raise InvalidArgument(f"unknown demo set {name!r}; choose one of {', '.join(DEMO_SETS)}")
    if limit is not None and limit < 0:
        raise InvalidArgument(f"limit must be >= 0 or None, got {limit}")
    path = demo_data_dir() / f"{name}.jsonl.gz"
    if not path.is_file():
        raise ConfigError(
            f"demo data file {path} is missing; rebuild it with: {REBUILD_COMMAND} "
            f"(or point {ENV_VAR} at a directory that holds it)"
        )
    records: list[DemoRecord] = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if limit is not None and len(records) >= limit:
                    break
                records.append(_parse_line(line, path, number))
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:
        raise ConfigError(
            f"demo data file {path} is unreadable ({exc}); rebuild it with: {REBUILD_COMMAND}"
        ) from exc
    return records


def _parse_line(line: str, path: Path, number: int) -> DemoRecord:
    try:
        obj = json.loads(line)
        record = DemoRecord(id=obj["id"], text=obj["text"], metadata=dict(obj["metadata"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path}:{number} is not a demo record ({exc}); rebuild it with: {REBUILD_COMMAND}"
        ) from exc
    fields = [record.id, record.text, *record.metadata.keys(), *record.metadata.values()]
    if not all(isinstance(value, str) for value in fields):
        raise ConfigError(
            f"{path}:{number} has a non-string field; rebuild it with: {REBUILD_COMMAND}"
        )
    return record
