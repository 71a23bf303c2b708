"""The adapter manifest: what an artifact maps between, and strict parsing of ``manifest.json``."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from silobridge.core.errors import FailedPrecondition, InvalidArgument, SiloBridgeError
from silobridge.core.spaces import SpaceDescriptor

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"

ParamValue = int | float | str | bool


class ArtifactCorrupt(FailedPrecondition):
    """The artifact's files are malformed or do not agree with each other."""


@dataclass(frozen=True)
class AdapterManifest:
    """What an adapter maps from and to, how it was trained, and the hash of its weights."""

    format_version: int
    kind: str
    params: Mapping[str, ParamValue]
    source: SpaceDescriptor
    target: SpaceDescriptor
    anchor_set_sha256: str
    metrics: Mapping[str, float]
    source_dim: int
    target_dim: int
    weights_sha256: str
    created_at: str

    def to_json_bytes(self) -> bytes:
        """Canonical JSON (sorted keys, indent 2, finite numbers only), newline-terminated."""
        document = {
            "format_version": self.format_version,
            "kind": self.kind,
            "params": dict(self.params),
            "source": _space_to_json(self.source),
            "target": _space_to_json(self.target),
            "anchor_set_sha256": self.anchor_set_sha256,
            "metrics": dict(self.metrics),
            "source_dim": self.source_dim,
            "target_dim": self.target_dim,
            "weights_sha256": self.weights_sha256,
            "created_at": self.created_at,
        }
        try:
            text = json.dumps(document, sort_keys=True, indent=2, allow_nan=False)
        except ValueError:
            raise InvalidArgument(
                f"adapter {self.kind!r} has a non-finite metric or parameter "
                f"(metrics {dict(self.metrics)}); JSON manifests hold finite numbers only"
            ) from None
        return (text + "\n").encode()


def parse_manifest(data: bytes) -> AdapterManifest:
    """Parse and validate ``manifest.json`` bytes; anything malformed raises ``ArtifactCorrupt``."""
    try:
        document = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ArtifactCorrupt(f"{MANIFEST_FILE} is not valid JSON: {err}") from None
    fields = _Fields(document, MANIFEST_FILE)
    version = fields.integer("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactCorrupt(
            f"{MANIFEST_FILE} has format_version {version}; this SiloBridge reads version "
            f"{FORMAT_VERSION} (upgrade SiloBridge, or re-export the adapter)"
        )
    manifest = AdapterManifest(
        format_version=version,
        kind=fields.string("kind"),
        params=fields.params("params"),
        source=_space_from_json(fields.nested("source")),
        target=_space_from_json(fields.nested("target")),
        anchor_set_sha256=fields.digest("anchor_set_sha256"),
        metrics=fields.metrics("metrics"),
        source_dim=fields.integer("source_dim"),
        target_dim=fields.integer("target_dim"),
        weights_sha256=fields.digest("weights_sha256"),
        created_at=fields.timestamp("created_at"),
    )
    fields.finish()
    if manifest.source.dimension != manifest.source_dim:
        raise ArtifactCorrupt(f"{MANIFEST_FILE}: source.dimension differs from source_dim")
    if manifest.target.dimension != manifest.target_dim:
        raise ArtifactCorrupt(f"{MANIFEST_FILE}: target.dimension differs from target_dim")
    return manifest


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


def is_sha256_hex(value: str) -> bool:
    """Whether ``value`` is a SHA-256 digest written as 64 lower-case hex digits."""
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


class _Fields:
    """Typed, exhaustive access to one JSON object: every key must be read exactly as expected."""

    def __init__(self, document: object, where: str) -> None:
        if not isinstance(document, dict):
            raise ArtifactCorrupt(f"{where} must be a JSON object")
        self._document: dict[str, object] = document
        self._where = where
        self._seen: set[str] = set()

    def _get(self, key: str) -> object:
        if key not in self._document:
            raise ArtifactCorrupt(f"{self._where} lacks {key!r}")
        self._seen.add(key)
        return self._document[key]

    def _wrong(self, key: str, wanted: str) -> SiloBridgeError:
        return ArtifactCorrupt(f"{self._where}: {key!r} must be {wanted}")

    def string(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not value:
            raise self._wrong(key, "a non-empty string")
        return value

    def integer(self, key: str) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self._wrong(key, "a non-negative integer")
        return value

    def digest(self, key: str) -> str:
        value = self.string(key)
        if not is_sha256_hex(value):
            raise self._wrong(key, "64 lower-case hex digits")
        return value

    def timestamp(self, key: str) -> str:
        value = self.string(key)
        try:
            dt.datetime.fromisoformat(value)
        except ValueError:
            raise self._wrong(key, "an ISO 8601 timestamp") from None
        return value

    def nested(self, key: str) -> _Fields:
        return _Fields(self._get(key), f"{self._where}: {key}")

    def params(self, key: str) -> dict[str, ParamValue]:
        value = self._get(key)
        if not isinstance(value, dict) or not all(
            isinstance(v, int | float | str | bool) for v in value.values()
        ):
            raise self._wrong(key, "an object of numbers, strings and booleans")
        return dict(value)

    def metrics(self, key: str) -> dict[str, float]:
        value = self._get(key)
        if not isinstance(value, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in value.values()
        ):
            raise self._wrong(key, "an object of finite numbers")
        return {name: float(number) for name, number in value.items()}

    def finish(self) -> None:
        unknown = sorted(set(self._document) - self._seen)
        if unknown:
            raise ArtifactCorrupt(f"{self._where} has unknown keys {unknown[:5]}")


def _space_to_json(space: SpaceDescriptor) -> dict[str, object]:
    return {
        "space_id": space.space_id,
        "model_id": space.model_id,
        "dimension": space.dimension,
        "fingerprint": space.fingerprint,
        "metric": space.metric,
    }


def _space_from_json(fields: _Fields) -> SpaceDescriptor:
    space = SpaceDescriptor(
        space_id=fields.string("space_id"),
        model_id=fields.string("model_id"),
        dimension=fields.integer("dimension"),
        fingerprint=fields.string("fingerprint"),
        metric=fields.string("metric"),
    )
    fields.finish()
    return space
