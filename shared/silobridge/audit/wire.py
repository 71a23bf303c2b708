"""Wire recorder: a server interceptor appending every message a server sends to a JSONL file.

For audits and tests (the data-boundary report reads these files). It records everything that
leaves the server, document ids, disclosed fields and vectors included, so it is off unless
``SILOBRIDGE_WIRE_RECORD`` names a directory, and it logs a WARNING when it is on: never enable
it in production silently. Each line is ``{"server", "rpc", "peer", "message"}``, the message as
``MessageToDict(..., preserving_proto_field_name=True)`` (bytes base64-encoded, as protobuf's
JSON mapping writes them); a failed call's line has ``"status": {"code", "details"}`` instead,
since its details text leaves the server too. A message that cannot be written makes the call
fail: a silently missing line would let a boundary check pass on an incomplete record.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from silobridge.core.errors import ConfigError, SiloBridgeError
from silobridge.rpc.rewrap import Behaviour, rewrapped
from silobridge.security.identity import identity_from_certificate_pem

log = logging.getLogger(__name__)

ENV_VAR = "SILOBRIDGE_WIRE_RECORD"
# Server names become file names: refuse anything that could leave the directory.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

Context = Any  # grpc.aio.ServicerContext, or the recorder's proxy of one


class WireRecorder:
    """Appends one JSON line per sent message to ``path`` (created 0600); thread-safe."""

    def __init__(self, server: str, path: Path) -> None:
        self.server = server
        self.path = path
        self._lock = threading.Lock()

    def record(self, rpc: str, peer: str, message: object) -> None:
        entry: dict[str, Any] = {"server": self.server, "rpc": rpc, "peer": peer}
        if isinstance(message, Message):
            entry["message"] = json_format.MessageToDict(message, preserving_proto_field_name=True)
        else:
            # Not a protobuf message: keep a line saying so, so a checker can refuse to vouch.
            entry["message"] = None
            entry["unrecorded_type"] = type(message).__name__
        self._append(entry)

    def record_status(self, rpc: str, peer: str, code: str, details: str) -> None:
        """A failed call: the status code and the details text it sends instead of a message."""
        status = {"code": code, "details": details}
        self._append({"server": self.server, "rpc": rpc, "peer": peer, "status": status})

    def _append(self, entry: Mapping[str, Any]) -> None:
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            # Open per line: nothing stays open across calls, and each line is flushed on close.
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
                handle.write(line)


def recording_interceptors(server_name: str) -> list[grpc.aio.ServerInterceptor]:
    """``[]`` unless ``$SILOBRIDGE_WIRE_RECORD`` is set; then one recording interceptor.

    Pass the result to ``grpc.aio.server(interceptors=...)``. Records go to
    ``$SILOBRIDGE_WIRE_RECORD/<server_name>.jsonl``, appended across restarts.
    """
    directory = os.environ.get(ENV_VAR, "")
    if not directory:
        return []
    if not _SAFE_NAME.match(server_name):
        raise ConfigError(
            f"cannot record server {server_name!r}: its name is not usable as a file name "
            "(letters, digits, '.', '_', '-')"
        )
    root = Path(directory)
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{ENV_VAR}={directory}: cannot create it: {error.strerror}") from None
    path = root / f"{server_name}.jsonl"
    log.warning(
        "WIRE RECORDING IS ON (%s is set): every message server %r sends, document ids, fields "
        "and vectors included, is appended to %s; for audits and tests only",
        ENV_VAR,
        server_name,
        path,
    )
    return [RecordingInterceptor(WireRecorder(server_name, path))]


def peer_spiffe_id(context: Context) -> str:
    """The caller's SPIFFE id from its TLS certificate, or "" (plaintext, or unreadable)."""
    try:
        pems = list(context.auth_context().get("x509_pem_cert", ()))
        return identity_from_certificate_pem(pems[0]).spiffe_id if len(pems) == 1 else ""
    except SiloBridgeError:
        return ""


class _WritingContext:
    """A servicer context whose ``write`` records the message before sending it."""

    def __init__(self, context: Context, sent: Callable[[object], None]) -> None:
        self._context = context
        self._sent = sent

    async def write(self, message: object) -> None:
        self._sent(message)
        await self._context.write(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class RecordingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps each method handler so that every response message is recorded before it is sent."""

    def __init__(self, recorder: WireRecorder) -> None:
        self.recorder = recorder

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        rpc = handler_call_details.method
        recorder = self.recorder

        def wrap(behaviour: Behaviour, streams: bool) -> Behaviour:
            return (_wrap_stream if streams else _wrap_unary)(behaviour, recorder, rpc)

        return rewrapped(handler, wrap)


def _failed(
    recorder: WireRecorder, rpc: str, peer: str, context: Context, error: Exception
) -> None:
    """Record the status a failed call sends: its details leave the server too."""
    if isinstance(error, grpc.aio.AbortError):
        code = context.code()
        details = context.details() or ""
    else:
        # grpc.aio tells the caller an unexpected exception's type and text as UNKNOWN's details.
        code, details = grpc.StatusCode.UNKNOWN, f"Unexpected {type(error)}: {error}"
    recorder.record_status(rpc, peer, getattr(code, "name", str(code)), details)


def _wrap_unary(behaviour: Behaviour, recorder: WireRecorder, rpc: str) -> Behaviour:
    # grpc.aio runs coroutine functions on the loop and plain functions in a thread pool: the
    # wrapper must keep the kind of the behaviour it wraps.
    if inspect.iscoroutinefunction(behaviour):

        async def unary_async(request: object, context: Context) -> object:
            peer = peer_spiffe_id(context)
            try:
                response = await behaviour(request, context)
            except Exception as error:
                _failed(recorder, rpc, peer, context, error)
                raise
            recorder.record(rpc, peer, response)
            return response

        return unary_async

    def unary_sync(request: object, context: Context) -> object:
        peer = peer_spiffe_id(context)
        try:
            response = behaviour(request, context)
        except Exception as error:
            _failed(recorder, rpc, peer, context, error)
            raise
        recorder.record(rpc, peer, response)
        return response

    return unary_sync


def _wrap_stream(behaviour: Behaviour, recorder: WireRecorder, rpc: str) -> Behaviour:
    if inspect.iscoroutinefunction(behaviour):
        # The reader/writer style: the behaviour sends with ``await context.write(message)``.
        async def stream_writer(request: object, context: Context) -> None:
            peer = peer_spiffe_id(context)
            proxy = _WritingContext(context, lambda message: recorder.record(rpc, peer, message))
            try:
                await behaviour(request, proxy)
            except Exception as error:
                _failed(recorder, rpc, peer, context, error)
                raise

        return stream_writer

    if inspect.isasyncgenfunction(behaviour):

        async def stream_async(request: object, context: Context) -> AsyncIterator[object]:
            peer = peer_spiffe_id(context)
            responses = behaviour(request, context)
            try:
                async for response in responses:
                    recorder.record(rpc, peer, response)
                    yield response
            except Exception as error:
                _failed(recorder, rpc, peer, context, error)
                raise
            finally:
                # A cancelled call must close the servicer's generator too (its finally blocks).
                await responses.aclose()

        return stream_async

    def stream_sync(request: object, context: Context) -> Iterator[object]:
        peer = peer_spiffe_id(context)
        try:
            for response in behaviour(request, context):
                recorder.record(rpc, peer, response)
                yield response
        except Exception as error:
            _failed(recorder, rpc, peer, context, error)
            raise

    return stream_sync
