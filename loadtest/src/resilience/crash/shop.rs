//! The crash test's customer: accounts, an item with plenty of stock, and checkouts through
//! the gateway's HTTP API, each with a fresh Idempotency-Key.

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::probe::CheckoutRef;
use crate::generator::{http::Target, scenario::CARD_OK};

/// A logged-in customer.
#[derive(Debug, Clone)]
pub struct Customer {
    pub user_id: Uuid,
    pub token: String,
}

/// What the client of one checkout saw.
#[derive(Debug, Clone, Serialize)]
pub struct ClientAnswer {
    /// HTTP status, None when the connection failed or broke.
    pub status: Option<u16>,
    /// The error body's code (e.g. "payment_failed"), or the transport error.
    pub detail: String,
}

impl ClientAnswer {
    pub fn summary(&self) -> String {
        match self.status {
            Some(s) if self.detail.is_empty() => s.to_string(),
            Some(s) => format!("{s} {}", self.detail),
            None => format!("no answer ({})", self.detail),
        }
    }
}

pub struct ShopClient {
    base: Target,
    http: reqwest::Client,
}

impl ShopClient {
    pub fn new(base: Target) -> anyhow::Result<Self> {
        Ok(Self {
            base,
            http: reqwest::Client::builder()
                .no_proxy()
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(60))
                .build()?,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.url())
    }

    /// Registers (an existing account is fine) and logs in.
    pub async fn customer(&self, email: &str) -> anyhow::Result<Customer> {
        let password = "crash-test-password-1";
        let r = self
            .http
            .post(self.url("/api/auth/register"))
            .json(&json!({"email": email, "password": password, "display_name": "Crash Test"}))
            .send()
            .await
            .context("POST /api/auth/register")?;
        if !r.status().is_success() && r.status() != reqwest::StatusCode::CONFLICT {
            anyhow::bail!("register {email}: {}: {}", r.status(), r.text().await?);
        }
        let r = self
            .http
            .post(self.url("/api/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .context("POST /api/auth/login")?;
        if !r.status().is_success() {
            anyhow::bail!("login {email}: {}: {}", r.status(), r.text().await?);
        }
        let v: Value = r.json().await?;
        let token = v["access_token"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("login: no access_token in {v}"))?;
        let id = v["user"]["id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("login: no user.id in {v}"))?;
        Ok(Customer {
            user_id: id.parse().context("login: user.id is no UUID")?,
            token: token.to_owned(),
        })
    }

    /// Creates an item with plenty of stock (admin token); returns its id.
    pub async fn create_item(&self, admin: &Customer, sku: &str) -> anyhow::Result<String> {
        let r = self
            .http
            .post(self.url("/api/items"))
            .bearer_auth(&admin.token)
            .json(&json!({
                "sku": sku,
                "name": format!("Crash-test item {sku}"),
                "description": "Bought by the crash test.",
                "category": "crash-test",
                "price": {"amount_minor": 1234, "currency": "USD"},
                "stock": 1_000_000,
            }))
            .send()
            .await
            .context("POST /api/items")?;
        if !r.status().is_success() {
            anyhow::bail!("creating item {sku}: {}: {}", r.status(), r.text().await?);
        }
        let v: Value = r.json().await?;
        Ok(v["id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("POST /api/items: no id in {v}"))?
            .to_owned())
    }

    /// The order's status as its customer sees it (`GET /api/orders/{id}`): "pending",
    /// "placed", "cancelled", ...; "none" on 404.
    pub async fn order_status(&self, who: &Customer, order_id: Uuid) -> anyhow::Result<String> {
        let r = self
            .http
            .get(self.url(&format!("/api/orders/{order_id}")))
            .bearer_auth(&who.token)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .context("GET /api/orders/{id}")?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok("none".into());
        }
        if !r.status().is_success() {
            anyhow::bail!("GET /api/orders/{order_id}: {}", r.status());
        }
        let v: Value = r.json().await?;
        Ok(v["order"]["status"]
            .as_str()
            .unwrap_or("(no status)")
            .to_owned())
    }

    /// One checkout of `quantity` x `item` with a fresh key; returns where to find it and
    /// the answer (awaited in its own task, so the caller can kill processes meanwhile).
    pub fn start_checkout(
        &self,
        who: &Customer,
        item: &str,
        quantity: u32,
        strategy: &str,
    ) -> (CheckoutRef, tokio::task::JoinHandle<ClientAnswer>) {
        let key = format!("crash-{}", Uuid::new_v4());
        let req = self
            .http
            .post(self.url(&format!("/api/checkout?strategy={strategy}")))
            .bearer_auth(&who.token)
            .header("Idempotency-Key", &key)
            .json(&json!({
                "lines": [{"item_id": item, "quantity": quantity}],
                "card": {"number": CARD_OK, "exp_month": 12, "exp_year": 2035, "cvc": "123"},
            }));
        let answer = tokio::spawn(async move {
            match req.send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    ClientAnswer {
                        status: Some(status),
                        detail: body["error"]["code"].as_str().unwrap_or("").to_owned(),
                    }
                }
                Err(e) => ClientAnswer {
                    status: None,
                    detail: if e.is_timeout() {
                        "timed out".into()
                    } else {
                        "connection failed or closed".into()
                    },
                },
            }
        });
        (
            CheckoutRef {
                user_id: who.user_id,
                key,
                asynchronous: strategy == super::plan::ASYNC,
            },
            answer,
        )
    }
}
