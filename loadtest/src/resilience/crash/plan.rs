//! The crash matrix: which process dies in which step of a checkout, and how the existing
//! fault injection holds the checkout inside that step long enough to kill it there.

use std::{fmt, time::Duration};

use crate::admin::Rule;

pub use super::supervisor::Process;

/// A step of the checkout the kill lands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// Stock reserved, the card charge in flight (its outcome unknown to the caller).
    AfterReserve,
    /// The charge succeeded, the reservation is not committed yet.
    AfterCharge,
    /// The CommitReservation call is inside item-service.
    DuringCommit,
    /// Committed; the order is being recorded (user-service's AdvanceCheckout).
    DuringOrderRecording,
    /// The commit failed; the refund is in flight.
    DuringCompensation,
    // The asynchronous checkout's steps (`--strategy async`): the kills land on a relay or a
    // consumer instead of a call chain.
    /// Accepted: the order PENDING with its `checkout.requested` in user-service's outbox,
    /// perhaps not relayed yet; item-service's consumer about to reserve.
    Accepted,
    /// The stock reserved: `stock.reserved` in item-service's outbox, perhaps not relayed,
    /// and payment-service's consumer about to charge.
    Reserving,
    /// The card charge in flight inside payment-service's `stock.reserved` consumer
    /// (between the card charge and its settlement), the event not acknowledged.
    Charging,
    /// The payment SUCCEEDED: `payment.succeeded` in payment-service's outbox and
    /// user-service's consumer about to place the order.
    Charged,
    /// The order PLACED: `order.completed` in user-service's outbox and item-service's
    /// consumer about to commit the stock.
    Completing,
    /// The killed service's relay has claimed its event (checkout.requested, stock.reserved
    /// or payment.succeeded) and not published it.
    Publishing,
    /// The killed service's relay has published its event and not marked it published (it
    /// is published again after the restart, with the same id).
    Published,
}

impl Step {
    pub const ALL: [Self; 5] = [
        Self::AfterReserve,
        Self::AfterCharge,
        Self::DuringCommit,
        Self::DuringOrderRecording,
        Self::DuringCompensation,
    ];

    /// The asynchronous checkout's steps (the last two: the relay points).
    pub const ASYNC: [Self; 7] = [
        Self::Accepted,
        Self::Reserving,
        Self::Charging,
        Self::Charged,
        Self::Completing,
        Self::Publishing,
        Self::Published,
    ];

    /// The steps of `strategy`'s checkout.
    pub fn of(strategy: &str) -> &'static [Self] {
        if strategy == ASYNC {
            &Self::ASYNC
        } else {
            &Self::ALL
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Reserving => "reserving",
            Self::Charging => "charging",
            Self::Charged => "charged",
            Self::Completing => "completing",
            Self::Publishing => "publishing",
            Self::Published => "published",
            Self::AfterReserve => "after-reserve",
            Self::AfterCharge => "after-charge",
            Self::DuringCommit => "during-commit",
            Self::DuringOrderRecording => "during-order-recording",
            Self::DuringCompensation => "during-compensation",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .chain(Self::ASYNC)
            .find(|p| p.name() == s)
    }
}

/// The asynchronous strategy's name (`?strategy=async`).
pub const ASYNC: &str = "async";

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Combo {
    pub process: Process,
    pub step: Step,
}

impl fmt::Display for Combo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.process.name(), self.step.name())
    }
}

impl Combo {
    /// Every combination, process-major.
    pub fn all() -> Vec<Self> {
        Process::ALL
            .into_iter()
            .flat_map(|process| {
                Step::ALL
                    .into_iter()
                    .map(move |step| Self { process, step })
            })
            .collect()
    }

