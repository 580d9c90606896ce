//! Charge, refund and reconcile: the payment state machine around the card gateway.
//!
//! A charge is first recorded as PENDING under its idempotency key (one transaction); the
//! request that inserted the key then asks the gateway, with the payment id as the gateway's
//! Idempotency-Key, and settles the row. Requests that find the key already taken wait for
//! that answer. A row's `locked_until` lease says someone is talking to the gateway about it;
//! when an attempt ends without a final answer the lease is dropped, and a retry with the
//! same key or the reconciler takes over.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use platform::{
    CallContext,
    breaker::{BreakerConfig, CircuitBreaker},
    events::RelayWaker,
    money::{Currency, Money},
    transport::GrpcTransport,
};
use shop_proto::{
    item::v1::{
        CommitReservationRequest, ReleaseReservationRequest, item_service_client::ItemServiceClient,
    },
    user::v1::user_service_client::UserServiceClient,
};
use uuid::Uuid;

use crate::{
    card::Card,
    card_processor::{
        ChargeOutcome, ChargeParams, ChargeSource, ProcessorClient, ProcessorError, RefundOutcome,
    },
    error::Error,
    fingerprint::Fingerprint,
    ids::IdempotencyKey,
    outbox::MySqlOutbox,
    payment::{PaymentRow, RefundRow, RefundStatus, Status},
    store::{self, ChargeStart, Claim, NewPayment, NewRefund, RefundStart, Store},
};

/// Code recorded when the gateway never executed a charge whose answer was lost.
pub const NOT_CHARGED_CODE: &str = "processing_error";

#[derive(Debug, Clone)]
pub struct Settings {
    pub max_amount_minor: i64,
    pub processor_timeout: Duration,
    /// The breaker on card-gateway charges.
    pub card_breaker: BreakerConfig,
    pub item_timeout: Duration,
    /// Cap on asking user-service whether a checkout is being cancelled.
    pub user_timeout: Duration,
    pub idempotency_ttl: Duration,
}

/// The payment logic, shared by the gRPC handlers and the background reconciler.
#[derive(Clone)]
pub struct Payments {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// Wakes the outbox relay after a commit that stored an event (asynchronous checkout).
    relay: Option<RelayWaker>,
    outbox: MySqlOutbox,
    gateway: ProcessorClient,
    /// Guards charges only: the path a checkout waits on. Lookups and refunds are the
    /// reconciler's and compensation's background work, bounded by their own timeouts, and
    /// a fast lookup succeeding must not close a breaker that slow charges opened.
    charge_breaker: CircuitBreaker,
    items: ItemServiceClient<GrpcTransport>,
    /// Asked before a compensation refund (crate::compensation).
    users: UserServiceClient<GrpcTransport>,
    settings: Settings,
}

/// The services payment-service calls: item-service (ChainedCharge) and user-service (a
/// compensation refund's checkout).
pub struct Downstreams {
    pub items: ItemServiceClient<GrpcTransport>,
    pub users: UserServiceClient<GrpcTransport>,
}

pub struct ChargeCommand {
    pub key: IdempotencyKey,
    pub fingerprint: Fingerprint,
    pub user_id: Uuid,
    pub order_id: Uuid,
    pub amount: Money,
    pub card: Card,
    pub description: String,
    /// ChainedCharge's item-service reservation, settled with the payment.
    pub reservation_id: Option<String>,
}

/// What a charge sends the card gateway besides the payment row's amount.
pub struct ProcessorCharge {
    pub currency: Currency,
    pub description: String,
    pub source: Source,
}

/// The card, or the token the shop's edge got for it (the asynchronous checkout).
pub enum Source {
    Card(Card),
    Token(String),
}

impl ChargeCommand {
    fn processor_charge(&self) -> ProcessorCharge {
        ProcessorCharge {
            currency: self.amount.currency(),
            description: self.description.clone(),
            source: Source::Card(self.card.clone()),
        }
    }
}

pub struct RefundCommand {
    pub key: IdempotencyKey,
    pub fingerprint: Fingerprint,
    pub payment_id: Uuid,
    /// None: everything that is left.
    pub amount: Option<Money>,
}

