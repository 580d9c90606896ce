//! Register, login, users and tokens through the real gRPC API.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::harness::{SECRET, spawn, unique_email};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use shop_proto::user::v1 as pb;
use tonic::Code;

#[tokio::test]
async fn register_login_get_user_round_trip() {
    let app = spawn().await;
    let email = unique_email();
    let user = app
        .register(
            &format!("  {}  ", email.to_uppercase()),
            "correct horse battery",
            " Ada ",
        )
        .await
        .expect("register");
    assert_eq!(user.email, email, "email is trimmed and lower-cased");
    assert_eq!(user.display_name, "Ada");
    assert_eq!(user.role, pb::Role::Customer as i32);
    assert!(user.created_at.is_some());

    let login = app
        .login(&email, "correct horse battery")
        .await
        .expect("login");
    assert_eq!(login.user.as_ref().map(|u| &u.user_id), Some(&user.user_id));
    assert!(login.expires_in_seconds > 0);
    assert_eq!(login.access_token.split('.').count(), 3, "a JWT");

    let got = app
        .client
        .clone()
        .get_user(pb::GetUserRequest {
            user_id: user.user_id.clone(),
        })
        .await
        .expect("get user")
        .into_inner()
        .user
        .expect("user");
    assert_eq!(got, user);

    let valid = app
        .client
        .clone()
        .validate_token(pb::ValidateTokenRequest {
            access_token: login.access_token,
        })
        .await
        .expect("validate")
        .into_inner();
    assert_eq!(valid.user_id, user.user_id);
    assert_eq!(valid.role, pb::Role::Customer as i32);
}

#[tokio::test]
async fn bad_registration_fields_are_invalid_argument_naming_the_field() {
    let app = spawn().await;
    let cases = [
        ("", "password123", "Ann", "email"),
        ("not-an-email", "password123", "Ann", "email"),
        ("a@b", "password123", "Ann", "email"),
        ("a b@example.com", "password123", "Ann", "email"),
        ("ok@example.com", "short", "Ann", "password"),
        ("ok@example.com", "          ", "Ann", "password"),
        ("ok@example.com", &"x".repeat(129), "Ann", "password"),
        ("ok@example.com", "password123", "", "display_name"),
        ("ok@example.com", "password123", "   ", "display_name"),
        (
            "ok@example.com",
            "password123",
            &"n".repeat(65),
            "display_name",
        ),
    ];
    for (email, password, name, field) in cases {
        let err = app
            .register(email, password, name)
            .await
            .expect_err("must be rejected");
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(field),
            "message names {field}: {}",
            err.message()
        );
        assert_eq!(platform::error::field_of(&err).as_deref(), Some(field));
        assert!(
            !err.message().contains(password) || password.trim().is_empty() || password.len() < 3
        );
    }
    // Nothing was stored by the failed requests.
    let err = app
        .login("ok@example.com", "password123")
        .await
        .expect_err("no account");
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn duplicate_email_is_already_exists_whatever_its_case() {
    let app = spawn().await;
    let email = unique_email();
    app.register(&email, "password-one", "One")
        .await
        .expect("first");
    let err = app
        .register(
            &format!(" {} ", email.to_uppercase()),
            "password-two",
            "Two",
        )
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(
        platform::reason_of(&err),
        Some(platform::ErrorReason::EmailTaken),
        "{err:?}"
    );
    // The first account is intact.
    app.login(&email, "password-one")
        .await
        .expect("original password still works");
    assert_eq!(
        app.login(&email, "password-two")
            .await
            .map(|_| ())
            .map_err(|e| e.code()),
        Err(Code::Unauthenticated)
    );
}

