"""The anchor-set catalogue: versioned public text sets, written atomically and verified on load.

Layout under the catalogue root (``state_dir / "anchors"``)::

    NAME/v1/texts.jsonl.gz   one JSON string per line, in order
    NAME/v1/manifest.json    {name, version, sha256, count, created_at, source, format_version}
    NAME/v2/...

A version is never changed once written; a new text list becomes a new version. Adapters record
(name, version, sha256), so the hash is what ties an adapter to the exact texts it was fitted on.
"""

from __future__ import annotations

import builtins
import datetime as dt
import errno
import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from silobridge.shared.errors import (
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)

ANCHOR_NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,62}"
MAX_ANCHOR_TEXTS = 200_000
MAX_ANCHOR_TEXT_CHARS = 2_000
FORMAT_VERSION = 1
TEXTS_FILE = "texts.jsonl.gz"
MANIFEST_FILE = "manifest.json"

# re.ASCII: without it \d and friends would admit non-ASCII digits into directory names.
_NAME_RE = re.compile(ANCHOR_NAME_PATTERN, re.ASCII)
_VERSION_RE = re.compile(r"v[0-9]{1,9}", re.ASCII)
_SHA256_RE = re.compile(r"[0-9a-f]{64}", re.ASCII)
# A concurrent build of the same set may take the version number we chose; try the next one.
_BUILD_ATTEMPTS = 8


@dataclass(frozen=True)
class AnchorSetInfo:
    name: str
    version: str  # "v1", "v2", ...
    sha256: str
    count: int
    created_at: str  # ISO-8601 UTC, e.g. "2026-11-26T03:00:00Z"
    source: str  # human description, e.g. "anchors.txt" or "synthetic:16000:seed=0"


@dataclass(frozen=True)
class AnchorSet:
    info: AnchorSetInfo
    texts: tuple[str, ...]


