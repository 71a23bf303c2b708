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
from silobridge.security.identity import Role, identity_from_certificate


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


def single_certificate(pem: bytes, source: Path) -> x509.Certificate:
    """The one certificate in ``pem``: a second block (another CA, a key) is refused.

    TLS trusts every certificate of a CA file, and a parser reads only the first one: what is
    installed must be exactly what was checked.
    """
    if pem.count(b"-----BEGIN ") != 1:
        raise ConfigError(
            f"{source} must hold exactly one PEM certificate, found {pem.count(b'-----BEGIN ')} "
            "PEM blocks (a bundle, or a key beside the certificate?)"
        )
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise ConfigError(f"{source} is not a PEM certificate") from None


def is_ca_certificate(cert: x509.Certificate) -> bool:
    """Self-signed, with the basic constraint of a CA."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca and cert.issuer == cert.subject and issued_by(cert, cert)


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
    if not is_ca_certificate(ca):
        raise ConfigError("the CA certificate given is not a self-signed CA certificate")
    if not issued_by(cert, ca):
        raise ConfigError("the certificate was not signed by the CA certificate given with it")
    if cert.not_valid_after_utc <= datetime.now(UTC):
        raise ConfigError(f"the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")


def _refuse_another(target: Path, pem: bytes, what: str) -> None:
    """A trust anchor already in the kit is never replaced by another one silently."""
    if target.exists() and target.read_bytes().strip() != pem.strip():
        raise ConfigError(f"{target} holds another {what} (move the old file away to change it)")


def install_kit(
    kit: Path, cert_file: Path, ca_file: Path, *, adapter_key_file: Path | None = None
) -> Installed:
    """Check the certificate, CA and adapter key, then write them into ``kit/tls``."""
    manifest = KitManifest.read(kit)
    party = manifest.party
    cert_pem = _read(cert_file, "certificate")
    ca_pem = _read(ca_file, "CA certificate")
    cert = single_certificate(cert_pem, cert_file)
    ca = single_certificate(ca_pem, ca_file)
    _check(kit, manifest, cert, ca)
    # What was checked is what is written: canonical PEM of the parsed certificates.
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    ca_target = kit / party.ca
    _refuse_another(ca_target, ca_pem, "CA certificate; a kit trusts one consortium CA")
    adapter_pem = None
    adapter_target = kit / ADAPTER_KEY
    if adapter_key_file is not None:
        if party.role is not Role.SILO:
            raise ConfigError("--adapter-key is for a silo's kit: only silos verify adapters")
        adapter_pem = _read(adapter_key_file, "adapter signing key")
        check_adapter_key(adapter_pem, adapter_key_file)
        _refuse_another(adapter_target, adapter_pem, "adapter signing key; a silo pins one")
    write_file_atomically(ca_target, ca_pem)
    # Replacing the certificate is how it is renewed; the server reloads it while serving.
    write_file_atomically(kit / party.cert, cert_pem)
    if adapter_pem is not None:
        write_file_atomically(adapter_target, adapter_pem)
    pinned = adapter_target if adapter_pem is not None else None
    return Installed(kit / party.cert, ca_target, pinned, cert.not_valid_after_utc)
