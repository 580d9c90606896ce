-- The asynchronous checkout (docs/architecture.md, "asynchronous checkout").
-- The transactional outbox: an event is inserted in the same transaction as the order
-- change it announces; the relay publishes it to NATS JetStream and then sets
-- published_at. Ids are derived from (order, kind), so writing an event twice is a no-op.
CREATE TABLE outbox (
    event_id      UUID PRIMARY KEY,
    kind          TEXT NOT NULL,
    key           TEXT NOT NULL,
    -- The whole envelope as published.
    envelope      JSONB NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A relay holds the row until then (several replicas relay different rows).
    claimed_until TIMESTAMPTZ,
    published_at  TIMESTAMPTZ
);
CREATE INDEX outbox_unpublished ON outbox (created_at) WHERE published_at IS NULL;
