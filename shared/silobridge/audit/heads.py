"""Checkpoint heads: what a server's audit log has signed so far, kept outside its host.

Each signed checkpoint says "line ``covers`` of this log has hash ``head``". A silo sends every
checkpoint head to the coordinator (``RecordAuditHead``), which keeps them in its own state. A log
later cut back to an older checkpoint, and given a copy of that checkpoint as its sidecar, still
verifies on its own host; checked against the heads the coordinator recorded
(``silobridge audit verify --heads``) it does not: a recorded head is missing from it.

The heads file an auditor hands ``verify`` is what ``silobridge audit heads`` prints: a JSON list
of objects with ``covers``, ``head``, ``signature`` (base64), ``public_key`` (hex) and
``recorded_unix``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from silobridge.audit.chain import checkpoint_payload
from silobridge.core.errors import ConfigError, InvalidArgument, PermissionDenied

_HEX64 = re.compile(r"[0-9a-f]{64}")
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
# A heads file is a list of small records; a bigger file is a mistake.
MAX_HEADS_FILE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class AuditHead:
    """One signed checkpoint: line ``covers`` of the log signed by ``public_key`` is ``head``."""

    covers: int
    head: str
    signature: bytes
    public_key: bytes
    # When the coordinator recorded it (0 before it was recorded).
    recorded_unix: int = 0

    @property
    def key_id(self) -> str:
        """The signing key as hex: the heads of one log share it."""
        return self.public_key.hex()


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def check_head(head: AuditHead) -> Ed25519PublicKey:
    """The head's key, once its fields are well formed and its signature verifies with it.

    Raises ``InvalidArgument`` for a malformed head and ``PermissionDenied`` for one whose
    signature does not verify.
    """
    if head.covers < 1 or head.covers >= 2**63:
        raise InvalidArgument(f"an audit head covers line 1 or later, not {head.covers}")
    if not _HEX64.fullmatch(head.head):
        raise InvalidArgument("an audit head's hash is 64 lowercase hex digits")
    if len(head.public_key) != PUBLIC_KEY_BYTES:
        raise InvalidArgument(f"an audit head's public key is {PUBLIC_KEY_BYTES} raw bytes")
    if len(head.signature) != SIGNATURE_BYTES:
        raise InvalidArgument(f"an audit head's signature is {SIGNATURE_BYTES} bytes")
    key = Ed25519PublicKey.from_public_bytes(head.public_key)
    try:
        key.verify(head.signature, checkpoint_payload(head.covers, head.head))
    except InvalidSignature:
        raise PermissionDenied(
            "the audit head's signature does not verify with its public key"
        ) from None
    return key


def heads_to_rows(heads: Sequence[AuditHead]) -> list[dict[str, str | int]]:
    """The heads as the heads file holds them (``silobridge audit heads --json``)."""
    return [
        {
            "covers": head.covers,
            "head": head.head,
            "signature": base64.b64encode(head.signature).decode("ascii"),
            "public_key": head.public_key.hex(),
            "recorded_unix": head.recorded_unix,
        }
        for head in heads
    ]


def read_heads_file(path: Path) -> list[AuditHead]:
    """The heads in a file ``silobridge audit heads`` wrote; every entry's signature checked."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_HEADS_FILE_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"cannot read heads file {path}: {err.strerror}") from None
    if len(raw) > MAX_HEADS_FILE_BYTES:
        raise ConfigError(f"heads file {path} is larger than {MAX_HEADS_FILE_BYTES} bytes")
    try:
        entries = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"heads file {path} is not JSON: {err}") from None
    if not isinstance(entries, list):
        raise ConfigError(f"heads file {path} must hold a JSON list (`silobridge audit heads`)")
    heads = []
    for number, entry in enumerate(entries, start=1):
        heads.append(_head_of(entry, f"{path}: entry {number}"))
    return heads


def _head_of(entry: object, where: str) -> AuditHead:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} is not an object")
    try:
        covers, head = entry["covers"], entry["head"]
        signature = base64.b64decode(str(entry["signature"]), validate=True)
        public_key = bytes.fromhex(str(entry["public_key"]))
        recorded = entry.get("recorded_unix", 0)
    except KeyError as err:
        raise ConfigError(f"{where} has no {err.args[0]!r}") from None
    except (ValueError, binascii.Error):
        raise ConfigError(f"{where}: signature or public_key is not base64/hex") from None
    if not isinstance(covers, int) or isinstance(covers, bool) or not isinstance(head, str):
        raise ConfigError(f"{where}: covers must be an integer and head a string")
    if not isinstance(recorded, int) or isinstance(recorded, bool):
        raise ConfigError(f"{where}: recorded_unix must be an integer")
    parsed = AuditHead(covers, head, signature, public_key, recorded)
    try:
        check_head(parsed)
    except (InvalidArgument, PermissionDenied) as err:
        raise ConfigError(f"{where}: {err.message}") from None
    return parsed