    /// The combinations `loadtest crash --strategy S` runs by default: every one for the
    /// synchronous strategies; for `async` the kills that matter there (a process that takes
    /// no part in a step has nothing to lose in it): the relay of each outbox, each
    /// consumer before it acknowledged, payment-service and the card gateway between the
    /// card charge and its settlement, and the gateway after its 202.
    pub fn all_for(strategy: &str) -> Vec<Self> {
        if strategy != ASYNC {
            return Self::all();
        }
        use Process::*;
        use Step::*;
        [
            (Gateway, Accepted),
            (UserService, Accepted),
            (ItemService, Accepted),
            (ItemService, Reserving),
            (PaymentService, Reserving),
            (PaymentService, Charging),
            (CardGateway, Charging),
            (PaymentService, Charged),
            (UserService, Charged),
            (UserService, Completing),
            (ItemService, Completing),
            (UserService, Publishing),
            (ItemService, Publishing),
            (PaymentService, Publishing),
            (UserService, Published),
            (ItemService, Published),
            (PaymentService, Published),
        ]
        .into_iter()
        .map(|(process, step)| Self { process, step })
        .collect()
    }

    /// `process:step`, where either side may be `*`; comma-separated lists are parsed by
    /// [`parse_list`].
    pub fn parse_pattern(s: &str) -> Result<Vec<Self>, String> {
        Self::parse_pattern_for(s, "orchestrated")
    }

    /// [`Combo::parse_pattern`] with `*` standing for `strategy`'s steps.
    pub fn parse_pattern_for(s: &str, strategy: &str) -> Result<Vec<Self>, String> {
        let (p, st) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected process:step, e.g. gateway:during-commit"))?;
        let procs: Vec<Process> = if p == "*" {
            Process::ALL.to_vec()
        } else {
            vec![Process::parse(p).ok_or_else(|| {
                format!(
                    "{p:?} is no process (one of: {})",
                    Process::ALL.map(Process::name).join(", ")
                )
            })?]
        };
        let of = Step::of(strategy);
        let steps: Vec<Step> = if st == "*" {
            of.to_vec()
        } else {
            vec![Step::parse(st).filter(|s| of.contains(s)).ok_or_else(|| {
                format!(
                    "{st:?} is no step of the {strategy} checkout (one of: {})",
                    of.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
                )
            })?]
        };
        Ok(procs
            .iter()
            .flat_map(|&process| steps.iter().map(move |&step| Self { process, step }))
            .collect())
    }
}

/// `gateway:during-commit,item-service:*` -> the combinations, in matrix order, once each.
pub fn parse_list(items: &[String]) -> Result<Vec<Combo>, String> {
    parse_list_for(items, "orchestrated")
}

/// [`parse_list`] for `strategy`'s steps.
pub fn parse_list_for(items: &[String], strategy: &str) -> Result<Vec<Combo>, String> {
    let mut out = Vec::new();
    for item in items.iter().flat_map(|s| s.split(',')) {
        if item.trim().is_empty() {
            continue;
        }
        out.extend(Combo::parse_pattern_for(item, strategy)?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// gRPC methods the windows slow down or fail.
pub mod method {
    pub const CHARGE: &str = "/shop.payment.v1.PaymentService/Charge";
    pub const REFUND: &str = "/shop.payment.v1.PaymentService/Refund";
    pub const COMMIT: &str = "/shop.item.v1.ItemService/CommitReservation";
    pub const ADVANCE_CHECKOUT: &str = "/shop.user.v1.UserService/AdvanceCheckout";
    /// The order write of the saga before the checkout record existed; slowed as well so
    /// the window opens with either version of user-service.
    pub const RECORD_ORDER: &str = "/shop.user.v1.UserService/RecordOrder";
    /// The card gateway's routes (its HTTP fault keys).
    pub const CARD_CHARGE: &str = "POST /v1/charges";
    pub const CARD_REFUND: &str = "POST /v1/refunds";
}

/// Which server a fault rule goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultSite {
    User,
    Item,
    Payment,
    Card,
}

/// What must be visible before the kill, then how long to wait on top.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// item-service shows the checkout's reservation RESERVED.
    Reserved,
    /// payment-service shows the checkout's payment SUCCEEDED.
    Charged,
    /// item-service shows the reservation COMMITTED.
    Committed,
    /// user-service shows the order (PENDING: accepted).
    Accepted,
    /// user-service shows the order PLACED.
    Placed,
}

/// Something the test does itself when the trigger fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Releases the checkout's reservation through item-service, as its sweeper does when
    /// a hold expires: the commit then fails for certain, and the checkout must go back.
    ReleaseReservation,
}

