#!/usr/bin/env bash
# Property-based API test: schemathesis (PyPI, installed into target/tools/venv) generates
# requests from the gateway's /openapi.json and checks that no response is a server error
# or breaks the documented schema.
#
#   gateway/schemathesis.sh [BASE_URL]
#
# With BASE_URL (e.g. http://127.0.0.1:8080) it tests that running gateway. Without, it
# starts the `shop` monolith against the local stack (USER_DATABASE_URL,
# PAYMENT_DATABASE_URL, ITEM_MONGODB_URL, ITEM_REDIS_URL set: `eval "$(scripts/stack up)"`)
# and stops it afterwards. SCHEMATHESIS_MAX_EXAMPLES (default 30) bounds the run.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="$ROOT/target/tools/venv"
VERSION="4.32.5"
# hypothesis pinned too: a fresh install otherwise takes whatever is newest that day.
HYPOTHESIS="6.170.29"
log() { printf '[schemathesis] %s\n' "$*" >&2; }
die() { printf '[schemathesis] error: %s\n' "$*" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  command -v python3 >/dev/null || die "python3 is required"
  python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv)"
fi
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$VERSION"; then
  log "installing schemathesis $VERSION into $VENV"
  "$VENV/bin/pip" install -q "schemathesis==$VERSION" "hypothesis==$HYPOTHESIS" >&2
fi

URL="${1:-}"
if [ -z "$URL" ]; then
  for v in USER_DATABASE_URL PAYMENT_DATABASE_URL ITEM_MONGODB_URL ITEM_REDIS_URL; do
    [ -n "${!v:-}" ] || die "$v is not set: start the stack first (eval \"\$(scripts/stack up)\") or pass a gateway URL"
  done
  log "building the shop monolith"
  (cd "$ROOT" && cargo build -q -p shop --bin shop)
  RUN="$(date +%s)-$$"
  LOG="$ROOT/target/schemathesis-shop.log"
  rm -f "$LOG"
  env USER_JWT_SECRET="${USER_JWT_SECRET:-st-secret-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')}" \
      ITEM_MONGODB_DATABASE="shop_item_st_$RUN" ITEM_SEED=true \
      GATEWAY_HTTP_ADDR=127.0.0.1:0 GATEWAY_METRICS_ADDR=127.0.0.1:0 SHOP_GRPC_ADDR=off SHOP_CARD_GATEWAY_ADDR=127.0.0.1:0 \
      RUST_LOG="${RUST_LOG:-warn}" \
      "$ROOT/target/debug/shop" >"$LOG" 2>&1 &
  SHOP_PID=$!
  trap 'kill "$SHOP_PID" 2>/dev/null || true; wait "$SHOP_PID" 2>/dev/null || true' EXIT
  for _ in $(seq 1 600); do
    URL="$(grep -so 'shop listening on http://[0-9.:]*' "$LOG" | head -n1 | sed 's/shop listening on //' || true)"
    [ -n "$URL" ] && break
    kill -0 "$SHOP_PID" 2>/dev/null || { cat "$LOG" >&2; die "the shop exited"; }
    sleep 0.1
  done
  [ -n "$URL" ] || { cat "$LOG" >&2; die "the shop did not start"; }
  log "shop at $URL"
fi

# A logged-in customer, so the authenticated operations are exercised past 401.
EMAIL="st-$(date +%s)-$$@shop.test"
PASSWORD="schemathesis pw 123"
curl -fsS -o /dev/null -H 'content-type: application/json' \
  -d "{\"email\":\"$EMAIL\",\"password\":\"$PASSWORD\",\"display_name\":\"Schemathesis\"}" \
  "$URL/api/auth/register" || die "could not register a test user at $URL"
TOKEN="$(curl -fsS -H 'content-type: application/json' \
  -d "{\"email\":\"$EMAIL\",\"password\":\"$PASSWORD\"}" "$URL/api/auth/login" |
  "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"

log "running schemathesis against $URL/openapi.json"
# One worker: with two, hypothesis parses lambda sources with ast.parse from two threads and
# CPython 3.11's AST recursion-depth counter is not thread-safe ("AST constructor recursion
# depth mismatch", a Runtime Error that failed a CI run with every API check green).
"$VENV/bin/schemathesis" run "$URL/openapi.json" \
  --checks not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance \
  --header "Authorization: Bearer $TOKEN" \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-30}" \
  --workers 1 \
  --request-timeout 10 \
  --generation-database none \
  --no-color \
  --report junit --report-dir "$ROOT/target/schemathesis-report"
