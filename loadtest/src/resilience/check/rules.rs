//! The rules, judged over a [`Snapshot`]: pure code, so every rule has a unit test here and
//! the integration tests only need to show the stores are read right.

use std::collections::{HashMap, HashSet};

use super::{
    Counts, Options, Report, Rule, Violation,
    stores::{Order, Snapshot},
};

const HELD: [&str; 2] = ["pending", "reserved"];
const IN_FLIGHT: [&str; 2] = ["pending", "cancelling"];

/// The asynchronous checkout's strategy name in the orders table.
const ASYNC: &str = "async";

fn in_flight(o: &Order, opts: &Options) -> bool {
    IN_FLIGHT.contains(&o.status.as_str()) && o.age <= opts.recovery_window
}

/// An asynchronous order is placed (paid) before item-service commits its stock: until
/// `order.completed` is consumed its reservation is still reserved. That is in flight like
/// a pending record, within the recovery window of the order's start.
fn completing(o: &Order, reservation_status: &str, opts: &Options) -> bool {
    o.strategy == ASYNC
        && o.status == "placed"
        && reservation_status == "reserved"
        && o.age <= opts.recovery_window
}

/// Judges `s` by every rule.
pub fn evaluate(s: &Snapshot, opts: &Options) -> Report {
    let mut v = Vec::new();
    let orders: HashMap<&str, &Order> = s.orders.iter().map(|o| (o.order_id.as_str(), o)).collect();
    let reservations: HashMap<&str, _> =
        s.reservations.iter().map(|r| (r.id.as_str(), r)).collect();

    // a: a kept charge has its order placed with it, and the order's stock is committed.
    for p in &s.payments {
        if p.status != "SUCCEEDED" || p.amount_refunded_minor != 0 {
            continue;
        }
        let ids = [("payment", p.id.as_str()), ("order", p.order_id.as_str())];
        let Some(o) = orders.get(p.order_id.as_str()) else {
            v.push(Violation::new(
                Rule::PaidHasOrder,
                &ids,
                format!(
                    "payment SUCCEEDED ({} {}), nothing refunded, but there is no order",
                    p.amount_minor, p.currency
                ),
            ));
            continue;
        };
        if IN_FLIGHT.contains(&o.status.as_str()) {
            // Still being driven (or stuck, which rule e reports).
            continue;
        }
        if o.status != "placed" {
            v.push(Violation::new(
                Rule::PaidHasOrder,
                &ids,
                format!(
                    "payment SUCCEEDED ({} {}), nothing refunded, but the order is {}",
                    p.amount_minor, p.currency, o.status
                ),
            ));
            continue;
        }
        if o.payment_id.as_deref() != Some(p.id.as_str()) {
            v.push(Violation::new(
                Rule::PaidHasOrder,
                &ids,
                format!(
                    "payment SUCCEEDED, nothing refunded, but the placed order names payment {}",
                    o.payment_id.as_deref().unwrap_or("(none)")
                ),
            ));
            continue;
        }
        let status = reservations
            .get(o.reservation_id.as_str())
            .map_or("missing", |r| r.status.as_str());
        if completing(o, status, opts) {
            continue;
        }
        if status != "committed" {
            let waiting = if o.strategy == ASYNC && status == "reserved" {
                format!(
                    " ({} s after the order started, window {} s: order.completed not applied)",
                    o.age.as_secs(),
                    opts.recovery_window.as_secs()
                )
            } else {
                String::new()
            };
            v.push(Violation::new(
                Rule::PaidHasOrder,
                &[
                    ("payment", p.id.as_str()),
                    ("order", p.order_id.as_str()),
                    ("reservation", o.reservation_id.as_str()),
                ],
                format!(
                    "the order is placed and paid but its reservation is {status}, not committed{waiting}"
                ),
            ));
        }
    }

    // b: a placed order is paid exactly once, in full.
    let mut succeeded: HashMap<&str, Vec<&super::Payment>> = HashMap::new();
    for p in s.payments.iter().filter(|p| p.status == "SUCCEEDED") {
        succeeded.entry(p.order_id.as_str()).or_default().push(p);
    }
    for o in s.orders.iter().filter(|o| o.status == "placed") {
        let paid = succeeded
            .get(o.order_id.as_str())
            .map_or(&[][..], Vec::as_slice);
        let total = match (o.total_minor, o.currency.as_deref()) {
            (Some(t), Some(c)) => format!("{t} {c}"),
            _ => "(not priced)".to_owned(),
        };
        match paid {
            [] => v.push(Violation::new(
                Rule::OrderHasPayment,
                &[("order", o.order_id.as_str())],
                format!("order placed for {total} but no payment of it SUCCEEDED"),
            )),
            [p] => {
                let same_amount = o.total_minor == Some(p.amount_minor);
                let same_currency = o
                    .currency
                    .as_deref()
                    .is_some_and(|c| c.eq_ignore_ascii_case(&p.currency));
                if !same_amount || !same_currency {
                    v.push(Violation::new(
                        Rule::OrderHasPayment,
                        &[("order", o.order_id.as_str()), ("payment", p.id.as_str())],
                        format!(
                            "order placed for {total} but its payment is {} {}",
                            p.amount_minor, p.currency
                        ),
                    ));
                }
            }
            many => {
                let ids: Vec<&str> = many.iter().map(|p| p.id.as_str()).collect();
                v.push(Violation::new(
                    Rule::OrderHasPayment,
                    &[("order", o.order_id.as_str())],
                    format!(
                        "order placed for {total} has {} SUCCEEDED payments: {}",
                        many.len(),
                        ids.join(", ")
                    ),
                ));
            }
        }
    }

    // c: nothing holds stock past its expiry plus the recovery window.
    let window_ms = i64::try_from(opts.recovery_window.as_millis()).unwrap_or(i64::MAX);
    for r in s
        .reservations
        .iter()
        .filter(|r| HELD.contains(&r.status.as_str()))
    {
        let overdue = s.now_ms.saturating_sub(r.expires_at_ms);
        if overdue > window_ms {
            v.push(Violation::new(
                Rule::ReservationExpiry,
                &[("reservation", r.id.as_str())],
                format!(
                    "still {} {} s after it expired (window {} s)",
                    r.status,
                    overdue / 1000,
                    window_ms / 1000
                ),
            ));
        }
    }

    // d: every unit received is in stock, held or sold. Held units are those of the
    // reservations on the item's hold list (pending or reserved, or released with the
    // stock not yet put back); committed units stay taken whether or not the hold marker
    // has been dropped yet.
    let mut committed: HashMap<&str, i64> = HashMap::new();
    let mut lines_of: HashMap<(&str, &str), i64> = HashMap::new();
    for r in &s.reservations {
        for (item, qty) in &r.lines {
            *lines_of.entry((r.id.as_str(), item.as_str())).or_default() += qty;
            if r.status == "committed" {
                *committed.entry(item.as_str()).or_default() += qty;
            }
        }
    }
    let mut not_accounted = Vec::new();
    for item in &s.items {
        let mut held = 0;
        for rid in &item.holds {
            match reservations.get(rid.as_str()) {
                Some(r) if r.status == "committed" => {}
                Some(r) => {
                    held += lines_of
                        .get(&(r.id.as_str(), item.id.as_str()))
                        .copied()
                        .unwrap_or(0)
                }
                None => v.push(Violation::new(
                    Rule::StockAccounted,
                    &[("item", item.id.as_str()), ("reservation", rid.as_str())],
                    "the item's stock is held for a reservation that does not exist".to_owned(),
                )),
            }
        }
        let Some(received) = item.stock_received else {
            not_accounted.push(item.id.clone());
            continue;
        };
        let sold = committed.get(item.id.as_str()).copied().unwrap_or(0);
        if received != item.stock + held + sold {
            v.push(Violation::new(
                Rule::StockAccounted,
                &[("item", item.id.as_str())],
                format!(
                    "sku {}: received {received} != stock {} + held {held} + committed {sold} \
                     ({} unit(s) {})",
                    item.sku,
                    item.stock,
                    (received - item.stock - held - sold).abs(),
                    if received > item.stock + held + sold {
                        "missing"
                    } else {
                        "too many"
                    }
                ),
            ));
        }
    }
    let holders: HashSet<(&str, &str)> = s
        .items
        .iter()
        .flat_map(|i| i.holds.iter().map(move |h| (h.as_str(), i.id.as_str())))
        .collect();
    let by_reservation: HashMap<&str, &Order> = s
        .orders
        .iter()
        .map(|o| (o.reservation_id.as_str(), o))
        .collect();
    for r in &s.reservations {
        if r.status == "reserved" {
            // A reserved reservation has taken every line: its hold marker must be there.
            for (item, _) in r
                .lines
                .iter()
                .filter(|(i, _)| !holders.contains(&(r.id.as_str(), i.as_str())))
            {
                v.push(Violation::new(
                    Rule::StockAccounted,
                    &[("reservation", r.id.as_str()), ("item", item.as_str())],
                    "reservation is reserved but the item does not hold stock for it".to_owned(),
                ));
            }
        }
        if r.status == "committed" {
            // Sold stock belongs to an order that kept it.
            match by_reservation.get(r.id.as_str()) {
                Some(o) if o.status == "placed" || o.status == "refunded" => {}
                Some(o) if IN_FLIGHT.contains(&o.status.as_str()) => {}
                Some(o) => v.push(Violation::new(
                    Rule::StockAccounted,
                    &[
                        ("reservation", r.id.as_str()),
                        ("order", o.order_id.as_str()),
                    ],
                    format!(
                        "reservation committed (stock sold) but its order is {}",
                        o.status
                    ),
                )),
                None => v.push(Violation::new(
                    Rule::StockAccounted,
                    &[("reservation", r.id.as_str())],
                    "reservation committed (stock sold) but no order names it".to_owned(),
                )),
            }
        }
    }

    // e: recovery finishes what was abandoned within the window.
    for o in &s.orders {
        if IN_FLIGHT.contains(&o.status.as_str()) && o.age > opts.recovery_window {
            v.push(Violation::new(
                Rule::Stuck,
                &[("order", o.order_id.as_str())],
                format!(
                    "checkout record still {} {} s after it started (window {} s)",
                    o.status,
                    o.age.as_secs(),
                    opts.recovery_window.as_secs()
                ),
            ));
        }
    }
    for p in &s.payments {
        if p.status == "PENDING" && p.age > opts.recovery_window {
            v.push(Violation::new(
                Rule::Stuck,
                &[("payment", p.id.as_str()), ("order", p.order_id.as_str())],
                format!(
                    "payment PENDING and unchanged for {} s (window {} s)",
                    p.age.as_secs(),
                    opts.recovery_window.as_secs()
                ),
            ));
        }
    }
    for r in &s.pending_refunds {
        if r.age > opts.recovery_window {
            v.push(Violation::new(
                Rule::Stuck,
                &[
                    ("refund", r.id.as_str()),
                    ("payment", r.payment_id.as_str()),
                ],
                format!(
                    "refund PENDING and unchanged for {} s (window {} s)",
                    r.age.as_secs(),
                    opts.recovery_window.as_secs()
                ),
            ));
        }
    }

    v.sort_by_key(|v| v.rule);
    Report {
        checked: Counts {
            payments: s.payments.len(),
            refunds: s.pending_refunds.len(),
            orders: s.orders.len(),
            orders_in_flight: s
                .orders
                .iter()
                .filter(|o| {
                    in_flight(o, opts)
                        || completing(
                            o,
                            reservations
                                .get(o.reservation_id.as_str())
                                .map_or("missing", |r| r.status.as_str()),
                            opts,
                        )
                })
                .count(),
            reservations: s.reservations.len(),
            items: s.items.len(),
            items_accounted: s.items.len() - not_accounted.len(),
        },
        violations: v,
        not_accounted,
        recovery_window_secs: opts.recovery_window.as_secs(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::resilience::check::stores::{Item, Payment, Refund, Reservation};

    const NOW: i64 = 1_800_000_000_000;
    const I1: &str = "6500000000000000000000a1";

    fn opts() -> Options {
        Options {
            recovery_window: Duration::from_secs(60),
        }
    }

    fn payment(id: &str, order: &str, amount: i64, status: &str) -> Payment {
        Payment {
            id: id.into(),
            order_id: order.into(),
            amount_minor: amount,
            currency: "USD".into(),
            amount_refunded_minor: 0,
            status: status.into(),
            age: Duration::from_secs(1),
        }
    }

    fn order(id: &str, status: &str, payment: Option<&str>, rid: &str) -> Order {
        Order {
            order_id: id.into(),
            status: status.into(),
            total_minor: Some(500),
            currency: Some("USD".into()),
            payment_id: payment.map(Into::into),
            reservation_id: rid.into(),
            strategy: "orchestrated".into(),
            age: Duration::from_secs(1),
        }
    }

    /// An asynchronous order: its reservation is named by the order id.
    fn async_order(id: &str, status: &str, payment: Option<&str>) -> Order {
        Order {
            strategy: ASYNC.into(),
            ..order(id, status, payment, id)
        }
    }

    fn reservation(id: &str, status: &str, qty: i64) -> Reservation {
        Reservation {
            id: id.into(),
            status: status.into(),
            expires_at_ms: NOW + 600_000,
            lines: vec![(I1.into(), qty)],
        }
    }

    /// One placed checkout of 2 units (received 10, stock 8) and nothing else.
    fn consistent() -> Snapshot {
        Snapshot {
            orders: vec![order("o1", "placed", Some("p1"), "r1")],
            payments: vec![payment("p1", "o1", 500, "SUCCEEDED")],
            pending_refunds: vec![],
            items: vec![Item {
                id: I1.into(),
                sku: "SKU-1".into(),
                stock: 8,
                stock_received: Some(10),
                holds: vec![],
            }],
            reservations: vec![reservation("r1", "committed", 2)],
            now_ms: NOW,
        }
    }

    fn rules(s: &Snapshot) -> Vec<Rule> {
        evaluate(s, &opts())
            .violations
            .iter()
            .map(|v| v.rule)
            .collect()
    }

    #[test]
    fn a_consistent_snapshot_is_clean() {
        let r = evaluate(&consistent(), &opts());
        assert!(r.is_clean(), "{:?}", r.violations);
        assert_eq!(r.checked.payments, 1);
        assert_eq!(r.checked.items_accounted, 1);
    }

    #[test]
    fn a_kept_charge_without_a_placed_order_is_a_violation() {
        let mut s = consistent();
        s.payments.push(payment("p2", "o2", 300, "SUCCEEDED"));
        assert_eq!(rules(&s), [Rule::PaidHasOrder]);
        let r = evaluate(&s, &opts());
        assert!(r.violations[0].names("payment", "p2"));
        assert!(
            r.violations[0].to_string().contains("no order"),
            "{}",
            r.violations[0]
        );

        s.orders.push(order("o2", "cancelled", None, "r2"));
        let r = evaluate(&s, &opts());
        assert!(
            r.violations[0].detail.contains("cancelled"),
            "{:?}",
            r.violations
        );

        // Refunded, or still being driven: not a violation of rule a.
        s.payments[1].amount_refunded_minor = 300;
        assert!(rules(&s).is_empty());
        s.payments[1].amount_refunded_minor = 0;
        s.orders[1].status = "cancelling".into();
        assert!(rules(&s).is_empty());
    }

    #[test]
    fn a_paid_order_whose_stock_is_not_committed_is_a_violation() {
        let mut s = consistent();
        s.reservations[0].status = "released".into();
        // Also: the sale of 2 units is gone, so the stock no longer adds up.
        let r = evaluate(&s, &opts());
        let a: Vec<_> = r.of(Rule::PaidHasOrder).collect();
        assert_eq!(a.len(), 1, "{:?}", r.violations);
        assert!(a[0].names("reservation", "r1") && a[0].detail.contains("released"));
    }

    #[test]
    fn a_placed_order_needs_exactly_one_full_payment() {
        let mut s = consistent();
        s.payments[0].status = "REFUNDED".into();
        assert_eq!(rules(&s), [Rule::OrderHasPayment]);

        let mut s = consistent();
        s.orders[0].total_minor = Some(499);
        let r = evaluate(&s, &opts());
        assert_eq!(rules(&s), [Rule::OrderHasPayment]);
        assert!(
            r.violations[0].detail.contains("499 USD"),
            "{}",
            r.violations[0]
        );

        let mut s = consistent();
        s.payments.push(payment("p1b", "o1", 500, "SUCCEEDED"));
        let r = evaluate(&s, &opts());
        // p1b is also a kept charge the order does not name (rule a).
        assert_eq!(rules(&s), [Rule::PaidHasOrder, Rule::OrderHasPayment]);
        assert!(
            r.of(Rule::OrderHasPayment)
                .all(|v| v.detail.contains("2 SUCCEEDED"))
        );
    }

    #[test]
    fn a_reservation_held_past_expiry_and_window_is_a_violation() {
        let mut s = consistent();
        s.reservations.push(reservation("r2", "reserved", 1));
        s.items[0].holds.push("r2".into());
        s.items[0].stock = 7;
        s.reservations[1].expires_at_ms = NOW - 59_000;
        assert!(rules(&s).is_empty(), "within the window");
        s.reservations[1].expires_at_ms = NOW - 61_000;
        assert_eq!(rules(&s), [Rule::ReservationExpiry]);
        s.reservations[1].status = "released".into();
        s.items[0].holds.clear();
        s.items[0].stock = 8;
        assert!(rules(&s).is_empty(), "released is not held");
    }

    #[test]
    fn stock_is_accounted_through_holds_and_commits() {
        let mut s = consistent();
        s.items[0].stock = 9;
        let r = evaluate(&s, &opts());
        assert_eq!(rules(&s), [Rule::StockAccounted]);
        assert!(
            r.violations[0].detail.contains("too many"),
            "{}",
            r.violations[0]
        );

        // Held by a pending reservation, by a released one not yet put back, and a
        // commit whose hold marker is not dropped yet: each counted once.
        let mut s = consistent();
        s.reservations.push(reservation("r2", "pending", 1));
        s.reservations.push(reservation("r3", "released", 3));
        s.items[0].holds = vec!["r1".into(), "r2".into(), "r3".into()];
        s.items[0].stock = 4;
        s.orders.push(order("o3", "cancelling", None, "r3"));
        assert!(
            rules(&s).is_empty(),
            "{:?}",
            evaluate(&s, &opts()).violations
        );

        // A pending reservation that has not taken this line yet holds nothing.
        let mut s = consistent();
        s.reservations.push(reservation("r2", "pending", 1));
        assert!(rules(&s).is_empty());
    }

    #[test]
    fn items_without_the_count_are_listed_not_judged() {
        let mut s = consistent();
        s.items[0].stock_received = None;
        s.items[0].stock = 1234;
        let r = evaluate(&s, &opts());
        assert!(r.is_clean());
        assert_eq!(r.not_accounted, [I1]);
    }

    #[test]
    fn sold_stock_needs_an_order_and_reserved_stock_its_hold() {
        let mut s = consistent();
        s.orders.clear();
        s.payments.clear();
        let r = evaluate(&s, &opts());
        assert_eq!(rules(&s), [Rule::StockAccounted]);
        assert!(r.violations[0].detail.contains("no order"));

        let mut s = consistent();
        s.reservations.push(reservation("r2", "reserved", 1));
        let r = evaluate(&s, &opts());
        assert_eq!(rules(&s), [Rule::StockAccounted]);
        assert!(r.violations[0].names("reservation", "r2"));
    }

    #[test]
    fn work_left_unfinished_past_the_window_is_stuck() {
        let mut s = consistent();
        let mut pending = order("o2", "pending", None, "r2");
        pending.age = Duration::from_secs(59);
        s.orders.push(pending);
        let mut charge = payment("p2", "o2", 500, "PENDING");
        charge.age = Duration::from_secs(59);
        s.payments.push(charge);
        s.pending_refunds.push(Refund {
            id: "f1".into(),
            payment_id: "p1".into(),
            age: Duration::from_secs(59),
        });
        let r = evaluate(&s, &opts());
        assert!(r.is_clean(), "{:?}", r.violations);
        assert_eq!(r.checked.orders_in_flight, 1);

        s.orders[1].age = Duration::from_secs(61);
        s.payments[1].age = Duration::from_secs(61);
        s.pending_refunds[0].age = Duration::from_secs(61);
        let r = evaluate(&s, &opts());
        assert_eq!(rules(&s), [Rule::Stuck; 3]);
        assert!(r.violations.iter().any(|v| v.names("order", "o2")));
        assert!(r.violations.iter().any(|v| v.names("refund", "f1")));
    }

    /// A placed asynchronous order (paid; reservation id = order id) and its stock.
    fn placed_async(held_as: &str) -> Snapshot {
        let mut s = consistent();
        s.orders.push(async_order("a1", "placed", Some("pa1")));
        s.payments.push(payment("pa1", "a1", 500, "SUCCEEDED"));
        let r = reservation("a1", held_as, 1);
        if held_as == "reserved" {
            s.items[0].holds.push("a1".into());
        }
        s.reservations.push(r);
        s.items[0].stock_received = Some(11);
        s
    }

    #[test]
    fn an_async_order_placed_before_its_stock_is_committed_is_in_flight_within_the_window() {
        let s = placed_async("committed");
        assert!(
            rules(&s).is_empty(),
            "{:?}",
            evaluate(&s, &opts()).violations
        );

        // Paid and placed, order.completed not consumed yet: the stock still held.
        let mut s = placed_async("reserved");
        s.orders[1].age = Duration::from_secs(59);
        let r = evaluate(&s, &opts());
        assert!(r.is_clean(), "{:?}", r.violations);
        assert_eq!(r.checked.orders_in_flight, 1);

        s.orders[1].age = Duration::from_secs(61);
        let r = evaluate(&s, &opts());
        assert_eq!(rules(&s), [Rule::PaidHasOrder]);
        assert!(r.violations[0].names("reservation", "a1"));
        assert!(
            r.violations[0].detail.contains("order.completed"),
            "{}",
            r.violations[0]
        );

        // Only the asynchronous flow places before committing: a synchronous order in
        // the same state is a violation at once.
        let mut s = placed_async("reserved");
        s.orders[1].strategy = "orchestrated".into();
        assert_eq!(rules(&s), [Rule::PaidHasOrder]);

        // A released reservation under a placed order is never in flight.
        let mut s = placed_async("released");
        s.items[0].stock = 9;
        assert!(rules(&s).contains(&Rule::PaidHasOrder));
    }

    #[test]
    fn a_pending_async_order_past_the_window_is_stuck() {
        let mut s = consistent();
        let mut o = async_order("a2", "pending", None);
        o.age = Duration::from_secs(59);
        s.orders.push(o);
        // Its stock reserved, its charge taken, order not yet placed: in flight.
        s.reservations.push(reservation("a2", "reserved", 1));
        s.items[0].holds.push("a2".into());
        s.items[0].stock = 7;
        s.payments.push(payment("pa2", "a2", 500, "SUCCEEDED"));
        let r = evaluate(&s, &opts());
        assert!(r.is_clean(), "{:?}", r.violations);
        assert_eq!(r.checked.orders_in_flight, 1);

        s.orders[1].age = Duration::from_secs(61);
        let r = evaluate(&s, &opts());
        assert_eq!(rules(&s), [Rule::Stuck]);
        assert!(r.violations[0].names("order", "a2"));
        assert!(r.violations[0].detail.contains("pending"));
    }
}
