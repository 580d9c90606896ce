//! The trace test: the real processes export their spans over OTLP to a receiver
//! in this test, and one checkout of each strategy must be one trace, with spans from every
//! service it touched and every parent/child link right.
//!
//! Why the built binaries and not test-support's in-process services: the tracer provider
//! and the `tracing` subscriber are process-wide, and `service.name` is a resource of the
//! provider, so services sharing one test process would share one service name (and one
//! subscriber, installed by whichever ran first). Only separate processes give each its own,
//! as in production. The processes are stopped with SIGTERM, so the test also shows that a
//! graceful stop sends the spans still buffered.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use loadtest::resilience::crash::{Rig, Tuning};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::span::SpanKind,
};
use serde_json::json;

/// One received span, flattened.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    trace_id: String,
    span_id: String,
    /// Empty for a root span.
    parent: String,
    name: String,
    kind: SpanKind,
    attrs: BTreeMap<String, String>,
    start_ns: u64,
    end_ns: u64,
}

impl Got {
    fn attr(&self, k: &str) -> Option<&str> {
        self.attrs.get(k).map(String::as_str)
    }
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

/// The OTLP/gRPC receiver: keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Got>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = Vec::new();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .map(|r| attrs(&r.attributes))
                .and_then(|a| a.get("service.name").cloned())
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Got {
                        service: service.clone(),
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        name: s.name.clone(),
                        kind: SpanKind::try_from(s.kind).unwrap_or(SpanKind::Unspecified),
                        attrs: attrs(&s.attributes),
                        start_ns: s.start_time_unix_nano,
                        end_ns: s.end_time_unix_nano,
                    });
                }
            }
        }
        if let Ok(mut all) = self.0.lock() {
            all.extend(got);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One checkout through the gateway at `base`; returns the trace id it answered with.
async fn checkout(base: &str, item_id: &str, token: &str, strategy: &str) -> String {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let url = format!("{base}/api/checkout?strategy={strategy}");
    let r = http
        .post(url)
        .bearer_auth(token)
        .header("Idempotency-Key", format!("trace-{}", uuid::Uuid::new_v4()))
        .json(&json!({
            "lines": [{"item_id": item_id, "quantity": 1}],
            "card": {"number": loadtest::generator::scenario::CARD_OK, "exp_month": 12, "exp_year": 2035, "cvc": "123"},
        }))
        .send()
        .await
        .expect("checkout answered");
    let status = r.status();
    // Without an x-request-id of the client's, the request id is the trace id.
    let trace = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = r.text().await.unwrap_or_default();
    assert!(status.is_success(), "{strategy} checkout: {status} {body}");
    assert_eq!(trace.len(), 32, "x-request-id {trace:?} is no trace id");
    trace
}

/// Where the services of a checkout ran.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Deployment {
    /// Each in its own process, with its own `service.name`.
    Distributed,
    /// All in the `shop` monolith (service.name `shop`), calling each other in-process.
    Monolith,
}

