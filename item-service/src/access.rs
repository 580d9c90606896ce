//! Who may call which ItemService RPC (checked by the platform's server stack, in its own
//! process and in the monolith alike). Catalog writes also need an admin end user, which
//! the handlers check.

use platform::{
    identity::{GATEWAY, ITEM_SERVICE, PAYMENT_SERVICE, USER_SERVICE},
    policy::{Rule, ServicePolicy},
};

/// Each RPC lists exactly the services whose code calls it: the gateway (browsing, the
/// orchestrated checkout), payment-service (the chained checkout's last hop) and
/// user-service (its checkout recovery, with no end user).
pub const POLICY: ServicePolicy = ServicePolicy {
    service: "shop.item.v1.ItemService",
    audience: Some(ITEM_SERVICE),
    rules: &[
        Rule {
            method: "GetItem",
            callers: &[GATEWAY],
        },
        Rule {
            method: "ListItems",
            callers: &[GATEWAY],
        },
        // Pricing a cart: the gateway, the chained hop, the recovery's order lines.
        Rule {
            method: "BatchGetItems",
            callers: &[GATEWAY, PAYMENT_SERVICE, USER_SERVICE],
        },
        Rule {
            method: "ReserveStock",
            callers: &[GATEWAY, PAYMENT_SERVICE],
        },
        // Only the recovery asks what became of a hold.
        Rule {
            method: "GetReservation",
            callers: &[USER_SERVICE],
        },
        Rule {
            method: "CommitReservation",
            callers: &[GATEWAY, PAYMENT_SERVICE, USER_SERVICE],
        },
        Rule {
            method: "ReleaseReservation",
            callers: &[GATEWAY, PAYMENT_SERVICE, USER_SERVICE],
        },
        // Catalog writes come through the gateway's admin API only (and need an admin end
        // user, which the handlers check).
        Rule {
            method: "CreateItem",
            callers: &[GATEWAY],
        },
        Rule {
            method: "UpdateItem",
            callers: &[GATEWAY],
        },
        Rule {
            method: "DeleteItem",
            callers: &[GATEWAY],
        },
    ],
};
