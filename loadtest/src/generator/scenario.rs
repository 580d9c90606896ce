//! What the virtual users do: browse (list + get items), checkout (fresh idempotency key per
//! checkout, a token per virtual user obtained once), a browse-heavy mix; and two gRPC
//! workloads (the Echo floor, GetItem straight at item-service).

use std::{
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::{FutureExt, future::BoxFuture};
use platform::transport::GrpcTransport;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use shop_proto::{
    admin::v1::{EchoRequest, echo_client::EchoClient},
    item::v1::{GetItemRequest, item_service_client::ItemServiceClient},
};

use crate::generator::{
    completion::{Answer, Tracker, order_id_of},
    engine::Workload,
    http::{HttpPool, Target},
    stats::Outcome,
};

pub const EP_LIST: &str = "GET /api/items";
pub const EP_GET: &str = "GET /api/items/{id}";

pub fn ep_checkout(strategy: &str) -> String {
    format!("POST /api/checkout?strategy={strategy}")
}

/// Weights of the three operations.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Mix {
    pub list: u32,
    pub get: u32,
    pub checkout: u32,
}

impl Mix {
    pub const BROWSE: Self = Self {
        list: 1,
        get: 3,
        checkout: 0,
    };
    pub const CHECKOUT: Self = Self {
        list: 0,
        get: 0,
        checkout: 1,
    };
    /// Browse-heavy, as real shops are: most visits look, few buy.
    pub const SHOP: Self = Self {
        list: 25,
        get: 65,
        checkout: 10,
    };

    fn pick(&self, r: u32) -> Op {
        let total = (self.list + self.get + self.checkout).max(1);
        let r = r % total;
        if r < self.list {
            Op::List
        } else if r < self.list + self.get {
            Op::Get
        } else {
            Op::Checkout
        }
    }
}

impl FromStr for Mix {
    type Err = String;
    /// "browse", "checkout", "mix", or "list=25,get=65,checkout=10".
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "browse" => return Ok(Self::BROWSE),
            "checkout" => return Ok(Self::CHECKOUT),
            "mix" | "shop" => return Ok(Self::SHOP),
            _ => {}
        }
        let mut m = Self {
            list: 0,
            get: 0,
            checkout: 0,
        };
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("expected name=weight, got {part:?}"))?;
            let v: u32 = v.trim().parse().map_err(|e| format!("{part:?}: {e}"))?;
            match k.trim() {
                "list" => m.list = v,
                "get" => m.get = v,
                "checkout" => m.checkout = v,
                other => return Err(format!("unknown operation {other:?}")),
            }
        }
        if m.list + m.get + m.checkout == 0 {
            return Err("all weights are zero".into());
        }
        Ok(m)
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    List,
    Get,
    Checkout,
}

/// Test card that always succeeds at the mock card gateway.
pub const CARD_OK: &str = "4242424242424242";

/// The REST shop under load.
pub struct ShopWorkload {
    pool: Arc<HttpPool>,
    /// Item ids to browse.
    browse_ids: Arc<Vec<String>>,
    /// Item ids to buy (plenty of stock).
    buy_ids: Arc<Vec<String>>,
    /// One bearer token per virtual user.
    tokens: Arc<Vec<String>>,
    mix: Mix,
    strategy: String,
    checkout_ep: String,
    /// Where checkouts are recorded with their endings, and the pool that follows
    /// asynchronous orders (see [`crate::generator::completion`]).
    tracker: Option<(Arc<Tracker>, Arc<HttpPool>, Duration)>,
}

impl ShopWorkload {
    pub fn new(
        pool: Arc<HttpPool>,
        browse_ids: Arc<Vec<String>>,
        buy_ids: Arc<Vec<String>>,
        tokens: Arc<Vec<String>>,
        mix: Mix,
        strategy: &str,
    ) -> Self {
        Self {
            pool,
            browse_ids,
            buy_ids,
            tokens,
            mix,
            strategy: strategy.to_owned(),
            checkout_ep: ep_checkout(strategy),
            tracker: None,
        }
    }

    /// Records every checkout's answer and ending in `tracker`, following asynchronous
    /// orders (on a pool of their own, so polls never take a checkout's connection) for up
    /// to `give_up` from the checkout's intended start.
    pub fn tracking(mut self, tracker: Arc<Tracker>, give_up: Duration) -> Self {
        let pool = Arc::new(HttpPool::new(self.pool.target().clone(), 64));
        self.tracker = Some((tracker, pool, give_up));
        self
    }
}

fn pick(v: &[String], r: usize) -> &str {
    if v.is_empty() { "" } else { &v[r % v.len()] }
}

fn checkout_body(buy_ids: &[String], r: usize) -> Bytes {
    let mut lines = vec![json!({"item_id": pick(buy_ids, r), "quantity": 1})];
    if buy_ids.len() > 1 {
        lines.push(json!({"item_id": pick(buy_ids, r + 1), "quantity": 1}));
    }
    let body = json!({
        "lines": lines,
        "card": {"number": CARD_OK, "exp_month": 12, "exp_year": 2035, "cvc": "123"},
    });
    Bytes::from(body.to_string())
}

fn outcome_of(r: Result<crate::generator::http::Reply, Outcome>) -> Outcome {
    match r {
        Ok(reply) => reply.outcome(),
        Err(o) => o,
    }
}