#[tokio::test]
async fn twenty_parallel_registrations_of_one_email_make_exactly_one_account() {
    let app = spawn().await;
    let email = unique_email();
    let attempts = (0..20).map(|i| {
        let client = app.client.clone();
        let email = email.clone();
        tokio::spawn(async move {
            client
                .clone()
                .register(pb::RegisterRequest {
                    email,
                    password: format!("password-{i}"),
                    display_name: format!("Racer {i}"),
                })
                .await
        })
    });
    let results = futures::future::join_all(attempts).await;
    let mut ok = 0;
    for r in results {
        match r.expect("task") {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), Code::AlreadyExists, "{e:?}"),
        }
    }
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn unknown_email_and_wrong_password_fail_the_same_way() {
    let app = spawn().await;
    let email = unique_email();
    app.register(&email, "the-right-one", "Bob")
        .await
        .expect("register");
    let wrong = app
        .login(&email, "the-wrong-one")
        .await
        .expect_err("wrong password");
    let unknown = app
        .login(&unique_email(), "the-right-one")
        .await
        .expect_err("unknown email");
    let malformed = app
        .login("nope", "the-right-one")
        .await
        .expect_err("malformed");
    for e in [&wrong, &unknown, &malformed] {
        assert_eq!(e.code(), Code::Unauthenticated);
        assert_eq!(e.message(), wrong.message());
    }
}

#[tokio::test]
async fn responses_and_errors_never_carry_the_password_or_its_hash() {
    let app = spawn().await;
    let email = unique_email();
    let password = "Sup3r-Secret-Passw0rd";
    let user = app
        .register(&email, password, "Carol")
        .await
        .expect("register");
    let login = app.login(&email, password).await.expect("login");
    let wrong = app.login(&email, "not-it-at-all").await.expect_err("wrong");
    let dump = format!("{user:?} {login:?} {wrong:?}");
    assert!(!dump.contains(password));
    assert!(!dump.contains("argon2"));
    assert!(!dump.contains('$'), "no PHC string: {dump}");
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn sign(claims: serde_json::Value, secret: &str, alg: Algorithm) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

#[tokio::test]
async fn expired_forged_foreign_none_and_garbage_tokens_are_unauthenticated() {
    let app = spawn().await;
    let email = unique_email();
    let user = app
        .register(&email, "password-123", "Dan")
        .await
        .expect("register");
    let claims = |exp: u64, aud: &str, iss: &str| {
        serde_json::json!({
            "sub": user.user_id, "role": "admin", "iss": iss, "aud": aud,
            "iat": now() - 10, "exp": exp,
        })
    };
    let good = sign(
        claims(now() + 600, "shop", "shop-user-service"),
        SECRET,
        Algorithm::HS256,
    );
    let payload = good.split('.').nth(1).expect("payload").to_owned();
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let bad_tokens = [
        (
            "expired",
            sign(
                claims(now() - 5, "shop", "shop-user-service"),
                SECRET,
                Algorithm::HS256,
            ),
        ),
        (
            "forged",
            sign(
                claims(now() + 600, "shop", "shop-user-service"),
                "another-secret-0123456789-abcdefghijkl",
                Algorithm::HS256,
            ),
        ),
        (
            "wrong audience",
            sign(
                claims(now() + 600, "not-shop", "shop-user-service"),
                SECRET,
                Algorithm::HS256,
            ),
        ),
        (
            "wrong issuer",
            sign(
                claims(now() + 600, "shop", "someone-else"),
                SECRET,
                Algorithm::HS256,
            ),
        ),
        (
            "other algorithm",
            sign(
                claims(now() + 600, "shop", "shop-user-service"),
                SECRET,
                Algorithm::HS512,
            ),
        ),
        ("alg none", format!("{none_header}.{payload}.")),
        ("garbage", "definitely.not.ajwt".to_owned()),
        ("empty", String::new()),
    ];
    for (what, token) in bad_tokens {
        let err = app
            .client
            .clone()
            .validate_token(pb::ValidateTokenRequest {
                access_token: token,
            })
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::Unauthenticated, "{what}");
    }
    // The well-formed one passes, proving the rejections were about the defects.
    app.client
        .clone()
        .validate_token(pb::ValidateTokenRequest { access_token: good })
        .await
        .expect("valid token");
}

#[tokio::test]
async fn get_user_rejects_bad_and_unknown_ids() {
    let app = spawn().await;
    let bad = app
        .client
        .clone()
        .get_user(pb::GetUserRequest {
            user_id: "nope".into(),
        })
        .await
        .expect_err("bad id");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(platform::error::field_of(&bad).as_deref(), Some("user_id"));
    let missing = app
        .client
        .clone()
        .get_user(pb::GetUserRequest {
            user_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .expect_err("unknown id");
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(
        platform::reason_of(&missing),
        Some(platform::ErrorReason::UserNotFound),
        "{missing:?}"
    );
}