/// What is wrong with the trace `id` of a `strategy` checkout (empty: nothing).
fn problems(all: &[Got], id: &str, strategy: &str, deployment: Deployment) -> Vec<String> {
    let distributed = deployment == Deployment::Distributed;
    // The process each part runs in.
    let of = |service: &'static str| if distributed { service } else { "shop" };
    let spans: Vec<&Got> = all.iter().filter(|s| s.trace_id == id).collect();
    let by_id: BTreeMap<&str, &Got> = spans.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let mut bad = Vec::new();
    let roots: Vec<&&Got> = spans.iter().filter(|s| s.parent.is_empty()).collect();
    match roots.as_slice() {
        [root] => {
            if !(root.service == of("gateway")
                && root.kind == SpanKind::Server
                && root.name == "POST /api/checkout")
            {
                bad.push(format!("the root is not the gateway's HTTP span: {root:?}"));
            }
        }
        _ => bad.push(format!("{} roots, not one: {roots:?}", roots.len())),
    }
    for s in &spans {
        if !s.parent.is_empty() && !by_id.contains_key(s.parent.as_str()) {
            bad.push(format!(
                "{} ({}) has a parent outside the trace",
                s.name, s.service
            ));
        }
        let parent = by_id.get(s.parent.as_str());
        // A call's server span is the child of the caller's client span for that call.
        if s.kind == SpanKind::Server && s.span_id != roots.first().map_or("", |r| &r.span_id) {
            let ok = parent.is_some_and(|p| {
                p.kind == SpanKind::Client
                    && (p.service != s.service || !distributed)
                    && (p.attr("rpc.method").is_some() == s.attr("rpc.method").is_some())
                    && p.attr("rpc.method") == s.attr("rpc.method")
            });
            if !ok {
                bad.push(format!(
                    "server span {} ({}) is not the child of its caller's client span: parent {parent:?}",
                    s.name, s.service
                ));
            }
        }
        // A store span belongs to the service whose request made it.
        if s.attr("db.system").is_some() && parent.is_none_or(|p| p.service != s.service) {
            bad.push(format!(
                "store span {} ({}) is not inside its own service's request",
                s.name, s.service
            ));
        }
    }
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    for want in [
        "gateway",
        "user-service",
        "item-service",
        "payment-service",
        "card-gateway",
    ] {
        if !services.contains(of(want)) {
            bad.push(format!("no span of {want}"));
        }
    }
    // Every service took part: its gRPC server spans (the card gateway's HTTP one).
    for (service, rpc) in [
        ("user-service", "shop.user.v1.UserService"),
        ("item-service", "shop.item.v1.ItemService"),
        ("payment-service", "shop.payment.v1.PaymentService"),
    ] {
        if !spans.iter().any(|s| {
            s.service == of(service)
                && s.kind == SpanKind::Server
                && s.attr("rpc.service") == Some(rpc)
        }) {
            bad.push(format!("no server span of {rpc}"));
        }
    }
    if !spans
        .iter()
        .any(|s| s.kind == SpanKind::Server && s.name == "POST /v1/charges")
    {
        bad.push("no server span of the card gateway's POST /v1/charges".into());
    }
    // Each store the checkout used shows, under the service that owns it.
    for (service, system) in [
        ("user-service", "postgresql"),
        ("payment-service", "mysql"),
        ("item-service", "mongodb"),
    ] {
        if !spans
            .iter()
            .any(|s| s.service == of(service) && s.attr("db.system") == Some(system))
        {
            bad.push(format!("no {system} span of {service}"));
        }
    }
    if !spans.iter().any(|s| {
        s.service == of("payment-service")
            && s.kind == SpanKind::Client
            && s.attr("http.request.method") == Some("POST")
    }) {
        bad.push("no card-gateway call span of payment-service".into());
    }
    if !bad.is_empty() {
        bad.insert(0, format!("{strategy} checkout, trace {id}:"));
        bad.push(tree(&spans));
    }
    bad
}

/// The trace as a text waterfall: each span indented under its parent, with its offset from
/// the trace's start, its duration and a bar on a common time axis.
fn waterfall(spans: &[&Got]) -> String {
    const WIDTH: u64 = 48;
    let start = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let end = spans
        .iter()
        .map(|s| s.end_ns)
        .max()
        .unwrap_or(start)
        .max(start + 1);
    let scale = |t: u64| ((t.saturating_sub(start)) * WIDTH / (end - start)).min(WIDTH) as usize;
    let mut rows = Vec::new();
    fn walk<'a>(rows: &mut Vec<(usize, &'a Got)>, spans: &[&'a Got], parent: &str, depth: usize) {
        let mut children: Vec<&&Got> = spans.iter().filter(|s| s.parent == parent).collect();
        children.sort_by_key(|s| s.start_ns);
        for s in children {
            rows.push((depth, *s));
            walk(rows, spans, &s.span_id, depth + 1);
        }
    }
    walk(&mut rows, spans, "", 0);
    let label = |depth: usize, s: &Got| {
        let kind = match s.kind {
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            _ => "internal",
        };
        format!("{}{} [{} {kind}]", "  ".repeat(depth), s.name, s.service)
    };
    let width = rows
        .iter()
        .map(|(d, s)| label(*d, s).len())
        .max()
        .unwrap_or(0);
    let mut out = format!(
        "{:width$}  {:>9} {:>9}  timeline ({:.1} ms)\n",
        "span",
        "start ms",
        "took ms",
        (end - start) as f64 / 1e6
    );
    for (depth, s) in rows {
        let (a, b) = (
            scale(s.start_ns),
            scale(s.end_ns).max(scale(s.start_ns) + 1),
        );
        out.push_str(&format!(
            "{:width$}  {:>9.2} {:>9.2}  |{}{}{}|\n",
            label(depth, s),
            s.start_ns.saturating_sub(start) as f64 / 1e6,
            s.end_ns.saturating_sub(s.start_ns) as f64 / 1e6,
            " ".repeat(a),
            "#".repeat(b.min(WIDTH as usize) - a),
            " ".repeat(WIDTH as usize - b.min(WIDTH as usize)),
        ));
    }
    out
}

