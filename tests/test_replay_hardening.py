"""Issue 11, finding 9: the silo's replay memory. A refused query keeps its nonce, a query from
too far in the future is refused, a replay after a restart is refused, and one signer filling its
share of the memory blocks nobody else. Real silo servers over real mTLS.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from silobridge.core.config import TlsFiles
from silobridge.core.errors import PermissionDenied, ResourceExhausted
from silobridge.core.queries import SignedQuery, SiloQuery
from silobridge.core.vectors import WireVector
from silobridge.rpc import convert
from silobridge.rpc.transport import open_channel
from silobridge.security.ratelimit import RateLimiter
from silobridge.security.signed_query.replay import ReplayCache
from silobridge.security.signed_query.signing import sign_query
from silobridge.v1 import silo_pb2, silo_pb2_grpc

from .conftest import CONSORTIUM, Pki, ServerThread, ingest_kjv, write_silo_config

pytestmark = pytest.mark.integration
SILO_ID = f"spiffe://{CONSORTIUM}/silo/kjv"


@pytest.fixture(scope="module")
def silo_config(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = write_silo_config(
        tmp_path_factory.mktemp("replay") / "silo", pki.silo, model="static-64"
    )
    ingest_kjv(config, 40)
    return config


@pytest.fixture
def silo(silo_config: Path, serve_silo: type[ServerThread]) -> ServerThread:
    return serve_silo(silo_config)


def _space(silo: ServerThread) -> tuple[str, int]:
    space = silo.service.space
    return space.space_id, space.dimension


def _wire(dim: int, seed: int) -> WireVector:
    return WireVector.of(np.random.default_rng(seed).normal(size=dim).astype(np.float32))


def _signed(
    signer: TlsFiles, wire: WireVector, space: str, *, k: int = 5, now_ms: int | None = None
) -> SignedQuery:
    cert, key, _ca = signer.read()
    return sign_query(
        vector=wire,
        source_space=space,
        silos=["kjv"],
        k=k,
        key_pem=key,
        certificate_pem=cert,
        audience="spiffe://testnet/coordinator/hub",
        now_ms=now_ms,
    )


def _search(silo: ServerThread, tls: TlsFiles, query: SiloQuery) -> tuple[grpc.StatusCode, str]:
    async def run() -> tuple[grpc.StatusCode, str]:
        channel = open_channel(silo.target, tls, expect=SILO_ID)
        try:
            request: silo_pb2.SearchRequest = convert.silo_query_to_proto(query)
            await silo_pb2_grpc.SiloServiceStub(channel).Search(request, timeout=10)
            return grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
        finally:
            await channel.close()

    return asyncio.run(run())


def _forwarded(silo: ServerThread, pki: Pki, seed: int, now_ms: int | None = None) -> SiloQuery:
    space, dim = _space(silo)
    wire = _wire(dim, seed)
    signed = _signed(pki.home_client, wire, space, now_ms=now_ms)
    return SiloQuery(wire, 5, signed=signed, source_space=space)


def test_a_query_refused_by_policy_does_not_burn_its_nonce(silo: ServerThread, pki: Pki) -> None:
    query = _forwarded(silo, pki, 1)
    # Asking for more hits than the client signed for is refused by the silo's admission ...
    too_many = SiloQuery(query.vector, 6, signed=query.signed, source_space=query.source_space)
    code, details = _search(silo, pki.coordinator, too_many)
    assert code is grpc.StatusCode.PERMISSION_DENIED and "exceeds the k=5" in details
    # ... and the genuine forward of the same signed query is still answered.
    assert _search(silo, pki.coordinator, query) == (grpc.StatusCode.OK, "")
    # Once answered, it is a replay.
    code, details = _search(silo, pki.coordinator, query)
    assert code is grpc.StatusCode.PERMISSION_DENIED and "replayed query" in details


def test_a_query_refused_by_the_rate_limit_does_not_burn_its_nonce(
    silo: ServerThread, pki: Pki
) -> None:
    clock = [0.0]
    # One token, refilled once a second on a clock the test moves.
    silo.running.servicer.gatekeeper.limiter = RateLimiter(1.0, 1, clock=lambda: clock[0])
    first, second = _forwarded(silo, pki, 2), _forwarded(silo, pki, 3)
    assert _search(silo, pki.coordinator, first) == (grpc.StatusCode.OK, "")
    code, _details = _search(silo, pki.coordinator, second)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    clock[0] += 1.0
    assert _search(silo, pki.coordinator, second) == (grpc.StatusCode.OK, "")


def test_a_query_signed_beyond_the_clock_skew_in_the_future_is_refused(
    silo: ServerThread, pki: Pki
) -> None:
    ahead_ms = time.time_ns() // 1_000_000 + 60_000  # a minute ahead: inside the 120 s age window
    code, details = _search(silo, pki.coordinator, _forwarded(silo, pki, 4, now_ms=ahead_ms))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert "in the future" in details and "clock skew" in details
    # A couple of seconds of skew is tolerated.
    slightly_ahead_ms = time.time_ns() // 1_000_000 + 2_000
    query = _forwarded(silo, pki, 5, now_ms=slightly_ahead_ms)
    assert _search(silo, pki.coordinator, query) == (grpc.StatusCode.OK, "")


def test_a_replay_after_the_silo_restarts_is_refused(
    silo_config: Path, pki: Pki, serve_silo: type[ServerThread]
) -> None:
    first = ServerThread(silo_config)
    try:
        query = _forwarded(first, pki, 6)
        assert _search(first, pki.coordinator, query) == (grpc.StatusCode.OK, "")
    finally:
        first.stop()
    restarted = serve_silo(silo_config)
    code, details = _search(restarted, pki.coordinator, query)
    assert code is grpc.StatusCode.PERMISSION_DENIED and "replayed query" in details
    # A fresh query is answered as before.
    assert _search(restarted, pki.coordinator, _forwarded(restarted, pki, 7)) == (
        grpc.StatusCode.OK,
        "",
    )
    audit = silo_config.parent / "audit" / "audit.log"
    lines = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
    assert any("replayed query" in str(line.get("reason")) for line in lines)


def test_one_signer_filling_its_share_of_the_replay_memory_blocks_no_other() -> None:
    cache = ReplayCache(10, 3)
    for i in range(3):
        cache.check_and_remember("spiffe://t/client/a", bytes([i]) * 16, issued_ms=0, now_ms=0)
    with pytest.raises(ResourceExhausted, match="spiffe://t/client/a"):
        cache.check_and_remember("spiffe://t/client/a", b"x" * 16, issued_ms=0, now_ms=0)
    # Another signer is not refused for a's traffic.
    cache.check_and_remember("spiffe://t/client/b", b"x" * 16, issued_ms=0, now_ms=0)
    with pytest.raises(PermissionDenied, match="replayed query"):
        cache.check_and_remember("spiffe://t/client/b", b"x" * 16, issued_ms=0, now_ms=1)
