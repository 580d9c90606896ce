//! The operator's admin API: counters, injected faults and hangs.

use axum::{
    Json,
    extract::State,
    response::{IntoResponse, Response},
};
use platform::faults::{FaultInjector, FaultRule};

use crate::{api, errors::invalid_request, handle::Gateway};

pub(crate) async fn stats(State(gw): State<Gateway>) -> Json<api::Stats> {
    Json(gw.stats())
}

pub(crate) async fn get_faults(State(gw): State<Gateway>) -> Json<Vec<FaultRule>> {
    Json(gw.inner.faults.rules())
}

pub(crate) async fn get_hangs(State(gw): State<Gateway>) -> Json<Vec<FaultRule>> {
    Json(gw.inner.hangs.rules())
}

pub(crate) fn set_rules(injector: &FaultInjector, what: &str, rules: Vec<FaultRule>) -> Response {
    match injector.set(rules) {
        Ok(()) => {
            tracing::info!(rules = ?injector.rules(), "{what} changed");
            Json(injector.rules()).into_response()
        }
        Err(e) => {
            invalid_request("parameter_invalid", &e.to_string(), Some(&e.field)).into_response()
        }
    }
}

pub(crate) async fn put_faults(
    State(gw): State<Gateway>,
    Json(rules): Json<Vec<FaultRule>>,
) -> Response {
    set_rules(&gw.inner.faults, "fault rules", rules)
}

pub(crate) async fn put_hangs(
    State(gw): State<Gateway>,
    Json(rules): Json<Vec<FaultRule>>,
) -> Response {
    set_rules(&gw.inner.hangs, "hang rules", rules)
}
