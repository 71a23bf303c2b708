"""RPC metrics: a server interceptor counting every call by method and final status, and timing it.

The only module of ``silobridge.metrics`` that imports gRPC. A call's status is the one it ends
with: OK, the code a servicer aborted with (the error boundary's refusals), CANCELLED when the
caller gave up or its deadline passed, UNKNOWN for an exception that escaped.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from silobridge.rpc.rewrap import Behaviour, rewrapped

Context = Any  # grpc.aio.ServicerContext; generic parameters vary per method
Observe = Callable[[str, float], None]

# From a cached Describe (~1 ms) to an anchor stream or a migration command (minutes).
RPC_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


class RpcMetrics(grpc.aio.ServerInterceptor):
    """``silobridge_rpcs_total{method, code}`` and ``silobridge_rpc_duration_seconds{method}``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "silobridge_rpcs",
            "RPCs handled, by full method name and the gRPC status code they ended with.",
            ["method", "code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "silobridge_rpc_duration_seconds",
            "Time from a call's arrival at its handler to its end (a stream's last message).",
            ["method"],
            buckets=RPC_BUCKETS,
            registry=registry,
        )

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:  # no such method: gRPC answers UNIMPLEMENTED, nothing to time
            return None
        method = handler_call_details.method
        calls, seconds = self.calls, self.seconds.labels(method)

        def observe(code: str, elapsed: float) -> None:
            calls.labels(method, code).inc()
            seconds.observe(elapsed)

        def wrap(behaviour: Behaviour, streams: bool) -> Behaviour:
            return (_wrap_stream if streams else _wrap_unary)(behaviour, observe)

        return rewrapped(handler, wrap)


def _ended(context: Context) -> str:
    """The status a call that returned (or aborted) ends with: OK unless a code was set."""
    code = context.code()
    return "OK" if code is None else str(getattr(code, "name", code))


def _failed(context: Context, error: BaseException) -> str:
    if isinstance(error, grpc.aio.AbortError):
        return _ended(context)
    if isinstance(error, asyncio.CancelledError | GeneratorExit):  # the caller went away
        return "CANCELLED"
    return "UNKNOWN"  # what grpc.aio sends for an exception that escaped the servicer


def _wrap_unary(behaviour: Behaviour, observe: Observe) -> Behaviour:
    # grpc.aio runs coroutine functions on the loop and plain functions in a thread pool: the
    # wrapper keeps the kind of the behaviour it wraps.
    if inspect.iscoroutinefunction(behaviour):

        async def unary_async(request: object, context: Context) -> object:
            started = time.perf_counter()
            try:
                response = await behaviour(request, context)
            except BaseException as error:
                observe(_failed(context, error), time.perf_counter() - started)
                raise
            observe(_ended(context), time.perf_counter() - started)
            return response

        return unary_async

    def unary_sync(request: object, context: Context) -> object:
        started = time.perf_counter()
        try:
            response = behaviour(request, context)
        except BaseException as error:
            observe(_failed(context, error), time.perf_counter() - started)
            raise
        observe(_ended(context), time.perf_counter() - started)
        return response

    return unary_sync


def _wrap_stream(behaviour: Behaviour, observe: Observe) -> Behaviour:
    if inspect.isasyncgenfunction(behaviour):

        async def stream_async(request: object, context: Context) -> AsyncIterator[object]:
            started = time.perf_counter()
            responses = behaviour(request, context)
            try:
                async for response in responses:
                    yield response
            except BaseException as error:
                observe(_failed(context, error), time.perf_counter() - started)
                raise
            finally:
                # A cancelled call must close the servicer's generator too (its finally blocks).
                await responses.aclose()
            observe(_ended(context), time.perf_counter() - started)

        return stream_async

    if inspect.iscoroutinefunction(behaviour):
        # The reader/writer style: the behaviour sends with ``await context.write(message)``.
        async def stream_writer(request: object, context: Context) -> None:
            started = time.perf_counter()
            try:
                await behaviour(request, context)
            except BaseException as error:
                observe(_failed(context, error), time.perf_counter() - started)
                raise
            observe(_ended(context), time.perf_counter() - started)

        return stream_writer

    def stream_sync(request: object, context: Context) -> Iterator[object]:
        started = time.perf_counter()
        try:
            yield from behaviour(request, context)
        except BaseException as error:
            observe(_failed(context, error), time.perf_counter() - started)
            raise
        observe(_ended(context), time.perf_counter() - started)

    return stream_sync
