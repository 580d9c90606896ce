//! Login throttling at the gateway: per account and per client address, 429 with
//! Retry-After, before user-service spends a password hash on the attempt.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{Options, PASSWORD, Resp, Stack, stack_with, unique_suffix};

async fn stack(tweak: impl FnOnce(&mut gateway::Config) + Send + 'static) -> Stack {
    stack_with(Options {
        gateway: Box::new(tweak),
        ..Options::default()
    })
    .await
}

async fn login(s: &Stack, email: &str, password: &str, forwarded_for: Option<&str>) -> Resp {
    let headers: Vec<(&str, &str)> = forwarded_for
        .map(|f| ("X-Forwarded-For", f))
        .into_iter()
        .collect();
    s.send(
        Method::POST,
        "/api/auth/login",
        None,
        Some(json!({"email": email, "password": password})),
        &headers,
    )
    .await
}

fn retry_after(r: &Resp) -> u64 {
    r.headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After in {:?}", r.headers))
}

#[tokio::test]
async fn an_account_is_throttled_after_its_failures_and_a_success_resets_it() {
    let s = stack(|c| {
        c.login_account_failures = 3;
        c.login_address_failures = 1_000;
    })
    .await;
    let email = format!("throttled-{}@shop.test", unique_suffix());
    s.user(&email).await;

    for _ in 0..2 {
        let r = login(&s, &email, "wrong password!", None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    }
    let r = login(&s, &email, PASSWORD, None).await;
    assert_eq!(r.status, StatusCode::OK, "under the limit: {:?}", r.body);
    // The success cleared the two failures: three more are needed.
    for _ in 0..3 {
        let r = login(&s, &email, "wrong password!", None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    }
    let r = login(&s, &email.to_uppercase(), PASSWORD, None).await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password: {:?}",
        r.body
    );
    assert_eq!(r.code(), "too_many_failed_logins");
    assert_eq!(r.field(), "email");
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("account"), "{message}");
    assert!(retry_after(&r) > 0);

    // Other accounts from the same address log in as usual.
    s.customer().await;
}

#[tokio::test]
async fn an_address_is_throttled_across_accounts_whatever_x_forwarded_for_claims() {
    let s = stack(|c| {
        c.login_account_failures = 1_000;
        c.login_address_failures = 3;
    })
    .await;
    for i in 0..3 {
        let spoofed = format!("203.0.113.{i}");
        let r = login(
            &s,
            &format!("nobody-{i}-{}@shop.test", unique_suffix()),
            "whatever-pass",
            Some(&spoofed),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    }
    let r = login(
        &s,
        &format!("fresh-{}@shop.test", unique_suffix()),
        "whatever-pass",
        Some("198.51.100.9"),
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", r.body);
    assert_eq!(r.code(), "too_many_failed_logins");
    assert_eq!(r.field(), "", "no field to blame: {:?}", r.body);
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("address"), "{message}");
    assert!(retry_after(&r) > 0);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_the_one_throttled() {
    let s = stack(|c| {
        c.login_account_failures = 1_000;
        c.login_address_failures = 3;
        c.trusted_proxies = vec!["127.0.0.1".parse().expect("ip")];
    })
    .await;
    for i in 0..3 {
        let r = login(
            &s,
            &format!("nobody-{i}-{}@shop.test", unique_suffix()),
            "whatever-pass",
            Some("203.0.113.7"),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    }
    let email = format!("fresh-{}@shop.test", unique_suffix());
    let r = login(&s, &email, "whatever-pass", Some("203.0.113.7")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", r.body);
    let r = login(&s, &email, "whatever-pass", Some("203.0.113.8")).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "another client behind the same proxy: {:?}",
        r.body
    );
}
