"""Client-signed queries: signing, verification against the consortium CA, tampering, replays."""

from __future__ import annotations

import hashlib
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from silobridge.core.config import TlsFiles
from silobridge.core.errors import (
    ConfigError,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
)
from silobridge.core.queries import SignedQuery
from silobridge.core.vectors import DTYPE_FLOAT32, WireVector
from silobridge.security.signed_query.claims import (
    MAX_CLAIMS_BYTES,
    SIGNATURE_CONTEXT,
    QueryClaims,
    decode_claims,
    encode_claims,
)
from silobridge.security.signed_query.replay import (
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_SKEW_S,
    ReplayCache,
)
from silobridge.security.signed_query.signing import load_client_signer, sign_query
from silobridge.security.signed_query.verify import MAX_CERTIFICATE_BYTES, verify_signed_query

from .conftest import Pki

SPACE = "minilm-l3"
SILO = "kjv"
HUB = "spiffe://testnet/coordinator/hub"  # the audience: the coordinator a query is sent to
NOW_MS = time.time_ns() // 1_000_000


def make_vector(values: tuple[float, ...] = (0.5, 0.5, 0.5, 0.5)) -> WireVector:
    return WireVector(
        dtype=DTYPE_FLOAT32, dim=len(values), data=struct.pack(f"<{len(values)}f", *values)
    )


@dataclass(frozen=True)
class Party:
    """One certificate holder's PEM material, read once."""

    cert: bytes
    key: bytes
    ca: bytes

    @classmethod
    def of(cls, files: TlsFiles) -> Party:
        cert, key, ca = files.read()
        return cls(cert=cert, key=key, ca=ca)

    def sign(self, **overrides: object) -> SignedQuery:
        arguments: dict[str, object] = {
            "vector": make_vector(),
            "source_space": SPACE,
            "silos": [SILO],
            "k": 10,
            "audience": HUB,
            "now_ms": NOW_MS,
        }
        arguments.update(overrides)
        return sign_query(key_pem=self.key, certificate_pem=self.cert, **arguments)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def alice(pki: Pki) -> Party:
    return Party.of(pki.home_client)


@pytest.fixture(scope="module")
def ca_pem(pki: Pki) -> bytes:
    return (pki.root / "ca" / "ca.crt").read_bytes()


Verify = Callable[..., object]


@pytest.fixture(scope="module")
def verify(ca_pem: bytes) -> Verify:
    """verify_signed_query with the defaults of the good query; keywords override them."""

    def _verify(signed: SignedQuery, **overrides: object) -> object:
        arguments: dict[str, object] = {
            "ca_certificate_pem": ca_pem,
            "vector": make_vector(),
            "source_space": SPACE,
            "silo": SILO,
            "audience": HUB,
            "replay": ReplayCache(),
            "now_ms": NOW_MS,
        }
        arguments.update(overrides)
        return verify_signed_query(signed, **arguments)  # type: ignore[arg-type]

    return _verify


