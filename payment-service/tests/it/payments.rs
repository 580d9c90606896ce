//! payment-service over gRPC against MariaDB and a real (in-process) card gateway.

use std::time::Duration;

use crate::harness::*;
use serde_json::json;
use shop_proto::{
    common::v1::{Money, PageRequest},
    payment::v1::{self as pb, PaymentStatus},
};
use tonic::Code;

fn field(s: &tonic::Status) -> Option<String> {
    platform::error::field_of(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_test_card_outcome() {
    let app = spawn_app().await;

    let ok = app
        .charge(charge_request("ok-1", 1999, "4242 4242 4242 4242"))
        .await
        .expect("charge");
    assert_eq!(ok.status(), PaymentStatus::Succeeded);
    assert_eq!(ok.card_brand, "visa");
    assert_eq!(ok.card_last4, "4242");
    assert!(ok.gateway_charge_id.starts_with("ch_"));
    assert_eq!(ok.amount, Some(usd(1999)));
    assert_eq!(ok.amount_refunded, Some(usd(0)));
    assert!(ok.decline_code.is_empty());

    let declined = app
        .charge(charge_request("declined-1", 500, VISA_DECLINED))
        .await
        .expect("a decline is an answer, not an error");
    assert_eq!(declined.status(), PaymentStatus::Declined);
    assert_eq!(declined.decline_code, "card_declined");
    assert!(declined.gateway_charge_id.starts_with("ch_"));

    let no_funds = app
        .charge(charge_request("nofunds-1", 500, VISA_NO_FUNDS))
        .await
        .expect("charge");
    assert_eq!(no_funds.status(), PaymentStatus::Declined);
    assert_eq!(no_funds.decline_code, "insufficient_funds");

    let mc = app
        .charge(charge_request("mc-1", 700, "5555-5555-5555-4444"))
        .await
        .expect("charge");
    assert_eq!(
        (mc.status(), mc.card_brand.as_str()),
        (PaymentStatus::Succeeded, "mastercard")
    );

    let stats = app.stats().await;
    assert_eq!(stats.charges_created, 4);
    assert_eq!(stats.charges_succeeded, 2);
    assert_eq!(stats.charges_failed, 2);

    assert_eq!(app.get(&ok.payment_id).await, ok);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validation_error_names_its_field_and_never_echoes_the_card() {
    let app = spawn_app_with(|c| c.max_amount_minor = 100_000).await;
    let base = || charge_request("validation", 1000, VISA_OK);
    let mut cases: Vec<(&str, pb::ChargeRequest)> = Vec::new();
    let mut r = base();
    r.idempotency_key = String::new();
    cases.push(("idempotency_key", r));
    let mut r = base();
    r.idempotency_key = "x".repeat(256);
    cases.push(("idempotency_key", r));
    let mut r = base();
    r.user_id = "not-a-uuid".into();
    cases.push(("user_id", r));
    let mut r = base();
    r.order_id = String::new();
    cases.push(("order_id", r));
    let mut r = base();
    r.amount = None;
    cases.push(("amount", r));
    let mut r = base();
    r.amount = Some(usd(0));
    cases.push(("amount.amount_minor", r));
    let mut r = base();
    r.amount = Some(usd(-5));
    cases.push(("amount.amount_minor", r));
    let mut r = base();
    r.amount = Some(usd(100_001));
    cases.push(("amount.amount_minor", r));
    let mut r = base();
    r.amount = Some(Money {
        amount_minor: 100,
        currency: "XYZ".into(),
    });
    cases.push(("amount.currency", r));
    let mut r = base();
    r.card = None;
    cases.push(("card", r));
    let mut r = base();
    r.card = Some(card("4242424242424241"));
    cases.push(("card.number", r));
    let mut r = base();
    r.card = Some(card("4242-4242-4242-424X"));
    cases.push(("card.number", r));
    let mut r = base();
    r.card = Some(card("42424242"));
    cases.push(("card.number", r));
    let mut r = base();
    r.card.as_mut().expect("card").exp_month = 13;
    cases.push(("card.exp_month", r));
    let mut r = base();
    r.card.as_mut().expect("card").exp_year = 2020;
    cases.push(("card.exp_year", r));
    let mut r = base();
    r.card.as_mut().expect("card").cvc = "12".into();
    cases.push(("card.cvc", r));
    let mut r = base();
    r.description = "d".repeat(201);
    cases.push(("description", r));

    for (want, req) in cases {
        let number = req
            .card
            .as_ref()
            .map(|c| c.number.clone())
            .unwrap_or_default();
        let err = app.charge(req).await.expect_err(want);
        assert_eq!(err.code(), Code::InvalidArgument, "{want}: {err:?}");
        assert_eq!(field(&err).as_deref(), Some(want), "{err:?}");
        if number.len() > 4 {
            assert!(
                !err.message().contains(&number),
                "error echoes the card number"
            );
        }
        assert!(!err.message().contains(CVC));
    }
    // Nothing reached the gateway or the database.
    assert_eq!(app.stats().await.charges_created, 0);
    let list = app
        .client
        .clone()
        .list_payments(pb::ListPaymentsRequest {
            user_id: new_id(),
            page: None,
        })
        .await
        .expect("list");
    assert!(list.into_inner().payments.is_empty());
    // An expired card as the gateway itself sees it (past month of the current year or older).
    let resp = app
        .http
        .post(app.gateway_url("/v1/charges"))
        .json(&json!({"amount": 100, "currency": "usd",
            "card": {"number": VISA_OK, "exp_month": 1, "exp_year": 2001, "cvc": CVC}}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 402);
    app.http
        .get(app.gateway_url("/health"))
        .send()
        .await
        .expect("health");
    // A database with no rows still has the migration table to scan.
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_charges_with_one_key_charge_once_and_answer_identically() {
    let app = spawn_app().await;
    // A slow gateway keeps the first request in flight while the other nine arrive.
    app.put_admin(
        "/admin/faults",
        json!([{"method": "POST /v1/charges", "latency": {"kind": "fixed", "ms": 300}}]),
    )
    .await;
    let req = charge_request("same-key-10", 4200, VISA_OK);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut client = app.client.clone();
        let req = req.clone();
        tasks.push(tokio::spawn(async move { client.charge(req).await }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        let resp = t.await.expect("task").expect("every call succeeds");
        answers.push(resp.into_inner().payment.expect("payment"));
    }
    assert_eq!(answers[0].status(), PaymentStatus::Succeeded);
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "ten identical answers"
    );
    let stats = app.stats().await;
    assert_eq!(stats.charges_created, 1, "charged exactly once");

    // A later retry replays too, without touching the gateway.
    let again = app.charge(req.clone()).await.expect("retry");
    assert_eq!(again, answers[0]);
    assert_eq!(app.stats().await.charges_created, 1);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_with_other_parameters_is_failed_precondition() {
    let app = spawn_app().await;
    let first = charge_request("reused", 1000, VISA_OK);
    let paid = app.charge(first.clone()).await.expect("first");

    let mut other_amount = first.clone();
    other_amount.amount = Some(usd(1001));
    let mut other_card = first.clone();
    other_card.card = Some(card("5555555555554444"));
    let mut other_user = first.clone();
    other_user.user_id = new_id();
    for req in [other_amount, other_card, other_user] {
        let err = app.charge(req).await.expect_err("mismatch");
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("different parameters"), "{err:?}");
        assert_eq!(field(&err).as_deref(), Some("idempotency_key"));
        assert_eq!(
            platform::reason_of(&err),
            Some(platform::ErrorReason::IdempotencyKeyReused),
            "{err:?}"
        );
    }
    // The original still replays, and the gateway charged once.
    assert_eq!(app.charge(first).await.expect("replay"), paid);
    assert_eq!(app.stats().await.charges_created, 1);
    app.finish().await;
}

async fn refund(
    app: &TestApp,
    payment_id: &str,
    amount: Option<i64>,
    key: &str,
) -> Result<pb::RefundResponse, tonic::Status> {
    app.client
        .clone()
        .refund(pb::RefundRequest {
            payment_id: payment_id.into(),
            amount: amount.map(usd),
            idempotency_key: key.into(),
            reason: "requested_by_customer".into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_are_limited_partial_or_full_and_idempotent() {
    let app = spawn_app().await;
    let paid = app
        .charge(charge_request("to-refund", 1000, VISA_OK))
        .await
        .expect("charge");

    let r1 = refund(&app, &paid.payment_id, Some(300), "r1")
        .await
        .expect("r1");
    let refund1 = r1.refund.expect("refund");
    assert_eq!(refund1.amount, Some(usd(300)));
    assert!(refund1.gateway_refund_id.starts_with("re_"));
    let p = r1.payment.expect("payment");
    assert_eq!(
        (p.status(), p.amount_refunded.clone()),
        (PaymentStatus::Succeeded, Some(usd(300)))
    );

    // Same key: the same refund, no second gateway refund.
    let again = refund(&app, &paid.payment_id, Some(300), "r1")
        .await
        .expect("replay");
    assert_eq!(again.refund, Some(refund1.clone()));
    // Same key, other amount.
    let err = refund(&app, &paid.payment_id, Some(200), "r1")
        .await
        .expect_err("reuse");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // More than is left.
    let err = refund(&app, &paid.payment_id, Some(800), "r2")
        .await
        .expect_err("too much");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        platform::reason_of(&err),
        Some(platform::ErrorReason::RefundTooLarge),
        "{err:?}"
    );
    assert!(err.message().contains("700"), "{err:?}");
    // Wrong currency, zero amount, unknown payment, bad id.
    let err = app
        .client
        .clone()
        .refund(pb::RefundRequest {
            payment_id: paid.payment_id.clone(),
            amount: Some(Money {
                amount_minor: 100,
                currency: "EUR".into(),
            }),
            idempotency_key: "r-eur".into(),
            reason: String::new(),
        })
        .await
        .expect_err("currency");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(field(&err).as_deref(), Some("amount.currency"));
    let err = refund(&app, &paid.payment_id, Some(0), "r-zero")
        .await
        .expect_err("zero");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = refund(&app, &new_id(), Some(1), "r-unknown")
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let err = refund(&app, "nope", Some(1), "r-bad")
        .await
        .expect_err("bad id");
    assert_eq!(err.code(), Code::InvalidArgument);

    // The rest (amount unset) makes it REFUNDED.
    let rest = refund(&app, &paid.payment_id, None, "r3")
        .await
        .expect("rest");
    assert_eq!(rest.refund.expect("refund").amount, Some(usd(700)));
    let p = rest.payment.expect("payment");
    assert_eq!(
        (p.status(), p.amount_refunded),
        (PaymentStatus::Refunded, Some(usd(1000)))
    );
    let err = refund(&app, &paid.payment_id, Some(1), "r4")
        .await
        .expect_err("nothing left");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // A declined payment cannot be refunded.
    let declined = app
        .charge(charge_request("declined-refund", 1000, VISA_DECLINED))
        .await
        .expect("charge");
    let err = refund(&app, &declined.payment_id, None, "r5")
        .await
        .expect_err("declined");
    assert_eq!(err.code(), Code::FailedPrecondition);

    assert_eq!(app.stats().await.refunds_created, 2);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refunds_never_exceed_the_amount() {
    let app = spawn_app().await;
    let paid = app
        .charge(charge_request("concurrent-refunds", 1000, VISA_OK))
        .await
        .expect("charge");
    let mut tasks = Vec::new();
    for i in 0..6 {
        let mut client = app.client.clone();
        let id = paid.payment_id.clone();
        tasks.push(tokio::spawn(async move {
            client
                .refund(pb::RefundRequest {
                    payment_id: id,
                    amount: Some(usd(300)),
                    idempotency_key: format!("cr-{i}"),
                    reason: String::new(),
                })
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}"),
        }
    }
    assert_eq!(ok, 3, "3 x 300 fit into 1000, a 4th does not");
    let p = app.get(&paid.payment_id).await;
    assert_eq!(p.amount_refunded, Some(usd(900)));
    assert_eq!(app.stats().await.refunds_created, 3);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_payments_pages_newest_first() {
    let app = spawn_app().await;
    let user = new_id();
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut req = charge_request(&format!("list-{i}"), 100 + i, VISA_OK);
        req.user_id = user.clone();
        ids.push(app.charge(req).await.expect("charge").payment_id);
    }
    // Someone else's payment stays out.
    app.charge(charge_request("list-other", 100, VISA_OK))
        .await
        .expect("charge");
    ids.reverse();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .client
            .clone()
            .list_payments(pb::ListPaymentsRequest {
                user_id: user.clone(),
                page: Some(PageRequest {
                    page_size: 2,
                    page_token: token.clone(),
                }),
            })
            .await
            .expect("list")
            .into_inner();
        assert!(page.payments.len() <= 2);
        seen.extend(page.payments.into_iter().map(|p| p.payment_id));
        token = page.page.expect("page").next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, ids);
    let err = app
        .client
        .clone()
        .list_payments(pb::ListPaymentsRequest {
            user_id: user,
            page: Some(PageRequest {
                page_size: 2,
                page_token: "garbage".into(),
            }),
        })
        .await
        .expect_err("bad token");
    assert_eq!(field(&err).as_deref(), Some("page.page_token"));
    let err = app
        .client
        .clone()
        .get_payment(pb::GetPaymentRequest {
            payment_id: new_id(),
            order_id: String::new(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    app.finish().await;
}

fn unknown_outcome(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded)
}

async fn only_payment_of(app: &TestApp, user_id: &str) -> pb::Payment {
    let list = app
        .client
        .clone()
        .list_payments(pb::ListPaymentsRequest {
            user_id: user_id.into(),
            page: None,
        })
        .await
        .expect("list")
        .into_inner()
        .payments;
    assert_eq!(list.len(), 1);
    list.into_iter().next().expect("one")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_gateway_that_did_charge_leaves_pending_then_reconcile_succeeds() {
    let app = spawn_app_with(|c| c.processor_timeout_ms = 300).await;
    app.put_admin(
        "/admin/faults",
        json!([{"method": "POST /v1/charges", "latency": {"kind": "fixed", "ms": 3000}}]),
    )
    .await;
    let req = charge_request("slow-charged", 2500, VISA_OK);
    let err = app.charge(req.clone()).await.expect_err("times out");
    assert!(unknown_outcome(err.code()), "{err:?}");
    assert!(!err.message().contains(VISA_OK));
    let pending = only_payment_of(&app, &req.user_id).await;
    assert_eq!(pending.status(), PaymentStatus::Pending);
    assert_eq!(
        (pending.card_brand.as_str(), pending.card_last4.as_str()),
        ("visa", "4242")
    );

    // The gateway is still working on it: reconcile leaves it PENDING rather than guess.
    assert_eq!(
        app.reconcile(&pending.payment_id).await.status(),
        PaymentStatus::Pending
    );

    // The gateway finishes the charge although the caller left.
    eventually(Duration::from_secs(30), || async {
        (app.stats().await.charges_created == 1).then_some(())
    })
    .await;
    let settled = app.reconcile(&pending.payment_id).await;
    assert_eq!(settled.status(), PaymentStatus::Succeeded);
    assert!(settled.gateway_charge_id.starts_with("ch_"));

    // A retry with the key now returns the settled payment; still one charge.
    app.put_admin("/admin/faults", json!([])).await;
    let retried = app.charge(req).await.expect("retry");
    assert_eq!(retried, settled);
    assert_eq!(app.stats().await.charges_created, 1);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_gateway_that_did_not_charge_is_reconciled_as_failed() {
    let app = spawn_app_with(|c| c.processor_timeout_ms = 300).await;
    app.put_admin(
        "/admin/hangs",
        json!([{"method": "POST /v1/charges", "error_rate": 1.0}]),
    )
    .await;
    let req = charge_request("hang", 2500, VISA_OK);
    let err = app.charge(req.clone()).await.expect_err("times out");
    assert!(unknown_outcome(err.code()), "{err:?}");
    let pending = only_payment_of(&app, &req.user_id).await;
    assert_eq!(pending.status(), PaymentStatus::Pending);

    let settled = app.reconcile(&pending.payment_id).await;
    assert_eq!(settled.status(), PaymentStatus::Failed);
    assert_eq!(settled.decline_code, "processing_error");
    assert!(settled.gateway_charge_id.is_empty());
    let stats = app.stats().await;
    assert_eq!(stats.charges_created, 0);
    assert!(stats.injected_hangs >= 1);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_errors_leave_pending_and_a_retry_with_the_key_completes_it() {
    let app = spawn_app_with(|c| c.processor_timeout_ms = 2000).await;
    app.put_admin(
        "/admin/faults",
        json!([{"method": "POST /v1/charges", "error_rate": 1.0}]),
    )
    .await;
    let req = charge_request("flaky", 900, VISA_OK);
    let err = app.charge(req.clone()).await.expect_err("500s");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let pending = only_payment_of(&app, &req.user_id).await;
    assert_eq!(pending.status(), PaymentStatus::Pending);
    let stats = app.stats().await;
    assert!(
        stats.injected_errors >= 2,
        "the create was retried: {stats:?}"
    );
    assert_eq!(stats.charges_created, 0);

    app.put_admin("/admin/faults", json!([])).await;
    let done = app.charge(req).await.expect("retry takes over");
    assert_eq!(done.payment_id, pending.payment_id);
    assert_eq!(done.status(), PaymentStatus::Succeeded);
    assert_eq!(app.stats().await.charges_created, 1);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_card_gateway_opens_the_breaker_so_new_charges_fail_fast_and_leave_nothing() {
    let app = spawn_app_with(|c| {
        c.processor_timeout_ms = 300;
        c.card_breaker_failures = 2;
        c.card_breaker_open_ms = 3000;
    })
    .await;
    app.put_admin(
        "/admin/faults",
        json!([{"method": "POST /v1/charges", "error_rate": 1.0}]),
    )
    .await;
    let first = charge_request("cb-first", 500, VISA_OK);
    for req in [first.clone(), charge_request("cb-second", 500, VISA_OK)] {
        let err = app.charge(req).await.expect_err("500s");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("PENDING"), "{err:?}");
    }
    let asked = app.stats().await.injected_errors;

    // Open: a new key is refused at once, nothing stored, the card gateway not asked.
    let refused = charge_request("cb-refused", 500, VISA_OK);
    let err = app.charge(refused.clone()).await.expect_err("circuit open");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("circuit open"), "{err:?}");
    assert!(err.message().contains("Nothing was charged"), "{err:?}");
    // Shed by this service's own breaker: marked so that callers' breakers do not count it,
    // with the time until the breaker probes again.
    assert!(platform::shedding::is_shed(&err), "{err:?}");
    let wait = platform::shedding::retry_after(&err).expect("retry after");
    assert!(wait <= Duration::from_millis(3000), "{wait:?}");
    assert_eq!(
        app.stats().await.injected_errors,
        asked,
        "gateway not asked"
    );
    let listed = app
        .client
        .clone()
        .list_payments(pb::ListPaymentsRequest {
            user_id: refused.user_id.clone(),
            page: None,
        })
        .await
        .expect("list")
        .into_inner()
        .payments;
    assert!(
        listed.is_empty(),
        "a refused charge leaves no row: {listed:?}"
    );
    let metrics = reqwest::get(format!("http://{}/metrics", app.metrics_addr))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("payment_circuit_state{service=\"card-gateway\"} 1"),
        "{metrics}"
    );

    // The card gateway recovers; after the cool-down one probe goes through and closes
    // the breaker, and the refused key was never spent: it charges normally.
    app.put_admin("/admin/faults", json!([])).await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let paid = app.charge(refused).await.expect("probe charge");
    assert_eq!(paid.status(), PaymentStatus::Succeeded);
    let done = app.charge(first).await.expect("retry of a pending key");
    assert_eq!(done.status(), PaymentStatus::Succeeded);
    assert_eq!(app.stats().await.charges_created, 2);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconcile_timer_settles_pending_payments_by_itself() {
    let app = spawn_app_with(|c| {
        c.processor_timeout_ms = 200;
        c.reconcile_interval_ms = 200;
    })
    .await;
    app.put_admin(
        "/admin/hangs",
        json!([{"method": "POST /v1/charges", "error_rate": 1.0}]),
    )
    .await;
    let req = charge_request("timer", 100, VISA_OK);
    app.charge(req.clone()).await.expect_err("hangs");
    let id = only_payment_of(&app, &req.user_id).await.payment_id;
    let settled = eventually(Duration::from_secs(30), || async {
        let p = app.get(&id).await;
        (p.status() != PaymentStatus::Pending).then_some(p)
    })
    .await;
    assert_eq!(settled.status(), PaymentStatus::Failed);
    app.finish().await;
}

fn grpcurl(args: &[&str]) -> String {
    let bin = env("GRPCURL");
    let out = std::process::Command::new(&bin)
        .args(args)
        .output()
        .expect("run grpcurl");
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_services_and_charges_via_reflection() {
    let app = spawn_app().await;
    let addr = app.addr.to_string();
    let list = {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || grpcurl(&["-plaintext", &addr, "list"]))
            .await
            .expect("grpcurl")
    };
    assert!(list.contains("shop.payment.v1.PaymentService"), "{list}");
    assert!(list.contains("grpc.health.v1.Health"), "{list}");

    let body = json!({
        "idempotency_key": "grpcurl-1",
        "user_id": new_id(),
        "order_id": new_id(),
        "amount": {"amount_minor": 1234, "currency": "EUR"},
        "card": {"number": VISA_OK, "exp_month": 12, "exp_year": 2034, "cvc": CVC},
        "description": "via grpcurl"
    })
    .to_string();
    // The operator's credential, as payment-service/README.md shows it.
    let caller = format!(
        "x-shop-caller: {}",
        test_support::identity::operator_token(platform::identity::PAYMENT_SERVICE)
    );
    let out = tokio::task::spawn_blocking(move || {
        grpcurl(&[
            "-plaintext",
            "-H",
            &caller,
            "-d",
            &body,
            &addr,
            "shop.payment.v1.PaymentService/Charge",
        ])
    })
    .await
    .expect("grpcurl");
    assert!(out.contains("PAYMENT_STATUS_SUCCEEDED"), "{out}");
    assert!(out.contains("\"cardLast4\": \"4242\""), "{out}");
    assert!(!out.contains(VISA_OK));
    app.finish().await;
}

/// The no-card-data scan itself must bite: a planted card number makes it fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_card_data_scan_detects_a_planted_card_number() {
    use sqlx::{Connection, Executor};
    let app = spawn_app().await;
    let mut conn = sqlx::MySqlConnection::connect(&app.db_url)
        .await
        .expect("connect");
    conn.execute("CREATE TABLE planted (note VARCHAR(100))")
        .await
        .expect("create");
    conn.execute("INSERT INTO planted VALUES ('card 4000 0566 5566 5556 was 4000056655665556')")
        .await
        .expect("insert");
    let db_name = app.db_name.clone();
    let scan = tokio::spawn(async move {
        app.assert_no_card_data().await;
        app
    })
    .await;
    assert!(scan.is_err_and(|e| e.is_panic()), "the scan must fail");
    conn.execute(format!("DROP DATABASE `{db_name}`").as_str())
        .await
        .expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_left_pending_by_gateway_errors_completes_on_retry_and_refusals_give_the_amount_back()
 {
    let app = spawn_app().await;
    let paid = app
        .charge(charge_request("refund-flaky", 1000, VISA_OK))
        .await
        .expect("charge");

    app.put_admin(
        "/admin/faults",
        json!([{"method": "POST /v1/refunds", "error_rate": 1.0}]),
    )
    .await;
    let err = refund(&app, &paid.payment_id, Some(400), "rf-1")
        .await
        .expect_err("gateway 500s");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // The amount stays reserved while the refund is pending: no over-refund meanwhile.
    let p = app.get(&paid.payment_id).await;
    assert_eq!(p.amount_refunded, Some(usd(400)));
    let err = refund(&app, &paid.payment_id, Some(700), "rf-2")
        .await
        .expect_err("only 600 left");
    assert_eq!(err.code(), Code::FailedPrecondition);

    app.put_admin("/admin/faults", json!([])).await;
    let done = refund(&app, &paid.payment_id, Some(400), "rf-1")
        .await
        .expect("retry completes the refund");
    assert!(
        done.refund
            .expect("refund")
            .gateway_refund_id
            .starts_with("re_")
    );
    assert_eq!(app.stats().await.refunds_created, 1);

    // Refund the rest behind the service's back; the service's refund is then refused by
    // the gateway, and the reserved amount is given back.
    let resp = app
        .http
        .post(app.gateway_url("/v1/refunds"))
        .json(&json!({"charge": paid.gateway_charge_id}))
        .send()
        .await
        .expect("out-of-band refund");
    assert_eq!(resp.status(), 200);
    let err = refund(&app, &paid.payment_id, None, "rf-3")
        .await
        .expect_err("gateway refuses");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("charge_already_refunded"), "{err:?}");
    let p = app.get(&paid.payment_id).await;
    assert_eq!(
        (p.status(), p.amount_refunded),
        (PaymentStatus::Succeeded, Some(usd(400)))
    );
    // The refusal is what the key now replays.
    let again = refund(&app, &paid.payment_id, None, "rf-3")
        .await
        .expect_err("replayed refusal");
    assert_eq!(again.message(), err.message());
    app.finish().await;
}
