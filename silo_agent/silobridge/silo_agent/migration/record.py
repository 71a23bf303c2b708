"""The migration record: one JSON value in the docstore's meta table, rewritten whole.

Every state change is one durable write of this record (SQLite, synchronous=FULL), so the
cut-over is one pointer swap and a restart finds exactly the state the last command left.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from silobridge.core.errors import FailedPrecondition
from silobridge.core.spaces import SpaceDescriptor
from silobridge.silo_agent.ingest import MIGRATION_RECORD
from silobridge.silo_agent.store.docstore import DocStore


class MetaReader(Protocol):
    """Where meta values are read from: the docstore, or a read-only view of it (doctor)."""

    def get_meta(self, key: str) -> str | None: ...


RECORD_KEY = MIGRATION_RECORD
# After ``finish``: the model the silo moved from, kept so that a restart with the old
# ``model =`` in silo.toml is understood, and old-space queries are still routed.
RETIRED_KEY = "migrated_from"


class Stage(StrEnum):
    """What is on disk and running (docs/MIGRATION.md)."""

    REENCODING = "reencoding"
    PAUSED = "paused"
    CUT_OVER = "cut_over"
    FINISHING = "finishing"  # finish committed in the docstore; index files still to move


@dataclass(frozen=True)
class MigrationRecord:
    stage: Stage
    source_model: str
    target_model: str
    source: SpaceDescriptor
    target: SpaceDescriptor
    cpu_share: float
    anchors: int = 0
    forward_ndcg: float = 0.0
    backward_ndcg: float = 0.0
    agreement: float = 0.0
    started_at: str = ""

    def with_stage(self, stage: Stage, **changes: Any) -> MigrationRecord:
        return dataclasses.replace(self, stage=stage, **changes)

    def to_json(self) -> str:
        body = dataclasses.asdict(self)
        body["stage"] = self.stage.value
        return json.dumps(body, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MigrationRecord:
        try:
            body = json.loads(text)
            body["stage"] = Stage(body["stage"])
            body["source"] = SpaceDescriptor(**body["source"])
            body["target"] = SpaceDescriptor(**body["target"])
            return cls(**body)
        except (ValueError, KeyError, TypeError) as error:
            raise FailedPrecondition(
                f"the migration record in the docstore is unreadable ({error}); restore the data "
                "directory from a backup"
            ) from None


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load(docstore: MetaReader) -> MigrationRecord | None:
    text = docstore.get_meta(RECORD_KEY)
    return None if text is None else MigrationRecord.from_json(text)


def save(docstore: DocStore, record: MigrationRecord) -> None:
    docstore.set_meta(RECORD_KEY, record.to_json())


@dataclass(frozen=True)
class Retired:
    """What a finished migration moved from (``model``, ``space``) and to (``now``)."""

    model: str
    space: SpaceDescriptor
    now: str


def retired(docstore: MetaReader) -> Retired | None:
    text = docstore.get_meta(RETIRED_KEY)
    if text is None:
        return None
    body = json.loads(text)
    return Retired(str(body["model"]), SpaceDescriptor(**body["space"]), str(body["now"]))


def retire(docstore: DocStore, finished: MigrationRecord) -> None:
    body = {
        "model": finished.source_model,
        "space": dataclasses.asdict(finished.source),
        "now": finished.target_model,
    }
    docstore.set_meta(RETIRED_KEY, json.dumps(body, sort_keys=True))
