//! `POST /v1/charges`, `GET /v1/charges/{id}`, `GET /v1/charges`.

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use time::OffsetDateTime;

use super::{create, read_faults};
use crate::{
    api,
    auth::Caller,
    errors::json_response,
    handle::Gateway,
    ledger::{self, KeyLookup, error_body},
    routes::{ROUTE_CREATE_CHARGE, ROUTE_GET_CHARGE, ROUTE_LIST_CHARGES},
    validation::{Validated, idempotency_key, parse_json, scoped_key, validate_charge},
};

pub(crate) async fn create_charge(
    State(gw): State<Gateway>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params: api::CreateCharge = match parse_json(&body) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let valid = match validate_charge(&params, OffsetDateTime::now_utc(), caller.account) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let key = match idempotency_key(&headers, caller.account) {
        Ok(k) => k,
        Err(r) => return r.into_response(),
    };
    let fp = ledger::fingerprint(ROUTE_CREATE_CHARGE, &params);
    // The token is looked up when the charge executes (after the idempotency check), so a
    // retry of an executed charge replays even if its token was forgotten since.
    create(gw, ROUTE_CREATE_CHARGE, key, fp, move |l| match &valid {
        Validated::Card(c) => l.execute_charge(c),
        Validated::Token(t) => l.execute_token_charge(t),
    })
    .await
}

pub(crate) async fn get_charge(State(gw): State<Gateway>, Path(id): Path<String>) -> Response {
    if let Some(r) = read_faults(&gw, ROUTE_GET_CHARGE).await {
        return r;
    }
    let charge = gw.ledger().charge(&id);
    match charge {
        Some(c) => Json(c).into_response(),
        None => json_response(
            StatusCode::NOT_FOUND,
            error_body(
                "invalid_request_error",
                Some("resource_missing"),
                None,
                &format!("No such charge: '{id}'"),
                Some("id"),
                None,
            ),
        ),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    idempotency_key: Option<String>,
    limit: Option<usize>,
}

/// Lists charges, newest first; `?idempotency_key=` finds the charge a create request with
/// that key made (empty list: no request with the key executed; 409 while one is executing).
pub(crate) async fn list_charges(
    State(gw): State<Gateway>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Some(r) = read_faults(&gw, ROUTE_LIST_CHARGES).await {
        return r;
    }
    let data = match q.idempotency_key.as_deref() {
        Some(key) => {
            let key = &scoped_key(caller.account, key);
            let found = {
                let mut ledger = gw.ledger();
                ledger.stats.key_lookups += 1;
                ledger.lookup_key(key)
            };
            match found {
                KeyLookup::Unknown | KeyLookup::NoCharge => vec![],
                KeyLookup::Charge(c) => vec![*c],
                KeyLookup::InFlight => {
                    return json_response(
                        StatusCode::CONFLICT,
                        error_body(
                            "idempotency_error",
                            Some("idempotency_key_in_use"),
                            None,
                            "A request with this Idempotency-Key is still in progress.",
                            None,
                            None,
                        ),
                    );
                }
            }
        }
        None => gw
            .ledger()
            .recent_charges(q.limit.unwrap_or(10).clamp(1, 100)),
    };
    Json(api::List {
        object: "list".into(),
        data,
        has_more: false,
        url: "/v1/charges".into(),
    })
    .into_response()
}
