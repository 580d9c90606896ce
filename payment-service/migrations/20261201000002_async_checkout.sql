-- The asynchronous checkout (platform::events): payments made for a `stock.reserved` event,
-- and the transactional outbox their `payment.succeeded` / `payment.declined` events go
-- through.

-- Set for a payment of the asynchronous checkout: whoever settles it (the consumer or the
-- reconciler) writes its event in the same transaction. The token (never a card number)
-- lets the reconciler charge again, under the same gateway idempotency key, a payment whose
-- charge never reached the card processor. The trace context continues the checkout's trace.
ALTER TABLE payments
    ADD COLUMN async_checkout BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN card_token VARCHAR(255) CHARACTER SET ascii NULL,
    ADD COLUMN traceparent VARCHAR(128) CHARACTER SET ascii NULL;

-- Events stored with the state change they announce; the relay publishes them to NATS
-- JetStream and then sets published_at. Ids are derived from (order, kind), so writing an
-- event again (a redelivered trigger, the reconciler) changes nothing.
CREATE TABLE outbox (
    id CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY,
    kind VARCHAR(64) CHARACTER SET ascii NOT NULL,
    -- The envelope's key (the order id). `key` is a reserved word in MySQL.
    event_key VARCHAR(255) NOT NULL,
    -- The whole envelope as published (JSON).
    body MEDIUMTEXT NOT NULL,
    created_at DATETIME(6) NOT NULL,
    published_at DATETIME(6) NULL,
    -- A relay holds the row until then (several replicas relay different rows).
    claimed_until DATETIME(6) NULL,
    KEY outbox_unpublished (published_at, created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
