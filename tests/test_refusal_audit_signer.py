"""Issue 11, finding 12: a forwarded query whose signature verified but that a later check refused
is audited under its signer, with the forwarder as ``via`` (real silo, real mTLS)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from silobridge.core.config import TlsFiles
from silobridge.core.queries import SiloQuery
from silobridge.core.vectors import WireVector
from silobridge.rpc import convert
from silobridge.rpc.transport import open_channel
from silobridge.security.signed_query.signing import sign_query
from silobridge.v1 import silo_pb2_grpc

from .conftest import CONSORTIUM, Pki, ServerThread, ingest_kjv, write_silo_config

pytestmark = pytest.mark.integration
SPIFFE = f"spiffe://{CONSORTIUM}"


def _forward(silo: ServerThread, coordinator: TlsFiles, signer: TlsFiles, k: int) -> str:
    space = silo.service.space
    wire = WireVector.of(np.random.default_rng(k).normal(size=space.dimension).astype(np.float32))
    cert, key, _ca = signer.read()
    signed = sign_query(
        vector=wire,
        source_space=space.space_id,
        silos=["kjv"],
        k=5,
        key_pem=key,
        certificate_pem=cert,
        audience="spiffe://testnet/coordinator/hub",
    )
    request = convert.silo_query_to_proto(
        SiloQuery(wire, k, signed=signed, source_space=space.space_id)
    )

    async def run() -> str:
        channel = open_channel(silo.target, coordinator, expect=f"{SPIFFE}/silo/kjv")
        try:
            await silo_pb2_grpc.SiloServiceStub(channel).Search(request, timeout=10)
        except grpc.aio.AioRpcError as error:
            return error.code().name
        finally:
            await channel.close()
        return "OK"

    return asyncio.run(run())


def _refusals(config: Path) -> list[dict[str, object]]:
    log = config.parent / "audit" / "audit.log"
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [line for line in lines if line.get("rpc") == "Search" and not line.get("allowed")]


@pytest.mark.parametrize(
    ("signer_name", "k", "reason"),
    [
        # The silo's own policy does not serve mallory's organization.
        ("other_client", 5, "does not serve queries from"),
        # Alice is served, but the forwarder asked for more hits than she signed for.
        ("home_client", 9, "exceeds the k=5"),
    ],
)
def test_a_refused_forwarded_query_is_audited_under_its_signer(
    pki: Pki,
    tmp_path: Path,
    serve_silo: type[ServerThread],
    signer_name: str,
    k: int,
    reason: str,
) -> None:
    config = write_silo_config(tmp_path / "silo", pki.silo, model="static-64")
    ingest_kjv(config, 10)
    silo = serve_silo(config)
    signer: TlsFiles = getattr(pki, signer_name)
    assert _forward(silo, pki.coordinator, signer, k) == "PERMISSION_DENIED"
    [line] = [line for line in _refusals(config) if reason in str(line.get("reason"))]
    signer_name_in_cert = "mallory" if signer_name == "other_client" else "alice"
    assert line["who"] == f"{SPIFFE}/client/{signer_name_in_cert}"
    assert line["via"] == f"{SPIFFE}/coordinator/hub"
