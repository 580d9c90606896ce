//! Crash-safe checkout: a checkout whose driver died between two steps (its record left
//! PENDING, its lease run out) is finished by user-service's checkout recovery, forward
//! when the money was taken and the stock is still held, backward otherwise. The "driver"
//! here is the test itself: it begins the record and makes the steps a gateway would have
//! made, through the services' real gRPC APIs, then stops, as a killed gateway would.

use std::{collections::BTreeSet, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};
use shop_proto::{
    common::v1::{ItemLine, Money, PricedLine},
    item::v1::{
        GetReservationRequest, ReleaseReservationRequest, ReservationStatus, ReserveStockRequest,
    },
    payment::v1::{
        Card, ChargeRequest, PaymentStatus, payment_service_client::PaymentServiceClient,
    },
    user::v1::{BeginCheckoutRequest, Order, user_service_client::UserServiceClient},
};
use user_service::recovery::Action;

use crate::common::*;

/// How far the dead driver got.
#[derive(Clone, Copy)]
struct Steps {
    charge: bool,
    /// The stock hold is gone before the recovery looks (expired, swept).
    hold_lost: bool,
}

struct Abandoned {
    order_id: String,
    scoped: String,
}

/// Begins a checkout record of `qty` units of `item` for `user_id` with a 1 s lease and makes
/// the steps `steps` names, then walks away.
async fn abandon(s: &Stack, user_id: &str, item: &Value, qty: i32, steps: Steps) -> Abandoned {
    let key = key();
    let user_uuid = uuid::Uuid::parse_str(user_id).expect("user id");
    let order_id = platform::ids::order_id_for(user_uuid, &key).to_string();
    let scoped = platform::ids::scoped_key(user_uuid, &key);
    let item_id = item["id"].as_str().expect("id").to_owned();
    let unit = item["price"]["amount_minor"].as_i64().expect("price");
    let usd = |amount_minor| Money {
        amount_minor,
        currency: "USD".into(),
    };
    let total = unit * i64::from(qty);
    let mut users = UserServiceClient::new(test_support::identity::operator(
        s.user.addr,
        platform::identity::USER_SERVICE,
    ));
    let begun = users
        .begin_checkout(BeginCheckoutRequest {
            order: Some(Order {
                order_id: order_id.clone(),
                user_id: user_id.to_owned(),
                lines: vec![PricedLine {
                    item_id: item_id.clone(),
                    sku: item["sku"].as_str().expect("sku").to_owned(),
                    name: item["name"].as_str().expect("name").to_owned(),
                    quantity: qty,
                    unit_price: Some(usd(unit)),
                    line_total: Some(usd(total)),
                }],
                total: Some(usd(total)),
                reservation_id: scoped.clone(),
                ..Default::default()
            }),
            lease_ms: 1000,
            strategy: "orchestrated".into(),
            lease_token: String::new(),
        })
        .await
        .expect("begin checkout")
        .into_inner();
    assert!(begun.created && !begun.lease_token.is_empty());

    let mut items = item_client(s).await;
    items
        .reserve_stock(ReserveStockRequest {
            reservation_id: scoped.clone(),
            lines: vec![ItemLine {
                item_id,
                quantity: qty,
            }],
        })
        .await
        .expect("reserve");
    if steps.charge {
        let mut payments = PaymentServiceClient::new(test_support::identity::operator(
            s.payment.addr,
            platform::identity::PAYMENT_SERVICE,
        ));
        let p = payments
            .charge(ChargeRequest {
                idempotency_key: scoped.clone(),
                user_id: user_id.to_owned(),
                order_id: order_id.clone(),
                amount: Some(usd(total)),
                card: Some(Card {
                    number: GOOD_CARD.into(),
                    exp_month: 12,
                    exp_year: 2099,
                    cvc: "123".into(),
                }),
                // As the gateway words it: the charge's key covers the description too.
                description: format!("Shop order {order_id}"),
            })
            .await
            .expect("charge")
            .into_inner()
            .payment
            .expect("payment");
        assert_eq!(p.status(), PaymentStatus::Succeeded);
    }
    if steps.hold_lost {
        items
            .release_reservation(ReleaseReservationRequest {
                reservation_id: scoped.clone(),
            })
            .await
            .expect("release");
    }
    Abandoned { order_id, scoped }
}

/// Waits until the order's record ends (placed or cancelled) and returns GET /api/orders/{id}.
async fn settled(s: &Stack, token: &str, order_id: &str) -> Value {
    test_support::eventually(Duration::from_secs(30), || async {
        let r = s.get(&format!("/api/orders/{order_id}"), Some(token)).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        matches!(
            r.body["order"]["status"].as_str(),
            Some("placed" | "cancelled")
        )
        .then_some(r.body)
    })
    .await
}

