"""The certificate denylist: real certificates, the file format, hot reload, failing closed."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from hypothesis import given
from hypothesis import strategies as st

from silobridge.core.config import TlsFiles
from silobridge.core.errors import ConfigError, PermissionDenied
from silobridge.security.denylist import Denylist, parse_denylist
from silobridge.security.identity import PeerIdentity, identity_from_certificate_pem

from .conftest import Pki

LOWER_HEX = re.compile(r"[0-9a-f]+")


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def certificate(tls: TlsFiles) -> x509.Certificate:
    return x509.load_pem_x509_certificate(tls.cert.read_bytes())


def identity(tls: TlsFiles) -> PeerIdentity:
    return identity_from_certificate_pem(tls.cert.read_bytes())


def openssl_serial(cert: x509.Certificate) -> str:
    """The serial as ``openssl x509 -serial`` prints it: upper case, whole DER octets."""
    octets = cert.serial_number.to_bytes(21, "big").lstrip(b"\0")
    if octets[0] & 0x80:
        octets = b"\0" + octets  # DER keeps a leading zero octet for a positive number
    return octets.hex().upper()


def openssl_fingerprint(cert: x509.Certificate) -> str:
    """``openssl x509 -fingerprint -sha256`` style: upper case, colon separated."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def test_identity_carries_the_certificate_serial_and_fingerprint(pki: Pki) -> None:
    for tls in (pki.silo, pki.coordinator, pki.home_client, pki.expired_client):
        cert = certificate(tls)
        found = identity(tls)
        assert int(found.serial, 16) == cert.serial_number
        assert LOWER_HEX.fullmatch(found.serial) and not found.serial.startswith("0")
        assert found.fingerprint == cert.fingerprint(hashes.SHA256()).hex()
        assert LOWER_HEX.fullmatch(found.fingerprint) and len(found.fingerprint) == 64


def test_a_renewed_certificate_is_the_same_identity_with_other_certificate_facts(
    pki: Pki,
) -> None:
    current, expired = identity(pki.home_client), identity(pki.expired_client)
    assert current == expired  # who: alice of bible, both times
    assert current.serial != expired.serial
    assert current.fingerprint != expired.fingerprint


