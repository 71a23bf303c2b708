"""The audit log writer: append events to a hash-chained log and sign checkpoints of it.

Durability: each line is one ``os.write`` on an ``O_APPEND`` descriptor, so it is in the OS
before ``append`` returns and survives the process being killed; the log is fsynced at every
checkpoint, not per event (an fsync per RPC would cost more than the RPC). A machine crash can
therefore lose, or tear, only lines written since the last checkpoint; a torn tail is refused
on reopen rather than appended to. The line format is ``silobridge.audit.chain``'s.
"""

from __future__ import annotations

import base64
import fcntl
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from silobridge.adapters.signing import generate_signing_key, load_signing_key
from silobridge.audit.chain import (
    GENESIS,
    BadLine,
    ChainLine,
    canonical,
    check_checkpoint,
    check_link,
    checkpoint_payload,
    line_hash,
    parse_line,
    read_sidecar,
    sidecar_path,
)
from silobridge.audit.events import checked_event
from silobridge.audit.heads import AuditHead, public_key_bytes
from silobridge.audit.progress import AuditProgress, signed_at
from silobridge.core.durable import fsync_directory, write_all, write_file_atomically
from silobridge.core.errors import ConfigError, FailedPrecondition, InvalidArgument, SiloBridgeError

_TAIL_CHUNK = 64 * 1024
_log = logging.getLogger(__name__)


def _utc_now() -> str:
    now = datetime.now(UTC)
    return f"{now:%Y-%m-%dT%H:%M:%S}.{now.microsecond // 1000:03d}Z"


def _write_sidecar(path: Path, raw: bytes) -> None:
    # Replaced atomically: a crash mid-write leaves the previous checkpoint, never a damaged
    # one that would stop the log from reopening. 0600, like the log it vouches for.
    write_file_atomically(sidecar_path(path), raw, mode=0o600)


def _read_tail(fd: int, path: Path) -> ChainLine | None:
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
        line = parse_line(last) if end >= 0 else None
    except BadLine as err:
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


def _verify_since_checkpoint(
    path: Path, checkpoint: ChainLine | None, public_key: Ed25519PublicKey
) -> None:
    """Refuse a log whose lines after its last signed checkpoint (all of them if it has none)
    do not hold: the next checkpoint would otherwise sign an edited chain."""
    start = checkpoint.seq if checkpoint is not None else 0
    prev = GENESIS
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number < start:
                continue
            try:
                line = parse_line(raw.rstrip(b"\n"))
                if checkpoint is not None and number == start:
                    if line.digest != checkpoint.digest:
                        raise BadLine("it is not the signed checkpoint the sidecar holds")
                else:
                    check_link(line, number, prev)
                    if line.is_checkpoint:
                        check_checkpoint(line, public_key)
            except BadLine as err:
                raise FailedPrecondition(
                    f"audit log {path} does not verify after its last signed checkpoint (line "
                    f"{start}): line {err.line or number}: {err.reason}. Refusing to continue "
                    f"an edited log: run `silobridge audit verify {path}`, keep the log as "
                    "evidence and start with a new one"
                ) from None
            prev = line.digest


class AuditLog:
    """An open, append-only audit log; ``append`` is safe from many threads."""

    def __init__(
        self,
        path: Path,
        fd: int,
        key: Ed25519PrivateKey,
        tail: ChainLine | None,
        checkpoint_every: int,
        checkpoint_seconds: float,
        checkpointed: ChainLine | None = None,
    ) -> None:
        self.path = path
        self._fd = fd
        self._key = key
        self._seq = tail.seq if tail is not None else 0
        self._opened_at = self._seq
        covers = checkpointed.fields.get("covers") if checkpointed is not None else None
        self._checkpoint_covers = covers if isinstance(covers, int) else 0
        self._checkpoint_unix = signed_at(checkpointed)
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
        self._public_key = public_key_bytes(key.public_key())
        # Called with each new signed checkpoint, under the log's lock: must return at once
        # (a silo hands the head to its coordinator from another task).
        self.on_checkpoint: Callable[[AuditHead], None] | None = None
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
            sidecar = read_sidecar(path, public_key)
        except BadLine as err:
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
                fsync_directory(path.parent)
            # A restart must not sign what was edited since the last signature (issue 11).
            _verify_since_checkpoint(path, sidecar, public_key)
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
                    check_checkpoint(tail, public_key)
                except BadLine as err:
                    raise FailedPrecondition(
                        f"audit log {path}: its last checkpoint does not verify with this "
                        f"key ({err.reason})"
                    ) from None
                _write_sidecar(path, canonical(tail.fields) + b"\n")
        except BaseException:
            os.close(fd)
            raise
        newest = tail if tail is not None and tail.is_checkpoint else sidecar
        return cls(path, fd, signing_key, tail, checkpoint_every, checkpoint_seconds, newest)

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
        record = checked_event(event)
        with self._lock:
            self._write_line(record)
            if self._pending == 0:
                self._pending_since = time.monotonic()
            self._pending += 1
            overdue = time.monotonic() - self._pending_since >= self._seconds
            if self._pending >= self._every or overdue:
                self._checkpoint_locked()

    def latest_head(self) -> AuditHead | None:
        """The newest signed checkpoint head (from the sidecar), or ``None`` before the first."""
        with self._lock:
            try:
                line = read_sidecar(self.path, self._key.public_key())
            except BadLine:
                return None
        if line is None:
            return None
        fields = line.fields
        covers, head, sig = fields.get("covers"), fields.get("head"), fields.get("sig")
        if not isinstance(covers, int) or not isinstance(head, str) or not isinstance(sig, str):
            return None
        return AuditHead(covers, head, base64.b64decode(sig), self._public_key)

    def progress(self) -> AuditProgress:
        """Lines written and the newest signed checkpoint, as one consistent reading."""
        with self._lock:
            return AuditProgress(
                lines=self._seq,
                written=self._seq - self._opened_at,
                checkpointed=self._checkpoint_covers,
                checkpoint_unix=self._checkpoint_unix,
            )

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
        line["hash"] = digest = line_hash(line)
        raw = canonical(line) + b"\n"
        try:
            write_all(self._fd, raw)
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
        covers, head = self._seq, self._head
        signature = self._key.sign(checkpoint_payload(covers, head))
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
        self._checkpoint_covers, self._checkpoint_unix = covers, time.time()
        if self.on_checkpoint is not None:
            try:
                self.on_checkpoint(AuditHead(covers, head, signature, self._public_key))
            except Exception:  # the log itself is fine; the listener reports its own trouble
                _log.exception("audit checkpoint listener failed")

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
        _log.info("created audit signing key %s (public half %s.pub)", key_path, key_path)
    if key_path.resolve().parent == path.resolve().parent:
        _log.warning(
            "audit key %s is in the log's own directory: whoever can rewrite the log can also "
            "re-sign it; keep [audit] key outside the directory the service writes",
            key_path,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return AuditLog.open(
        path,
        load_signing_key(key_path),
        checkpoint_every=checkpoint_every,
        checkpoint_seconds=checkpoint_seconds,
    )
