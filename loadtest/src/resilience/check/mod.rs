//! `loadtest check`: the consistency checker. Reads every store read-only (user-service's
//! orders in PostgreSQL, payment-service's payments and refunds in MariaDB, item-service's
//! items, their stock in `inventory` and reservations in MongoDB) and reports each violation of the rules that say no
//! money is kept without an order and no stock goes missing:
//!
//! - a: every SUCCEEDED payment with nothing refunded has its order placed with that
//!   payment, and the order's reservation is committed;
//! - b: every placed order has exactly one SUCCEEDED payment for its order, of its total
//!   and currency;
//! - c: no reservation is held (pending/reserved) past its expiry plus the recovery window;
//! - d: for every item, `stock_received` = stock + units held + units committed (items from
//!   before `stock_received` existed are listed as not accounted, not as violations); and
//!   every committed reservation belongs to a placed or refunded order;
//! - e: no checkout record is still in pending/cancelling longer than the recovery window
//!   after it was created, and no PENDING payment or refund has gone unchanged for longer.
//!
//! Checkouts still in flight (records in pending/cancelling created within the window) are
//! left to rule e instead of being judged half-way. Run it on a quiet system: the stores are
//! read one after the other, so a checkout moving between the reads can look inconsistent.
//!
//! [`check`] is the library entry point (the crash test calls it in-process); [`run_cli`]
//! is the subcommand.

mod rules;
mod stores;

use std::{fmt, time::Duration};

use serde::Serialize;

pub use rules::evaluate;
pub use stores::{Item, Order, Payment, Refund, Reservation, Snapshot, Stores};

/// Where the stores are: the same URLs (and environment variables) the services use.
#[derive(Debug, Clone)]
pub struct Urls {
    /// user-service's PostgreSQL (orders).
    pub user_database_url: String,
    /// payment-service's MariaDB (payments, refunds).
    pub payment_database_url: String,
    /// item-service's MongoDB server.
    pub item_mongodb_url: String,
    /// The MongoDB database holding `items`, `inventory` and `reservations`.
    pub item_mongodb_database: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long recovery may take to finish an abandoned checkout.
    pub recovery_window: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            recovery_window: Duration::from_secs(60),
        }
    }
}

/// The rules (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Rule {
    #[serde(rename = "a")]
    PaidHasOrder,
    #[serde(rename = "b")]
    OrderHasPayment,
    #[serde(rename = "c")]
    ReservationExpiry,
    #[serde(rename = "d")]
    StockAccounted,
    #[serde(rename = "e")]
    Stuck,
}

impl Rule {
    pub fn letter(self) -> char {
        match self {
            Self::PaidHasOrder => 'a',
            Self::OrderHasPayment => 'b',
            Self::ReservationExpiry => 'c',
            Self::StockAccounted => 'd',
            Self::Stuck => 'e',
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::PaidHasOrder => "paid_has_order",
            Self::OrderHasPayment => "order_has_payment",
            Self::ReservationExpiry => "reservation_expiry",
            Self::StockAccounted => "stock_accounted",
            Self::Stuck => "stuck",
        }
    }
}

/// One id a violation is about: what it names (`payment`, `order`, `reservation`,
/// `item`, `refund`) and the id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ref {
    pub kind: &'static str,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub rule: Rule,
    pub ids: Vec<Ref>,
    /// What differs from what the rule wants.
    pub detail: String,
}

