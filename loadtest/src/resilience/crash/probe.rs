//! What became of one checkout, read through the services' own gRPC read APIs: the order
//! (checkout record) in user-service, the payment in payment-service, the reservation in
//! item-service; and which of the three acceptable endings it reached, if any.

use std::{fmt, time::Duration};

use serde::Serialize;
use shop_proto::{
    item::v1::{self as item, item_service_client::ItemServiceClient},
    payment::v1::{self as pay, payment_service_client::PaymentServiceClient},
    user::v1::{self as user, user_service_client::UserServiceClient},
};
use tonic::Code;
use uuid::Uuid;

use crate::generator::scenario::grpc_channel;

/// One checkout the test started: enough to find every trace it left.
#[derive(Debug, Clone, Serialize)]
pub struct CheckoutRef {
    pub user_id: Uuid,
    pub key: String,
    /// An asynchronous checkout: its reservation is named by the order id.
    pub asynchronous: bool,
}

impl CheckoutRef {
    pub fn order_id(&self) -> Uuid {
        platform::ids::order_id_for(self.user_id, &self.key)
    }
    /// The reservation id and the charge's idempotency key.
    pub fn scoped(&self) -> String {
        platform::ids::scoped_key(self.user_id, &self.key)
    }
    /// The reservation's id: the scoped key, or for an asynchronous checkout the order id.
    pub fn reservation_id(&self) -> String {
        if self.asynchronous {
            self.order_id().to_string()
        } else {
            self.scoped()
        }
    }
}

/// The three stores' view of one checkout (None: nothing there, or not readable now).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Observed {
    /// Order status name (e.g. "PLACED"), "none" when user-service has no order.
    pub order: Option<String>,
    /// Payment status name, "none" when payment-service has no payment for the order.
    pub payment: Option<String>,
    /// Minor units refunded of the payment, and its amount.
    pub refunded: Option<(i64, i64)>,
    /// Reservation status name, "none" when item-service has none.
    pub reservation: Option<String>,
}

impl fmt::Display for Observed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |o: &Option<String>| o.clone().unwrap_or_else(|| "unreadable".into());
        write!(f, "order {}, payment {}", s(&self.order), s(&self.payment))?;
        if let Some((r, a)) = self.refunded
            && r > 0
        {
            write!(f, " ({r}/{a} refunded)")?;
        }
        write!(f, ", reservation {}", s(&self.reservation))
    }
}

/// The endings the issue accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// Paid, stock committed, order placed.
    Placed,
    /// The charge was refunded and the stock released; no order.
    RefundedReleased,
    /// Nothing was charged; the stock released (or never reserved); no order.
    NeverCharged,
}

impl Ending {
    pub fn name(self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::RefundedReleased => "refunded+released",
            Self::NeverCharged => "never charged",
        }
    }
}

impl Observed {
    /// The ending this state is, or why it is none (yet).
    pub fn ending(&self) -> Result<Ending, String> {
        let (Some(order), Some(payment), Some(reservation)) =
            (&self.order, &self.payment, &self.reservation)
        else {
            return Err(format!("not every store answered: {self}"));
        };
        let no_order = order == "none" || order.contains("CANCELLED");
        let stock_back = matches!(reservation.as_str(), "none" | "RELEASED" | "REJECTED");
        let fully_refunded = payment == "REFUNDED"
            || self
                .refunded
                .is_some_and(|(r, a)| a > 0 && r >= a && payment != "PENDING");
        match (order.as_str(), payment.as_str(), reservation.as_str()) {
            ("PLACED", "SUCCEEDED", "COMMITTED") if self.refunded.is_none_or(|(r, _)| r == 0) => {
                Ok(Ending::Placed)
            }
            _ if no_order && stock_back && fully_refunded => Ok(Ending::RefundedReleased),
            (_, "none" | "DECLINED" | "FAILED", _) if no_order && stock_back => {
                Ok(Ending::NeverCharged)
            }
            _ => Err(self.to_string()),
        }
    }
}

/// Clients of the three services' read APIs.
#[derive(Clone)]
pub struct Probe {
    user_url: String,
    item_url: String,
    payment_url: String,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(3);

fn strip(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_owned()
}

impl Probe {
    pub fn new(user_url: String, item_url: String, payment_url: String) -> Self {
        Self {
            user_url,
            item_url,
            payment_url,
        }
    }

    /// Reads the three stores; a service that is down leaves its part None.
    pub async fn observe(&self, c: &CheckoutRef) -> Observed {
        let (order, (payment, refunded), reservation) =
            tokio::join!(self.order(c), self.payment(c), self.reservation(c));
        Observed {
            order,
            payment,
            refunded,
            reservation,
        }
    }

