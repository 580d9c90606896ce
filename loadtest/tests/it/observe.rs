//! Metrics a dashboard can use: the real processes of the distributed shop,
//! built from this workspace, scraped by a real Prometheus (the Debian package's binary, on
//! loopback with its own data directory, every second). After some checkouts and catalog
//! reads, Prometheus must see every process up and answer the checkout rate and p99; and
//! every PromQL expression of the Grafana dashboard must parse and, but for the few that
//! only have data when something fails, return series, so the dashboard cannot drift from
//! the metric names the code exports.

use std::{
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use futures::FutureExt as _;
use loadtest::{
    resilience::crash::{Rig, Tuning, supervisor::Addresses},
    stack::free_addr,
};
use serde_json::Value;

use crate::crash::built_binaries;

/// The dashboard Grafana provisions in compose.yaml.
fn dashboard_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../observability/grafana/dashboards/shop.json")
}

/// Series that exist only once something went wrong (5xx answers, server-side gRPC errors,
/// compensations, retries, an open breaker's refusals): empty in a healthy run.
const ONLY_ON_FAILURE: &[&str] = &[
    r#"status=~"5..""#,
    r#"code=~"Unknown|Internal|Unavailable|DeadlineExceeded|DataLoss""#,
    "gateway_compensations_total",
    "gateway_retries_total",
    "gateway_circuit_rejected_total",
];

/// Prometheus as a child process, killed when dropped.
struct Prometheus {
    _child: tokio::process::Child,
    base: String,
    http: reqwest::Client,
    _data: tempfile::TempDir,
}

/// The `prometheus` binary on PATH; a clear failure (never a skip) when it is missing.
fn prometheus_binary() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("prometheus"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "prometheus is not installed: run scripts/stack tools (it installs the Debian \
                 package prometheus; scripts/stack up and scripts/test do too)"
            )
        })
}

