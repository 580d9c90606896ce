//! Section 5, cache: GetItem straight at item-service with `ITEM_CACHE` on and off, its
//! latency and the MongoDB reads it causes (item-service's own counters).

use std::{sync::Arc, time::Instant};

use serde_json::json;

use crate::{
    admin,
    experiment::{
        charts::{BarSeries, Chart, ChartSpec},
        ctx::Ctx,
        report::{Section, Table, f_ms, f_pct},
    },
    generator::{
        engine::{self, Model, RunResult},
        scenario,
    },
};

/// Distinct items the cache comparison reads.
const HOT_SET: usize = 100;

/// GetItem at the same rate against item-service with the cache off, then on.
pub(crate) async fn run(ctx: &mut Ctx) -> anyhow::Result<Section> {
    let p = &ctx.p;
    let mut runs = Vec::new();
    for (label, grpc, metrics) in [
        (
            "cache off",
            ctx.dep.item_nc_grpc.clone(),
            ctx.dep.item_nc_metrics.clone(),
        ),
        (
            "cache on",
            ctx.dep.item_grpc.clone(),
            ctx.dep.item_metrics.clone(),
        ),
    ] {
        let ch = scenario::grpc_channel(&grpc).await?;
        // A hot set, read once before the run so the cache (when on) holds all of it.
        let hot: Vec<String> = ctx.browse_ids.iter().take(HOT_SET).cloned().collect();
        let mut client =
            shop_proto::item::v1::item_service_client::ItemServiceClient::new(ch.clone());
        for id in &hot {
            let _ = client
                .get_item(shop_proto::item::v1::GetItemRequest { id: id.clone() })
                .await;
        }
        let workload = Arc::new(scenario::GrpcGetItem::new(ch, Arc::new(hot)));
        let spec = ctx.spec(
            &format!("GetItem, {label}"),
            Model::Open { rate: p.cache_rate },
            p.warmup,
            p.dur,
        );
        // Counters at the end of warm-up and at the end of the run.
        let m2 = metrics.clone();
        let warm = p.warmup;
        let first = tokio::spawn(async move {
            tokio::time::sleep(warm).await;
            let t = Instant::now();
            (admin::scrape(&m2).await.unwrap_or_default(), t)
        });
        let m = engine::run(&spec, workload).await;
        let end_page = admin::scrape(&metrics).await.unwrap_or_default();
        let end_t = Instant::now();
        let (start_page, start_t) = first.await.unwrap_or_else(|_| (String::new(), end_t));
        let reads = |pg: &str| admin::metric_sum(pg, "item_mongo_reads_total", &[]);
        let secs = end_t.duration_since(start_t).as_secs_f64().max(1e-3);
        let hits = admin::metric_sum(&end_page, "item_cache_requests_total", &["result=\"hit\""])
            - admin::metric_sum(
                &start_page,
                "item_cache_requests_total",
                &["result=\"hit\""],
            );
        let all = admin::metric_sum(&end_page, "item_cache_requests_total", &[])
            - admin::metric_sum(&start_page, "item_cache_requests_total", &[]);
        runs.push(CacheRun {
            label: label.to_owned(),
            mongo_reads_per_s: (reads(&end_page) - reads(&start_page)) / secs,
            cache_hit_ratio: (all > 0.0).then(|| hits / all),
            result: m.result,
        });
    }
    Ok(section(&runs))
}

#[derive(Debug, Clone)]
pub struct CacheRun {
    /// "cache on" / "cache off".
    pub label: String,
    pub result: RunResult,
    /// item_mongo_reads_total per second during the measurement window.
    pub mongo_reads_per_s: f64,
    pub cache_hit_ratio: Option<f64>,
}

/// Builds section 5 from the cache-off and cache-on runs.
pub fn section(runs: &[CacheRun]) -> Section {
    let mut t = Table::new(
        "GetItem straight at item-service (gRPC), same ids, same rate",
        &[
            "item-service",
            "offered req/s",
            "ok %",
            "p50",
            "p90",
            "p99",
            "MongoDB reads/s",
            "cache hit ratio",
        ],
    );
    for r in runs {
        t.row(vec![
            r.label.clone(),
            r.result
                .offered_rps
                .map_or_else(|| "closed".into(), |v| format!("{v:.0}")),
            f_pct(r.result.success_rate),
            f_ms(r.result.latency.p50_ms),
            f_ms(r.result.latency.p90_ms),
            f_ms(r.result.latency.p99_ms),
            format!("{:.1}", r.mongo_reads_per_s),
            r.cache_hit_ratio
                .map_or_else(|| "-".into(), |h| format!("{:.1}%", h * 100.0)),
        ]);
    }
    let chart = Chart {
        file: "cache.svg".into(),
        title: "GetItem latency with ITEM_CACHE on and off".into(),
        spec: ChartSpec::Bars {
            y_label: "latency (ms)".into(),
            categories: runs.iter().map(|r| r.label.clone()).collect(),
            series: vec![
                BarSeries {
                    name: "p50".into(),
                    values: runs.iter().map(|r| r.result.latency.p50_ms).collect(),
                },
                BarSeries {
                    name: "p99".into(),
                    values: runs.iter().map(|r| r.result.latency.p99_ms).collect(),
                },
            ],
        },
    };
    let measurement = runs
        .iter()
        .map(|r| {
            format!(
                "{}: p50 {} ms, p99 {} ms, {:.1} MongoDB reads/s",
                r.label,
                f_ms(r.result.latency.p50_ms),
                f_ms(r.result.latency.p99_ms),
                r.mongo_reads_per_s
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
        + ".";
    Section {
        id: "cache".into(),
        title: "Cache".into(),
        setup: "Two item-service processes on the same MongoDB database, ITEM_CACHE=on (Redis in front of GetItem) and ITEM_CACHE=off; GetItem over gRPC for random ids out of 100 catalog items (each read once before the run) at a fixed rate; MongoDB reads counted from item-service's item_mongo_reads_total (scraped after warm-up and at the end).".into(),
        prediction: "With the cache on, after warm-up every id is in Redis: MongoDB reads should drop to about zero and GetItem latency to one Redis round trip; with it off, every GetItem is one MongoDB read (reads/s = request rate) and latency is the database's.".into(),
        measurement,
        lesson: "A read-through cache moves load off the database entirely for hot keys; the price is staleness and one more moving part that must fail open (item-service falls back to MongoDB when Redis is slow).".into(),
        tables: vec![t],
        charts: vec![chart],
        figures: json!({"runs": runs.iter().map(|r| json!({"label": r.label, "latency": r.result.latency, "mongo_reads_per_s": r.mongo_reads_per_s, "cache_hit_ratio": r.cache_hit_ratio})).collect::<Vec<_>>()}),
        runs: runs.iter().map(|r| r.result.clone()).collect(),
    }
}
