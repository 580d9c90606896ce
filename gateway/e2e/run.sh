#!/usr/bin/env bash
# End-to-end test of the web shop: installs what it needs (Debian's chromium, playwright-core
# from npm into gateway/e2e/node_modules), starts the shop against the local stack
# (USER_DATABASE_URL, PAYMENT_DATABASE_URL, ITEM_MONGODB_URL, ITEM_REDIS_URL must be set:
# `eval "$(scripts/stack up)"`) with SHOP_FAULT_ADMIN=on (the lab's tests and a checkout
# failure go through /api/admin/faults), and drives it in headless Chromium.
#
#   gateway/e2e/run.sh             the distributed shop, as scripts/run starts it by default:
#                                  card processor, item-, payment-, user-service, gateway,
#                                  each its own process with its own key (shopctl keys init)
#   gateway/e2e/run.sh --monolith  the `shop` binary (and the card processor beside it)
#
# Screenshots: target/e2e-screenshots. Logs: target/e2e-logs/NAME.log.
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

SHAPE=distributed
case "${1:-}" in
  "") ;;
  --monolith) SHAPE=monolith ;;
  *) die "usage: gateway/e2e/run.sh [--monolith]" ;;
esac

log "building the shop ($SHAPE)"
(cd "$ROOT" && cargo build -q -p shop --bin shop -p user-service --bin user-service \
  -p item-service --bin item-service -p payment-service --bin payment-service \
  -p gateway --bin gateway -p card-gateway --bin card-gateway -p shopctl --bin shopctl)
BIN="$ROOT/target/debug"

RUN="$(date +%s)-$$"
ADMIN_EMAIL="e2e-admin-$RUN@shop.test"
SHOTS="$ROOT/target/e2e-screenshots"
LOGS="$ROOT/target/e2e-logs"
rm -rf "$SHOTS" "$LOGS"; mkdir -p "$SHOTS" "$LOGS"

PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

# Settings every process shares: the stack's stores (from the environment), one JWT secret,
# one catalog database, the fault admin APIs on (the lab tests and a checkout failure use
# them), every process on a free port it logs.
export USER_JWT_SECRET="${USER_JWT_SECRET:-e2e-secret-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
export ITEM_MONGODB_DATABASE="shop_item_e2e_$RUN" ITEM_SEED=true SHOP_FAULT_ADMIN=on
# Streams and subjects of this run's own on the stack's NATS (shared with other runs).
export SHOP_EVENTS_NAMESPACE="e2e_${RUN//-/_}"
export RUST_LOG="${RUST_LOG:-info}"

# Service identities and the card processor's keys, made for this run (shopctl, as
# scripts/run does).
KEYS="$ROOT/target/e2e-keys"
rm -rf "$KEYS"
"$BIN/shopctl" keys init "$KEYS" >/dev/null 2>&1 || die "shopctl keys init failed"
export SHOP_TRUSTED_KEYS_FILE="$KEYS/trusted-keys"

start() { # start NAME ENV... : runs NAME's binary, logging to $LOGS/NAME.log
  local name="$1"; shift
  env "$@" "$BIN/$name" >"$LOGS/$name.log" 2>&1 &
  PIDS+=($!)
}

addr_of() { # addr_of NAME FIELD: the address NAME's "listening" line gives FIELD (waits)
  local name="$1" field="$2" pid="${PIDS[-1]}" addr=""
  for _ in $(seq 1 600); do
    addr="$(sed 's/\x1b\[[0-9;]*m//g' "$LOGS/$name.log" |
      grep -o "listening.* $field=[0-9.:]*" | head -n1 | sed "s/.* $field=//" || true)"
    [ -n "$addr" ] && { echo "$addr"; return 0; }
    kill -0 "$pid" 2>/dev/null || { cat "$LOGS/$name.log" >&2; die "$name exited"; }
    sleep 0.1
  done
  cat "$LOGS/$name.log" >&2; die "$name did not start"
}

