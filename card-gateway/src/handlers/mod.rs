//! The API's handlers: charges, refunds, tokens, and the idempotent create path they share.

pub mod charges;
pub mod refunds;
pub mod tokens;

use axum::{
    http::{HeaderValue, StatusCode},
    response::Response,
};
use platform::faults::Verdict;
use tracing::Instrument as _;

use crate::{
    api,
    errors::{api_error, json_response},
    handle::{Gateway, Processed},
    ledger::{Begin, Executed, Ledger, error_body},
};

/// Shared tail of the create endpoints: idempotency, then the work in a task of its own,
/// so a caller that gives up (timeout, disconnect) does not cancel a charge half-way; the
/// gateway finishes it, as a real processor would.
pub(crate) async fn create(
    gw: Gateway,
    route: &'static str,
    key: Option<String>,
    fingerprint: [u8; 32],
    exec: impl FnOnce(&mut Ledger) -> Executed + Send + 'static,
) -> Response {
    if let Some(k) = &key {
        match gw.ledger().begin(k, fingerprint) {
            Begin::Started => {}
            Begin::Replay(status, body) => {
                let mut resp = json_response(status, body);
                resp.headers_mut()
                    .insert(api::IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
                return resp;
            }
            Begin::Mismatch => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    error_body(
                        "idempotency_error",
                        Some("idempotency_key_reused"),
                        None,
                        "Keys for idempotent requests can only be used with the same parameters they were first used with.",
                        None,
                        None,
                    ),
                );
            }
            Begin::InFlight => {
                return json_response(
                    StatusCode::CONFLICT,
                    error_body(
                        "idempotency_error",
                        Some("idempotency_key_in_use"),
                        None,
                        "There is currently another in-progress request using this Idempotency-Key. Please try again later.",
                        None,
                        None,
                    ),
                );
            }
        }
    }
    let worker = gw.clone();
    let task =
        tokio::spawn(async move { worker.process(route, key, exec).await }.in_current_span());
    match task.await {
        Ok(Processed::Done(e)) => json_response(e.status, e.body),
        Ok(Processed::Error) | Err(_) => api_error(),
        Ok(Processed::Hang) => {
            gw.hang().await;
            api_error()
        }
    }
}

/// Faults for the read endpoints: latency, then 500 or hang.
pub(crate) async fn read_faults(gw: &Gateway, route: &'static str) -> Option<Response> {
    if gw.inner.faults.inject(route).await == Verdict::Fail {
        gw.ledger().stats.injected_errors += 1;
        return Some(api_error());
    }
    if gw.inner.hangs.inject(route).await == Verdict::Fail {
        gw.ledger().stats.injected_hangs += 1;
        gw.hang().await;
        return Some(api_error());
    }
    None
}