def validate_anchor_set_name(name: str) -> str:
    """Return ``name`` if it is a valid anchor-set name; InvalidArgument otherwise."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"anchor set name {name!r} is invalid: use 1 to 63 characters of a-z, 0-9, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return name


def validate_anchor_set_version(version: str) -> str:
    """Return ``version`` if it looks like ``v1``, ``v2``, …; InvalidArgument otherwise."""
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise InvalidArgument(
            f"anchor set version {version!r} is invalid: expected v1, v2, … (or empty for newest)"
        )
    return version


def anchor_texts_sha256(texts: Sequence[str]) -> str:
    """Hex SHA-256 over each text as its UTF-8 byte length (8 bytes, big-endian) then its bytes.

    The length prefix makes the hash unambiguous: ["ab", "c"] and ["a", "bc"] differ.
    """
    digest = hashlib.sha256()
    for index, text in enumerate(texts):
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(f"anchor text at index {index} is not valid Unicode") from None
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def _check_text(text: str, where: str) -> None:
    if not text:
        raise InvalidArgument(f"{where} is blank; every anchor text must have content")
    if len(text) > MAX_ANCHOR_TEXT_CHARS:
        raise InvalidArgument(
            f"{where} has {len(text)} characters; at most {MAX_ANCHOR_TEXT_CHARS} are allowed"
        )


def _canonical_texts(texts: Sequence[str]) -> list[str]:
    """Strip, validate and de-duplicate (first occurrence wins, order kept)."""
    if isinstance(texts, str):
        raise InvalidArgument("anchor texts must be a list of strings, not one string")
    if len(texts) == 0:
        raise InvalidArgument("no anchor texts given; an anchor set needs at least one text")
    unique: dict[str, None] = {}
    for index, raw in enumerate(texts):
        if not isinstance(raw, str):
            raise InvalidArgument(f"anchor text at index {index} is not a string")
        text = raw.strip()
        _check_text(text, f"anchor text at index {index}")
        unique.setdefault(text, None)
    if len(unique) > MAX_ANCHOR_TEXTS:
        raise ResourceExhausted(
            f"{len(unique)} distinct anchor texts given; an anchor set holds at most "
            f"{MAX_ANCHOR_TEXTS}"
        )
    return list(unique)


def _version_number(version: str) -> int:
    return int(version[1:])


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _texts_file_bytes(texts: Sequence[str]) -> bytes:
    body = "".join(json.dumps(text, ensure_ascii=False) + "\n" for text in texts)
    # mtime=0: the same texts always give the same bytes.
    return gzip.compress(body.encode("utf-8"), mtime=0)


def _manifest_bytes(info: AnchorSetInfo) -> bytes:
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": info.name,
        "version": info.version,
        "sha256": info.sha256,
        "count": info.count,
        "created_at": info.created_at,
        "source": info.source,
    }
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


class _Corrupt(Exception):
    """Raised inside loading; turned into FailedPrecondition naming the set and version."""


class AnchorCatalogue:
    """The anchor sets stored under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # --- reading ------------------------------------------------------------------------------

    def list(self) -> builtins.list[AnchorSetInfo]:
        """Every version of every set, by name then version number (manifests only, not texts)."""
        return [
            self._read_manifest(name, version)
            for name in self._names()
            for version in self._versions(name)
        ]

    def get(self, name: str, version: str = "") -> AnchorSet:
        """Load a version (``""`` = newest), checking its texts against its manifest."""
        name, version = self._resolve(name, version)
        return self._load(name, version)

    def info(self, name: str, version: str = "") -> AnchorSetInfo:
        """The verified description of a version (``""`` = newest)."""
        return self.get(name, version).info

    def version_dir(self, name: str, version: str) -> Path:
        """Where a version lives (whether or not it exists)."""
        return self.root / validate_anchor_set_name(name) / validate_anchor_set_version(version)

    # --- writing ------------------------------------------------------------------------------

    def build(self, name: str, texts: Sequence[str], *, source: str) -> tuple[AnchorSetInfo, bool]:
        """Store ``texts`` as the next version of ``name``.

        Returns (info, True) for a new version, or (the newest version's info, False) when the
        newest version already holds exactly these texts, so re-running a build is harmless.
        """
        validate_anchor_set_name(name)
        canonical = _canonical_texts(texts)
        sha256 = anchor_texts_sha256(canonical)
        set_dir = self._set_dir(name)
        for _ in range(_BUILD_ATTEMPTS):
            versions = self._versions(name)
            if versions:
                newest = self._read_manifest(name, versions[-1])
                if newest.sha256 == sha256:
                    # Verify the texts too, so a damaged newest version is reported now rather
                    # than silently accepted as "unchanged".
                    return self._load(name, versions[-1]).info, False
                number = _version_number(versions[-1]) + 1
            else:
                number = 1
            info = AnchorSetInfo(
                name=name,
                version=f"v{number}",
                sha256=sha256,
                count=len(canonical),
                created_at=_now_iso(),
                source=source,
            )
            if self._write_version(set_dir, info, canonical):
                return info, True
        raise FailedPrecondition(
            f"could not write a new version of anchor set {name}: other builds kept taking the "
            "next version number; try again"
        )

    # --- internals ----------------------------------------------------------------------------

    def _set_dir(self, name: str) -> Path:
        validate_anchor_set_name(name)
        path = self.root / name
        if path.is_symlink():
            raise FailedPrecondition(
                f"anchor set directory {path} is a symbolic link; refusing to use it"
            )
        if path.exists() and not path.is_dir():
            raise FailedPrecondition(f"{path} exists and is not an anchor set directory")
        return path

    def _names(self) -> builtins.list[str]:
        try:
            entries = list(self.root.iterdir())
        except FileNotFoundError:
            return []
        except OSError as error:
            raise ConfigError(f"cannot read the anchor catalogue {self.root}: {error}") from None
        return sorted(
            entry.name
            for entry in entries
            if _NAME_RE.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink()
        )

    def _versions(self, name: str) -> builtins.list[str]:
        """Version directories of a set, oldest first; staging leftovers (".v3.…") are ignored."""
        set_dir = self._set_dir(name)
        try:
            entries = list(set_dir.iterdir())
        except FileNotFoundError:
            return []
        except OSError as error:
            raise ConfigError(f"cannot read anchor set directory {set_dir}: {error}") from None
        versions = [
            entry.name
            for entry in entries
            if _VERSION_RE.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink()
        ]
        return sorted(versions, key=_version_number)

    def _resolve(self, name: str, version: str) -> tuple[str, str]:
        validate_anchor_set_name(name)
        if version:
            validate_anchor_set_version(version)
        versions = self._versions(name)
        if not versions:
            names = self._names()
            existing = ", ".join(names) if names else "none; build one with `anchors build`"
            raise NotFound(f"anchor set {name!r} does not exist; anchor sets: {existing}")
        if not version:
            return name, versions[-1]
        if version not in versions:
            if (self.root / name / version).is_symlink():
                raise FailedPrecondition(
                    f"anchor set {name} {version} is a symbolic link; refusing to use it"
                )
            raise NotFound(
                f"anchor set {name} has no version {version}; versions: {', '.join(versions)}"
            )
        return name, version

    def _read_manifest(self, name: str, version: str) -> AnchorSetInfo:
        try:
            return self._parse_manifest(name, version)
        except _Corrupt as error:
            raise FailedPrecondition(f"anchor set {name} {version} is corrupt: {error}") from None

    def _parse_manifest(self, name: str, version: str) -> AnchorSetInfo:
        path = self.root / name / version / MANIFEST_FILE
        try:
            raw: Any = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise _Corrupt(f"{path} is missing") from None
        except (OSError, ValueError) as error:
            raise _Corrupt(f"cannot read {path}: {error}") from None
        if not isinstance(raw, dict):
            raise _Corrupt(f"{path} is not a JSON object")
        if raw.get("format_version") != FORMAT_VERSION:
            raise _Corrupt(
                f"{path} has format_version {raw.get('format_version')!r}; "
                f"this build reads {FORMAT_VERSION}"
            )
        fields = {"name": str, "version": str, "sha256": str, "created_at": str, "source": str}
        for key, kind in fields.items():
            if not isinstance(raw.get(key), kind):
                raise _Corrupt(f"{path}: {key!r} is missing or not a {kind.__name__}")
        count = raw.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise _Corrupt(f"{path}: 'count' must be a positive integer, got {count!r}")
        if raw["name"] != name or raw["version"] != version:
            raise _Corrupt(f"{path} describes {raw['name']} {raw['version']}, not {name} {version}")
        if not _SHA256_RE.fullmatch(raw["sha256"]):
            raise _Corrupt(f"{path}: 'sha256' is not 64 lower-case hex digits")
        return AnchorSetInfo(
            name=name,
            version=version,
            sha256=raw["sha256"],
            count=count,
            created_at=raw["created_at"],
            source=raw["source"],
        )

    def _load(self, name: str, version: str) -> AnchorSet:
        info = self._read_manifest(name, version)
        try:
            texts = tuple(self._read_stored_texts(self.root / name / version / TEXTS_FILE))
            if len(texts) != info.count:
                raise _Corrupt(f"the manifest says {info.count} texts but {len(texts)} are stored")
            actual = anchor_texts_sha256(texts)
            if actual != info.sha256:
                raise _Corrupt(
                    f"the stored texts hash to {actual[:12]}…, the manifest says "
                    f"{info.sha256[:12]}…"
                )
        except _Corrupt as error:
            raise FailedPrecondition(f"anchor set {name} {version} is corrupt: {error}") from None
        return AnchorSet(info=info, texts=texts)

    @staticmethod
    def _read_stored_texts(path: Path) -> builtins.list[str]:
        texts: builtins.list[str] = []
        try:
            with gzip.open(path, "rb") as handle:
                for number, line in enumerate(handle, 1):
                    try:
                        value: Any = json.loads(line)
                    except ValueError:
                        raise _Corrupt(f"{path}:{number} is not valid JSON") from None
                    if isinstance(value, dict):
                        value = value.get("text")
                    if not isinstance(value, str):
                        raise _Corrupt(f"{path}:{number} is not a text")
                    texts.append(value)
        except FileNotFoundError:
            raise _Corrupt(f"{path} is missing") from None
        except (OSError, EOFError, zlib.error) as error:
            raise _Corrupt(f"cannot read {path}: {error}") from None
        return texts

    def _write_version(self, set_dir: Path, info: AnchorSetInfo, texts: Sequence[str]) -> bool:
        """Stage, fsync and rename into place; False if another build took this version first."""
        target = set_dir / info.version
        try:
            created_root = not self.root.exists()
            created_set = not set_dir.exists()
            set_dir.mkdir(parents=True, exist_ok=True)
            # New directory entries must be durable too, or a crash could lose the whole set.
            if created_root:
                _fsync_directory(self.root.parent)
            if created_set:
                _fsync_directory(self.root)
            staging = Path(tempfile.mkdtemp(prefix=f".{info.version}.", suffix=".tmp", dir=set_dir))
        except OSError as error:
            raise ConfigError(f"cannot create anchor set directory {set_dir}: {error}") from None
        try:
            _write_file(staging / TEXTS_FILE, _texts_file_bytes(texts))
            _write_file(staging / MANIFEST_FILE, _manifest_bytes(info))
            _fsync_directory(staging)
            try:
                # rename(2) of a directory fails when the target is a non-empty directory, so a
                # version written concurrently by another build is never replaced.
                staging.rename(target)
            except OSError as error:
                if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    shutil.rmtree(staging, ignore_errors=True)
                    return False
                raise
            _fsync_directory(set_dir)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise ConfigError(f"cannot write anchor set {target}: {error}") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return True