def sign_raw_claims(party: Party, claims_bytes: bytes, context: bytes = SIGNATURE_CONTEXT) -> bytes:
    key = serialization.load_pem_private_key(party.key, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key.sign(context + claims_bytes, ec.ECDSA(hashes.SHA256()))


def resigned(party: Party, claims: QueryClaims) -> SignedQuery:
    """A query with hand-made claims, correctly signed by ``party``."""
    claims_bytes = encode_claims(claims)
    return SignedQuery(
        claims=claims_bytes, signature=sign_raw_claims(party, claims_bytes), certificate=party.cert
    )


# --- the good path ----------------------------------------------------------------------------


def test_a_good_query_verifies_and_names_its_signer(alice: Party, ca_pem: bytes) -> None:
    signed = alice.sign(silos=["b", SILO, "b"], k=7, rerank_text="in the beginning")
    verified = verify_signed_query(
        signed,
        ca_certificate_pem=ca_pem,
        vector=make_vector(),
        source_space=SPACE,
        silo=SILO,
        audience=HUB,
        replay=ReplayCache(),
        now_ms=NOW_MS,
        rerank_text="in the beginning",
    )
    assert verified.signer.spiffe_id == "spiffe://testnet/client/alice"
    assert verified.signer.org == "bible"
    assert verified.signer.role == "client"
    assert list(verified.claims.silos) == ["b", SILO]
    assert verified.claims.k == 7
    assert verified.claims.issued_unix_ms == NOW_MS
    assert len(verified.claims.nonce) == 16
    assert verified.claims.rerank_text_sha256 == hashlib.sha256(b"in the beginning").digest()


def test_claims_are_deterministic_and_silo_order_does_not_matter(alice: Party) -> None:
    nonce = bytes(range(16))
    one = alice.sign(silos=["c", "a", "b"], nonce=nonce)
    other = alice.sign(silos=["b", "c", "a", "a"], nonce=nonce)
    assert one.claims == other.claims


def test_every_query_gets_a_fresh_nonce(alice: Party) -> None:
    nonces = {decode_claims(alice.sign().claims).nonce for _ in range(20)}
    assert len(nonces) == 20


def test_a_query_for_no_silos_is_not_signed(alice: Party) -> None:
    # Issue 11, finding 7: "every silo" is resolved into names before signing.
    with pytest.raises(InvalidArgument, match="names its target silos"):
        alice.sign(silos=[])


def test_the_client_signer_loads_files_once_and_signs(pki: Pki, verify: Verify) -> None:
    signer = load_client_signer(pki.home_client.key, pki.home_client.cert)
    signed = signer(
        vector=make_vector(), source_space=SPACE, silos=[SILO], k=3, audience=HUB, now_ms=NOW_MS
    )
    verify(signed)


def test_the_client_signer_names_a_missing_file(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.key"):
        load_client_signer(tmp_path / "missing.key", pki.home_client.cert)


def test_signing_with_a_key_that_is_not_the_certificates_is_refused(pki: Pki) -> None:
    alice, mallory = Party.of(pki.home_client), Party.of(pki.other_client)
    with pytest.raises(ConfigError, match="does not belong"):
        sign_query(
            vector=make_vector(),
            source_space=SPACE,
            silos=[SILO],
            k=1,
            key_pem=mallory.key,
            certificate_pem=alice.cert,
            audience=HUB,
        )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"k": 0}, "k must be"),
        ({"source_space": ""}, "source space"),
        ({"nonce": b"short"}, "nonce must be 16 bytes"),
    ],
)
def test_signing_validates_its_inputs(
    alice: Party, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        alice.sign(**overrides)


# --- what verification refuses ----------------------------------------------------------------


def test_a_replayed_query_is_refused(alice: Party, verify: Verify) -> None:
    replay = ReplayCache()
    signed = alice.sign()
    verify(signed, replay=replay)
    with pytest.raises(PermissionDenied, match="replayed query: nonce"):
        verify(signed, replay=replay)
    # A fresh signature of the same question is a new query, not a replay.
    verify(alice.sign(), replay=replay)


def test_a_rejected_query_does_not_burn_its_nonce(alice: Party, verify: Verify) -> None:
    replay = ReplayCache()
    signed = alice.sign()
    with pytest.raises(PermissionDenied):
        verify(signed, replay=replay, source_space="other")
    verify(signed, replay=replay)


def test_another_orgs_key_claiming_alices_certificate_is_refused(
    pki: Pki, alice: Party, verify: Verify
) -> None:
    forged = replace(Party.of(pki.other_client).sign(), certificate=alice.cert)
    with pytest.raises(PermissionDenied, match="signature does not verify"):
        verify(forged)


def test_claims_signed_without_the_domain_context_are_refused(alice: Party, verify: Verify) -> None:
    signed = alice.sign()
    signed = replace(signed, signature=sign_raw_claims(alice, signed.claims, context=b""))
    with pytest.raises(PermissionDenied, match="signature does not verify"):
        verify(signed)


def _flip_first_data_byte(vector: WireVector) -> WireVector:
    return replace(vector, data=bytes([vector.data[0] ^ 0x01]) + vector.data[1:])


def _grow_dim(vector: WireVector) -> WireVector:
    return replace(vector, dim=vector.dim + 1)


def _change_dtype(vector: WireVector) -> WireVector:
    return replace(vector, dtype=0)  # DTYPE_UNSPECIFIED


@pytest.mark.parametrize("alter", [_flip_first_data_byte, _grow_dim, _change_dtype])
def test_a_vector_altered_after_signing_is_refused(
    alice: Party, verify: Verify, alter: Callable[[WireVector], WireVector]
) -> None:
    vector = alter(make_vector())
    with pytest.raises(PermissionDenied, match="query vector was altered after signing"):
        verify(alice.sign(), vector=vector)


def test_a_changed_source_space_is_refused(alice: Party, verify: Verify) -> None:
    with pytest.raises(PermissionDenied, match="source space"):
        verify(alice.sign(), source_space="another-space")


def test_a_query_not_addressed_to_this_silo_is_refused(alice: Party, verify: Verify) -> None:
    with pytest.raises(PermissionDenied, match="not addressed to silo 'other'"):
        verify(alice.sign(silos=[SILO, "third"]), silo="other")


@pytest.mark.parametrize("offset_s", [DEFAULT_MAX_AGE_S + 1, -(DEFAULT_MAX_SKEW_S + 1)])
def test_a_query_outside_the_time_window_is_refused(
    alice: Party, verify: Verify, offset_s: float
) -> None:
    signed = alice.sign(now_ms=NOW_MS - int(offset_s * 1000))
    match = "ago" if offset_s > 0 else "in the future"
    with pytest.raises(PermissionDenied, match=match):
        verify(signed)


@pytest.mark.parametrize("offset_s", [DEFAULT_MAX_AGE_S - 1, -(DEFAULT_MAX_SKEW_S - 1)])
def test_a_query_just_inside_the_time_window_is_accepted(
    alice: Party, verify: Verify, offset_s: float
) -> None:
    verify(alice.sign(now_ms=NOW_MS - int(offset_s * 1000)))


def test_a_certificate_of_a_foreign_ca_is_refused(pki: Pki, verify: Verify) -> None:
    with pytest.raises(PermissionDenied, match="not issued by this consortium's CA"):
        verify(Party.of(pki.foreign_ca_client).sign())


def test_an_expired_certificate_is_refused(pki: Pki, verify: Verify) -> None:
    with pytest.raises(PermissionDenied, match="expired"):
        verify(Party.of(pki.expired_client).sign())


def test_a_certificate_used_before_its_validity_is_refused(alice: Party, verify: Verify) -> None:
    not_before = x509.load_pem_x509_certificate(alice.cert).not_valid_before_utc
    early_ms = int(not_before.timestamp() * 1000) - 60_000
    with pytest.raises(PermissionDenied, match="not valid before"):
        verify(alice.sign(now_ms=early_ms), now_ms=early_ms)


@pytest.mark.parametrize("party", ["silo", "coordinator"])
def test_a_non_client_certificate_cannot_sign_queries(pki: Pki, verify: Verify, party: str) -> None:
    files: TlsFiles = getattr(pki, party)
    with pytest.raises(PermissionDenied, match="only client certificates sign queries"):
        verify(Party.of(files).sign())


def test_rerank_text_must_be_the_signed_text(alice: Party, verify: Verify) -> None:
    signed = alice.sign(rerank_text="let there be light")
    verify(signed, rerank_text="let there be light", replay=None)
    # The silo may be sent the vector without the text it was signed with.
    verify(signed, replay=None)
    with pytest.raises(PermissionDenied, match="re-rank text"):
        verify(signed, rerank_text="let there be darkness", replay=None)
    with pytest.raises(PermissionDenied, match="re-rank text"):
        verify(alice.sign(), rerank_text="text the client never signed", replay=None)


@pytest.mark.parametrize("nonce", [b"", b"x" * 15, b"x" * 17])
def test_a_nonce_of_the_wrong_length_is_refused(alice: Party, verify: Verify, nonce: bytes) -> None:
    claims = replace(decode_claims(alice.sign().claims), nonce=nonce)
    with pytest.raises(PermissionDenied, match="nonce is"):
        verify(resigned(alice, claims))


def test_oversized_claims_and_certificates_are_refused_before_parsing(
    alice: Party, verify: Verify
) -> None:
    signed = replace(alice.sign(), claims=b"\x00" * (MAX_CLAIMS_BYTES + 1))
    with pytest.raises(PermissionDenied, match=r"claims are \d+ bytes"):
        verify(signed)
    signed = replace(alice.sign(), certificate=alice.cert + b"\n" * MAX_CERTIFICATE_BYTES)
    with pytest.raises(PermissionDenied, match=r"certificate is \d+ bytes"):
        verify(signed)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("certificate", b"", "no client certificate"),
        ("certificate", b"not a certificate", "not a readable PEM certificate"),
        ("signature", b"", "signature is 0 bytes"),
    ],
)
def test_missing_or_unreadable_parts_are_refused(
    alice: Party, verify: Verify, field: str, value: bytes, message: str
) -> None:
    signed = replace(alice.sign(), **{field: value})
    with pytest.raises(PermissionDenied, match=message):
        verify(signed)


