"""Tamper-evident audit logs: hash-chained JSON lines, signed checkpoints, and their verification.

A log is one canonical JSON object per line (sorted keys, compact, UTF-8, ``\\n``-terminated).
Every line carries ``seq`` (its 1-based line number), ``ts`` (UTC, milliseconds), ``prev`` (the
previous line's hash, ``GENESIS`` for line 1) and ``hash`` (SHA-256 of the line's canonical JSON
without ``hash``). Event lines add the event's fields; checkpoint lines add ``type:
"checkpoint"``, ``head`` and ``covers`` (hash and seq of the line before) and ``sig``, an Ed25519
signature over ``CHECKPOINT_DOMAIN + f"{covers}\\n{head}"``. The latest checkpoint line is also
kept in ``<log>.checkpoint`` so that cutting lines off the end is detected.

Durability: each line is one ``os.write`` on an ``O_APPEND`` descriptor, so it is in the OS
before ``append`` returns and survives the process being killed; the log is fsynced at every
checkpoint, not per event (an fsync per RPC would cost more than the RPC). A machine crash can
therefore lose, or tear, only lines written since the last checkpoint; a torn tail is refused
on reopen rather than appended to.

What it detects: without the key, any edit, deletion, reordering or truncation made without
recomputing hashes; with the public key, also a rewritten chain, at its first checkpoint.
Lines written after the last checkpoint can be cut off undetected (a close always checkpoints).
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from silobridge.shared.adapters.signing import generate_signing_key, load_signing_key
from silobridge.shared.errors import (
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SiloBridgeError,
)
from silobridge.shared.identity import PeerIdentity

GENESIS = "0" * 64
CHECKPOINT_DOMAIN = b"silobridge-audit-checkpoint-v1\n"
CHECKPOINT_SUFFIX = ".checkpoint"
# Fields the log itself writes; an event may not set them.
RESERVED_FIELDS = frozenset({"seq", "ts", "prev", "hash", "type", "head", "covers", "sig"})
# Defence in depth: a field whose name has one of these words is refused outright.
FORBIDDEN_WORDS = frozenset(
    {"text", "texts", "query", "queries", "vector", "vectors", "embedding", "embeddings"}
)
_EVENT_FIELDS = frozenset({"who", "org", "rpc", "allowed", "reason", "silos", "results"})
_SIGNATURE_BYTES = 64
_TAIL_CHUNK = 64 * 1024
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify_log`` found. ``lines``/``checkpoints`` count lines verified intact."""

    ok: bool
    lines: int
    checkpoints: int
    first_bad_line: int | None
    reason: str


class _BadLine(Exception):
    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


@dataclass(frozen=True)
class _Line:
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


