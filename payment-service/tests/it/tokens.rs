//! Card tokens at the mock card processor: the public `POST /v1/tokens`, charges by token,
//! and tokens that outlive a restart on the journal.

use crate::harness::*;
use serde_json::{Value, json};

async fn post(url: &str, key: &SecretString, body: Value) -> (u16, Value) {
    // No operator token, no shop identity: only the account's API key.
    let resp = reqwest::Client::new()
        .post(url)
        .bearer_auth(key.expose_secret())
        .json(&body)
        .send()
        .await
        .expect("send");
    (resp.status().as_u16(), resp.json().await.expect("json"))
}

fn card(number: &str) -> Value {
    json!({"number": number, "exp_month": 12, "exp_year": 2034, "cvc": CVC})
}

fn by_token(token: &str) -> Value {
    json!({"amount": 1250, "currency": "usd", "token": token})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_charged_like_its_card_and_an_unknown_one_is_refused() {
    let gw = RestartableGateway::start().await;
    let tokens = format!("{}/v1/tokens", gw.url);
    let charges = format!("{}/v1/charges", gw.url);

    let (status, token) = post(&tokens, &gw.publishable_key, json!({"card": card(VISA_OK)})).await;
    assert_eq!(status, 200, "{token}");
    let id = token["id"].as_str().expect("id");
    assert!(id.starts_with("tok_"), "{id}");
    assert_eq!(token["card"]["last4"], "4242");
    assert_eq!(token["card"]["brand"], "visa");
    assert!(
        !token.to_string().contains(VISA_OK) && !token.to_string().contains(CVC),
        "the token answer shows no card number or CVC"
    );

    let (status, charge) = post(&charges, &gw.secret_key, by_token(id)).await;
    assert_eq!(status, 200, "{charge}");
    assert_eq!(charge["status"], "succeeded");
    assert_eq!(charge["amount"], 1250);
    assert_eq!(charge["payment_method_details"]["card"]["last4"], "4242");
    // Single-use: a second charge of the same token is refused.
    let (status, body) = post(&charges, &gw.secret_key, by_token(id)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "token_already_used");

    // The decline test numbers decline by token too: 402 with the failed charge.
    let (_, declined) = post(
        &tokens,
        &gw.publishable_key,
        json!({"card": card(VISA_NO_FUNDS)}),
    )
    .await;
    let (status, body) = post(
        &charges,
        &gw.secret_key,
        by_token(declined["id"].as_str().expect("id")),
    )
    .await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["type"], "card_error");
    assert_eq!(body["error"]["decline_code"], "insufficient_funds");
    assert!(body["error"]["charge"].is_string());

    // Unknown token: 400 resource_missing on `token`, no charge: not a decline.
    let (status, body) = post(&charges, &gw.secret_key, by_token("tok_doesnotexist")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "resource_missing");
    assert_eq!(body["error"]["param"], "token");

    // Exactly one of card and token.
    let mut both = by_token(id);
    both["card"] = card(VISA_OK);
    let (status, body) = post(&charges, &gw.secret_key, both).await;
    assert_eq!(
        (status, body["error"]["param"].clone()),
        (400, json!("token"))
    );
    let (status, body) = post(
        &charges,
        &gw.secret_key,
        json!({"amount": 1250, "currency": "usd"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!("parameter_missing"))
    );

    // Tokenising checks the card as a charge does, with the same answers.
    let (status, body) = post(
        &tokens,
        &gw.publishable_key,
        json!({"card": card("4242424242424241")}),
    )
    .await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "incorrect_number");
    assert_eq!(body["error"]["param"], "card[number]");
    let mut expired = card(VISA_OK);
    expired["exp_year"] = json!(2020);
    let (status, body) = post(&tokens, &gw.publishable_key, json!({"card": expired})).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (402, json!("invalid_expiry_year"))
    );
    let (status, body) = post(&tokens, &gw.publishable_key, json!({})).await;
    assert_eq!(
        (status, body["error"]["param"].clone()),
        (400, json!("card"))
    );

    let stats = gw.stats();
    assert_eq!(stats.tokens_created, 2);
    assert_eq!(
        (
            stats.charges_created,
            stats.charges_succeeded,
            stats.charges_failed
        ),
        (2, 1, 1),
        "refused requests charged nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_outlives_a_card_gateway_restart_with_a_journal() {
    let mut gw = RestartableGateway::start().await;
    let token = gw.tokenize(VISA_OK).await;
    let declined = gw.tokenize(VISA_DECLINED).await;
    gw.restart().await;
    assert_eq!(gw.stats().tokens_created, 0, "a new process");

    let charges = format!("{}/v1/charges", gw.url);
    let (status, charge) = post(&charges, &gw.secret_key, by_token(&token)).await;
    assert_eq!(status, 200, "{charge}");
    assert_eq!(charge["status"], "succeeded");
    let (status, body) = post(&charges, &gw.secret_key, by_token(&declined)).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "card_declined");
}