/// How a combination opens its window.
#[derive(Debug, Clone)]
pub struct Window {
    pub faults: Vec<(FaultSite, Rule)>,
    pub trigger: Trigger,
    pub at_trigger: Option<Action>,
    /// The durable consumer of the killed process held after its commit and before its
    /// acknowledgement: the event comes back after the ack wait and the restarted process
    /// must count it a duplicate, not apply it again (its own counters say which).
    pub redelivered: Option<String>,
    /// From the trigger to the SIGKILL: lands the kill inside the slowed call.
    pub then: Duration,
    pub what: &'static str,
}

/// The event flow's fault points (platform::events::fault_points), held with a hang: the
/// point waits while its rule is set, and the rules are cleared once the killed process is
/// back (a killed process loses its own).
mod hold {
    use platform::events::fault_points::{
        ConsumerPoint, RelayPoint, consumer_key, hang_key, relay_key,
    };

    use super::{FaultSite, Rule};

    fn site(service: &str) -> FaultSite {
        match service {
            "user-service" => FaultSite::User,
            "item-service" => FaultSite::Item,
            _ => FaultSite::Payment,
        }
    }

    /// `service`'s consumer of `kind` held at `point`.
    pub fn consumer(service: &str, kind: &str, point: ConsumerPoint) -> (FaultSite, Rule) {
        let key = hang_key(&consumer_key(service, kind, point));
        (site(service), Rule::error_rate(&key, 1.0))
    }

    /// `service`'s relay held at `point`.
    pub fn relay(service: &str, point: RelayPoint) -> (FaultSite, Rule) {
        let key = hang_key(&relay_key(service, point));
        (site(service), Rule::error_rate(&key, 1.0))
    }
}