def test_signed_bytes_that_are_not_claims_are_refused(alice: Party, verify: Verify) -> None:
    garbage = b"\xff\xff\xff"
    signed = SignedQuery(
        claims=garbage, signature=sign_raw_claims(alice, garbage), certificate=alice.cert
    )
    with pytest.raises(PermissionDenied, match="not a readable QueryClaims"):
        verify(signed)


def test_a_replay_window_shorter_than_the_accepted_age_is_a_config_error(
    alice: Party, verify: Verify
) -> None:
    with pytest.raises(ConfigError, match="replay window"):
        verify(alice.sign(), replay=ReplayCache(window_s=10), max_age_s=60)


@pytest.fixture(scope="module")
def signed_once(alice: Party) -> SignedQuery:
    # One signature for every example: ECDSA signatures vary in length from one to the next.
    return alice.sign(nonce=b"n" * 16)


@given(data=st.data())
def test_flipping_any_byte_of_claims_or_signature_fails_verification(
    signed_once: SignedQuery, verify: Verify, data: st.DataObject
) -> None:
    verify(signed_once, replay=None)
    field = data.draw(st.sampled_from(["claims", "signature"]))
    original: bytes = getattr(signed_once, field)
    index = data.draw(st.integers(0, len(original) - 1))
    mask = data.draw(st.integers(1, 255))
    tampered = bytearray(original)
    tampered[index] ^= mask
    signed = replace(signed_once, **{field: bytes(tampered)})
    with pytest.raises(PermissionDenied):
        verify(signed, replay=None)


