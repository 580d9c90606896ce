//! Setting up and steering the target: accounts and tokens, load-test items, fault rules
//! (gRPC `shop.admin.v1.FaultAdmin`, the card gateway's and the gateway's admin endpoints),
//! and Prometheus scrapes.

use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shop_proto::admin::v1 as pb;

use crate::generator::{http::Target, scenario::grpc_channel};

/// A fault rule in the platform's JSON shape (what the HTTP admin endpoints take).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rule {
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Value>,
    #[serde(default)]
    pub error_rate: f64,
}

impl Rule {
    pub fn error_rate(method: &str, rate: f64) -> Self {
        Self {
            method: method.into(),
            latency: None,
            error_rate: rate,
        }
    }
    pub fn fixed(method: &str, ms: u32) -> Self {
        Self {
            method: method.into(),
            latency: Some(json!({"kind": "fixed", "ms": ms})),
            error_rate: 0.0,
        }
    }
    pub fn tail(method: &str, probability: f64, delay_ms: u32) -> Self {
        Self {
            method: method.into(),
            latency: Some(
                json!({"kind": "tail", "probability": probability, "delay_ms": delay_ms}),
            ),
            error_rate: 0.0,
        }
    }

    fn to_pb(&self) -> pb::FaultRule {
        use pb::latency_spec::{Kind, Tail, Uniform};
        let latency = self.latency.as_ref().and_then(|l| {
            let kind = match l.get("kind")?.as_str()? {
                "fixed" => Kind::FixedMs(l.get("ms")?.as_u64()? as u32),
                "uniform" => Kind::Uniform(Uniform {
                    min_ms: l.get("min_ms")?.as_u64()? as u32,
                    max_ms: l.get("max_ms")?.as_u64()? as u32,
                }),
                "tail" => Kind::Tail(Tail {
                    probability: l.get("probability")?.as_f64()?,
                    delay_ms: l.get("delay_ms")?.as_u64()? as u32,
                }),
                _ => return None,
            };
            Some(pb::LatencySpec { kind: Some(kind) })
        });
        pb::FaultRule {
            method: self.method.clone(),
            latency,
            error_rate: self.error_rate,
        }
    }
}

/// Replaces the fault rules of the gRPC server at `url` (empty clears).
pub async fn set_grpc_faults(url: &str, rules: &[Rule]) -> anyhow::Result<()> {
    let ch = grpc_channel(url).await?;
    let mut c = pb::fault_admin_client::FaultAdminClient::new(ch);
    c.set_faults(pb::SetFaultsRequest {
        rules: rules.iter().map(Rule::to_pb).collect(),
    })
    .await
    .with_context(|| format!("SetFaults on {url}"))?;
    Ok(())
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .no_proxy()
        .build()
        .unwrap_or_default()
}

