//! Section 7, synchronous vs asynchronous: the same checkout as a synchronous call chain
//! (orchestrated, chained) and as events (`async`, answered 202 and completed through NATS
//! JetStream). Four measurements: (a) time to the customer's answer and to a completed
//! order at the same offered load; (b) payment-service killed for a while as checkouts keep
//! arriving, per second: answers accepted and failed, orders completed; (c) duplicates the
//! consumers were delivered vs applied (their `events_consumed_total`); (d) each durable
//! consumer's lag (from the broker, so a consumer that is down still has one) over time.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use platform::events::{Broker, ConsumerSpec, EventsConfig, checkout as kinds, consumer};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    admin,
    experiment::{
        charts::{Chart, ChartSpec, Curve},
        ctx::Ctx,
        report::{Section, Table, f_ms},
    },
    generator::{
        completion::{Answer, CompletionStats, Ending, Tracker},
        engine::{self, Model, RunResult},
        scenario::{Mix, ShopWorkload},
    },
    stack::Stack,
};

/// The strategies compared: two synchronous chains and the event-driven one.
pub const STYLES: [&str; 3] = ["orchestrated", "chained", "async"];

/// The synchronous strategy of the outage comparison.
pub const OUTAGE_SYNC: &str = "orchestrated";

/// Every durable consumer of the asynchronous checkout: (service, kind).
pub const CONSUMERS: [(&str, &str); 7] = [
    ("item-service", kinds::CHECKOUT_REQUESTED),
    ("payment-service", kinds::STOCK_RESERVED),
    ("user-service", kinds::STOCK_REFUSED),
    ("user-service", kinds::PAYMENT_DECLINED),
    ("user-service", kinds::PAYMENT_SUCCEEDED),
    ("item-service", kinds::ORDER_COMPLETED),
    ("item-service", kinds::ORDER_CANCELLED),
];

const OUTCOMES: [&str; 4] = ["applied", "duplicate", "ignored", "retry"];

/// (a): one strategy at the common offered load.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StyleRun {
    pub strategy: String,
    pub result: RunResult,
    pub completion: CompletionStats,
}

/// One second of the outage run, counted by when checkouts were sent (answers) and when
/// orders completed.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Second {
    pub t: u64,
    /// Answered 201 or 202.
    pub accepted: u64,
    pub failed: u64,
    /// Orders that became placed in this second.
    pub completed: u64,
}

/// (b): one strategy with payment-service down from `down_from_s` for `down_for_s`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutageRun {
    pub strategy: String,
    pub down_from_s: f64,
    pub down_for_s: f64,
    pub seconds: Vec<Second>,
    pub completion: CompletionStats,
    /// Seconds from the restart until the last order accepted during the outage completed.
    pub drained_after_s: Option<f64>,
    pub result: RunResult,
}

/// (c): one consumer's `events_consumed_total` over the asynchronous runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConsumerCount {
    pub consumer: String,
    pub applied: f64,
    pub duplicate: f64,
    pub ignored: f64,
    pub retry: f64,
}

/// (d): one consumer's lag at one moment (seconds since the section started).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LagPoint {
    pub t_s: f64,
    pub consumer: String,
    pub pending: u64,
}

/// Everything the section measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Measured {
    /// Offered checkouts per second in (a) and (b).
    pub rate: f64,
    pub same_load: Vec<StyleRun>,
    pub outage: Vec<OutageRun>,
    pub consumers: Vec<ConsumerCount>,
    /// Checkouts answered 202 in the asynchronous runs whose counters (c) covers.
    pub async_accepted: u64,
    pub lag: Vec<LagPoint>,
    /// Section seconds when payment-service was down in the asynchronous outage run.
    pub async_outage_window_s: Option<(f64, f64)>,
    /// Build profile of the measured binaries ("debug" or "release"), as the runner saw it.
    pub profile: String,
}

fn durable(service: &str, kind: &str) -> String {
    ConsumerSpec::new(service, kind).durable
}

/// Counters of every consumer of one metrics page: durable -> outcome -> value.
type Counts = BTreeMap<String, BTreeMap<String, f64>>;

fn counts(page: &str) -> Counts {
    let mut c = Counts::new();
    for (service, kind) in CONSUMERS {
        let d = durable(service, kind);
        let lbl = format!("consumer=\"{d}\"");
        let per = c.entry(d.clone()).or_default();
        for o in OUTCOMES {
            let ol = format!("outcome=\"{o}\"");
            *per.entry(o.to_owned()).or_default() +=
                admin::metric_sum(page, "events_consumed_total", &[&lbl, &ol]);
        }
    }
    c
}

