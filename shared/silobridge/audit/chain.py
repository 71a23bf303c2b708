"""The audit log's line format: canonical JSON lines, their hash chain and signed checkpoints.

A log is one canonical JSON object per line (sorted keys, compact, UTF-8, ``\\n``-terminated).
Every line carries ``seq`` (its 1-based line number), ``ts`` (UTC, milliseconds), ``prev`` (the
previous line's hash, ``GENESIS`` for line 1) and ``hash`` (SHA-256 of the line's canonical JSON
without ``hash``). Event lines add the event's fields; checkpoint lines add ``type:
"checkpoint"``, ``head`` and ``covers`` (hash and seq of the line before) and ``sig``, an Ed25519
signature over ``CHECKPOINT_DOMAIN + f"{covers}\\n{head}"``. The latest checkpoint line is also
kept in ``<log>.checkpoint`` so that cutting lines off the end is detected.

The writer (``silobridge.audit.log``) and the verifier (``silobridge.audit.verify``) share
everything here, so what one writes is exactly what the other accepts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

GENESIS = "0" * 64
CHECKPOINT_DOMAIN = b"silobridge-audit-checkpoint-v1\n"
CHECKPOINT_SUFFIX = ".checkpoint"
_SIGNATURE_BYTES = 64


class BadLine(Exception):
    """A line (or the sidecar) that fails a check; ``line`` overrides the line it is blamed on."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


@dataclass(frozen=True)
class ChainLine:
    """One parsed line whose content matches its own hash."""

    fields: dict[str, object]
    seq: int
    prev: str
    digest: str
    is_checkpoint: bool


def sidecar_path(path: Path) -> Path:
    """Where the latest signed checkpoint of the log at ``path`` is kept."""
    return path.with_name(path.name + CHECKPOINT_SUFFIX)


def checkpoint_payload(covers: int, head: str) -> bytes:
    """The bytes a checkpoint signs; domain-separated so no other signature can pass for one."""
    return CHECKPOINT_DOMAIN + f"{covers}\n{head}".encode("ascii")


def canonical(fields: Mapping[str, object]) -> bytes:
    """The one byte form of a line (without its newline) that the log writes and accepts."""
    return json.dumps(
        fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def line_hash(fields: Mapping[str, object]) -> str:
    """The SHA-256 a line's ``hash`` must hold: over its canonical form without ``hash``."""
    body = {key: value for key, value in fields.items() if key != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def parse_line(raw: bytes) -> ChainLine:
    """Parse one line (without its newline) and check it against its own hash."""
    try:
        fields = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise BadLine(
            "unparseable: not a JSON line (damaged, or not written by an audit log)"
        ) from None
    if not isinstance(fields, dict):
        raise BadLine("unparseable: not a JSON object")
    try:
        encoded: bytes | None = canonical(fields)
    except (ValueError, RecursionError):
        encoded = None
    if encoded != raw:
        raise BadLine("edited: the line is not in the canonical form the log writes")
    digest = fields.get("hash")
    if not isinstance(digest, str):
        raise BadLine("malformed: the line has no 'hash'")
    if line_hash(fields) != digest:
        raise BadLine("edited: the line's content does not match its hash")
    seq, prev = fields.get("seq"), fields.get("prev")
    if type(seq) is not int or seq < 1 or not isinstance(prev, str):
        raise BadLine("malformed: the line's 'seq' or 'prev' is missing or invalid")
    if "type" in fields and fields["type"] != "checkpoint":
        raise BadLine(f"malformed: unknown line type {fields['type']!r}")
    return ChainLine(fields, seq, prev, digest, "type" in fields)


def check_link(line: ChainLine, number: int, prev: str) -> None:
    """Raise ``BadLine`` unless ``line`` is line ``number`` and follows the hash ``prev``."""
    if line.seq != number:
        raise BadLine(
            f"deleted or reordered: line {number} holds seq {line.seq} "
            "(a line before it was removed, or lines were moved)",
            number,
        )
    if line.prev != prev and number == 1:
        raise BadLine("edited: line 1 does not start the chain (its 'prev' is not GENESIS)", 1)
    if line.prev != prev:
        # The earlier line may have been rewritten with a fresh hash, or this line's link:
        # report the earlier one, so the first bad line is never later than the edit.
        earlier = number - 1
        raise BadLine(
            f"edited or reordered: line {number} does not link to line {number - 1} "
            f"(line {earlier} was rewritten with a recomputed hash, or line {number}'s link was)",
            earlier,
        )


def check_checkpoint(line: ChainLine, public_key: Ed25519PublicKey | None) -> None:
    """Raise ``BadLine`` unless the checkpoint describes the line before and is signed.

    Without ``public_key`` only the signature's shape is checked.
    """
    fields = line.fields
    covers, head, sig = fields.get("covers"), fields.get("head"), fields.get("sig")
    if type(covers) is not int or covers != line.seq - 1 or head != line.prev:
        raise BadLine("forged checkpoint: its 'covers'/'head' do not describe the line before")
    try:
        signature = base64.b64decode(sig, validate=True) if isinstance(sig, str) else b""
    except (binascii.Error, ValueError):
        signature = b""
    if len(signature) != _SIGNATURE_BYTES:
        raise BadLine("bad signature: the checkpoint's 'sig' is not an Ed25519 signature")
    if public_key is None:
        return
    try:
        public_key.verify(signature, checkpoint_payload(covers, line.prev))
    except InvalidSignature:
        raise BadLine(
            "bad signature: the checkpoint was not signed by the given key "
            "(forged, or the wrong public key)"
        ) from None


def read_sidecar(path: Path, public_key: Ed25519PublicKey | None) -> ChainLine | None:
    """The checkpoint in ``<log>.checkpoint``, or ``None``; raises ``BadLine`` if damaged."""
    try:
        raw = sidecar_path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise BadLine(f"cannot read it: {err.strerror}") from None
    line = parse_line(raw.removesuffix(b"\n"))
    if not line.is_checkpoint:
        raise BadLine("it does not hold a checkpoint line")
    check_checkpoint(line, public_key)
    return line
