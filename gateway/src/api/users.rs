//! Register, log in, who am I.

use std::net::SocketAddr;

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
        (status = "default", description = "Error", body = ErrorBody),
    ))]
pub async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<RegisterRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let Json(body) = body?;
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
        .await?;
    let user = resp
        .user
        .as_ref()
        .map(User::from)
        .ok_or_else(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(user)))
}

#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = LoginResponse),
        (status = 401, description = "Wrong email or password", body = ErrorBody),
        (status = 429, description = "Too many failed logins for this account or from this address; see Retry-After", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<Json<LoginResponse>, Response> {
    let Json(body) = body.map_err(|e| ApiError::from(e).into_response())?;
    let throttle = &state.login_throttle;
    let peer = connect.map_or_else(crate::serve::unknown_peer, |Extension(ConnectInfo(a))| a);
    let client = throttle.client_address(peer, &headers);
    throttle
        .check(&body.email, client)
        .map_err(throttled_response)?;
    let email = body.email.clone();
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
        .map_err(|s| {
            // Wrong email or password; other failures say nothing about the caller.
            if s.code() == tonic::Code::Unauthenticated {
                throttle.failed(&email, client);
            }
            ApiError::from_status(&s).into_response()
        })?;
    throttle.succeeded(&email);
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

/// 429 with `Retry-After` (whole seconds, rounded up) and the reason in the body: the
/// account (field `email`) or the client address.
fn throttled_response(t: Throttled) -> Response {
    let secs = t.retry_after().as_secs() + u64::from(t.retry_after().subsec_nanos() > 0);
    let (error, what) = match t {
        Throttled::Account { .. } => (
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_failed_logins", "")
                .with_field("email"),
            "for this account",
        ),
        Throttled::Address { .. } => (
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_failed_logins", ""),
            "from this address",
        ),
    };
    let error = ApiError {
        message: format!("too many failed logins {what}; try again in {secs} s"),
        ..error
    };
    let mut resp = error.into_response();
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    resp
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
