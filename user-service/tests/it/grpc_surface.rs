//! What a grpcurl user and an operator see: reflection, health, metrics.

use std::process::Command;

use crate::harness::{self, spawn, unique_email};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn grpcurl() -> String {
    test_support::env("GRPCURL")
}

fn run_grpcurl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(grpcurl())
        .args(args)
        .output()
        .expect("run grpcurl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn health_reports_serving() {
    let app = spawn().await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in ["", "shop.user.v1.UserService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
}

#[tokio::test]
async fn grpcurl_lists_services_and_round_trips_register_and_get_user() {
    let app = spawn().await;
    let addr = app.addr.to_string();
    let (ok, stdout, stderr) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || run_grpcurl(&["-plaintext", &addr, "list"])
    })
    .await
    .expect("join");
    assert!(ok, "grpcurl list failed: {stderr}");
    for s in ["shop.user.v1.UserService", "grpc.health.v1.Health"] {
        assert!(
            stdout.lines().any(|l| l.trim() == s),
            "{s} missing from:\n{stdout}"
        );
    }
    // Only what this server hosts is advertised.
    assert!(!stdout.contains("shop.item.v1.ItemService"), "{stdout}");

    let email = unique_email();
    let body = serde_json::json!({
        "email": email, "password": "grpcurl-pass-1", "displayName": "Curl"
    })
    .to_string();
    let (ok, stdout, stderr) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            run_grpcurl(&[
                "-plaintext",
                "-H",
                &operator_header(),
                "-d",
                &body,
                &addr,
                "shop.user.v1.UserService/Register",
            ])
        }
    })
    .await
    .expect("join");
    assert!(ok, "grpcurl Register failed: {stderr}");
    let registered: serde_json::Value = serde_json::from_str(&stdout).expect("JSON out");
    let user_id = registered["user"]["userId"]
        .as_str()
        .expect("userId")
        .to_owned();
    assert!(!stdout.contains("grpcurl-pass-1"));

    let body = serde_json::json!({ "userId": user_id }).to_string();
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run_grpcurl(&[
            "-plaintext",
            "-H",
            &operator_header(),
            "-d",
            &body,
            &addr,
            "shop.user.v1.UserService/GetUser",
        ])
    })
    .await
    .expect("join");
    assert!(ok, "grpcurl GetUser failed: {stderr}");
    let got: serde_json::Value = serde_json::from_str(&stdout).expect("JSON out");
    assert_eq!(got["user"]["email"], email);
    assert_eq!(got["user"]["displayName"], "Curl");

    // Health through grpcurl too (needs the health descriptor in reflection).
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run_grpcurl(&[
            "-plaintext",
            &app.addr.to_string(),
            "grpc.health.v1.Health/Check",
        ])
    })
    .await
    .expect("join");
    assert!(ok, "grpcurl health failed: {stderr}");
    assert!(stdout.contains("SERVING"));
}

#[tokio::test]
async fn metrics_count_rpcs_by_method_and_code() {
    let app = spawn().await;
    let _ = app.login("nobody@example.com", "whatever-pass").await;
    let body = test_support::metrics(app.metrics_addr).await;
    assert!(
        body.lines()
            .any(|l| l.starts_with("grpc_server_requests_total")
                && l.contains("/shop.user.v1.UserService/Login")
                && l.contains("Unauthenticated")),
        "{body}"
    );
    assert!(body.contains("grpc_server_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn slow_calls_end_with_deadline_exceeded_and_faults_can_be_cleared() {
    use shop_proto::admin::v1::{SetFaultsRequest, fault_admin_client::FaultAdminClient};
    // Every call made 1 s slower by fault injection; the server caps requests at 200 ms.
    let app = harness::spawn_with(|c| {
        c.request_timeout_ms = 200;
        c.faults = r#"[{"method":"*","latency":{"kind":"fixed","ms":1000}}]"#.into();
    })
    .await;
    let req = || shop_proto::user::v1::GetUserRequest {
        user_id: uuid::Uuid::new_v4().to_string(),
    };
    let err = app
        .client
        .clone()
        .get_user(req())
        .await
        .expect_err("too slow");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");

    // The admin service is never slowed down, so the faults can always be turned off.
    FaultAdminClient::new(test_support::identity::operator(
        app.addr,
        platform::identity::USER_SERVICE,
    ))
    .set_faults(SetFaultsRequest { rules: vec![] })
    .await
    .expect("clear faults");
    let err = app
        .client
        .clone()
        .get_user(req())
        .await
        .expect_err("unknown user");
    assert_eq!(err.code(), tonic::Code::NotFound);
}

/// The operator's credential for grpcurl, as user-service/README.md shows it.
fn operator_header() -> String {
    format!(
        "x-shop-caller: {}",
        test_support::identity::operator_token(platform::identity::USER_SERVICE)
    )
}
