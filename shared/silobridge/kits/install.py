"""``silobridge kit install``: the CA's answer put into a kit, once it is checked.

The certificate must be for the kit's own key and identity and signed by the CA certificate
given with it; a silo's kit also pins the coordinator's adapter signing key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from silobridge.core.durable import write_file_atomically
from silobridge.core.errors import ConfigError
from silobridge.kits.party import ADAPTER_KEY, KitManifest
from silobridge.security.identity import identity_from_certificate


@dataclass(frozen=True)
class Installed:
    cert: Path
    ca: Path
    adapter_key: Path | None
    not_after: datetime


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read the {what} {path}: {err.strerror}") from None


def _certificate(pem: bytes, source: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise ConfigError(f"{source} is not a PEM certificate") from None


def public_key_matches(cert: x509.Certificate, key_pem: bytes) -> bool:
    """Whether ``cert`` certifies the private key ``key_pem``."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    return key.public_key().public_bytes(encoding, spki) == cert.public_key().public_bytes(
        encoding, spki
    )


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_adapter_key(pem: bytes, source: Path) -> None:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        raise ConfigError(f"{source} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(
            f"{source} is not an Ed25519 adapter signing key (the coordinator's "
            "state/adapter-signing.key.pub)"
        )


def _check(kit: Path, manifest: KitManifest, cert: x509.Certificate, ca: x509.Certificate) -> None:
    party = manifest.party
    identity = identity_from_certificate(cert)
    if identity.spiffe_id != party.spiffe_id or identity.org != party.org:
        raise ConfigError(
            f"the certificate is for {identity.spiffe_id} (O={identity.org}), not for this "
            f"kit's {party.spiffe_id} (O={party.org})"
        )
    if not public_key_matches(cert, _read(kit / party.key, "private key")):
        raise ConfigError(
            f"the certificate is not for this kit's key {party.key}: was it signed from "
            f"this kit's {party.csr}?"
        )
    if not issued_by(cert, ca):
        raise ConfigError("the certificate was not signed by the CA certificate given with it")
    if cert.not_valid_after_utc <= datetime.now(UTC):
        raise ConfigError(f"the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")


def install_kit(
    kit: Path, cert_file: Path, ca_file: Path, *, adapter_key_file: Path | None = None
) -> Installed:
    """Check the certificate, CA and adapter key, then write them into ``kit/tls``."""
    manifest = KitManifest.read(kit)
    party = manifest.party
    cert_pem = _read(cert_file, "certificate")
    ca_pem = _read(ca_file, "CA certificate")
    cert = _certificate(cert_pem, cert_file)
    ca = _certificate(ca_pem, ca_file)
    _check(kit, manifest, cert, ca)
    ca_target = kit / party.ca
    if ca_target.exists() and ca_target.read_bytes() != ca_pem:
        raise ConfigError(
            f"{ca_target} holds another CA certificate; a kit trusts one consortium CA "
            "(move the old file away to change CA)"
        )
    adapter_pem = None
    if adapter_key_file is not None:
        adapter_pem = _read(adapter_key_file, "adapter signing key")
        check_adapter_key(adapter_pem, adapter_key_file)
    write_file_atomically(ca_target, ca_pem)
    # Replacing the certificate is how it is renewed; the server reloads it while serving.
    write_file_atomically(kit / party.cert, cert_pem)
    adapter_target = None
    if adapter_pem is not None:
        adapter_target = kit / ADAPTER_KEY
        write_file_atomically(adapter_target, adapter_pem)
    return Installed(kit / party.cert, ca_target, adapter_target, cert.not_valid_after_utc)
