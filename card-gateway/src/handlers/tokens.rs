//! `POST /v1/tokens`.

use axum::{
    body::Bytes,
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use time::OffsetDateTime;

use super::create;
use crate::{
    api,
    handle::Gateway,
    ledger,
    routes::ROUTE_CREATE_TOKEN,
    validation::{idempotency_key, parse_json, validate_card},
};

/// `POST /v1/tokens`: the processor's public API (see the module docs); the card is
/// checked like a charge's.
pub(crate) async fn create_token(
    State(gw): State<Gateway>,
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
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(r) => return r.into_response(),
    };
    let fp = ledger::fingerprint(ROUTE_CREATE_TOKEN, &params);
    create(gw, ROUTE_CREATE_TOKEN, key, fp, move |l| {
        l.execute_token(&card)
    })
    .await
}
