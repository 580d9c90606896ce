//! Public operational endpoints: the gateway's own fault rules (admins only) and liveness.
//! What only operators may see is on the operator listener ([`crate::operator`]).

use axum::{Json, extract::State, extract::rejection::JsonRejection};
use platform::faults::FaultRule;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    auth::AdminUser,
    error::{ApiError, ErrorBody},
    lab::is_service_rule,
    state::AppState,
};

/// A fault rule as platform's fault injector reads it (documentation mirror).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FaultRuleDoc {
    /// Route key ("GET /api/items", "POST /api/checkout") or "*".
    pub method: String,
    /// {"kind":"fixed","ms":50} | {"kind":"uniform","min_ms":10,"max_ms":90} |
    /// {"kind":"tail","probability":0.01,"delay_ms":1000}; null for none.
    pub latency: Option<serde_json::Value>,
    /// 0.0..=1.0: fraction of requests answered 503 (after the latency).
    pub error_rate: f64,
}

#[utoipa::path(get, path = "/api/admin/faults", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "The gateway's fault rules", body = [FaultRuleDoc]),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    ))]
pub async fn get_faults(State(state): State<AppState>, _admin: AdminUser) -> Json<Vec<FaultRule>> {
    Json(all_rules(&state))
}

/// The gateway's rules, then (in the monolith) the services'.
fn all_rules(state: &AppState) -> Vec<FaultRule> {
    let mut rules = state.faults.rules();
    if let Some(services) = state.service_faults.get() {
        rules.extend(services.rules());
    }
    rules
}

#[utoipa::path(put, path = "/api/admin/faults", tag = "admin", security(("bearer" = [])),
    request_body = [FaultRuleDoc],
    responses(
        (status = 200, description = "The rules now in force ([] clears)", body = [FaultRuleDoc]),
        (status = 400, description = "A rule is invalid", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    ))]
pub async fn put_faults(
    State(state): State<AppState>,
    _admin: AdminUser,
    body: Result<Json<Vec<FaultRule>>, JsonRejection>,
) -> Result<Json<Vec<FaultRule>>, ApiError> {
    let Json(rules) = body?;
    // Rules for a gRPC method or an event fault point go to the services (in the
    // monolith); the rest are the gateway's own routes. Both sets are replaced.
    let (services, gateway): (Vec<_>, Vec<_>) = rules.into_iter().partition(is_service_rule);
    match state.service_faults.get() {
        Some(injector) => {
            injector.set(services)?;
        }
        None if !services.is_empty() => {
            return Err(ApiError::bad_request(
                "method",
                "rules for a service method need the monolith (scripts/run --monolith); \
                 separately deployed services take them through their FaultAdmin",
            ));
        }
        None => {}
    }
    state.faults.set(gateway)?;
    tracing::info!(rules = ?all_rules(&state), "fault rules changed");
    Ok(Json(all_rules(&state)))
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
