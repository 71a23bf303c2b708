"""Peer identities: SPIFFE id parsing, identities read from certificates, policy rule matching."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from silobridge.core.errors import InvalidArgument, PermissionDenied
from silobridge.security.identity import (
    PeerIdentity,
    Role,
    identity_from_certificate_pem,
    make_spiffe_id,
    parse_spiffe_id,
)
from silobridge.security.pki import ca as pki
from silobridge.security.rules import identity_matches, validate_rule

components = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,62}", fullmatch=True)
roles = st.sampled_from([role.value for role in Role])
orgs = st.text(min_size=1, max_size=20).filter(lambda org: "/" not in org)


@st.composite
def identities(draw: st.DrawFn) -> PeerIdentity:
    consortium, role, name = draw(components), draw(roles), draw(components)
    return PeerIdentity(
        spiffe_id=make_spiffe_id(consortium, role, name),
        consortium=consortium,
        role=role,
        name=name,
        org=draw(orgs),
    )


# --- parse_spiffe_id -------------------------------------------------------------------------


@given(consortium=components, role=roles, name=components)
def test_valid_ids_round_trip(consortium: str, role: str, name: str) -> None:
    assert parse_spiffe_id(f"spiffe://{consortium}/{role}/{name}") == (consortium, role, name)


@given(st.text(max_size=80))
def test_arbitrary_text_parses_or_raises_invalid_argument(text: str) -> None:
    for candidate in (text, "spiffe://" + text, "spiffe://demo/client/" + text):
        try:
            consortium, role, name = parse_spiffe_id(candidate)
        except InvalidArgument as err:
            assert err.message
        else:
            assert candidate == f"spiffe://{consortium}/{role}/{name}"


@pytest.mark.parametrize(
    ("uri", "complaint"),
    [
        ("https://demo/client/alice", "expected spiffe://"),
        ("spiffe://demo/client", "three path parts"),
        ("spiffe://demo/client/alice/extra", "three path parts"),
        ("spiffe://demo/client/alice/", "three path parts"),
        ("spiffe://demo/admin/alice", "invalid role 'admin'"),
        ("spiffe://Demo/client/alice", "invalid consortium"),
        ("spiffe://demo/client/Alice", "invalid name"),
        ("spiffe://demo/client/", "invalid name"),
        ("spiffe://demo/client/-alice", "invalid name"),
        ("spiffe://demo/client/alice\n", "invalid name"),
        ("spiffe://demo/client/" + "a" * 64, "invalid name"),
        ("SPIFFE://demo/client/alice", "expected spiffe://"),
    ],
)
def test_malformed_ids_are_refused_with_the_reason(uri: str, complaint: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_spiffe_id(uri)
    assert complaint in info.value.message


def test_longest_components_are_accepted() -> None:
    name = "a" * 63
    assert parse_spiffe_id(f"spiffe://{name}/silo/{name}") == (name, "silo", name)


# --- identities from certificates ------------------------------------------------------------


def _self_signed(san: list[x509.GeneralName] | None, org: str | None = "Acme") -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, "someone")]
    if org is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    name = x509.Name(attributes)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_identity_of_an_issued_certificate(tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "ca", "demo", b"secret")
    ca = pki.load_ca(tmp_path / "ca", b"secret")
    issued = pki.issue_certificate(ca, tmp_path / "silo", role="silo", name="silo-a", org="Acme")

    identity = identity_from_certificate_pem(issued.cert.read_bytes())

    assert identity == PeerIdentity(
        spiffe_id="spiffe://demo/silo/silo-a",
        consortium="demo",
        role="silo",
        name="silo-a",
        org="Acme",
    )


def test_other_uri_sans_are_ignored_and_missing_org_reads_empty() -> None:
    pem = _self_signed(
        [
            x509.UniformResourceIdentifier("https://example.org/alice"),
            x509.UniformResourceIdentifier("spiffe://demo/client/alice"),
            x509.DNSName("alice.example"),
        ],
        org=None,
    )
    identity = identity_from_certificate_pem(pem)
    assert (identity.name, identity.role, identity.org) == ("alice", "client", "")


@pytest.mark.parametrize(
    "san",
    [
        None,
        [x509.DNSName("localhost")],
        [
            x509.UniformResourceIdentifier("spiffe://demo/client/alice"),
            x509.UniformResourceIdentifier("spiffe://demo/client/bob"),
        ],
        [x509.UniformResourceIdentifier("spiffe://demo/admin/root")],
    ],
    ids=["no-san", "dns-only", "two-ids", "bad-role"],
)
def test_certificate_without_exactly_one_valid_id_is_denied(
    san: list[x509.GeneralName] | None,
) -> None:
    with pytest.raises(PermissionDenied, match="certificate carries no SiloBridge identity"):
        identity_from_certificate_pem(_self_signed(san))


def test_garbage_instead_of_a_certificate_is_denied() -> None:
    with pytest.raises(PermissionDenied, match="not a readable PEM certificate"):
        identity_from_certificate_pem(b"-----BEGIN CERTIFICATE-----\nnope\n")


# --- rules -----------------------------------------------------------------------------------

ALICE = PeerIdentity(
    spiffe_id="spiffe://demo/client/alice",
    consortium="demo",
    role="client",
    name="alice",
    org="Acme",
)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("spiffe://demo/client/alice", True),
        ("spiffe://demo/client/*", True),
        ("spiffe://demo/*", True),
        ("spiffe://demo/silo/*", False),
        ("spiffe://other/client/*", False),
        ("spiffe://demo/client/ALICE", False),
        ("org:Acme", True),
        ("org:Acme/client", True),
        ("org:Acme/silo", False),
        ("org:acme", False),
        ("org:Beta", False),
        ("org:", False),
        ("*", False),
        ("", False),
    ],
)
def test_rules_match_as_documented(rule: str, expected: bool) -> None:
    assert identity_matches(ALICE, rule) is expected


def test_org_containing_a_slash_matches_whole_and_with_role() -> None:
    identity = PeerIdentity("spiffe://demo/silo/a", "demo", "silo", "a", "Acme/Research")
    assert identity_matches(identity, "org:Acme/Research")
    assert identity_matches(identity, "org:Acme/Research/silo")
    assert not identity_matches(identity, "org:Acme")


def test_certificate_without_org_matches_no_org_rule() -> None:
    nobody = PeerIdentity("spiffe://demo/client/x", "demo", "client", "x", "")
    assert not identity_matches(nobody, "org:")
    assert not identity_matches(nobody, "org:/client")


@given(identity=identities(), role=roles)
def test_org_rules_match_exactly_their_org_and_role(identity: PeerIdentity, role: str) -> None:
    assert identity_matches(identity, f"org:{identity.org}")
    assert identity_matches(identity, f"org:{identity.org}/{role}") is (identity.role == role)
    assert not identity_matches(identity, f"org:{identity.org}x")


@given(identity=identities(), other=components)
def test_glob_rules_match_own_id_and_not_other_consortia(
    identity: PeerIdentity, other: str
) -> None:
    assert identity_matches(identity, identity.spiffe_id)
    assert identity_matches(identity, f"spiffe://{identity.consortium}/{identity.role}/*")
    if other != identity.consortium:
        assert not identity_matches(identity, f"spiffe://{other}/*")


@given(identity=identities(), rule=st.text(max_size=60))
def test_any_rule_text_gives_a_boolean(identity: PeerIdentity, rule: str) -> None:
    assert isinstance(identity_matches(identity, rule), bool)


def test_validate_rule_refuses_rules_that_can_never_match() -> None:
    assert validate_rule("org:Acme/client") == "org:Acme/client"
    assert validate_rule("spiffe://demo/*") == "spiffe://demo/*"
    for rule in ("org:", "*", "demo/client/*", ""):
        with pytest.raises(InvalidArgument, match="invalid rule"):
            validate_rule(rule)
