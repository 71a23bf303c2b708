"""The rows of the coordinator's state: silo and adapter records and their SQLite encodings."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from silobridge.core.errors import FailedPrecondition
from silobridge.core.spaces import SpaceDescriptor

# Statements are spelled out in full (no string assembly), so no value can reach SQL text. Their
# column order is what ``silo_from_row`` and ``adapter_from_row`` unpack.
SELECT_SILOS = (
    "SELECT name, endpoint, spiffe_id, org, space, document_count, registered_at, also_serves, "
    "cert_serial, cert_fingerprint, server_serial, server_fingerprint, disabled FROM silos"
)
SELECT_ADAPTERS = (
    "SELECT adapter_id, kind, source, target, anchor_set, anchor_set_version, "
    "anchor_set_sha256, metrics, created_at, path FROM adapters"
)


@dataclass(frozen=True)
class SiloRecord:
    """A registered silo: where to reach it, who it is, and the space its index lives in.

    ``also_serves``: the other spaces the silo answers in natively, without an adapter from the
    coordinator (while it migrates to another model: the new space before cut-over, the old one
    after), as its Describe said at registration or at the latest ListSilos probe.

    ``cert_serial``/``cert_fingerprint``: the certificate the silo registered with;
    ``server_serial``/``server_fingerprint``: the one its endpoint presented to the coordinator
    then (empty for silos registered before the coordinator recorded them). The denylist is
    checked against both before any query is routed to the silo. ``disabled``: an admin's
    reason for routing it nothing (empty: enabled); registering again does not clear it.
    """

    name: str
    endpoint: str
    spiffe_id: str
    org: str
    space: SpaceDescriptor
    document_count: int
    registered_at: float  # unix seconds
    also_serves: tuple[SpaceDescriptor, ...] = ()
    cert_serial: str = ""
    cert_fingerprint: str = ""
    server_serial: str = ""
    server_fingerprint: str = ""
    disabled: str = ""

    def served_spaces(self) -> tuple[SpaceDescriptor, ...]:
        """Every space the silo answers in natively: its own first, then ``also_serves``."""
        return (self.space, *self.also_serves)

    def serves(self, fingerprint: str) -> SpaceDescriptor | None:
        """The space of ``fingerprint`` that the silo answers in natively, if it does."""
        for space in self.served_spaces():
            if space.fingerprint == fingerprint:
                return space
        return None


@dataclass(frozen=True)
class AdapterRecord:
    """A trained adapter: the spaces it maps between, its anchors, metrics and artifact."""

    adapter_id: str
    kind: str
    source: SpaceDescriptor
    target: SpaceDescriptor
    anchor_set: str
    anchor_set_version: str
    anchor_set_sha256: str
    metrics: dict[str, float]
    created_at: float  # unix seconds
    path: Path  # the artifact directory


def _space_dict(space: SpaceDescriptor) -> dict[str, Any]:
    return {
        "space_id": space.space_id,
        "model_id": space.model_id,
        "dimension": space.dimension,
        "fingerprint": space.fingerprint,
        "metric": space.metric,
    }


def _space_from_dict(raw: Mapping[str, Any]) -> SpaceDescriptor:
    return SpaceDescriptor(
        space_id=_typed(raw, "space_id", str),
        model_id=_typed(raw, "model_id", str),
        dimension=_typed(raw, "dimension", int),
        fingerprint=_typed(raw, "fingerprint", str),
        metric=_typed(raw, "metric", str),
    )


def space_to_json(space: SpaceDescriptor) -> str:
    """A space descriptor as canonical JSON."""
    return json.dumps(_space_dict(space), sort_keys=True, separators=(",", ":"))


def space_from_json(text: str) -> SpaceDescriptor:
    """Parse ``space_to_json``'s output; anything else is a corrupt state file."""
    try:
        return _space_from_dict(json.loads(text))
    except (ValueError, TypeError, KeyError) as err:
        raise FailedPrecondition(f"coordinator state holds a malformed space: {err}") from None


