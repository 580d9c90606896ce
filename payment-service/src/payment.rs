//! Payments and refunds as stored, and their wire forms.

use prost_types::Timestamp;
use shop_proto::{common::v1::Money as PbMoney, payment::v1 as pb};
use time::PrimitiveDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Succeeded,
    Declined,
    Failed,
    Refunded,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Succeeded => "SUCCEEDED",
            Self::Declined => "DECLINED",
            Self::Failed => "FAILED",
            Self::Refunded => "REFUNDED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "PENDING" => Self::Pending,
            "SUCCEEDED" => Self::Succeeded,
            "DECLINED" => Self::Declined,
            "FAILED" => Self::Failed,
            "REFUNDED" => Self::Refunded,
            _ => return None,
        })
    }

    fn to_pb(self) -> pb::PaymentStatus {
        match self {
            Self::Pending => pb::PaymentStatus::Pending,
            Self::Succeeded => pb::PaymentStatus::Succeeded,
            Self::Declined => pb::PaymentStatus::Declined,
            Self::Failed => pb::PaymentStatus::Failed,
            Self::Refunded => pb::PaymentStatus::Refunded,
        }
    }
}

/// A `payments` row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PaymentRow {
    pub id: String,
    pub idempotency_key: String,
    pub user_id: String,
    pub order_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub amount_refunded_minor: i64,
    pub status: String,
    pub decline_code: String,
    pub card_brand: String,
    pub card_last4: String,
    pub gateway_charge_id: String,
    pub reservation_id: Option<String>,
    /// A payment of the asynchronous checkout (its settlement writes its event).
    pub async_checkout: bool,
    /// The asynchronous checkout's card token (never a card number).
    pub card_token: Option<String>,
    /// W3C trace context of the event that asked for the payment.
    pub traceparent: Option<String>,
    pub locked_until: Option<PrimitiveDateTime>,
    pub created_at: PrimitiveDateTime,
    pub updated_at: PrimitiveDateTime,
}

impl PaymentRow {
    /// Unknown strings read as PENDING: the safe reading (reconcile asks the gateway).
    pub fn status(&self) -> Status {
        Status::parse(&self.status).unwrap_or(Status::Pending)
    }

    pub fn to_pb(&self) -> pb::Payment {
        pb::Payment {
            payment_id: self.id.clone(),
            user_id: self.user_id.clone(),
            order_id: self.order_id.clone(),
            amount: Some(money(self.amount_minor, &self.currency)),
            amount_refunded: Some(money(self.amount_refunded_minor, &self.currency)),
            status: self.status().to_pb().into(),
            decline_code: self.decline_code.clone(),
            card_brand: self.card_brand.clone(),
            card_last4: self.card_last4.clone(),
            gateway_charge_id: self.gateway_charge_id.clone(),
            created_at: Some(timestamp(self.created_at)),
            updated_at: Some(timestamp(self.updated_at)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundStatus {
    Pending,
    Succeeded,
    Failed,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
        }
    }
}

/// A `refunds` row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RefundRow {
    pub id: String,
    pub payment_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: String,
    pub failure_code: String,
    pub gateway_refund_id: String,
    pub locked_until: Option<PrimitiveDateTime>,
    pub created_at: PrimitiveDateTime,
    pub updated_at: PrimitiveDateTime,
}

impl RefundRow {
    pub fn status(&self) -> RefundStatus {
        match self.status.as_str() {
            "SUCCEEDED" => RefundStatus::Succeeded,
            "FAILED" => RefundStatus::Failed,
            _ => RefundStatus::Pending,
        }
    }

    pub fn to_pb(&self) -> pb::Refund {
        pb::Refund {
            refund_id: self.id.clone(),
            payment_id: self.payment_id.clone(),
            amount: Some(money(self.amount_minor, &self.currency)),
            gateway_refund_id: self.gateway_refund_id.clone(),
            created_at: Some(timestamp(self.created_at)),
        }
    }
}

fn money(amount_minor: i64, currency: &str) -> PbMoney {
    PbMoney {
        amount_minor,
        currency: currency.to_owned(),
    }
}

pub fn timestamp(t: PrimitiveDateTime) -> Timestamp {
    let t = t.assume_utc();
    Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    }
}