def _canonical(fields: Mapping[str, object]) -> bytes:
    return json.dumps(
        fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _line_hash(fields: Mapping[str, object]) -> str:
    body = {key: value for key, value in fields.items() if key != "hash"}
    return hashlib.sha256(_canonical(body)).hexdigest()


def _utc_now() -> str:
    now = datetime.now(UTC)
    return f"{now:%Y-%m-%dT%H:%M:%S}.{now.microsecond // 1000:03d}Z"


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


# --- events ---------------------------------------------------------------------------------


def _words(name: str) -> list[str]:
    # Split snake_case, kebab-case, dotted and camelCase names alike.
    return re.findall(r"[a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower())


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"audit field name {name!r} is not a non-empty string")
    if name in RESERVED_FIELDS:
        raise InvalidArgument(f"audit field {name!r} is reserved: the log writes it itself")
    if FORBIDDEN_WORDS.intersection(_words(name)):
        raise InvalidArgument(
            f"audit field {name!r} is refused: audit logs never hold query text, document "
            "text or vectors; log a count, an id or a hash under a name without "
            f"{'/'.join(sorted(FORBIDDEN_WORDS))}"
        )
    return name


def _check_scalar(name: str, value: object) -> object:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(f"audit field {name!r} is {value}; only finite numbers")
        return value
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument(f"audit field {name!r} is not valid Unicode text") from None
        return value
    raise InvalidArgument(
        f"audit field {name!r} holds a {type(value).__name__}; only strings, numbers, "
        "booleans and null are logged (and lists of strings, such as silo names)"
    )


def _checked_event(event: Mapping[str, object]) -> dict[str, object]:
    record: dict[str, object] = {}
    for name, value in event.items():
        _check_name(name)
        if isinstance(value, list | tuple):
            if not all(isinstance(item, str) for item in value):
                raise InvalidArgument(
                    f"audit field {name!r} is a list of non-strings; only lists of strings "
                    "(such as silo names) are logged, never numbers that could be a vector"
                )
            record[name] = [_check_scalar(name, item) for item in value]
        else:
            record[name] = _check_scalar(name, value)
    return record


def audit_event(
    *,
    who: PeerIdentity | None,
    rpc: str,
    allowed: bool,
    reason: str = "",
    silos: Sequence[str] = (),
    results: int | None = None,
    **extra: str | int | float | bool | None,
) -> dict[str, object]:
    """One audit event: who (``None``: no readable identity), which RPC, allowed or why not.

    Extra fields must be scalars and must not be named like text, queries or vectors.
    """
    for name, value in extra.items():
        if name in _EVENT_FIELDS:
            raise InvalidArgument(f"audit field {name!r} is set by audit_event itself")
        _check_name(name)
        _check_scalar(name, value)
    if isinstance(silos, str):
        raise InvalidArgument("silos must be a list of silo names, not one string")
    event: dict[str, object] = {
        "who": who.spiffe_id if who is not None else None,
        "org": who.org if who is not None else None,
        "rpc": rpc,
        "allowed": allowed,
        "reason": reason,
        "silos": list(silos),
        "results": results,
        **extra,
    }
    return _checked_event(event)


# --- parsing and checking lines -------------------------------------------------------------


def _parse_line(raw: bytes) -> _Line:
    """Parse one line (without its newline) and check it against its own hash."""
    try:
        fields = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise _BadLine(
            "unparseable: not a JSON line (damaged, or not written by an audit log)"
        ) from None
    if not isinstance(fields, dict):
        raise _BadLine("unparseable: not a JSON object")
    try:
        canonical: bytes | None = _canonical(fields)
    except (ValueError, RecursionError):
        canonical = None
    if canonical != raw:
        raise _BadLine("edited: the line is not in the canonical form the log writes")
    digest = fields.get("hash")
    if not isinstance(digest, str):
        raise _BadLine("malformed: the line has no 'hash'")
    if _line_hash(fields) != digest:
        raise _BadLine("edited: the line's content does not match its hash")
    seq, prev = fields.get("seq"), fields.get("prev")
    if type(seq) is not int or seq < 1 or not isinstance(prev, str):
        raise _BadLine("malformed: the line's 'seq' or 'prev' is missing or invalid")
    if "type" in fields and fields["type"] != "checkpoint":
        raise _BadLine(f"malformed: unknown line type {fields['type']!r}")
    return _Line(fields, seq, prev, digest, "type" in fields)


def _check_link(line: _Line, number: int, prev: str) -> None:
    if line.seq != number:
        raise _BadLine(
            f"deleted or reordered: line {number} holds seq {line.seq} "
            "(a line before it was removed, or lines were moved)",
            number,
        )
    if line.prev != prev and number == 1:
        raise _BadLine("edited: line 1 does not start the chain (its 'prev' is not GENESIS)", 1)
    if line.prev != prev:
        # The earlier line may have been rewritten with a fresh hash, or this line's link:
        # report the earlier one, so the first bad line is never later than the edit.
        earlier = number - 1
        raise _BadLine(
            f"edited or reordered: line {number} does not link to line {number - 1} "
            f"(line {earlier} was rewritten with a recomputed hash, or line {number}'s link was)",
            earlier,
        )


def _check_checkpoint(line: _Line, public_key: Ed25519PublicKey | None) -> None:
    fields = line.fields
    covers, head, sig = fields.get("covers"), fields.get("head"), fields.get("sig")
    if type(covers) is not int or covers != line.seq - 1 or head != line.prev:
        raise _BadLine("forged checkpoint: its 'covers'/'head' do not describe the line before")
    try:
        signature = base64.b64decode(sig, validate=True) if isinstance(sig, str) else b""
    except (binascii.Error, ValueError):
        signature = b""
    if len(signature) != _SIGNATURE_BYTES:
        raise _BadLine("bad signature: the checkpoint's 'sig' is not an Ed25519 signature")
    if public_key is None:
        return
    try:
        public_key.verify(signature, checkpoint_payload(covers, line.prev))
    except InvalidSignature:
        raise _BadLine(
            "bad signature: the checkpoint was not signed by the given key "
            "(forged, or the wrong public key)"
        ) from None


def _read_sidecar(path: Path, public_key: Ed25519PublicKey | None) -> _Line | None:
    """The checkpoint in ``<log>.checkpoint``, or ``None``; raises ``_BadLine`` if damaged."""
    try:
        raw = sidecar_path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise _BadLine(f"cannot read it: {err.strerror}") from None
    line = _parse_line(raw.removesuffix(b"\n"))
    if not line.is_checkpoint:
        raise _BadLine("it does not hold a checkpoint line")
    _check_checkpoint(line, public_key)
    return line


# --- verification ---------------------------------------------------------------------------


def verify_log(path: Path, public_key: Ed25519PublicKey | None = None) -> VerifyReport:
    """Check every hash, link and checkpoint of the log at ``path``; report the first bad line.

    Without ``public_key`` the chain is still checked, but checkpoint signatures are not.
    """
    sidecar_file = sidecar_path(path)
    # Read the sidecar before the log: a live writer updates the log first, then the sidecar.
    sidecar_error = ""
    try:
        sidecar = _read_sidecar(path, public_key)
    except _BadLine as err:
        sidecar, sidecar_error = None, f"checkpoint file {sidecar_file}: {err.reason}"
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise NotFound(f"no audit log at {path}") from None
    except OSError as err:
        raise ConfigError(f"cannot read audit log {path}: {err.strerror}") from None
    lines = checkpoints = 0
    prev = GENESIS
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                if not raw.endswith(b"\n"):
                    raise _BadLine(
                        f"torn: line {number} is incomplete (no newline: a crash mid-write, "
                        "or the file was cut)"
                    )
                line = _parse_line(raw[:-1])
                _check_link(line, number, prev)
                if line.is_checkpoint:
                    _check_checkpoint(line, public_key)
                if sidecar is not None and number == sidecar.seq and line.digest != sidecar.digest:
                    raise _BadLine(
                        f"rewritten: line {number} is not the signed checkpoint in "
                        f"{sidecar_file} (the log was cut and written again)"
                    )
            except _BadLine as err:
                bad = err.line if err.line is not None else number
                return VerifyReport(False, min(lines, bad - 1), checkpoints, bad, err.reason)
            lines += 1
            checkpoints += line.is_checkpoint
            prev = line.digest
    if sidecar is not None and lines < sidecar.seq:
        return VerifyReport(
            False,
            lines,
            checkpoints,
            lines + 1,
            f"truncated: the last signed checkpoint covers line {sidecar.seq} "
            f"but the log ends at line {lines}",
        )
    if sidecar_error:
        return VerifyReport(False, lines, checkpoints, None, sidecar_error)
    notes = []
    if public_key is None:
        notes.append("signatures not checked (no public key given)")
    if sidecar is None:
        notes.append(f"no {sidecar_file.name}: a cut tail would go unnoticed")
    return VerifyReport(True, lines, checkpoints, None, "; ".join(notes))


# --- writing --------------------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_sidecar(path: Path, raw: bytes) -> None:
    target = sidecar_path(path)
    temporary = target.with_name(target.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, raw)
        os.fsync(fd)
    finally:
        os.close(fd)
    temporary.replace(target)
    _fsync_directory(target.parent)


def _read_tail(fd: int, path: Path) -> _Line | None:
    """The last complete line of the log, or ``None`` if it is empty; refuses a torn tail."""
    size = os.fstat(fd).st_size
    data, start = b"", size
    # Read backwards until the last complete line is delimited on both sides.
    while start > 0 and data.count(b"\n") < 2:
        begin = max(0, start - _TAIL_CHUNK)
        data, start = os.pread(fd, start - begin, begin) + data, begin
    if not data:
        return None
    end = data.rfind(b"\n")  # the end of the last complete line, if there is one
    last = data[data.rfind(b"\n", 0, end) + 1 : end] if end >= 0 else b""
    try:
        line = _parse_line(last) if end >= 0 else None
    except _BadLine as err:
        raise FailedPrecondition(
            f"audit log {path} ends with a damaged line ({err.reason}); run "
            f"`silobridge audit verify {path}` and move the log aside before starting"
        ) from None
    if end != len(data) - 1:
        torn = f"line {line.seq + 1}" if line is not None else "line 1"
        raise FailedPrecondition(
            f"audit log {path} ends with a torn {torn} (a crash mid-write?); the lines before "
            "it are intact: cut the torn line off, or move the log aside, then start again"
        )
    return line


class AuditLog:
    """An open, append-only audit log; ``append`` is safe from many threads."""

    def __init__(
        self,
        path: Path,
        fd: int,
        key: Ed25519PrivateKey,
        tail: _Line | None,
        checkpoint_every: int,
        checkpoint_seconds: float,
    ) -> None:
        self.path = path
        self._fd = fd
        self._key = key
        self._seq = tail.seq if tail is not None else 0
        self._head = tail.digest if tail is not None else GENESIS
        self._every = checkpoint_every
        self._seconds = checkpoint_seconds
        self._lock = threading.Lock()
        self._pending = 0 if tail is None or tail.is_checkpoint else 1
        self._pending_since = time.monotonic()
        self._closed = False
        self._broken = ""
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        if math.isfinite(checkpoint_seconds):
            self._timer = threading.Thread(
                target=self._checkpoint_when_idle, name=f"audit-{path.name}", daemon=True
            )
            self._timer.start()

    @classmethod
    def open(
        cls,
        path: Path,
        signing_key: Ed25519PrivateKey,
        *,
        checkpoint_every: int = 100,
        checkpoint_seconds: float = 60.0,
    ) -> AuditLog:
        """Open (or create) the log at ``path`` and continue its chain.

        A checkpoint is written after ``checkpoint_every`` events, or ``checkpoint_seconds``
        after the oldest unsigned event (``math.inf``: never by time), and on ``close``.
        """
        if checkpoint_every < 1 or not checkpoint_seconds > 0:
            raise InvalidArgument("checkpoint_every must be >= 1 and checkpoint_seconds > 0")
        public_key = signing_key.public_key()
        try:
            sidecar = _read_sidecar(path, public_key)
        except _BadLine as err:
            raise FailedPrecondition(
                f"checkpoint file {sidecar_path(path)} is not usable with this key: "
                f"{err.reason}; run `silobridge audit verify {path}`"
            ) from None
        if sidecar is not None and not path.exists():
            raise FailedPrecondition(
                f"audit log {path} is missing but {sidecar_path(path)} says it had "
                f"{sidecar.seq} lines; restore the log instead of starting a new one"
            )
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise ConfigError(f"cannot open audit log {path}: {err.strerror}") from None
        try:
            try:
                # One writer per log: two would fork the chain.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FailedPrecondition(
                    f"audit log {path} is already open for writing by another process or object"
                ) from None
            tail = _read_tail(fd, path)
            if tail is None:
                _fsync_directory(path.parent)
            if sidecar is not None and (tail is None or tail.seq < sidecar.seq):
                raise FailedPrecondition(
                    f"audit log {path} is truncated: its signed checkpoint covers line "
                    f"{sidecar.seq} but it ends at line {tail.seq if tail else 0}; run "
                    f"`silobridge audit verify {path}`"
                )
            if (
                tail is not None
                and tail.is_checkpoint
                and (sidecar is None or tail.digest != sidecar.digest)
            ):
                # A crash between the log's fsync and the sidecar's replace: catch up.
                try:
                    _check_checkpoint(tail, public_key)
                except _BadLine as err:
                    raise FailedPrecondition(
                        f"audit log {path}: its last checkpoint does not verify with this "
                        f"key ({err.reason})"
                    ) from None
                _write_sidecar(path, _canonical(tail.fields) + b"\n")
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, signing_key, tail, checkpoint_every, checkpoint_seconds)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def append(self, event: Mapping[str, object]) -> None:
        """Write one event line; checkpoints when ``checkpoint_every`` or the time is reached."""
        record = _checked_event(event)
        with self._lock:
            self._write_line(record)
            if self._pending == 0:
                self._pending_since = time.monotonic()
            self._pending += 1
            overdue = time.monotonic() - self._pending_since >= self._seconds
            if self._pending >= self._every or overdue:
                self._checkpoint_locked()

    def checkpoint(self) -> None:
        """Sign the chain head now (nothing to do if no event was written since the last one)."""
        with self._lock:
            self._checkpoint_locked()

    def close(self) -> None:
        """Write a final checkpoint and close; later appends raise ``FailedPrecondition``."""
        with self._lock:
            if self._closed:
                return
            try:
                if not self._broken:
                    self._checkpoint_locked()
            finally:
                self._closed = True
                self._stop.set()
                os.close(self._fd)
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join()

    def _write_line(self, fields: dict[str, object]) -> bytes:
        if self._closed:
            raise FailedPrecondition(f"audit log {self.path} is closed")
        if self._broken:
            raise FailedPrecondition(self._broken)
        line = {**fields, "seq": self._seq + 1, "ts": _utc_now(), "prev": self._head}
        line["hash"] = digest = _line_hash(line)
        raw = _canonical(line) + b"\n"
        try:
            _write_all(self._fd, raw)
        except OSError as err:
            # The tail may now be torn: refuse further writes rather than chain onto it.
            self._broken = f"audit log {self.path} stopped after a failed write: {err.strerror}"
            raise FailedPrecondition(self._broken) from None
        self._seq += 1
        self._head = digest
        return raw

    def _checkpoint_locked(self) -> None:
        if self._pending == 0:
            return
        signature = self._key.sign(checkpoint_payload(self._seq, self._head))
        raw = self._write_line(
            {
                "type": "checkpoint",
                "head": self._head,
                "covers": self._seq,
                "sig": base64.b64encode(signature).decode("ascii"),
            }
        )
        try:
            os.fsync(self._fd)
            _write_sidecar(self.path, raw)
        except OSError as err:
            self._broken = f"audit log {self.path}: cannot make a checkpoint durable: {err}"
            raise FailedPrecondition(self._broken) from None
        self._pending = 0

    def _checkpoint_when_idle(self) -> None:
        while True:
            with self._lock:
                if self._closed or self._broken:
                    return
                due = self._pending_since + self._seconds - time.monotonic()
                if self._pending and due <= 0:
                    try:
                        self._checkpoint_locked()
                    except SiloBridgeError as err:
                        _log.error("audit checkpoint failed: %s", err.message)
                        return
                wait = due if self._pending and due > 0 else self._seconds
            if self._stop.wait(wait):
                return


def open_audit_log(
    path: Path,
    key_path: Path,
    *,
    checkpoint_every: int = 100,
    checkpoint_seconds: float = 60.0,
) -> AuditLog:
    """Open the log at ``path`` signed with the Ed25519 key at ``key_path``, creating the key
    (and ``<key>.pub`` for auditors) when it does not exist yet."""
    if not key_path.exists():
        key_path.parent.mkdir(parents=True, exist_ok=True)
        generate_signing_key(key_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return AuditLog.open(
        path,
        load_signing_key(key_path),
        checkpoint_every=checkpoint_every,
        checkpoint_seconds=checkpoint_seconds,
    )