/// The trace as an indented tree (for failure messages).
fn tree(spans: &[&Got]) -> String {
    fn walk(out: &mut String, spans: &[&Got], parent: &str, depth: usize) {
        for s in spans.iter().filter(|s| s.parent == parent) {
            out.push_str(&format!(
                "{}{} [{}] {:?}\n",
                "  ".repeat(depth),
                s.name,
                s.service,
                s.kind
            ));
            walk(out, spans, &s.span_id, depth + 1);
        }
    }
    let mut out = String::new();
    walk(&mut out, spans, "", 0);
    out
}

type Served = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

/// Serves the OTLP receiver on a free loopback port.
async fn receive() -> (
    Receiver,
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    Served,
) {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let otlp = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    (receiver, otlp, stop, server)
}

/// The monolith: the same checkouts through in-process calls must give traces of the same
/// shape (one per checkout, the gateway's HTTP span its root, each server span the child of
/// its caller's client span), all under `service.name` `shop`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monolith_checkout_is_one_trace_of_the_same_shape() {
    super::require_stores();
    let bin = super::crash::built_binaries().join("shop");
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace's binaries",
        bin.display()
    );
    let logs = tempfile::tempdir().expect("log dir");
    let (receiver, otlp, stop, server) = receive().await;
    let stores = loadtest::resilience::crash::stores::Stores::fresh()
        .await
        .expect("throw-away databases");
    let keys = loadtest::identity::StackKeys::init(&logs.path().join("keys")).expect("keys");
    let http_addr = loadtest::stack::free_addr().expect("port");
    let card_addr = loadtest::stack::free_addr().expect("port");
    let log = std::fs::File::create(logs.path().join("shop.log")).expect("log");
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.envs(stores.env())
        .envs(keys.env_for("shop"))
        .env("RUST_LOG", "info")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env(
            "USER_JWT_SECRET",
            format!("trace-{}", uuid::Uuid::new_v4().simple()),
        )
        .env("GATEWAY_HTTP_ADDR", http_addr.to_string())
        .env("GATEWAY_METRICS_ADDR", "127.0.0.1:0")
        .env("SHOP_GRPC_ADDR", "off")
        .env("SHOP_CARD_GATEWAY_ADDR", card_addr.to_string())
        .env("CARD_GATEWAY_URL", format!("http://{card_addr}"))
        .env("ITEM_SEED", "true")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .kill_on_drop(true);
    let mut shop = cmd.spawn().expect("the shop starts");
    let base = format!("http://{http_addr}");
    let run = async {
        let client = loadtest::resilience::crash::shop::ShopClient::new(
            loadtest::generator::http::Target::parse(&base)?,
        )?;
        let http = reqwest::Client::builder().no_proxy().build()?;
        // Up, and the seeded catalog there.
        let mut item = None;
        for _ in 0..600 {
            if let Ok(r) = http
                .get(format!("{base}/api/items?page_size=1"))
                .send()
                .await
                && r.status().is_success()
            {
                let v: serde_json::Value = r.json().await?;
                item = v["items"][0]["id"].as_str().map(str::to_owned);
                if item.is_some() {
                    break;
                }
            }
            if let Some(status) = shop.try_wait()? {
                anyhow::bail!("the shop exited: {status}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let item = item.ok_or_else(|| anyhow::anyhow!("the shop did not serve its catalog"))?;
        let who = client
            .customer(&format!(
                "trace-{}@example.com",
                uuid::Uuid::new_v4().simple()
            ))
            .await?;
        let mut traces = Vec::new();
        for strategy in ["orchestrated", "parallel", "chained"] {
            traces.push((strategy, checkout(&base, &item, &who.token, strategy).await));
        }
        anyhow::Ok(traces)
    }
    .await;
    if let Some(pid) = shop.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(30), shop.wait())
        .await
        .is_err()
    {
        let _ = shop.start_kill();
    }
    stores.drop_all().await;
    let _ = stop.send(());
    let _ = server.await;
    let traces = match run {
        Ok(t) => t,
        Err(e) => panic!("the checkouts ran: {e:#} (log: {})", logs.keep().display()),
    };
    let all = receiver.0.lock().expect("spans").clone();
    let ids: BTreeSet<&str> = traces.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(ids.len(), 3, "one trace per checkout: {traces:?}");
    let mut bad = Vec::new();
    for (strategy, id) in &traces {
        bad.extend(problems(&all, id, strategy, Deployment::Monolith));
    }
    if !bad.is_empty() {
        let kept = logs.keep();
        panic!("{} (log: {})", bad.join("\n"), kept.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_checkout_is_one_trace_across_every_service_it_touched() {
    super::require_stores();
    let bin_dir = super::crash::built_binaries();
    let logs = tempfile::tempdir().expect("log dir");

    let (receiver, otlp, stop, server) = receive().await;

    let env = vec![(
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
        format!("http://{otlp}"),
    )];
    let mut rig = Rig::start(bin_dir.as_path(), logs.path(), Tuning::SOAK, env)
        .await
        .expect("the shop starts");
    let run = async {
        let who = rig.customer(0).await?;
        let base = rig.sup.addrs.gateway_target()?.url();
        let mut traces = Vec::new();
        for strategy in ["orchestrated", "parallel", "chained"] {
            traces.push((
                strategy,
                checkout(&base, &rig.item_id, &who.token, strategy).await,
            ));
        }
        anyhow::Ok(traces)
    }
    .await;
    // A graceful stop: each process sends what it still holds.
    rig.sup.stop_all_gracefully().await;
    rig.shutdown(false).await;
    let _ = stop.send(());
    let _ = server.await;
    let traces = run.expect("the checkouts ran");

    let all = receiver.0.lock().expect("spans").clone();
    let ids: BTreeSet<&str> = traces.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(ids.len(), 3, "one trace per checkout: {traces:?}");
    let mut bad = Vec::new();
    for (strategy, id) in &traces {
        bad.extend(problems(&all, id, strategy, Deployment::Distributed));
    }
    // The trace id in the services' log lines is the exported one.
    let user_log =
        std::fs::read_to_string(logs.path().join("user-service.log")).unwrap_or_default();
    for (strategy, id) in &traces {
        if !user_log.contains(id.as_str()) {
            bad.push(format!(
                "user-service's log never names the {strategy} checkout's trace {id}"
            ));
        }
    }
    // TRACE_TEST_WATERFALLS=DIR: write each checkout's waterfall there (docs/observability.md's
    // example in docs/ is one of these).
    if let Some(dir) = std::env::var_os("TRACE_TEST_WATERFALLS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("waterfall dir");
        for (strategy, id) in &traces {
            let spans: Vec<&Got> = all.iter().filter(|s| &s.trace_id == id).collect();
            std::fs::write(
                dir.join(format!("checkout-{strategy}.txt")),
                format!(
                    "Trace {id}: one POST /api/checkout?strategy={strategy}, {} spans\n\n{}",
                    spans.len(),
                    waterfall(&spans)
                ),
            )
            .expect("write waterfall");
        }
    }
    if !bad.is_empty() {
        // What arrived outside the checkouts' traces, to tell a lost span from a stray one.
        let mut strays: BTreeMap<(String, String), usize> = BTreeMap::new();
        for s in all.iter().filter(|s| !ids.contains(s.trace_id.as_str())) {
            *strays
                .entry((s.service.clone(), s.name.clone()))
                .or_default() += 1;
        }
        bad.push(format!("spans in other traces: {strays:?}"));
        let kept = logs.keep();
        panic!("{} (process logs: {})", bad.join("\n"), kept.display());
    }
}
