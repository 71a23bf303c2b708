"""A signed query's certificate must be a client certificate of a CA the verifier trusts now.

Issue 11, finding 10: the signer's certificate was checked for its issuer only (any CA-issued
certificate could sign: no clientAuth, CA:TRUE, no digitalSignature), against the first
certificate of the CA file only, read once for the life of the process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import struct
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from silobridge.core.config import TlsFiles
from silobridge.core.durable import write_file_atomically
from silobridge.core.errors import PermissionDenied
from silobridge.core.queries import SignedQuery, SiloQuery
from silobridge.core.vectors import DTYPE_FLOAT32, WireVector
from silobridge.rpc import convert
from silobridge.rpc.transport import open_channel
from silobridge.security.pki.ca import init_ca, issue_certificate, load_ca
from silobridge.security.signed_query.replay import ReplayCache
from silobridge.security.signed_query.signing import sign_query
from silobridge.security.signed_query.verify import VerifiedQuery, verify_signed_query
from silobridge.v1 import silo_pb2, silo_pb2_grpc

from .conftest import CONSORTIUM, PASSPHRASE, Pki, ServerThread, ingest_kjv, write_silo_config

SPACE = "minilm-l3"
VECTOR = WireVector(dtype=DTYPE_FLOAT32, dim=4, data=struct.pack("<4f", 0.5, 0.5, 0.5, 0.5))


def _sign(cert_pem: bytes, key_pem: bytes) -> SignedQuery:
    return sign_query(
        vector=VECTOR,
        source_space=SPACE,
        silos=["kjv"],
        k=5,
        key_pem=key_pem,
        certificate_pem=cert_pem,
        audience="spiffe://testnet/coordinator/hub",
    )


def _verify(signed: SignedQuery, ca_pem: bytes) -> VerifiedQuery:
    return verify_signed_query(
        signed,
        ca_certificate_pem=ca_pem,
        vector=VECTOR,
        source_space=SPACE,
        silo="kjv",
        audience="spiffe://testnet/coordinator/hub",
        replay=ReplayCache(),
    )


def _crafted_client(
    pki: Pki,
    *,
    usages: list[x509.ObjectIdentifier] | None,
    is_ca: bool = False,
    digital_signature: bool = True,
) -> tuple[bytes, bytes]:
    """(cert, key) PEM of a client certificate our CA signed, with the extensions asked for."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "eve"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bible"),
                ]
            )
        )
        .issuer_name(pki.ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{CONSORTIUM}/client/eve")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature,
                content_commitment=False,
                key_encipherment=not digital_signature,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if usages is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    cert = builder.sign(pki.ca.private_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _ca_pem(pki: Pki) -> bytes:
    return (pki.root / "ca" / "ca.crt").read_bytes()


def test_a_well_formed_crafted_client_certificate_verifies(pki: Pki) -> None:
    # The control for the refusals below: only the one extension differs.
    cert, key = _crafted_client(pki, usages=[ExtendedKeyUsageOID.CLIENT_AUTH])
    _verify(_sign(cert, key), _ca_pem(pki))


@pytest.mark.parametrize(
    ("crafted", "complaint"),
    [
        ({"usages": [ExtendedKeyUsageOID.SERVER_AUTH]}, "clientAuth"),
        ({"usages": None}, "clientAuth"),
        ({"usages": [ExtendedKeyUsageOID.CLIENT_AUTH], "is_ca": True}, "CA"),
        ({"usages": [ExtendedKeyUsageOID.CLIENT_AUTH], "digital_signature": False}, "digital"),
    ],
    ids=["server-auth-only", "no-eku", "ca-true", "no-digital-signature"],
)
def test_a_ca_issued_certificate_unfit_to_sign_queries_is_refused(
    pki: Pki, crafted: dict[str, object], complaint: str
) -> None:
    cert, key = _crafted_client(pki, **crafted)  # type: ignore[arg-type]
    with pytest.raises(PermissionDenied, match=complaint):
        _verify(_sign(cert, key), _ca_pem(pki))


@pytest.fixture(scope="module")
def new_ca_client(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, TlsFiles]:
    """(the new CA's certificate, carol's files): a client of org bible from a rotated-in CA."""
    root = tmp_path_factory.mktemp("new-ca")
    init_ca(root / "ca", CONSORTIUM, PASSPHRASE)
    new_ca = load_ca(root / "ca", PASSPHRASE)
    files = issue_certificate(new_ca, root / "carol", role="client", name="carol", org="bible")
    return new_ca.certificate_pem, TlsFiles(cert=files.cert, key=files.key, ca=files.ca_cert)


def test_a_signer_of_the_second_ca_in_the_bundle_is_accepted(
    pki: Pki, new_ca_client: tuple[bytes, TlsFiles]
) -> None:
    new_ca_pem, carol = new_ca_client
    cert, key, _ca = carol.read()
    bundle = _ca_pem(pki) + new_ca_pem
    verified = _verify(_sign(cert, key), bundle)
    assert verified.signer.spiffe_id == f"spiffe://{CONSORTIUM}/client/carol"
    # The first CA's clients still verify against the same bundle.
    alice_cert, alice_key, _ = pki.home_client.read()
    _verify(_sign(alice_cert, alice_key), bundle)
    # And a bundle without the new CA does not vouch for carol.
    with pytest.raises(PermissionDenied, match="not issued by"):
        _verify(_sign(cert, key), _ca_pem(pki))


# --- over the network: a silo picks up a changed CA file without a restart ---------------------


@pytest.fixture(scope="module")
def rotating_silo(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerThread, Path]]:
    root = tmp_path_factory.mktemp("rotating-silo")
    ca_file = root / "ca.crt"
    ca_file.write_bytes(_ca_pem(pki))
    tls = TlsFiles(cert=pki.silo.cert, key=pki.silo.key, ca=ca_file)
    config = write_silo_config(root / "silo", tls, model="static-64")
    ingest_kjv(config, 20)
    silo = ServerThread(config)
    try:
        yield silo, ca_file
    finally:
        silo.stop()


def _forward_as_coordinator(pki: Pki, silo: ServerThread, signer: TlsFiles) -> grpc.StatusCode:
    cert, key, _ca = signer.read()

    async def run() -> grpc.StatusCode:
        channel = open_channel(
            silo.target, pki.coordinator, expect=f"spiffe://{CONSORTIUM}/silo/kjv"
        )
        try:
            stub = silo_pb2_grpc.SiloServiceStub(channel)
            described = await stub.Describe(silo_pb2.DescribeRequest(), timeout=10)
            space_id, dim = described.space.space_id, described.space.dimension
            wire = WireVector.of(np.random.default_rng(7).normal(size=dim).astype(np.float32))
            signed = sign_query(
                vector=wire,
                source_space=space_id,
                silos=["kjv"],
                k=5,
                key_pem=key,
                certificate_pem=cert,
                audience=f"spiffe://{CONSORTIUM}/coordinator/hub",
            )
            request = convert.silo_query_to_proto(
                SiloQuery(wire, 5, signed=signed, source_space=space_id)
            )
            await stub.Search(request, timeout=10)
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            return error.code()
        finally:
            await channel.close()

    return asyncio.run(run())


@pytest.mark.integration
def test_a_silo_trusts_a_ca_added_to_its_ca_file_without_a_restart(
    pki: Pki,
    rotating_silo: tuple[ServerThread, Path],
    new_ca_client: tuple[bytes, TlsFiles],
) -> None:
    silo, ca_file = rotating_silo
    new_ca_pem, carol = new_ca_client
    # Before: the silo trusts only the old CA, so carol's signature is refused.
    assert _forward_as_coordinator(pki, silo, carol) is grpc.StatusCode.PERMISSION_DENIED
    assert _forward_as_coordinator(pki, silo, pki.home_client) is grpc.StatusCode.OK

    # The operator adds the new CA to the silo's CA file (rotation: old and new both trusted).
    write_file_atomically(ca_file, _ca_pem(pki) + new_ca_pem)
    # No wait and no restart: the next query reads the changed file.

    assert _forward_as_coordinator(pki, silo, carol) is grpc.StatusCode.OK
    assert _forward_as_coordinator(pki, silo, pki.home_client) is grpc.StatusCode.OK
