"""Calling a peer: its gRPC failures come back as SiloBridge errors, so callers handle one kind."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Iterator
from typing import TypeVar

import grpc

from silobridge.rpc.status import error_from_rpc

T = TypeVar("T")


@contextlib.contextmanager
def peer_errors(peer: str) -> Iterator[None]:
    """Turn a failed call to ``peer`` into the matching ``SiloBridgeError``."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise error_from_rpc(error, peer) from None


async def unary(peer: str, call: Awaitable[T]) -> T:
    with peer_errors(peer):
        return await call


async def streamed(peer: str, call: AsyncIterable[T]) -> AsyncIterator[T]:
    with peer_errors(peer):
        async for item in call:
            yield item
