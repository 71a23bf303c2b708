"""One stored anchor-set version on disk: its manifest (AnchorSetInfo) and its texts file.

A version directory holds exactly two files::

    texts.jsonl.gz   one JSON string per line, in order
    manifest.json    {name, version, sha256, count, created_at, source, format_version}
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
TEXTS_FILE = "texts.jsonl.gz"
MANIFEST_FILE = "manifest.json"

_SHA256_RE = re.compile(r"[0-9a-f]{64}", re.ASCII)


@dataclass(frozen=True)
class AnchorSetInfo:
    name: str
    version: str  # "v1", "v2", ...
    sha256: str
    count: int
    created_at: str  # ISO-8601 UTC, e.g. "2026-11-26T03:00:00Z"
    source: str  # human description, e.g. "anchors.txt" or "synthetic:16000:seed=0"


class CorruptVersion(Exception):
    """A stored version does not read back as written; the catalogue names the set and version."""


def version_files(info: AnchorSetInfo, texts: Sequence[str]) -> dict[str, bytes]:
    """The files of a version directory, by name, as the bytes to write."""
    return {TEXTS_FILE: _texts_file_bytes(texts), MANIFEST_FILE: _manifest_bytes(info)}


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


def read_manifest(version_dir: Path, name: str, version: str) -> AnchorSetInfo:
    """Parse and check the manifest in ``version_dir``, which must describe ``name`` ``version``.

    Raises CorruptVersion for a missing, unreadable or inconsistent manifest.
    """
    path = version_dir / MANIFEST_FILE
    try:
        raw: Any = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CorruptVersion(f"{path} is missing") from None
    except (OSError, ValueError) as error:
        raise CorruptVersion(f"cannot read {path}: {error}") from None
    if not isinstance(raw, dict):
        raise CorruptVersion(f"{path} is not a JSON object")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CorruptVersion(
            f"{path} has format_version {raw.get('format_version')!r}; "
            f"this build reads {FORMAT_VERSION}"
        )
    fields = {"name": str, "version": str, "sha256": str, "created_at": str, "source": str}
    for key, kind in fields.items():
        if not isinstance(raw.get(key), kind):
            raise CorruptVersion(f"{path}: {key!r} is missing or not a {kind.__name__}")
    count = raw.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise CorruptVersion(f"{path}: 'count' must be a positive integer, got {count!r}")
    if raw["name"] != name or raw["version"] != version:
        raise CorruptVersion(
            f"{path} describes {raw['name']} {raw['version']}, not {name} {version}"
        )
    if not _SHA256_RE.fullmatch(raw["sha256"]):
        raise CorruptVersion(f"{path}: 'sha256' is not 64 lower-case hex digits")
    return AnchorSetInfo(
        name=name,
        version=version,
        sha256=raw["sha256"],
        count=count,
        created_at=raw["created_at"],
        source=raw["source"],
    )


def read_stored_texts(version_dir: Path) -> list[str]:
    """The texts in ``version_dir``'s texts file, in order; CorruptVersion if unreadable."""
    path = version_dir / TEXTS_FILE
    texts: list[str] = []
    try:
        with gzip.open(path, "rb") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    value: Any = json.loads(line)
                except ValueError:
                    raise CorruptVersion(f"{path}:{number} is not valid JSON") from None
                if isinstance(value, dict):
                    value = value.get("text")
                if not isinstance(value, str):
                    raise CorruptVersion(f"{path}:{number} is not a text")
                texts.append(value)
    except FileNotFoundError:
        raise CorruptVersion(f"{path} is missing") from None
    except (OSError, EOFError, zlib.error) as error:
        raise CorruptVersion(f"cannot read {path}: {error}") from None
    return texts