# --- WireVector.sha256 ------------------------------------------------------------------------


@given(dtype=st.integers(0, 255), dim=st.integers(0, 2**32 - 1), data=st.binary(max_size=64))
def test_vector_hash_covers_dtype_dim_and_data(dtype: int, dim: int, data: bytes) -> None:
    vector = WireVector(dtype=dtype, dim=dim, data=data)
    expected = hashlib.sha256(bytes([dtype]) + dim.to_bytes(4, "big") + data).digest()
    assert vector.sha256() == expected


def test_a_dtype_that_does_not_fit_a_byte_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="dtype"):
        WireVector(dtype=300, dim=1, data=b"\x00" * 4).sha256()


# --- ReplayCache ------------------------------------------------------------------------------


def test_the_replay_cache_refuses_a_nonce_per_signer() -> None:
    cache = ReplayCache(window_s=10)
    cache.check_and_remember("spiffe://t/client/a", b"n" * 16, issued_ms=0, now_ms=0)
    # Another signer may happen to pick the same nonce; it is not a replay of a's query.
    cache.check_and_remember("spiffe://t/client/b", b"n" * 16, issued_ms=0, now_ms=0)
    with pytest.raises(PermissionDenied, match="replayed query"):
        cache.check_and_remember("spiffe://t/client/a", b"n" * 16, issued_ms=0, now_ms=5_000)


def test_the_replay_cache_forgets_entries_older_than_the_window() -> None:
    cache = ReplayCache(window_s=10)
    cache.check_and_remember("a", b"1" * 16, issued_ms=0, now_ms=0)
    cache.check_and_remember("a", b"2" * 16, issued_ms=5_000, now_ms=5_000)
    assert len(cache) == 2
    cache.check_and_remember("a", b"3" * 16, issued_ms=10_001, now_ms=10_001)
    assert len(cache) == 2  # the first entry is gone, the second still counts
    # Once forgotten, a nonce can only come back inside a query that is itself fresh.
    cache.check_and_remember("a", b"1" * 16, issued_ms=10_001, now_ms=10_001)
    with pytest.raises(PermissionDenied, match="beyond the replay window"):
        cache.check_and_remember("a", b"4" * 16, issued_ms=0, now_ms=10_001)


def test_a_query_signed_ahead_of_time_is_remembered_until_it_ages_out() -> None:
    cache = ReplayCache(window_s=10)
    cache.check_and_remember("a", b"f" * 16, issued_ms=8_000, now_ms=0)
    with pytest.raises(PermissionDenied, match="replayed query"):
        cache.check_and_remember("a", b"f" * 16, issued_ms=8_000, now_ms=17_000)


def test_the_replay_cache_stays_bounded_and_fails_closed_when_full() -> None:
    cache = ReplayCache(window_s=10, max_per_signer=3)
    for i in range(3):
        cache.check_and_remember("a", bytes([i]) * 16, issued_ms=0, now_ms=0)
    with pytest.raises(ResourceExhausted, match="too many signed queries"):
        cache.check_and_remember("a", b"x" * 16, issued_ms=0, now_ms=0)
    assert len(cache) == 3
    cache.check_and_remember("a", b"x" * 16, issued_ms=20_000, now_ms=20_000)
    assert len(cache) == 1


def test_concurrent_replays_admit_exactly_one() -> None:
    cache = ReplayCache()
    start = threading.Barrier(8)
    admitted: list[bool] = []

    def attempt() -> None:
        start.wait()
        try:
            cache.check_and_remember("a", b"z" * 16, issued_ms=NOW_MS, now_ms=NOW_MS)
        except PermissionDenied:
            admitted.append(False)
        else:
            admitted.append(True)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(admitted) == [False] * 7 + [True]


@pytest.mark.parametrize(("window_s", "max_per_signer"), [(0.0, 10), (-1.0, 10), (10.0, 0)])
def test_the_replay_cache_refuses_a_useless_configuration(
    window_s: float, max_per_signer: int
) -> None:
    with pytest.raises(InvalidArgument):
        ReplayCache(window_s=window_s, max_per_signer=max_per_signer)
