-- One payment per order, whatever idempotency key it came with: a replay of a checkout after
-- its key was purged (or a second key for the same order) finds the order's payment here
-- instead of charging again. Two concurrent inserts for one order race on this index; the
-- loser gets a duplicate-key error and reads the winner's row.
ALTER TABLE payments ADD CONSTRAINT payments_order_unique UNIQUE (order_id);
