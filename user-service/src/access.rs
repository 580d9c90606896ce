//! Who may call which UserService RPC (checked by the platform's server stack, in its own
//! process and in the monolith alike), and the end-user checks the handlers make where the
//! accounts and orders live.

use platform::{
    identity::{
        Caller, GATEWAY, PAYMENT_SERVICE, USER_SERVICE, UserAssertion, UserRole, authorize_user,
    },
    policy::{Rule, ServicePolicy},
};
use tonic::Status;
use uuid::Uuid;

use crate::domain::Role;

pub const POLICY: ServicePolicy = ServicePolicy {
    service: "shop.user.v1.UserService",
    audience: Some(USER_SERVICE),
    // The gateway talks to user-service; user-scoped calls also carry the user it
    // authenticated, checked against the data by the handlers. payment-service reads an
    // order (no end user) only to confirm a checkout is being cancelled before it gives
    // a compensation refund.
    rules: &[
        Rule {
            method: "Register",
            callers: &[GATEWAY],
        },
        Rule {
            method: "Login",
            callers: &[GATEWAY],
        },
        Rule {
            method: "ValidateToken",
            callers: &[GATEWAY],
        },
        Rule {
            method: "GetUser",
            callers: &[GATEWAY],
        },
        Rule {
            method: "GetOrder",
            callers: &[GATEWAY, PAYMENT_SERVICE],
        },
        Rule {
            method: "ListOrders",
            callers: &[GATEWAY],
        },
        Rule {
            method: "RecordOrder",
            callers: &[GATEWAY],
        },
        Rule {
            method: "BeginCheckout",
            callers: &[GATEWAY],
        },
        Rule {
            method: "AdvanceCheckout",
            callers: &[GATEWAY],
        },
        Rule {
            method: "ChainedCheckout",
            callers: &[GATEWAY],
        },
        Rule {
            method: "RequestCheckout",
            callers: &[GATEWAY],
        },
    ],
};

/// The caller acts for `owner` (or is an admin, or the operator).
pub fn acts_for(caller: Option<&Caller>, owner: Uuid) -> Result<(), Status> {
    authorize_user(caller, owner, &[]).map(|_| ())
}

/// Services that read an order with no end user: payment-service, which gives a refund
/// nobody asked for only for a checkout this service has moved to cancelling.
pub const ORDER_READERS: &[&str] = &[PAYMENT_SERVICE];

/// The caller may read `owner`'s order: acts for them (or is an admin, or the operator),
/// or is one of [`ORDER_READERS`].
pub fn reads_order_of(caller: Option<&Caller>, owner: Uuid) -> Result<(), Status> {
    authorize_user(caller, owner, ORDER_READERS).map(|_| ())
}

/// The end user this service asserts to the next hop after verifying their access token.
pub fn assertion(user: Uuid, role: Role) -> UserAssertion {
    UserAssertion {
        user_id: user,
        role: match role {
            Role::Admin => UserRole::Admin,
            Role::Customer => UserRole::Customer,
        },
    }
}