/// The windows of the asynchronous steps but the card charge (held by the card processor's
/// own faults): each holds the checkout inside the step with the event flow's fault points
/// (the killed process's own point where it has one, and the next consumer so the checkout
/// cannot run past the step), and the kill lands half a second after the step shows.
fn held_window(c: Combo) -> Window {
    use Process::*;
    use platform::events::{
        checkout::{CHECKOUT_REQUESTED, ORDER_COMPLETED, PAYMENT_SUCCEEDED, STOCK_RESERVED},
        fault_points::{ConsumerPoint::*, RelayPoint::*},
    };
    const USER: &str = "user-service";
    const ITEM: &str = "item-service";
    const PAYMENT: &str = "payment-service";
    let w = |faults, trigger, what| Window {
        faults,
        trigger,
        at_trigger: None,
        redelivered: None,
        then: Duration::from_millis(500),
        what,
    };
    let redelivered = |service: &str, kind: &str, w: Window| Window {
        redelivered: Some(platform::events::ConsumerSpec::new(service, kind).durable),
        ..w
    };
    let next_reserves = hold::consumer(ITEM, CHECKOUT_REQUESTED, BeforeHandling);
    let next_charges = hold::consumer(PAYMENT, STOCK_RESERVED, BeforeHandling);
    let next_places = hold::consumer(USER, PAYMENT_SUCCEEDED, BeforeHandling);
    let next_commits = hold::consumer(ITEM, ORDER_COMPLETED, BeforeHandling);
    // A relay step: the killed service's relay held, the next consumer too (the event may
    // be out), the kill once the step before the event shows.
    let (relay_of, after, next) = match c.process {
        ItemService => (ITEM, Trigger::Reserved, next_charges.clone()),
        PaymentService => (PAYMENT, Trigger::Charged, next_places.clone()),
        _ => (USER, Trigger::Accepted, next_reserves.clone()),
    };
    match (c.step, c.process) {
        (Step::Publishing, _) => w(
            vec![hold::relay(relay_of, BeforePublish), next],
            after,
            "the killed service's relay held after claiming its event, before publishing it (the next consumer held too); kill 0.5 s after the step before shows",
        ),
        (Step::Published, _) => w(
            vec![hold::relay(relay_of, BeforeMark), next],
            after,
            "the killed service's relay held after publishing its event, before marking it (the next consumer held too); kill 0.5 s after the step before shows",
        ),
        (Step::Accepted, UserService) => w(
            vec![hold::relay(USER, BeforeMark)],
            Trigger::Accepted,
            "user-service's relay held after publishing checkout.requested, before marking it; kill 0.5 s after the order shows",
        ),
        (Step::Accepted, _) => w(
            vec![next_reserves],
            Trigger::Accepted,
            "item-service's checkout.requested consumer held before handling; kill 0.5 s after the order shows",
        ),
        (Step::Reserving, ItemService) => redelivered(
            ITEM,
            CHECKOUT_REQUESTED,
            w(
                vec![
                    hold::consumer(ITEM, CHECKOUT_REQUESTED, BeforeAck),
                    next_charges,
                ],
                Trigger::Reserved,
                "item-service's checkout.requested consumer held after its commit, before the ack (redelivered after the restart), payment-service's consumer before handling; kill 0.5 s after the reservation shows",
            ),
        ),
        (Step::Reserving, _) => w(
            vec![next_charges],
            Trigger::Reserved,
            "payment-service's stock.reserved consumer held before handling; kill 0.5 s after the reservation shows",
        ),
        (Step::Charged, PaymentService) => redelivered(
            PAYMENT,
            STOCK_RESERVED,
            w(
                vec![
                    hold::consumer(PAYMENT, STOCK_RESERVED, BeforeAck),
                    next_places,
                ],
                Trigger::Charged,
                "payment-service's stock.reserved consumer held after its commit, before the ack (redelivered: must not charge twice), user-service's consumer before handling; kill 0.5 s after the payment is SUCCEEDED",
            ),
        ),
        (Step::Charged, _) => w(
            vec![next_places],
            Trigger::Charged,
            "user-service's payment.succeeded consumer held before handling; kill 0.5 s after the payment is SUCCEEDED",
        ),
        (Step::Completing, UserService) => redelivered(
            USER,
            PAYMENT_SUCCEEDED,
            w(
                vec![
                    hold::consumer(USER, PAYMENT_SUCCEEDED, BeforeAck),
                    next_commits,
                ],
                Trigger::Placed,
                "user-service's payment.succeeded consumer held after its commit, before the ack (redelivered: must not place twice), item-service's order.completed consumer before handling; kill 0.5 s after the order is PLACED",
            ),
        ),
        // Completing, any other process (only the held steps come here).
        _ => w(
            vec![next_commits],
            Trigger::Placed,
            "item-service's order.completed consumer held before handling; kill 0.5 s after the order is PLACED",
        ),
    }
}

