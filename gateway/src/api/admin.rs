//! Public operational endpoints: the gateway's own fault rules (admins only) and liveness.
//! What only operators may see is on the operator listener ([`crate::operator`]).

use axum::{Json, extract::State, extract::rejection::JsonRejection};
use platform::faults::FaultRule;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    auth::AdminUser,
    error::{ApiError, ErrorBody},
    lab::{Target, target_of},
    state::AppState,
};

/// A fault rule as platform's fault injector reads it (documentation mirror).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FaultRuleDoc {
    /// Where it applies: a gateway route key ("GET /api/items", "POST /api/checkout") or
    /// "*"; a service's gRPC method path ("/shop.item.v1.ItemService/ReserveStock") or
    /// event fault point ("event:item-service:order.completed:before-ack"); the card
    /// processor's route key after "card-gateway:" ("card-gateway:POST /v1/charges").
    pub method: String,
    /// {"kind":"fixed","ms":50} | {"kind":"uniform","min_ms":10,"max_ms":90} |
    /// {"kind":"tail","probability":0.01,"delay_ms":1000}; null for none.
    pub latency: Option<serde_json::Value>,
    /// 0.0..=1.0: fraction of requests answered 503 (after the latency).
    pub error_rate: f64,
}

#[utoipa::path(get, path = "/api/admin/faults", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "The rules of the gateway, every service and the card processor", body = [FaultRuleDoc]),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 502, description = "A service or the card processor refused the gateway (`targets` names it)", body = ErrorBody),
        (status = 503, description = "A service or the card processor cannot be reached (`targets` names it)", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    ))]
pub async fn get_faults(
    State(state): State<AppState>,
    admin: AdminUser,
) -> Result<Json<Vec<FaultRule>>, ApiError> {
    let mut rules = state.faults.rules();
    rules.extend(state.lab.rules(admin.0.assertion()).await?);
    Ok(Json(rules))
}

#[utoipa::path(put, path = "/api/admin/faults", tag = "admin", security(("bearer" = [])),
    request_body = [FaultRuleDoc],
    responses(
        (status = 200, description = "The rules now in force everywhere ([] clears everywhere)", body = [FaultRuleDoc]),
        (status = 400, description = "A rule is invalid or names no part of the shop", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 502, description = "A service or the card processor refused the gateway (`targets` names it)", body = ErrorBody),
        (status = 503, description = "A service or the card processor cannot be reached (`targets` names it); the others took their rules", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    ))]
pub async fn put_faults(
    State(state): State<AppState>,
    admin: AdminUser,
    body: Result<Json<Vec<FaultRule>>, JsonRejection>,
) -> Result<Json<Vec<FaultRule>>, ApiError> {
    let Json(rules) = body?;
    // Each rule goes to the process it names (crate::lab); each process's whole set is
    // replaced. Every rule is checked before any process is changed.
    // The gateway's own first: a clear still clears here when a service is down.
    let mut gateway = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let within = |e: platform::FieldError| e.within(&format!("rules[{i}]"));
        rule.validate().map_err(within)?;
        if target_of(rule).map_err(within)? == Target::Gateway {
            gateway.push(rule.clone());
        }
    }
    state.faults.set(gateway)?;
    let assertion = admin.0.assertion();
    state.lab.set(rules, assertion).await?;
    let mut now = state.faults.rules();
    now.extend(state.lab.rules(assertion).await?);
    tracing::info!(rules = ?now, "fault rules changed");
    Ok(Json(now))
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "The gateway process is up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}
