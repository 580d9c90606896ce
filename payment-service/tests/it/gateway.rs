//! The mock card gateway over HTTP: test cards, validation, idempotency, faults, stats.

use crate::harness::*;
use card_gateway::api::{Charge, ErrorBody, List, Refund, Stats};
use serde_json::{Value, json};

struct Http {
    base: String,
    http: reqwest::Client,
    /// Keeps the gateway serving for as long as the test uses it.
    _gateway: TestGateway,
}

impl Http {
    async fn new() -> Self {
        let gw = spawn_gateway().await;
        Self {
            base: gw.url.clone(),
            http: operator_http(&gw.secret_key),
            _gateway: gw,
        }
    }

    async fn post(&self, path: &str, key: Option<&str>, body: Value) -> (u16, Value, bool) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status().as_u16();
        let replayed = resp.headers().get("idempotent-replayed").is_some();
        (status, resp.json().await.expect("json"), replayed)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("send");
        (resp.status().as_u16(), resp.json().await.expect("json"))
    }

    async fn put(&self, path: &str, body: Value) -> u16 {
        self.http
            .put(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("send")
            .status()
            .as_u16()
    }

    async fn stats(&self) -> Stats {
        serde_json::from_value(self.get("/admin/stats").await.1).expect("stats")
    }
}

fn charge_body(number: &str, amount: i64) -> Value {
    json!({
        "amount": amount,
        "currency": "usd",
        "description": "gateway test",
        "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": CVC}
    })
}

