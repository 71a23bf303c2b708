"""A grpc.health.v1 ``Check`` over mTLS, the server's identity checked in the handshake.

``silobridge health`` (container health checks and probes) and ``silobridge doctor`` (peers
reachable) both ask this way: a server that answers with another certificate, or not at all,
is reported as the ``SiloBridgeError`` a client call would raise.
"""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health_pb2

from silobridge.core.config import TlsFiles
from silobridge.rpc.calls import Peer, unary
from silobridge.rpc.transport import open_channel

SERVING = "SERVING"


async def health_status(
    target: str,
    tls: TlsFiles | None,
    *,
    expect: str | None,
    timeout: float = 5.0,
    insecure: bool = False,
) -> str:
    """The health status name of ``target`` (``SERVING``, ``NOT_SERVING``, ...)."""
    peer = Peer(label=expect or target, target=target, expect=expect)
    async with open_channel(target, tls, insecure=insecure, expect=expect) as channel:
        # The typeshed stub of HealthStub declares no methods: call the method by its path.
        check: Any = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        reply = await unary(peer, check(health_pb2.HealthCheckRequest(), timeout=timeout))
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return name