/// The scrape config: one job per process, named as in scripts/run and compose.yaml, each
/// with its list of targets.
fn scrape_config(jobs: &[(&str, Vec<String>)]) -> String {
    let mut out = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
    );
    for (job, targets) in jobs {
        let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        out.push_str(&format!(
            "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        ));
    }
    out
}

/// Every process and where it serves /metrics: the gateway and the services on their
/// metrics listeners, the card gateway on its HTTP port.
fn jobs(a: &Addresses) -> Vec<(&'static str, Vec<String>)> {
    vec![
        ("gateway", vec![a.gateway_metrics.to_string()]),
        ("user-service", vec![a.user_metrics.to_string()]),
        ("item-service", vec![a.item_metrics.to_string()]),
        ("payment-service", vec![a.payment_metrics.to_string()]),
        ("card-gateway", vec![a.card.to_string()]),
    ]
}

impl Prometheus {
    async fn start(config: &str) -> Self {
        let bin = prometheus_binary();
        let data = tempfile::tempdir().expect("Prometheus data dir");
        let config_path = data.path().join("prometheus.yaml");
        std::fs::write(&config_path, config).expect("writing the scrape config");
        let addr = free_addr().expect("a free port for Prometheus");
        let log = std::fs::File::create(data.path().join("prometheus.log")).expect("log file");
        let child = tokio::process::Command::new(&bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let prom = Self {
            _child: child,
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client"),
            _data: data,
        };
        let started = Instant::now();
        while prom
            .http
            .get(format!("{}/-/ready", prom.base))
            .send()
            .await
            .map_or(true, |r| !r.status().is_success())
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "Prometheus did not get ready on {addr}: {}",
                prom.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        prom
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._data.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        // A bad expression is a 400 with a JSON body saying why: returned, not a panic.
        r.json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: no JSON: {e}"))
    }

    /// An instant query; the whole answer (status, data or error).
    async fn query(&self, expr: &str) -> Value {
        self.get("/api/v1/query", &[("query", expr)]).await
    }

    /// The active targets as (job, instance, health, last error).
    async fn targets(&self) -> Vec<(String, String, String, String)> {
        let v = self.get("/api/v1/targets", &[("state", "active")]).await;
        v["data"]["activeTargets"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .map(|t| {
                        let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
                        (
                            s(&t["labels"]["job"]),
                            s(&t["labels"]["instance"]),
                            s(&t["health"]),
                            s(&t["lastError"]),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The numbers of an instant vector answer (NaN included).
fn samples(answer: &Value) -> Vec<f64> {
    answer["data"]["result"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter_map(|r| r["value"][1].as_str())
                .map(|v| v.parse::<f64>().unwrap_or(f64::NAN))
                .collect()
        })
        .unwrap_or_default()
}

/// Every (panel title, expr) of a Grafana dashboard, rows' nested panels included.
fn dashboard_exprs(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            let title = m.get("title").and_then(Value::as_str).unwrap_or(title);
            if let Some(expr) = m.get("expr").and_then(Value::as_str) {
                out.push((title.to_owned(), expr.to_owned()));
            }
            for child in m.values() {
                dashboard_exprs(child, title, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| dashboard_exprs(c, title, out)),
        _ => {}
    }
}

/// The expression as Grafana sends it: its interval variable replaced by what Grafana
/// would pick for a 1 s scrape interval on a short range.
fn as_sent(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
}

const CHECKOUT_RATE: &str = "sum(rate(gateway_checkouts_total[1m]))";
const CHECKOUT_P99: &str =
    "histogram_quantile(0.99, sum by (le) (rate(gateway_checkout_duration_seconds_bucket[1m])))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_process_and_the_dashboard_queries_real_metrics() {
    super::require_stores();
    // Checked before the shop starts, so a missing binary fails at once.
    prometheus_binary();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(dashboard_path()).expect("reading the dashboard JSON"),
    )
    .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, "", &mut exprs);
    assert!(
        exprs.len() >= 20,
        "the dashboard has only {} queries",
        exprs.len()
    );

    let bin_dir = built_binaries();
    let logs = tempfile::tempdir().expect("log dir");
    let rig = Rig::start(&bin_dir, logs.path(), Tuning::SOAK, Vec::new())
        .await
        .expect("the shop starts");
    let prom = Prometheus::start(&scrape_config(&jobs(&rig.sup.addrs))).await;

    // Any failure below still stops the processes and drops the run's databases.
    let result = AssertUnwindSafe(async {
        // Every process up.
        let started = Instant::now();
        loop {
            let targets = prom.targets().await;
            let up = targets.iter().filter(|t| t.2 == "up").count();
            if targets.len() == 5 && up == 5 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "not every process is up in Prometheus (job, instance, health, error): {targets:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }

        // Checkouts (every strategy) and catalog reads, spread over several scrapes so the
        // counters move between samples, until Prometheus has the checkout rate and p99.
        let customer = rig.customer(0).await.expect("a customer");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        let gateway = format!("http://{}", rig.sup.addrs.gateway);
        let started = Instant::now();
        let mut checkouts = 0;
        let (rate, p99) = loop {
            let strategy = ["orchestrated", "parallel", "chained"][checkouts % 3];
            let (_, answer) = rig.client.start_checkout(&customer, &rig.item_id, 1, strategy);
            let answer = answer.await.expect("checkout task");
            assert!(
                matches!(answer.status, Some(201 | 202)),
                "a {strategy} checkout failed: {}",
                answer.summary()
            );
            checkouts += 1;
            for path in [format!("/api/items/{}", rig.item_id), "/api/items".into()] {
                let r = http
                    .get(format!("{gateway}{path}"))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("GET {path}: {e}"));
                assert!(r.status().is_success(), "GET {path}: {}", r.status());
            }
            if checkouts >= 6 {
                let rate = samples(&prom.query(CHECKOUT_RATE).await);
                let p99 = samples(&prom.query(CHECKOUT_P99).await);
                if rate.iter().any(|r| *r > 0.0) && p99.iter().any(|v| v.is_finite() && *v > 0.0)
                {
                    break (rate, p99);
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "after {checkouts} checkouts Prometheus still has no checkout rate ({:?}) or p99 ({:?})",
                prom.query(CHECKOUT_RATE).await,
                prom.query(CHECKOUT_P99).await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            p99[0] < 10.0,
            "the p99 is a latency in seconds below the largest bucket: {p99:?} (rate {rate:?})"
        );
        // Two more scrapes so every process's latest counters and gauges are in.
        tokio::time::sleep(Duration::from_secs(2)).await;

        // Every dashboard expression parses and evaluates; all but the failure-only ones
        // have series now.
        let mut problems = Vec::new();
        for (title, expr) in &exprs {
            let sent = as_sent(expr);
            if sent.contains('$') {
                problems.push(format!(
                    "{title}: uses a variable the test does not know: {expr}"
                ));
                continue;
            }
            let answer = prom.query(&sent).await;
            if answer["status"] != "success" {
                problems.push(format!(
                    "{title}: {expr}\n    -> {} {}",
                    answer["errorType"], answer["error"]
                ));
                continue;
            }
            let failure_only = ONLY_ON_FAILURE.iter().any(|m| expr.contains(m));
            if !failure_only && samples(&answer).is_empty() {
                problems.push(format!(
                    "{title}: no series after {checkouts} checkouts: {expr}"
                ));
            }
        }
        assert!(
            problems.is_empty(),
            "dashboard queries that do not work against the real metrics:\n  {}",
            problems.join("\n  ")
        );
    })
    .catch_unwind()
    .await;
    rig.shutdown(false).await;
    if let Err(panic) = result {
        let kept = logs.keep();
        eprintln!(
            "process logs kept in {}; Prometheus's log:\n{}",
            kept.display(),
            prom.log()
        );
        std::panic::resume_unwind(panic);
    }
}
