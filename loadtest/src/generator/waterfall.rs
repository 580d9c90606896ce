//! Where a median checkout's time goes, from the `Server-Timing` header the gateway (or the
//! monolith) sends with every response: `call.item.ReserveStock` (a downstream call as the
//! caller saw it), `handler.item.ReserveStock` (inside the server), `store.mongodb` (with
//! `n` = round trips), `gateway.self`, `total`.
//!
//! The engine keeps the parsed header of every successful checkout with its client-seen
//! latency ([`Collector`]); at the end of a run [`Waterfall::build`] averages each component
//! over the checkouts whose latency lies in the middle band (40th to 60th percentile), which
//! is steadier than the single median request.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
    time::Instant,
};

use rand::Rng;
use serde::{Deserialize, Serialize};

/// One `Server-Timing` metric: milliseconds and count (`n`, 1 when absent).
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub ms: f64,
    pub count: u32,
}

/// Parses a `Server-Timing` header value. Metrics without a usable name or `dur` are
/// skipped: a malformed header must never fail a run.
pub fn parse(header: &str) -> Vec<Metric> {
    let mut out = Vec::new();
    for item in split_unquoted(header, ',') {
        let mut params = split_unquoted(item, ';').into_iter();
        let name = params.next().unwrap_or_default().trim();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            continue;
        }
        let (mut ms, mut count) = (None, 1u32);
        for p in params {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            match k.trim() {
                "dur" => ms = v.parse::<f64>().ok().filter(|d| d.is_finite() && *d >= 0.0),
                "n" => count = v.parse().unwrap_or(1),
                _ => {}
            }
        }
        if let Some(ms) = ms {
            out.push(Metric {
                name: name.to_owned(),
                ms,
                count,
            });
        }
    }
    out
}

/// Splits on `sep` outside double-quoted strings (a `desc="a, b"` must not split a metric).
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let (mut out, mut start, mut quoted) = (Vec::new(), 0, false);
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            out.push(&s[start..i]);
            start = i + 1;
        }
    }
    out.push(&s[start..]);
    out
}

tokio::task_local! {
    /// Set by the engine around each operation; a workload reports its response's
    /// Server-Timing into it with [`note`].
    static SLOT: RefCell<Option<Vec<Metric>>>;
}

/// Records the Server-Timing of the operation being run (a no-op outside the engine).
pub fn note(header: &str) {
    let metrics = parse(header);
    if metrics.is_empty() {
        return;
    }
    let _ = SLOT.try_with(|s| *s.borrow_mut() = Some(metrics));
}

/// Runs `fut` with a slot for [`note`], and returns what was noted.
pub async fn capture<F: Future>(fut: F) -> (F::Output, Option<Vec<Metric>>) {
    SLOT.scope(RefCell::new(None), async move {
        let out = fut.await;
        let noted = SLOT.with(|s| s.borrow_mut().take());
        (out, noted)
    })
    .await
}

/// Timed samples kept per run, at most; past it a uniform reservoir sample is kept (the
/// band of a uniform sample is the band of the whole).
const KEEP: usize = 50_000;

/// One timed operation: client-seen milliseconds and its response's metrics.
pub type Timed = (f64, Vec<Metric>);

/// The timed successful operations of one run (warm-up excluded).
pub struct Collector {
    measure_from: Instant,
    /// (operations seen, the kept sample).
    inner: Mutex<(u64, Vec<Timed>)>,
}

impl Collector {
    pub fn new(measure_from: Instant) -> Self {
        Self {
            measure_from,
            inner: Mutex::new((0, Vec::new())),
        }
    }

    pub fn record(&self, started: Instant, latency_ms: f64, metrics: Vec<Metric>) {
        if started < self.measure_from {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        let seen = g.0;
        if g.1.len() < KEEP {
            g.1.push((latency_ms, metrics));
        } else {
            let j = rand::rng().random_range(0..seen) as usize;
            if j < KEEP {
                g.1[j] = (latency_ms, metrics);
            }
        }
    }

    pub fn waterfall(&self) -> Option<Waterfall> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Waterfall::build(&g.1)
    }
}