impl Violation {
    pub(crate) fn new(rule: Rule, ids: &[(&'static str, &str)], detail: String) -> Self {
        Self {
            rule,
            ids: ids
                .iter()
                .map(|(kind, id)| Ref {
                    kind,
                    id: (*id).to_owned(),
                })
                .collect(),
            detail,
        }
    }

    /// Whether it names `kind` `id` (tests look violations up this way).
    pub fn names(&self, kind: &str, id: &str) -> bool {
        self.ids.iter().any(|r| r.kind == kind && r.id == id)
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {} ({}):", self.rule.letter(), self.rule.name())?;
        for r in &self.ids {
            write!(f, " {}={}", r.kind, r.id)?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// How much was looked at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub payments: usize,
    pub refunds: usize,
    pub orders: usize,
    /// Orders in pending/cancelling created within the window (left to rule e).
    pub orders_in_flight: usize,
    pub reservations: usize,
    pub items: usize,
    /// Items with `stock_received` (the rest are in [`Report::not_accounted`]).
    pub items_accounted: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub violations: Vec<Violation>,
    pub checked: Counts,
    /// Ids of items created before `stock_received` existed: rule d cannot judge them.
    pub not_accounted: Vec<String>,
    pub recovery_window_secs: u64,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// The violations of one rule.
    pub fn of(&self, rule: Rule) -> impl Iterator<Item = &Violation> {
        self.violations.iter().filter(move |v| v.rule == rule)
    }

    /// One line: what was checked and how many violations.
    pub fn summary(&self) -> String {
        let c = &self.checked;
        format!(
            "checked {} payments, {} pending refunds, {} orders ({} in flight), {} reservations, \
             {} items ({} accounted, {} not accounted); recovery window {} s: {} violation{}",
            c.payments,
            c.refunds,
            c.orders,
            c.orders_in_flight,
            c.reservations,
            c.items,
            c.items_accounted,
            self.not_accounted.len(),
            self.recovery_window_secs,
            self.violations.len(),
            if self.violations.len() == 1 { "" } else { "s" }
        )
    }
}

/// Connects read-only to every store, reads it, closes, and judges what it read.
pub async fn check(urls: &Urls, opts: &Options) -> anyhow::Result<Report> {
    let mut stores = Stores::connect(urls).await?;
    let snapshot = stores.snapshot().await;
    stores.close().await;
    Ok(evaluate(&snapshot?, opts))
}

/// `loadtest check` flags; URLs fall back to the services' own environment variables.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// user-service's PostgreSQL (its orders).
    #[arg(long, env = "USER_DATABASE_URL", hide_env_values = true)]
    pub user_database_url: String,
    /// payment-service's MariaDB (its payments and refunds).
    #[arg(long, env = "PAYMENT_DATABASE_URL", hide_env_values = true)]
    pub payment_database_url: String,
    /// item-service's MongoDB.
    #[arg(
        long,
        env = "ITEM_MONGODB_URL",
        default_value = "mongodb://127.0.0.1:27017/?directConnection=true",
        hide_env_values = true
    )]
    pub item_mongodb_url: String,
    /// The database holding item-service's `items`, `inventory` and `reservations`.
    #[arg(long, env = "ITEM_MONGODB_DATABASE", default_value = "shop_item")]
    pub item_mongodb_database: String,
    /// How long recovery may take to finish an abandoned checkout (user-service's
    /// USER_RECOVERY_STUCK_SECS): held reservations past expiry plus this, checkouts
    /// unfinished this long after they started, and payments or refunds PENDING and
    /// unchanged for longer, are violations.
    #[arg(long, default_value_t = 60)]
    pub recovery_window_secs: u64,
    /// Print the report as JSON instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// Runs the subcommand; returns the exit code: 0 consistent, 1 violations, 2 the stores
/// could not be read.
pub async fn run_cli(a: Args) -> i32 {
    let urls = Urls {
        user_database_url: a.user_database_url,
        payment_database_url: a.payment_database_url,
        item_mongodb_url: a.item_mongodb_url,
        item_mongodb_database: a.item_mongodb_database,
    };
    let opts = Options {
        recovery_window: Duration::from_secs(a.recovery_window_secs),
    };
    let report = match check(&urls, &opts).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadtest check: {e:#}");
            return 2;
        }
    };
    if a.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("loadtest check: {e}");
                return 2;
            }
        }
    } else {
        for v in &report.violations {
            println!("{v}");
        }
        if !report.not_accounted.is_empty() {
            let shown: Vec<&str> = report
                .not_accounted
                .iter()
                .take(5)
                .map(String::as_str)
                .collect();
            println!(
                "not accounted (created before stock_received existed): {} item(s), e.g. {}",
                report.not_accounted.len(),
                shown.join(", ")
            );
        }
        println!("{}", report.summary());
    }
    if report.is_clean() { 0 } else { 1 }
}
