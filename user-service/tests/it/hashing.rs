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