async fn reservation_status(s: &Stack, scoped: &str) -> ReservationStatus {
    item_client(s)
        .await
        .get_reservation(GetReservationRequest {
            reservation_id: scoped.to_owned(),
        })
        .await
        .expect("reservation")
        .into_inner()
        .reservation
        .expect("reservation")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_checkout_whose_driver_died_is_completed_forward() {
    let s = stack().await;
    let admin = s.admin().await;
    let item = s.create_item(&admin, "Teapot", 2500, 5).await;
    let (token, user_id) = s.customer().await;
    let a = abandon(
        &s,
        &user_id,
        &item,
        2,
        Steps {
            charge: true,
            hold_lost: false,
        },
    )
    .await;
    let shown = settled(&s, &token, &a.order_id).await;
    assert_eq!(shown["order"]["status"], "placed", "{shown}");
    assert_eq!(shown["order"]["total"]["amount_minor"], 5000);
    assert_eq!(shown["payment"]["status"], "succeeded");
    assert_eq!(
        reservation_status(&s, &a.scoped).await,
        ReservationStatus::Committed
    );
    assert_eq!(s.stock_of(item["id"].as_str().expect("id")).await, 3);
    let stats = s.card.stats();
    assert_eq!((stats.charges_succeeded, stats.refunds_created), (1, 0));
    let listed = s.get("/api/orders", Some(&token)).await;
    assert_eq!(listed.body["orders"][0]["id"], a.order_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_abandoned_before_the_charge_gives_the_stock_back() {
    let s = stack().await;
    let admin = s.admin().await;
    let item = s.create_item(&admin, "Kettle", 4000, 3).await;
    let (token, user_id) = s.customer().await;
    let a = abandon(
        &s,
        &user_id,
        &item,
        3,
        Steps {
            charge: false,
            hold_lost: false,
        },
    )
    .await;
    let shown = settled(&s, &token, &a.order_id).await;
    assert_eq!(shown["order"]["status"], "cancelled", "{shown}");
    assert_eq!(shown["order"]["failure"], "abandoned");
    assert_eq!(shown["payment"], Value::Null);
    assert_eq!(
        reservation_status(&s, &a.scoped).await,
        ReservationStatus::Released
    );
    assert_eq!(s.stock_of(item["id"].as_str().expect("id")).await, 3);
    assert_eq!(s.card.stats().charges_created, 0);
    // Not an order: the list leaves it out.
    let listed = s.get("/api/orders", Some(&token)).await;
    assert_eq!(listed.body["orders"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_checkout_whose_hold_is_gone_is_refunded() {
    let s = stack().await;
    let admin = s.admin().await;
    let item = s.create_item(&admin, "Cup", 900, 4).await;
    let (token, user_id) = s.customer().await;
    let a = abandon(
        &s,
        &user_id,
        &item,
        1,
        Steps {
            charge: true,
            hold_lost: true,
        },
    )
    .await;
    let shown = settled(&s, &token, &a.order_id).await;
    assert_eq!(shown["order"]["status"], "cancelled", "{shown}");
    assert_eq!(shown["order"]["failure"], "reservation_expired");
    assert_eq!(shown["payment"]["status"], "refunded");
    let stats = s.card.stats();
    assert_eq!((stats.charges_succeeded, stats.refunds_created), (1, 1));
    assert_eq!(s.stock_of(item["id"].as_str().expect("id")).await, 4);
}

/// How many checkouts user-service's recovery ended with `action`. Every service of the
/// stack lives in this process and reports into its one set of metrics (the gateway's
/// operator listener serves it), so this is all replicas' count together.
async fn recovered(s: &Stack, action: &str) -> f64 {
    let line = format!("checkout_recovery_total{{action=\"{action}\"}}");
    test_support::counter(&s.gateway_metrics().await, &line)
}

/// Two user-service replicas run the recovery over one database: every abandoned
/// checkout is claimed by exactly one of them and finished once (one charge, no refund, the
/// stock taken once), and both take their share. The test drives the rounds itself: every
/// recovery loop of the stack (its own user-service and both replicas) waits 10 minutes
/// between rounds (its first round runs at start, before anything is abandoned), so
/// nothing but the two concurrent rounds below claims these checkouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_finish_each_abandoned_checkout_once() {
    const IDLE_MS: u64 = 600_000;
    let s = stack_with(Options {
        user: Box::new(|c| c.recovery_interval_ms = IDLE_MS),
        ..Options::default()
    })
    .await;
    let replica = || {
        test_support::user::spawn_on(&s.user_database_url, |c| {
            c.payment_service_url = s.payment.addr.into();
            c.item_service_url = s.item.addr.into();
            c.recovery_interval_ms = IDLE_MS;
            // Half the abandoned checkouts per round.
            c.recovery_batch = 4;
        })
    };
    let (a, b) = (replica().await, replica().await);
    let admin = s.admin().await;
    let item = s.create_item(&admin, "Spoon", 300, 20).await;
    let (token, user_id) = s.customer().await;
    let claimed_before = recovered(&s, "claimed").await;
    let forward_before = recovered(&s, "forward").await;
    let mut abandoned = Vec::new();
    for _ in 0..8 {
        abandoned.push(
            abandon(
                &s,
                &user_id,
                &item,
                1,
                Steps {
                    charge: true,
                    hold_lost: false,
                },
            )
            .await,
        );
    }
    let ids: Vec<uuid::Uuid> = abandoned
        .iter()
        .map(|a| uuid::Uuid::parse_str(&a.order_id).expect("order id"))
        .collect();
    let db = sqlx::PgPool::connect(&s.user_database_url)
        .await
        .expect("user-service's database");
    // Every lease has run out and nothing has claimed any of them yet.
    test_support::eventually(Duration::from_secs(10), || async {
        let due: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orders WHERE order_id = ANY($1) \
             AND status = 'pending' AND attempts = 1 AND lease_until < now()",
        )
        .bind(&ids)
        .fetch_one(&db)
        .await
        .expect("due checkouts");
        (due == 8).then_some(())
    })
    .await;

    // One round on each replica at once: SKIP LOCKED hands each its own four.
    let (from_a, from_b) = tokio::join!(a.recovery.round(), b.recovery.round());
    let (from_a, from_b) = (
        from_a.expect("replica a's round"),
        from_b.expect("replica b's round"),
    );
    let forward = |done: &[(uuid::Uuid, Action)]| {
        assert!(
            done.iter().all(|(_, action)| *action == Action::Forward),
            "{done:?}"
        );
        done.iter().map(|(id, _)| *id).collect::<BTreeSet<_>>()
    };
    let (share_a, share_b) = (forward(&from_a), forward(&from_b));
    assert_eq!(
        (from_a.len(), from_b.len(), share_a.len(), share_b.len()),
        (4, 4, 4, 4),
        "each replica claims and finishes four: a {from_a:?}, b {from_b:?}"
    );
    assert!(
        share_a.is_disjoint(&share_b),
        "a {share_a:?}, b {share_b:?}"
    );
    assert_eq!(
        share_a.union(&share_b).copied().collect::<BTreeSet<_>>(),
        ids.iter().copied().collect::<BTreeSet<_>>()
    );
    // Nothing is left to claim.
    let (again_a, again_b) = tokio::join!(a.recovery.round(), b.recovery.round());
    assert_eq!(
        (
            again_a.expect("a's next round"),
            again_b.expect("b's next round")
        ),
        (vec![], vec![])
    );

    for a in &abandoned {
        let shown = s
            .get(&format!("/api/orders/{}", a.order_id), Some(&token))
            .await;
        assert_eq!(shown.body["order"]["status"], "placed", "{:?}", shown.body);
    }
    let stats = s.card.stats();
    assert_eq!((stats.charges_succeeded, stats.refunds_created), (8, 0));
    assert_eq!(s.stock_of(item["id"].as_str().expect("id")).await, 12);
    // Finished once each: one claim per checkout between the two replicas (a claim adds an
    // attempt to the stored record; the dead driver's was the first) and one forward finish.
    for a in &abandoned {
        let attempts: i32 =
            sqlx::query_scalar("SELECT attempts FROM orders WHERE order_id = $1::uuid")
                .bind(&a.order_id)
                .fetch_one(&db)
                .await
                .expect("the order's record");
        assert_eq!(
            attempts, 2,
            "order {} claimed once by the recovery",
            a.order_id
        );
    }
    assert_eq!(recovered(&s, "claimed").await - claimed_before, 8.0);
    assert_eq!(recovered(&s, "forward").await - forward_before, 8.0);
    drop((a, b));
}

/// A client that retries after its first attempt died gets the order (the retry resumes the
/// record, or finds it finished by the recovery), and is never charged twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_driver_died_gets_the_one_order() {
    let s = stack().await;
    let admin = s.admin().await;
    let item = s.create_item(&admin, "Saucer", 700, 5).await;
    let (token, user_id) = s.customer().await;
    // The dead attempt used the same key the client retries with: rebuild it by hand.
    let a = abandon(
        &s,
        &user_id,
        &item,
        1,
        Steps {
            charge: true,
            hold_lost: false,
        },
    )
    .await;
    let key = a
        .scoped
        .split_once(':')
        .map(|(_, k)| k.to_owned())
        .expect("scoped key");
    let r = s
        .checkout(
            &token,
            "orchestrated",
            &key,
            json!([{"item_id": item["id"], "quantity": 1}]),
            GOOD_CARD,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["order"]["id"], a.order_id.as_str());
    assert_eq!(r.body["order"]["status"], "placed");
    assert_eq!(s.card.stats().charges_created, 1);
    assert_eq!(s.stock_of(item["id"].as_str().expect("id")).await, 4);
}
