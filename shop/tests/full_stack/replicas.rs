//! Two item-service replicas behind the gateway (ITEM_SERVICE_URL lists both): browsing
//! spreads over both per request, and stopping one in the middle of it costs no request.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use platform::endpoints::ServiceUrls;
use reqwest::StatusCode;
use test_support::item::{self, ItemServer};

use crate::common::{Api, Running, gateway_config, metrics};

struct Browsing {
    api: Arc<Api>,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    /// Kept: dropping it stops the gateway.
    _gateway: Running,
    /// The gateway's operator listener (its /metrics).
    operator: SocketAddr,
    /// Item ids of the seeded catalog (item pages to visit).
    ids: Arc<Vec<String>>,
}

/// Replica a seeds the catalog; b runs on the same database. The gateway balances over
/// both; user- and payment-service are not needed for browsing.
async fn browsing() -> (Browsing, ItemServer, ItemServer) {
    platform::telemetry::init(false);
    let a = item::spawn_with(|c| c.seed = true).await;
    let shared = a.config.clone();
    let b = item::spawn_with(|c| {
        *c = shared;
        c.seed = false;
    })
    .await;
    let mut g = gateway_config();
    g.item_service_url = ServiceUrls::of_addrs(&[a.grpc_addr, b.grpc_addr]);
    let nowhere = SocketAddr::from(([127, 0, 0, 1], 1));
    g.user_service_url = nowhere.into();
    g.payment_service_url = nowhere.into();
    let gw = gateway::Application::build(g).await.expect("build gateway");
    let addr = gw.http_addr();
    let operator = gw.metrics_addr();
    let gateway = Running::spawn(addr, |stop| gw.run_until_stopped(stop));
    let api = Arc::new(Api::new(addr));
    let list = api.get("/api/items?page_size=20", None).await;
    assert_eq!(list.status, StatusCode::OK, "{:?}", list.body);
    let ids: Vec<String> = list.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["id"].as_str().map(str::to_owned))
        .collect();
    assert!(ids.len() >= 5, "the seeded catalog: {ids:?}");
    let s = Browsing {
        api,
        a_addr: a.grpc_addr,
        b_addr: b.grpc_addr,
        _gateway: gateway,
        operator,
        ids: Arc::new(ids),
    };
    (s, a, b)
}

/// `n` browse requests (the catalog, item pages) from `workers` concurrent visitors; the
/// status of each. `done` counts finished requests.
async fn browse(s: &Browsing, n: usize, workers: usize, done: Arc<AtomicUsize>) -> Vec<StatusCode> {
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (api, ids, next, done) = (s.api.clone(), s.ids.clone(), next.clone(), done.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        return statuses;
                    }
                    let path = if i % 2 == 0 {
                        "/api/items?page_size=10".to_owned()
                    } else {
                        format!("/api/items/{}", ids[i % ids.len()])
                    };
                    let r = api.get(&path, None).await;
                    if r.status != StatusCode::OK {
                        eprintln!("GET {path}: {} {:?}", r.status, r.body);
                    }
                    statuses.push(r.status);
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("visitor task"));
    }
    all
}

/// The gateway's count of item-service calls answered by the replica at `addr`.
async fn served_by(s: &Browsing, addr: SocketAddr) -> f64 {
    endpoint_metric(s, "shop_endpoint_requests_total", addr, Some("ok")).await
}

async fn endpoint_metric(s: &Browsing, name: &str, addr: SocketAddr, outcome: Option<&str>) -> f64 {
    let text = metrics(s.operator).await;
    let endpoint = format!("endpoint=\"{addr}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| l.contains("service=\"item-service\"") && l.contains(&endpoint))
        .filter(|l| outcome.is_none_or(|o| l.contains(&format!("outcome=\"{o}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsing_spreads_over_both_item_replicas() {
    let (s, _a, _b) = browsing().await;
    let (a0, b0) = (served_by(&s, s.a_addr).await, served_by(&s, s.b_addr).await);
    let statuses = browse(&s, 200, 4, Arc::new(AtomicUsize::new(0))).await;
    assert!(
        statuses.iter().all(|c| *c == StatusCode::OK),
        "{statuses:?}"
    );
    let a = served_by(&s, s.a_addr).await - a0;
    let b = served_by(&s, s.b_addr).await - b0;
    assert_eq!(a + b, 200.0, "one item-service call per page");
    let share = a / (a + b);
    assert!(
        (0.3..=0.7).contains(&share),
        "replica a served {a}, replica b {b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_replica_mid_browse_loses_no_request() {
    let (s, _a, mut b) = browsing().await;
    let done = Arc::new(AtomicUsize::new(0));
    let b_addr = s.b_addr;
    let load = {
        let s = &s;
        let done = done.clone();
        async move { browse(s, 200, 4, done).await }
    };
    let kill = async {
        test_support::eventually(std::time::Duration::from_secs(60), || async {
            (done.load(Ordering::SeqCst) >= 60).then_some(())
        })
        .await;
        b.server.stop().await;
    };
    let (statuses, ()) = tokio::join!(load, kill);
    assert_eq!(statuses.len(), 200);
    assert!(
        statuses.iter().all(|c| *c == StatusCode::OK),
        "every browse request answered 200: {statuses:?}"
    );
    // And after it: everything goes to a.
    let after = browse(&s, 40, 2, Arc::new(AtomicUsize::new(0))).await;
    assert!(after.iter().all(|c| *c == StatusCode::OK), "{after:?}");
    assert!(
        served_by(&s, b_addr).await > 0.0,
        "b served some before it stopped"
    );
    assert!(
        endpoint_metric(&s, "shop_endpoint_ejections_total", b_addr, None).await >= 1.0,
        "the stopped replica was ejected"
    );
}
