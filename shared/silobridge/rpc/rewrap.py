"""A server interceptor's one step: a method handler with its behaviour wrapped, kind kept.

grpc.aio builds a handler per call kind (unary or streaming requests and responses); an
interceptor that wraps the behaviour must rebuild the same kind with the same (de)serializers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Behaviour = Callable[..., Any]


def rewrapped(
    handler: grpc.RpcMethodHandler[Any, Any], wrap: Callable[[Behaviour, bool], Behaviour]
) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with its behaviour replaced by ``wrap(behaviour, responses_stream)``."""
    # Keyed by whether requests and responses stream.
    factories = {
        (False, False): (grpc.unary_unary_rpc_method_handler, handler.unary_unary),
        (False, True): (grpc.unary_stream_rpc_method_handler, handler.unary_stream),
        (True, False): (grpc.stream_unary_rpc_method_handler, handler.stream_unary),
        (True, True): (grpc.stream_stream_rpc_method_handler, handler.stream_stream),
    }
    make, behaviour = factories[(handler.request_streaming, handler.response_streaming)]
    if behaviour is None:
        return handler
    made: grpc.RpcMethodHandler[Any, Any] = make(
        wrap(behaviour, handler.response_streaming),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    return made