fn add(into: &mut Counts, c: &Counts, sign: f64) {
    for (d, per) in c {
        for (o, v) in per {
            *into
                .entry(d.clone())
                .or_default()
                .entry(o.clone())
                .or_default() += sign * v;
        }
    }
}

async fn scrape_all(pages: &[String]) -> Counts {
    let mut total = Counts::new();
    for p in pages {
        // A process that is down has no counters to add (its restart starts from zero).
        if let Ok(page) = admin::scrape(p).await {
            add(&mut total, &counts(&page), 1.0);
        }
    }
    total
}

/// Samples every consumer's lag from the broker once a second until dropped.
fn sample_lag(broker: Broker, t0: Instant, into: Arc<Mutex<Vec<LagPoint>>>) -> LagSampler {
    let task = tokio::spawn(async move {
        let specs: Vec<ConsumerSpec> = CONSUMERS
            .iter()
            .map(|(s, k)| ConsumerSpec::new(s, k))
            .collect();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let t_s = t0.elapsed().as_secs_f64();
            for spec in &specs {
                if let Ok(pending) = consumer::lag(&broker, spec).await {
                    into.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(LagPoint {
                            t_s,
                            consumer: spec.durable.clone(),
                            pending,
                        });
                }
            }
        }
    });
    LagSampler(task)
}

struct LagSampler(tokio::task::JoinHandle<()>);

