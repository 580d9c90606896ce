//! The checkout recovery: finishes checkouts whose driver died (a gateway, or this service's
//! chained hop, killed between two steps). Every round it claims unfinished records whose
//! lease ran out and, for each, asks the services what already happened and finishes it:
//!
//! - forward (commit the reservation, place the order) when the charge SUCCEEDED and the
//!   stock is still held;
//! - backward (refund if charged, release the stock, cancel) otherwise;
//! - an unknown charge (PENDING) is settled by payment-service's Reconcile, never guessed;
//!   while it stays unknown the checkout waits for the next round.
//!
//! Safe with several replicas: a claim is a conditional UPDATE with `SKIP LOCKED`, every
//! transition is conditional on the claim's token, and every call it makes is idempotent
//! (the refund uses the checkout's own refund key), so a crash of the recovery itself is
//! just a claim whose lease runs out.

use std::{sync::Arc, time::Duration};

use platform::{
    CallContext, ErrorReason,
    checkout_failure::{self, CheckoutFailure},
    context::TraceContext,
    reason_of,
};
use shop_proto::{
    common::v1::{Money as PbMoney, PricedLine},
    item::v1::{self as item, ReservationStatus},
    payment::v1::{self as pay, PaymentStatus},
};
use tonic::Code;
use uuid::Uuid;

use crate::{
    checkout_record::{Target, Transition},
    orders,
    service::Users,
    store::OrderRow,
};

/// How the recovery runs (user-service flags, see config.rs).
#[derive(Debug, Clone)]
pub struct RecoverySettings {
    /// Pause between rounds.
    pub interval: Duration,
    /// Cap on each call to another service.
    pub call_timeout: Duration,
    /// An unfinished checkout older than this counts as stuck.
    pub stuck_after: Duration,
    /// Checkouts claimed per round.
    pub batch: i64,
}

impl RecoverySettings {
    /// How long a claim lasts: every call one checkout may need, so a recovery worker that
    /// dies mid-way frees its checkouts soon after.
    fn lease(&self) -> Duration {
        (self.call_timeout * 8).max(self.interval)
    }
}

/// What the recovery did with one checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Committed and placed.
    Forward,
    /// Refunded (if charged), released and cancelled.
    Compensated,
    /// Cannot decide or finish yet (unknown charge, a service down); next round.
    Waiting,
    /// Another driver moved it meanwhile.
    Lost,
}

impl Action {
    fn label(self) -> &'static str {
        match self {
            Self::Forward => "forward",
            Self::Compensated => "compensated",
            Self::Waiting => "waiting",
            Self::Lost => "lost",
        }
    }
}

#[derive(Clone)]
pub struct Recovery {
    svc: Arc<Users>,
    settings: RecoverySettings,
    /// The crash test's test-only switch is on (crate::broken_recovery).
    broken: bool,
}

/// Why one checkout cannot be finished this round (logged, then waited out).
#[derive(Debug)]
struct Wait(String);

impl From<tonic::Status> for Wait {
    fn from(s: tonic::Status) -> Self {
        Self(format!("{:?}: {}", s.code(), s.message()))
    }
}

impl Recovery {
    pub fn new(svc: Arc<Users>, settings: RecoverySettings) -> Self {
        Self {
            svc,
            settings,
            broken: crate::broken_recovery::enabled(),
        }
    }

