//! The asynchronous checkout's item side, over the local stack's real NATS (NATS_URL): each
//! test runs item-service on a stream of its own, publishes the events the other services
//! would publish, and looks at what a user would notice: the stock, the reservation, and the
//! events item-service put on the stream.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use item_service::{
    Config,
    cache::Cache,
    input::{ItemId, Line as ItemLine, ReservationId},
    reservations::{Begun, Reservations},
};
use platform::checkout_failure::CheckoutFailure;
use platform::events::{
    Broker, ConsumerSpec, Envelope, EventsConfig,
    checkout::{
        self, CHECKOUT_REQUESTED, CheckoutRequested, Line, ORDER_CANCELLED, ORDER_COMPLETED,
        OrderCancelled, OrderCompleted, Refusal, STOCK_REFUSED, STOCK_RESERVED, StockReserved,
    },
    consumer,
};
use platform::identity::ITEM_SERVICE as SERVICE;
use shop_proto::item::v1::{self as pb, ReservationStatus};

use crate::harness::{self, TestApp};

/// The test's side of the stream: publishes as the other services do, reads what
/// item-service published.
struct Stream {
    /// The test's streams and subjects on the stack's NATS.
    namespace: String,
    config: EventsConfig,
    broker: Broker,
    js: jetstream::Context,
}

impl Stream {
    async fn new() -> Self {
        let namespace = test_support::events::namespace();
        let broker = test_support::events::broker(&namespace).await;
        let config = broker.config().clone();
        let js = jetstream::new(
            async_nats::connect(config.url.as_str())
                .await
                .expect("connect to NATS"),
        );
        Self {
            namespace,
            config,
            broker,
            js,
        }
    }

    /// item-service on this stream, its config tweaked.
    async fn spawn_with(&self, tweak: impl FnOnce(&mut Config)) -> TestApp {
        let events = test_support::events::settings(&self.namespace);
        harness::spawn_with(|c| {
            c.events = events;
            tweak(c);
        })
        .await
    }

    /// Publishes a checkout event as its writer's relay would (derived id).
    async fn publish<T: serde::Serialize>(&self, kind: &str, order_id: &str, data: &T) -> Envelope {
        let e = checkout::envelope(kind, order_id, data, None).expect("envelope");
        self.broker.publish(&e).await.expect("published");
        e
    }

    /// Publishes `e` again under another message id: the broker stores it a second time, as
    /// a redelivery after its duplicate window (or a replayed relay) would reach the consumer.
    async fn redeliver(&self, e: &Envelope) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            uuid::Uuid::new_v4().to_string(),
        );
        self.js
            .publish_with_headers(self.config.subject(&e.kind), headers, e.encode().into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }

    async fn request(&self, order_id: &str, lines: &[(&str, u32)]) -> Envelope {
        let req = CheckoutRequested {
            order_id: order_id.into(),
            user_id: format!("user-of-{order_id}"),
            lines: lines
                .iter()
                .map(|(id, q)| Line {
                    item_id: (*id).into(),
                    quantity: *q,
                })
                .collect(),
            card_token: "tok_visa_4242".into(),
        };
        self.publish(CHECKOUT_REQUESTED, order_id, &req).await
    }

    async fn complete(&self, order_id: &str) -> Envelope {
        let data = OrderCompleted {
            order_id: order_id.into(),
        };
        self.publish(ORDER_COMPLETED, order_id, &data).await
    }

    async fn cancel(&self, order_id: &str) -> Envelope {
        let data = OrderCancelled {
            order_id: order_id.into(),
            failure: CheckoutFailure::CardDeclined,
        };
        self.publish(ORDER_CANCELLED, order_id, &data).await
    }

    /// Every message on `subject` of `stream`, oldest first.
    async fn messages(&self, stream: &str, subject: String) -> Vec<jetstream::Message> {
        let reader = self
            .js
            .get_stream(stream)
            .await
            .expect("stream")
            .create_consumer(pull::Config {
                filter_subject: subject,
                ack_policy: jetstream::consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .expect("reader");
        let mut batch = reader
            .fetch()
            .max_messages(10_000)
            .messages()
            .await
            .expect("fetch");
        let mut out = Vec::new();
        while let Some(m) = batch.next().await {
            out.push(m.expect("message"));
        }
        out
    }

    /// The `kind` events on the stream.
    async fn events(&self, kind: &str) -> Vec<Envelope> {
        self.messages(&self.config.stream, self.config.subject(kind))
            .await
            .iter()
            .map(|m| Envelope::decode(&m.payload).expect("an envelope"))
            .collect()
    }

    /// Waits until item-service has handled every `kind` event published so far.
    async fn handled(&self, kind: &str) {
        let spec = ConsumerSpec::new(SERVICE, kind);
        test_support::eventually(Duration::from_secs(30), || async {
            (consumer::lag(&self.broker, &spec).await.ok()? == 0).then_some(())
        })
        .await;
    }

    /// Waits until `n` events of `kind` are on the stream.
    async fn until_events(&self, kind: &str, n: usize) -> Vec<Envelope> {
        test_support::eventually(Duration::from_secs(30), || async {
            let events = self.events(kind).await;
            (events.len() >= n).then_some(events)
        })
        .await
    }

    /// The reasons of the messages item-service's `kind` consumer parked.
    async fn parked(&self, kind: &str) -> Vec<String> {
        let durable = ConsumerSpec::new(SERVICE, kind).durable;
        self.messages(
            &self.config.parked_stream(),
            self.config.parked_subject(&durable, kind),
        )
        .await
        .iter()
        .filter_map(|m| {
            let reason = m.headers.as_ref()?.get(consumer::PARKED_REASON)?;
            Some(reason.as_str().to_owned())
        })
        .collect()
    }
}

async fn reservation(app: &TestApp, id: &str) -> pb::Reservation {
    app.client
        .clone()
        .get_reservation(pb::GetReservationRequest {
            reservation_id: id.into(),
        })
        .await
        .expect("get reservation")
        .into_inner()
        .reservation
        .expect("reservation")
}

/// The sum of the samples of `name` carrying every label of `labels`.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn consumed(metrics: &str, kind: &str, outcome: &str) -> f64 {
    let durable = ConsumerSpec::new(SERVICE, kind).durable;
    sample(
        metrics,
        "events_consumed_total",
        &[("consumer", &durable), ("outcome", outcome)],
    )
}

