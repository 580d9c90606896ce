//! user-service's part of the asynchronous checkout against real PostgreSQL and NATS:
//! RequestCheckout records the order with its event, and the order follows the other
//! services' events (published here as item- and payment-service would), each move once.

use platform::checkout_failure::CheckoutFailure;
use platform::events::{Broker, ConsumerSpec, Envelope, checkout as ev};
use shop_proto::{
    common::v1::PricedLine,
    user::v1::{self as pb, user_service_client::UserServiceClient},
};
use test_support::{events, identity};
use tonic::Code;
use uuid::Uuid;

use crate::harness::{TestApp, spawn_with, unique_email};

const ITEM: &str = "0123456789abcdef01234567";

struct Async {
    app: TestApp,
    ns: String,
    broker: Broker,
    user: Uuid,
    db: sqlx::PgPool,
}

async fn start() -> Async {
    let ns = events::namespace();
    let settings = events::settings(&ns);
    let app = spawn_with(|c| c.events = settings).await;
    let user = app
        .register(&unique_email(), "correct horse battery", "Ann")
        .await
        .expect("register");
    let broker = events::broker(&ns).await;
    let db = sqlx::PgPool::connect(&app.database_url)
        .await
        .expect("the service's database");
    Async {
        app,
        ns,
        broker,
        user: user.user_id.parse().expect("uuid"),
        db,
    }
}

impl Async {
    /// A client calling as the gateway for the registered user.
    fn gateway(&self) -> UserServiceClient<platform::transport::GrpcTransport> {
        UserServiceClient::new(identity::client_as(
            self.app.addr,
            platform::identity::GATEWAY,
            platform::identity::USER_SERVICE,
            Some(identity::customer(self.user)),
        ))
    }

