"""Durable writes: a file or a directory appears whole under its final name, or not at all.

Every helper writes to a temporary name beside the target, fsyncs the data, renames it into
place, and then fsyncs the parent directory so the rename itself survives a crash (``kill -9``,
power loss). Callers never hand-roll ``os.replace``.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Make the entries of ``directory`` (creations, renames, deletions) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_synced(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: readers see the old file or the new one, never a mixture."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        _write_synced(temporary, data, mode)
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def ensure_directory(directory: Path) -> None:
    """Create ``directory`` (and missing parents) so that its existence survives a crash."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    directory.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        fsync_directory(created.parent)


def stage_directory(directory: Path, files: Mapping[str, bytes]) -> Path:
    """Write ``files`` into a new hidden directory beside ``directory``, every byte synced.

    The staging directory is what ``publish_directory`` or ``swap_directory`` renames into
    place; on failure it is removed and the error raised.
    """
    ensure_directory(directory.parent)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent)
    )
    try:
        for name, data in files.items():
            _write_synced(staging / name, data, 0o644)
        fsync_directory(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def publish_directory(staging: Path, directory: Path) -> bool:
    """Rename ``staging`` to ``directory`` unless it already exists; False (staging removed) then.

    rename(2) of a directory fails when the target is a non-empty directory, so what another
    writer published first is never replaced.
    """
    try:
        staging.rename(directory)
    except OSError as error:
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
            shutil.rmtree(staging, ignore_errors=True)
            return False
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_directory(directory.parent)
    return True


def swap_directory(staging: Path, directory: Path) -> None:
    """Put ``staging`` in place of ``directory``, replacing what was there.

    rename(2) replaces a directory atomically only when the destination is missing or empty, so
    an existing one is renamed aside first, the new one renamed in, and the old one removed: a
    reader in that short window sees no directory, never half of one, and a crash in it leaves
    the old one intact at the aside path.
    """
    aside: Path | None = None
    try:
        if directory.exists():
            aside = directory.with_name(f".{directory.name}.old-{secrets.token_hex(4)}")
            directory.rename(aside)
        try:
            staging.replace(directory)
        except OSError:
            if aside is not None:
                aside.rename(directory)
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_directory(directory.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def write_directory_atomically(directory: Path, files: Mapping[str, bytes]) -> None:
    """Replace ``directory`` by one holding exactly ``files``: whole or not at all."""
    swap_directory(stage_directory(directory, files), directory)
