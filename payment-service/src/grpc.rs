//! `shop.payment.v1.PaymentService`: parses requests into commands at the edge and hands
//! them to [`Payments`].

use std::{sync::Arc, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use platform::{
    CallContext, FieldError, events::EventTasks, identity::Caller, money::Money, paging::Page,
};
use shop_proto::{
    common::v1::PageResponse,
    payment::v1::{self as pb, payment_service_server as rpc},
};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    access,
    card::Card,
    chained, compensation, fingerprint,
    ids::{self, IdempotencyKey},
    outbox::MySqlOutbox,
    service::{ChargeCommand, Payments, RefundCommand},
};

/// payment-service's gRPC implementation, ready to be hosted by any process (its own, or
/// the monolith): the payments, and what a host runs besides the server (`app`).
#[derive(Clone)]
pub struct PaymentService {
    pub(crate) payments: Payments,
    pub(crate) reconcile_interval: Duration,
    /// The asynchronous checkout's relay and `stock.reserved` consumer, when an event
    /// stream is configured (shared: each request clones the service).
    pub(crate) events: Option<Arc<EventTasks<MySqlOutbox>>>,
}

/// A positive amount of at most `max` minor units.
pub fn charge_amount(
    value: Option<&shop_proto::common::v1::Money>,
    max: i64,
) -> Result<Money, FieldError> {
    let amount = Money::parse(value, "amount")?;
    if amount.amount_minor() <= 0 {
        return Err(FieldError::new(
            "amount.amount_minor",
            "must be greater than 0",
        ));
    }
    if amount.amount_minor() > max {
        return Err(FieldError::new(
            "amount.amount_minor",
            format!("must be at most {max}"),
        ));
    }
    Ok(amount)
}

const TOKEN_PREFIX: &str = "p1:";

fn encode_token(last_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{TOKEN_PREFIX}{last_id}"))
}

fn decode_token(token: &str) -> Result<String, FieldError> {
    let bad = || FieldError::new("page.page_token", "is not a valid page token");
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let id = raw.strip_prefix(TOKEN_PREFIX).ok_or_else(bad)?;
    Uuid::parse_str(id).map_err(|_| bad())?;
    Ok(id.to_owned())
}

/// Runs a handler to its end in a task of its own. A deadline or a client hanging up drops
/// the handler's future; dropped in the middle of a conversation with MariaDB, it could hand
/// its connection back to the pool inside a transaction nobody knew of (later reads on it saw
/// an old snapshot: a retried Charge of a payment that had succeeded answered NOT_FOUND) or
/// halfway through a packet (the connection then never came back). The caller still gets
/// DEADLINE_EXCEEDED on time; the work finishes, as a retry with the same key expects.
async fn to_completion<T: Send + 'static>(
    work: impl Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(platform::timing::carry(work))
        .await
        .map_err(|e| platform::internal_error("handler task", &e))?
}

#[tonic::async_trait]
impl rpc::PaymentService for PaymentService {
    async fn charge(
        &self,
        request: Request<pb::ChargeRequest>,
    ) -> Result<Response<pb::ChargeResponse>, Status> {
        let this = self.clone();
        to_completion(async move { this.charge_now(request).await }).await
    }

    async fn refund(
        &self,
        request: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::RefundResponse>, Status> {
        let this = self.clone();
        to_completion(async move { this.refund_now(request).await }).await
    }

    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::GetPaymentResponse>, Status> {
        let this = self.clone();
        to_completion(async move { this.get_payment_now(request).await }).await
    }

    async fn list_payments(
        &self,
        request: Request<pb::ListPaymentsRequest>,
    ) -> Result<Response<pb::ListPaymentsResponse>, Status> {
        let this = self.clone();
        to_completion(async move { this.list_payments_now(request).await }).await
    }

    async fn reconcile(
        &self,
        request: Request<pb::ReconcileRequest>,
    ) -> Result<Response<pb::ReconcileResponse>, Status> {
        let this = self.clone();
        to_completion(async move { this.reconcile_now(request).await }).await
    }

    async fn chained_charge(
        &self,
        request: Request<pb::ChainedChargeRequest>,
    ) -> Result<Response<pb::ChainedChargeResponse>, Status> {
        let this = self.clone();
        to_completion(async move { this.chained_charge_now(request).await }).await
    }
}

impl PaymentService {
    async fn charge_now(
        &self,
        request: Request<pb::ChargeRequest>,
    ) -> Result<Response<pb::ChargeResponse>, Status> {
        let ctx = CallContext::from_request(&request);
        let caller = Caller::of(&request).cloned();
        let r = request.into_inner();
        let key = IdempotencyKey::parse(&r.idempotency_key, "idempotency_key")?;
        let user_id = ids::uuid(&r.user_id, "user_id")?;
        access::charge_for(caller.as_ref(), user_id)?;
        let order_id = ids::uuid(&r.order_id, "order_id")?;
        let amount = charge_amount(r.amount.as_ref(), self.payments.settings().max_amount_minor)?;
        let card = Card::parse(r.card.as_ref(), "card", OffsetDateTime::now_utc())?;
        let description = ids::text(&r.description, "description", 200)?;
        let cmd = ChargeCommand {
            fingerprint: fingerprint::charge(
                key.as_str(),
                user_id,
                order_id,
                amount,
                &card,
                &description,
            ),
            key,
            user_id,
            order_id,
            amount,
            card,
            description,
            reservation_id: None,
        };
        let payment = self.payments.charge(cmd, &ctx).await?;
        Ok(Response::new(pb::ChargeResponse {
            payment: Some(payment.to_pb()),
        }))
    }

