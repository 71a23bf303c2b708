"""A party's own TLS files: present, the key private, the certificate valid and its own."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from silobridge.core.config import TlsFiles
from silobridge.core.errors import SiloBridgeError
from silobridge.doctor.report import Check, Status, fail, ok, warn
from silobridge.kits.install import (
    is_ca_certificate,
    issued_by,
    public_key_matches,
    single_certificate,
)
from silobridge.security.identity import (
    PeerIdentity,
    Role,
    identity_from_certificate,
    server_dns_name,
)

# A certificate closer than this to its end is renewed now, not on the day it stops working.
NEAR_EXPIRY = timedelta(days=30)

_RENEW = (
    "send your CSR (tls/NAME.csr in a kit) to the CA operator again (`silobridge pki "
    "approve NAME.csr --rotate`), then `silobridge kit install KIT --cert NAME.crt --ca ca.crt`"
)


@dataclass(frozen=True)
class Expected:
    """Who the config says this party is; ``server``: it must carry its server DNS name."""

    role: Role
    name: str
    server: bool


def file_state(path: Path) -> str:
    """``""`` for a readable file, else what is wrong: ``missing`` or ``unreadable``."""
    try:
        if not path.is_file():
            return "missing"
    except PermissionError:
        return "unreadable"
    return "" if os.access(path, os.R_OK) else "unreadable"


def files_present(paths: dict[str, Path]) -> list[Check]:
    states = {label: (path, file_state(path)) for label, path in paths.items()}
    unreadable = [f"{label} {path}" for label, (path, st) in states.items() if st == "unreadable"]
    if unreadable:
        return [
            fail(
                "files present",
                "cannot read: " + "; ".join(unreadable),
                "run doctor as the user the party runs as (the kit's owner)",
            )
        ]
    missing = [f"{label} {path}" for label, (path, st) in states.items() if st == "missing"]
    if missing:
        return [
            fail(
                "files present",
                "missing: " + "; ".join(missing),
                "make the kit with `silobridge kit new` and install its certificate with "
                "`silobridge kit install`, or fix the paths in the config",
            )
        ]
    return [ok("files present", ", ".join(str(p) for p in paths.values()))]


def key_private(label: str, path: Path) -> Check:
    """A private key file must be readable by its owner only (0600 or stricter)."""
    name = f"{label} mode"
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as err:
        return fail(name, f"cannot stat {path}: {err.strerror}", "fix the path in the config")
    if mode & 0o077:
        return fail(
            name,
            f"{path} is mode {mode:04o}: other users of this machine can read the key",
            f"chmod 600 {path}",
        )
    return ok(name, f"{path} is mode {mode:04o}")


def _load(path: Path) -> x509.Certificate:
    return single_certificate(path.read_bytes(), path)


_RENEW_CA = (
    "the CA operator makes a new consortium CA and every party installs certificates it "
    "signed (docs/OPERATIONS.md)"
)


def validity(label: str, cert: x509.Certificate, now: datetime, *, renew: str = _RENEW) -> Check:
    name = f"{label} validity"
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        return fail(
            name,
            f"not valid before {start:%Y-%m-%d %H:%M} UTC",
            "check this machine's clock (it must agree with the CA's)",
        )
    if now >= end:
        return fail(name, f"expired on {end:%Y-%m-%d}", renew)
    left = end - now
    if left < NEAR_EXPIRY:
        return warn(name, f"expires on {end:%Y-%m-%d}, in {left.days} days", renew)
    return ok(name, f"valid until {end:%Y-%m-%d} ({left.days} days)")


def identity_matches(identity: PeerIdentity, cert: x509.Certificate, expected: Expected) -> Check:
    name = "certificate identity"
    if identity.role != expected.role.value:
        return fail(
            name,
            f"the certificate is for {identity.spiffe_id}, a {identity.role}, but this config "
            f"is a {expected.role.value}'s",
            "use this party's own kit: its certificate is made for its role",
        )
    if expected.name and identity.name != expected.name:
        return fail(
            name,
            f"the certificate names {identity.name!r} ({identity.spiffe_id}) but the config's "
            f"name is {expected.name!r}",
            f"set the config's name to {identity.name!r}, or install the certificate of "
            f"{expected.name!r}",
        )
    if expected.server:
        dns = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        wanted = server_dns_name(identity.spiffe_id)
        if wanted not in dns.value.get_values_for_type(x509.DNSName):
            return fail(
                name,
                f"the certificate lacks the server name {wanted} peers check for",
                "have the CA operator sign the kit's CSR with this release's `silobridge pki "
                "approve`",
            )
    return ok(name, f"{identity.spiffe_id} (O={identity.org})")


def tls_checks(tls: TlsFiles, expected: Expected, *, now: datetime | None = None) -> list[Check]:
    """Files, key mode, certificate validity, identity, CA chain and key pair of ``tls``."""
    now = now or datetime.now(UTC)
    checks = files_present({"certificate": tls.cert, "key": tls.key, "CA": tls.ca})
    if checks[0].status is not Status.OK:
        return checks
    checks.append(key_private("key file", tls.key))
    try:
        cert, ca = _load(tls.cert), _load(tls.ca)
    except SiloBridgeError as err:
        hint = "install the CA's answer again with `silobridge kit install`"
        return [*checks, fail("certificate files", err.message, hint)]
    checks.append(validity("certificate", cert, now))
    checks.append(validity("CA certificate", ca, now, renew=_RENEW_CA))
    try:
        identity = identity_from_certificate(cert)
    except SiloBridgeError as err:
        checks.append(fail("certificate identity", err.message, "use a consortium certificate"))
    else:
        checks.append(identity_matches(identity, cert, expected))
    if not is_ca_certificate(ca):
        checks.append(
            fail(
                "CA chain",
                f"{tls.ca} is not a self-signed CA certificate",
                "install the consortium's CA certificate (ca/ca.crt of `silobridge pki init`)",
            )
        )
    elif issued_by(cert, ca):
        checks.append(ok("CA chain", f"signed by {ca.subject.rfc4514_string()}"))
    else:
        checks.append(
            fail(
                "CA chain",
                f"{tls.cert} was not signed by the CA in {tls.ca}",
                "install the consortium's CA certificate and a certificate it signed "
                "(`silobridge kit install`)",
            )
        )
    try:
        matches = public_key_matches(cert, tls.key.read_bytes())
    except (ValueError, TypeError, OSError) as err:
        checks.append(fail("key pair", f"cannot read {tls.key}: {err}", "reinstall the kit"))
    else:
        if matches:
            checks.append(ok("key pair", f"{tls.key} is the certificate's key"))
        else:
            checks.append(
                fail(
                    "key pair",
                    f"{tls.cert} does not certify the key {tls.key}",
                    "install the certificate signed from this key's own CSR",
                )
            )
    return checks
