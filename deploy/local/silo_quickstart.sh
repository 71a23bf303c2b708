#!/usr/bin/env bash
# `make silo-demo`: one silo end to end — PKI, ingest, serve over mTLS, query.
# Re-running reuses the CA, certificates and index already built under $DEMO_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."

SB=".venv/bin/silobridge"
DEMO_DIR="${SILOBRIDGE_DEMO_DIR:-demo-run/silo-quickstart}"
CORPUS="${SILOBRIDGE_DEMO_CORPUS:-data/demo/kjv.jsonl.gz}"
# Demo only: a real consortium keeps this passphrase out of the environment and types it.
export SILOBRIDGE_CA_PASSPHRASE="${SILOBRIDGE_CA_PASSPHRASE:-demo-only-passphrase}"
mkdir -p "$DEMO_DIR/logs"
ABS="$(cd "$DEMO_DIR" && pwd)"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "1. consortium CA and certificates ($DEMO_DIR/ca, $DEMO_DIR/certs)"
[ -f "$DEMO_DIR/ca/ca.crt" ] || "$SB" pki init --dir "$DEMO_DIR/ca" --consortium demo
[ -f "$DEMO_DIR/certs/kjv/kjv.crt" ] || "$SB" pki issue --ca-dir "$DEMO_DIR/ca" \
  --out "$DEMO_DIR/certs/kjv" --role silo --name kjv --org bible --dns localhost --ip 127.0.0.1
[ -f "$DEMO_DIR/certs/alice/alice.crt" ] || "$SB" pki issue --ca-dir "$DEMO_DIR/ca" \
  --out "$DEMO_DIR/certs/alice" --role client --name alice --org bible
echo "CA and certificates ready"

say "2. silo config ($DEMO_DIR/kjv/silo.toml)"
mkdir -p "$DEMO_DIR/kjv"
cat > "$DEMO_DIR/kjv/silo.toml" <<TOML
# The KJV silo of organization "bible". Paths are relative to this file.
[silo]
name = "kjv"
data_dir = "data"
model = "minilm-l3-onnx"

[server]
listen = "127.0.0.1:0"   # 0: any free port; the log says which
workers = 2

[tls]
cert = "$ABS/certs/kjv/kjv.crt"
key = "$ABS/certs/kjv/kjv.key"
ca = "$ABS/certs/kjv/ca.crt"

[access]
describe = ["org:bible"]
embed = ["org:bible/client"]          # only our own organization's clients may send text
search = ["org:bible/client"]
query = ["org:bible"]                 # on whose behalf queries are answered (none if absent)
disclose_fields = ["book"]            # hits reveal the book, nothing else
TOML
cat "$DEMO_DIR/kjv/silo.toml"

say "3. ingest $CORPUS with minilm-l3-onnx (idempotent: a re-run embeds nothing new)"
"$SB" silo ingest --config "$DEMO_DIR/kjv/silo.toml" "$CORPUS"

say "4. serve over mutual TLS"
LOG="$DEMO_DIR/logs/kjv-silo.log"
"$SB" silo serve --config "$DEMO_DIR/kjv/silo.toml" >"$LOG" 2>&1 &
SERVER_PID=$!
cleanup() {
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT INT TERM
ENDPOINT=""
for _ in $(seq 1 600); do
  ENDPOINT="$(grep -oE 'listening on [0-9.]+:[0-9]+' "$LOG" | head -1 | awk '{print $3}')" || true
  [ -n "$ENDPOINT" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$LOG"; echo "silo failed to start" >&2; exit 1; }
  sleep 0.2
done
[ -n "$ENDPOINT" ] || { echo "silo did not start in time; see $LOG" >&2; exit 1; }
echo "silo kjv listening on $ENDPOINT (log: $LOG)"

say "5. query it as alice (client of org bible): text is embedded by her own org's silo"
CERTS="$DEMO_DIR/certs/alice"
for QUESTION in \
  "God so loved the world that he gave his only born Son" \
  "Yahweh is my shepherd; I shall lack nothing." \
  "Don't be anxious about tomorrow"; do
  "$SB" silo query --endpoint "$ENDPOINT" --cert "$CERTS/alice.crt" --key "$CERTS/alice.key" \
    --ca "$CERTS/ca.crt" --k 3 "$QUESTION"
done

say "6. the same search locally, with texts (debugging view of the silo's own data)"
"$SB" silo search --config "$DEMO_DIR/kjv/silo.toml" -k 3 "Yahweh is my shepherd; I shall lack nothing."

cleanup
trap - EXIT INT TERM
say "done"
echo "data: $DEMO_DIR/kjv/data   certificates: $DEMO_DIR/certs   logs: $DEMO_DIR/logs"
