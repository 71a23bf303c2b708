"""The migration's files in the data directory, and the steps that move them (each idempotent).

- ``migration/forward``, ``migration/backward``: the in-domain adapters (artifacts, unsigned:
  they never leave this directory);
- ``index-next/``: the new space's index (with Milvus: the collection behind the
  ``<prefix>__index_next`` alias, see ``store/milvus_home.py``);
- ``migrated-from/backward``: after ``finish``, the old -> new adapter old-space queries still
  use.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from silobridge.silo_agent.store.generation import SOURCE, TARGET
from silobridge.silo_agent.store.index_home import IndexHome

ADAPTERS_DIR = "migration"
RETIRED_DIR = "migrated-from"


def adapters_dir(data_dir: Path) -> Path:
    return data_dir / ADAPTERS_DIR


def retired_dir(data_dir: Path) -> Path:
    return data_dir / RETIRED_DIR


def remove_target_files(data_dir: Path, home: IndexHome) -> None:
    """What a rollback (or a start after a crashed one) removes: the new index and adapters."""
    home.drop(TARGET.index_dir)
    shutil.rmtree(data_dir / ADAPTERS_DIR, ignore_errors=True)


def promote_files(data_dir: Path, home: IndexHome) -> None:
    """The file half of ``finish``, after the docstore's half committed: the new index becomes
    the index (a directory rename, or the Milvus source alias moved to the new collection),
    the backward adapter is kept for old-space queries, the rest is removed.

    Safe to repeat after a crash at any point: each step checks what is already done.
    """
    home.promote(SOURCE.index_dir, TARGET.index_dir)
    adapters, retired = adapters_dir(data_dir), retired_dir(data_dir)
    if (adapters / "backward").is_dir():
        shutil.rmtree(retired, ignore_errors=True)
        retired.mkdir()
        (adapters / "backward").rename(retired / "backward")
    shutil.rmtree(adapters, ignore_errors=True)
