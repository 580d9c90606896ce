//! Login throttling at the gateway: per account and per client address, 429 with
//! Retry-After, before user-service spends a password hash on the attempt.

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{
    Api, GOOD_CARD, Options, PASSWORD, Resp, Stack, key, stack_with, unique_suffix,
};

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

const ATTACKER: &str = "203.0.113.66";

/// The gateway trusts this test's own address as a proxy, so X-Forwarded-For names the
/// client: the attacker and the customers below come from different addresses.
fn behind_proxy(c: &mut gateway::Config) {
    c.trusted_proxies = vec!["127.0.0.1".parse().expect("ip")];
}

fn from(address: &str) -> [(&str, &str); 1] {
    [("X-Forwarded-For", address)]
}

/// Wrong-password logins from `address`, all sent at once; their statuses.
async fn guesses(api: Api, logins: Vec<(String, String)>) -> Vec<StatusCode> {
    let api = &api;
    join_all(logins.into_iter().map(|(email, address)| async move {
        api.send(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"email": email, "password": "not the password"})),
            &from(&address),
        )
        .await
        .status
    }))
    .await
}

/// What a logged-in customer does while somebody floods the logins: their orders, a login,
/// the catalog, a checkout. Every answer that is not the expected one is returned.
async fn customer_round(s: &Stack, email: &str, token: &str, item_id: &str) -> Vec<String> {
    let me = "198.51.100.20";
    let mut failed = Vec::new();
    let mut expect = |what: &str, r: Resp, want: StatusCode| {
        if r.status != want {
            failed.push(format!("{what}: {} {}", r.status, r.body));
        }
    };
    let r = s
        .send(Method::GET, "/api/orders", Some(token), None, &from(me))
        .await;
    expect("GET /api/orders", r, StatusCode::OK);
    let r = s
        .send(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"email": email, "password": PASSWORD})),
            &from(me),
        )
        .await;
    expect("login", r, StatusCode::OK);
    let r = s
        .send(Method::GET, "/api/items", None, None, &from(me))
        .await;
    expect("GET /api/items", r, StatusCode::OK);
    let r = s
        .checkout(
            token,
            "orchestrated",
            &key(),
            json!([{"item_id": item_id, "quantity": 1}]),
            GOOD_CARD,
        )
        .await;
    expect("checkout", r, StatusCode::CREATED);
    failed
}

/// 200 wrong-password logins at once against a few accounts: the gateway turns most of them
/// away itself (429), so user-service's hashing slots never run out, its breaker never
/// opens, and a logged-in customer's orders, login, browsing and checkout all work
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_does_not_touch_a_logged_in_customer() {
    let s = stack_with(Options {
        gateway: Box::new(|c| {
            behind_proxy(c);
            c.auth_concurrency = 4;
        }),
        // As many hashing slots as the gateway admits logins, and a short wait for one: a
        // login that has to queue for a slot is refused (RESOURCE_EXHAUSTED) soon.
        user: Box::new(|c| {
            c.hash_concurrency = 4;
            c.hash_wait_ms = 100;
        }),
        ..Options::default()
    })
    .await;
    let admin = s.admin().await;
    let item = s.create_item(&admin, "Flood umbrella", 900, 1_000).await;
    let item_id = item["id"].as_str().expect("id").to_owned();
    let email = format!("steady-{}@shop.test", unique_suffix());
    let (token, _) = s.user(&email).await;
    let victims: Vec<String> = (0..3)
        .map(|i| format!("victim-{i}-{}@shop.test", unique_suffix()))
        .collect();
    for v in &victims {
        s.user(v).await;
    }

    let logins = (0..200)
        .map(|i| (victims[i % victims.len()].clone(), ATTACKER.to_owned()))
        .collect();
    let flood = tokio::spawn(guesses(Api::new(s.gateway.addr), logins));
    let mut failed = Vec::new();
    let mut rounds = 0;
    loop {
        let flood_over = flood.is_finished();
        failed.extend(customer_round(&s, &email, &token, &item_id).await);
        rounds += 1;
        // At least one whole round after the flood ended (a breaker it opened stays open).
        if flood_over && rounds >= 2 {
            break;
        }
    }
    let statuses = flood.await.expect("flood task");
    assert!(
        failed.is_empty(),
        "the customer's requests failed during the flood: {failed:#?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::TOO_MANY_REQUESTS),
        "the flood gets 401 or 429 only: {statuses:?}"
    );
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS));
}

/// One address registering fresh accounts as fast as it can: a handful get through, the
/// rest are 429 with Retry-After at once; a customer elsewhere registers and logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_up_flood_from_one_address_gets_a_handful_of_accounts() {
    const LIMIT: u32 = 5;
    let s = stack_with(Options {
        gateway: Box::new(|c| {
            behind_proxy(c);
            c.register_address_limit = LIMIT;
            c.auth_concurrency = 8;
        }),
        ..Options::default()
    })
    .await;
    let flood = {
        let api = Api::new(s.gateway.addr);
        tokio::spawn(async move {
            let api = &api;
            join_all((0..80).map(|i| async move {
                api.send(
                    Method::POST,
                    "/api/auth/register",
                    None,
                    Some(json!({
                        "email": format!("bot-{i}-{}@shop.test", unique_suffix()),
                        "password": "bot password 1",
                        "display_name": "Bot",
                    })),
                    &from(ATTACKER),
                )
                .await
            }))
            .await
        })
    };
    let me = "198.51.100.30";
    let email = format!("newcomer-{}@shop.test", unique_suffix());
    let r = s
        .send(
            Method::POST,
            "/api/auth/register",
            None,
            Some(json!({"email": email, "password": PASSWORD, "display_name": "New"})),
            &from(me),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = s
        .send(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"email": email, "password": PASSWORD})),
            &from(me),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    let answers = flood.await.expect("flood task");
    let created = answers
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    assert!(
        (1..=LIMIT as usize).contains(&created),
        "{created} accounts made by one address"
    );
    for r in answers.iter().filter(|r| r.status != StatusCode::CREATED) {
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", r.body);
        assert!(retry_after(r) > 0);
        assert!(!r.code().is_empty(), "the error body: {:?}", r.body);
    }
}

/// 200 guesses at once at one account, spread over 20 addresses: counted from
/// user-service's side, at most a few passwords are really checked (the account's limit
/// is 5; attempts are reserved before they are sent, one at a time per account).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_burst_at_one_account_gets_only_its_limit_of_checks() {
    let s = stack(behind_proxy).await;
    let email = format!("target-{}@shop.test", unique_suffix());
    s.user(&email).await;
    // Every service of the stack runs in this process and reports into one set of metrics,
    // which the gateway's operator listener serves.
    let checks = || async {
        test_support::counter(
            &s.gateway_metrics().await,
            "user_password_verifications_total",
        )
    };
    let before = checks().await;
    assert!(before >= 1.0, "the metric counts the login above");
    let logins = (0..200)
        .map(|i| (email.clone(), format!("203.0.113.{}", i % 20)))
        .collect();
    let statuses = guesses(Api::new(s.gateway.addr), logins).await;
    let real = checks().await - before;
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert!(
        (1.0..=10.0).contains(&real),
        "{real} passwords really checked for 200 guesses"
    );
}
