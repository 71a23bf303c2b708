#!/usr/bin/env bash
# Regenerates the committed gRPC/protobuf stubs (with typed .pyi for sync and grpc.aio) from protos/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
# protoc finds the mypy plugins on PATH; they live beside the interpreter.
export PATH="$(dirname "$PY"):$PATH"
OUT="${1:-shared}"
mkdir -p "$OUT/silobridge/v1"
rm -f "$OUT"/silobridge/v1/*_pb2*.py "$OUT"/silobridge/v1/*_pb2*.pyi
"$PY" -m grpc_tools.protoc -Iprotos \
  --python_out="$OUT" --grpc_python_out="$OUT" \
  --mypy_out="$OUT" --mypy_grpc_out="$OUT" \
  protos/silobridge/v1/*.proto