#[tokio::test]
async fn a_checkout_request_holds_the_stock_and_announces_it_priced_once() {
    let stream = Stream::new().await;
    let app = stream.spawn_with(|_| {}).await;
    let pen = app.create("ASYNC-PEN", "Pen", "office", 250, 5).await;
    let pad = app.create("ASYNC-PAD", "Pad", "office", 1000, 3).await;

    let request = stream
        .request("order-1", &[(&pen.id, 2), (&pad.id, 1)])
        .await;
    let reserved = stream.until_events(STOCK_RESERVED, 1).await;
    let event = &reserved[0];
    assert_eq!(event.id, checkout::event_id("order-1", STOCK_RESERVED));
    assert_eq!(event.key, "order-1");
    let data: StockReserved = checkout::data(event).expect("a StockReserved");
    assert_eq!(data.order_id, "order-1");
    assert_eq!(data.reservation_id, "order-1");
    assert_eq!(data.user_id, "user-of-order-1");
    assert_eq!(data.card_token, "tok_visa_4242");
    assert_eq!(data.currency, "USD");
    assert_eq!(data.amount_cents, 2 * 250 + 1000);
    let priced: Vec<_> = data
        .lines
        .iter()
        .map(|l| {
            (
                l.item_id.as_str(),
                l.sku.as_str(),
                l.name.as_str(),
                l.quantity,
                l.unit_price_cents,
            )
        })
        .collect();
    assert_eq!(
        priced,
        [
            (pen.id.as_str(), "ASYNC-PEN", "Pen", 2, 250),
            (pad.id.as_str(), "ASYNC-PAD", "Pad", 1, 1000)
        ]
    );
    assert_eq!(app.stock(&pen.id).await, 3);
    assert_eq!(app.stock(&pad.id).await, 2);
    let held = reservation(&app, "order-1").await;
    assert_eq!(held.status, ReservationStatus::Reserved as i32);
    // Held for the asynchronous checkout's long hold, not the synchronous one.
    let expires = held.expires_at.expect("expiry").seconds;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!(
        expires - now > app.config.reservation_ttl_secs as i64,
        "expires in {}s",
        expires - now
    );

    // Delivered again beyond the broker's duplicate window: nothing taken or announced twice.
    stream.redeliver(&request).await;
    stream.handled(CHECKOUT_REQUESTED).await;
    assert_eq!(app.stock(&pen.id).await, 3);
    assert_eq!(app.stock(&pad.id).await, 2);
    let metrics = app.metrics().await;
    assert_eq!(consumed(&metrics, CHECKOUT_REQUESTED, "applied"), 1.0);
    assert_eq!(consumed(&metrics, CHECKOUT_REQUESTED, "duplicate"), 1.0);
    assert_eq!(
        sample(
            &metrics,
            "events_published_total",
            &[("kind", STOCK_RESERVED)]
        ),
        1.0,
        "published once, never republished:\n{metrics}"
    );
    assert_eq!(stream.events(STOCK_RESERVED).await.len(), 1);
    assert!(stream.events(STOCK_REFUSED).await.is_empty());
    app.stop().await;
}