    /// Rounds until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        // Every action at zero from the start, so a dashboard shows "none yet" rather than
        // no data.
        for action in ["claimed", "forward", "compensated", "waiting", "lost"] {
            metrics::counter!("checkout_recovery_total", "action" => action).increment(0);
        }
        let mut shutdown = std::pin::pin!(shutdown);
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.round().await {
                tracing::warn!(error = format!("{e:#}"), "checkout recovery round failed");
            }
        }
    }

    /// One round: claim what is due, finish it, update the stuck gauge.
    pub async fn round(&self) -> anyhow::Result<Vec<(Uuid, Action)>> {
        let token = Uuid::new_v4();
        let claimed = self
            .svc
            .store
            .claim_abandoned(token, self.settings.lease(), self.settings.batch)
            .await?;
        let mut done = Vec::with_capacity(claimed.len());
        for row in claimed {
            metrics::counter!("checkout_recovery_total", "action" => "claimed").increment(1);
            tracing::info!(order_id = %row.order_id, trace_id = %row.trace_id, status = %row.status, attempt = row.attempts, strategy = %row.strategy, "recovery: abandoned checkout claimed");
            let id = row.order_id;
            let action = self.recover(&row, token).await;
            metrics::counter!("checkout_recovery_total", "action" => action.label()).increment(1);
            done.push((id, action));
        }
        let stuck = self
            .svc
            .store
            .stuck_checkouts(self.settings.stuck_after)
            .await?;
        metrics::gauge!("checkout_recovery_stuck").set(stuck as f64);
        if self.broken {
            crate::broken_recovery::refund_placed(&self.svc, self.settings.call_timeout).await;
        }
        Ok(done)
    }

    async fn recover(&self, row: &OrderRow, token: Uuid) -> Action {
        let ctx = context_of(row);
        let result = self.decide_and_act(&ctx, row, token).await;
        match result {
            Ok(action) => action,
            Err(Wait(why)) => {
                tracing::warn!(order_id = %row.order_id, trace_id = %row.trace_id, why = %why, "recovery: checkout waits for the next round");
                // Back to the queue at the next round, not after the whole claim lease.
                if let Err(e) = self
                    .svc
                    .store
                    .retry_later(row.order_id, token, self.settings.interval)
                    .await
                {
                    tracing::warn!(order_id = %row.order_id, error = %platform::telemetry::chain(&e), "recovery: could not give the claim back; it runs out by itself");
                }
                Action::Waiting
            }
        }
    }

    async fn decide_and_act(
        &self,
        ctx: &CallContext,
        row: &OrderRow,
        token: Uuid,
    ) -> Result<Action, Wait> {
        let mut payment = self.payment_of(ctx, row).await?;
        if let Some(p) = payment
            .as_ref()
            .filter(|p| p.status() == PaymentStatus::Pending)
        {
            // The charge's outcome is unknown: payment-service asks the card gateway.
            payment = Some(self.reconcile(ctx, p).await?);
        }
        if payment
            .as_ref()
            .is_some_and(|p| p.status() == PaymentStatus::Pending)
        {
            return Err(Wait("the charge's outcome is still unknown".into()));
        }
        if row.status == "cancelling" {
            let failure = row
                .failure
                .as_deref()
                .map_or(CheckoutFailure::Abandoned, checkout_failure::from_stored);
            return self
                .backward(ctx, row, token, payment.as_ref(), failure)
                .await;
        }
        let Some(p) = payment else {
            // No charge was ever made (the lease outlived every call the driver could make).
            return self
                .backward(ctx, row, token, None, CheckoutFailure::Abandoned)
                .await;
        };
        match p.status() {
            PaymentStatus::Succeeded if refunded(&p) == 0 => {
                self.forward(ctx, row, token, &p).await
            }
            PaymentStatus::Succeeded | PaymentStatus::Refunded => {
                self.backward(ctx, row, token, Some(&p), CheckoutFailure::Refunded)
                    .await
            }
            PaymentStatus::Declined => {
                self.backward(ctx, row, token, Some(&p), CheckoutFailure::CardDeclined)
                    .await
            }
            _ => {
                self.backward(ctx, row, token, Some(&p), CheckoutFailure::PaymentFailed)
                    .await
            }
        }
    }

    /// The charge succeeded: commit the held stock and place the order, or, if the stock
    /// is gone, give the money back.
    async fn forward(
        &self,
        ctx: &CallContext,
        row: &OrderRow,
        token: Uuid,
        p: &pay::Payment,
    ) -> Result<Action, Wait> {
        let held = self.reservation(ctx, row).await?;
        match held.map(|r| r.status()) {
            Some(ReservationStatus::Reserved | ReservationStatus::Committed) => {}
            _ => {
                return self
                    .backward(
                        ctx,
                        row,
                        token,
                        Some(p),
                        CheckoutFailure::ReservationExpired,
                    )
                    .await;
            }
        }
        let committed = self
            .svc
            .item
            .clone()
            .commit_reservation(ctx.request(
                item::CommitReservationRequest {
                    reservation_id: row.reservation_id.clone(),
                },
                Some(self.settings.call_timeout),
            ))
            .await;
        match committed {
            Ok(r)
                if r.get_ref().reservation.as_ref().map(|r| r.status())
                    == Some(ReservationStatus::Committed) => {}
            Ok(_) => {
                return self
                    .backward(
                        ctx,
                        row,
                        token,
                        Some(p),
                        CheckoutFailure::ReservationExpired,
                    )
                    .await;
            }
            Err(s) if lost_reservation(&s) => {
                return self
                    .backward(
                        ctx,
                        row,
                        token,
                        Some(p),
                        CheckoutFailure::ReservationExpired,
                    )
                    .await;
            }
            Err(s) => return Err(s.into()),
        }
        let priced = if row.priced {
            None
        } else {
            match self.price(ctx, row, p).await? {
                Some(priced) => Some(priced),
                None => {
                    // Prices moved since payment-service priced the cart: this order cannot
                    // be recorded truthfully. The stock stays sold (committed), the money goes back.
                    tracing::error!(order_id = %row.order_id, trace_id = %row.trace_id, "recovery: cannot re-price a chained checkout to its payment's amount; refunding");
                    return self
                        .backward(ctx, row, token, Some(p), CheckoutFailure::PriceChanged)
                        .await;
                }
            }
        };
        let placed = self
            .svc
            .advance(&Transition {
                order_id: row.order_id,
                token,
                to: Target::Placed {
                    payment_id: p.payment_id.clone(),
                    priced,
                },
            })
            .await;
        match placed {
            Ok(_) => {
                tracing::info!(order_id = %row.order_id, trace_id = %row.trace_id, payment_id = %p.payment_id, "recovery: checkout completed forward (stock committed, order placed)");
                Ok(Action::Forward)
            }
            Err(crate::error::Error::Record(crate::checkout_record::RecordError::TakenOver)) => {
                Ok(Action::Lost)
            }
            Err(e) => Err(Wait(format!("placing the order: {e}"))),
        }
    }

    /// Gives back whatever the checkout took: the decision is written first, then the
    /// refund and the release, then the end state.
    async fn backward(
        &self,
        ctx: &CallContext,
        row: &OrderRow,
        token: Uuid,
        p: Option<&pay::Payment>,
        failure: CheckoutFailure,
    ) -> Result<Action, Wait> {
        if row.status == "pending" {
            match self
                .svc
                .advance(&Transition {
                    order_id: row.order_id,
                    token,
                    to: Target::Cancelling(failure),
                })
                .await
            {
                Ok(_) => {}
                Err(crate::error::Error::Record(
                    crate::checkout_record::RecordError::TakenOver,
                )) => return Ok(Action::Lost),
                Err(e) => return Err(Wait(format!("recording the decision: {e}"))),
            }
        }
        if let Some(p) = p.filter(|p| p.status() == PaymentStatus::Succeeded) {
            let amount = p.amount.as_ref().map_or(0, |m| m.amount_minor);
            if refunded(p) < amount {
                self.refund(ctx, row, p).await?;
                tracing::info!(order_id = %row.order_id, trace_id = %row.trace_id, payment_id = %p.payment_id, "recovery: payment refunded");
            }
        }
        let released = self
            .svc
            .item
            .clone()
            .release_reservation(ctx.request(
                item::ReleaseReservationRequest {
                    reservation_id: row.reservation_id.clone(),
                },
                Some(self.settings.call_timeout),
            ))
            .await;
        match released {
            Ok(_) => {}
            // Never reserved: nothing to give back.
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) if reason_of(&s) == Some(ErrorReason::ReservationCommitted) => {
                tracing::error!(order_id = %row.order_id, trace_id = %row.trace_id, "recovery: the reservation of a cancelled checkout was already committed; its stock stays sold");
            }
            Err(s) => return Err(s.into()),
        }
        match self
            .svc
            .advance(&Transition {
                order_id: row.order_id,
                token,
                to: Target::Cancelled(failure),
            })
            .await
        {
            Ok(_) => {
                tracing::info!(order_id = %row.order_id, trace_id = %row.trace_id, failure = checkout_failure::code(failure), "recovery: checkout compensated (nothing kept, stock released)");
                Ok(Action::Compensated)
            }
            Err(crate::error::Error::Record(crate::checkout_record::RecordError::TakenOver)) => {
                Ok(Action::Lost)
            }
            Err(e) => Err(Wait(format!("cancelling: {e}"))),
        }
    }

    async fn payment_of(
        &self,
        ctx: &CallContext,
        row: &OrderRow,
    ) -> Result<Option<pay::Payment>, Wait> {
        let r = self
            .svc
            .payment
            .clone()
            .get_payment(ctx.request(
                pay::GetPaymentRequest {
                    payment_id: String::new(),
                    order_id: row.order_id.to_string(),
                },
                Some(self.settings.call_timeout),
            ))
            .await;
        match r {
            Ok(r) => Ok(r.into_inner().payment),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(s.into()),
        }
    }

    async fn reconcile(&self, ctx: &CallContext, p: &pay::Payment) -> Result<pay::Payment, Wait> {
        let r = self
            .svc
            .payment
            .clone()
            .reconcile(ctx.request(
                pay::ReconcileRequest {
                    payment_id: p.payment_id.clone(),
                },
                Some(self.settings.call_timeout),
            ))
            .await?;
        Ok(r.into_inner()
            .payments
            .into_iter()
            .find(|q| q.payment_id == p.payment_id)
            .unwrap_or_else(|| p.clone()))
    }

    async fn reservation(
        &self,
        ctx: &CallContext,
        row: &OrderRow,
    ) -> Result<Option<item::Reservation>, Wait> {
        let r = self
            .svc
            .item
            .clone()
            .get_reservation(ctx.request(
                item::GetReservationRequest {
                    reservation_id: row.reservation_id.clone(),
                },
                Some(self.settings.call_timeout),
            ))
            .await;
        match r {
            Ok(r) => Ok(r.into_inner().reservation),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(s.into()),
        }
    }

    /// The checkout's own refund key (the one its driver would have used), so a refund the
    /// driver already made is not made twice.
    async fn refund(
        &self,
        ctx: &CallContext,
        row: &OrderRow,
        p: &pay::Payment,
    ) -> Result<(), Wait> {
        let r = self
            .svc
            .payment
            .clone()
            .refund(ctx.request(
                pay::RefundRequest {
                    payment_id: p.payment_id.clone(),
                    amount: None,
                    idempotency_key: platform::ids::refund_key(&row.reservation_id),
                    reason: "checkout could not be completed".into(),
                },
                Some(self.settings.call_timeout),
            ))
            .await;
        match r {
            Ok(_) => Ok(()),
            // Refunded meanwhile (by another key): nothing left to give back.
            Err(s) if reason_of(&s) == Some(ErrorReason::PaymentNotRefundable) => Ok(()),
            Err(s) => Err(s.into()),
        }
    }

    /// A chained record's lines priced now; None unless they add up to what was charged.
    async fn price(
        &self,
        ctx: &CallContext,
        row: &OrderRow,
        p: &pay::Payment,
    ) -> Result<Option<(Vec<orders::StoredLine>, platform::money::Money)>, Wait> {
        let items = self
            .svc
            .item
            .clone()
            .batch_get_items(ctx.request(
                item::BatchGetItemsRequest {
                    ids: row.lines.0.iter().map(|l| l.item_id.clone()).collect(),
                },
                Some(self.settings.call_timeout),
            ))
            .await?
            .into_inner()
            .items;
        let mut lines = Vec::with_capacity(row.lines.0.len());
        let mut total: Option<PbMoney> = None;
        for l in &row.lines.0 {
            let Some(it) = items.iter().find(|i| i.id.eq_ignore_ascii_case(&l.item_id)) else {
                return Ok(None);
            };
            let Some(unit) = it.price.clone() else {
                return Ok(None);
            };
            let line_total = PbMoney {
                amount_minor: unit.amount_minor.saturating_mul(i64::from(l.quantity)),
                currency: unit.currency.clone(),
            };
            total = Some(match total {
                None => line_total.clone(),
                Some(t) => PbMoney {
                    amount_minor: t.amount_minor.saturating_add(line_total.amount_minor),
                    currency: t.currency,
                },
            });
            lines.push(PricedLine {
                item_id: l.item_id.clone(),
                sku: it.sku.clone(),
                name: it.name.clone(),
                quantity: l.quantity,
                unit_price: Some(unit),
                line_total: Some(line_total),
            });
        }
        if total.as_ref() != p.amount.as_ref() {
            return Ok(None);
        }
        Ok(orders::parse_priced(lines, total.as_ref(), "").ok())
    }
}

fn refunded(p: &pay::Payment) -> i64 {
    p.amount_refunded.as_ref().map_or(0, |m| m.amount_minor)
}

/// The reservation is gone (expired, released): its stock cannot be sold to this order.
fn lost_reservation(s: &tonic::Status) -> bool {
    matches!(
        reason_of(s),
        Some(ErrorReason::ReservationExpired | ErrorReason::ReservationReleased)
    ) || s.code() == Code::NotFound
}

/// Calls made for a checkout carry the trace it began with, so its log lines join up.
fn context_of(row: &OrderRow) -> CallContext {
    let mut trace = TraceContext::new_root();
    if row.trace_id.len() == 32 && row.trace_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        trace.trace_id = row.trace_id.clone();
        trace.request_id = row.trace_id.clone();
    }
    // The recovery acts for itself, not for the checkout's user: it is on the allow-lists
    // as user-service with no end user.
    CallContext {
        trace,
        deadline: None,
        user: None,
    }
}
