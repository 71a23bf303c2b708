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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from silobridge.coordinator.anchors.manifest import (
    AnchorSetInfo,
    CorruptVersion,
    read_manifest,
    read_stored_texts,
    version_files,
)
from silobridge.coordinator.anchors.validation import (
    NAME_RE,
    VERSION_RE,
    anchor_texts_sha256,
    canonical_texts,
    validate_anchor_set_name,
    validate_anchor_set_version,
    version_number,
)
from silobridge.core.durable import ensure_directory, publish_directory, stage_directory
from silobridge.core.errors import ConfigError, FailedPrecondition, NotFound

# A concurrent build of the same set may take the version number we chose; try the next one.
_BUILD_ATTEMPTS = 8


@dataclass(frozen=True)
class AnchorSet:
    info: AnchorSetInfo
    texts: tuple[str, ...]


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
        canonical = canonical_texts(texts)
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
                number = version_number(versions[-1]) + 1
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
            if NAME_RE.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink()
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
            if VERSION_RE.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink()
        ]
        return sorted(versions, key=version_number)

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
            return read_manifest(self.root / name / version, name, version)
        except CorruptVersion as error:
            raise FailedPrecondition(f"anchor set {name} {version} is corrupt: {error}") from None

    def _load(self, name: str, version: str) -> AnchorSet:
        info = self._read_manifest(name, version)
        try:
            texts = tuple(read_stored_texts(self.root / name / version))
            if len(texts) != info.count:
                raise CorruptVersion(
                    f"the manifest says {info.count} texts but {len(texts)} are stored"
                )
            actual = anchor_texts_sha256(texts)
            if actual != info.sha256:
                raise CorruptVersion(
                    f"the stored texts hash to {actual[:12]}…, the manifest says "
                    f"{info.sha256[:12]}…"
                )
        except CorruptVersion as error:
            raise FailedPrecondition(f"anchor set {name} {version} is corrupt: {error}") from None
        return AnchorSet(info=info, texts=texts)

    def _write_version(self, set_dir: Path, info: AnchorSetInfo, texts: Sequence[str]) -> bool:
        """Stage, fsync and rename into place; False if another build took this version first."""
        target = set_dir / info.version
        try:
            # New directory entries must be durable too, or a crash could lose the whole set.
            ensure_directory(set_dir)
        except OSError as error:
            raise ConfigError(f"cannot create anchor set directory {set_dir}: {error}") from None
        try:
            staging = stage_directory(target, version_files(info, texts))
            # A version written concurrently by another build is never replaced: False then.
            return publish_directory(staging, target)
        except OSError as error:
            raise ConfigError(f"cannot write anchor set {target}: {error}") from None
