//! Register, log in, who am I.

use axum::{Json, extract::State, extract::rejection::JsonRejection};
use http::{HeaderMap, StatusCode};
use shop_proto::user::v1 as pb;

use super::model::{LoginRequest, LoginResponse, RegisterRequest, User};
use crate::{
    auth::AuthUser,
    downstream::Safety,
    error::{ApiError, ErrorBody},
    state::AppState,
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
            "Register",
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
        (status = "default", description = "Error", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<Json<LoginResponse>, ApiError> {
    let Json(body) = body?;
    let ctx = state.budgets.checkout_ctx(&headers);
    let resp = state
        .downstreams
        .user
        .call(
            &ctx,
            "Login",
            // Logging in again has no other effect than a second token.
            Safety::Idempotent,
            pb::LoginRequest {
                email: body.email,
                password: body.password,
            },
            |mut c, r| async move { c.login(r).await },
        )
        .await?;
    let user = resp
        .user
        .as_ref()
        .map(User::from)
        .ok_or_else(ApiError::internal)?;
    Ok(Json(LoginResponse {
        access_token: resp.access_token,
        token_type: "Bearer".into(),
        expires_in_seconds: resp.expires_in_seconds,
        user,
    }))
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
    let ctx = state.budgets.read_ctx(&headers);
    let resp = state
        .downstreams
        .user
        .call(
            &ctx,
            "GetUser",
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