impl Drop for LagSampler {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// "debug" or "release", from where the binaries came from.
fn profile_of(stack: &Stack) -> String {
    let bin = stack.bin("gateway");
    let dir = bin
        .parent()
        .and_then(|d| d.file_name())
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default();
    match dir.as_str() {
        "debug" => "debug (unoptimised)".into(),
        "release" => "release".into(),
        other => format!("from {other:?}"),
    }
}

/// How long each part runs in this mode.
struct Times {
    warmup: Duration,
    dur: Duration,
    before: Duration,
    down: Duration,
    after: Duration,
}

impl Times {
    fn of(ctx: &Ctx) -> Self {
        if ctx.p.dur < Duration::from_secs(5) {
            Self {
                warmup: ctx.p.warmup,
                dur: ctx.p.dur,
                before: Duration::from_secs(2),
                down: Duration::from_secs(4),
                after: Duration::from_secs(4),
            }
        } else {
            Self {
                warmup: ctx.p.warmup,
                dur: ctx.p.dur,
                before: Duration::from_secs(10),
                down: Duration::from_secs(30),
                after: Duration::from_secs(30),
            }
        }
    }
}

/// How long an accepted order is followed, from its intended start.
const GIVE_UP: Duration = Duration::from_secs(180);

fn addr_of(url: &str) -> anyhow::Result<std::net::SocketAddr> {
    let rest = url.trim_start_matches("http://");
    let host = rest.split('/').next().unwrap_or(rest);
    host.parse()
        .with_context(|| format!("an address in {url:?}"))
}

/// Starts payment-service again where it listened before, with the same settings.
async fn restart_payment(ctx: &Ctx, stack: &mut Stack) -> anyhow::Result<()> {
    let addr = addr_of(&ctx.dep.payment_grpc)?;
    let metrics = addr_of(&ctx.dep.payment_metrics)?;
    let env = [
        ("PAYMENT_GRPC_ADDR", addr.to_string()),
        ("PAYMENT_METRICS_ADDR", metrics.to_string()),
        ("CARD_GATEWAY_URL", ctx.dep.card.url()),
        ("ITEM_SERVICE_URL", ctx.dep.item_grpc.clone()),
        ("USER_SERVICE_URL", ctx.dep.user_grpc.clone()),
    ];
    stack
        .start("payment-service", "payment-service", &env, addr)
        .await
}

fn workload(ctx: &Ctx, strategy: &str, tracker: &Arc<Tracker>) -> Arc<ShopWorkload> {
    Arc::new(
        ShopWorkload::new(
            Arc::new(crate::generator::http::HttpPool::new(
                ctx.dep.gw.clone(),
                512,
            )),
            ctx.browse_ids.clone(),
            ctx.buy_ids.clone(),
            ctx.tokens.clone(),
            Mix::CHECKOUT,
            strategy,
        )
        .tracking(tracker.clone(), GIVE_UP),
    )
}

/// Per second of the run (from `t0`): answers by send time, completions by end time.
fn per_second(
    cs: &[crate::generator::completion::Checkout],
    t0: Instant,
    secs: u64,
) -> Vec<Second> {
    let mut v: Vec<Second> = (0..secs)
        .map(|t| Second {
            t,
            ..Default::default()
        })
        .collect();
    let slot = |t: Instant| t.saturating_duration_since(t0).as_secs() as usize;
    for c in cs {
        if let Some(s) = v.get_mut(slot(c.intended)) {
            match c.answer {
                Answer::Failed => s.failed += 1,
                _ => s.accepted += 1,
            }
        }
        if let Some((t, Ending::Placed)) = c.ended
            && let Some(s) = v.get_mut(slot(t))
        {
            s.completed += 1;
        }
    }
    v
}

/// Runs the four measurements against the experiment's stack. Stops the processes that
/// would also consume events (the second item- and payment-service, the monolith) first,
/// so exactly one process per service consumes and payment-service's outage is real: run
/// it after every section that needs them.
pub(crate) async fn run(ctx: &mut Ctx, stack: &mut Stack) -> anyhow::Result<Section> {
    let nats = std::env::var("NATS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .context("NATS_URL is not set: `eval \"$(scripts/stack up)\"` starts NATS")?;
    for extra in ["payment-service-notimeout", "item-service-nocache", "shop"] {
        stack.stop(extra).await;
    }
    let broker = Broker::connect(
        EventsConfig::isolated(nats, &ctx.dep.events_namespace),
        "loadtest",
    )
    .await
    .context("connecting to NATS")?;
    let t0 = Instant::now();
    let lag = Arc::new(Mutex::new(Vec::new()));
    let sampler = sample_lag(broker, t0, lag.clone());
    let times = Times::of(ctx);
    let rate = ctx.p.rate;
    let pages = vec![
        ctx.dep.user_metrics.clone(),
        ctx.dep.item_metrics.clone(),
        ctx.dep.payment_metrics.clone(),
    ];
    let mut consumed = Counts::new();
    let mut async_accepted = 0;

    // (a) the same offered load.
    let mut same_load = Vec::new();
    for strategy in STYLES {
        let tracker = Tracker::new();
        let spec = ctx.spec(
            &format!("{strategy}, {rate}/s"),
            Model::Open { rate },
            times.warmup,
            times.dur,
        );
        let before = scrape_all(&pages).await;
        let from = Instant::now() + times.warmup;
        let mut m = engine::run(&spec, workload(ctx, strategy, &tracker)).await;
        tracker.settle(GIVE_UP).await;
        let completion = tracker.stats(from, strategy == "async");
        if strategy == "async" {
            // Every checkout of the run (warm-up too) went through the consumers.
            async_accepted += tracker.stats(t0, true).answered_accepted;
            add(&mut consumed, &scrape_all(&pages).await, 1.0);
            add(&mut consumed, &before, -1.0);
        }
        m.result.completion = Some(completion.clone());
        same_load.push(StyleRun {
            strategy: strategy.to_owned(),
            result: m.result,
            completion,
        });
        tokio::time::sleep(ctx.p.settle).await;
    }

    // (b) payment-service down while checkouts keep arriving.
    let mut outage = Vec::new();
    let mut async_window = None;
    for strategy in [OUTAGE_SYNC, "async"] {
        let tracker = Tracker::new();
        let total = times.before + times.down + times.after;
        let mut spec = ctx.spec(
            &format!("{strategy}, payment-service down"),
            Model::Open { rate },
            Duration::ZERO,
            total,
        );
        spec.timeout = Duration::from_secs(10);
        let w = workload(ctx, strategy, &tracker);
        let before = scrape_all(&pages).await;
        let run_t0 = Instant::now();
        let dep_ctx: &Ctx = ctx;
        let outage_part = async {
            tokio::time::sleep(times.before).await;
            // The payment consumer's counters die with it: keep what it counted so far.
            let mid = match admin::scrape(&dep_ctx.dep.payment_metrics).await {
                Ok(p) => counts(&p),
                Err(_) => Counts::new(),
            };
            stack.stop("payment-service").await;
            let down_at = Instant::now();
            tokio::time::sleep(times.down).await;
            let up = restart_payment(dep_ctx, stack).await;
            (mid, down_at, Instant::now(), up)
        };
        let (mut m, (mid, down_at, up_at, up)) =
            tokio::join!(engine::run(&spec, w.clone()), outage_part);
        up.context("restarting payment-service")?;
        tracker.settle(GIVE_UP).await;
        let cs = tracker.checkouts();
        let completion = tracker.stats(run_t0, strategy == "async");
        // Until the last order answered while payment-service was down completed.
        let drained_after_s = cs
            .iter()
            .filter(|c| c.intended >= down_at && c.intended < up_at)
            .filter_map(|c| match c.ended {
                Some((t, Ending::Placed)) => Some(t),
                _ => None,
            })
            .max()
            .map(|t| t.saturating_duration_since(up_at).as_secs_f64());
        let last = cs
            .iter()
            .filter_map(|c| c.ended.map(|(t, _)| t))
            .max()
            .unwrap_or(run_t0);
        let secs = last
            .saturating_duration_since(run_t0)
            .as_secs()
            .max(total.as_secs())
            + 1;
        if strategy == "async" {
            async_accepted += completion.answered_accepted;
            // user- and item-service counted throughout; payment-service up to its death,
            // then from zero after its restart.
            let after = scrape_all(&pages).await;
            add(&mut consumed, &after, 1.0);
            add(&mut consumed, &before, -1.0);
            // `before` held payment-service's counters before the kill and `after` those
            // since its restart: what it counted up to the kill (`mid`) goes back in.
            add(&mut consumed, &mid, 1.0);
            async_window = Some((
                down_at.saturating_duration_since(t0).as_secs_f64(),
                up_at.saturating_duration_since(t0).as_secs_f64(),
            ));
        }
        m.result.completion = Some(completion.clone());
        outage.push(OutageRun {
            strategy: strategy.to_owned(),
            down_from_s: down_at.saturating_duration_since(run_t0).as_secs_f64(),
            down_for_s: up_at.saturating_duration_since(down_at).as_secs_f64(),
            seconds: per_second(&cs, run_t0, secs),
            completion,
            drained_after_s,
            result: m.result,
        });
        tokio::time::sleep(ctx.p.recover).await;
    }
    // A few more seconds of lag after the last run drained.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(sampler);
    let lag = lag.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let consumers = consumed
        .into_iter()
        .map(|(consumer, per)| ConsumerCount {
            consumer,
            applied: per.get("applied").copied().unwrap_or(0.0),
            duplicate: per.get("duplicate").copied().unwrap_or(0.0),
            ignored: per.get("ignored").copied().unwrap_or(0.0),
            retry: per.get("retry").copied().unwrap_or(0.0),
        })
        .collect();
    Ok(section(&Measured {
        rate,
        same_load,
        outage,
        consumers,
        async_accepted,
        lag,
        async_outage_window_s: async_window,
        profile: profile_of(stack),
    }))
}

/// Buckets of `width` seconds of an outage run's per-second rows.
fn buckets(s: &[Second], width: usize) -> Vec<Second> {
    s.chunks(width.max(1))
        .map(|c| Second {
            t: c[0].t,
            accepted: c.iter().map(|x| x.accepted).sum(),
            failed: c.iter().map(|x| x.failed).sum(),
            completed: c.iter().map(|x| x.completed).sum(),
        })
        .collect()
}

/// Builds the section from what [`run`] measured.
pub fn section(m: &Measured) -> Section {
    let mut a = Table::new(
        &format!(
            "(a) Checkouts at {} req/s, open model; answer = the HTTP answer, completion = the order placed (synchronous: the 201 itself; async: GET /api/orders/{{id}} every 50 ms, backing off to a tenth of the order's age (at most 500 ms), until it is not pending), both from the intended send time. Build profile: {}.",
            m.rate, m.profile
        ),
        &[
            "strategy",
            "checkouts",
            "answers ok",
            "answer p50",
            "answer p99",
            "completion p50",
            "completion p99",
            "placed",
            "cancelled",
            "still pending",
        ],
    );
    for r in &m.same_load {
        let c = &r.completion;
        a.row(vec![
            r.strategy.clone(),
            c.checkouts.to_string(),
            (c.answered_placed + c.answered_accepted).to_string(),
            f_ms(c.answer.p50_ms),
            f_ms(c.answer.p99_ms),
            f_ms(c.completion.p50_ms),
            f_ms(c.completion.p99_ms),
            c.placed.to_string(),
            c.cancelled.to_string(),
            c.unfinished.to_string(),
        ]);
    }
    let width = if m.outage.iter().any(|o| o.seconds.len() > 30) {
        5
    } else {
        1
    };
    let mut headers = vec!["seconds".to_owned()];
    for o in &m.outage {
        for h in ["accepted", "failed", "completed"] {
            headers.push(format!("{} {h}", o.strategy));
        }
    }
    let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    let down = m
        .outage
        .first()
        .map(|o| (o.down_from_s, o.down_from_s + o.down_for_s))
        .unwrap_or_default();
    let mut b = Table::new(
        &format!(
            "(b) payment-service killed (SIGKILL) at about {:.0} s and restarted at about {:.0} s of each run, checkouts arriving at {} req/s throughout; answers counted by send time, completions by when the order became placed, per {width} s",
            down.0, down.1, m.rate
        ),
        &header_refs,
    );
    let rows: Vec<Vec<Second>> = m
        .outage
        .iter()
        .map(|o| buckets(&o.seconds, width))
        .collect();
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..n {
        let t = i * width;
        let mut row = vec![format!("{t}-{}", t + width)];
        for r in &rows {
            let s = r.get(i).copied().unwrap_or_default();
            row.extend([
                s.accepted.to_string(),
                s.failed.to_string(),
                s.completed.to_string(),
            ]);
        }
        b.row(row);
    }
    let mut b2 = Table::new(
        "(b) totals of each outage run",
        &[
            "strategy",
            "checkouts",
            "answers ok",
            "answers failed",
            "placed",
            "cancelled",
            "still pending",
            "last order accepted in the outage completed, s after the restart",
        ],
    );
    for o in &m.outage {
        let c = &o.completion;
        b2.row(vec![
            o.strategy.clone(),
            c.checkouts.to_string(),
            (c.answered_placed + c.answered_accepted).to_string(),
            c.answered_failed.to_string(),
            c.placed.to_string(),
            c.cancelled.to_string(),
            c.unfinished.to_string(),
            o.drained_after_s
                .map_or_else(|| "-".into(), |s| format!("{s:.1}")),
        ]);
    }
    let mut c = Table::new(
        &format!(
            "(c) events_consumed_total over the asynchronous runs ((a) and (b), {} checkouts accepted): duplicate = delivered again and not applied again",
            m.async_accepted
        ),
        &["consumer", "applied", "duplicate", "ignored", "retry"],
    );
    for k in &m.consumers {
        c.row(vec![
            k.consumer.clone(),
            format!("{:.0}", k.applied),
            format!("{:.0}", k.duplicate),
            format!("{:.0}", k.ignored),
            format!("{:.0}", k.retry),
        ]);
    }
    let mut by_consumer: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for p in &m.lag {
        by_consumer
            .entry(&p.consumer)
            .or_default()
            .push((p.t_s, p.pending as f64));
    }
    let lag_chart = Chart {
        file: "consumer_lag.svg".into(),
        title: match m.async_outage_window_s {
            Some((a, b)) => format!(
                "Consumer lag (pending + unacknowledged), payment-service down {a:.0}-{b:.0} s"
            ),
            None => "Consumer lag (pending + unacknowledged)".into(),
        },
        spec: ChartSpec::Lines {
            x_label: "seconds since the section started".into(),
            y_label: "events not yet acknowledged".into(),
            series: by_consumer
                .into_iter()
                .map(|(name, points)| Curve {
                    name: name.to_owned(),
                    points,
                    predicted: false,
                })
                .collect(),
        },
    };
    let outage_chart = Chart {
        file: "outage_completions.svg".into(),
        title: "payment-service down: orders completed per second".into(),
        spec: ChartSpec::Lines {
            x_label: "seconds since the run started".into(),
            y_label: "per second".into(),
            series: m
                .outage
                .iter()
                .flat_map(|o| {
                    [
                        Curve {
                            name: format!("{} completed", o.strategy),
                            points: o
                                .seconds
                                .iter()
                                .map(|s| (s.t as f64, s.completed as f64))
                                .collect(),
                            predicted: false,
                        },
                        Curve {
                            name: format!("{} failed answers", o.strategy),
                            points: o
                                .seconds
                                .iter()
                                .map(|s| (s.t as f64, s.failed as f64))
                                .collect(),
                            predicted: true,
                        },
                    ]
                })
                .collect(),
        },
    };
    let find = |s: &str| m.same_load.iter().find(|r| r.strategy == s);
    let mut measurement: Vec<String> = m
        .same_load
        .iter()
        .map(|r| {
            format!(
                "{}: answer p50 {} / p99 {} ms, completed order p50 {} / p99 {} ms",
                r.strategy,
                f_ms(r.completion.answer.p50_ms),
                f_ms(r.completion.answer.p99_ms),
                f_ms(r.completion.completion.p50_ms),
                f_ms(r.completion.completion.p99_ms)
            )
        })
        .collect();
    for o in &m.outage {
        let c = &o.completion;
        measurement.push(format!(
            "with payment-service down {:.0} s, {}: {} of {} answers ok, {} placed, {} cancelled, {} still pending{}",
            o.down_for_s,
            o.strategy,
            c.answered_placed + c.answered_accepted,
            c.checkouts,
            c.placed,
            c.cancelled,
            c.unfinished,
            o.drained_after_s
                .map(|s| format!(", the outage's last order completed {s:.1} s after the restart"))
                .unwrap_or_default()
        ));
    }
    let dups: f64 = m.consumers.iter().map(|k| k.duplicate).sum();
    measurement.push(format!(
        "duplicates delivered and not applied again: {dups:.0} over {} accepted asynchronous checkouts",
        m.async_accepted
    ));
    let answer_gain = match (find("orchestrated"), find("async")) {
        (Some(s), Some(a)) if a.completion.answer.p50_ms > 0.0 => format!(
            " Here the asynchronous answer's p50 was {:.1}x faster than orchestrated's, and its completed order's p50 {:.1}x the orchestrated answer's.",
            s.completion.answer.p50_ms / a.completion.answer.p50_ms,
            a.completion.completion.p50_ms / s.completion.answer.p50_ms.max(1e-9)
        ),
        _ => String::new(),
    };
    Section {
        id: "sync_vs_async".into(),
        title: "Synchronous vs asynchronous".into(),
        setup: format!(
            "The experiment's stack with NATS JetStream (NATS_URL, a stream namespace of the run's own), one process per service consuming (the second item- and payment-service and the monolith are stopped first, so payment-service's outage is the only payment consumer's). Checkouts of 2 items with the always-succeeding card, open model at {} req/s. Binaries: {} build. Lag is read from the broker (num_pending + num_ack_pending of each durable consumer) once a second, so a consumer that is down still shows one.",
            m.rate, m.profile
        ),
        prediction: "The asynchronous answer costs one gRPC call and one database transaction (order + outbox row), so it should be faster than any chain; its completed order costs more than the synchronous answer (several event hops, relays polling outboxes, each consumer's commit). With payment-service down the synchronous strategy fails every checkout fast (breaker), the asynchronous one accepts them all and completes them after the restart, with the payment consumer's lag growing during the outage and draining after. Duplicates delivered may be non-zero (a killed consumer's unacknowledged events come again); duplicates applied must be zero, so applied equals the checkouts on the main path.".into(),
        measurement: measurement.join("; ") + ".",
        lesson: format!(
            "Synchronous is the right choice when the customer needs the ending in the answer (card declined, out of stock) and the chain is short and its parts reliable: the answer is the completion, and nothing is left to follow. Asynchronous is the right choice when accepting must survive a part being down or slow: it answered every checkout during the outage and completed them after, at the price of a longer time to completion, a pending state the client has to poll, eventual failures reported later (a declined card becomes a cancelled order, not an error), and machinery (outboxes, relays, a broker, idempotent consumers) that must be watched by its lag.{answer_gain}"
        ),
        tables: vec![a, b, b2, c],
        charts: vec![lag_chart, outage_chart],
        figures: json!({
            "rate": m.rate,
            "profile": m.profile,
            "same_load": m.same_load.iter().map(|r| json!({"strategy": r.strategy, "completion": r.completion})).collect::<Vec<_>>(),
            "outage": m.outage.iter().map(|o| json!({"strategy": o.strategy, "down_from_s": o.down_from_s, "down_for_s": o.down_for_s, "seconds": o.seconds, "completion": o.completion, "drained_after_s": o.drained_after_s})).collect::<Vec<_>>(),
            "consumers": m.consumers,
            "async_accepted": m.async_accepted,
            "lag": m.lag,
        }),
        runs: m
            .same_load
            .iter()
            .map(|r| r.result.clone())
            .chain(m.outage.iter().map(|o| o.result.clone()))
            .collect(),
    }
}