impl Workload for ShopWorkload {
    fn call(&self, _n: u64, user: usize) -> (String, BoxFuture<'static, Outcome>) {
        let mut rng = rand::rng();
        let op = self.mix.pick(rng.random());
        let r: usize = rng.random_range(0..1 << 30);
        let pool = self.pool.clone();
        match op {
            Op::List => {
                let sort = ["newest", "price_asc", "name_asc"][r % 3];
                let path = format!("/api/items?page_size=20&sort={sort}");
                (
                    EP_LIST.to_owned(),
                    async move { outcome_of(pool.get(&path, &[]).await) }.boxed(),
                )
            }
            Op::Get => {
                let path = format!("/api/items/{}", pick(&self.browse_ids, r));
                (
                    EP_GET.to_owned(),
                    async move { outcome_of(pool.get(&path, &[]).await) }.boxed(),
                )
            }
            Op::Checkout => {
                let path = format!("/api/checkout?strategy={}", self.strategy);
                let token = format!("Bearer {}", pick(&self.tokens, user));
                let body = checkout_body(&self.buy_ids, r);
                let tracker = self.tracker.clone();
                let intended =
                    crate::generator::engine::intended_start().unwrap_or_else(Instant::now);
                let fut = async move {
                    let headers = [
                        ("authorization", token),
                        ("idempotency-key", uuid::Uuid::new_v4().to_string()),
                    ];
                    let token = headers[0].1.clone();
                    let reply = pool
                        .send(http::Method::POST, &path, &headers, Some(body))
                        .await;
                    if let Some((tracker, polls, give_up)) = tracker {
                        let (answer, follow) = match &reply {
                            Ok(r) if r.status == http::StatusCode::ACCEPTED => (
                                Answer::Accepted,
                                order_id_of(&r.body).map(|id| (polls, id, token)),
                            ),
                            Ok(r) if r.status.is_success() => (Answer::Placed, None),
                            _ => (Answer::Failed, None),
                        };
                        tracker.answered(intended, answer, follow, give_up);
                    }
                    // Where the checkout's time went, for the run's waterfall.
                    if let Ok(r) = &reply
                        && r.status.is_success()
                        && let Some(st) = &r.server_timing
                    {
                        crate::generator::waterfall::note(st);
                    }
                    outcome_of(reply)
                };
                (self.checkout_ep.clone(), fut.boxed())
            }
        }
    }
}

/// One GET path, for calibration against wrk.
pub struct GetPath {
    pub pool: Arc<HttpPool>,
    pub path: String,
}

impl Workload for GetPath {
    fn call(&self, _n: u64, _user: usize) -> (String, BoxFuture<'static, Outcome>) {
        let pool = self.pool.clone();
        let path = self.path.clone();
        (
            format!("GET {path}"),
            async move { outcome_of(pool.get(&path, &[]).await) }.boxed(),
        )
    }
}

fn grpc_kind(s: &tonic::Status) -> Outcome {
    Outcome::error(format!("grpc_{:?}", s.code()).to_lowercase())
}

/// A channel to a loopback gRPC server, calling as the operator (see [`crate::identity`]).
pub async fn grpc_channel(url: &str) -> anyhow::Result<GrpcTransport> {
    let target = Target::parse(url)?;
    let ch = tonic::transport::Endpoint::from_shared(target.url())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {url}: {e}"))?;
    Ok(crate::identity::signed(ch))
}

/// `shop.admin.v1.Echo/Echo`: one bare tonic hop, the floor under every service call.
pub struct EchoWorkload {
    client: EchoClient<GrpcTransport>,
    payload: Bytes,
}

impl EchoWorkload {
    pub fn new(channel: GrpcTransport) -> Self {
        Self {
            client: EchoClient::new(channel),
            payload: Bytes::from(vec![b'x'; 64]),
        }
    }
}

pub const EP_ECHO: &str = "grpc shop.admin.v1.Echo/Echo";
pub const EP_GRPC_GET_ITEM: &str = "grpc shop.item.v1.ItemService/GetItem";

impl Workload for EchoWorkload {
    fn call(&self, _n: u64, _user: usize) -> (String, BoxFuture<'static, Outcome>) {
        let mut client = self.client.clone();
        let payload = self.payload.to_vec();
        let fut = async move {
            match client.echo(EchoRequest { payload }).await {
                Ok(_) => Outcome::Ok,
                Err(s) => grpc_kind(&s),
            }
        };
        (EP_ECHO.to_owned(), fut.boxed())
    }
}

/// GetItem straight at item-service (the cache comparison).
pub struct GrpcGetItem {
    client: ItemServiceClient<GrpcTransport>,
    ids: Arc<Vec<String>>,
}

impl GrpcGetItem {
    pub fn new(channel: GrpcTransport, ids: Arc<Vec<String>>) -> Self {
        Self {
            client: ItemServiceClient::new(channel),
            ids,
        }
    }
}

impl Workload for GrpcGetItem {
    fn call(&self, _n: u64, _user: usize) -> (String, BoxFuture<'static, Outcome>) {
        let mut client = self.client.clone();
        let r: usize = rand::rng().random_range(0..1 << 30);
        let id = pick(&self.ids, r).to_owned();
        let fut = async move {
            match client.get_item(GetItemRequest { id }).await {
                Ok(_) => Outcome::Ok,
                Err(s) => grpc_kind(&s),
            }
        };
        (EP_GRPC_GET_ITEM.to_owned(), fut.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_pick_by_weight() {
        let m: Mix = "list=1,get=0,checkout=3".parse().expect("valid");
        assert!(matches!(m.pick(0), Op::List));
        assert!(matches!(m.pick(1), Op::Checkout));
        assert!("list=0".parse::<Mix>().is_err());
        assert!("nope=1".parse::<Mix>().is_err());
        assert_eq!("mix".parse::<Mix>(), Ok(Mix::SHOP));
    }
}
