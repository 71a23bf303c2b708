"""Adapter artifacts on disk: a manifest, safetensors weights and a detached Ed25519 signature.

An artifact is data, never code: loading rebuilds the adapter through the fixed registry of
``adapter_from_state`` from a kind string and tensors, and never imports a name found in a file.
The signature covers ``PREFIX || sha256(manifest.json) || sha256(weights.safetensors)``, so
neither file can be changed or swapped for another artifact's without breaking it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import safetensors.numpy

from silobridge.adapters import signing
from silobridge.adapters.hubness import RECEIVING_PREFIX
from silobridge.adapters.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    AdapterManifest,
    ArtifactCorrupt,
    ParamValue,
    is_sha256_hex,
    parse_manifest,
)
from silobridge.core.durable import write_directory_atomically
from silobridge.core.errors import ConfigError, FailedPrecondition, InvalidArgument, NotFound
from silobridge.core.spaces import SpaceDescriptor

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from silobridge.adapters import Adapter

# The manifest names moved to ``manifest``; they stay importable from here for existing callers.
__all__ = [
    "ARTIFACT_FILES",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "MAX_MANIFEST_BYTES",
    "SIGNATURE_FILE",
    "SIGNATURE_PREFIX",
    "WEIGHTS_FILE",
    "AdapterManifest",
    "ArtifactCorrupt",
    "LoadedAdapter",
    "ParamValue",
    "SpaceMismatch",
    "check_spaces",
    "load_adapter",
    "parse_manifest",
    "save_adapter",
    "signed_payload",
]

WEIGHTS_FILE = "weights.safetensors"
SIGNATURE_FILE = "signature.ed25519"
ARTIFACT_FILES = frozenset({MANIFEST_FILE, WEIGHTS_FILE, SIGNATURE_FILE})
# Domain separation: a signature over an adapter can never be replayed as one over anything else.
SIGNATURE_PREFIX = b"silobridge-adapter-v1\n"
# A real manifest is a few KiB; refusing larger ones bounds what a hostile file costs to parse.
MAX_MANIFEST_BYTES = 1 << 20


class SpaceMismatch(FailedPrecondition):
    """The artifact maps between other embedding spaces than the caller expects."""


@dataclass(frozen=True)
class LoadedAdapter:
    """An adapter rebuilt from an artifact, its manifest, and whether a key verified it."""

    adapter: Adapter
    manifest: AdapterManifest
    verified: bool
    # Tensors for the receiving silo (``hubness.RECEIVING_PREFIX``), such as the hubness
    # reference: signed with the weights, never passed to the adapter.
    receiving: Mapping[str, np.ndarray[Any, Any]] = dataclasses.field(default_factory=dict)


def signed_payload(manifest_bytes: bytes, weights_bytes: bytes) -> bytes:
    """The bytes the artifact signature is made over."""
    return (
        SIGNATURE_PREFIX
        + hashlib.sha256(manifest_bytes).digest()
        + hashlib.sha256(weights_bytes).digest()
    )


# --- saving ---------------------------------------------------------------------------------


def save_adapter(
    directory: Path,
    adapter: Adapter,
    *,
    source: SpaceDescriptor,
    target: SpaceDescriptor,
    anchor_set_sha256: str,
    signing_key: Ed25519PrivateKey | None = None,
    receiving: Mapping[str, np.ndarray[Any, Any]] | None = None,
) -> AdapterManifest:
    """Write ``adapter`` as an artifact directory, replacing any artifact already there.

    Readers see the old artifact or the new one, never a mix: the files are written and fsynced
    in a sibling temporary directory first. The signature is written only when a key is given.
    ``receiving`` tensors (names starting with ``receiving.``) are stored and signed beside the
    weights for the silo that receives through the adapter.
    """
    if source.dimension != adapter.source_dim:
        raise InvalidArgument(
            f"source space {source.space_id!r} has dimension {source.dimension} but the "
            f"{adapter.kind} adapter takes {adapter.source_dim}-dimensional vectors"
        )
    if target.dimension != adapter.target_dim:
        raise InvalidArgument(
            f"target space {target.space_id!r} has dimension {target.dimension} but the "
            f"{adapter.kind} adapter produces {adapter.target_dim}-dimensional vectors"
        )
    if not is_sha256_hex(anchor_set_sha256):
        raise InvalidArgument(
            f"anchor_set_sha256 must be 64 lower-case hex digits, got {anchor_set_sha256!r}"
        )
    weights_bytes = safetensors.numpy.save(_weight_tensors(adapter, receiving))
    manifest = AdapterManifest(
        format_version=FORMAT_VERSION,
        kind=adapter.kind,
        params=dict(adapter.params()),
        source=source,
        target=target,
        anchor_set_sha256=anchor_set_sha256,
        metrics={name: float(value) for name, value in adapter.metrics.items()},
        source_dim=adapter.source_dim,
        target_dim=adapter.target_dim,
        weights_sha256=hashlib.sha256(weights_bytes).hexdigest(),
        created_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    manifest_bytes = manifest.to_json_bytes()
    files = {MANIFEST_FILE: manifest_bytes, WEIGHTS_FILE: weights_bytes}
    if signing_key is not None:
        files[SIGNATURE_FILE] = signing.sign(
            signing_key, signed_payload(manifest_bytes, weights_bytes)
        )
    _write_directory_atomically(directory, files)
    return manifest


def weights_sha256(
    adapter: Adapter, receiving: Mapping[str, np.ndarray[Any, Any]] | None = None
) -> str:
    """The sha256 of the weights file ``save_adapter`` writes for ``adapter`` and ``receiving``
    (its manifest's ``weights_sha256``), without writing anything."""
    return hashlib.sha256(safetensors.numpy.save(_weight_tensors(adapter, receiving))).hexdigest()


def _weight_tensors(
    adapter: Adapter, receiving: Mapping[str, np.ndarray[Any, Any]] | None
) -> dict[str, np.ndarray[Any, Any]]:
    tensors = _contiguous_tensors(adapter)
    for name, value in (receiving or {}).items():
        if not name.startswith(RECEIVING_PREFIX) or name in tensors:
            raise InvalidArgument(
                f"receiving tensor {name!r} must be named {RECEIVING_PREFIX}<name>"
            )
        tensors[name] = _contiguous(name, value)
    return tensors


def _contiguous_tensors(adapter: Adapter) -> dict[str, np.ndarray[Any, Any]]:
    tensors: dict[str, np.ndarray[Any, Any]] = {}
    for name, value in adapter.tensors().items():
        if name.startswith(RECEIVING_PREFIX):
            raise InvalidArgument(f"adapter tensor {name!r} uses the reserved receiving. prefix")
        tensors[name] = _contiguous(name, value)
    return tensors


def _contiguous(name: str, value: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    array = np.ascontiguousarray(value)
    if array.dtype.kind not in "fiub":
        raise InvalidArgument(
            f"adapter tensor {name!r} has dtype {array.dtype}; only numeric arrays are stored"
        )
    return array


def _write_directory_atomically(directory: Path, files: Mapping[str, bytes]) -> None:
    _refuse_to_clobber(directory)
    try:
        write_directory_atomically(directory, files)
    except OSError as err:
        raise ConfigError(f"cannot write the artifact {directory}: {err}") from None


def _refuse_to_clobber(directory: Path) -> None:
    """Only ever replace an artifact: a typo must not delete some unrelated directory."""
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise ConfigError(f"{directory} exists and is not an artifact directory; not replacing it")
    if directory.is_dir():
        strangers = sorted(p.name for p in directory.iterdir() if p.name not in ARTIFACT_FILES)
        if strangers:
            raise ConfigError(
                f"{directory} holds {', '.join(strangers[:5])}, so it is not an adapter "
                "artifact; refusing to replace it (choose an empty or new directory)"
            )


# --- loading --------------------------------------------------------------------------------


def load_adapter(
    directory: Path,
    *,
    verify_key: Ed25519PublicKey | None = None,
    expected_source: SpaceDescriptor | None = None,
    expected_target: SpaceDescriptor | None = None,
) -> LoadedAdapter:
    """Load and check an artifact; rebuild its adapter only through the fixed kind registry.

    With ``verify_key`` the signature is required and checked before anything is parsed. The
    weights must match the manifest's hash, and the spaces the caller expects must match the
    artifact's fingerprints; every failure raises a ``SiloBridgeError`` saying which.
    """
    manifest_bytes, weights_bytes, signature_bytes = _read_artifact(directory)
    if verify_key is not None:
        if signature_bytes is None:
            raise signing.SignatureInvalid(
                f"adapter artifact {directory} is unsigned ({SIGNATURE_FILE} is missing) but a "
                "verify key was given; ask the coordinator for a signed artifact"
            )
        signing.verify(verify_key, signed_payload(manifest_bytes, weights_bytes), signature_bytes)
    manifest = parse_manifest(manifest_bytes)
    if hashlib.sha256(weights_bytes).hexdigest() != manifest.weights_sha256:
        raise ArtifactCorrupt(
            f"adapter artifact {directory} is corrupt: {WEIGHTS_FILE} does not match the "
            "sha256 recorded in its manifest"
        )
    check_spaces(manifest, expected_source=expected_source, expected_target=expected_target)
    adapter, receiving = _rebuild(manifest, weights_bytes)
    return LoadedAdapter(
        adapter=adapter, manifest=manifest, verified=verify_key is not None, receiving=receiving
    )


def _read_artifact(directory: Path) -> tuple[bytes, bytes, bytes | None]:
    # Opening members relative to one directory descriptor reads a single artifact even if a
    # writer swaps the directory meanwhile (the swap then shows up as a missing file).
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        raise NotFound(f"no adapter artifact at {directory}") from None
    except OSError as err:
        raise NotFound(f"cannot open adapter artifact {directory}: {err.strerror}") from None
    try:
        manifest_bytes = _read_member(directory, dir_fd, MANIFEST_FILE, MAX_MANIFEST_BYTES)
        weights_bytes = _read_member(directory, dir_fd, WEIGHTS_FILE, None)
        try:
            signature_bytes: bytes | None = _read_member(
                directory, dir_fd, SIGNATURE_FILE, signing.SIGNATURE_BYTES
            )
        except NotFound:
            signature_bytes = None
    finally:
        os.close(dir_fd)
    return manifest_bytes, weights_bytes, signature_bytes


def _read_member(directory: Path, dir_fd: int, name: str, limit: int | None) -> bytes:
    try:
        fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    except FileNotFoundError:
        raise NotFound(f"adapter artifact {directory} has no {name}") from None
    except OSError as err:
        raise ArtifactCorrupt(f"cannot read {name} of {directory}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read() if limit is None else handle.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise ArtifactCorrupt(
            f"adapter artifact {directory} is corrupt: {name} is larger than {limit} bytes"
        )
    return data


def check_spaces(
    manifest: AdapterManifest,
    *,
    expected_source: SpaceDescriptor | None,
    expected_target: SpaceDescriptor | None,
) -> None:
    """Refuse an artifact whose source or target fingerprint is not the one the caller uses."""
    problems = [
        _space_problem(role, expected, actual)
        for role, expected, actual in (
            ("source", expected_source, manifest.source),
            ("target", expected_target, manifest.target),
        )
        if expected is not None and expected.fingerprint != actual.fingerprint
    ]
    if problems:
        raise SpaceMismatch(
            f"adapter {manifest.kind} does not fit these embedding spaces: {'; '.join(problems)}. "
            "Train or fetch an adapter for the models actually in use."
        )


def _space_problem(role: str, expected: SpaceDescriptor, actual: SpaceDescriptor) -> str:
    return (
        f"{role} expected {expected.model_id} (fingerprint {expected.fingerprint}) "
        f"but the artifact's is {actual.model_id} (fingerprint {actual.fingerprint})"
    )


def _rebuild(
    manifest: AdapterManifest, weights_bytes: bytes
) -> tuple[Adapter, dict[str, np.ndarray[Any, Any]]]:
    # Imported here, not at module top: the package's __init__ may re-export this module.
    from silobridge.adapters import adapter_from_state

    try:
        tensors = safetensors.numpy.load(weights_bytes)
    # The parser is native third-party code; whatever it raises, these are not our tensors.
    except Exception as err:
        raise ArtifactCorrupt(
            f"{WEIGHTS_FILE} is not a readable safetensors file ({type(err).__name__})"
        ) from None
    receiving = {n: t for n, t in tensors.items() if n.startswith(RECEIVING_PREFIX)}
    weights = {n: t for n, t in tensors.items() if not n.startswith(RECEIVING_PREFIX)}
    try:
        adapter = adapter_from_state(manifest.kind, manifest.params, weights)
    except (KeyError, ValueError, TypeError, IndexError) as err:
        # Defence in depth for unsigned artifacts: tensors that hash correctly can still be
        # hand-made nonsense, and the registry's own checks may not name every case.
        raise ArtifactCorrupt(
            f"the {manifest.kind} adapter cannot be rebuilt from {WEIGHTS_FILE}: {err!r}"
        ) from None
    if (adapter.source_dim, adapter.target_dim) != (manifest.source_dim, manifest.target_dim):
        raise ArtifactCorrupt(
            f"the weights give a {adapter.source_dim} -> {adapter.target_dim} adapter but the "
            f"manifest says {manifest.source_dim} -> {manifest.target_dim}"
        )
    return adapter, receiving