    async fn refund_now(
        &self,
        request: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::RefundResponse>, Status> {
        access::refund_by(Caller::of(&request))?;
        let caller = Caller::of(&request).cloned();
        let ctx = CallContext::from_request(&request);
        let r = request.into_inner();
        let payment_id = ids::uuid(&r.payment_id, "payment_id")?;
        let amount = match r.amount.as_ref() {
            None => None,
            Some(m) => Some(charge_amount(Some(m), i64::MAX)?),
        };
        let key = IdempotencyKey::parse(&r.idempotency_key, "idempotency_key")?;
        ids::text(&r.reason, "reason", 200)?;
        if access::is_compensation(caller.as_ref()) {
            let payment = self.payments.payment(&payment_id.to_string()).await?;
            compensation::check(
                &self.payments,
                &ctx,
                &payment,
                amount.is_none(),
                key.as_str(),
            )
            .await?;
        }
        let cmd = RefundCommand {
            fingerprint: fingerprint::refund(key.as_str(), payment_id, amount),
            key,
            payment_id,
            amount,
        };
        let (refund, payment) = self.payments.refund(cmd, &ctx).await?;
        Ok(Response::new(pb::RefundResponse {
            refund: Some(refund.to_pb()),
            payment: Some(payment.to_pb()),
        }))
    }

    async fn get_payment_now(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::GetPaymentResponse>, Status> {
        let r = request.get_ref();
        // Exactly one of the two: a lookup that could mean two things means none.
        let payment = match (r.payment_id.is_empty(), r.order_id.is_empty()) {
            (false, true) => {
                let id = ids::uuid(&r.payment_id, "payment_id")?;
                self.payments.payment(&id.to_string()).await?
            }
            (true, false) => {
                let id = ids::uuid(&r.order_id, "order_id")?;
                self.payments.payment_of_order(&id.to_string()).await?
            }
            (true, true) => {
                return Err(
                    FieldError::new("payment_id", "payment_id or order_id is required").into(),
                );
            }
            (false, false) => {
                return Err(
                    FieldError::new("order_id", "must be empty when payment_id is set").into(),
                );
            }
        };
        access::read_payments_of(Caller::of(&request), &payment.user_id)?;
        Ok(Response::new(pb::GetPaymentResponse {
            payment: Some(payment.to_pb()),
        }))
    }

    async fn list_payments_now(
        &self,
        request: Request<pb::ListPaymentsRequest>,
    ) -> Result<Response<pb::ListPaymentsResponse>, Status> {
        let caller = Caller::of(&request).cloned();
        let r = request.into_inner();
        let user_id = ids::uuid(&r.user_id, "user_id")?;
        access::read_payments_of(caller.as_ref(), &user_id.to_string())?;
        let page = Page::parse(r.page.as_ref())?;
        let after = page.token.as_deref().map(decode_token).transpose()?;
        let mut rows = self
            .payments
            .store()
            .list_payments(&user_id.to_string(), after.as_deref(), page.size + 1)
            .await
            .map_err(crate::error::Error::from)?;
        let more = rows.len() > page.size as usize;
        rows.truncate(page.size as usize);
        let next_page_token = match rows.last() {
            Some(last) if more => encode_token(&last.id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListPaymentsResponse {
            payments: rows.iter().map(|p| p.to_pb()).collect(),
            page: Some(PageResponse { next_page_token }),
        }))
    }

    async fn reconcile_now(
        &self,
        request: Request<pb::ReconcileRequest>,
    ) -> Result<Response<pb::ReconcileResponse>, Status> {
        let r = request.into_inner();
        let payments = if r.payment_id.is_empty() {
            self.payments.reconcile_pending().await?
        } else {
            let id = ids::uuid(&r.payment_id, "payment_id")?;
            vec![self.payments.reconcile_payment(&id.to_string()).await?]
        };
        Ok(Response::new(pb::ReconcileResponse {
            payments: payments.iter().map(|p| p.to_pb()).collect(),
        }))
    }

    async fn chained_charge_now(
        &self,
        request: Request<pb::ChainedChargeRequest>,
    ) -> Result<Response<pb::ChainedChargeResponse>, Status> {
        chained::chained_charge(&self.payments, request)
            .await
            .map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let id = Uuid::now_v7().to_string();
        assert_eq!(decode_token(&encode_token(&id)), Ok(id));
        assert!(decode_token("garbage!").is_err());
        assert!(decode_token(&URL_SAFE_NO_PAD.encode("p1:not-a-uuid")).is_err());
    }
}
