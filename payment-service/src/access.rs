//! Who may call which PaymentService RPC (checked by the platform's server stack, in its
//! own process and in the monolith alike), and the end-user checks the handlers make where
//! the payments live.

use platform::{
    identity::{Acting, Caller, GATEWAY, OPERATOR, PAYMENT_SERVICE, USER_SERVICE, authorize_user},
    policy::{Rule, ServicePolicy},
};
use tonic::Status;
use uuid::Uuid;

pub const POLICY: ServicePolicy = ServicePolicy {
    service: "shop.payment.v1.PaymentService",
    audience: Some(PAYMENT_SERVICE),
    rules: &[
        // The orchestrated checkout, for the user it authenticated.
        Rule {
            method: "Charge",
            callers: &[GATEWAY],
        },
        // The gateway's compensation (or an admin's refund); user-service's recovery.
        Rule {
            method: "Refund",
            callers: &[GATEWAY, USER_SERVICE],
        },
        // The chained checkout's middle hop.
        Rule {
            method: "ChainedCharge",
            callers: &[USER_SERVICE],
        },
        // The gateway's order views and checkout record; user-service's chained checkout
        // and its recovery (by order_id, no end user).
        Rule {
            method: "GetPayment",
            callers: &[GATEWAY, USER_SERVICE],
        },
        // A user's payments, for the gateway on the user's behalf (nothing else lists them).
        Rule {
            method: "ListPayments",
            callers: &[GATEWAY],
        },
        // Settling an unknown (PENDING) charge: the gateway's checkout, the recovery.
        Rule {
            method: "Reconcile",
            callers: &[GATEWAY, USER_SERVICE],
        },
    ],
};

/// Services that read payments for their own bookkeeping, with no end user: user-service's
/// checkout recovery.
pub const SYSTEM_READERS: &[&str] = &[USER_SERVICE];

/// A charge is made for the user the caller authenticated, and only for that user (an
/// admin does not pay for somebody else); the operator may charge anyone.
pub fn charge_for(caller: Option<&Caller>, user_id: Uuid) -> Result<(), Status> {
    match authorize_user(caller, user_id, &[])? {
        Acting::Owner => Ok(()),
        Acting::Privileged if caller.is_some_and(|c| c.is(OPERATOR)) => Ok(()),
        _ => Err(Status::permission_denied(
            "user_id: a charge is made only for the user the call is made for",
        )),
    }
}

/// A refund on behalf of an end user needs an admin; without one it is a service's
/// compensation (the allow-list says which services may do that).
pub fn refund_by(caller: Option<&Caller>) -> Result<(), Status> {
    let caller = caller.ok_or_else(|| Status::unauthenticated("no verified caller"))?;
    match (caller.user, caller.admin_user()) {
        (Some(_), None) => Err(Status::permission_denied(
            "a refund on behalf of a user needs an admin account (asserted by the gateway)",
        )),
        _ => Ok(()),
    }
}

/// A refund made by a service for itself (no end user, not the operator): a checkout's
/// compensation, by the gateway's saga or user-service's recovery.
pub fn is_compensation(caller: Option<&Caller>) -> bool {
    caller.is_some_and(|c| c.user.is_none() && !c.is(OPERATOR))
}

/// May the caller see a payment of `owner`?
pub fn read_payments_of(caller: Option<&Caller>, owner: &str) -> Result<(), Status> {
    // A row whose owner is not a UUID belongs to nobody a caller can act for.
    let owner = Uuid::parse_str(owner).unwrap_or_default();
    authorize_user(caller, owner, SYSTEM_READERS).map(|_| ())
}
