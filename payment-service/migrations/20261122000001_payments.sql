-- Payments, refunds and idempotency keys. Text columns the service reads use non-binary
-- collations (sqlx decodes *_bin columns as bytes). Card data is limited to brand and last four
-- digits: the full number and the CVC never reach this database.

CREATE TABLE payments (
    id CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY,
    -- The client's key (also in idempotency_keys, which may be purged after the retention time).
    idempotency_key VARCHAR(255) CHARACTER SET ascii NOT NULL,
    user_id CHAR(36) CHARACTER SET ascii NOT NULL,
    order_id CHAR(36) CHARACTER SET ascii NOT NULL,
    amount_minor BIGINT NOT NULL,
    currency CHAR(3) CHARACTER SET ascii NOT NULL,
    -- Includes refunds still waiting for the gateway, so concurrent refunds cannot exceed the amount.
    amount_refunded_minor BIGINT NOT NULL DEFAULT 0,
    status VARCHAR(16) CHARACTER SET ascii NOT NULL,
    decline_code VARCHAR(64) NOT NULL DEFAULT '',
    card_brand VARCHAR(16) CHARACTER SET ascii NOT NULL,
    card_last4 CHAR(4) CHARACTER SET ascii NOT NULL,
    gateway_charge_id VARCHAR(64) NOT NULL DEFAULT '',
    -- Set by ChainedCharge: the item-service reservation to commit or release once settled.
    reservation_id VARCHAR(255) CHARACTER SET ascii NULL,
    -- While set and in the future, one request is talking to the gateway about this payment.
    locked_until DATETIME(6) NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    KEY payments_user_newest (user_id, id),
    KEY payments_status_updated (status, updated_at),
    KEY payments_idempotency_key (idempotency_key),
    CONSTRAINT payments_amount_positive CHECK (amount_minor > 0),
    CONSTRAINT payments_refunded_range CHECK (amount_refunded_minor BETWEEN 0 AND amount_minor)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE refunds (
    id CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY,
    payment_id CHAR(36) CHARACTER SET ascii NOT NULL,
    amount_minor BIGINT NOT NULL,
    currency CHAR(3) CHARACTER SET ascii NOT NULL,
    -- PENDING (gateway not yet answered), SUCCEEDED, FAILED (gateway refused; amount given back).
    status VARCHAR(16) CHARACTER SET ascii NOT NULL,
    failure_code VARCHAR(64) NOT NULL DEFAULT '',
    gateway_refund_id VARCHAR(64) NOT NULL DEFAULT '',
    locked_until DATETIME(6) NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    KEY refunds_payment (payment_id),
    KEY refunds_status_updated (status, updated_at),
    CONSTRAINT refunds_payment_fk FOREIGN KEY (payment_id) REFERENCES payments (id),
    CONSTRAINT refunds_amount_positive CHECK (amount_minor > 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Inserted first, in the same transaction as the payment or refund it names: the primary
-- key decides which of several concurrent requests with one key does the work.
CREATE TABLE idempotency_keys (
    scope VARCHAR(16) CHARACTER SET ascii NOT NULL,
    -- Binary collation: keys are case-sensitive. (Never read back: sqlx would see VARBINARY.)
    idem_key VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    -- SHA-256 of the request's parameters (card reduced to brand, last four and expiry).
    fingerprint BINARY(32) NOT NULL,
    resource_id CHAR(36) CHARACTER SET ascii NOT NULL,
    created_at DATETIME(6) NOT NULL,
    PRIMARY KEY (scope, idem_key),
    KEY idempotency_keys_created (created_at)
) ENGINE = InnoDB;
