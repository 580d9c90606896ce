//! MySQL/MariaDB access. Every state change is a conditional UPDATE on the row's current
//! state, so a late answer, a retry and the reconciler can race without double effects.

use std::time::Duration;

use platform::timing::StoreOp as _;
use sqlx::{MySql, MySqlPool, Transaction, mysql::MySqlDatabaseError};
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::{
    fingerprint::Fingerprint,
    payment::{PaymentRow, RefundRow, RefundStatus, Status},
};

/// The rows that carry a work lease (`locked_until`) while a gateway call is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leased {
    Payment,
    Refund,
}

impl Leased {
    fn table(self) -> &'static str {
        match self {
            Self::Payment => "payments",
            Self::Refund => "refunds",
        }
    }
}

const PAYMENT_COLUMNS: &str = "id, idempotency_key, user_id, order_id, amount_minor, currency, \
     amount_refunded_minor, status, decline_code, card_brand, card_last4, gateway_charge_id, \
     reservation_id, async_checkout, card_token, traceparent, locked_until, created_at, \
     updated_at";
const REFUND_COLUMNS: &str = "id, payment_id, amount_minor, currency, status, failure_code, \
     gateway_refund_id, locked_until, created_at, updated_at";

pub const SCOPE_CHARGE: &str = "charge";
pub const SCOPE_REFUND: &str = "refund";

/// UTC now, at the database's microsecond precision.
pub fn now() -> PrimitiveDateTime {
    let n = OffsetDateTime::now_utc();
    let n = n
        .replace_nanosecond(n.nanosecond() / 1000 * 1000)
        .unwrap_or(n);
    PrimitiveDateTime::new(n.date(), n.time())
}

pub fn later(t: PrimitiveDateTime, d: Duration) -> PrimitiveDateTime {
    t.saturating_add(time::Duration::try_from(d).unwrap_or(time::Duration::MAX))
}

pub fn earlier(t: PrimitiveDateTime, d: Duration) -> PrimitiveDateTime {
    t.saturating_sub(time::Duration::try_from(d).unwrap_or(time::Duration::MAX))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// Deadlock or lock wait timeout: the transaction was rolled back and may simply be retried.
fn is_retryable(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.try_downcast_ref::<MySqlDatabaseError>())
        .is_some_and(|m| matches!(m.number(), 1213 | 1205))
}

/// Who owns an idempotency key after trying to insert it.
#[derive(Debug)]
pub enum Claim<T> {
    /// This request inserted the key and the resource: it does the work.
    New(T),
    /// The key existed: its fingerprint and the resource it names.
    Existing {
        fingerprint: Vec<u8>,
        resource_id: String,
    },
}

/// Outcome of trying to start a charge.
#[derive(Debug)]
pub enum ChargeStart {
    Claimed(Claim<PaymentRow>),
    /// The key was new but the order already has a payment (made under another key, or under
    /// this one before it was purged): that payment. Nothing was written.
    OrderPaid(PaymentRow),
}

pub struct NewPayment<'a> {
    pub id: &'a str,
    pub key: &'a str,
    pub fingerprint: Fingerprint,
    pub user_id: &'a str,
    pub order_id: &'a str,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub card_brand: &'a str,
    pub card_last4: &'a str,
    pub reservation_id: Option<&'a str>,
    /// The asynchronous checkout's payment: its token and trace context.
    pub checkout: Option<AsyncCheckout<'a>>,
    pub now: PrimitiveDateTime,
    pub lease_until: PrimitiveDateTime,
}

/// What a payment of the asynchronous checkout keeps besides a card payment's fields.
#[derive(Debug, Clone, Copy)]
pub struct AsyncCheckout<'a> {
    pub card_token: &'a str,
    pub traceparent: Option<&'a str>,
}

pub struct NewRefund<'a> {
    pub id: &'a str,
    pub key: &'a str,
    pub fingerprint: Fingerprint,
    pub payment_id: &'a str,
    /// None: everything that is left.
    pub amount: Option<(i64, &'a str)>,
    pub now: PrimitiveDateTime,
    pub lease_until: PrimitiveDateTime,
}

