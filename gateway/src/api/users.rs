//! Register, log in, who am I.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use axum::{
    Extension, Json,
    extract::{ConnectInfo, State, rejection::JsonRejection},
    response::{IntoResponse, Response},
};
use http::{HeaderMap, HeaderValue, StatusCode, header::RETRY_AFTER};
use shop_proto::user::v1 as pb;

use super::model::{LoginRequest, LoginResponse, RegisterRequest, User};
use crate::{
    auth::AuthUser,
    downstream::Safety,
    error::{ApiError, ErrorBody},
    state::AppState,
    throttle::Throttled,
};

/// Creates an account, always a customer. Admins are made by the operator with
/// `user-service admin grant EMAIL`; the role arrives with the account's next login.
#[utoipa::path(post, path = "/api/auth/register", tag = "auth", request_body = RegisterRequest,
    responses(
        (status = 201, description = "Account created", body = User),
        (status = 400, description = "A field is invalid (see error.field)", body = ErrorBody),
        (status = 409, description = "Email already registered", body = ErrorBody),
        (status = 429, description = "Too many registrations from this address, or too many logins and registrations in progress; see Retry-After", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    ))]
pub async fn register(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Json<RegisterRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<User>), Response> {
    let Json(body) = body.map_err(|e| ApiError::from(e).into_response())?;
    let client = client_of(&state, connect, &headers);
    let throttle = &state.register_throttle;
    throttle.admit(client).map_err(throttled_response)?;
    let Some(_slot) = state.auth_admission.try_admit() else {
        // Refused here, so it cost nothing: the address keeps its registration.
        throttle.refund(client);
        return Err(busy_response());
    };
    let ctx = state.budgets.checkout_ctx(&headers);
    let resp = state
        .downstreams
        .user
        .call(
            &ctx,
            crate::downstream::method::REGISTER,
            Safety::Once,
            pb::RegisterRequest {
                email: body.email,
                password: body.password,
                display_name: body.display_name,
            },
            |mut c, r| async move { c.register(r).await },
        )
        .await
        .map_err(|s| ApiError::from_status(&s).into_response())?;
    let user = resp
        .user
        .as_ref()
        .map(User::from)
        .ok_or_else(|| ApiError::internal().into_response())?;
    Ok((StatusCode::CREATED, Json(user)))
}

#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = LoginResponse),
        (status = 401, description = "Wrong email or password", body = ErrorBody),
        (status = 429, description = "Too many failed logins for this account or from this address, a login for this account already in progress, or too many logins and registrations in progress; see Retry-After", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<Json<LoginResponse>, Response> {
    let Json(body) = body.map_err(|e| ApiError::from(e).into_response())?;
    let client = client_of(&state, connect, &headers);
    // Reserved before the password goes anywhere; dropped on any path but the success
    // below (an error, the deadline, the client going away), it counts as a failed login.
    let attempt = state
        .login_throttle
        .reserve(&body.email, client)
        .map_err(throttled_response)?;
    let Some(_slot) = state.auth_admission.try_admit() else {
        attempt.not_sent();
        return Err(busy_response());
    };
    let ctx = state.budgets.checkout_ctx(&headers);
    let resp = state
        .downstreams
        .user
        .call(
            &ctx,
            crate::downstream::method::LOGIN,
            // Logging in again has no other effect than a second token.
            Safety::Idempotent,
            pb::LoginRequest {
                email: body.email,
                password: body.password,
            },
            |mut c, r| async move { c.login(r).await },
        )
        .await
        .map_err(|s| ApiError::from_status(&s).into_response())?;
    attempt.succeeded();
    let user = resp
        .user
        .as_ref()
        .map(User::from)
        .ok_or_else(|| ApiError::internal().into_response())?;
    Ok(Json(LoginResponse {
        access_token: resp.access_token,
        token_type: "Bearer".into(),
        expires_in_seconds: resp.expires_in_seconds,
        user,
    }))
}

/// The client's address: the socket peer, or behind a trusted proxy the forwarded client.
fn client_of(
    state: &AppState,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
) -> IpAddr {
    let peer = connect.map_or_else(crate::serve::unknown_peer, |Extension(ConnectInfo(a))| a);
    state.login_throttle.client_address(peer, headers)
}

/// 429 with `Retry-After` in whole seconds (rounded up, at least 1), the wait repeated in
/// the message.
fn too_many(code: &'static str, why: &str, field: Option<&str>, retry_after: Duration) -> Response {
    let secs = (retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).max(1);
    let mut error = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        code,
        format!("{why}; try again in {secs} s"),
    );
    if let Some(f) = field {
        error = error.with_field(f);
    }
    let mut resp = error.into_response();
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// Every login and registration slot is taken.
fn busy_response() -> Response {
    too_many(
        "overloaded",
        "too many logins and registrations in progress",
        None,
        Duration::from_secs(1),
    )
}

/// The throttle's refusal, with the reason in the body: the account (field `email`), the
/// client address, a login already in progress (field `email`), or registrations.
fn throttled_response(t: Throttled) -> Response {
    let (reason, code, why, field) = match t {
        Throttled::Account { .. } => (
            "account",
            "too_many_failed_logins",
            "too many failed logins for this account",
            Some("email"),
        ),
        Throttled::Address { .. } => (
            "address",
            "too_many_failed_logins",
            "too many failed logins from this address",
            None,
        ),
        Throttled::InProgress => (
            "in_progress",
            "login_in_progress",
            "a login for this account is already in progress",
            Some("email"),
        ),
        Throttled::Registrations { .. } => (
            "registrations",
            "too_many_registrations",
            "too many registrations from this address",
            None,
        ),
    };
    metrics::counter!("gateway_auth_refused_total", "reason" => reason).increment(1);
    too_many(code, why, field, t.retry_after())
}

#[utoipa::path(get, path = "/api/me", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, description = "The logged-in user", body = User),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    ))]
pub async fn me(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: AuthUser,
) -> Result<Json<User>, ApiError> {
    let ctx = state
        .budgets
        .read_ctx(&headers)
        .for_user(Some(user.assertion()));
    let resp = state
        .downstreams
        .user
        .call(
            &ctx,
            crate::downstream::method::GET_USER,
            Safety::Idempotent,
            pb::GetUserRequest {
                user_id: user.user_id.to_string(),
            },
            |mut c, r| async move { c.get_user(r).await },
        )
        .await
        .map_err(|s| {
            // A valid token whose account is gone.
            if s.code() == tonic::Code::NotFound {
                ApiError::unauthenticated("this account no longer exists")
            } else {
                ApiError::from_status(&s)
            }
        })?;
    resp.user
        .as_ref()
        .map(|u| Json(User::from(u)))
        .ok_or_else(ApiError::internal)
}
