//! payment-service's part of the asynchronous checkout (`platform::events::checkout`): on
//! `stock.reserved` it charges the order's card token and announces the outcome with
//! `payment.succeeded` or `payment.declined`.
//!
//! The charge takes the synchronous path's steps: the payment is recorded PENDING under a
//! key derived from the order (payments.order_id is unique, so an order is charged at most
//! once), the card gateway is asked with the payment id as its Idempotency-Key, and the
//! settlement writes the payment's final state and its event in one transaction
//! (`Store::settle_payment`), whoever settles it: this consumer or the reconciler.
//!
//! A redelivered `stock.reserved` finds the payment: settled, it makes sure the event is in
//! the outbox and answers Duplicate (no second card call); PENDING, it asks the card gateway
//! again under the same key if nobody else is (the gateway replays or executes once), else
//! it is delivered again later. While the card gateway is down the events wait in the
//! stream (Retry), and the checkouts complete when it is back: through a redelivery, or
//! the reconciler, which charges the stored token of an asynchronous payment whose charge
//! never reached the card gateway (so even an event parked after its many attempts is paid).

use std::time::Duration;

use platform::{
    checkout_failure::CheckoutFailure,
    events::{
        ConsumerSpec, Envelope, EventTasks, HandlerError, Outcome,
        checkout::{self, PAYMENT_DECLINED, PAYMENT_SUCCEEDED, PaymentSucceeded, Refusal},
    },
    identity::PAYMENT_SERVICE,
    money::{Currency, Money},
};
use uuid::Uuid;

use crate::{
    fingerprint,
    outbox::MySqlOutbox,
    payment::{PaymentRow, Status},
    service::{Payments, ProcessorCharge, Source},
    store::{self, AsyncCheckout, ChargeStart, Claim, NewPayment},
};

/// The durable consumer of `stock.reserved`. A card gateway that is down makes every event
/// fail transiently, so retries are spaced and many before an event is parked (and even a
/// parked one completes: the reconciler charges the stored token).
pub fn consumer_spec() -> ConsumerSpec {
    ConsumerSpec {
        retry_delay: Duration::from_secs(1),
        max_attempts: 300,
        ..ConsumerSpec::new(PAYMENT_SERVICE, checkout::STOCK_RESERVED)
    }
}

/// `tasks` with the `stock.reserved` consumer, each event handled by `payments`.
pub(crate) fn consumers(
    tasks: EventTasks<MySqlOutbox>,
    payments: &Payments,
) -> EventTasks<MySqlOutbox> {
    let payments = payments.clone();
    tasks.consume("stock.reserved consumer", consumer_spec(), move |event| {
        let payments = payments.clone();
        async move { payments.on_stock_reserved(&event).await }
    })
}

/// The idempotency key of an order's asynchronous charge.
pub fn idempotency_key(order_id: &str) -> String {
    format!("checkout:{order_id}")
}

/// The event announcing a settled payment (None while PENDING): `payment.succeeded`, or
/// `payment.declined` with reason CARD_DECLINED on `card`.
pub fn event_of(row: &PaymentRow) -> Option<Envelope> {
    let traceparent = row.traceparent.clone();
    let built = match row.status() {
        Status::Pending => return None,
        Status::Succeeded | Status::Refunded => checkout::envelope(
            PAYMENT_SUCCEEDED,
            &row.order_id,
            &PaymentSucceeded {
                order_id: row.order_id.clone(),
                payment_id: row.id.clone(),
                amount_cents: row.amount_minor,
                currency: row.currency.clone(),
            },
            traceparent,
        ),
        status @ (Status::Declined | Status::Failed) => checkout::envelope(
            PAYMENT_DECLINED,
            &row.order_id,
            &Refusal {
                order_id: row.order_id.clone(),
                failure: if status == Status::Declined {
                    CheckoutFailure::CardDeclined
                } else {
                    CheckoutFailure::PaymentFailed
                },
                field: Some("card".into()),
                message: if status == Status::Declined {
                    format!("the card was declined ({})", row.decline_code)
                } else {
                    format!("the card could not be charged ({})", row.decline_code)
                },
            },
            traceparent,
        ),
    };
    // The kinds are constants and the data plain structs: building cannot fail.
    built.ok()
}

/// What charging an asynchronous checkout's payment sends the card gateway: its token.
pub fn token_charge(row: &PaymentRow) -> Option<ProcessorCharge> {
    Some(ProcessorCharge {
        currency: Currency::parse(&row.currency)?,
        description: format!("order {}", row.order_id),
        source: Source::Token(row.card_token.clone()?),
    })
}

/// A `stock.reserved` that passed the checks.
struct Request {
    user_id: Uuid,
    order_id: Uuid,
    amount: Money,
    card_token: String,
}