/// The window of `c`. The slowed call takes long enough that the kill (and, for the killed
/// process, its restart) happens while the checkout is inside it.
pub fn window(c: Combo) -> Window {
    use FaultSite::*;
    use method::*;
    let card = c.process == Process::CardGateway;
    match c.step {
        Step::Charging => Window {
            faults: vec![(Card, Rule::fixed(CARD_CHARGE, 4000))],
            trigger: Trigger::Reserved,
            at_trigger: None,
            redelivered: None,
            then: Duration::from_millis(1000),
            what: "card charge slowed 4 s; kill 1 s after the reservation appears (stock.reserved not acknowledged)",
        },
        Step::Accepted
        | Step::Reserving
        | Step::Charged
        | Step::Completing
        | Step::Publishing
        | Step::Published => held_window(c),
        Step::AfterReserve => Window {
            // The card gateway's charge is slowed (payment PENDING, outcome unknown to
            // every caller); the kill lands a second into it.
            faults: vec![(Card, Rule::fixed(CARD_CHARGE, 4000))],
            trigger: Trigger::Reserved,
            at_trigger: None,
            redelivered: None,
            then: Duration::from_millis(1000),
            what: "card charge slowed 4 s; kill 1 s after the reservation appears",
        },
        // The reproduction: the commit takes 4 s, the kill lands 1 s into it.
        Step::AfterCharge => Window {
            faults: vec![(Item, Rule::fixed(COMMIT, 4000))],
            trigger: Trigger::Charged,
            at_trigger: None,
            redelivered: None,
            then: Duration::from_millis(1000),
            what: "CommitReservation slowed 4 s; kill 1 s after the payment is SUCCEEDED",
        },
        Step::DuringCommit => Window {
            // Late in the slowed commit: the commit may be running when the kill lands.
            faults: vec![(Item, Rule::fixed(COMMIT, 2500))],
            trigger: Trigger::Charged,
            at_trigger: None,
            redelivered: None,
            then: Duration::from_millis(2300),
            what: "CommitReservation slowed 2.5 s; kill 2.3 s after the payment is SUCCEEDED",
        },
        Step::DuringOrderRecording => Window {
            faults: vec![
                (User, Rule::fixed(ADVANCE_CHECKOUT, 4000)),
                (User, Rule::fixed(RECORD_ORDER, 4000)),
            ],
            trigger: Trigger::Committed,
            at_trigger: None,
            redelivered: None,
            then: Duration::from_millis(500),
            what: "AdvanceCheckout (and RecordOrder) slowed 4 s; kill 0.5 s after the commit",
        },
        // A commit that fails for certain (the hold is gone; an unknown failure would
        // rightly be handed to the recovery to go forward), then the refund in flight.
        Step::DuringCompensation => Window {
            faults: vec![
                (Item, Rule::fixed(COMMIT, 1000)),
                if card {
                    (Card, Rule::fixed(CARD_REFUND, 4000))
                } else {
                    (Payment, Rule::fixed(REFUND, 4000))
                },
            ],
            trigger: Trigger::Charged,
            at_trigger: Some(Action::ReleaseReservation),
            redelivered: None,
            then: Duration::from_millis(2000),
            what: "the reservation released under the checkout, CommitReservation slowed 1 s, the refund slowed 4 s; kill 2 s after the payment is SUCCEEDED",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_expand_and_dedup() {
        let all = parse_list(&["*:*".into()]).expect("ok");
        assert_eq!(all.len(), 25);
        let some = parse_list(&[
            "gateway:during-commit,item-service:after-charge".into(),
            "gateway:during-commit".into(),
        ])
        .expect("ok");
        assert_eq!(some.len(), 2);
        assert_eq!(some[0].to_string(), "gateway:during-commit");
        assert_eq!(parse_list(&["gateway:*".into()]).expect("ok").len(), 5);
        assert!(parse_list(&["gateway".into()]).is_err());
        assert!(parse_list(&["gw:after-charge".into()]).is_err());
        assert!(parse_list(&["gateway:before".into()]).is_err());
        // The asynchronous checkout has steps of its own.
        assert!(parse_list(&["gateway:charging".into()]).is_err());
        let a = parse_list_for(&["payment-service:*".into()], ASYNC).expect("ok");
        assert_eq!(a.len(), 7);
        assert!(parse_list_for(&["gateway:after-charge".into()], ASYNC).is_err());
        assert!(
            Combo::all_for(ASYNC)
                .iter()
                .all(|c| Step::ASYNC.contains(&c.step))
        );
    }
}