/// The process that got the first delivery created the reservation and took a line, then
/// died before deciding: the redelivery finishes the work, taking nothing twice.
#[tokio::test]
async fn a_request_whose_first_delivery_died_half_way_is_finished_by_the_redelivery() {
    let stream = Stream::new().await;
    let app = stream.spawn_with(|_| {}).await;
    let a = app.create("ASYNC-HALF-A", "A", "c", 100, 5).await;
    let b = app.create("ASYNC-HALF-B", "B", "c", 300, 5).await;
    let line = |id: &str, quantity| ItemLine {
        item: ItemId::parse(id, "item").expect("an item id"),
        quantity,
    };
    let lines = [line(&a.id, 2), line(&b.id, 1)];
    let rid = ReservationId::parse("order-h").expect("an id");
    let dead = Reservations::new(
        app.service.database(),
        Cache::off(),
        Duration::from_secs(900),
    );
    let begun = dead
        .begin(&rid, &lines, Duration::from_secs(900))
        .await
        .expect("begin");
    assert!(matches!(begun, Begun::Fresh));
    assert_eq!(
        dead.take_lines(&rid, &lines[..1]).await.expect("take"),
        None
    );

    stream.request("order-h", &[(&a.id, 2), (&b.id, 1)]).await;
    let reserved = stream.until_events(STOCK_RESERVED, 1).await;
    let data: StockReserved = checkout::data(&reserved[0]).expect("a StockReserved");
    assert_eq!(data.amount_cents, 2 * 100 + 300);
    assert_eq!(app.stock(&a.id).await, 3, "taken once");
    assert_eq!(app.stock(&b.id).await, 4);
    assert_eq!(
        reservation(&app, "order-h").await.status,
        ReservationStatus::Reserved as i32
    );
    app.stop().await;
}