def spaces_to_json(spaces: Sequence[SpaceDescriptor]) -> str:
    """Space descriptors, in order, as a canonical JSON list (``[]`` for none)."""
    return json.dumps([_space_dict(s) for s in spaces], sort_keys=True, separators=(",", ":"))


def spaces_from_json(text: str) -> tuple[SpaceDescriptor, ...]:
    """Parse ``spaces_to_json``'s output; anything else is a corrupt state file."""
    try:
        raw = json.loads(text)
        if not isinstance(raw, list):
            raise TypeError(f"a space list is {type(raw).__name__}, expected list")
        return tuple(_space_from_dict(item) for item in raw)
    except (ValueError, TypeError, KeyError) as err:
        raise FailedPrecondition(f"coordinator state holds a malformed space list: {err}") from None


def _typed(raw: Mapping[str, Any], key: str, kind: type[Any]) -> Any:
    value = raw[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{key} is {type(value).__name__}, expected {kind.__name__}")
    return value


def silo_to_row(record: SiloRecord) -> tuple[Any, ...]:
    """The values of an ``INSERT INTO silos`` in ``SELECT_SILOS`` column order."""
    return (
        record.name,
        record.endpoint,
        record.spiffe_id,
        record.org,
        space_to_json(record.space),
        record.document_count,
        record.registered_at,
        spaces_to_json(record.also_serves),
        record.cert_serial,
        record.cert_fingerprint,
        record.server_serial,
        record.server_fingerprint,
        record.disabled,
    )


def silo_from_row(row: tuple[Any, ...]) -> SiloRecord:
    """A silo record from a ``SELECT_SILOS`` row."""
    (name, endpoint, spiffe_id, org, space, document_count, registered_at, also_serves) = row[:8]
    cert_serial, cert_fingerprint, server_serial, server_fingerprint, disabled = row[8:]
    return SiloRecord(
        name=name,
        endpoint=endpoint,
        spiffe_id=spiffe_id,
        org=org,
        space=space_from_json(space),
        document_count=int(document_count),
        registered_at=float(registered_at),
        also_serves=spaces_from_json(also_serves),
        cert_serial=str(cert_serial),
        cert_fingerprint=str(cert_fingerprint),
        server_serial=str(server_serial),
        server_fingerprint=str(server_fingerprint),
        disabled=str(disabled),
    )


def adapter_to_row(record: AdapterRecord, state_dir: Path) -> tuple[Any, ...]:
    """The values of an ``INSERT INTO adapters`` in ``SELECT_ADAPTERS`` column order."""
    return (
        record.adapter_id,
        record.kind,
        space_to_json(record.source),
        space_to_json(record.target),
        record.anchor_set,
        record.anchor_set_version,
        record.anchor_set_sha256,
        json.dumps(
            {name: float(value) for name, value in record.metrics.items()},
            sort_keys=True,
        ),
        record.created_at,
        _stored_path(record.path, state_dir),
    )


def adapter_from_row(row: tuple[Any, ...], state_dir: Path) -> AdapterRecord:
    """An adapter record from a ``SELECT_ADAPTERS`` row; relative paths are under ``state_dir``."""
    adapter_id, kind, source, target, name, version, sha256, metrics, created, path = row
    try:
        parsed = json.loads(metrics)
        metric_values = {str(key): float(value) for key, value in parsed.items()}
    except (ValueError, TypeError, AttributeError) as err:
        raise FailedPrecondition(
            f"coordinator state holds malformed metrics for adapter {adapter_id!r}: {err}"
        ) from None
    stored = Path(path)
    return AdapterRecord(
        adapter_id=adapter_id,
        kind=kind,
        source=space_from_json(source),
        target=space_from_json(target),
        anchor_set=name,
        anchor_set_version=version,
        anchor_set_sha256=sha256,
        metrics=metric_values,
        created_at=float(created),
        path=stored if stored.is_absolute() else state_dir / stored,
    )


def _stored_path(path: Path, state_dir: Path) -> str:
    # Artifacts under the state directory are stored relative to it, so the whole state
    # directory can be moved or restored from a backup elsewhere.
    try:
        return str(Path(path).relative_to(state_dir))
    except ValueError:
        return str(path)
