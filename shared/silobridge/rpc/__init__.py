"""The wire: protobuf conversion, gRPC transport and status mapping, typed clients, server kit."""
