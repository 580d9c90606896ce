//! Password hashing is bounded: with every slot busy, logins are refused with
//! RESOURCE_EXHAUSTED instead of piling up.

use futures::future::join_all;
use tonic::Code;

use crate::harness::{spawn_with, unique_email};

#[tokio::test]
async fn logins_beyond_the_hashing_slots_are_refused_then_served_again() {
    let app = spawn_with(|c| {
        c.hash_concurrency = 1;
        c.hash_wait_ms = 0;
    })
    .await;
    let email = unique_email();
    app.register(&email, "correct horse battery", "Ada")
        .await
        .expect("register");

    let answers = join_all((0..16).map(|_| app.login(&email, "correct horse battery"))).await;
    let refused: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        !refused.is_empty(),
        "one hashing slot, no wait: 16 logins at once cannot all get it"
    );
    for s in &refused {
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert!(s.message().contains("try again"), "{}", s.message());
    }
    assert!(
        answers.iter().any(Result::is_ok),
        "the login holding the slot is served"
    );

    // The slots come back: one login at a time is served.
    app.login(&email, "correct horse battery")
        .await
        .expect("login once the flood is over");
}

/// The password hashes this process has made (every service in a test process reports into
/// one set of metrics).
async fn hashes(app: &crate::harness::TestApp) -> f64 {
    test_support::counter(
        &test_support::metrics(app.metrics_addr).await,
        "user_password_hashes_total",
    )
}

#[tokio::test]
async fn a_taken_email_is_refused_before_any_hashing() {
    let app = spawn_with(|_| {}).await;
    let email = unique_email();
    app.register(&email, "correct horse battery", "Ada")
        .await
        .expect("register");
    let before = hashes(&app).await;
    assert!(before >= 1.0, "the registration above was hashed");
    for _ in 0..3 {
        let err = app
            .register(&email.to_uppercase(), "another password", "Eve")
            .await
            .expect_err("taken");
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    }
    assert_eq!(hashes(&app).await, before, "no hash for a taken email");
}

/// Registrations of one new email at once: they all pass the existence check, and the
/// unique constraint lets exactly one of them in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_of_one_email_make_one_account() {
    let app = spawn_with(|_| {}).await;
    let email = unique_email();
    let answers =
        join_all((0..6).map(|_| app.register(&email, "correct horse battery", "Ada"))).await;
    assert_eq!(answers.iter().filter(|a| a.is_ok()).count(), 1);
    for err in answers.iter().filter_map(|a| a.as_ref().err()) {
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    }
}