/// Outcome of trying to start a refund.
#[derive(Debug)]
pub enum RefundStart {
    Claimed(Claim<RefundRow>),
    PaymentNotFound,
    NotRefundable(Status),
    CurrencyMismatch { payment_currency: String },
    TooLarge { left: i64, currency: String },
}

#[derive(Clone)]
pub struct Store {
    pool: MySqlPool,
}

impl Store {
    pub fn new(pool: MySqlPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Inserts `key` first; the primary key makes concurrent requests with one key queue
    /// behind the first insert and then see it as a duplicate.
    async fn insert_key(
        tx: &mut Transaction<'_, MySql>,
        scope: &str,
        key: &str,
        fingerprint: &Fingerprint,
        resource_id: &str,
        now: PrimitiveDateTime,
    ) -> Result<bool, sqlx::Error> {
        let res = sqlx::query(
            "INSERT INTO idempotency_keys (scope, idem_key, fingerprint, resource_id, created_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(scope)
        .bind(key)
        .bind(&fingerprint[..])
        .bind(resource_id)
        .bind(now)
        .execute(&mut **tx)
        .store_op("mysql", "insert_key")
        .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn existing_key<T>(&self, scope: &str, key: &str) -> Result<Claim<T>, sqlx::Error> {
        let (fingerprint, resource_id): (Vec<u8>, String) = sqlx::query_as(
            "SELECT fingerprint, resource_id FROM idempotency_keys WHERE scope = ? AND idem_key = ?",
        )
        .bind(scope)
        .bind(key)
        .fetch_one(&self.pool)
        .store_op("mysql", "existing_key")
        .await?;
        Ok(Claim::Existing {
            fingerprint,
            resource_id,
        })
    }

    /// Records a new PENDING payment under its idempotency key, or reports the key's owner.
    pub async fn begin_charge(&self, p: &NewPayment<'_>) -> Result<ChargeStart, sqlx::Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_begin_charge(p).await {
                Err(e) if attempt < 4 && is_retryable(&e) => continue,
                other => return other,
            }
        }
    }

    async fn try_begin_charge(&self, p: &NewPayment<'_>) -> Result<ChargeStart, sqlx::Error> {
        let mut tx = platform::sql::begin(&self.pool)
            .store_op("mysql", "begin")
            .await?;
        if !Self::insert_key(&mut tx, SCOPE_CHARGE, p.key, &p.fingerprint, p.id, p.now).await? {
            tx.rollback().await?;
            return Ok(ChargeStart::Claimed(
                self.existing_key(SCOPE_CHARGE, p.key).await?,
            ));
        }
        let inserted = sqlx::query(
            "INSERT INTO payments (id, idempotency_key, user_id, order_id, amount_minor, currency, \
             amount_refunded_minor, status, decline_code, card_brand, card_last4, \
             gateway_charge_id, reservation_id, async_checkout, card_token, traceparent, \
             locked_until, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, 0, 'PENDING', '', ?, ?, '', ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(p.id)
        .bind(p.key)
        .bind(p.user_id)
        .bind(p.order_id)
        .bind(p.amount_minor)
        .bind(p.currency)
        .bind(p.card_brand)
        .bind(p.card_last4)
        .bind(p.reservation_id)
        .bind(p.checkout.is_some())
        .bind(p.checkout.map(|c| c.card_token))
        .bind(p.checkout.and_then(|c| c.traceparent))
        .bind(p.lease_until)
        .bind(p.now)
        .bind(p.now)
        .execute(&mut *tx)
        .store_op("mysql", "try_begin_charge")
        .await;
        match inserted {
            Ok(_) => {}
            // The id is a fresh UUIDv7, so the duplicate is the order (payments_order_unique).
            // A concurrent insert for the order waited on the index until its owner committed.
            // Rolling back drops this request's key too: the key names no payment of its own.
            Err(e) if is_unique_violation(&e) => {
                tx.rollback().await?;
                return match self.payment_by_order(p.order_id).await? {
                    Some(row) => Ok(ChargeStart::OrderPaid(row)),
                    None => Err(e),
                };
            }
            Err(e) => return Err(e),
        }
        let row = fetch_payment(&mut *tx, p.id).await?;
        tx.commit().store_op("mysql", "commit").await?;
        match row {
            Some(r) => Ok(ChargeStart::Claimed(Claim::New(r))),
            None => Err(sqlx::Error::RowNotFound),
        }
    }

    /// Whether a charge was ever made under `key` (within the retention time).
    pub async fn key_exists(&self, key: &str) -> Result<bool, sqlx::Error> {
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM idempotency_keys WHERE scope = ? AND idem_key = ?")
                .bind(SCOPE_CHARGE)
                .bind(key)
                .fetch_optional(&self.pool)
                .store_op("mysql", "key_exists")
                .await?;
        Ok(found.is_some())
    }

    pub async fn payment(&self, id: &str) -> Result<Option<PaymentRow>, sqlx::Error> {
        fetch_payment(&self.pool, id).await
    }

    /// The order's payment (at most one: payments_order_unique).
    pub async fn payment_by_order(
        &self,
        order_id: &str,
    ) -> Result<Option<PaymentRow>, sqlx::Error> {
        let sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = ?");
        sqlx::query_as(&sql)
            .bind(order_id)
            .fetch_optional(&self.pool)
            .store_op("mysql", "payment_by_order")
            .await
    }

    /// Takes the lease on a PENDING payment or refund nobody is working on.
    pub async fn claim(
        &self,
        what: Leased,
        id: &str,
        now: PrimitiveDateTime,
        until: PrimitiveDateTime,
    ) -> Result<bool, sqlx::Error> {
        // The table name comes from a closed enum, never from input; values are bound.
        let sql = format!(
            "UPDATE {} SET locked_until = ? WHERE id = ? AND status = 'PENDING' \
             AND (locked_until IS NULL OR locked_until < ?)",
            what.table()
        );
        let res = sqlx::query(&sql)
            .bind(until)
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .store_op("mysql", "claim")
            .await?;
        Ok(res.rows_affected() == 1)
    }

    /// PENDING payments or refunds untouched since `before` and not leased: reconcile's work.
    pub async fn stale_pending(
        &self,
        what: Leased,
        before: PrimitiveDateTime,
        now: PrimitiveDateTime,
        limit: u32,
    ) -> Result<Vec<String>, sqlx::Error> {
        let sql = format!(
            "SELECT id FROM {} WHERE status = 'PENDING' AND updated_at < ? \
             AND (locked_until IS NULL OR locked_until < ?) ORDER BY updated_at LIMIT ?",
            what.table()
        );
        sqlx::query_scalar(&sql)
            .bind(before)
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .store_op("mysql", "stale_pending")
            .await
    }

    /// Leaves a payment or refund PENDING but free for a retry or the reconciler.
    pub async fn release(
        &self,
        what: Leased,
        id: &str,
        now: PrimitiveDateTime,
    ) -> Result<(), sqlx::Error> {
        let sql = format!(
            "UPDATE {} SET locked_until = NULL, updated_at = ? WHERE id = ? AND status = 'PENDING'",
            what.table()
        );
        sqlx::query(&sql)
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .store_op("mysql", "release")
            .await?;
        Ok(())
    }

    /// PENDING -> final status, and for a payment of the asynchronous checkout its event
    /// into the outbox, in one transaction (neither exists without the other). None if it
    /// was no longer PENDING (someone settled it first); else the settled row.
    pub async fn settle_payment(
        &self,
        id: &str,
        status: Status,
        decline_code: &str,
        gateway_charge_id: &str,
        // (brand, last four) from the processor: fills them in for a payment by token,
        // which did not know them.
        card: Option<(&str, &str)>,
        now: PrimitiveDateTime,
    ) -> Result<Option<PaymentRow>, sqlx::Error> {
        let mut tx = platform::sql::begin(&self.pool)
            .store_op("mysql", "begin")
            .await?;
        let res = sqlx::query(
            "UPDATE payments SET status = ?, decline_code = ?, gateway_charge_id = ?, \
             card_brand = IF(card_token IS NOT NULL AND ? IS NOT NULL, ?, card_brand), \
             card_last4 = IF(card_token IS NOT NULL AND ? IS NOT NULL, ?, card_last4), \
             locked_until = NULL, updated_at = ? WHERE id = ? AND status = 'PENDING'",
        )
        .bind(status.as_str())
        .bind(decline_code)
        .bind(gateway_charge_id)
        .bind(card.map(|c| c.0))
        .bind(card.map(|c| c.0))
        .bind(card.map(|c| c.1))
        .bind(card.map(|c| c.1))
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .store_op("mysql", "settle_payment")
        .await?;
        if res.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(None);
        }
        let row = fetch_payment(&mut *tx, id)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        if row.async_checkout
            && let Some(event) = crate::checkout::event_of(&row)
        {
            crate::outbox::write(&mut tx, &event).await?;
        }
        tx.commit().store_op("mysql", "commit").await?;
        Ok(Some(row))
    }

    /// A user's payments, newest first (UUIDv7 ids sort by creation time), after `after`.
    pub async fn list_payments(
        &self,
        user_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<PaymentRow>, sqlx::Error> {
        let sql = format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE user_id = ? AND (? IS NULL OR id < ?) \
             ORDER BY id DESC LIMIT ?"
        );
        sqlx::query_as(&sql)
            .bind(user_id)
            .bind(after)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .store_op("mysql", "list_payments")
            .await
    }

    /// Records a refund: key first, then the atomic conditional UPDATE that takes the amount
    /// off what is left to refund, then the PENDING refund row; all or nothing.
    pub async fn begin_refund(&self, r: &NewRefund<'_>) -> Result<RefundStart, sqlx::Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_begin_refund(r).await {
                Err(e) if attempt < 4 && is_retryable(&e) => continue,
                other => return other,
            }
        }
    }

    async fn try_begin_refund(&self, r: &NewRefund<'_>) -> Result<RefundStart, sqlx::Error> {
        let mut tx = platform::sql::begin(&self.pool)
            .store_op("mysql", "begin")
            .await?;
        if !Self::insert_key(&mut tx, SCOPE_REFUND, r.key, &r.fingerprint, r.id, r.now).await? {
            tx.rollback().await?;
            return Ok(RefundStart::Claimed(
                self.existing_key(SCOPE_REFUND, r.key).await?,
            ));
        }
        // Validation failures roll the key back too: like Stripe, a request that never
        // started leaves nothing to replay.
        let Some(payment) = fetch_payment(&mut *tx, r.payment_id).await? else {
            tx.rollback().await?;
            return Ok(RefundStart::PaymentNotFound);
        };
        if payment.status() != Status::Succeeded {
            tx.rollback().await?;
            return Ok(RefundStart::NotRefundable(payment.status()));
        }
        let left = payment.amount_minor - payment.amount_refunded_minor;
        let amount = match r.amount {
            Some((_, currency)) if currency != payment.currency => {
                tx.rollback().await?;
                return Ok(RefundStart::CurrencyMismatch {
                    payment_currency: payment.currency,
                });
            }
            Some((a, _)) => a,
            None => left,
        };
        // MySQL assigns left to right: `status` is computed from the old refunded amount.
        let res = sqlx::query(
            "UPDATE payments SET \
               status = IF(amount_refunded_minor + ? = amount_minor, 'REFUNDED', status), \
               amount_refunded_minor = amount_refunded_minor + ?, updated_at = ? \
             WHERE id = ? AND status = 'SUCCEEDED' AND ? > 0 \
               AND amount_minor - amount_refunded_minor >= ?",
        )
        .bind(amount)
        .bind(amount)
        .bind(r.now)
        .bind(r.payment_id)
        .bind(amount)
        .bind(amount)
        .execute(&mut *tx)
        .store_op("mysql", "try_begin_refund")
        .await?;
        if res.rows_affected() != 1 {
            tx.rollback().await?;
            let left = self
                .payment(r.payment_id)
                .await?
                .map_or(0, |p| p.amount_minor - p.amount_refunded_minor);
            return Ok(RefundStart::TooLarge {
                left,
                currency: payment.currency,
            });
        }
        sqlx::query(
            "INSERT INTO refunds (id, payment_id, amount_minor, currency, status, failure_code, \
             gateway_refund_id, locked_until, created_at, updated_at) \
             VALUES (?, ?, ?, ?, 'PENDING', '', '', ?, ?, ?)",
        )
        .bind(r.id)
        .bind(r.payment_id)
        .bind(amount)
        .bind(&payment.currency)
        .bind(r.lease_until)
        .bind(r.now)
        .bind(r.now)
        .execute(&mut *tx)
        .store_op("mysql", "try_begin_refund")
        .await?;
        let row = fetch_refund(&mut *tx, r.id).await?;
        tx.commit().store_op("mysql", "commit").await?;
        match row {
            Some(row) => Ok(RefundStart::Claimed(Claim::New(row))),
            None => Err(sqlx::Error::RowNotFound),
        }
    }

    pub async fn refund(&self, id: &str) -> Result<Option<RefundRow>, sqlx::Error> {
        fetch_refund(&self.pool, id).await
    }

    pub async fn refund_succeeded(
        &self,
        id: &str,
        gateway_refund_id: &str,
        now: PrimitiveDateTime,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE refunds SET status = ?, gateway_refund_id = ?, locked_until = NULL, \
             updated_at = ? WHERE id = ? AND status = 'PENDING'",
        )
        .bind(RefundStatus::Succeeded.as_str())
        .bind(gateway_refund_id)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .store_op("mysql", "refund_succeeded")
        .await?;
        Ok(())
    }

    /// The gateway refused the refund: mark it FAILED and give the amount back to the
    /// payment, once (only the PENDING -> FAILED transition gives it back).
    pub async fn refund_failed(
        &self,
        refund: &RefundRow,
        code: &str,
        now: PrimitiveDateTime,
    ) -> Result<(), sqlx::Error> {
        let mut tx = platform::sql::begin(&self.pool)
            .store_op("mysql", "begin")
            .await?;
        let res = sqlx::query(
            "UPDATE refunds SET status = ?, failure_code = ?, locked_until = NULL, updated_at = ? \
             WHERE id = ? AND status = 'PENDING'",
        )
        .bind(RefundStatus::Failed.as_str())
        .bind(code)
        .bind(now)
        .bind(&refund.id)
        .execute(&mut *tx)
        .store_op("mysql", "refund_failed")
        .await?;
        if res.rows_affected() == 1 {
            sqlx::query(
                "UPDATE payments SET status = IF(status = 'REFUNDED', 'SUCCEEDED', status), \
                 amount_refunded_minor = amount_refunded_minor - ?, updated_at = ? WHERE id = ?",
            )
            .bind(refund.amount_minor)
            .bind(now)
            .bind(&refund.payment_id)
            .execute(&mut *tx)
            .store_op("mysql", "refund_failed")
            .await?;
        }
        tx.commit().store_op("mysql", "commit").await
    }

    /// Forgets idempotency keys created before `before`.
    pub async fn purge_keys(&self, before: PrimitiveDateTime) -> Result<u64, sqlx::Error> {
        let res = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ? LIMIT 10000")
            .bind(before)
            .execute(&self.pool)
            .store_op("mysql", "purge_keys")
            .await?;
        Ok(res.rows_affected())
    }
}

async fn fetch_payment<'e, E>(exec: E, id: &str) -> Result<Option<PaymentRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = MySql>,
{
    let sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = ?");
    sqlx::query_as(&sql)
        .bind(id)
        .fetch_optional(exec)
        .store_op("mysql", "fetch_payment")
        .await
}

async fn fetch_refund<'e, E>(exec: E, id: &str) -> Result<Option<RefundRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = MySql>,
{
    let sql = format!("SELECT {REFUND_COLUMNS} FROM refunds WHERE id = ?");
    sqlx::query_as(&sql)
        .bind(id)
        .fetch_optional(exec)
        .store_op("mysql", "fetch_refund")
        .await
}
