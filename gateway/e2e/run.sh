#!/usr/bin/env bash
# End-to-end test of the web shop: installs what it needs (Debian's chromium, playwright-core
# from npm into gateway/e2e/node_modules), starts the `shop` monolith against the local
# stack (USER_DATABASE_URL, PAYMENT_DATABASE_URL, ITEM_MONGODB_URL, ITEM_REDIS_URL must be
# set: `eval "$(scripts/stack up)"`) with SHOP_FAULT_ADMIN=on (a test injects a checkout
# failure through /api/admin/faults), and drives the shop in headless Chromium.
# Screenshots: target/e2e-screenshots. Shop log: target/e2e-shop.log.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
log() { printf '[e2e] %s\n' "$*" >&2; }
die() { printf '[e2e] error: %s\n' "$*" >&2; exit 1; }

for v in USER_DATABASE_URL PAYMENT_DATABASE_URL ITEM_MONGODB_URL ITEM_REDIS_URL; do
  [ -n "${!v:-}" ] || die "$v is not set: start the stack first (eval \"\$(scripts/stack up)\")"
done

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if [ ! -x /usr/bin/chromium ]; then
  log "installing chromium (Debian)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
fi
command -v npm >/dev/null || {
  log "installing nodejs and npm (Debian)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >&2
}
if [ ! -d "$HERE/node_modules/playwright-core" ]; then
  log "installing playwright-core (npm)"
  # No browser download: we drive Debian's chromium.
  (cd "$HERE" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund >&2)
fi

log "building the shop monolith and user-service (its admin command)"
(cd "$ROOT" && cargo build -q -p shop --bin shop -p user-service --bin user-service)
SHOP_BIN="$ROOT/target/debug/shop"

RUN="$(date +%s)-$$"
ADMIN_EMAIL="e2e-admin-$RUN@shop.test"
SHOTS="$ROOT/target/e2e-screenshots"
LOG="$ROOT/target/e2e-shop.log"
rm -rf "$SHOTS"; mkdir -p "$SHOTS"; rm -f "$LOG"

log "starting the shop"
env USER_JWT_SECRET="${USER_JWT_SECRET:-e2e-secret-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')}" \
    ITEM_MONGODB_DATABASE="shop_item_e2e_$RUN" ITEM_SEED=true \
    GATEWAY_HTTP_ADDR=127.0.0.1:0 GATEWAY_METRICS_ADDR=127.0.0.1:0 SHOP_GRPC_ADDR=off SHOP_CARD_GATEWAY_ADDR=127.0.0.1:0 \
    SHOP_FAULT_ADMIN=on RUST_LOG="${RUST_LOG:-info}" \
    "$SHOP_BIN" >"$LOG" 2>&1 &
SHOP_PID=$!
trap 'kill "$SHOP_PID" 2>/dev/null || true; wait "$SHOP_PID" 2>/dev/null || true' EXIT

URL=""
for _ in $(seq 1 600); do
  URL="$(grep -so 'shop listening on http://[0-9.:]*' "$LOG" | head -n1 | sed 's/shop listening on //' || true)"
  [ -n "$URL" ] && break
  kill -0 "$SHOP_PID" 2>/dev/null || { cat "$LOG" >&2; die "the shop exited"; }
  sleep 0.1
done
[ -n "$URL" ] || { cat "$LOG" >&2; die "the shop did not start"; }
log "shop at $URL"

# The admin: registered like anyone, then made an admin by the operator's command.
curl -fsS -o /dev/null -H 'content-type: application/json' \
  -d "{\"email\":\"$ADMIN_EMAIL\",\"password\":\"e2e password 123\",\"display_name\":\"Admin\"}" \
  "$URL/api/auth/register" || die "could not register $ADMIN_EMAIL"
"$ROOT/target/debug/user-service" admin grant "$ADMIN_EMAIL" >&2

cd "$HERE"
SHOP_URL="$URL" E2E_ADMIN_EMAIL="$ADMIN_EMAIL" SCREENSHOT_DIR="$SHOTS" \
  node --test --test-reporter=spec shop.test.mjs
log "screenshots in $SHOTS"
