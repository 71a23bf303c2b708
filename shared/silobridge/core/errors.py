"""The error catalog: every domain error SiloBridge raises, each with a code mapped to a status.

Domain code raises these; the gRPC boundary (``grpc_errors``) translates the code into a status
and a public message. Anything that is not a ``SiloBridgeError`` becomes ``INTERNAL`` with a
generic message there, so no traceback ever reaches a peer.

Hierarchy::

    SiloBridgeError                 (code: ErrorCode)
    ├── InvalidArgument             bad input from a caller: dimension, finite, norm, k, format
    ├── ResourceExhausted           request too large, rate exceeded
    ├── PermissionDenied            authenticated but not allowed
    ├── NotFound                    a named thing does not exist
    ├── FailedPrecondition          state does not allow it (index not built, model mismatch)
    ├── Unavailable                 a peer could not be reached (down, handshake refused)
    ├── DeadlineExceeded            a peer did not answer in time
    └── ConfigError                 a configuration or local file is wrong (CLI-facing)

Clients (``silobridge.rpc``) map a peer's gRPC status back to these, so every caller, the CLI
included, handles one kind of error.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """Stable codes; ``grpc_errors`` maps each to a gRPC status code."""

    INVALID_ARGUMENT = "invalid_argument"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    PERMISSION_DENIED = "permission_denied"
    NOT_FOUND = "not_found"
    FAILED_PRECONDITION = "failed_precondition"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CONFIG = "config"
    INTERNAL = "internal"


class SiloBridgeError(Exception):
    """Base of every domain error. ``str(err)`` is safe to show to the peer that caused it."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # When the error came back over the wire: the peer's status name and its own words
        # (both "" when raised here). ``message`` adds which peer answered.
        self.status_name = ""
        self.peer_details = ""
        # Whom a refusal is on behalf of when that is not the calling peer: the verified signer
        # of a forwarded query (a ``PeerIdentity``; typed loosely, core imports no security).
        # The gRPC boundary audits the refusal under it, with the peer as ``via``.
        self.asker: object | None = None


class InvalidArgument(SiloBridgeError):
    code = ErrorCode.INVALID_ARGUMENT


class ResourceExhausted(SiloBridgeError):
    code = ErrorCode.RESOURCE_EXHAUSTED


class PermissionDenied(SiloBridgeError):
    code = ErrorCode.PERMISSION_DENIED


class NotFound(SiloBridgeError):
    code = ErrorCode.NOT_FOUND


class FailedPrecondition(SiloBridgeError):
    code = ErrorCode.FAILED_PRECONDITION


class Unavailable(SiloBridgeError):
    code = ErrorCode.UNAVAILABLE


class DeadlineExceeded(SiloBridgeError):
    code = ErrorCode.DEADLINE_EXCEEDED


class ConfigError(SiloBridgeError):
    code = ErrorCode.CONFIG
