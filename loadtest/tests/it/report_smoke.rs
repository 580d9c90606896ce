//! Smoke test of the load generator and the report, end to end, against a toy target in
//! this process: a small axum "shop" (the REST routes the scenarios use) and a tonic Echo
//! server. Runs the open and closed models for about a second each, builds every report
//! section from those runs, writes the report to a temp dir and checks its structure (not
//! its timings).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::Path,
    http::StatusCode,
    routing::{get, post},
};
use loadtest::{
    admin::ShopAdmin,
    experiment::{
        process_cpu::{CpuSpent, ProcessCpu},
        report::{self, Machine, Report, SECTION_IDS},
        sections::{
            self, AvailRun, CacheRun, CascadeRun, Hops, StrategyRun, SweepPoint, TailRun,
            sync_vs_async,
        },
    },
    generator::{
        engine::{self, Measured, Model, RunSpec, Workload},
        http::{HttpPool, Target},
        scenario::{self, EP_GET, EP_LIST, Mix, ShopWorkload},
    },
};
use serde_json::{Value, json};
use shop_proto::admin::v1::{
    EchoRequest, EchoResponse,
    echo_server::{Echo, EchoServer},
};

const ITEM: &str = "0123456789abcdef01234567";

/// The toy shop: every 10th checkout fails with 503; /slow takes 100 ms.
async fn toy_shop() -> SocketAddr {
    let counter = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/api/items",
            get(|| async {
                Json(json!({"items": [{"id": ITEM, "stock": 5}, {"id": "0123456789abcdef01234568", "stock": 0}], "next_page_token": null}))
            }),
        )
        .route(
            "/api/items/{id}",
            get(|Path(id): Path<String>| async move { Json(json!({"id": id, "stock": 5})) }),
        )
        .route(
            "/api/auth/register",
            post(|| async { (StatusCode::CREATED, Json(json!({"id": "u"}))) }),
        )
        .route(
            "/api/auth/login",
            post(|| async { Json(json!({"access_token": "token", "token_type": "Bearer"})) }),
        )
        .route(
            "/api/checkout",
            post(move |Json(body): Json<Value>| {
                let counter = counter.clone();
                async move {
                    assert!(body["lines"].is_array());
                    if counter.fetch_add(1, Ordering::Relaxed) % 10 == 9 {
                        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": {}})))
                    } else {
                        (StatusCode::CREATED, Json(json!({"order": {}})))
                    }
                }
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                "ok"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    addr
}

struct EchoImpl;

#[tonic::async_trait]
impl Echo for EchoImpl {
    async fn echo(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoResponse>, tonic::Status> {
        Ok(tonic::Response::new(EchoResponse {
            payload: request.into_inner().payload,
        }))
    }
}

async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(EchoImpl))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .expect("serve");
    });
    addr
}

fn spec(name: &str, model: Model) -> RunSpec {
    let mut s = RunSpec::new(
        name,
        model,
        Duration::from_millis(200),
        Duration::from_millis(1000),
    );
    s.progress = false;
    s.timeout = Duration::from_secs(5);
    s
}

