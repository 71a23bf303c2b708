"""Issue 11, finding 7: a signed query is scoped to its coordinator and its explicit targets.

A caller allowed to search a silo directly (a client of the silo's organization, or another
coordinator-role certificate) that captured a signed query cannot submit it first: the silo
accepts it only from its audience, and the genuine forward through the coordinator still
succeeds afterwards. Real silo and coordinator over real gRPC and mutual TLS.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from silobridge.client.api import FederatedClient
from silobridge.client.config import load_client_config
from silobridge.core.config import TlsFiles
from silobridge.core.errors import InvalidArgument, PermissionDenied
from silobridge.core.federation import FederatedAnswer, SiloOutcome
from silobridge.core.hits import Hit
from silobridge.core.queries import FederatedQuery, SignedQuery, SiloQuery
from silobridge.core.vectors import WireVector
from silobridge.rpc.coordinator_client import CoordinatorClient
from silobridge.rpc.silo_client import SiloClient
from silobridge.security.pki.ca import IssuedFiles, issue_certificate
from silobridge.security.signed_query.claims import SIGNATURE_CONTEXT, QueryClaims, encode_claims
from silobridge.security.signed_query.signing import (
    SIGNATURE_ALGORITHM,
    load_client_signer,
    now_ms,
    sign_query,
)
from silobridge.security.signed_query.verify import verify_signed_query

from .conftest import (
    CONSORTIUM,
    CoordinatorThread,
    Pki,
    ServerThread,
    ingest_kjv,
    write_client_config,
    write_coordinator_config,
    write_silo_config,
)

pytestmark = pytest.mark.integration

SPIFFE = f"spiffe://{CONSORTIUM}"
HUB = f"{SPIFFE}/coordinator/hub"
KJV = f"{SPIFFE}/silo/kjv"


@dataclass
class Net:
    pki: Pki
    silo: ServerThread
    coordinator: CoordinatorThread
    space: str
    dim: int
    eve: TlsFiles  # a client of the silo's own organization: may call Search directly
    rogue: TlsFiles  # another coordinator-role certificate: matches coordinator/* rules


def _tls(files: IssuedFiles) -> TlsFiles:
    return TlsFiles(cert=files.cert, key=files.key, ca=files.ca_cert)


@pytest.fixture(scope="module")
def net(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("scoped")
    config = write_silo_config(root / "silo", pki.silo, model="static-64")
    ingest_kjv(config, 30)
    coordinator = CoordinatorThread(
        write_coordinator_config(
            root / "coordinator",
            pki.coordinator,
            f"""
[policy]
register = ["{SPIFFE}/silo/*"]
list = ["{SPIFFE}/client/*"]
[policy.query]
"*" = ["{SPIFFE}/client/*"]
""",
        )
    )
    silo = ServerThread(config)

    async def register() -> tuple[str, int]:
        async with CoordinatorClient(coordinator.target, pki.silo, expect=HUB) as hub:
            _name, space = await hub.register_silo(silo.target, timeout=60)
        return space.space_id, space.dimension

    try:
        space, dim = asyncio.run(register())
        eve = _tls(issue_certificate(pki.ca, root / "eve", role="client", name="eve", org="bible"))
        rogue = _tls(
            issue_certificate(
                pki.ca, root / "rogue", role="coordinator", name="rogue", org="consortium"
            )
        )
        yield Net(pki, silo, coordinator, space, dim, eve, rogue)
    finally:
        coordinator.stop()
        silo.stop()


def _wire(net: Net, seed: int) -> WireVector:
    return WireVector.of(np.random.default_rng(seed).normal(size=net.dim).astype(np.float32))


def _alice_signs(net: Net, wire: WireVector, *, audience: str = HUB) -> SignedQuery:
    """What alice's client signs for the coordinator ``hub`` (captured on its way there)."""
    signer = load_client_signer(net.pki.home_client.key, net.pki.home_client.cert)
    return signer(vector=wire, source_space=net.space, silos=["kjv"], k=3, audience=audience)


async def _search_silo_directly(
    net: Net, tls: TlsFiles, wire: WireVector, signed: SignedQuery
) -> list[Hit]:
    async with SiloClient(net.silo.target, tls, expect=KJV) as silo:
        return await silo.search(
            SiloQuery(wire, 3, signed=signed, source_space=net.space), timeout=10
        )


