-- The order row becomes the durable checkout record: created PENDING before the checkout's
-- first side effect, moved on by conditional updates, and finished by the checkout
-- recovery when the process driving it dies (docs/architecture.md, "crash-safe checkout").
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('pending', 'cancelling', 'cancelled', 'placed', 'refunded'));
-- Unknown until the charge succeeds.
ALTER TABLE orders ALTER COLUMN payment_id DROP NOT NULL;
-- A chained checkout's record is written before payment-service prices its lines.
ALTER TABLE orders ADD COLUMN priced BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE orders ALTER COLUMN total_minor DROP NOT NULL;
ALTER TABLE orders ALTER COLUMN currency DROP NOT NULL;
ALTER TABLE orders ADD CONSTRAINT orders_priced_total
    CHECK (NOT priced OR (total_minor IS NOT NULL AND currency IS NOT NULL));
ALTER TABLE orders ADD CONSTRAINT orders_placed_paid
    CHECK (status NOT IN ('placed', 'refunded') OR (priced AND payment_id IS NOT NULL));
-- Why a cancelling/cancelled checkout went backward (machine-readable).
ALTER TABLE orders ADD COLUMN failure TEXT;
ALTER TABLE orders ADD COLUMN strategy TEXT NOT NULL DEFAULT '';
ALTER TABLE orders ADD COLUMN trace_id TEXT NOT NULL DEFAULT '';
-- Who drives the checkout: the token's holder may move it on until the lease runs out;
-- after that the recovery may claim it (a new token), and the old holder's updates fail.
ALTER TABLE orders ADD COLUMN lease_token UUID;
ALTER TABLE orders ADD COLUMN lease_until TIMESTAMPTZ NOT NULL DEFAULT now();
-- The holder's lease length, renewed when it starts compensating.
ALTER TABLE orders ADD COLUMN lease_ms INTEGER NOT NULL DEFAULT 10000;
ALTER TABLE orders ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;
ALTER TABLE orders ADD COLUMN updated_at TIMESTAMPTZ NOT NULL DEFAULT now();

-- The recovery's scan: unfinished checkouts by lease expiry.
CREATE INDEX orders_unfinished ON orders (lease_until) WHERE status IN ('pending', 'cancelling');
