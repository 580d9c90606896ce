//! Who may call which ItemService RPC (checked by the platform's server stack, in its own
//! process and in the monolith alike). Catalog writes also need an admin end user, which
//! the handlers check.

use platform::{
    identity::{GATEWAY, ITEM_SERVICE, PAYMENT_SERVICE, USER_SERVICE},
    policy::{Rule, ServicePolicy},
};

/// Reads and the stock hold: the gateway (orchestrated checkout), payment-service (the
/// chained checkout's last hop) and user-service (its checkout recovery).
const EVERY_CALLER: &[&str] = &[GATEWAY, PAYMENT_SERVICE, USER_SERVICE];
/// Catalog writes come through the gateway's admin API only.
const CATALOG_ADMIN: &[&str] = &[GATEWAY];

pub const POLICY: ServicePolicy = ServicePolicy {
    service: "shop.item.v1.ItemService",
    audience: Some(ITEM_SERVICE),
    rules: &[
        Rule {
            method: "GetItem",
            callers: EVERY_CALLER,
        },
        Rule {
            method: "BatchGetItems",
            callers: EVERY_CALLER,
        },
        Rule {
            method: "ListItems",
            callers: EVERY_CALLER,
        },
        Rule {
            method: "GetReservation",
            callers: EVERY_CALLER,
        },
        Rule {
            method: "ReserveStock",
            callers: EVERY_CALLER,
        },
        Rule {
            method: "CommitReservation",
            callers: EVERY_CALLER,
        },
        Rule {
            method: "ReleaseReservation",
            callers: EVERY_CALLER,
        },
        Rule {
            method: "CreateItem",
            callers: CATALOG_ADMIN,
        },
        Rule {
            method: "UpdateItem",
            callers: CATALOG_ADMIN,
        },
        Rule {
            method: "DeleteItem",
            callers: CATALOG_ADMIN,
        },
    ],
};
