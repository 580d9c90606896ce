//! The durable checkout record: the order row, created PENDING before a checkout's first
//! side effect and moved on only by whoever holds its lease (the request driving it, or the
//! checkout recovery after that request's lease ran out). Every transition is one
//! conditional UPDATE on (order_id, lease_token, expected states), so two drivers can never
//! both move one checkout, and a driver that lost its lease learns it before acting.

use std::time::Duration;

use platform::{
    FieldError,
    checkout_failure::{self, CheckoutFailure},
    money::Money,
};
use shop_proto::user::v1 as pb;
use sqlx::types::Json;
use uuid::Uuid;

use crate::{
    domain::UserId,
    orders::{self, StoredLine},
    store::{ORDER_COLUMNS, OrderRow, Store, StoreError},
};

/// Bounds of the lease a caller may ask for.
pub const MIN_LEASE: Duration = platform::cart::MIN_CHECKOUT_LEASE;
pub const MAX_LEASE: Duration = platform::cart::MAX_CHECKOUT_LEASE;
/// A checkout handed to the recovery is left alone this long first: a call its driver gave
/// up on may still be landing.
pub const HANDOVER_GRACE: Duration = Duration::from_millis(1000);

/// Why a checkout went backward, from an AdvanceCheckout request: an ending, never
/// UNSPECIFIED.
fn parse_failure(raw: i32) -> Result<CheckoutFailure, FieldError> {
    match CheckoutFailure::try_from(raw) {
        Ok(CheckoutFailure::Unspecified) => Err(FieldError::new(
            "failure",
            "is required to cancel a checkout",
        )),
        Ok(f) => Ok(f),
        Err(_) => Err(FieldError::new("failure", "is not a CheckoutFailure value")),
    }
}

/// A checkout to begin, parsed from BeginCheckout (or built by the chained hop).
#[derive(Debug, Clone)]
pub struct NewCheckout {
    pub order_id: Uuid,
    pub user_id: UserId,
    pub reservation_id: String,
    pub lines: Vec<StoredLine>,
    /// None until priced (a chained checkout's record).
    pub total: Option<Money>,
    pub lease: Duration,
    /// The caller's own token, if it chose one (so a repeated call finds its lease).
    pub token: Option<Uuid>,
    pub strategy: String,
    pub trace_id: String,
}

impl NewCheckout {
    pub fn parse(req: pb::BeginCheckoutRequest, trace_id: &str) -> Result<Self, FieldError> {
        let o = req
            .order
            .ok_or_else(|| FieldError::new("order", "is required"))?;
        let order_id = orders::parse_order_id(&o.order_id, "order.order_id")?;
        let user_id = UserId::parse(&o.user_id, "order.user_id")?;
        let reservation_id =
            orders::parse_reservation_id(&o.reservation_id, "order.reservation_id")?;
        let (lines, total) = if o.total.is_none() && o.lines.iter().all(|l| l.unit_price.is_none())
        {
            (unpriced(&o.lines, "order.lines")?, None)
        } else {
            let (lines, total) = orders::parse_priced(o.lines, o.total.as_ref(), "order.")?;
            (lines, Some(total))
        };
        let lease = Duration::from_millis(u64::from(req.lease_ms));
        if !(MIN_LEASE..=MAX_LEASE).contains(&lease) {
            return Err(FieldError::new(
                "lease_ms",
                format!(
                    "must be {} to {}",
                    MIN_LEASE.as_millis(),
                    MAX_LEASE.as_millis()
                ),
            ));
        }
        let strategy = match req.strategy.as_str() {
            s @ ("orchestrated" | "parallel" | "chained" | "monolith" | "") => s.to_owned(),
            _ => {
                return Err(FieldError::new(
                    "strategy",
                    "must be orchestrated, parallel, chained or monolith",
                ));
            }
        };
        let token = match req.lease_token.trim() {
            "" => None,
            t => Some(
                Uuid::parse_str(t).map_err(|_| FieldError::new("lease_token", "must be a UUID"))?,
            ),
        };
        Ok(Self {
            order_id,
            user_id,
            reservation_id,
            lines,
            total,
            lease,
            token,
            strategy,
            trace_id: trace_id.to_owned(),
        })
    }

    fn cart(&self) -> Vec<(String, i32)> {
        let mut cart: Vec<_> = self
            .lines
            .iter()
            .map(|l| (l.item_id.to_ascii_lowercase(), l.quantity))
            .collect();
        cart.sort();
        cart
    }
}

