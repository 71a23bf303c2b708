#!/usr/bin/env bash
# Regenerates the stubs into a scratch folder and fails if they differ from the committed ones.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
bash scripts/gen_protos.sh "$tmp"
if ! diff -r -x '__pycache__' -x 'py.typed' "$tmp/silobridge/v1" shared/silobridge/v1; then
  echo "protos-check: generated stubs are stale; run 'make protos' and commit the result" >&2
  exit 1
fi
echo "protos-check: stubs up to date"