# --- anchor files -----------------------------------------------------------------------------

_FILE_KINDS = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")


def _file_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            yield from enumerate(handle, 1)
    except FileNotFoundError:
        raise ConfigError(f"anchor file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"anchor file {path} is a directory") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise InvalidArgument(f"anchor file {path} is not a valid gzip file: {error}") from None
    except OSError as error:
        raise ConfigError(f"cannot read anchor file {path}: {error}") from None


def read_anchor_file(path: Path) -> list[str]:
    """Texts from ``.txt`` (one per line), ``.jsonl`` (a JSON string or {"text": …} per line),
    or a ``.gz`` of either. Blank lines are skipped; a bad line is an error naming ``file:line``.
    """
    name = path.name.lower()
    kind = next((k for k in _FILE_KINDS if name.endswith(k)), None)
    if kind is None:
        raise InvalidArgument(
            f"anchor file {path} has an unknown type; expected one of {', '.join(_FILE_KINDS)}"
        )
    jsonl = kind.startswith(".jsonl")
    texts: list[str] = []
    for number, raw in _file_lines(path):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(f"{where}: not valid UTF-8") from None
        if not line.strip():
            continue
        if jsonl:
            try:
                value: Any = json.loads(line)
            except ValueError as error:
                raise InvalidArgument(f"{where}: not valid JSON ({error})") from None
            if isinstance(value, dict):
                value = value.get("text")
            if not isinstance(value, str):
                raise InvalidArgument(
                    f'{where}: expected a JSON string or an object with a "text" string'
                )
            text = value.strip()
        else:
            text = line.strip()
        _check_text(text, f"{where}: the text")
        texts.append(text)
    if not texts:
        raise InvalidArgument(f"anchor file {path} holds no texts")
    return texts
