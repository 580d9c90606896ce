//! Tokenising a card at the card processor, for the asynchronous checkout: the gateway
//! swaps the card for the processor's token before anything is stored, so no card number
//! enters a database or the event stream (what a browser does with Stripe.js, done at the
//! edge here). The processor's public endpoint, `POST /v1/tokens`, opened by the
//! publishable key: the only key the edge holds, which cannot charge, refund or read.

use std::time::Duration;

use http::StatusCode;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use shop_proto::payment::v1 as pay;

use crate::error::ApiError;

#[derive(Clone)]
pub struct CardTokens {
    http: reqwest::Client,
    tokens_url: String,
    publishable_key: SecretString,
}

#[derive(Deserialize)]
struct Token {
    id: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ProcessorError,
}

#[derive(Deserialize)]
struct ProcessorError {
    message: String,
    #[serde(default)]
    param: Option<String>,
}

impl CardTokens {
    pub fn new(
        card_gateway_url: &str,
        publishable_key: SecretString,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .tcp_nodelay(true)
            // Under the card gateway's close of idle HTTP/1 connections (10 s): the client
            // drops an idle connection first, never writing to one the server is closing.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self {
            http,
            tokens_url: format!("{}/v1/tokens", card_gateway_url.trim_end_matches('/')),
            publishable_key,
        })
    }

    /// The processor's token for `card`; a card it refuses is a 400 naming the field.
    pub async fn tokenize(&self, card: &pay::Card) -> Result<String, ApiError> {
        let body = serde_json::json!({
            "card": {
                "number": card.number,
                "exp_month": card.exp_month,
                "exp_year": card.exp_year,
                "cvc": card.cvc,
            }
        });
        let unavailable = |cause: &dyn std::fmt::Display| {
            tracing::warn!(error = %cause, "card tokenisation failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "card_gateway_unavailable",
                "The card processor cannot be reached right now. Nothing was ordered; please try again.",
            )
        };
        let resp = self
            .http
            .post(&self.tokens_url)
            .bearer_auth(self.publishable_key.expose_secret())
            .json(&body)
            .send()
            .await
            .map_err(|e| unavailable(&e))?;
        let status = resp.status();
        if status.is_success() {
            let token: Token = resp.json().await.map_err(|e| unavailable(&e))?;
            return Ok(token.id);
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            tracing::warn!(
                "card tokenisation refused: the processor holds too many pending tokens"
            );
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "card_gateway_busy",
                "The card processor is busy right now. Nothing was ordered; please try again shortly.",
            ));
        }
        // A refused key is this deployment's fault, not the customer's card.
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(unavailable(&format!(
                "HTTP {status}: the publishable key was refused"
            )));
        }
        if status.is_client_error() {
            let err: ErrorBody = resp.json().await.map_err(|e| unavailable(&e))?;
            // "card[number]" / "number" -> "card.number"
            let field = err
                .error
                .param
                .as_deref()
                .map(|p| {
                    let p = p.trim_start_matches("card").trim_matches(['[', ']', '.']);
                    if p.is_empty() {
                        "card".to_owned()
                    } else {
                        format!("card.{p}")
                    }
                })
                .unwrap_or_else(|| "card".to_owned());
            return Err(ApiError::bad_request(field, err.error.message));
        }
        Err(unavailable(&format!("HTTP {status}")))
    }
}