/// The middle band of client-seen latencies the waterfall averages over, in percentiles.
pub const BAND: (f64, f64) = (40.0, 60.0);

/// One component of the waterfall: mean milliseconds and mean count per checkout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Component {
    pub name: String,
    pub ms: f64,
    pub count: f64,
}

/// A figure computed from the components.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Derived {
    pub name: String,
    pub ms: f64,
    /// How it was computed.
    pub formula: String,
}

/// The median checkout, component by component.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Waterfall {
    /// How the figures were obtained.
    pub method: String,
    pub band_from_pct: f64,
    pub band_to_pct: f64,
    /// Successful operations that carried a Server-Timing header (kept ones, see the method).
    pub timed: usize,
    /// Of those, in the band.
    pub in_band: usize,
    /// Mean client-seen latency of the band.
    pub client_ms: f64,
    /// `total`, `gateway.self`, `call.*`, `handler.*`, `store.*` (as the header names them).
    pub components: Vec<Component>,
    pub derived: Vec<Derived>,
}

/// Which stores each service talks to (DESIGN.md), to take them out of its handlers' time.
const STORES: [(&str, &[&str]); 3] = [
    ("user", &["store.postgres"]),
    ("item", &["store.mongodb", "store.redis"]),
    ("payment", &["store.mysql", "store.card_gateway"]),
];

/// The chained flow's hops besides the gateway's (DESIGN.md): user-service calls
/// payment-service, payment-service calls item-service, in their `Chained*` handlers.
const CHAIN: [(&str, &str); 2] = [("user", "payment"), ("payment", "item")];

fn service_of<'a>(name: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    name.strip_prefix(prefix)?.split_once('.')
}

impl Waterfall {
    /// Averages every component over the samples (client-seen ms, metrics) whose latency
    /// lies between the [`BAND`] percentiles; `None` without any timed sample.
    pub fn build(samples: &[Timed]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut order: Vec<usize> = (0..samples.len()).collect();
        order.sort_by(|a, b| samples[*a].0.total_cmp(&samples[*b].0));
        let n = samples.len();
        let lo = ((n as f64 * BAND.0 / 100.0).floor() as usize).min(n - 1);
        let hi = ((n as f64 * BAND.1 / 100.0).ceil() as usize).clamp(lo + 1, n);
        let band = &order[lo..hi];
        let k = band.len() as f64;
        let mut sums: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
        let mut client = 0.0;
        for &i in band {
            client += samples[i].0;
            for m in &samples[i].1 {
                let e = sums.entry(m.name.as_str()).or_default();
                e.0 += m.ms;
                e.1 += f64::from(m.count);
            }
        }
        let components: Vec<Component> = sums
            .into_iter()
            .map(|(name, (ms, count))| Component {
                name: name.to_owned(),
                ms: ms / k,
                count: count / k,
            })
            .collect();
        let derived = derive(&components);
        Some(Self {
            method: format!(
                "mean over the {} successful timed requests whose client-seen latency lies between the {:.0}th and {:.0}th percentile (of {} timed), so one odd request cannot skew it",
                band.len(),
                BAND.0,
                BAND.1,
                n
            ),
            band_from_pct: BAND.0,
            band_to_pct: BAND.1,
            timed: n,
            in_band: band.len(),
            client_ms: client / k,
            components,
            derived,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }

    pub fn ms(&self, name: &str) -> f64 {
        self.get(name).map_or(0.0, |c| c.ms)
    }

    pub fn derived_ms(&self, name: &str) -> Option<f64> {
        self.derived.iter().find(|d| d.name == name).map(|d| d.ms)
    }

    /// Components with the given prefix (`call.`, `handler.`, `store.`).
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a Component> {
        self.components
            .iter()
            .filter(move |c| c.name.starts_with(prefix))
    }

    /// Summed `call.X - handler.X` over the calls whose handler reported: the network,
    /// HTTP/2 framing and (de)serialisation of every hop.
    pub fn network_ms(&self) -> f64 {
        self.derived_ms("net.all").unwrap_or(0.0)
    }

    /// Number of downstream calls per checkout (summed counts of `call.*`).
    pub fn calls(&self) -> f64 {
        self.with_prefix("call.").map(|c| c.count).sum()
    }

    /// Text lines for `loadtest run`.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![
            format!("median checkout waterfall ({})", self.method),
            format!(
                "  {:<40} {:>9} ms",
                "client-seen latency",
                f3(self.client_ms)
            ),
        ];
        let label = |c: &Component| -> String {
            match c.name.as_str() {
                "total" => "gateway total".into(),
                "gateway.self" => "gateway itself".into(),
                _ => c.name.clone(),
            }
        };
        for prefix in ["total", "gateway.self", "call.", "handler.", "store."] {
            for c in self.with_prefix(prefix) {
                let n = if c.name.starts_with("store.") || c.count > 1.0 + 1e-9 {
                    format!("  x{:.1}", c.count)
                } else {
                    String::new()
                };
                out.push(format!("  {:<40} {:>9} ms{n}", label(c), f3(c.ms)));
            }
        }
        for d in &self.derived {
            out.push(format!(
                "  {:<40} {:>9} ms  = {}",
                d.name,
                f3(d.ms),
                d.formula
            ));
        }
        out
    }
}

