"""Ed25519 keys that sign adapter artifacts: generate, load, sign, verify.

The coordinator signs every artifact it ships; a silo that loads one verifies it with the
coordinator's public key. Ed25519 here is for data signatures only (TLS keys are ECDSA P-256).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from silobridge.core.errors import ConfigError, FailedPrecondition
from silobridge.security.pki.files import write_new_file

PUBLIC_KEY_SUFFIX = ".pub"
SIGNATURE_BYTES = 64


class SignatureInvalid(FailedPrecondition):
    """A signature is missing, malformed, or was not made by the expected key over this data."""


def public_key_path(private_key_path: Path) -> Path:
    """Where ``generate_signing_key`` writes the public half: ``<path>.pub``."""
    return private_key_path.with_name(private_key_path.name + PUBLIC_KEY_SUFFIX)


def generate_signing_key(path: Path) -> Path:
    """Write a new Ed25519 private key to ``path`` (PKCS8 PEM, 0600) and its public key beside it.

    Returns the public key's path (``<path>.pub``). Refuses to overwrite either file, so a
    rerun can never silently replace the key silos already trust.
    """
    public_path = public_key_path(path)
    existing = [str(p) for p in (path, public_path) if p.exists()]
    if existing:
        raise ConfigError(
            f"refusing to overwrite {', '.join(existing)}; move the old key away first"
        )
    key = Ed25519PrivateKey.generate()
    # Unencrypted at rest: the coordinator signs unattended. The 0600 mode is the protection.
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Private key first: if the public write fails, a rerun refuses rather than minting another.
    write_new_file(path, private_pem, 0o600)
    write_new_file(public_path, public_pem, 0o644)
    return public_path


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"no {what} at {path}: create one with `silobridge adapter keygen --out PATH`"
        ) from None
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror}") from None


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load an Ed25519 private key (PEM, unencrypted) written by ``generate_signing_key``."""
    data = _read_key_file(path, "adapter signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise ConfigError(
            f"{path} is not an unencrypted PEM private key ({err}); "
            "the signing key is the file given to `keygen --out`, not the .pub beside it"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            f"{path} holds a {type(key).__name__}, not an Ed25519 key; "
            "adapter artifacts are signed with Ed25519 (`silobridge adapter keygen`)"
        )
    return key


def load_verify_key(path: Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key (PEM), e.g. the ``.pub`` written by ``generate_signing_key``."""
    data = _read_key_file(path, "adapter verify key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise ConfigError(
            f"{path} is not a PEM public key ({err}); pass the .pub file written by `keygen`"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(
            f"{path} holds a {type(key).__name__}, not an Ed25519 public key; "
            "adapter artifacts are verified with the coordinator's Ed25519 .pub key"
        )
    return key


def sign(key: Ed25519PrivateKey, payload: bytes) -> bytes:
    """A detached 64-byte Ed25519 signature over ``payload``."""
    return key.sign(payload)


def verify(key: Ed25519PublicKey, payload: bytes, signature: bytes) -> None:
    """Return if ``signature`` is ``key``'s over ``payload``; raise ``SignatureInvalid`` if not."""
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureInvalid(
            f"adapter signature does not verify: it is {len(signature)} bytes, "
            f"an Ed25519 signature is {SIGNATURE_BYTES}"
        )
    try:
        key.verify(signature, payload)
    except InvalidSignature:
        raise SignatureInvalid(
            "adapter signature does not verify: the artifact was modified after signing, "
            "or it was signed by a different key than the one given"
        ) from None
