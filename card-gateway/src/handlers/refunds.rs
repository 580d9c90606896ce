//! `POST /v1/refunds`.

use axum::{
    Extension,
    body::Bytes,
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
};

use super::create;
use crate::{
    api,
    auth::Caller,
    errors::invalid_request,
    handle::Gateway,
    ledger::{self, ValidRefund},
    routes::ROUTE_CREATE_REFUND,
    validation::{idempotency_key, parse_json},
};

pub(crate) async fn create_refund(
    State(gw): State<Gateway>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params: api::CreateRefund = match parse_json(&body) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let Some(charge) = params.charge.clone().filter(|c| !c.is_empty()) else {
        return invalid_request(
            "parameter_missing",
            "Missing required param: charge.",
            Some("charge"),
        )
        .into_response();
    };
    if params.amount.is_some_and(|a| a < 1) {
        return invalid_request(
            "parameter_invalid_integer",
            "Amount must be a positive integer.",
            Some("amount"),
        )
        .into_response();
    }
    let key = match idempotency_key(&headers, caller.account) {
        Ok(k) => k,
        Err(r) => return r.into_response(),
    };
    let valid = ValidRefund {
        charge,
        amount: params.amount,
        reason: params.reason.clone(),
    };
    let fp = ledger::fingerprint(ROUTE_CREATE_REFUND, &params);
    create(gw, ROUTE_CREATE_REFUND, key, fp, move |l| {
        l.execute_refund(&valid)
    })
    .await
}