#[tokio::test]
async fn a_request_that_cannot_be_served_is_refused_with_the_reason_and_the_field() {
    let stream = Stream::new().await;
    let app = stream.spawn_with(|_| {}).await;
    let plenty = app.create("ASYNC-MANY", "Many", "c", 100, 10).await;
    let scarce = app.create("ASYNC-FEW", "Few", "c", 100, 1).await;
    let missing = "0123456789abcdef01234567";

    stream
        .request("short", &[(&plenty.id, 2), (&scarce.id, 2)])
        .await;
    stream.request("gone", &[(missing, 1)]).await;
    stream.request("empty-line", &[(&plenty.id, 0)]).await;
    let refused = stream.until_events(STOCK_REFUSED, 3).await;
    let refusal = |order: &str| -> Refusal {
        let e = refused
            .iter()
            .find(|e| e.key == order)
            .unwrap_or_else(|| panic!("a refusal of {order}"));
        assert_eq!(e.id, checkout::event_id(order, STOCK_REFUSED));
        checkout::data(e).expect("a Refusal")
    };
    let short = refusal("short");
    assert_eq!(short.failure, CheckoutFailure::OutOfStock);
    assert_eq!(short.field.as_deref(), Some("lines[1].quantity"));
    assert!(short.message.contains("1 left"), "{short:?}");
    let gone = refusal("gone");
    assert_eq!(gone.failure, CheckoutFailure::ItemNotFound);
    assert_eq!(gone.field.as_deref(), Some("lines[0].item_id"));
    let bad = refusal("empty-line");
    assert_eq!(bad.failure, CheckoutFailure::InvalidOrder);
    assert_eq!(bad.field.as_deref(), Some("lines[0].quantity"));

    // Nothing held, not even the line that fitted.
    assert_eq!(app.stock(&plenty.id).await, 10);
    assert_eq!(app.stock(&scarce.id).await, 1);
    let rejected = reservation(&app, "short").await;
    assert_eq!(rejected.status, ReservationStatus::Rejected as i32);
    assert!(stream.events(STOCK_RESERVED).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_completed_order_commits_its_reservation_and_the_stock_stays_sold() {
    let stream = Stream::new().await;
    let app = stream.spawn_with(|_| {}).await;
    let item = app.create("ASYNC-SOLD", "Sold", "c", 700, 4).await;

    stream.request("order-c", &[(&item.id, 3)]).await;
    stream.until_events(STOCK_RESERVED, 1).await;
    let completed = stream.complete("order-c").await;
    stream.handled(ORDER_COMPLETED).await;
    assert_eq!(
        reservation(&app, "order-c").await.status,
        ReservationStatus::Committed as i32
    );
    // Delivered again, and a sweep: still sold, once.
    stream.redeliver(&completed).await;
    stream.handled(ORDER_COMPLETED).await;
    app.service.sweep_once().await.expect("sweep");
    assert_eq!(app.stock(&item.id).await, 1);
    assert_eq!(
        reservation(&app, "order-c").await.status,
        ReservationStatus::Committed as i32
    );
    let metrics = app.metrics().await;
    assert_eq!(consumed(&metrics, ORDER_COMPLETED, "applied"), 1.0);
    assert_eq!(consumed(&metrics, ORDER_COMPLETED, "duplicate"), 1.0);
    // A cancellation cannot undo a sale: it is parked, the stock stays sold.
    stream.cancel("order-c").await;
    let parked = test_support::eventually(Duration::from_secs(30), || async {
        let p = stream.parked(ORDER_CANCELLED).await;
        (!p.is_empty()).then_some(p)
    })
    .await;
    assert!(parked[0].contains("committed"), "{parked:?}");
    assert_eq!(app.stock(&item.id).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_cancelled_order_gives_its_stock_back_exactly_once() {
    let stream = Stream::new().await;
    let app = stream.spawn_with(|_| {}).await;
    let item = app.create("ASYNC-BACK", "Back", "c", 300, 5).await;

    stream.request("order-x", &[(&item.id, 2)]).await;
    stream.until_events(STOCK_RESERVED, 1).await;
    assert_eq!(app.stock(&item.id).await, 3);
    let cancelled = stream.cancel("order-x").await;
    stream.handled(ORDER_CANCELLED).await;
    assert_eq!(app.stock(&item.id).await, 5);
    stream.redeliver(&cancelled).await;
    stream.handled(ORDER_CANCELLED).await;
    assert_eq!(app.stock(&item.id).await, 5, "given back once");
    assert_eq!(
        reservation(&app, "order-x").await.status,
        ReservationStatus::Released as i32
    );

    // Refused orders held nothing: their cancellation changes nothing.
    stream.request("order-r", &[(&item.id, 6)]).await;
    stream.until_events(STOCK_REFUSED, 1).await;
    stream.cancel("order-r").await;
    // Cancelled before its request arrived: the late request reserves nothing.
    stream.cancel("order-late").await;
    stream.handled(ORDER_CANCELLED).await;
    stream.request("order-late", &[(&item.id, 1)]).await;
    stream.handled(CHECKOUT_REQUESTED).await;
    assert_eq!(app.stock(&item.id).await, 5);

    let metrics = app.metrics().await;
    assert_eq!(consumed(&metrics, ORDER_CANCELLED, "applied"), 1.0);
    assert_eq!(consumed(&metrics, ORDER_CANCELLED, "duplicate"), 1.0);
    assert_eq!(consumed(&metrics, ORDER_CANCELLED, "ignored"), 2.0);
    assert_eq!(consumed(&metrics, CHECKOUT_REQUESTED, "ignored"), 1.0);
    assert_eq!(stream.events(STOCK_RESERVED).await.len(), 1);
    app.stop().await;
}

/// The oversell test of the asynchronous path at item level: K requests for S < K units.
/// Two replicas share the durable consumer and the outbox, and synchronous ReserveStock
/// calls race them for the same units meanwhile (one consumer handles its messages one at
/// a time, so the calls are what makes every request contend with others).
#[tokio::test]
async fn k_concurrent_requests_for_s_units_reserve_exactly_s() {
    const K: usize = 24;
    const SYNC: usize = 16;
    const S: i64 = 10;
    let stream = Stream::new().await;
    let first = stream.spawn_with(|_| {}).await;
    let database = first.config.mongodb_database.clone();
    let second = stream.spawn_with(|c| c.mongodb_database = database).await;
    let item = first.create("ASYNC-HOT", "Hot", "deals", 999, S).await;

    let publishing = futures::future::join_all((0..K).map(|i| {
        let (stream, id) = (&stream, item.id.clone());
        async move { stream.request(&format!("race-{i}"), &[(&id, 1)]).await }
    }));
    let calling = futures::future::join_all((0..SYNC).map(|i| {
        let (app, id) = (if i % 2 == 0 { &first } else { &second }, item.id.clone());
        async move { app.reserve(&format!("sync-{i}"), &[(&id, 1)]).await.is_ok() }
    }));
    let (_, calls) = tokio::join!(publishing, calling);
    let sync_reserved = calls.iter().filter(|ok| **ok).count();

    // Every request is decided once, with its event.
    test_support::eventually(Duration::from_secs(60), || async {
        let decided =
            stream.events(STOCK_RESERVED).await.len() + stream.events(STOCK_REFUSED).await.len();
        (decided >= K).then_some(())
    })
    .await;
    stream.handled(CHECKOUT_REQUESTED).await;
    let reserved = stream.events(STOCK_RESERVED).await;
    let refused = stream.events(STOCK_REFUSED).await;
    assert_eq!(
        reserved.len() + sync_reserved,
        S as usize,
        "exactly the stock was sold ({} asynchronously, {sync_reserved} synchronously)",
        reserved.len()
    );
    assert_eq!(reserved.len() + refused.len(), K);
    for e in &refused {
        let r: Refusal = checkout::data(e).expect("a Refusal");
        assert_eq!(r.failure, CheckoutFailure::OutOfStock, "{r:?}");
        assert_eq!(r.field.as_deref(), Some("lines[0].quantity"));
    }
    let mut orders: Vec<_> = reserved.iter().chain(&refused).map(|e| &e.key).collect();
    orders.sort();
    orders.dedup();
    assert_eq!(orders.len(), K, "one decision per order");
    assert_eq!(first.stock(&item.id).await, 0);
    assert_eq!(second.stock(&item.id).await, 0);
    // No event was published twice by the two relays (both replicas live in this process,
    // so one scrape counts both).
    let metrics = first.metrics().await;
    let published = |kind| sample(&metrics, "events_published_total", &[("kind", kind)]);
    assert_eq!(
        published(STOCK_RESERVED) + published(STOCK_REFUSED),
        K as f64
    );
    second.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn the_sweeper_leaves_an_asynchronous_hold_alone_until_its_own_expiry() {
    let stream = Stream::new().await;
    // The synchronous hold expires after 1 s; the asynchronous one keeps its default.
    let app = stream.spawn_with(|c| c.reservation_ttl_secs = 1).await;
    let item = app.create("ASYNC-LONG", "Long", "c", 100, 10).await;
    app.reserve("sync-hold", &[(&item.id, 1)])
        .await
        .expect("reserve");
    stream.request("async-hold", &[(&item.id, 2)]).await;
    stream.until_events(STOCK_RESERVED, 1).await;
    assert_eq!(app.stock(&item.id).await, 7);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.service.sweep_once().await.expect("sweep");
    assert_eq!(
        reservation(&app, "sync-hold").await.status,
        ReservationStatus::Released as i32
    );
    assert_eq!(
        reservation(&app, "async-hold").await.status,
        ReservationStatus::Reserved as i32
    );
    assert_eq!(app.stock(&item.id).await, 8);
    app.stop().await;
}

#[tokio::test]
async fn an_expired_asynchronous_hold_comes_back_once_and_a_late_completion_is_parked() {
    let stream = Stream::new().await;
    let app = stream
        .spawn_with(|c| c.async_reservation_ttl_secs = 1)
        .await;
    let item = app.create("ASYNC-EXP", "Exp", "c", 100, 4).await;
    stream.request("order-e", &[(&item.id, 3)]).await;
    stream.request("order-f", &[(&item.id, 1)]).await;
    stream.until_events(STOCK_RESERVED, 2).await;
    assert_eq!(app.stock(&item.id).await, 0);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.service.sweep_once().await.expect("sweep");
    assert_eq!(app.stock(&item.id).await, 4);
    // The cancellation that follows finds it released: stock comes back only once.
    stream.cancel("order-e").await;
    stream.handled(ORDER_CANCELLED).await;
    assert_eq!(app.stock(&item.id).await, 4);
    assert_eq!(
        consumed(&app.metrics().await, ORDER_CANCELLED, "duplicate"),
        1.0
    );
    // Paid after the hold expired: nothing to commit; parked for a person, with why.
    stream.complete("order-f").await;
    let parked = test_support::eventually(Duration::from_secs(30), || async {
        let p = stream.parked(ORDER_COMPLETED).await;
        (!p.is_empty()).then_some(p)
    })
    .await;
    assert!(
        parked[0].contains("order-f") && parked[0].contains("expired"),
        "{parked:?}"
    );
    assert_eq!(app.stock(&item.id).await, 4);
    app.stop().await;
}
