"""Strict TOML configuration reading: unknown keys and wrong types are errors that name the key.

Also the tables every server's config shares: ``[server]`` basics, ``[tls]``, ``[audit]`` and
``[metrics]``.
"""

from __future__ import annotations

import logging
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from silobridge.core.endpoints import validate_endpoint
from silobridge.core.errors import ConfigError, InvalidArgument, PermissionDenied

log = logging.getLogger(__name__)

T = TypeVar("T")


def load_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing or malformed file is a ConfigError naming it."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    except UnicodeDecodeError as error:
        # tomllib decodes the whole file before parsing; TOML files are UTF-8.
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {error.start}); save it as UTF-8"
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None


class Section:
    """One table of a config file; reads typed keys and rejects keys nobody read (typos)."""

    def __init__(self, source: Path, name: str, values: Mapping[str, Any]) -> None:
        self.source = source
        self.name = name
        self._values = dict(values)
        self._read: set[str] = set()

    @classmethod
    def of(cls, source: Path, document: Mapping[str, Any], name: str) -> Section:
        values = document.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        return cls(source, name, values)

    def _where(self, key: str) -> str:
        return f"{self.source}: [{self.name}] {key}"

    def get(self, key: str, kind: type[T], default: T) -> T:
        self._read.add(key)
        if key not in self._values:
            return default
        return self._typed(key, kind)

    def require(self, key: str, kind: type[T]) -> T:
        self._read.add(key)
        if key not in self._values:
            raise ConfigError(f"{self._where(key)} is required")
        return self._typed(key, kind)

    def _typed(self, key: str, kind: type[T]) -> T:
        value = self._values[key]
        # bool is an int subclass in Python; keep them apart so `max_k = true` is an error.
        if kind is int and isinstance(value, bool):
            raise ConfigError(f"{self._where(key)} must be an integer, got {value!r}")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind):
            raise ConfigError(f"{self._where(key)} must be {kind.__name__}, got {value!r}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        """A list of strings; absent means empty (which, for access rules, denies)."""
        raw = self.get(key, list, [])
        if not all(isinstance(item, str) for item in raw):
            raise ConfigError(f"{self._where(key)} must be a list of strings")
        return tuple(raw)

    def path(self, key: str, default: str | None = None) -> Path:
        """A path; relative paths are taken relative to the config file's folder."""
        raw = self.require(key, str) if default is None else self.get(key, str, default)
        candidate = Path(raw).expanduser()
        return candidate if candidate.is_absolute() else (self.source.parent / candidate)

    def endpoint(self, key: str, default: str | None = None, *, listen: bool = False) -> str:
        """A ``host:port``; ``listen`` admits port 0 (the OS picks one)."""
        value = self.require(key, str) if default is None else self.get(key, str, default)
        try:
            return validate_endpoint(value, allow_any_port=listen)
        except InvalidArgument as error:
            raise ConfigError(f"{self._where(key)}: {error.message}") from None

    def positive(self, key: str, default: int) -> int:
        value = self.get(key, int, default)
        if value < 1:
            raise ConfigError(f"{self._where(key)} must be at least 1, got {value}")
        return value

    def finish(self) -> None:
        """Refuse keys that were never read: almost always a typo that would be silently ignored."""
        unknown = sorted(set(self._values) - self._read)
        if unknown:
            raise ConfigError(
                f"{self.source}: unknown key(s) in [{self.name}]: {', '.join(unknown)}"
            )


def refuse_unknown_sections(source: Path, document: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(document) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s): {', '.join(unknown)}")


@dataclass(frozen=True)
class AuditSettings:
    """Where a server keeps its audit log and the key that signs its checkpoints."""

    log: Path
    key: Path
    checkpoint_every: int = 100
    # Identical refusals (same peer, RPC and reason) within this many seconds are one line with
    # a count: a flood of refused calls cannot grow the log without bound (issue 11).
    refusal_summary_seconds: float = 10.0


# Beside the config file, not in the log's directory: the service writes its log (and its
# data), while the key that signs the log's checkpoints can be made read-only to it.
DEFAULT_AUDIT_KEY = "keys/audit.key"


def audit_settings(source: Path, document: Mapping[str, Any], *, default_dir: str) -> AuditSettings:
    """The ``[audit]`` table (always on: absent means the log under ``default_dir`` and the key
    in ``keys/`` beside the config file)."""
    section = Section.of(source, document, "audit")
    settings = AuditSettings(
        log=section.path("log", default=f"{default_dir}/audit.log"),
        key=section.path("key", default=DEFAULT_AUDIT_KEY),
        checkpoint_every=section.positive("checkpoint_every", 100),
        refusal_summary_seconds=section.get(
            "refusal_summary_seconds", float, AuditSettings.refusal_summary_seconds
        ),
    )
    if not settings.refusal_summary_seconds > 0:
        raise ConfigError(f"{source}: [audit] refusal_summary_seconds must be positive")
    section.finish()
    return settings


@dataclass(frozen=True)
class MetricsSettings:
    """Where a server serves Prometheus ``/metrics`` over plain HTTP; ``None``: not at all."""

    listen: str | None = None


def metrics_settings(source: Path, document: Mapping[str, Any]) -> MetricsSettings:
    """The ``[metrics]`` table: ``listen = "host:port"`` (port 0: the OS picks one). Absent
    table, no metrics: nothing listens that the config does not name."""
    if "metrics" not in document:
        return MetricsSettings()
    section = Section.of(source, document, "metrics")
    settings = MetricsSettings(listen=section.endpoint("listen", listen=True))
    section.finish()
    return settings


@dataclass(frozen=True)
class ServerSettings:
    """What every server's ``[server]`` table holds; each server adds its own keys."""

    listen: str = "127.0.0.1:0"
    # Threads for CPU work (embedding, FAISS, translation, state); the event loop never blocks.
    workers: int = 2
    insecure: bool = False
    grace_seconds: float = 5.0


def server_basics(section: Section, *, default_listen: str) -> dict[str, Any]:
    """The ``ServerSettings`` keys of a ``[server]`` table, as keyword arguments."""
    grace = section.get("grace_seconds", float, ServerSettings.grace_seconds)
    if not grace >= 0:
        raise ConfigError(f"{section.source}: [server] grace_seconds must not be negative")
    return {
        "listen": section.endpoint("listen", default_listen, listen=True),
        "workers": section.positive("workers", ServerSettings.workers),
        "insecure": section.get("insecure", bool, False),
        "grace_seconds": grace,
    }


@dataclass(frozen=True)
class TlsFiles:
    """A participant's certificate, its private key, and the consortium CA certificate."""

    cert: Path
    key: Path
    ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(cert, key, ca) PEM bytes; a missing file is a ConfigError naming it."""
        out = []
        for label, path in (("certificate", self.cert), ("key", self.key), ("CA", self.ca)):
            try:
                out.append(path.read_bytes())
            except OSError as error:
                raise ConfigError(
                    f"cannot read TLS {label} file {path}: {error.strerror}"
                ) from None
        return out[0], out[1], out[2]


def tls_from_config(
    source: Path, document: Mapping[str, Any], *, insecure: bool, insecure_key: str
) -> TlsFiles | None:
    """The ``[tls]`` table of a config file (paths relative to it); required unless insecure."""
    if "tls" not in document:
        if insecure:
            return None
        raise ConfigError(f"{source}: [tls] cert, key and ca are required (or {insecure_key})")
    section = Section.of(source, document, "tls")
    tls = TlsFiles(cert=section.path("cert"), key=section.path("key"), ca=section.path("ca"))
    section.finish()
    return tls


class TrustedCa:
    """The consortium CA bundle a server verifies signed queries against, re-read when changed.

    The file is looked at (one ``stat``) on every use and read again when its stamp changed, so
    a CA added to or removed from the bundle (rotation) takes effect without a restart, as it
    does for TLS handshakes. A file that cannot be read any more keeps the last bundle read.

    ``refusal`` is the ``PermissionDenied`` message for a server without TLS: it has no CA to
    verify anything with.
    """

    def __init__(self, tls: TlsFiles | None, refusal: str) -> None:
        self._tls = tls
        self._refusal = refusal
        self._pem: bytes | None = None
        self._stamp: tuple[int, int, int, int] | None = None
        self._lock = threading.Lock()

    def pem(self) -> bytes:
        if self._tls is None:
            raise PermissionDenied(self._refusal)
        path = self._tls.ca
        with self._lock:
            try:
                status = path.stat()
                # mtime and size catch edits, inode a replace by rename, ctime a chmod.
                stamp = (status.st_mtime_ns, status.st_ctime_ns, status.st_size, status.st_ino)
                if stamp != self._stamp:
                    # Stamped before reading, so a write during the read is seen next time.
                    self._pem, self._stamp = path.read_bytes(), stamp
            except OSError as error:
                if self._pem is None:
                    raise ConfigError(f"cannot read TLS CA file {path}: {error.strerror}") from None
                log.warning(
                    "cannot read CA file %s (%s); keeping the bundle read before",
                    path,
                    error.strerror,
                )
            pem = self._pem
        if pem is None:  # read above, or the OSError was raised
            raise ConfigError(f"cannot read TLS CA file {path}")
        return pem