async def _forward_through_hub(net: Net, wire: WireVector, signed: SignedQuery) -> FederatedAnswer:
    async with CoordinatorClient(net.coordinator.target, net.pki.home_client, expect=HUB) as hub:
        query = FederatedQuery(wire, net.space, 3, silos=("kjv",), signed=signed)
        return await hub.federated_search(query)


@pytest.mark.parametrize("thief", ["eve", "rogue"])
def test_a_captured_signed_query_is_refused_from_anyone_but_its_coordinator(
    net: Net, thief: str
) -> None:
    wire = _wire(net, 1 if thief == "eve" else 2)
    signed = _alice_signs(net, wire)
    tls = net.eve if thief == "eve" else net.rogue

    with pytest.raises(PermissionDenied, match=rf"signed for {HUB}, not for {SPIFFE}/"):
        asyncio.run(_search_silo_directly(net, tls, wire, signed))

    # The refused submission burned nothing: the genuine forward still gets its answer.
    answer = asyncio.run(_forward_through_hub(net, wire, signed))
    [status] = answer.statuses
    assert (status.silo, status.state) == ("kjv", SiloOutcome.OK), status.message
    assert answer.hits


def test_the_coordinator_refuses_a_query_signed_for_another_coordinator(net: Net) -> None:
    wire = _wire(net, 3)
    signed = _alice_signs(net, wire, audience=f"{SPIFFE}/coordinator/rogue")
    with pytest.raises(PermissionDenied, match=rf"signed for {SPIFFE}/coordinator/rogue"):
        asyncio.run(_forward_through_hub(net, wire, signed))


def test_a_client_signs_every_silo_by_name(net: Net, tmp_path: Path) -> None:
    """ "Every silo" (no --silos) is resolved through ListSilos and answered as before."""
    path = write_client_config(
        tmp_path / "client.toml",
        net.pki.home_client,
        coordinator=net.coordinator.target,
        home_silo=net.silo.target,
    )

    async def run() -> list[tuple[str, SiloOutcome]]:
        async with FederatedClient(load_client_config(path)) as client:
            answer = await client.query("In the beginning God created the heaven", k=3)
        return [(s.silo, s.state) for s in answer.statuses]

    assert asyncio.run(run()) == [("kjv", SiloOutcome.OK)]


# --- the signed claims themselves ------------------------------------------------------------


def test_a_client_will_not_sign_a_query_without_targets_or_audience(pki: Pki) -> None:
    cert, key, _ca = pki.home_client.read()
    wire = WireVector.of(np.ones(4, np.float32))
    with pytest.raises(InvalidArgument, match="names its target silos"):
        sign_query(
            vector=wire, source_space="s@1", k=3, key_pem=key, certificate_pem=cert,
            silos=[], audience=HUB,
        )  # fmt: skip
    with pytest.raises(InvalidArgument, match="audience"):
        sign_query(
            vector=wire, source_space="s@1", k=3, key_pem=key, certificate_pem=cert,
            silos=["kjv"], audience="",
        )  # fmt: skip


def _hand_signed(pki: Pki, claims: QueryClaims) -> SignedQuery:
    """Claims no current client would sign (an old or hostile one), with a real key."""
    signer = load_client_signer(pki.home_client.key, pki.home_client.cert)
    data = encode_claims(claims)
    signature = signer.key.sign(SIGNATURE_CONTEXT + data, SIGNATURE_ALGORITHM)
    return SignedQuery(claims=data, signature=signature, certificate=signer.certificate_pem)


@pytest.mark.parametrize(
    ("silos", "audience", "reason"),
    [
        ((), HUB, "names no target silos"),
        (("kjv",), "", "names no audience"),
    ],
)
def test_verifiers_refuse_a_query_without_targets_or_audience(
    pki: Pki, silos: tuple[str, ...], audience: str, reason: str
) -> None:
    wire = WireVector.of(np.ones(4, np.float32))
    claims = QueryClaims(
        source_space="s@1",
        vector_sha256=wire.sha256(),
        silos=silos,
        k=3,
        issued_unix_ms=now_ms(),
        nonce=os.urandom(16),
        audience=audience,
    )
    with pytest.raises(PermissionDenied, match=reason):
        verify_signed_query(
            _hand_signed(pki, claims),
            ca_certificate_pem=pki.home_client.ca.read_bytes(),
            vector=wire,
            source_space="s@1",
            silo="kjv",
            audience=HUB,
            replay=None,
        )