fn f3(v: f64) -> String {
    format!("{v:.3}")
}

/// `net.X = call.X - handler.X` per call, their sum, and per service the handlers' own time:
/// its handlers minus its stores minus the calls it made itself (chained flow).
fn derive(components: &[Component]) -> Vec<Derived> {
    let get = |n: &str| components.iter().find(|c| c.name == n).map(|c| c.ms);
    let mut out = Vec::new();
    let mut net_sum = 0.0;
    let mut any = false;
    for c in components.iter().filter(|c| c.name.starts_with("call.")) {
        let rest = &c.name["call.".len()..];
        if let Some(h) = get(&format!("handler.{rest}")) {
            any = true;
            net_sum += c.ms - h;
            out.push(Derived {
                name: format!("net.{rest}"),
                ms: c.ms - h,
                formula: format!("call.{rest} - handler.{rest}"),
            });
        }
    }
    if any {
        out.push(Derived {
            name: "net.all".into(),
            ms: net_sum,
            formula: "sum of call.X - handler.X".into(),
        });
    }
    let handler_services: BTreeSet<&str> = components
        .iter()
        .filter_map(|c| service_of(&c.name, "handler.").map(|(s, _)| s))
        .collect();
    let chained = |svc: &str| {
        components.iter().any(|c| {
            service_of(&c.name, "handler.")
                .is_some_and(|(s, m)| s == svc && m.starts_with("Chained"))
        })
    };
    for (svc, stores) in STORES {
        if !handler_services.contains(svc) {
            continue;
        }
        let handlers: f64 = components
            .iter()
            .filter(|c| service_of(&c.name, "handler.").is_some_and(|(s, _)| s == svc))
            .map(|c| c.ms)
            .sum();
        let store_ms: f64 = stores.iter().filter_map(|s| get(s)).sum();
        let mut formula = format!("handler.{svc}.* - {}", stores.join(" - "));
        let mut nested = 0.0;
        for (from, to) in CHAIN {
            if from == svc && chained(svc) {
                nested += components
                    .iter()
                    .filter(|c| service_of(&c.name, "call.").is_some_and(|(s, _)| s == to))
                    .map(|c| c.ms)
                    .sum::<f64>();
                formula.push_str(&format!(" - call.{to}.*"));
            }
        }
        out.push(Derived {
            name: format!("own.{svc}"),
            ms: handlers - store_ms - nested,
            formula,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, ms: f64, count: u32) -> Metric {
        Metric {
            name: name.into(),
            ms,
            count,
        }
    }

    #[test]
    fn parses_the_gateway_header_and_skips_garbage() {
        let h =
            "call.item.ReserveStock;dur=11.154;n=1, store.mongodb;dur=16.888;n=8, total;dur=45.031";
        assert_eq!(
            parse(h),
            vec![
                m("call.item.ReserveStock", 11.154, 1),
                m("store.mongodb", 16.888, 8),
                m("total", 45.031, 1),
            ]
        );
        // Standard Server-Timing forms: quoted values, desc, whitespace; garbage dropped.
        let h = r#"db;desc="x, y";dur="2.5", cache;desc=hit, bad name;dur=1, neg;dur=-1, nan;dur=NaN, ;dur=3, ok ; dur = 1 ; n=x"#;
        assert_eq!(parse(h), vec![m("db", 2.5, 1), m("ok", 1.0, 1)]);
        assert!(parse("").is_empty());
        assert!(parse("\u{0}\u{1}garbage;;;==,,").is_empty());
    }

    #[test]
    fn band_is_the_middle_fifth_and_components_are_averaged() {
        // Latencies 1..=10 ms: the 40th-60th percentile band is the 5th and 6th (5, 6 ms),
        // after sorting (they arrive shuffled).
        let samples: Vec<Timed> = [7, 2, 5, 10, 1, 6, 3, 9, 4, 8]
            .iter()
            .map(|&l| {
                let l = f64::from(l);
                let mut v = vec![m("total", l - 0.5, 1), m("store.redis", l / 10.0, 2)];
                if l == 5.0 {
                    v.push(m("store.mysql", 1.0, 3));
                }
                (l, v)
            })
            .collect();
        let w = Waterfall::build(&samples).expect("some samples");
        assert_eq!((w.timed, w.in_band), (10, 2));
        assert!((w.client_ms - 5.5).abs() < 1e-9);
        assert!((w.ms("total") - 5.0).abs() < 1e-9);
        assert!((w.ms("store.redis") - 0.55).abs() < 1e-9);
        // Absent in one of the two: averaged as zero there.
        let mysql = w.get("store.mysql").expect("mysql");
        assert!((mysql.ms - 0.5).abs() < 1e-9 && (mysql.count - 1.5).abs() < 1e-9);
        assert!(w.method.contains("40th and 60th"));

        let one = Waterfall::build(&[(3.0, vec![m("total", 2.0, 1)])]).expect("one");
        assert_eq!(one.in_band, 1);
        assert!(Waterfall::build(&[]).is_none());
    }

    #[test]
    fn derives_network_and_handler_own_time() {
        // Chained: gateway -> user.ChainedCheckout -> payment.ChainedCharge -> item.ReserveStock.
        let s = vec![(
            30.0,
            vec![
                m("total", 28.0, 1),
                m("gateway.self", 2.0, 1),
                m("call.user.ChainedCheckout", 26.0, 1),
                m("handler.user.ChainedCheckout", 25.0, 1),
                m("store.postgres", 3.0, 2),
                m("call.payment.ChainedCharge", 20.0, 1),
                m("handler.payment.ChainedCharge", 18.0, 1),
                m("store.mysql", 4.0, 3),
                m("store.card_gateway", 1.0, 1),
                m("call.item.ReserveStock", 10.0, 1),
                m("handler.item.ReserveStock", 9.0, 1),
                m("store.mongodb", 6.0, 4),
            ],
        )];
        let w = Waterfall::build(&s).expect("one");
        let d = |n: &str| w.derived_ms(n).expect(n);
        assert!((d("net.user.ChainedCheckout") - 1.0).abs() < 1e-9);
        assert!((d("net.all") - 4.0).abs() < 1e-9);
        assert!((d("own.user") - (25.0 - 3.0 - 20.0)).abs() < 1e-9);
        assert!((d("own.payment") - (18.0 - 5.0 - 10.0)).abs() < 1e-9);
        assert!((d("own.item") - 3.0).abs() < 1e-9);
        assert!((w.calls() - 3.0).abs() < 1e-9);
        assert!(w.lines().iter().any(|l| l.contains("gateway itself")));
    }

    #[tokio::test]
    async fn capture_returns_what_the_operation_noted() {
        let (v, noted) = capture(async {
            note("total;dur=1.5");
            7
        })
        .await;
        assert_eq!(v, 7);
        assert_eq!(noted, Some(vec![m("total", 1.5, 1)]));
        let (_, none) = capture(async { note("not a metric") }).await;
        assert!(none.is_none());
        // Outside the engine, noting is harmless.
        note("total;dur=1");
    }
}