/// Why an order cannot be paid whatever happens later: (field, message).
type Invalid = (&'static str, String);

fn retry(e: impl std::error::Error + Send + Sync + 'static) -> HandlerError {
    HandlerError::Retry(Box::new(e))
}

impl Payments {
    /// Applies one `stock.reserved` event (the consumer's handler).
    pub async fn on_stock_reserved(&self, event: &Envelope) -> Result<Outcome, HandlerError> {
        let data: checkout::StockReserved = checkout::data(event).map_err(|e| {
            HandlerError::Reject(format!(
                "not a stock.reserved: {}",
                platform::telemetry::chain(&e)
            ))
        })?;
        // Without an order id of the contract's form there is no order to answer.
        let order_id = Uuid::parse_str(&data.order_id).map_err(|_| {
            HandlerError::Reject(format!(
                "stock.reserved: order_id {:?} is not a UUID",
                data.order_id
            ))
        })?;
        let request = match self.check(&data, order_id) {
            Ok(r) => r,
            Err((field, message)) => {
                return self
                    .refuse(&data.order_id, field, message, event.traceparent.clone())
                    .await;
            }
        };
        let store = self.store();
        if let Some(existing) = store
            .payment_by_order(&data.order_id)
            .await
            .map_err(retry)?
        {
            return self.follow_up(existing).await;
        }
        // Recorded even while the card-gateway breaker is open (the charge then waits): once
        // the PENDING payment exists with its token, the reconciler completes it whatever
        // becomes of this event.
        let key = idempotency_key(&data.order_id);
        let id = Uuid::now_v7().to_string();
        let (user_id, order) = (request.user_id.to_string(), request.order_id.to_string());
        let now = store::now();
        let new = NewPayment {
            id: &id,
            key: &key,
            fingerprint: fingerprint::token_charge(
                &key,
                request.user_id,
                request.order_id,
                request.amount,
                &request.card_token,
            ),
            user_id: &user_id,
            order_id: &order,
            amount_minor: request.amount.amount_minor(),
            currency: request.amount.currency().code(),
            // Not known before the processor answers (settling fills them in from the
            // charge); the token stands for the card.
            card_brand: "unknown",
            card_last4: "",
            // item-service settles the reservation on order.completed / order.cancelled.
            reservation_id: None,
            checkout: Some(AsyncCheckout {
                card_token: &request.card_token,
                traceparent: event.traceparent.as_deref(),
            }),
            now,
            lease_until: store::later(now, self.lease()),
        };
        match store.begin_charge(&new).await.map_err(retry)? {
            ChargeStart::Claimed(Claim::New(row)) => self.charge_token(row).await,
            ChargeStart::OrderPaid(row) => self.follow_up(row).await,
            // The derived key names this order's payment (made by a concurrent delivery).
            ChargeStart::Claimed(Claim::Existing { resource_id, .. }) => {
                match store.payment(&resource_id).await.map_err(retry)? {
                    Some(row) => self.follow_up(row).await,
                    None => Err(HandlerError::Retry(
                        "the order's payment is being recorded".into(),
                    )),
                }
            }
        }
    }

    fn check(&self, data: &checkout::StockReserved, order_id: Uuid) -> Result<Request, Invalid> {
        let user_id =
            Uuid::parse_str(&data.user_id).map_err(|_| ("user_id", "must be a UUID".to_owned()))?;
        let currency = Currency::parse(&data.currency)
            .ok_or_else(|| ("currency", format!("unknown currency {:?}", data.currency)))?;
        let max = self.settings().max_amount_minor;
        if !(1..=max).contains(&data.amount_cents) {
            return Err((
                "amount_cents",
                format!("must be between 1 and {max} minor units"),
            ));
        }
        let amount =
            Money::new(data.amount_cents, currency).map_err(|e| ("amount_cents", e.to_string()))?;
        let token = &data.card_token;
        if token.is_empty() || token.len() > 255 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err((
                "card_token",
                "must be a card token from the card processor".to_owned(),
            ));
        }
        Ok(Request {
            user_id,
            order_id,
            amount,
            card_token: token.clone(),
        })
    }

    /// An order that can never be paid as asked: `payment.declined` on the field, no
    /// payment, no card call.
    async fn refuse(
        &self,
        order_id: &str,
        field: &str,
        message: String,
        traceparent: Option<String>,
    ) -> Result<Outcome, HandlerError> {
        tracing::warn!(order = %order_id, field, %message, "stock.reserved cannot be paid");
        let event = checkout::envelope(
            PAYMENT_DECLINED,
            order_id,
            &Refusal {
                order_id: order_id.to_owned(),
                failure: CheckoutFailure::InvalidOrder,
                field: Some(field.to_owned()),
                message,
            },
            traceparent,
        )
        .map_err(|e| HandlerError::Reject(e.to_string()))?;
        if self.outbox().ensure(&event).await.map_err(retry)? {
            self.wake_relay();
            Ok(Outcome::Applied)
        } else {
            Ok(Outcome::Duplicate)
        }
    }

    /// The order already has a payment: settled, its event (again, idempotently); PENDING,
    /// the card gateway asked again under the same key unless someone else is asking.
    async fn follow_up(&self, row: PaymentRow) -> Result<Outcome, HandlerError> {
        if row.status() != Status::Pending {
            if let Some(event) = event_of(&row)
                && self.outbox().ensure(&event).await.map_err(retry)?
            {
                self.wake_relay();
            }
            metrics::counter!("payment_idempotent_replays_total", "kind" => "checkout_event")
                .increment(1);
            return Ok(Outcome::Duplicate);
        }
        if row.async_checkout && self.lease_payment(&row).await.map_err(retry)? {
            return self.charge_token(row).await;
        }
        Err(HandlerError::Retry(
            "the order's payment is PENDING: its card outcome is not known yet".into(),
        ))
    }

    /// Charges a PENDING payment's token (its lease held); Applied once it is settled, with
    /// its event committed alongside.
    async fn charge_token(&self, row: PaymentRow) -> Result<Outcome, HandlerError> {
        let Some(charge) = token_charge(&row) else {
            return Err(HandlerError::Reject(format!(
                "payment {} has no card token",
                row.id
            )));
        };
        match self.drive_charge(row, charge).await {
            Ok(row) if row.status() != Status::Pending => Ok(Outcome::Applied),
            Ok(row) => Err(HandlerError::Retry(
                format!("payment {} is still PENDING", row.id).into(),
            )),
            Err(e) => Err(retry(e)),
        }
    }
}