    async fn request(
        &self,
        order_id: Uuid,
        qty: i32,
    ) -> Result<pb::RequestCheckoutResponse, tonic::Status> {
        self.gateway()
            .request_checkout(pb::RequestCheckoutRequest {
                order_id: order_id.to_string(),
                user_id: self.user.to_string(),
                lines: vec![PricedLine {
                    item_id: ITEM.into(),
                    quantity: qty,
                    ..Default::default()
                }],
                card_token: "tok_test4242".into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn order(&self, order_id: Uuid) -> pb::Order {
        self.gateway()
            .get_order(pb::GetOrderRequest {
                order_id: order_id.to_string(),
                user_id: self.user.to_string(),
            })
            .await
            .expect("get order")
            .into_inner()
            .order
            .expect("order")
    }

    async fn publish<T: serde::Serialize>(&self, kind: &str, order_id: Uuid, data: &T) {
        let e = ev::envelope(kind, &order_id.to_string(), data, None).expect("envelope");
        self.broker.publish(&e).await.expect("publish");
    }

    /// Publishes again under a fresh broker message id: what a redelivery after the
    /// broker's duplicate window (or a producer that re-sent it) looks like.
    async fn republish<T: serde::Serialize>(&self, kind: &str, order_id: Uuid, data: &T) {
        let mut e: Envelope =
            ev::envelope(kind, &order_id.to_string(), data, None).expect("envelope");
        let derived = e.id;
        e.id = Uuid::now_v7();
        self.broker.publish(&e).await.expect("publish");
        assert_ne!(derived, e.id);
    }

    async fn wait_status(&self, order_id: Uuid, status: pb::OrderStatus) -> pb::Order {
        for _ in 0..120 {
            let o = self.order(order_id).await;
            if o.status() == status {
                return o;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!(
            "order {order_id} never became {status:?}: {:?}",
            self.order(order_id).await
        );
    }

    /// Waits until nothing is left to happen: the service's consumers have acknowledged
    /// every event on the stream and its outbox has relayed every row.
    async fn quiet(&self) {
        events::wait_quiet(&self.ns, || async {
            let waiting: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                    .fetch_one(&self.db)
                    .await
                    .expect("count the outbox");
            waiting == 0
        })
        .await;
    }

    /// The events of `kind` the service wrote for `order_id` (what it announced, before the
    /// broker's de-duplication by event id could hide a second one).
    async fn announced(&self, kind: &str, order_id: Uuid) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE kind = $1 AND key = $2")
            .bind(kind)
            .bind(order_id.to_string())
            .fetch_one(&self.db)
            .await
            .expect("count the outbox")
    }

    /// How often the service's consumer of `kind` ended a delivery with `outcome`.
    async fn consumed(&self, kind: &str, outcome: &str) -> f64 {
        let durable = ConsumerSpec::new(platform::identity::USER_SERVICE, kind).durable;
        let metrics = test_support::metrics(self.app.metrics_addr).await;
        test_support::counter(
            &metrics,
            &format!("events_consumed_total{{consumer=\"{durable}\",outcome=\"{outcome}\"}}"),
        )
    }

    async fn wait_priced(&self, order_id: Uuid) -> pb::Order {
        for _ in 0..120 {
            let o = self.order(order_id).await;
            if o.priced {
                return o;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("order {order_id} never priced");
    }
}

fn reserved(order_id: Uuid, user: Uuid, qty: u32) -> ev::StockReserved {
    ev::StockReserved {
        order_id: order_id.to_string(),
        user_id: user.to_string(),
        reservation_id: order_id.to_string(),
        lines: vec![ev::PricedLine {
            item_id: ITEM.into(),
            sku: "MUG-1".into(),
            name: "Mug".into(),
            quantity: qty,
            unit_price_cents: 1250,
        }],
        amount_cents: 1250 * i64::from(qty),
        currency: "USD".into(),
        card_token: "tok_test4242".into(),
    }
}

fn paid(order_id: Uuid, qty: u32) -> ev::PaymentSucceeded {
    ev::PaymentSucceeded {
        order_id: order_id.to_string(),
        payment_id: "pay_1".into(),
        amount_cents: 1250 * i64::from(qty),
        currency: "USD".into(),
    }
}

#[tokio::test]
async fn a_request_is_recorded_pending_with_its_event_and_a_repeat_changes_nothing() {
    let t = start().await;
    let order_id = Uuid::new_v4();
    let first = t.request(order_id, 2).await.expect("accepted");
    assert!(first.created);
    let order = first.order.expect("order");
    assert_eq!(order.status(), pb::OrderStatus::Pending);
    assert!(!order.priced, "item-service prices it later");

    let requested = events::wait_for(&t.ns, ev::CHECKOUT_REQUESTED, 1).await;
    let data: ev::CheckoutRequested = ev::data(&requested[0]).expect("payload");
    assert_eq!(data.order_id, order_id.to_string());
    assert_eq!(data.user_id, t.user.to_string());
    assert_eq!(
        data.lines,
        [ev::Line {
            item_id: ITEM.into(),
            quantity: 2
        }]
    );
    assert_eq!(data.card_token, "tok_test4242");
    assert!(
        requested[0].traceparent.is_some(),
        "the trace goes on through the stream"
    );

    // The client retried (same order id): the same order, no second event.
    let again = t.request(order_id, 2).await.expect("repeat");
    assert!(!again.created);
    assert_eq!(again.order.expect("order").order_id, order_id.to_string());
    // A different cart under the same id is refused, naming the field.
    let other = t.request(order_id, 3).await.expect_err("other cart");
    assert_eq!(other.code(), Code::AlreadyExists);
    t.quiet().await;
    assert_eq!(t.announced(ev::CHECKOUT_REQUESTED, order_id).await, 1);
    assert_eq!(
        events::published(&t.ns, ev::CHECKOUT_REQUESTED).await.len(),
        1
    );
}

#[tokio::test]
async fn bad_requests_are_refused_naming_the_field_and_only_for_the_asserted_user() {
    let t = start().await;
    let mut req = pb::RequestCheckoutRequest {
        order_id: Uuid::new_v4().to_string(),
        user_id: t.user.to_string(),
        lines: vec![PricedLine {
            item_id: ITEM.into(),
            quantity: 1,
            ..Default::default()
        }],
        card_token: "4242424242424242".into(),
    };
    let err = t
        .gateway()
        .request_checkout(req.clone())
        .await
        .expect_err("a card number is not a token");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        platform::error::field_of(&err).as_deref(),
        Some("card_token")
    );

    req.card_token = "tok_ok".into();
    req.lines[0].quantity = 0;
    let err = t
        .gateway()
        .request_checkout(req.clone())
        .await
        .expect_err("bad quantity");
    assert_eq!(err.code(), Code::InvalidArgument);

    req.lines[0].quantity = 1;
    req.user_id = Uuid::new_v4().to_string();
    let err = t
        .gateway()
        .request_checkout(req)
        .await
        .expect_err("someone else's checkout");
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn without_an_event_stream_the_asynchronous_checkout_is_unavailable() {
    let app = crate::harness::spawn().await;
    let user: Uuid = app
        .register(&unique_email(), "correct horse battery", "Bo")
        .await
        .expect("register")
        .user_id
        .parse()
        .expect("uuid");
    let err = UserServiceClient::new(identity::client_as(
        app.addr,
        platform::identity::GATEWAY,
        platform::identity::USER_SERVICE,
        Some(identity::customer(user)),
    ))
    .request_checkout(pb::RequestCheckoutRequest {
        order_id: Uuid::new_v4().to_string(),
        user_id: user.to_string(),
        lines: vec![PricedLine {
            item_id: ITEM.into(),
            quantity: 1,
            ..Default::default()
        }],
        card_token: "tok_ok".into(),
    })
    .await
    .expect_err("no NATS");
    assert_eq!(err.code(), Code::Unavailable);
}

#[tokio::test]
async fn reserved_then_paid_places_the_order_once_and_announces_it_once() {
    let t = start().await;
    let order_id = Uuid::new_v4();
    t.request(order_id, 2).await.expect("accepted");

    // The payment's event overtakes the reservation's (two consumers, two subjects): the
    // order waits for its prices instead of failing.
    t.publish(ev::PAYMENT_SUCCEEDED, order_id, &paid(order_id, 2))
        .await;
    // Seen and put back for a retry (delivered a second time), not applied.
    let durable =
        ConsumerSpec::new(platform::identity::USER_SERVICE, ev::PAYMENT_SUCCEEDED).durable;
    events::wait_redelivered(&t.ns, &durable, 1).await;
    assert_eq!(t.order(order_id).await.status(), pb::OrderStatus::Pending);
    t.publish(ev::STOCK_RESERVED, order_id, &reserved(order_id, t.user, 2))
        .await;

    let placed = t.wait_status(order_id, pb::OrderStatus::Placed).await;
    assert!(placed.priced);
    assert_eq!(placed.payment_id, "pay_1");
    assert_eq!(placed.total.expect("total").amount_minor, 2500);
    assert_eq!(placed.lines[0].name, "Mug");
    let completed = events::wait_for(&t.ns, ev::ORDER_COMPLETED, 1).await;
    assert_eq!(
        completed[0].id,
        ev::event_id(&order_id.to_string(), ev::ORDER_COMPLETED)
    );

    // Both events delivered again: nothing changes, nothing announced twice.
    t.republish(ev::STOCK_RESERVED, order_id, &reserved(order_id, t.user, 2))
        .await;
    t.republish(ev::PAYMENT_SUCCEEDED, order_id, &paid(order_id, 2))
        .await;
    t.quiet().await;
    let after = t.order(order_id).await;
    assert_eq!(after.status(), pb::OrderStatus::Placed);
    assert_eq!(after.updated_at, placed.updated_at, "not written again");
    for kind in [ev::STOCK_RESERVED, ev::PAYMENT_SUCCEEDED] {
        assert_eq!(
            t.consumed(kind, "applied").await,
            1.0,
            "{kind} applied once"
        );
        assert_eq!(t.consumed(kind, "duplicate").await, 1.0, "{kind} again");
    }
    assert_eq!(t.announced(ev::ORDER_COMPLETED, order_id).await, 1);
    assert_eq!(events::published(&t.ns, ev::ORDER_COMPLETED).await.len(), 1);
    assert!(
        events::published(&t.ns, ev::ORDER_CANCELLED)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn refused_stock_or_a_declined_card_cancels_the_order_with_its_failure() {
    let t = start().await;
    let no_stock = Uuid::new_v4();
    let declined = Uuid::new_v4();
    t.request(no_stock, 5).await.expect("accepted");
    t.request(declined, 1).await.expect("accepted");

    let refusal = |order_id: Uuid, failure| ev::Refusal {
        order_id: order_id.to_string(),
        failure,
        field: Some("lines[0].quantity".into()),
        message: "whatever the words".into(),
    };
    t.publish(
        ev::STOCK_REFUSED,
        no_stock,
        &refusal(no_stock, CheckoutFailure::OutOfStock),
    )
    .await;
    t.publish(ev::STOCK_RESERVED, declined, &reserved(declined, t.user, 1))
        .await;
    t.wait_priced(declined).await;
    t.publish(
        ev::PAYMENT_DECLINED,
        declined,
        &refusal(declined, CheckoutFailure::CardDeclined),
    )
    .await;

    let a = t.wait_status(no_stock, pb::OrderStatus::Cancelled).await;
    assert_eq!(a.failure(), CheckoutFailure::OutOfStock);
    let b = t.wait_status(declined, pb::OrderStatus::Cancelled).await;
    assert_eq!(b.failure(), CheckoutFailure::CardDeclined);

    let cancelled = events::wait_for(&t.ns, ev::ORDER_CANCELLED, 2).await;
    let mut failures: Vec<(String, CheckoutFailure)> = cancelled
        .iter()
        .map(|e| {
            let d: ev::OrderCancelled = ev::data(e).expect("payload");
            (d.order_id, d.failure)
        })
        .collect();
    failures.sort();
    let mut expected = vec![
        (no_stock.to_string(), CheckoutFailure::OutOfStock),
        (declined.to_string(), CheckoutFailure::CardDeclined),
    ];
    expected.sort();
    assert_eq!(failures, expected);

    // A late success for a cancelled order is not applied (it is parked for a person).
    t.publish(ev::PAYMENT_SUCCEEDED, declined, &paid(declined, 1))
        .await;
    t.quiet().await;
    assert_eq!(t.order(declined).await.status(), pb::OrderStatus::Cancelled);
    assert_eq!(t.announced(ev::ORDER_COMPLETED, declined).await, 0);
    assert!(
        events::published(&t.ns, ev::ORDER_COMPLETED)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn events_written_while_the_broker_is_unreachable_are_relayed_later() {
    // The outbox is the point: the order and its event are committed together even when
    // NATS cannot take the event now. Here the service's NATS URL points at nothing; the
    // request is still accepted, the event waits in PostgreSQL.
    let ns = events::namespace();
    let app = spawn_with(|c| {
        c.events = platform::events::EventsSettings {
            nats_url: Some("nats://127.0.0.1:1".into()),
            namespace: Some(ns.clone()),
        }
    })
    .await;
    let user: Uuid = app
        .register(&unique_email(), "correct horse battery", "Cy")
        .await
        .expect("register")
        .user_id
        .parse()
        .expect("uuid");
    let accepted = UserServiceClient::new(identity::client_as(
        app.addr,
        platform::identity::GATEWAY,
        platform::identity::USER_SERVICE,
        Some(identity::customer(user)),
    ))
    .request_checkout(pb::RequestCheckoutRequest {
        order_id: Uuid::new_v4().to_string(),
        user_id: user.to_string(),
        lines: vec![PricedLine {
            item_id: ITEM.into(),
            quantity: 1,
            ..Default::default()
        }],
        card_token: "tok_ok".into(),
    })
    .await
    .expect("accepted while the broker is down");
    assert!(accepted.into_inner().created);
    let pool = sqlx::PgPool::connect(&app.database_url).await.expect("db");
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(waiting, 1, "kept in the outbox");
    let database_url = app.database_url.clone();
    drop(app);

    // The same database under a service that reaches the broker: relayed.
    let settings = events::settings(&ns);
    let _second = test_support::user::spawn_on(&database_url, |c| c.events = settings).await;
    let requested = events::wait_for(&ns, ev::CHECKOUT_REQUESTED, 1).await;
    assert_eq!(requested.len(), 1);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(left, 0);
}
