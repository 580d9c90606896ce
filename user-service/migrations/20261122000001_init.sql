-- Accounts. The email's uniqueness is the database's job: Register relies on this
-- constraint, not on a prior read, so concurrent registrations cannot both win.
CREATE TABLE users (
    user_id       UUID PRIMARY KEY,
    email         TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL DEFAULT 'customer' CHECK (role IN ('customer', 'admin')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT users_email_key UNIQUE (email)
);

-- Order history written by checkout. Lines are kept as they were priced at checkout
-- time (JSON), because item prices change later.
CREATE TABLE orders (
    order_id       UUID PRIMARY KEY,
    user_id        UUID NOT NULL REFERENCES users (user_id),
    lines          JSONB NOT NULL,
    total_minor    BIGINT NOT NULL CHECK (total_minor >= 0),
    currency       TEXT NOT NULL,
    payment_id     TEXT NOT NULL,
    reservation_id TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('placed', 'refunded')),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- ListOrders walks this index newest first (keyset pagination on created_at, order_id).
CREATE INDEX orders_user_newest ON orders (user_id, created_at DESC, order_id DESC);