/// Replaces an HTTP admin endpoint's fault rules: the card gateway's `PUT /admin/faults`
/// (the operator's token goes along) or the gateway's `PUT /api/admin/faults` (admin token).
pub async fn set_http_faults(
    base: &Target,
    path: &str,
    token: Option<&str>,
    rules: &[Rule],
) -> anyhow::Result<()> {
    let mut req = client().put(format!("{}{path}", base.url())).json(rules);
    if path.starts_with("/admin/")
        && let Some(t) = crate::identity::operator_token(crate::identity::CARD_GATEWAY)
    {
        req = req.header(platform::identity::CALLER_HEADER, t);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.with_context(|| format!("PUT {path}"))?;
    let status = resp.status();
    if !status.is_success() {
        anyhow::bail!(
            "PUT {}{path}: {status}: {}",
            base.url(),
            resp.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// A Prometheus text page.
pub async fn scrape(url: &str) -> anyhow::Result<String> {
    Target::parse(url)?;
    let resp = client()
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    Ok(resp.text().await?)
}

/// Sum of every sample of metric `name` whose labels contain all of `labels` (`k="v"`).
pub fn metric_sum(page: &str, name: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, r)) => (m, r),
                None => (series, ""),
            };
            (metric == name && labels.iter().all(|lbl| rest.contains(lbl)))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Login answer.
#[derive(Debug, Deserialize)]
struct LoginResponse {
    access_token: String,
}

/// REST helpers for setting up a run.
pub struct ShopAdmin {
    pub base: Target,
    http: reqwest::Client,
}

impl ShopAdmin {
    pub fn new(base: Target) -> Self {
        Self {
            base,
            http: client(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.url())
    }

    /// Registers (409 = exists, fine) and logs in; returns the bearer token.
    pub async fn account(&self, email: &str, password: &str) -> anyhow::Result<String> {
        let resp = self
            .auth_call(
                "/api/auth/register",
                json!({"email": email, "password": password, "display_name": "Load Test"}),
            )
            .await?;
        if !resp.status().is_success() && resp.status() != reqwest::StatusCode::CONFLICT {
            anyhow::bail!(
                "register {email}: {}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        let resp = self
            .auth_call(
                "/api/auth/login",
                json!({"email": email, "password": password}),
            )
            .await?;
        if !resp.status().is_success() {
            anyhow::bail!(
                "login {email}: {}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(resp.json::<LoginResponse>().await?.access_token)
    }

    /// POSTs a login or registration, waiting out the gateway's admission limit as a
    /// polite client does (429 `overloaded` or `login_in_progress`: Retry-After, then
    /// again). The per-address registration limit is no wait-and-see: it says how to
    /// lift it for a load test.
    async fn auth_call(&self, path: &str, body: Value) -> anyhow::Result<reqwest::Response> {
        const ATTEMPTS: u32 = 60;
        for _ in 1..ATTEMPTS {
            let resp = self
                .http
                .post(self.url(path))
                .json(&body)
                .send()
                .await
                .with_context(|| format!("POST {path}"))?;
            if resp.status() != reqwest::StatusCode::TOO_MANY_REQUESTS {
                return Ok(resp);
            }
            let wait = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1)
                .clamp(1, 5);
            let answer: Value = resp.json().await.unwrap_or_default();
            match answer["error"]["code"].as_str() {
                Some("overloaded" | "login_in_progress") => {
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                }
                Some("too_many_registrations") => anyhow::bail!(
                    "POST {path}: the gateway allows this address only a few registrations per \
                     window; for a load test set GATEWAY_REGISTER_THROTTLE=off (or raise \
                     GATEWAY_REGISTER_ADDRESS_LIMIT) on the target gateway"
                ),
                _ => anyhow::bail!("POST {path}: 429 {answer}"),
            }
        }
        anyhow::bail!("POST {path}: still refused (429) after {ATTEMPTS} attempts")
    }

    /// `n` fresh accounts for this run, concurrently (password hashing is slow).
    pub async fn accounts(&self, run_id: &str, n: usize) -> anyhow::Result<Vec<String>> {
        let futs = (0..n).map(|i| {
            let email = format!("loadtest-{run_id}-{i}@example.com");
            async move { self.account(&email, "load-test-password-1").await }
        });
        futures::future::try_join_all(futs).await
    }

    /// Item ids of the catalog (up to `max`), only those in stock.
    pub async fn catalog(&self, max: usize) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = self.url("/api/items?page_size=100");
            if let Some(t) = &token {
                url.push_str(&format!("&page_token={t}"));
            }
            let page: Value = self
                .http
                .get(&url)
                .send()
                .await
                .context("GET /api/items")?
                .error_for_status()?
                .json()
                .await?;
            for item in page["items"].as_array().into_iter().flatten() {
                if item["stock"].as_i64().unwrap_or(0) > 0
                    && let Some(id) = item["id"].as_str()
                {
                    ids.push(id.to_owned());
                }
            }
            token = page["next_page_token"].as_str().map(str::to_owned);
            if token.is_none() || ids.len() >= max {
                break;
            }
        }
        ids.truncate(max);
        Ok(ids)
    }

    /// Creates `n` items with plenty of stock for checkouts (admin token).
    pub async fn create_items(
        &self,
        admin_token: &str,
        run_id: &str,
        n: usize,
    ) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::new();
        for i in 0..n {
            let sku = format!("LT-{}-{i}", run_id.to_ascii_uppercase());
            let resp = self
                .http
                .post(self.url("/api/items"))
                .bearer_auth(admin_token)
                .json(&json!({
                    "sku": sku,
                    "name": format!("Load-test item {i}"),
                    "description": "Created by loadtest for checkouts.",
                    "category": "loadtest",
                    "price": {"amount_minor": 100 + i as i64, "currency": "USD"},
                    "stock": 100_000_000,
                }))
                .send()
                .await
                .context("POST /api/items")?;
            if !resp.status().is_success() {
                anyhow::bail!(
                    "creating item {sku}: {}: {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default()
                );
            }
            let v: Value = resp.json().await?;
            let id = v["id"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("POST /api/items: no id in {v}"))?;
            ids.push(id.to_owned());
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_filters_by_name_and_labels() {
        let page = "# HELP x\nitem_mongo_reads_total{op=\"get\"} 5\nitem_mongo_reads_total{op=\"list\"} 2\nitem_mongo_reads_total_x 9\nother 1\n";
        assert_eq!(metric_sum(page, "item_mongo_reads_total", &[]), 7.0);
        assert_eq!(
            metric_sum(page, "item_mongo_reads_total", &["op=\"get\""]),
            5.0
        );
    }

    #[test]
    fn rules_convert_to_protobuf() {
        let r = Rule::tail("*", 0.01, 200).to_pb();
        assert!(matches!(
            r.latency.and_then(|l| l.kind),
            Some(pb::latency_spec::Kind::Tail(_))
        ));
    }
}
