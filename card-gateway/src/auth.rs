//! Who may call what: the account's API keys for `/v1/*` (the secret key for everything,
//! the publishable key for `POST /v1/tokens` only), the operator's token for `/admin/*`.

use std::sync::Arc;

use axum::{http::StatusCode, response::Response};
use platform::{
    card_keys::{self, Kind},
    identity::Trust,
};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;

use crate::{
    config::{AUDIENCE, Config},
    errors::json_response,
    ledger::error_body,
    tokens::AccountId,
};

/// The admin route the web shop's lab may use besides the operator: the fault rules.
pub(crate) const LAB_ROUTE: &str = "/admin/faults";

/// Lets a request through only with a valid operator token for the card gateway, or, for
/// [`LAB_ROUTE`] alone, the gateway's token acting for an end user whose admin role it
/// asserts (the web shop's lab relaying an admin's rules). The gateway holds no key of the
/// operator's: it cannot read the counters, set hangs, or do anything without an admin.
pub(crate) async fn operator_only(
    trust: Trust,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let token = req
        .headers()
        .get(platform::identity::CALLER_HEADER)
        .and_then(|v| v.to_str().ok());
    let Some(token) = token else {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"type": "authentication_error", "message": "missing x-shop-caller operator token"}}),
        );
    };
    match trust.verify(token, &[AUDIENCE], req.uri().path()) {
        Ok(caller) if caller.is(platform::identity::OPERATOR) => next.run(req).await,
        Ok(caller) if req.uri().path() == LAB_ROUTE && caller.admin_user().is_some() => {
            next.run(req).await
        }
        Ok(caller) => json_response(
            StatusCode::FORBIDDEN,
            json!({"error": {"type": "permission_error", "message": format!("{} may not use the admin API", caller.service)}}),
        ),
        Err(e) => json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"type": "authentication_error", "message": e.to_string()}}),
        ),
    }
}

/// The accounts' API keys: the shop's pair first (account 0), then any others.
#[derive(Clone)]
pub struct Accounts {
    pairs: Arc<Vec<(SecretString, SecretString)>>,
}

/// The authenticated caller of an API route: its account, and which of its keys it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub account: AccountId,
    pub kind: Kind,
}

impl Accounts {
    /// The accounts of `config`; every key must be set and well formed.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let secret = card_keys::read(
            Kind::Secret,
            config.secret_key.as_ref(),
            config.secret_key_file.as_deref(),
        )?;
        let publishable = card_keys::read(
            Kind::Publishable,
            config.publishable_key.as_ref(),
            config.publishable_key_file.as_deref(),
        )?;
        let mut pairs = vec![(secret, publishable)];
        for (sk, pk) in &config.other_accounts {
            card_keys::check(Kind::Secret, sk.expose_secret())?;
            card_keys::check(Kind::Publishable, pk.expose_secret())?;
            pairs.push((sk.clone(), pk.clone()));
        }
        Ok(Self {
            pairs: Arc::new(pairs),
        })
    }

    /// Whose key `presented` is. Every key is compared in full, so the answer's timing
    /// does not tell how much of a guess was right.
    fn identify(&self, presented: &str) -> Option<Caller> {
        let mut found = None;
        for (i, (sk, pk)) in self.pairs.iter().enumerate() {
            let account = AccountId::try_from(i).unwrap_or(AccountId::MAX);
            if same(sk.expose_secret(), presented) {
                found = Some(Caller {
                    account,
                    kind: Kind::Secret,
                });
            }
            if same(pk.expose_secret(), presented) {
                found = Some(Caller {
                    account,
                    kind: Kind::Publishable,
                });
            }
        }
        found
    }
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn auth_error(status: StatusCode, kind: &str, message: &str) -> Response {
    json_response(status, error_body(kind, None, None, message, None, None))
}

/// Lets an API request through with one of `accounts`' keys in `Authorization: Bearer`,
/// and only the secret key unless `publishable_ok` (the token route). The caller goes into
/// the request's extensions for the handler.
pub(crate) async fn api_key(
    accounts: Accounts,
    publishable_ok: bool,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented.filter(|p| !p.is_empty()) else {
        return auth_error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "You did not provide an API key. Provide it in the Authorization header as a Bearer token.",
        );
    };
    let Some(caller) = accounts.identify(presented) else {
        return auth_error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "Invalid API key provided.",
        );
    };
    if caller.kind == Kind::Publishable && !publishable_ok {
        return auth_error(
            StatusCode::FORBIDDEN,
            "permission_error",
            "This API call cannot be made with a publishable API key. Please use a secret API key.",
        );
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}
