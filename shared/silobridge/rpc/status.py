"""The status boundary: domain errors to gRPC statuses at every servicer, and back at clients."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from silobridge.core.errors import (
    DeadlineExceeded,
    ErrorCode,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SiloBridgeError,
    Unavailable,
)
from silobridge.rpc.transport import ANONYMOUS, peer_identity
from silobridge.security.identity import PeerIdentity

log = logging.getLogger(__name__)

STATUS_FOR_CODE: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    # A configuration problem on the server is not the caller's fault and not theirs to see.
    ErrorCode.CONFIG: grpc.StatusCode.INTERNAL,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}
GENERIC_INTERNAL_MESSAGE = "internal error; the server logged the details"
# What a caller raises for a peer's status. CANCELLED is the caller's own doing; UNAUTHENTICATED
# is how a handshake-level refusal reads; anything unlisted is the peer's internal problem.
ERROR_FOR_STATUS: dict[grpc.StatusCode, type[SiloBridgeError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ALREADY_EXISTS: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self")
Ctx = Any  # grpc.aio.ServicerContext[Req, Resp]; generic parameters vary per method


# A status message travels as the grpc-message trailer, percent-encoded (up to 3 bytes per UTF-8
# byte), and gRPC drops a reply whose metadata passes 8 KiB (soft) or 16 KiB (hard): the caller
# then gets RESOURCE_EXHAUSTED "metadata size exceeds" instead of the refusal. Messages that echo
# a huge request field are cut in the middle to stay well inside that.
MAX_PUBLIC_MESSAGE_BYTES = 2000
_KEPT_HEAD_BYTES = 1300
_KEPT_TAIL_BYTES = 500


def public_message(message: str) -> str:
    """``message`` cut in the middle to at most ``MAX_PUBLIC_MESSAGE_BYTES`` of UTF-8 (its
    start says what is wrong, its end often what to do)."""
    encoded = message.encode("utf-8", "replace")
    if len(encoded) <= MAX_PUBLIC_MESSAGE_BYTES:
        return message
    head = encoded[:_KEPT_HEAD_BYTES].decode("utf-8", "ignore")
    tail = encoded[-_KEPT_TAIL_BYTES:].decode("utf-8", "ignore")
    cut = len(message) - len(head) - len(tail)
    return f"{head} [... {cut} characters cut ...] {tail}"


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and public message for an error; unknown errors reveal nothing."""
    if isinstance(error, SiloBridgeError):
        status = STATUS_FOR_CODE[error.code]
        if status is grpc.StatusCode.INTERNAL:
            return status, GENERIC_INTERNAL_MESSAGE
        return status, public_message(error.message)
    return grpc.StatusCode.INTERNAL, GENERIC_INTERNAL_MESSAGE


def error_from_rpc(error: grpc.aio.AioRpcError, peer: str) -> SiloBridgeError:
    """The domain error for a failed call to ``peer``; its message says who answered what."""
    return error_for_status(error.code(), error.details() or "", peer)


def error_for_status(code: grpc.StatusCode, peer_details: str, peer: str) -> SiloBridgeError:
    """The domain error for ``peer`` ending a call with ``code`` and its own ``peer_details``."""
    kind = ERROR_FOR_STATUS.get(code, SiloBridgeError)
    details = peer_details or code.name.lower().replace("_", " ")
    if kind is Unavailable:
        details = f"cannot reach {peer}: {details}"
    elif kind is DeadlineExceeded:
        details = f"{peer} did not answer in time ({details})"
    elif kind is SiloBridgeError:
        details = f"{peer} failed: {code.name}: {details}"
    mapped = kind(details)
    mapped.status_name = code.name
    mapped.peer_details = peer_details
    return mapped


async def _abort(servicer: object, context: Ctx, error: Exception, method: str) -> None:
    status, message = refusal(servicer, context, error, method)
    await context.abort(status, message)


def refusal(
    servicer: object, context: Ctx, error: Exception, method: str
) -> tuple[grpc.StatusCode, str]:
    """The status and public message ``error`` ends a call (or one query of it) with; logged,
    and audited as a refusal of ``method`` (servicers with a gatekeeper)."""
    status, message = status_for(error)
    if status is grpc.StatusCode.INTERNAL:
        log.exception("%s failed", method, exc_info=error)
    else:
        log.info("%s refused: %s: %s", method, status.name, message)
    _audit_refusal(servicer, context, method, status, f"{status.name}: {message}", error)
    return status, message


def _audit_refusal(
    servicer: object,
    context: Ctx,
    method: str,
    status: grpc.StatusCode,
    reason: str,
    error: BaseException | None = None,
) -> None:
    """Every refused call leaves an audit line, whoever made it (servicers with a gatekeeper):
    under the error's ``asker`` (a forwarded query's verified signer) ``via`` the peer, if set."""
    gatekeeper = getattr(servicer, "gatekeeper", None)
    if gatekeeper is None:
        return
    try:
        who = peer_identity(context)
    except Exception:  # a certificate without a SiloBridge identity is still audited
        who = ANONYMOUS
    try:
        asker = getattr(error, "asker", None)
        via = {"via": who.spiffe_id} if isinstance(asker, PeerIdentity) else {}
        who = asker if isinstance(asker, PeerIdentity) else who
        rpc = method.rsplit(".", 1)[-1]
        gatekeeper.record(who, rpc, allowed=False, reason=reason, status=status.name, **via)
    except Exception:  # an audit failure must not turn a refusal into a crash; it is logged
        log.exception("could not audit the refusal of %s", method)


def unary_boundary(
    method: Callable[[Self, Req, Ctx], Awaitable[Resp]],
) -> Callable[[Self, Req, Ctx], Awaitable[Resp]]:
    """Wrap an async unary servicer method so every error leaves as a proper status."""

    @functools.wraps(method)
    async def wrapper(self: Self, request: Req, context: Ctx) -> Resp:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:  # the boundary: anything else becomes a status
            await _abort(self, context, error, method.__qualname__)
            raise AssertionError("context.abort returned") from error  # pragma: no cover

    return wrapper


def stream_boundary(
    method: Callable[[Self, Req, Ctx], AsyncIterator[Resp]],
) -> Callable[[Self, Req, Ctx], AsyncIterator[Resp]]:
    """Wrap an async-generator servicer method (server streaming) the same way."""

    @functools.wraps(method)
    async def wrapper(self: Self, request: Req, context: Ctx) -> AsyncIterator[Resp]:
        try:
            async for item in method(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as error:  # the boundary: anything else becomes a status
            await _abort(self, context, error, method.__qualname__)

    return wrapper