def test_a_listed_serial_is_refused_and_others_pass(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "denylist.txt"
    serial = openssl_serial(certificate(pki.other_client))
    path.write_text(f"# revoked 2024-05-01: mallory's laptop was stolen\n{serial}\n")
    denylist = Denylist(path)
    mallory = identity(pki.other_client)
    with pytest.raises(PermissionDenied) as caught:
        denylist.check(mallory)
    assert caught.value.message == (
        f"certificate {mallory.spiffe_id} (serial {mallory.serial}) is on the denylist"
    )
    denylist.check(identity(pki.home_client))
    denylist.check(identity(pki.silo))


def test_a_listed_fingerprint_is_refused_and_a_renewed_certificate_passes(
    pki: Pki, tmp_path: Path
) -> None:
    path = tmp_path / "denylist.txt"
    fingerprint = openssl_fingerprint(certificate(pki.expired_client))
    path.write_text(f"\n   {fingerprint}   # alice's old certificate\n\n")
    denylist = Denylist(path)
    with pytest.raises(PermissionDenied):
        denylist.check(identity(pki.expired_client))
    denylist.check(identity(pki.home_client))  # same identity, new certificate


def test_no_configured_file_refuses_nobody(pki: Pki) -> None:
    denylist = Denylist(None)
    denylist.check(identity(pki.other_client))
    assert len(denylist.entries) == 0


def test_serials_ignore_case_colons_and_leading_zeros() -> None:
    entries = parse_denylist("00:0A:bC\n0abc # again\nABC\n", "deny.txt")
    assert entries.serials == frozenset({"abc"})
    assert entries.fingerprints == frozenset()


@given(
    serial=st.integers(min_value=1, max_value=2**160 - 1),
    upper=st.booleans(),
    colons=st.booleans(),
    zeros=st.integers(min_value=0, max_value=2),
    comment=st.text(alphabet=st.characters(exclude_categories=("Cs", "Zl", "Zp", "Cc"))),
)
def test_any_spelling_of_a_serial_parses_to_its_number(
    serial: int, upper: bool, colons: bool, zeros: int, comment: str
) -> None:
    octets = serial.to_bytes(20, "big").lstrip(b"\0")
    padded = b"\0" * zeros + octets
    spelled = padded.hex(":") if colons else padded.hex()
    spelled = spelled.upper() if upper else spelled
    entries = parse_denylist(f"{spelled} # {comment}\n", "deny.txt")
    assert entries.serials == frozenset({format(serial, "x")})


@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused_with_a_config_error(text: str) -> None:
    try:
        entries = parse_denylist(text, "deny.txt")
    except ConfigError as error:
        assert error.message.startswith("deny.txt:")
    else:
        for serial in entries.serials:
            assert LOWER_HEX.fullmatch(serial) and len(serial) <= 40
        for fingerprint in entries.fingerprints:
            assert LOWER_HEX.fullmatch(fingerprint) and len(fingerprint) == 64


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("mallory", "is not hexadecimal"),
        ("spiffe://t/client/mallory", "is not hexadecimal"),
        ("ab cd", "is not hexadecimal"),
        ("a" * 41, "neither a serial"),
        ("0" + "a" * 62, "neither a serial"),  # a fingerprint missing a digit
        ("a" * 65, "neither a serial"),
    ],
)
def test_malformed_lines_are_named_with_their_line_number(line: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_denylist(f"# header\n{line}\n", "deny.txt")
    assert caught.value.message.startswith("deny.txt:2: ")
    assert complaint in caught.value.message


def test_a_missing_or_broken_file_fails_at_first_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read denylist"):
        Denylist(tmp_path / "absent.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("not-a-serial\n")
    with pytest.raises(ConfigError, match="is not hexadecimal"):
        Denylist(bad)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        Denylist(binary)


def test_an_edited_file_takes_effect_within_a_second(pki: Pki, tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "denylist.txt"
    path.write_text("# nobody yet\n")
    denylist = Denylist(path, clock=clock)
    mallory = identity(pki.other_client)
    denylist.check(mallory)

    path.write_text(f"# nobody yet\n{mallory.serial}\n")
    clock.now += 0.5
    denylist.check(mallory)  # looked at no more than once a second
    clock.now += 0.5
    with pytest.raises(PermissionDenied):
        denylist.check(mallory)

    path.write_text(f"{mallory.fingerprint}\n")  # same list, spelled by fingerprint
    clock.now += 1
    with pytest.raises(PermissionDenied):
        denylist.check(mallory)

    path.write_text("")
    clock.now += 1
    denylist.check(mallory)


def test_an_unreadable_or_broken_file_on_reload_keeps_the_previous_list(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    path = tmp_path / "denylist.txt"
    mallory = identity(pki.other_client)
    path.write_text(f"{mallory.serial}\n")
    denylist = Denylist(path, clock=clock)

    path.write_text(f"{mallory.serial}\nhalf-saved edit\n")
    caplog.set_level(logging.WARNING, logger="silobridge.security.denylist")
    for _ in range(3):
        clock.now += 1
        with pytest.raises(PermissionDenied):
            denylist.check(mallory)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # reported once, not every second
    assert "is not hexadecimal" in warnings[0] and "keeping the previous 1 entries" in warnings[0]

    path.unlink()
    clock.now += 1
    with pytest.raises(PermissionDenied):
        denylist.check(mallory)
    assert "cannot read denylist" in caplog.records[-1].getMessage()

    path.write_text(f"{identity(pki.home_client).fingerprint}\n")  # fixed: the new list applies
    clock.now += 1
    denylist.check(mallory)
    with pytest.raises(PermissionDenied):
        denylist.check(identity(pki.home_client))
