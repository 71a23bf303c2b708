"""The migration's files in the data directory, and the steps that move them (each idempotent).

- ``migration/forward``, ``migration/backward``: the in-domain adapters (artifacts, unsigned:
  they never leave this directory);
- ``index-next/``: the new space's index;
- ``migrated-from/backward``: after ``finish``, the old -> new adapter old-space queries still
  use.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from silobridge.silo_agent.store.generation import SOURCE, TARGET

ADAPTERS_DIR = "migration"
RETIRED_DIR = "migrated-from"
_OLD_INDEX = "index-old"


def adapters_dir(data_dir: Path) -> Path:
    return data_dir / ADAPTERS_DIR


def retired_dir(data_dir: Path) -> Path:
    return data_dir / RETIRED_DIR


def remove_target_files(data_dir: Path) -> None:
    """What a rollback (or a start after a crashed one) removes: the new index and adapters."""
    for name in (TARGET.index_dir, ADAPTERS_DIR):
        shutil.rmtree(data_dir / name, ignore_errors=True)


def promote_files(data_dir: Path) -> None:
    """The file half of ``finish``, after the docstore's half committed: the new index becomes
    the index, the backward adapter is kept for old-space queries, the rest is removed.

    Safe to repeat after a crash at any point: each step checks what is already done.
    """
    source, target, old = (
        data_dir / SOURCE.index_dir,
        data_dir / TARGET.index_dir,
        data_dir / _OLD_INDEX,
    )
    if target.is_dir():
        if source.is_dir():
            shutil.rmtree(old, ignore_errors=True)
            source.rename(old)
        target.rename(source)
    shutil.rmtree(old, ignore_errors=True)
    adapters, retired = adapters_dir(data_dir), retired_dir(data_dir)
    if (adapters / "backward").is_dir():
        shutil.rmtree(retired, ignore_errors=True)
        retired.mkdir()
        (adapters / "backward").rename(retired / "backward")
    shutil.rmtree(adapters, ignore_errors=True)