fn outcome_fields(o: &ChargeOutcome) -> (Status, &str, &str) {
    match o {
        ChargeOutcome::Succeeded { charge_id, .. } => (Status::Succeeded, "", charge_id),
        ChargeOutcome::Declined {
            charge_id, code, ..
        } => (Status::Declined, code, charge_id),
        ChargeOutcome::Rejected { code } => (Status::Failed, code, ""),
    }
}

impl Payments {
    pub fn new(
        store: Store,
        gateway: ProcessorClient,
        Downstreams { items, users }: Downstreams,
        settings: Settings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                outbox: MySqlOutbox::new(store.pool().clone()),
                store,
                relay: None,
                gateway,
                charge_breaker: CircuitBreaker::new(
                    "payment",
                    "card-gateway",
                    settings.card_breaker,
                ),
                items,
                users,
                settings,
            }),
        }
    }

    /// The same payments, waking `relay` after commits that store events. Call before the
    /// value is cloned (it is shared by its clones).
    pub fn with_relay(mut self, relay: RelayWaker) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.relay = Some(relay);
        }
        self
    }

    pub(crate) fn wake_relay(&self) {
        if let Some(relay) = &self.inner.relay {
            relay.wake();
        }
    }

    /// The work lease on `row` if nobody holds it (see [`Self::try_lease`]).
    pub(crate) async fn lease_payment(&self, row: &PaymentRow) -> Result<bool, sqlx::Error> {
        self.try_lease(store::Leased::Payment, &row.id, row.locked_until)
            .await
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The outbox of the asynchronous checkout's events.
    pub fn outbox(&self) -> &MySqlOutbox {
        &self.inner.outbox
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn items(&self) -> ItemServiceClient<GrpcTransport> {
        self.inner.items.clone()
    }

    pub fn users(&self) -> UserServiceClient<GrpcTransport> {
        self.inner.users.clone()
    }

    /// How long one attempt may hold a row: the gateway budget plus room for the writes.
    pub(crate) fn lease(&self) -> Duration {
        self.inner.settings.processor_timeout + Duration::from_secs(5)
    }

    /// Takes the work lease on a PENDING row unless someone else holds it now.
    async fn try_lease(
        &self,
        what: store::Leased,
        id: &str,
        locked_until: Option<time::PrimitiveDateTime>,
    ) -> Result<bool, sqlx::Error> {
        let now = store::now();
        if locked_until.is_some_and(|l| l >= now) {
            return Ok(false);
        }
        self.inner
            .store
            .claim(what, id, now, store::later(now, self.lease()))
            .await
    }

    /// How long a request waits for another request with its key before answering ABORTED.
    fn give_up_at(&self, ctx: &CallContext) -> Instant {
        ctx.deadline
            .unwrap_or_else(|| Instant::now() + self.lease() + Duration::from_secs(1))
    }

    pub async fn payment(&self, id: &str) -> Result<PaymentRow, Error> {
        self.inner
            .store
            .payment(id)
            .await?
            .ok_or_else(|| Error::PaymentNotFound(id.to_owned()))
    }

    /// While the card gateway is failing (its breaker is open), a new charge is refused
    /// before anything is written or reserved: the caller learns at once, and there is
    /// nothing to reconcile. A retry of a known key still gets its stored answer.
    /// The same holds for an order that already has a payment: its answer is stored too.
    pub async fn refuse_while_gateway_fails(
        &self,
        key: &IdempotencyKey,
        order_id: &str,
    ) -> Result<(), Error> {
        if !self.inner.charge_breaker.admits()
            && !self.inner.store.key_exists(key.as_str()).await?
            && self.inner.store.payment_by_order(order_id).await?.is_none()
        {
            metrics::counter!("payment_charges_refused_total").increment(1);
            let wait = self.inner.charge_breaker.snapshot().retry_in_ms;
            return Err(Error::CardGatewayFailing {
                retry_after: Duration::from_millis(wait),
            });
        }
        Ok(())
    }

    /// The order's payment, if it has one.
    pub async fn payment_of_order(&self, order_id: &str) -> Result<PaymentRow, Error> {
        self.inner
            .store
            .payment_by_order(order_id)
            .await?
            .ok_or_else(|| Error::OrderPaymentNotFound(order_id.to_owned()))
    }

    /// A charge whose key is unknown (purged after the retention time, or new) for an order
    /// that already has a payment: that payment is the answer when `same` says the request
    /// is the order's own (same user; for Charge also the same amount), never a second
    /// charge. Like a replay it waits while another request is talking to the gateway about
    /// it; it never drives it itself (the card may differ), so a PENDING payment nobody is
    /// working on comes back as it is, for Reconcile.
    pub async fn replay_order(
        &self,
        existing: PaymentRow,
        same: bool,
        key: &IdempotencyKey,
        ctx: &CallContext,
    ) -> Result<PaymentRow, Error> {
        if !same {
            return Err(Error::OrderTaken {
                order_id: existing.order_id,
            });
        }
        metrics::counter!("payment_idempotent_replays_total", "kind" => "order").increment(1);
        tracing::info!(payment = %existing.id, order = %existing.order_id, "order already paid; returning its payment");
        let give_up = self.give_up_at(ctx);
        let mut poll = Duration::from_millis(10);
        let mut row = existing;
        loop {
            let leased = row.locked_until.is_some_and(|l| l >= store::now());
            if row.status() != Status::Pending || !leased {
                return Ok(row);
            }
            if Instant::now() + poll >= give_up {
                return Err(Error::InProgress {
                    key: key.as_str().to_owned(),
                });
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(Duration::from_millis(100));
            row = self.payment(&row.id).await?;
        }
    }

    /// Charges once per idempotency key; see the module docs.
    pub async fn charge(&self, cmd: ChargeCommand, ctx: &CallContext) -> Result<PaymentRow, Error> {
        let order_id = cmd.order_id.to_string();
        self.refuse_while_gateway_fails(&cmd.key, &order_id).await?;
        let now = store::now();
        let id = Uuid::now_v7().to_string();
        let user_id = cmd.user_id.to_string();
        let new = NewPayment {
            id: &id,
            key: cmd.key.as_str(),
            fingerprint: cmd.fingerprint,
            user_id: &user_id,
            order_id: &order_id,
            amount_minor: cmd.amount.amount_minor(),
            currency: cmd.amount.currency().code(),
            card_brand: cmd.card.brand().as_str(),
            card_last4: cmd.card.last4(),
            reservation_id: cmd.reservation_id.as_deref(),
            checkout: None,
            now,
            lease_until: store::later(now, self.lease()),
        };
        match self.inner.store.begin_charge(&new).await? {
            ChargeStart::Claimed(Claim::New(row)) => {
                self.drive_charge(row, cmd.processor_charge()).await
            }
            ChargeStart::OrderPaid(existing) => {
                // ChainedCharge prices the lines itself, so only the user must match there.
                let same = existing.user_id == user_id
                    && (cmd.reservation_id.is_some()
                        || (existing.amount_minor == cmd.amount.amount_minor()
                            && existing.currency == cmd.amount.currency().code()));
                self.replay_order(existing, same, &cmd.key, ctx).await
            }
            ChargeStart::Claimed(Claim::Existing {
                fingerprint,
                resource_id,
            }) => {
                if fingerprint[..] != cmd.fingerprint[..] {
                    return Err(Error::KeyReused {
                        key: cmd.key.as_str().to_owned(),
                    });
                }
                metrics::counter!("payment_idempotent_replays_total", "kind" => "charge")
                    .increment(1);
                self.follow_charge(&resource_id, cmd, ctx).await
            }
        }
    }

    /// Waits for the request that owns the key; takes over if it left the payment PENDING.
    async fn follow_charge(
        &self,
        id: &str,
        cmd: ChargeCommand,
        ctx: &CallContext,
    ) -> Result<PaymentRow, Error> {
        let give_up = self.give_up_at(ctx);
        let mut poll = Duration::from_millis(10);
        loop {
            let row = self.payment(id).await?;
            if row.status() != Status::Pending {
                return Ok(row);
            }
            if self
                .try_lease(store::Leased::Payment, id, row.locked_until)
                .await?
            {
                return self.drive_charge(row, cmd.processor_charge()).await;
            }
            if Instant::now() + poll >= give_up {
                return Err(Error::InProgress {
                    key: cmd.key.as_str().to_owned(),
                });
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(Duration::from_millis(100));
        }
    }

    /// Asks the gateway and records the answer, in a task of its own: a caller that hangs
    /// up must not cut the work off between the gateway's answer and the database write.
    pub(crate) async fn drive_charge(
        &self,
        row: PaymentRow,
        charge: ProcessorCharge,
    ) -> Result<PaymentRow, Error> {
        let this = self.clone();
        tokio::spawn(platform::timing::carry(async move {
            let params = ChargeParams {
                amount_minor: row.amount_minor,
                currency: charge.currency,
                description: &charge.description,
                source: match &charge.source {
                    Source::Card(card) => ChargeSource::Card(card),
                    Source::Token(token) => ChargeSource::Token(token),
                },
            };
            let answer = match this.inner.charge_breaker.try_acquire() {
                Some(permit) => {
                    let answer = this
                        .inner
                        .gateway
                        .create_charge(&row.id, &params, this.inner.settings.processor_timeout)
                        .await;
                    this.inner.charge_breaker.record(
                        permit,
                        answer.as_ref().is_err_and(ProcessorError::is_failure),
                    );
                    answer
                }
                // Opened since `charge` looked: the row stays PENDING, nothing was sent.
                None => Err(ProcessorError::CircuitOpen),
            };
            match answer {
                Ok(outcome) => this.settle(&row.id, &outcome).await,
                Err(source) => {
                    tracing::warn!(payment = %row.id, error = %source, "charge left PENDING");
                    metrics::counter!("payment_charges_pending_total").increment(1);
                    this.inner
                        .store
                        .release(store::Leased::Payment, &row.id, store::now())
                        .await?;
                    Err(Error::ChargePending {
                        payment_id: row.id,
                        source,
                    })
                }
            }
        }))
        .await?
    }

    async fn settle(&self, id: &str, outcome: &ChargeOutcome) -> Result<PaymentRow, Error> {
        let (status, code, charge_id) = outcome_fields(outcome);
        if let Some(row) = self
            .inner
            .store
            .settle_payment(
                id,
                status,
                code,
                charge_id,
                outcome.card().map(|c| (c.brand.as_str(), c.last4.as_str())),
                store::now(),
            )
            .await?
        {
            metrics::counter!("payment_charges_total", "status" => status.as_str()).increment(1);
            tracing::info!(payment = %id, status = status.as_str(), code, "payment settled");
            if row.async_checkout {
                // Its event was committed with it: publish it now rather than at the next poll.
                self.wake_relay();
            }
            return Ok(row);
        }
        self.payment(id).await
    }

    /// Settles one PENDING payment from the gateway's records (found by the payment id,
    /// which was the gateway Idempotency-Key). Returns the payment, settled or still pending.
    pub async fn reconcile_payment(&self, id: &str) -> Result<PaymentRow, Error> {
        let row = self.payment(id).await?;
        if row.status() != Status::Pending {
            return Ok(row);
        }
        let now = store::now();
        if !self
            .inner
            .store
            .claim(
                store::Leased::Payment,
                id,
                now,
                store::later(now, self.lease()),
            )
            .await?
        {
            // Another request is talking to the gateway about it right now.
            return Ok(row);
        }
        let found = self
            .inner
            .gateway
            .find_charge(id, self.inner.settings.processor_timeout)
            .await;
        let by_token = if row.async_checkout {
            crate::checkout::token_charge(&row)
        } else {
            None
        };
        let settled = match (found, by_token) {
            (Ok(Some(charge)), _) => {
                self.settle(id, &ChargeOutcome::from_charge(&charge))
                    .await?
            }
            // An asynchronous checkout's charge that never reached the card processor (it was
            // down, or the answer was an injected failure): charge the token now, under the
            // same key, instead of failing a checkout that is still waiting for its payment.
            (Ok(None), Some(charge)) => match self.drive_charge(row, charge).await {
                Ok(settled) => settled,
                Err(Error::ChargePending { .. }) => return self.payment(id).await,
                Err(e) => return Err(e),
            },
            // No request with this key ever executed: no money moved.
            (Ok(None), None) => {
                self.settle(
                    id,
                    &ChargeOutcome::Rejected {
                        code: NOT_CHARGED_CODE.to_owned(),
                    },
                )
                .await?
            }
            (Err(e), _) => {
                tracing::info!(payment = %id, error = %e, "reconcile: gateway has no answer yet");
                self.inner
                    .store
                    .release(store::Leased::Payment, id, store::now())
                    .await?;
                return self.payment(id).await;
            }
        };
        metrics::counter!("payment_reconciled_total", "status" => settled.status().as_str())
            .increment(1);
        // A chained checkout's reservation is left as it is: user-service's checkout recovery
        // commits or releases it from this outcome, together with the order record.
        Ok(settled)
    }

    /// Commits (SUCCEEDED) or releases (DECLINED, FAILED) a chained checkout's reservation,
    /// on ChainedCharge's own path only (reconciling never does).
    /// Best effort: both are idempotent, and an uncommitted reservation expires by itself.
    pub async fn finish_reservation(
        &self,
        payment: &PaymentRow,
        ctx: &CallContext,
    ) -> Option<tonic::Status> {
        let reservation_id = payment.reservation_id.clone()?;
        let cap = Some(self.inner.settings.item_timeout);
        let mut items = self.items();
        let res = match payment.status() {
            Status::Succeeded => items
                .commit_reservation(ctx.request(CommitReservationRequest { reservation_id }, cap))
                .await
                .map(drop),
            Status::Declined | Status::Failed => items
                .release_reservation(ctx.request(ReleaseReservationRequest { reservation_id }, cap))
                .await
                .map(drop),
            Status::Pending | Status::Refunded => Ok(()),
        };
        match res {
            Ok(()) => None,
            Err(s) => {
                tracing::warn!(payment = %payment.id, code = ?s.code(), message = s.message(), "settling the reservation failed");
                Some(s)
            }
        }
    }

    /// Reconciles every PENDING payment and refund left alone for longer than the gateway
    /// timeout plus a second.
    pub async fn reconcile_pending(&self) -> Result<Vec<PaymentRow>, Error> {
        let now = store::now();
        let before = store::earlier(
            now,
            self.inner.settings.processor_timeout + Duration::from_secs(1),
        );
        let ids = self
            .inner
            .store
            .stale_pending(store::Leased::Payment, before, now, 100)
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.reconcile_payment(&id).await {
                Ok(p) => out.push(p),
                Err(e) => {
                    tracing::warn!(payment = %id, error = %platform::telemetry::chain(&e), "reconcile failed")
                }
            }
        }
        let refunds = self
            .inner
            .store
            .stale_pending(store::Leased::Refund, before, now, 100)
            .await?;
        for id in refunds {
            if let Err(e) = self.reconcile_refund(&id).await {
                tracing::info!(refund = %id, error = %platform::telemetry::chain(&e), "refund still pending");
            }
        }
        Ok(out)
    }

    /// Drops idempotency keys older than the retention time, and outbox events published
    /// that long ago.
    pub async fn purge_keys(&self) -> Result<u64, Error> {
        let before = store::earlier(store::now(), self.inner.settings.idempotency_ttl);
        let keys = self.inner.store.purge_keys(before).await?;
        Ok(keys + self.inner.outbox.purge_published(before).await?)
    }

    /// Refunds once per idempotency key, never more than is left.
    pub async fn refund(
        &self,
        cmd: RefundCommand,
        ctx: &CallContext,
    ) -> Result<(RefundRow, PaymentRow), Error> {
        let now = store::now();
        let id = Uuid::now_v7().to_string();
        let payment_id = cmd.payment_id.to_string();
        let new = NewRefund {
            id: &id,
            key: cmd.key.as_str(),
            fingerprint: cmd.fingerprint,
            payment_id: &payment_id,
            amount: cmd.amount.map(|m| (m.amount_minor(), m.currency().code())),
            now,
            lease_until: store::later(now, self.lease()),
        };
        match self.inner.store.begin_refund(&new).await? {
            RefundStart::PaymentNotFound => Err(Error::PaymentNotFound(payment_id)),
            RefundStart::NotRefundable(status) => Err(Error::NotRefundable {
                payment_id,
                status: status.as_str().to_owned(),
            }),
            RefundStart::CurrencyMismatch { payment_currency } => {
                Err(Error::CurrencyMismatch { payment_currency })
            }
            RefundStart::TooLarge { left, currency } => {
                Err(Error::RefundTooLarge { left, currency })
            }
            RefundStart::Claimed(Claim::New(row)) => self.drive_refund(row).await,
            RefundStart::Claimed(Claim::Existing {
                fingerprint,
                resource_id,
            }) => {
                if fingerprint[..] != cmd.fingerprint[..] {
                    return Err(Error::KeyReused {
                        key: cmd.key.as_str().to_owned(),
                    });
                }
                metrics::counter!("payment_idempotent_replays_total", "kind" => "refund")
                    .increment(1);
                self.follow_refund(&resource_id, cmd.key.as_str(), ctx)
                    .await
            }
        }
    }

    async fn refund_row(&self, id: &str) -> Result<RefundRow, Error> {
        self.inner
            .store
            .refund(id)
            .await?
            .ok_or(Error::Database(sqlx::Error::RowNotFound))
    }

    async fn follow_refund(
        &self,
        id: &str,
        key: &str,
        ctx: &CallContext,
    ) -> Result<(RefundRow, PaymentRow), Error> {
        let give_up = self.give_up_at(ctx);
        let mut poll = Duration::from_millis(10);
        loop {
            let row = self.refund_row(id).await?;
            match row.status() {
                RefundStatus::Succeeded => {
                    let payment = self.payment(&row.payment_id).await?;
                    return Ok((row, payment));
                }
                RefundStatus::Failed => {
                    return Err(Error::RefundRejected {
                        code: row.failure_code,
                    });
                }
                RefundStatus::Pending => {}
            }
            if self
                .try_lease(store::Leased::Refund, id, row.locked_until)
                .await?
            {
                return self.drive_refund(row).await;
            }
            if Instant::now() + poll >= give_up {
                return Err(Error::InProgress {
                    key: key.to_owned(),
                });
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(Duration::from_millis(100));
        }
    }

    async fn drive_refund(&self, row: RefundRow) -> Result<(RefundRow, PaymentRow), Error> {
        let this = self.clone();
        tokio::spawn(platform::timing::carry(async move {
            let payment = this.payment(&row.payment_id).await?;
            let answer = this
                .inner
                .gateway
                .create_refund(
                    &row.id,
                    &payment.gateway_charge_id,
                    row.amount_minor,
                    this.inner.settings.processor_timeout,
                )
                .await;
            let store = &this.inner.store;
            match answer {
                Ok(RefundOutcome::Succeeded { refund_id }) => {
                    store
                        .refund_succeeded(&row.id, &refund_id, store::now())
                        .await?;
                    metrics::counter!("payment_refunds_total", "status" => "SUCCEEDED")
                        .increment(1);
                    Ok((
                        this.refund_row(&row.id).await?,
                        this.payment(&row.payment_id).await?,
                    ))
                }
                Ok(RefundOutcome::Rejected { code }) => {
                    store.refund_failed(&row, &code, store::now()).await?;
                    metrics::counter!("payment_refunds_total", "status" => "FAILED").increment(1);
                    Err(Error::RefundRejected { code })
                }
                Err(source) => {
                    tracing::warn!(refund = %row.id, error = %source, "refund left PENDING");
                    store
                        .release(store::Leased::Refund, &row.id, store::now())
                        .await?;
                    Err(Error::RefundPending {
                        refund_id: row.id,
                        source,
                    })
                }
            }
        }))
        .await?
    }

    /// Re-sends a PENDING refund with its own Idempotency-Key: the gateway replays or executes.
    async fn reconcile_refund(&self, id: &str) -> Result<(), Error> {
        let now = store::now();
        if !self
            .inner
            .store
            .claim(
                store::Leased::Refund,
                id,
                now,
                store::later(now, self.lease()),
            )
            .await?
        {
            return Ok(());
        }
        let row = self.refund_row(id).await?;
        self.drive_refund(row).await.map(drop)
    }
}
