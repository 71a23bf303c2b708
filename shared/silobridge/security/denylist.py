"""A certificate denylist: serials or SHA-256 fingerprints a server refuses, reloaded when edited.

The file holds one entry a line: a certificate serial number (up to 20 bytes of hex, leading
zeros allowed, as ``openssl x509 -serial`` prints it) or a SHA-256 fingerprint of the DER
certificate (exactly 64 hex digits). Colons are allowed, case does not matter, ``#`` starts a
comment. Write the file atomically (a temporary file, then rename) so no reader sees half of it.

The file is re-read when its size, modification time or inode changes, looked at no more than
once per ``check_interval_seconds``. It never fails open: the first load must succeed, and a later
unreadable or malformed file keeps the previous list (with a warning) until it is fixed.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from silobridge.core.errors import ConfigError, PermissionDenied
from silobridge.security.identity import PeerIdentity

log = logging.getLogger(__name__)

_HEX = re.compile(r"[0-9a-f]+")
FINGERPRINT_HEX_LENGTH = 64
# RFC 5280 allows 20-octet serials (counted without the leading zeros DER or openssl may add).
MAX_SERIAL_HEX_LENGTH = 40
# The denylist is a short list of revoked certificates; a bigger file is a mistake.
MAX_DENYLIST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class DenylistEntries:
    """Normalised entries: serials without leading zeros, fingerprints as 64 hex digits."""

    serials: frozenset[str]
    fingerprints: frozenset[str]

    def __len__(self) -> int:
        return len(self.serials) + len(self.fingerprints)


EMPTY = DenylistEntries(serials=frozenset(), fingerprints=frozenset())


def parse_denylist(text: str, source: str) -> DenylistEntries:
    """Parse denylist text; a malformed line is a ``ConfigError`` naming ``source`` and the line."""
    serials: set[str] = set()
    fingerprints: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip().replace(":", "").lower()
        if not entry:
            continue
        if not _HEX.fullmatch(entry):
            raise ConfigError(
                f"{source}:{number}: {entry[:80]!r} is not hexadecimal; expected a certificate "
                "serial or SHA-256 fingerprint (colons allowed, '#' starts a comment)"
            )
        if len(entry) == FINGERPRINT_HEX_LENGTH:
            fingerprints.add(entry)
        elif len(entry.lstrip("0")) <= MAX_SERIAL_HEX_LENGTH:
            # Serial numbers are integers: "00a3" and "a3" are the same certificate.
            serials.add(format(int(entry, 16), "x"))
        else:
            raise ConfigError(
                f"{source}:{number}: {len(entry)} hex digits is neither a serial (at most "
                f"{MAX_SERIAL_HEX_LENGTH}) nor a SHA-256 fingerprint ({FINGERPRINT_HEX_LENGTH})"
            )
    return DenylistEntries(serials=frozenset(serials), fingerprints=frozenset(fingerprints))


# mtime and size catch edits, inode an atomic replace, ctime a chmod that fixes an unreadable file.
_Stamp = tuple[int, int, int, int]
# The stamp of a file that cannot even be looked at (deleted, directory unreadable).
_GONE: _Stamp = (-1, -1, -1, -1)


def _file_stamp(path: Path) -> _Stamp:
    status = path.stat()
    return status.st_mtime_ns, status.st_ctime_ns, status.st_size, status.st_ino


def _read_denylist(path: Path) -> tuple[DenylistEntries, _Stamp]:
    """The entries of ``path`` and the stamp they were read under; raises ``ConfigError``."""
    try:
        stamp = _file_stamp(path)
        if stamp[2] > MAX_DENYLIST_BYTES:
            raise ConfigError(
                f"denylist {path} is {stamp[2]} bytes; at most {MAX_DENYLIST_BYTES} allowed"
            )
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read denylist {path}: {error.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"denylist {path} is not UTF-8 text") from None
    return parse_denylist(text, str(path)), stamp


class Denylist:
    """Refuses certificates whose serial or fingerprint is listed in ``path`` (none if ``None``)."""

    def __init__(
        self,
        path: Path | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        check_interval_seconds: float = 1.0,
    ) -> None:
        self.path = path
        self._clock = clock
        self._interval = check_interval_seconds
        self._lock = threading.Lock()
        self._stamp: _Stamp | None = None
        # The broken state last warned about, so a bad file is reported once, not every second.
        self._failed_stamp: _Stamp | None = None
        self._entries = EMPTY
        if path is not None:
            # The first load raises: a server must not start with a denylist it cannot read.
            self._entries, self._stamp = _read_denylist(path)
        self._checked_at = clock()

    @property
    def entries(self) -> DenylistEntries:
        """The entries in force now, after reloading the file if it changed."""
        self._maybe_reload()
        return self._entries

    def check(self, identity: PeerIdentity) -> None:
        """Raise ``PermissionDenied`` if the certificate behind ``identity`` is listed."""
        entries = self.entries
        if (identity.serial and identity.serial in entries.serials) or (
            identity.fingerprint and identity.fingerprint in entries.fingerprints
        ):
            raise PermissionDenied(
                f"certificate {identity.spiffe_id or '(no identity)'} (serial "
                f"{identity.serial or 'unknown'}) is on the denylist"
            )

    def _maybe_reload(self) -> None:
        if self.path is None:
            return
        with self._lock:
            now = self._clock()
            if now - self._checked_at < self._interval:
                return
            self._checked_at = now
            try:
                stamp = _file_stamp(self.path)
            except OSError as error:
                self._keep_previous(_GONE, f"cannot read denylist {self.path}: {error.strerror}")
                return
            if stamp in (self._stamp, self._failed_stamp):
                return
            try:
                entries, loaded_stamp = _read_denylist(self.path)
            except ConfigError as error:
                self._keep_previous(stamp, error.message)
                return
            self._entries, self._stamp, self._failed_stamp = entries, loaded_stamp, None
            log.info("denylist %s reloaded: %d entries", self.path, len(entries))

    def _keep_previous(self, stamp: _Stamp, reason: str) -> None:
        # Keep refusing what was refused: an operator's half-saved edit or a deleted file must
        # not readmit a revoked certificate.
        if stamp == self._failed_stamp:
            return
        self._failed_stamp = stamp
        log.warning("%s; keeping the previous %d entries", reason, len(self._entries))