async fn go(name: &str, model: Model, w: Arc<dyn Workload>) -> Measured {
    engine::run(&spec(name, model), w).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_and_closed_models_feed_a_complete_report() {
    let shop = Target::parse(&format!("http://{}", toy_shop().await)).expect("target");
    let echo_addr = echo_server().await;

    let admin = ShopAdmin::new(shop.clone());
    let tokens = Arc::new(admin.accounts("smoke", 2).await.expect("accounts"));
    let browse = Arc::new(admin.catalog(10).await.expect("catalog"));
    assert_eq!(browse.as_slice(), [ITEM], "only in-stock items are browsed");
    let workload = |mix: Mix, strategy: &str, conns: usize| -> Arc<dyn Workload> {
        Arc::new(ShopWorkload::new(
            Arc::new(HttpPool::new(shop.clone(), conns)),
            browse.clone(),
            browse.clone(),
            tokens.clone(),
            mix,
            strategy,
        ))
    };

    // Open model: checkouts at a constant rate; errors are counted by kind.
    let checkout = go(
        "orchestrated",
        Model::Open { rate: 40.0 },
        workload(Mix::CHECKOUT, "orchestrated", 64),
    )
    .await;
    let r = &checkout.result;
    assert!(r.requests > 0 && r.ok > 0, "{r:?}");
    assert!(r.warmup_requests > 0, "warm-up is counted apart");
    assert_eq!(r.errors_by_kind.get("http_503").copied(), Some(r.errors));
    assert!(r.errors > 0, "every 10th checkout fails");
    // The pacer's own error is reported for every request it dispatched after warm-up.
    let late = r
        .pacer_lateness
        .as_ref()
        .expect("open runs report the pacer's lateness");
    assert_eq!(late.count, r.requests);
    assert!(late.p50_us <= late.max_us);
    assert!(
        r.endpoints
            .iter()
            .any(|e| e.endpoint == "POST /api/checkout?strategy=orchestrated"
                && e.outcome == "error")
    );

    // Closed model: browsing with 4 virtual users.
    let browse_run = go(
        "browse closed",
        Model::Closed {
            users: 4,
            think_ms: 0,
        },
        workload(Mix::BROWSE, "orchestrated", 4),
    )
    .await;
    assert_eq!(browse_run.result.success_rate, 1.0);
    assert!(browse_run.result.offered_rps.is_none());
    assert!(
        browse_run.result.pacer_lateness.is_none(),
        "the closed model has no pacer"
    );
    assert!(
        browse_run
            .result
            .endpoints
            .iter()
            .all(|e| e.endpoint == EP_LIST || e.endpoint == EP_GET)
    );

    // The Echo floor over gRPC.
    let ch = scenario::grpc_channel(&format!("http://{echo_addr}"))
        .await
        .expect("channel");
    let echo = go(
        "echo",
        Model::Open { rate: 100.0 },
        Arc::new(scenario::EchoWorkload::new(ch.clone())),
    )
    .await
    .result;
    assert_eq!(echo.success_rate, 1.0);

    // Coordinated omission: one connection, 100 ms per request, 20 arrivals/s. A closed
    // loop would report ~100 ms; timing from the intended start shows the queue.
    let slow = go(
        "queueing",
        Model::Open { rate: 20.0 },
        Arc::new(scenario::GetPath {
            pool: Arc::new(HttpPool::new(shop.clone(), 1)),
            path: "/slow".into(),
        }),
    )
    .await
    .result;
    assert!(
        slow.latency.p99_ms > 300.0,
        "queueing behind the single connection must show in the latency: {:?}",
        slow.latency
    );

    // A mixed run, split into browse and checkout as section 4 does.
    let mixed = go(
        "mix",
        Model::Open { rate: 40.0 },
        workload(Mix::SHOP, "orchestrated", 8),
    )
    .await;
    let b = sections::group(&mixed.snapshot, |ep| ep == EP_LIST || ep == EP_GET);
    let c = sections::group(&mixed.snapshot, |ep| ep.starts_with("POST /api/checkout"));
    assert_eq!(b.requests + c.requests, mixed.result.requests);

    // Every section from these runs.
    let hops = Hops {
        user: 2.0,
        item: 3.0,
        payment: 1.0,
    };
    // Two interleaved rounds per strategy, and the CPU each process used over them.
    let cpu = |gateway_ms: f64| CpuSpent {
        wall_s: 2.0,
        ops: 10,
        by_process: vec![
            ProcessCpu {
                process: "gateway".into(),
                cpu_ms: gateway_ms,
            },
            ProcessCpu {
                process: "SecantusDB (this run's)".into(),
                cpu_ms: 400.0,
            },
        ],
    };
    let strategy = |label: &str, h: Option<Hops>| StrategyRun {
        label: label.into(),
        result: r.clone(),
        hops: h,
        rounds: vec![r.clone(), slow.clone()],
        cpu: Some(cpu(if h.is_some() { 100.0 } else { 0.0 })),
    };
    let sections = vec![
        sections::calibration(
            "the toy shop",
            4,
            1.0,
            &[sections::calibration::Pair {
                endpoint: "GET /healthz".into(),
                wrk: None,
                loadtest: browse_run.result.clone(),
                loadtest_cpu: None,
            }],
            Some("not run in the smoke test"),
        ),
        sections::cost_per_hop(
            &echo,
            &[
                strategy("orchestrated", Some(hops)),
                strategy("parallel", Some(hops)),
                strategy("chained", Some(hops)),
                strategy("monolith (orchestrated)", None),
            ],
            &[
                SweepPoint {
                    series: "orchestrated".into(),
                    result: r.clone(),
                    cpu: Some(cpu(100.0)),
                },
                SweepPoint {
                    series: "orchestrated".into(),
                    result: mixed.result.clone(),
                    cpu: Some(cpu(100.0)),
                },
            ],
        ),
        sections::tail_amplification(
            "item-service",
            0.01,
            200,
            &[TailRun {
                label: "orchestrated".into(),
                baseline: r.clone(),
                with_tail: slow.clone(),
                calls_to_slow: 3.0,
                threshold_ms: 200.0,
                share_before: 0.0,
                fraction_slow: checkout
                    .snapshot
                    .fraction_at_least(Duration::from_millis(200)),
            }],
        ),
        sections::availability(&[
            AvailRun {
                strategy: "orchestrated".into(),
                f: 0.1,
                retries: false,
                hops: 6.0,
                result: r.clone(),
            },
            AvailRun {
                strategy: "orchestrated".into(),
                f: 0.1,
                retries: true,
                hops: 6.0,
                result: r.clone(),
            },
        ]),
        sections::cascading_failure(
            2000,
            8,
            &[CascadeRun {
                label: "baseline".into(),
                result: mixed.result.clone(),
                browse: b,
                checkout: c,
            }],
        ),
        sections::cache(&[
            CacheRun {
                label: "cache off".into(),
                result: echo.clone(),
                mongo_reads_per_s: 100.0,
                cache_hit_ratio: None,
            },
            CacheRun {
                label: "cache on".into(),
                result: echo.clone(),
                mongo_reads_per_s: 0.0,
                cache_hit_ratio: Some(1.0),
            },
        ]),
        sections::sync_vs_async(&sync_vs_async_measured(&echo)),
    ];
    let report = Report {
        title: "smoke".into(),
        generated_at: report::now_rfc3339(),
        mode: "quick".into(),
        machine: Machine::detect(),
        setup: vec!["toy shop".into()],
        elapsed_s: 1.0,
        sections,
        notes: vec![],
    };
    let dir = tempfile::tempdir().expect("tempdir");
    report::write(&report, dir.path()).expect("write report");

    // JSON: every section, in order, each with its three statements and its runs.
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("report.json")).expect("report.json"),
    )
    .expect("valid JSON");
    let ids: Vec<&str> = json["sections"]
        .as_array()
        .expect("sections")
        .iter()
        .map(|s| s["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, SECTION_IDS);
    for s in json["sections"].as_array().expect("sections") {
        for key in ["prediction", "measurement", "lesson"] {
            assert!(
                !s[key].as_str().unwrap_or_default().is_empty(),
                "{key} in {}",
                s["id"]
            );
        }
        assert!(!s["runs"].as_array().expect("runs").is_empty());
        assert!(s["runs"][0]["latency"]["p99_ms"].is_number());
        assert!(s["runs"][0].get("pacer_lateness").is_some());
    }
    assert!(json["machine"]["nproc"].as_u64().expect("nproc") >= 1);

    // Markdown: a heading and prediction/measurement/lesson per section, charts linked.
    let md = std::fs::read_to_string(dir.path().join("README.md")).expect("README.md");
    for (i, t) in [
        "Calibration against wrk",
        "Cost per hop",
        "Tail amplification",
        "Availability of a chain",
        "Cascading failure",
        "Cache",
    ]
    .iter()
    .enumerate()
    {
        assert!(md.contains(&format!("## {i}. {t}")), "missing section {t}");
    }
    // Crash recovery (measured by runs of its own) keeps number 6; the asynchronous
    // comparison follows it.
    assert!(md.contains("## 6. Crash recovery"));
    assert!(md.contains("## 7. Synchronous vs asynchronous"));
    assert_eq!(md.matches("**Prediction.**").count(), 7);
    assert_eq!(md.matches("**What it teaches.**").count(), 7);

    // Charts: each one named in the JSON exists as an SVG and is linked from the Markdown.
    let mut charts = 0;
    for s in json["sections"].as_array().expect("sections") {
        for c in s["charts"].as_array().expect("charts") {
            let file = c["file"].as_str().expect("file");
            let svg = std::fs::read_to_string(dir.path().join(file)).expect("chart written");
            assert!(
                svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
                "{file}"
            );
            assert!(md.contains(&format!("]({file})")), "{file} linked");
            charts += 1;
        }
    }
    // Section 1: the interleaved rounds side by side with their medians, where a
    // checkout's CPU goes by process, and the busiest process named at the knee.
    let hop = &json["sections"][1];
    let caption = |start: &str| {
        hop["tables"]
            .as_array()
            .expect("tables")
            .iter()
            .find(|t| t["caption"].as_str().is_some_and(|c| c.starts_with(start)))
            .unwrap_or_else(|| panic!("no table {start:?} in {hop}"))
            .clone()
    };
    let rounds = caption("Interleaved rounds");
    let rows = rounds["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 3, "two rounds and their median: {rows:?}");
    assert_eq!(rows[2][0], "median of the rounds");
    let cpu_rows = caption("Where a checkout's CPU goes")["rows"].clone();
    let secantus = cpu_rows
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r[0] == "SecantusDB (this run's)")
        .expect("a row per process");
    // 400 ms over 10 checkouts, for every strategy and the monolith.
    let cells: Vec<&str> = secantus.as_array().expect("row")[1..]
        .iter()
        .map(|c| c.as_str().expect("cell"))
        .collect();
    assert_eq!(cells, ["40.0"; 4]);
    assert!(
        hop["measurement"]
            .as_str()
            .expect("measurement")
            .contains("where SecantusDB (this run's) used"),
        "the knee's busiest process named: {}",
        hop["measurement"]
    );
    assert!(dir.path().join("cpu_per_checkout.svg").is_file());
    for f in [
        "latency_per_strategy.svg",
        "latency_vs_load.svg",
        "availability.svg",
    ] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
    assert!(charts >= 6);
}

/// What the synchronous-vs-asynchronous runner would have measured, from a toy run.
fn sync_vs_async_measured(run: &engine::RunResult) -> sync_vs_async::Measured {
    use loadtest::generator::completion::CompletionStats;
    let stats = |asynchronous: bool| CompletionStats {
        note: if asynchronous {
            "asynchronous"
        } else {
            "synchronous"
        }
        .into(),
        checkouts: 10,
        answered_placed: if asynchronous { 0 } else { 10 },
        answered_accepted: if asynchronous { 10 } else { 0 },
        answer: run.latency.clone(),
        completion: run.latency.clone(),
        placed: 10,
        ..Default::default()
    };
    sync_vs_async::Measured {
        rate: 3.0,
        same_load: sync_vs_async::STYLES
            .iter()
            .map(|s| sync_vs_async::StyleRun {
                strategy: (*s).into(),
                result: run.clone(),
                completion: stats(*s == "async"),
            })
            .collect(),
        outage: [sync_vs_async::OUTAGE_SYNC, "async"]
            .iter()
            .map(|s| sync_vs_async::OutageRun {
                strategy: (*s).into(),
                down_from_s: 1.0,
                down_for_s: 1.0,
                seconds: (0..3)
                    .map(|t| sync_vs_async::Second {
                        t,
                        accepted: 3,
                        failed: 0,
                        completed: 3,
                    })
                    .collect(),
                completion: stats(*s == "async"),
                drained_after_s: Some(0.5),
                result: run.clone(),
            })
            .collect(),
        consumers: vec![sync_vs_async::ConsumerCount {
            consumer: "payment-service-stock-reserved".into(),
            applied: 20.0,
            ..Default::default()
        }],
        async_accepted: 20,
        lag: vec![sync_vs_async::LagPoint {
            t_s: 1.0,
            consumer: "payment-service-stock-reserved".into(),
            pending: 2,
        }],
        async_outage_window_s: Some((1.0, 2.0)),
        profile: "debug (unoptimised)".into(),
    }
}
