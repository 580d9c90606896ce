//! Admins are made by the operator with `user-service admin grant|revoke EMAIL` (the real
//! binary, on the service's database), never by registering a particular address.

use std::process::Output;

use shop_proto::user::v1 as pb;

use crate::harness::{ADMIN_EMAIL, spawn, unique_email};

const PASSWORD: &str = "administrator-pass";

/// Runs the built `user-service` binary with `args` against `database_url`.
async fn user_service(database_url: &str, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_user-service"));
    cmd.args(args).env("USER_DATABASE_URL", database_url);
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run user-service")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn registering_the_formerly_special_addresses_gives_a_customer() {
    let app = spawn().await;
    for email in [ADMIN_EMAIL, "admin@shop.local"] {
        let user = app
            .register(email, PASSWORD, "Root")
            .await
            .expect("register");
        assert_eq!(user.role, pb::Role::Customer as i32, "{email}");
        assert_eq!(app.role_at_login(email, PASSWORD).await, pb::Role::Customer);
    }
}

#[tokio::test]
async fn admin_grant_takes_effect_at_the_next_login_and_revoke_undoes_it() {
    let app = spawn().await;
    let email = unique_email();
    app.register(&email, PASSWORD, "Op")
        .await
        .expect("register");
    let before = app.login(&email, PASSWORD).await.expect("login");

    // The address as an operator might type it: the account is found all the same.
    let typed = format!("  {}  ", email.to_uppercase());
    let out = user_service(&app.database_url, &["admin", "grant", &typed]).await;
    assert!(out.status.success(), "grant: {}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains(&email) && said.contains("customer -> admin"),
        "grant says what it did: {said}"
    );

    // A token issued before keeps its role; the next login carries the new one.
    assert_eq!(app.role_of(&before.access_token).await, pb::Role::Customer);
    assert_eq!(app.role_at_login(&email, PASSWORD).await, pb::Role::Admin);

    let out = user_service(&app.database_url, &["admin", "grant", &email]).await;
    assert!(out.status.success(), "second grant: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("already has the admin role"));

    let out = user_service(&app.database_url, &["admin", "revoke", &email]).await;
    assert!(out.status.success(), "revoke: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("admin -> customer"));
    assert_eq!(
        app.role_at_login(&email, PASSWORD).await,
        pb::Role::Customer
    );
}

#[tokio::test]
async fn admin_grant_of_an_unknown_email_fails_and_says_so() {
    // A database nothing has used yet: the command applies the migrations itself, then
    // finds no account.
    let database = test_support::db::fresh_postgres("user").await;
    let email = unique_email();
    for action in ["grant", "revoke"] {
        let out = user_service(&database.url, &["admin", action, &email]).await;
        assert!(
            !out.status.success(),
            "{action} of an unknown email succeeded"
        );
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("no account with email {email}")),
            "{action}: {err}"
        );
        assert!(
            out.stdout.is_empty(),
            "{action} printed: {}",
            text(&out.stdout)
        );
    }
}

#[tokio::test]
async fn admin_grant_of_a_malformed_email_names_the_field() {
    let app = spawn().await;
    let out = user_service(&app.database_url, &["admin", "grant", "not-an-email"]).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("email: must look like name@example.com"));
}

#[tokio::test]
async fn the_library_grant_is_the_same_operation() {
    let app = spawn().await;
    let email = unique_email();
    app.register(&email, PASSWORD, "Op")
        .await
        .expect("register");
    test_support::user::grant_admin(&app.database_url, &email).await;
    assert_eq!(app.role_at_login(&email, PASSWORD).await, pb::Role::Admin);
}
