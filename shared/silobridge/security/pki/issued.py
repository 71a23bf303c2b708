"""The CA's record of the certificates it issued, so a name is given out once unless rotated.

The record is ``issued.json`` in the CA directory, rewritten whole and durably after each
certificate the CLI signs; a lock file beside it keeps two approvals from racing. A CA made
before this record existed starts with an empty one: names issued before it are not known.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from silobridge.core.durable import write_file_atomically
from silobridge.core.errors import ConfigError, PermissionDenied
from silobridge.security.identity import identity_from_certificate
from silobridge.security.pki.approve import utc_now

ISSUED_FILE = "issued.json"
_LOCK_FILE = ".issued.lock"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class IssuedRecord:
    """One certificate the CA signed, as the record keeps it."""

    spiffe_id: str
    role: str
    name: str
    org: str
    serial: str
    sha256: str
    not_after: str
    issued_at: str

    @classmethod
    def of(cls, cert_pem: bytes) -> IssuedRecord:
        certificate = x509.load_pem_x509_certificate(cert_pem)
        identity = identity_from_certificate(certificate)
        return cls(
            spiffe_id=identity.spiffe_id,
            role=identity.role,
            name=identity.name,
            org=identity.org,
            serial=identity.serial,
            sha256=certificate.fingerprint(hashes.SHA256()).hex(),
            not_after=certificate.not_valid_after_utc.isoformat(),
            issued_at=utc_now().isoformat(timespec="seconds"),
        )


@dataclass(frozen=True)
class IssuedIndex:
    """The certificates a CA directory's record lists, oldest first."""

    path: Path
    records: tuple[IssuedRecord, ...]

    @classmethod
    def load(cls, ca_dir: Path) -> IssuedIndex:
        path = ca_dir / ISSUED_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(path=path, records=())
        except OSError as err:
            raise ConfigError(f"cannot read {path}: {err.strerror}") from None
        try:
            document = json.loads(raw)
            if document.get("version") != _FORMAT_VERSION:
                raise ValueError("unknown version")
            records = tuple(IssuedRecord(**entry) for entry in document["certificates"])
        except (ValueError, TypeError, KeyError, AttributeError):
            raise ConfigError(
                f"{path} is not a SiloBridge record of issued certificates (damaged?); restore "
                "it from a backup before approving more certificates"
            ) from None
        return cls(path=path, records=records)

    def check_new(self, *, role: str, name: str, org: str, rotate: bool) -> None:
        """Refuse a name this CA already issued, unless ``rotate`` renews the same identity."""
        earlier = [record for record in self.records if record.name == name]
        if not earlier:
            return
        latest = earlier[-1]
        issued = (
            f"{latest.spiffe_id} (O={latest.org}, serial {latest.serial}, "
            f"issued {latest.issued_at})"
        )
        if not rotate:
            raise PermissionDenied(
                f"refusing to sign: the name {name!r} was already issued by this CA as {issued}; "
                "renew that participant's certificate with --rotate, or pick another name"
            )
        if (latest.role, latest.org) != (role, org):
            raise PermissionDenied(
                f"refusing to rotate {name!r}: it was issued as {issued}, and rotation keeps the "
                f"role and organization, but this request is for a {role} of {org!r}"
            )

    def with_certificate(self, cert_pem: bytes) -> IssuedIndex:
        return IssuedIndex(path=self.path, records=(*self.records, IssuedRecord.of(cert_pem)))

    def save(self) -> None:
        document: dict[str, Any] = {
            "version": _FORMAT_VERSION,
            "certificates": [asdict(record) for record in self.records],
        }
        data = (json.dumps(document, indent=1) + "\n").encode()
        try:
            write_file_atomically(self.path, data, mode=0o644)
        except OSError as err:
            raise ConfigError(f"cannot write {self.path}: {err.strerror}") from None


@contextmanager
def _locked(ca_dir: Path) -> Iterator[None]:
    try:
        fd = os.open(ca_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise ConfigError(f"cannot lock {ca_dir / _LOCK_FILE}: {err.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def sign_once(
    ca_dir: Path,
    *,
    role: str,
    name: str,
    org: str,
    rotate: bool,
    sign: Callable[[], bytes],
    before_recording: Sequence[Callable[[], None]] = (),
) -> bytes:
    """Check the record, run ``sign`` (which returns the certificate PEM), and record it.

    The record is written before the certificate leaves the CA, so a certificate that exists is
    always recorded; ``before_recording`` runs under the same lock (e.g. refusing an output path
    that already exists) so a refusal there leaves nothing recorded.
    """
    with _locked(ca_dir):
        index = IssuedIndex.load(ca_dir)
        index.check_new(role=role, name=name, org=org, rotate=rotate)
        for check in before_recording:
            check()
        cert_pem = sign()
        index.with_certificate(cert_pem).save()
        return cert_pem