/// Lines before pricing: the shared cart rules.
pub fn unpriced(
    lines: &[shop_proto::common::v1::PricedLine],
    field: &str,
) -> Result<Vec<StoredLine>, FieldError> {
    let valid = platform::cart::validate(lines.iter().map(|l| (l.item_id.as_str(), l.quantity)))
        .map_err(|e| {
            FieldError::new(
                format!("{field}{}", e.field.trim_start_matches("lines")),
                e.message,
            )
        })?;
    Ok(valid
        .iter()
        .map(|l| StoredLine::unpriced(&l.item_id, l.quantity))
        .collect())
}

/// Where a transition takes a checkout.
#[derive(Debug, Clone)]
pub enum Target {
    /// Paid and committed: the order exists. `priced` fills in a chained record's prices.
    Placed {
        payment_id: String,
        priced: Option<(Vec<StoredLine>, Money)>,
    },
    /// Going backward: refund and release under way.
    Cancelling(CheckoutFailure),
    /// Ended with nothing kept.
    Cancelled(CheckoutFailure),
    /// The driver gives up its lease, the state unchanged: the recovery finishes the checkout.
    Handover,
}

impl Target {
    fn status(&self) -> &'static str {
        match self {
            Self::Placed { .. } => "placed",
            Self::Cancelling(_) => "cancelling",
            Self::Cancelled(_) => "cancelled",
            Self::Handover => "pending",
        }
    }

    /// The states this transition may leave.
    fn from(&self) -> &'static [&'static str] {
        match self {
            Self::Placed { .. } | Self::Cancelling(_) => &["pending"],
            Self::Cancelled(_) | Self::Handover => &["pending", "cancelling"],
        }
    }
}

#[derive(Debug, Clone)]
pub struct Transition {
    pub order_id: Uuid,
    pub token: Uuid,
    pub to: Target,
}

impl Transition {
    pub fn parse(r: pb::AdvanceCheckoutRequest) -> Result<Self, FieldError> {
        let order_id = orders::parse_order_id(&r.order_id, "order_id")?;
        let token = Uuid::parse_str(r.lease_token.trim())
            .map_err(|_| FieldError::new("lease_token", "must be the token BeginCheckout gave"))?;
        let to = match pb::OrderStatus::try_from(r.to) {
            Ok(pb::OrderStatus::Placed) => {
                let payment_id = orders::parse_payment_id(&r.payment_id, "payment_id")?;
                let priced = if r.lines.is_empty() && r.total.is_none() {
                    None
                } else {
                    Some(orders::parse_priced(r.lines, r.total.as_ref(), "")?)
                };
                Target::Placed { payment_id, priced }
            }
            Ok(pb::OrderStatus::Cancelling) => Target::Cancelling(parse_failure(r.failure)?),
            Ok(pb::OrderStatus::Cancelled) => Target::Cancelled(parse_failure(r.failure)?),
            // "Hand it over in the state it is in".
            Ok(pb::OrderStatus::Pending) => Target::Handover,
            _ => {
                return Err(FieldError::new(
                    "to",
                    "must be PLACED, CANCELLING, CANCELLED or PENDING",
                ));
            }
        };
        Ok(Self {
            order_id,
            token,
            to,
        })
    }
}

/// What BeginCheckout found.
#[derive(Debug)]
pub enum Begun {
    /// A new record; the caller drives it.
    Created(OrderRow, Uuid),
    /// The caller's own record (a repeated call after a lost answer): it still drives it.
    Held(OrderRow, Uuid),
    /// An earlier attempt's record: driven by someone else (that attempt, or the recovery
    /// once its lease ran out), or settled.
    Existing(OrderRow),
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("no checkout record with this order id")]
    NotFound,
    #[error("the order id belongs to another user's checkout")]
    OtherUser,
    #[error("this Idempotency-Key was already used for a different cart")]
    OtherCart,
    #[error("this checkout has been taken over by another driver (the recovery, or a retry)")]
    TakenOver,
    #[error("this checkout is {0} and cannot be moved that way")]
    State(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for RecordError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::Db(e))
    }
}

