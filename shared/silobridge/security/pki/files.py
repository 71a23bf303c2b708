"""PKI files on disk: what each step wrote, and writing new files only, with exact modes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from silobridge.core.durable import fsync_directory
from silobridge.core.errors import ConfigError


@dataclass(frozen=True)
class CaFiles:
    """What ``init_ca`` wrote."""

    cert: Path
    key: Path
    consortium_file: Path


@dataclass(frozen=True)
class RequestFiles:
    """What ``request_certificate`` wrote: the requester's private key and its CSR."""

    key: Path
    csr: Path


@dataclass(frozen=True)
class IssuedFiles:
    """A participant's startup credentials: its key, its certificate and the CA certificate."""

    key: Path
    cert: Path
    ca_cert: Path


def write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the first byte on; refuse to replace anything."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; refusing to overwrite it") from None
    except OSError as err:
        raise ConfigError(f"cannot create {path}: {err.strerror}") from None
    try:
        # The umask may have removed bits; set exactly what was asked for.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        if fd != -1:
            os.close(fd)
        path.unlink(missing_ok=True)
        raise
    # The new directory entry must survive a crash too, not only the bytes.
    fsync_directory(path.parent)


def refuse_existing(paths: Sequence[Path]) -> None:
    """Raise ``ConfigError`` naming every one of ``paths`` that already exists."""
    existing = [str(path) for path in paths if path.exists()]
    if existing:
        raise ConfigError(
            f"refusing to overwrite {', '.join(existing)}; move the old files away first"
        )


def read_ca_file(path: Path, what: str) -> bytes:
    """Read one file of a CA directory; a missing one says how CA directories are made."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"no {what} at {path}: is this a CA directory made by `silobridge pki init`?"
        ) from None


def write_certificate(path: Path, cert_pem: bytes) -> Path:
    """Write an approved certificate to a new file (0644); refuse to replace an existing one."""
    write_new_file(path, cert_pem, 0o644)
    return path
