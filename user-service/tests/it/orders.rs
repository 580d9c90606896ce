//! Order history: RecordOrder idempotency, GetOrder ownership, ListOrders paging, and the
//! chained checkout's failure modes that need no other service.

use std::collections::HashSet;

use crate::harness::{self, spawn, unique_email};
use shop_proto::{
    common::v1::{Money, PageRequest, PricedLine},
    user::v1 as pb,
};
use tonic::Code;
use uuid::Uuid;

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency: "USD".into(),
    })
}

fn order(user_id: &str, qty: i32, unit: i64) -> pb::Order {
    pb::Order {
        order_id: Uuid::new_v4().to_string(),
        user_id: user_id.into(),
        lines: vec![PricedLine {
            item_id: "65f0c0ffee0000000000abcd".into(),
            sku: "BOOK-1".into(),
            name: "A Book".into(),
            quantity: qty,
            unit_price: usd(unit),
            line_total: usd(unit * i64::from(qty)),
        }],
        total: usd(unit * i64::from(qty)),
        payment_id: Uuid::new_v4().to_string(),
        reservation_id: "res-1".into(),
        status: pb::OrderStatus::Placed as i32,
        ..Default::default()
    }
}

async fn record(
    app: &harness::TestApp,
    o: pb::Order,
) -> Result<pb::RecordOrderResponse, tonic::Status> {
    app.client
        .clone()
        .record_order(pb::RecordOrderRequest { order: Some(o) })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn record_order_is_idempotent_per_order_id() {
    let app = spawn().await;
    let user = app
        .register(&unique_email(), "password-123", "Eve")
        .await
        .expect("register");
    let o = order(&user.user_id, 2, 1250);
    let first = record(&app, o.clone()).await.expect("first");
    assert!(first.created);
    let stored = first.order.expect("order");
    assert_eq!(stored.total, usd(2500));

    // A retry, even with other content, returns the first order unchanged.
    let mut changed = o.clone();
    changed.payment_id = "something-else".into();
    let again = record(&app, changed).await.expect("retry");
    assert!(!again.created);
    assert_eq!(again.order.expect("order"), stored);

    let got = app
        .client
        .clone()
        .get_order(pb::GetOrderRequest {
            order_id: o.order_id.clone(),
            user_id: user.user_id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(got, stored);
}

#[tokio::test]
async fn orders_are_private_to_their_user() {
    let app = spawn().await;
    let alice = app
        .register(&unique_email(), "password-123", "Alice")
        .await
        .expect("a");
    let bob = app
        .register(&unique_email(), "password-123", "Bob")
        .await
        .expect("b");
    let o = order(&alice.user_id, 1, 100);
    record(&app, o.clone()).await.expect("record");
    let err = app
        .client
        .clone()
        .get_order(pb::GetOrderRequest {
            order_id: o.order_id.clone(),
            user_id: bob.user_id.clone(),
        })
        .await
        .expect_err("not Bob's");
    assert_eq!(err.code(), Code::NotFound);
    // Bob cannot take over Alice's order id either.
    let mut stolen = o;
    stolen.user_id = bob.user_id;
    let err = record(&app, stolen).await.expect_err("other user's id");
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn record_order_rejects_inconsistent_orders() {
    let app = spawn().await;
    let user = app
        .register(&unique_email(), "password-123", "Fay")
        .await
        .expect("r");
    let base = order(&user.user_id, 2, 500);

    let mut wrong_total = base.clone();
    wrong_total.total = usd(999);
    let mut wrong_line = base.clone();
    wrong_line.lines[0].line_total = usd(1);
    let mut no_lines = base.clone();
    no_lines.lines.clear();
    let mut bad_qty = base.clone();
    bad_qty.lines[0].quantity = 0;
    let mut bad_id = base.clone();
    bad_id.order_id = "x".into();
    let mut bad_currency = base.clone();
    bad_currency.total = Some(Money {
        amount_minor: 1000,
        currency: "XXX".into(),
    });
    let mut unknown_user = base.clone();
    unknown_user.user_id = Uuid::new_v4().to_string();

    for (what, o, code, field) in [
        (
            "total",
            wrong_total,
            Code::InvalidArgument,
            Some("order.total"),
        ),
        (
            "line total",
            wrong_line,
            Code::InvalidArgument,
            Some("order.lines[0].line_total"),
        ),
        (
            "no lines",
            no_lines,
            Code::InvalidArgument,
            Some("order.lines"),
        ),
        (
            "quantity",
            bad_qty,
            Code::InvalidArgument,
            Some("order.lines[0].quantity"),
        ),
        (
            "order id",
            bad_id,
            Code::InvalidArgument,
            Some("order.order_id"),
        ),
        (
            "currency",
            bad_currency,
            Code::InvalidArgument,
            Some("order.total.currency"),
        ),
        ("unknown user", unknown_user, Code::NotFound, None),
    ] {
        let err = record(&app, o).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert_eq!(platform::error::field_of(&err).as_deref(), field, "{what}");
    }
}

#[tokio::test]
async fn list_orders_pages_newest_first_without_gaps_or_repeats() {
    let app = spawn().await;
    let user = app
        .register(&unique_email(), "password-123", "Gus")
        .await
        .expect("r");
    let mut recorded = Vec::new();
    for i in 0..45 {
        let o = order(&user.user_id, 1, 100 + i);
        recorded.push(o.order_id.clone());
        record(&app, o).await.expect("record");
    }
    // Someone else's orders never show up.
    let other = app
        .register(&unique_email(), "password-123", "Hal")
        .await
        .expect("r");
    record(&app, order(&other.user_id, 1, 1))
        .await
        .expect("record");

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let resp = app
            .client
            .clone()
            .list_orders(pb::ListOrdersRequest {
                user_id: user.user_id.clone(),
                page: Some(PageRequest {
                    page_size: 10,
                    page_token: token.clone(),
                }),
            })
            .await
            .expect("list")
            .into_inner();
        pages += 1;
        assert!(resp.orders.len() <= 10);
        seen.extend(resp.orders.iter().map(|o| o.order_id.clone()));
        token = resp.page.expect("page").next_page_token;
        if token.is_empty() {
            break;
        }
        assert!(pages < 10, "pagination does not terminate");
    }
    assert_eq!(pages, 5);
    assert_eq!(seen.len(), 45);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 45, "no repeats");
    recorded.reverse();
    assert_eq!(seen, recorded, "newest first");
}

#[tokio::test]
async fn list_orders_rejects_bad_paging() {
    let app = spawn().await;
    let user = app
        .register(&unique_email(), "password-123", "Ian")
        .await
        .expect("r");
    for (page, field) in [
        (
            PageRequest {
                page_size: 101,
                page_token: String::new(),
            },
            "page.page_size",
        ),
        (
            PageRequest {
                page_size: -1,
                page_token: String::new(),
            },
            "page.page_size",
        ),
        (
            PageRequest {
                page_size: 10,
                page_token: "not-a-token".into(),
            },
            "page.page_token",
        ),
    ] {
        let err = app
            .client
            .clone()
            .list_orders(pb::ListOrdersRequest {
                user_id: user.user_id.clone(),
                page: Some(page),
            })
            .await
            .expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(platform::error::field_of(&err).as_deref(), Some(field));
    }
}

#[tokio::test]
async fn chained_checkout_checks_the_token_first_and_fails_fast_without_payment_service() {
    let app = spawn().await;
    let email = unique_email();
    app.register(&email, "password-123", "Jo").await.expect("r");
    let token = app
        .login(&email, "password-123")
        .await
        .expect("login")
        .access_token;
    let req = |access_token: String| pb::ChainedCheckoutRequest {
        access_token,
        idempotency_key: "key-1".into(),
        lines: vec![shop_proto::common::v1::ItemLine {
            item_id: "65f0c0ffee0000000000abcd".into(),
            quantity: 1,
        }],
        card: Some(shop_proto::payment::v1::Card {
            number: "4242424242424242".into(),
            exp_month: 12,
            exp_year: 2040,
            cvc: "123".into(),
        }),
    };
    let err = app
        .client
        .clone()
        .chained_checkout(req("garbage".into()))
        .await
        .expect_err("bad token");
    assert_eq!(err.code(), Code::Unauthenticated);

    // payment-service is not running in this test: UNAVAILABLE, promptly, never a hang.
    let mut call = tonic::Request::new(req(token));
    call.set_timeout(std::time::Duration::from_secs(5));
    let err = app
        .client
        .clone()
        .chained_checkout(call)
        .await
        .expect_err("payment down");
    assert!(
        matches!(err.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{err:?}"
    );
}

#[tokio::test]
async fn chained_checkout_rejects_a_bad_cart_naming_the_field_without_calling_payment() {
    let app = spawn().await;
    let email = unique_email();
    app.register(&email, "password-123", "Jo").await.expect("r");
    let token = app
        .login(&email, "password-123")
        .await
        .expect("login")
        .access_token;
    let a = "65f0c0ffee0000000000abcd";
    let cases: Vec<(Vec<(String, i32)>, &str)> = vec![
        (vec![], "lines"),
        ((0..51).map(|i| (format!("{i:024x}"), 1)).collect(), "lines"),
        (vec![("nope".into(), 1)], "lines[0].item_id"),
        (vec![(a.into(), 0)], "lines[0].quantity"),
        (vec![(a.into(), 1001)], "lines[0].quantity"),
        (
            vec![(a.into(), 1), (a.to_uppercase(), 2)],
            "lines[1].item_id",
        ),
    ];
    for (lines, field) in cases {
        let err = app
            .client
            .clone()
            .chained_checkout(pb::ChainedCheckoutRequest {
                access_token: token.clone(),
                idempotency_key: "key-bad-cart".into(),
                lines: lines
                    .into_iter()
                    .map(|(item_id, quantity)| shop_proto::common::v1::ItemLine {
                        item_id,
                        quantity,
                    })
                    .collect(),
                card: Some(shop_proto::payment::v1::Card {
                    number: "4242424242424242".into(),
                    exp_month: 12,
                    exp_year: 2040,
                    cvc: "123".into(),
                }),
            })
            .await
            .expect_err("bad cart");
        // INVALID_ARGUMENT (not the UNAVAILABLE of the absent payment-service): the cart is
        // checked before the payment hop.
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert_eq!(
            platform::error::field_of(&err).as_deref(),
            Some(field),
            "{err:?}"
        );
    }
}