SK="CARD_GATEWAY_SECRET_KEY_FILE=$KEYS/card-secret-key"
PK="CARD_GATEWAY_PUBLISHABLE_KEY_FILE=$KEYS/card-publishable-key"
log "starting the card processor"
start card-gateway CARD_GATEWAY_ADDR=127.0.0.1:0 "$SK" "$PK"
CARD_URL="http://$(addr_of card-gateway addr)"

if [ "$SHAPE" = monolith ]; then
  log "starting the shop monolith"
  # Its gateway signs with the gateway's key, which the card processor trusts for the lab.
  start shop GATEWAY_HTTP_ADDR=127.0.0.1:0 GATEWAY_METRICS_ADDR=127.0.0.1:0 SHOP_GRPC_ADDR=off CARD_GATEWAY_URL="$CARD_URL" \
    "$SK" "$PK" SHOP_IDENTITY_KEY_FILE="$KEYS/gateway.pem"
  URL=""
  for _ in $(seq 1 600); do
    URL="$(grep -so 'shop listening on http://[0-9.:]*' "$LOGS/shop.log" | head -n1 | sed 's/shop listening on //' || true)"
    [ -n "$URL" ] && break
    kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "$LOGS/shop.log" >&2; die "the shop exited"; }
    sleep 0.1
  done
  [ -n "$URL" ] || { cat "$LOGS/shop.log" >&2; die "the shop did not start"; }
else
  log "starting item-, payment- and user-service and the gateway"
  key_of() { echo "SHOP_IDENTITY_KEY_FILE=$KEYS/$1.pem"; }
  start item-service ITEM_GRPC_ADDR=127.0.0.1:0 ITEM_METRICS_ADDR=127.0.0.1:0 "$(key_of item-service)"
  ITEM_URL="http://$(addr_of item-service grpc)"
  # payment-service asks user-service about compensations and user-service calls
  # payment-service: user-service's port is picked first.
  USER_ADDR="127.0.0.1:$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  start payment-service PAYMENT_GRPC_ADDR=127.0.0.1:0 PAYMENT_METRICS_ADDR=127.0.0.1:0 \
    ITEM_SERVICE_URL="$ITEM_URL" USER_SERVICE_URL="http://$USER_ADDR" CARD_GATEWAY_URL="$CARD_URL" \
    "$SK" "$(key_of payment-service)"
  PAYMENT_URL="http://$(addr_of payment-service grpc)"
  start user-service USER_GRPC_ADDR="$USER_ADDR" USER_METRICS_ADDR=127.0.0.1:0 \
    ITEM_SERVICE_URL="$ITEM_URL" PAYMENT_SERVICE_URL="$PAYMENT_URL" "$(key_of user-service)"
  USER_URL="http://$(addr_of user-service grpc)"
  start gateway GATEWAY_HTTP_ADDR=127.0.0.1:0 GATEWAY_METRICS_ADDR=127.0.0.1:0 USER_SERVICE_URL="$USER_URL" \
    ITEM_SERVICE_URL="$ITEM_URL" PAYMENT_SERVICE_URL="$PAYMENT_URL" CARD_GATEWAY_URL="$CARD_URL" \
    "$PK" "$(key_of gateway)"
  URL="http://$(addr_of gateway addr)"
fi
log "shop ($SHAPE) at $URL; logs in $LOGS"

# The admin: registered like anyone, then made an admin by the operator's command.
curl -fsS -o /dev/null -H 'content-type: application/json' \
  -d "{\"email\":\"$ADMIN_EMAIL\",\"password\":\"e2e password 123\",\"display_name\":\"Admin\"}" \
  "$URL/api/auth/register" || die "could not register $ADMIN_EMAIL"
"$BIN/user-service" admin grant "$ADMIN_EMAIL" >&2

cd "$HERE"
SHOP_URL="$URL" E2E_ADMIN_EMAIL="$ADMIN_EMAIL" SCREENSHOT_DIR="$SHOTS" \
  node --test --test-reporter=spec shop.test.mjs
log "screenshots in $SHOTS"
