//! Two payment-service replicas on one database and one card gateway, each running the
//! payment reconciler as deployed: every PENDING payment is reconciled by exactly one of
//! them, and the card gateway is asked about it once.

use std::time::Duration;

use futures::future::join_all;
use serde_json::json;
use shop_proto::payment::v1::{
    self as pb, PaymentStatus, payment_service_client::PaymentServiceClient,
};

use crate::harness::*;

const PAYMENTS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_reconcile_each_pending_payment_once() {
    let tune = |c: &mut payment_service::Config| {
        c.processor_timeout_ms = 200;
        c.reconcile_interval_ms = 50;
    };
    let first = spawn_app_with(tune).await;
    let mut config =
        test_support::payment::config(&first.db_url, &first.gateway.url, &first.gateway.secret_key);
    tune(&mut config);
    let app = payment_service::Application::build(config)
        .await
        .expect("the second replica builds");
    let second_addr = app.grpc_addr();
    let mut second = test_support::Running::spawn(second_addr, |stop| app.run_until_stopped(stop));
    let second_client = PaymentServiceClient::new(test_support::identity::operator(
        second_addr,
        platform::identity::PAYMENT_SERVICE,
    ));
    let reconciled_before = counter_of(&first, "payment_reconciled_total").await;

    // The gateway swallows every charge: each payment is left PENDING, outcome unknown.
    first
        .put_admin(
            "/admin/hangs",
            json!([{"method": "POST /v1/charges", "error_rate": 1.0}]),
        )
        .await;
    let requests: Vec<pb::ChargeRequest> = (0..PAYMENTS)
        .map(|i| charge_request(&format!("repl-{i}"), 100 + i as i64, VISA_OK))
        .collect();
    let charged = join_all(requests.iter().enumerate().map(|(i, req)| {
        // Half through each replica, as a balanced caller would.
        let mut client = if i % 2 == 0 {
            first.client.clone()
        } else {
            second_client.clone()
        };
        let req = req.clone();
        async move { client.charge(req).await }
    }))
    .await;
    assert!(charged.iter().all(Result::is_err), "every charge hung");

    // Both reconcilers settle them; the gateway never charged, so each ends FAILED.
    let settled = eventually(Duration::from_secs(60), || async {
        let mut done = Vec::new();
        for req in &requests {
            let page = first
                .client
                .clone()
                .list_payments(pb::ListPaymentsRequest {
                    user_id: req.user_id.clone(),
                    page: None,
                })
                .await
                .expect("list payments")
                .into_inner()
                .payments;
            match page.as_slice() {
                [p] if p.status() != PaymentStatus::Pending => done.push(p.clone()),
                _ => return None,
            }
        }
        Some(done)
    })
    .await;
    assert_eq!(settled.len(), PAYMENTS);
    assert!(
        settled.iter().all(|p| p.status() == PaymentStatus::Failed),
        "{settled:?}"
    );
    // More rounds of the reconcilers find nothing left: wait until rounds that started
    // after everything settled have finished (at most one in flight per replica now), and
    // ask each replica for one more round of its own.
    let rounds = counter_of(&first, "payment_reconcile_rounds_total").await;
    eventually(Duration::from_secs(60), || async {
        let now = counter_of(&first, "payment_reconcile_rounds_total").await;
        (now >= rounds + 4.0).then_some(())
    })
    .await;
    for client in [first.client.clone(), second_client.clone()] {
        let left = client
            .clone()
            .reconcile(pb::ReconcileRequest::default())
            .await
            .expect("reconcile")
            .into_inner()
            .payments;
        assert!(left.is_empty(), "nothing left to reconcile: {left:?}");
    }

    let stats = first.stats().await;
    assert_eq!(stats.charges_created, 0, "no money moved");
    assert_eq!(
        stats.key_lookups, PAYMENTS as u64,
        "the gateway was asked once about each payment"
    );
    // Both replicas report into this process's metrics: one reconciliation per payment.
    let reconciled = counter_of(&first, "payment_reconciled_total").await - reconciled_before;
    assert_eq!(reconciled, PAYMENTS as f64);

    second.stop().await;
    first.finish().await;
}

async fn counter_of(app: &TestApp, name: &str) -> f64 {
    test_support::counter(&test_support::metrics(app.metrics_addr).await, name)
}
