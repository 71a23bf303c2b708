"""Calling a peer: its gRPC failures come back as SiloBridge errors, so callers handle one kind."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import grpc

from silobridge.core.errors import SiloBridgeError
from silobridge.rpc.status import error_for_status, error_from_rpc
from silobridge.rpc.transport import wrong_server_error

T = TypeVar("T")


@dataclass(frozen=True)
class Peer:
    """Who a client calls: ``label`` names it in errors; ``expect`` is the identity it must hold."""

    label: str
    target: str
    expect: str | None = None

    def __str__(self) -> str:
        return self.label

    def error(self, code: grpc.StatusCode, details: str) -> SiloBridgeError:
        """The domain error for this peer ending a call with ``code`` and ``details``."""
        return wrong_server_error(
            error_for_status(code, details, self.label), self.target, self.expect
        )


def _error(error: grpc.aio.AioRpcError, peer: str | Peer) -> SiloBridgeError:
    if isinstance(peer, Peer):
        return peer.error(error.code(), error.details() or "")
    return error_from_rpc(error, peer)


@contextlib.contextmanager
def peer_errors(peer: str | Peer) -> Iterator[None]:
    """Turn a failed call to ``peer`` into the matching ``SiloBridgeError``."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise _error(error, peer) from None


async def unary(peer: str | Peer, call: Awaitable[T]) -> T:
    with peer_errors(peer):
        return await call


async def streamed(peer: str | Peer, call: AsyncIterable[T]) -> AsyncIterator[T]:
    with peer_errors(peer):
        async for item in call:
            yield item