fn error(v: Value) -> ErrorBody {
    serde_json::from_value(v).expect("error body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_cards_behave_like_stripes() {
    let gw = Http::new().await;
    let (status, body, _) = gw
        .post("/v1/charges", None, charge_body(VISA_OK, 1000))
        .await;
    assert_eq!(status, 200);
    let charge: Charge = serde_json::from_value(body).expect("charge");
    assert_eq!((charge.status.as_str(), charge.paid), ("succeeded", true));
    assert_eq!(charge.payment_method_details.card.last4, "4242");
    assert_eq!(charge.payment_method_details.card.brand, "visa");
    assert_eq!(charge.currency, "usd");

    let (status, body, _) = gw
        .post("/v1/charges", None, charge_body(VISA_DECLINED, 1000))
        .await;
    assert_eq!(status, 402);
    let e = error(body).error;
    assert_eq!(
        (e.kind.as_str(), e.code.as_deref()),
        ("card_error", Some("card_declined"))
    );
    assert_eq!(e.decline_code.as_deref(), Some("generic_decline"));
    let declined_id = e.charge.expect("failed charge id");
    let (status, body) = gw.get(&format!("/v1/charges/{declined_id}")).await;
    assert_eq!(status, 200);
    let declined: Charge = serde_json::from_value(body).expect("charge");
    assert_eq!(declined.status, "failed");
    assert_eq!(declined.decline_code(), "card_declined");

    let (status, body, _) = gw
        .post("/v1/charges", None, charge_body(VISA_NO_FUNDS, 1000))
        .await;
    assert_eq!(status, 402);
    let e = error(body).error;
    assert_eq!(e.code.as_deref(), Some("card_declined"));
    assert_eq!(e.decline_code.as_deref(), Some("insufficient_funds"));

    // Invalid: Luhn, past expiry, bad CVC, missing or bad parameters. No charge is made.
    let (status, body, _) = gw
        .post("/v1/charges", None, charge_body("4242424242424241", 1000))
        .await;
    assert_eq!(status, 402);
    assert_eq!(error(body).error.code.as_deref(), Some("incorrect_number"));
    let mut expired = charge_body(VISA_OK, 1000);
    expired["card"]["exp_year"] = json!(2020);
    let (status, body, _) = gw.post("/v1/charges", None, expired).await;
    assert_eq!(status, 402);
    assert_eq!(
        error(body).error.code.as_deref(),
        Some("invalid_expiry_year")
    );
    let mut bad_cvc = charge_body(VISA_OK, 1000);
    bad_cvc["card"]["cvc"] = json!("1");
    let (status, body, _) = gw.post("/v1/charges", None, bad_cvc).await;
    assert_eq!(status, 402);
    assert_eq!(error(body).error.code.as_deref(), Some("invalid_cvc"));
    let (status, body, _) = gw.post("/v1/charges", None, charge_body(VISA_OK, 0)).await;
    assert_eq!(status, 400);
    assert_eq!(error(body).error.kind, "invalid_request_error");
    let (status, _, _) = gw
        .post(
            "/v1/charges",
            None,
            json!({"amount": 5, "currency": "xyz", "card": charge_body(VISA_OK, 1)["card"]}),
        )
        .await;
    assert_eq!(status, 400);

    let stats = gw.stats().await;
    assert_eq!(stats.charges_created, 3);
    assert_eq!(stats.charges_succeeded, 1);
    assert_eq!(stats.charges_failed, 2);
    let (status, body) = gw.get("/health").await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let metrics = gw
        .http
        .get(format!("{}/metrics", gw.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("card_gateway_charges_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_replays_rejects_other_parameters_and_conflicts_in_flight() {
    let gw = Http::new().await;
    let (s1, b1, r1) = gw
        .post("/v1/charges", Some("k1"), charge_body(VISA_OK, 1000))
        .await;
    let (s2, b2, r2) = gw
        .post("/v1/charges", Some("k1"), charge_body(VISA_OK, 1000))
        .await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(b1, b2, "the same response");
    assert!(!r1 && r2, "the second is marked as replayed");
    assert_eq!(gw.stats().await.charges_created, 1);

    let (s3, b3, _) = gw
        .post("/v1/charges", Some("k1"), charge_body(VISA_OK, 1001))
        .await;
    assert_eq!(s3, 400);
    assert_eq!(error(b3).error.kind, "idempotency_error");

    // A declined charge is replayed too (the first result, whatever it was).
    let (d1, db1, _) = gw
        .post("/v1/charges", Some("k2"), charge_body(VISA_DECLINED, 10))
        .await;
    let (d2, db2, _) = gw
        .post("/v1/charges", Some("k2"), charge_body(VISA_DECLINED, 10))
        .await;
    assert_eq!((d1, d2), (402, 402));
    assert_eq!(db1, db2);

    // Two at once with one key: one executes, the other gets 409.
    assert_eq!(
        gw.put(
            "/admin/faults",
            json!([{"method": "POST /v1/charges", "latency": {"kind": "fixed", "ms": 500}}])
        )
        .await,
        200
    );
    let a = gw.post("/v1/charges", Some("k3"), charge_body(VISA_OK, 77));
    let b = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        gw.post("/v1/charges", Some("k3"), charge_body(VISA_OK, 77))
            .await
    };
    let ((sa, _, _), (sb, bb, _)) = tokio::join!(a, b);
    assert_eq!((sa, sb), (200, 409));
    assert_eq!(
        error(bb).error.code.as_deref(),
        Some("idempotency_key_in_use")
    );
    let stats = gw.stats().await;
    assert_eq!(stats.charges_created, 3);
    assert_eq!(stats.idempotency_conflicts, 1);

    // Lookup by key finds the charge the key made.
    let (status, body) = gw.get("/v1/charges?idempotency_key=k3").await;
    assert_eq!(status, 200);
    let list: List<Charge> = serde_json::from_value(body).expect("list");
    assert_eq!(list.data.len(), 1);
    assert_eq!(list.data[0].amount, 77);
    let (_, body) = gw.get("/v1/charges?idempotency_key=never-used").await;
    let list: List<Charge> = serde_json::from_value(body).expect("list");
    assert!(list.data.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_full_partial_limited_and_idempotent() {
    let gw = Http::new().await;
    let (_, body, _) = gw
        .post("/v1/charges", Some("c"), charge_body(VISA_OK, 1000))
        .await;
    let charge: Charge = serde_json::from_value(body).expect("charge");

    let (s, b, _) = gw
        .post(
            "/v1/refunds",
            Some("r1"),
            json!({"charge": charge.id, "amount": 400}),
        )
        .await;
    assert_eq!(s, 200);
    let r1: Refund = serde_json::from_value(b.clone()).expect("refund");
    assert_eq!(r1.amount, 400);
    let (s, b2, replayed) = gw
        .post(
            "/v1/refunds",
            Some("r1"),
            json!({"charge": charge.id, "amount": 400}),
        )
        .await;
    assert_eq!((s, replayed), (200, true));
    assert_eq!(b, b2);
    let (s, b, _) = gw
        .post(
            "/v1/refunds",
            Some("r2"),
            json!({"charge": charge.id, "amount": 700}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(error(b).error.code.as_deref(), Some("amount_too_large"));
    let (s, b, _) = gw
        .post("/v1/refunds", Some("r3"), json!({"charge": charge.id}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_value::<Refund>(b).expect("refund").amount,
        600
    );
    let (_, b) = gw.get(&format!("/v1/charges/{}", charge.id)).await;
    let after: Charge = serde_json::from_value(b).expect("charge");
    assert_eq!((after.amount_refunded, after.refunded), (1000, true));
    let (s, b, _) = gw
        .post("/v1/refunds", Some("r4"), json!({"charge": charge.id}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        error(b).error.code.as_deref(),
        Some("charge_already_refunded")
    );
    let (s, _, _) = gw
        .post("/v1/refunds", Some("r5"), json!({"charge": "ch_nope"}))
        .await;
    assert_eq!(s, 404);
    assert_eq!(gw.stats().await.refunds_created, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_errors_and_admin_validation() {
    let gw = Http::new().await;
    assert_eq!(
        gw.put("/admin/faults", json!([{"method": "*", "error_rate": 1.0}]))
            .await,
        200
    );
    let (s, b, _) = gw
        .post("/v1/charges", Some("e1"), charge_body(VISA_OK, 5))
        .await;
    assert_eq!(s, 500);
    assert_eq!(error(b).error.kind, "api_error");
    // Health and admin are never faulted.
    assert_eq!(gw.get("/health").await.0, 200);
    let (_, rules) = gw.get("/admin/faults").await;
    assert_eq!(rules[0]["error_rate"], json!(1.0));
    // A 500 before execution is not stored: the retry executes once faults are gone.
    assert_eq!(gw.put("/admin/faults", json!([])).await, 200);
    let (s, _, replayed) = gw
        .post("/v1/charges", Some("e1"), charge_body(VISA_OK, 5))
        .await;
    assert_eq!((s, replayed), (200, false));
    let stats = gw.stats().await;
    assert_eq!((stats.injected_errors, stats.charges_created), (1, 1));
    // Out-of-range rules are refused.
    assert_eq!(
        gw.put("/admin/faults", json!([{"method": "*", "error_rate": 2.0}]))
            .await,
        400
    );
}

#[tokio::test]
async fn the_ledger_keeps_only_the_newest_entries_up_to_its_cap() {
    let gw = test_support::payment::card_gateway_with(|c| c.max_entries = 3).await;
    let http = Http {
        base: gw.url.clone(),
        http: operator_http(&gw.secret_key),
        _gateway: gw,
    };

    let mut ids = Vec::new();
    for i in 0..5 {
        let (status, body, _) = http
            .post(
                "/v1/charges",
                Some(&format!("cap-{i}")),
                charge_body(VISA_OK, 100 + i),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let charge: Charge = serde_json::from_value(body).expect("charge");
        ids.push(charge.id);
    }
    let (status, body) = http.get(&format!("/v1/charges/{}", ids[0])).await;
    assert_eq!(status, 404, "the oldest charge was dropped: {body}");
    let (status, _) = http.get(&format!("/v1/charges/{}", ids[4])).await;
    assert_eq!(status, 200);
    let (_, list) = http.get("/v1/charges?limit=100").await;
    let list: List<Charge> = serde_json::from_value(list).expect("list");
    let listed: Vec<_> = list.data.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(listed, [ids[4].as_str(), ids[3].as_str(), ids[2].as_str()]);
    // The newest idempotency records still replay.
    let (status, body, replayed) = http
        .post("/v1/charges", Some("cap-4"), charge_body(VISA_OK, 104))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(replayed);
}