    pub async fn order(&self, c: &CheckoutRef) -> Option<String> {
        let call = async {
            let mut cl = UserServiceClient::new(grpc_channel(&self.user_url).await.ok()?);
            match cl
                .get_order(user::GetOrderRequest {
                    order_id: c.order_id().to_string(),
                    user_id: c.user_id.to_string(),
                })
                .await
            {
                Ok(r) => Some(match r.into_inner().order {
                    Some(o) => match user::OrderStatus::try_from(o.status) {
                        Ok(s) => strip(s.as_str_name(), "ORDER_STATUS_"),
                        Err(_) => format!("status#{}", o.status),
                    },
                    None => "none".into(),
                }),
                Err(s) if s.code() == Code::NotFound => Some("none".into()),
                Err(_) => None,
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .ok()
            .flatten()
    }

    /// The payment of this checkout's order (status name, (refunded, amount)).
    pub async fn payment(&self, c: &CheckoutRef) -> (Option<String>, Option<(i64, i64)>) {
        let call = async {
            let mut cl = PaymentServiceClient::new(grpc_channel(&self.payment_url).await.ok()?);
            let order_id = c.order_id().to_string();
            let mut token = String::new();
            loop {
                let page = cl
                    .list_payments(pay::ListPaymentsRequest {
                        user_id: c.user_id.to_string(),
                        page: Some(shop_proto::common::v1::PageRequest {
                            page_size: 100,
                            page_token: token.clone(),
                        }),
                    })
                    .await
                    .ok()?
                    .into_inner();
                if let Some(p) = page.payments.iter().find(|p| p.order_id == order_id) {
                    let minor = |m: &Option<shop_proto::common::v1::Money>| {
                        m.as_ref().map_or(0, |m| m.amount_minor)
                    };
                    return Some((
                        strip(p.status().as_str_name(), "PAYMENT_STATUS_"),
                        Some((minor(&p.amount_refunded), minor(&p.amount))),
                    ));
                }
                match page.page.map(|p| p.next_page_token) {
                    Some(t) if !t.is_empty() => token = t,
                    _ => return Some(("none".into(), None)),
                }
            }
        };
        match tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .ok()
            .flatten()
        {
            Some((s, r)) => (Some(s), r),
            None => (None, None),
        }
    }

    pub async fn reservation(&self, c: &CheckoutRef) -> Option<String> {
        let call = async {
            let mut cl = ItemServiceClient::new(grpc_channel(&self.item_url).await.ok()?);
            match cl
                .get_reservation(item::GetReservationRequest {
                    reservation_id: c.reservation_id(),
                })
                .await
            {
                Ok(r) => Some(match r.into_inner().reservation {
                    Some(r) => strip(r.status().as_str_name(), "RESERVATION_STATUS_"),
                    None => "none".into(),
                }),
                Err(s) if s.code() == Code::NotFound => Some("none".into()),
                Err(_) => None,
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .ok()
            .flatten()
    }

    /// Releases the checkout's reservation (what item-service's sweeper does on expiry).
    pub async fn release_reservation(&self, c: &CheckoutRef) -> anyhow::Result<String> {
        let mut cl = ItemServiceClient::new(grpc_channel(&self.item_url).await?);
        let r = cl
            .release_reservation(item::ReleaseReservationRequest {
                reservation_id: c.reservation_id(),
            })
            .await?
            .into_inner();
        Ok(r.reservation.map_or_else(
            || "none".into(),
            |r| strip(r.status().as_str_name(), "RESERVATION_STATUS_"),
        ))
    }

    /// Polls until the checkout reached an acceptable ending or `limit` passed; returns the
    /// ending (or the last state seen) and how long it took.
    pub async fn settle(
        &self,
        c: &CheckoutRef,
        limit: Duration,
    ) -> (Result<Ending, String>, Observed, Duration) {
        let start = std::time::Instant::now();
        loop {
            let seen = self.observe(c).await;
            let ending = seen.ending();
            if ending.is_ok() || start.elapsed() >= limit {
                return (ending, seen, start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(order: &str, payment: &str, refunded: i64, reservation: &str) -> Observed {
        Observed {
            order: Some(order.into()),
            payment: Some(payment.into()),
            refunded: (payment != "none").then_some((refunded, 100)),
            reservation: Some(reservation.into()),
        }
    }

    #[test]
    fn endings() {
        assert_eq!(
            seen("PLACED", "SUCCEEDED", 0, "COMMITTED").ending(),
            Ok(Ending::Placed)
        );
        assert_eq!(
            seen("none", "REFUNDED", 100, "RELEASED").ending(),
            Ok(Ending::RefundedReleased)
        );
        assert_eq!(
            seen("CANCELLED", "REFUNDED", 100, "none").ending(),
            Ok(Ending::RefundedReleased)
        );
        assert_eq!(
            seen("none", "none", 0, "RELEASED").ending(),
            Ok(Ending::NeverCharged)
        );
        assert_eq!(
            seen("CANCELLED", "FAILED", 0, "none").ending(),
            Ok(Ending::NeverCharged)
        );
        // The reproduction: charged, stock back, no order.
        assert!(seen("none", "SUCCEEDED", 0, "RELEASED").ending().is_err());
        // Still in flight.
        assert!(
            seen("PENDING", "SUCCEEDED", 0, "RESERVED")
                .ending()
                .is_err()
        );
        assert!(seen("none", "PENDING", 0, "RELEASED").ending().is_err());
        // Stock committed for money given back.
        assert!(seen("none", "REFUNDED", 100, "COMMITTED").ending().is_err());
        let mut unknown = seen("PLACED", "SUCCEEDED", 0, "COMMITTED");
        unknown.reservation = None;
        assert!(unknown.ending().is_err());
    }
}