/// Inserting a record for a user that does not exist is the caller's error, not the store's.
pub(crate) fn inserting(e: sqlx::Error) -> RecordError {
    match &e {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            RecordError::Store(StoreError::UnknownUser)
        }
        _ => RecordError::from(e),
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Creates the record, or finds the one an earlier attempt with the same key made.
    pub async fn begin_checkout(&self, c: &NewCheckout) -> Result<Begun, RecordError> {
        use platform::timing::StoreOp as _;
        let token = c.token.unwrap_or_else(Uuid::new_v4);
        let sql = format!(
            "INSERT INTO orders (order_id, user_id, lines, priced, total_minor, currency, \
             payment_id, reservation_id, status, strategy, trace_id, lease_token, lease_ms, \
             lease_until, attempts, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, 'pending', $8, $9, $10, $11, \
             now() + $11 * interval '1 millisecond', 1, now(), now()) \
             ON CONFLICT (order_id) DO NOTHING RETURNING {ORDER_COLUMNS}"
        );
        let lease_ms = i32::try_from(c.lease.as_millis()).unwrap_or(i32::MAX);
        let inserted = sqlx::query_as::<_, OrderRow>(&sql)
            .bind(c.order_id)
            .bind(c.user_id.0)
            .bind(Json(&c.lines))
            .bind(c.total.is_some())
            .bind(c.total.map(|t| t.amount_minor()))
            .bind(c.total.map(|t| t.currency().code().to_owned()))
            .bind(&c.reservation_id)
            .bind(&c.strategy)
            .bind(&c.trace_id)
            .bind(token)
            .bind(lease_ms)
            .fetch_optional(&self.pool)
            .store_op("postgres", "begin_checkout")
            .await
            .map_err(inserting)?;
        if let Some(row) = inserted {
            return Ok(Begun::Created(row, token));
        }
        let existing = self.same_checkout(c.order_id, c.user_id, &c.cart()).await?;
        if existing.status == "pending" && existing.lease_token == Some(token) {
            return Ok(Begun::Held(existing, token));
        }
        // Never taken over here, even when its lease ran out: a retry does not know what
        // the dead attempt did (it may have charged), the recovery asks the services.
        Ok(Begun::Existing(existing))
    }

    /// The record an earlier call with this order id made, if it is the same user's and the
    /// same cart (a retry); another user's order or another cart under the same key is refused.
    pub(crate) async fn same_checkout(
        &self,
        order_id: Uuid,
        user_id: UserId,
        cart: &[(String, i32)],
    ) -> Result<OrderRow, RecordError> {
        let existing = self
            .checkout(order_id)
            .await?
            .ok_or(RecordError::NotFound)?;
        if existing.user_id != user_id.0 {
            return Err(RecordError::OtherUser);
        }
        if existing.cart() != cart {
            return Err(RecordError::OtherCart);
        }
        Ok(existing)
    }

    /// Moves a checkout on, if `t.token` still holds it. Repeating a transition that
    /// already happened under the same token returns the record (a retry after a lost answer).
    pub async fn advance_checkout(&self, t: &Transition) -> Result<OrderRow, RecordError> {
        use platform::timing::StoreOp as _;
        let (payment_id, failure, priced) = match &t.to {
            Target::Placed { payment_id, priced } => {
                (Some(payment_id.as_str()), None, priced.as_ref())
            }
            Target::Cancelling(f) | Target::Cancelled(f) => {
                (None, Some(checkout_failure::code(*f)), None)
            }
            Target::Handover => (None, None, None),
        };
        let from: Vec<String> = t.to.from().iter().map(|s| (*s).to_owned()).collect();
        let sql = format!(
            "UPDATE orders SET status = CASE WHEN $3 = 'pending' THEN status ELSE $3 END, \
             payment_id = COALESCE($4, payment_id), \
             failure = COALESCE($5, failure), \
             lines = COALESCE($6, lines), \
             priced = priced OR $7, \
             total_minor = COALESCE($8, total_minor), \
             currency = COALESCE($9, currency), \
             lease_until = CASE $3 \
                 WHEN 'cancelling' THEN GREATEST(lease_until, now() + lease_ms * interval '1 millisecond') \
                 WHEN 'pending' THEN now() + $10 * interval '1 millisecond' \
                 ELSE now() END, \
             lease_token = CASE WHEN $3 = 'pending' THEN NULL ELSE lease_token END, \
             updated_at = now() \
             WHERE order_id = $1 AND lease_token = $2 AND status = ANY($11) \
             AND ($3 <> 'placed' OR priced OR $7) \
             RETURNING {ORDER_COLUMNS}"
        );
        let moved = sqlx::query_as::<_, OrderRow>(&sql)
            .bind(t.order_id)
            .bind(t.token)
            .bind(t.to.status())
            .bind(payment_id)
            .bind(failure)
            .bind(priced.map(|(lines, _)| Json(lines)))
            .bind(priced.is_some())
            .bind(priced.map(|(_, total)| total.amount_minor()))
            .bind(priced.map(|(_, total)| total.currency().code().to_owned()))
            .bind(millis(HANDOVER_GRACE))
            .bind(&from)
            .fetch_optional(&self.pool)
            .store_op("postgres", "advance_checkout")
            .await?;
        if let Some(row) = moved {
            return Ok(row);
        }
        let row = self
            .checkout(t.order_id)
            .await?
            .ok_or(RecordError::NotFound)?;
        if row.lease_token != Some(t.token) {
            return Err(RecordError::TakenOver);
        }
        let same_payment = match &t.to {
            Target::Placed { payment_id, .. } => row.payment_id.as_deref() == Some(payment_id),
            _ => true,
        };
        if row.status == t.to.status() && same_payment {
            return Ok(row);
        }
        if row.status == "pending" && !row.priced {
            return Err(RecordError::State("not priced yet".into()));
        }
        Err(RecordError::State(row.status))
    }

    /// The record, whoever it belongs to.
    pub async fn checkout(&self, order_id: Uuid) -> Result<Option<OrderRow>, StoreError> {
        use platform::timing::StoreOp as _;
        let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = $1");
        Ok(sqlx::query_as::<_, OrderRow>(&sql)
            .bind(order_id)
            .fetch_optional(&self.pool)
            .store_op("postgres", "checkout")
            .await?)
    }

    /// Claims up to `limit` unfinished checkouts whose lease ran out, for the recovery:
    /// `SKIP LOCKED` and the lease condition keep several replicas off the same rows.
    /// Asynchronous checkouts have no lease and no driver to outlive: the event stream
    /// moves them on.
    ///
    /// The locking subquery is an `ARRAY(...)` (an InitPlan, run once). As `IN (SELECT ...)`
    /// PostgreSQL planned it as a nested-loop semi-join that re-ran it for every outer row;
    /// each re-run skipped the rows the statement had just updated and locked the next ones,
    /// so one round claimed every due checkout, not `limit` (limit 4, 8 due: 8 claimed, and
    /// a second replica's concurrent round got none).
    pub async fn claim_abandoned(
        &self,
        token: Uuid,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<OrderRow>, StoreError> {
        use platform::timing::StoreOp as _;
        let sql = format!(
            "UPDATE orders SET lease_token = $1, \
             lease_until = now() + $2 * interval '1 millisecond', attempts = attempts + 1 \
             WHERE order_id = ANY(ARRAY(SELECT order_id FROM orders \
                 WHERE status IN ('pending', 'cancelling') AND lease_until < now() \
                 AND strategy <> 'async' \
                 ORDER BY lease_until LIMIT $3 FOR UPDATE SKIP LOCKED)) \
             AND status IN ('pending', 'cancelling') AND lease_until < now() \
             RETURNING {ORDER_COLUMNS}"
        );
        Ok(sqlx::query_as::<_, OrderRow>(&sql)
            .bind(token)
            .bind(millis(lease))
            .bind(limit)
            .fetch_all(&self.pool)
            .store_op("postgres", "claim_abandoned")
            .await?)
    }

    /// Gives a claim back so the next round (not the end of the claim's lease) retries it.
    pub async fn retry_later(
        &self,
        order_id: Uuid,
        token: Uuid,
        after: Duration,
    ) -> Result<(), StoreError> {
        use platform::timing::StoreOp as _;
        sqlx::query(
            "UPDATE orders SET lease_token = NULL, \
             lease_until = now() + $3 * interval '1 millisecond' \
             WHERE order_id = $1 AND lease_token = $2 AND status IN ('pending', 'cancelling')",
        )
        .bind(order_id)
        .bind(token)
        .bind(millis(after))
        .execute(&self.pool)
        .store_op("postgres", "retry_later")
        .await?;
        Ok(())
    }

    /// Unfinished checkouts that started longer than `age` ago.
    pub async fn stuck_checkouts(&self, age: Duration) -> Result<i64, StoreError> {
        use platform::timing::StoreOp as _;
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM orders WHERE status IN ('pending', 'cancelling') \
             AND created_at < now() - $1 * interval '1 millisecond'",
        )
        .bind(millis(age))
        .fetch_one(&self.pool)
        .store_op("postgres", "stuck_checkouts")
        .await?)
    }
}
