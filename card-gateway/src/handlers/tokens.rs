//! `POST /v1/tokens`.

use axum::{
    Extension,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use time::OffsetDateTime;

use super::create;
use crate::{
    api,
    auth::Caller,
    errors::json_response,
    handle::Gateway,
    ledger,
    routes::ROUTE_CREATE_TOKEN,
    validation::{idempotency_key, parse_json, validate_card},
};

/// `POST /v1/tokens`: the one route the publishable key opens (see the crate docs); the card
/// is checked like a charge's, and a vault full of pending tokens refuses new ones.
pub(crate) async fn create_token(
    State(gw): State<Gateway>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params: api::CreateToken = match parse_json(&body) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let card = match validate_card(params.card.as_ref(), OffsetDateTime::now_utc()) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let key = match idempotency_key(&headers, caller.account) {
        Ok(k) => k,
        Err(r) => return r.into_response(),
    };
    // Refused before the idempotency record, so a retry once there is room can succeed.
    if !gw.ledger().token_room() {
        gw.ledger().stats.tokens_refused += 1;
        return json_response(StatusCode::TOO_MANY_REQUESTS, ledger::tokens_full());
    }
    let fp = ledger::fingerprint(ROUTE_CREATE_TOKEN, &params);
    let account = caller.account;
    create(gw, ROUTE_CREATE_TOKEN, key, fp, move |l| {
        l.execute_token(&card, account)
    })
    .await
}
