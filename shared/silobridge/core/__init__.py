"""Core types and helpers every component shares; imports neither grpc nor protobuf."""
