//! `loadtest crash`: the crash test. For each process of the shop and each step
//! of a checkout, the existing fault injection holds a checkout inside that step, the
//! process gets SIGKILL and is started again on the same address, and then the checkout
//! must reach one of the acceptable endings (order placed / refunded and released / never
//! charged) within the recovery window, with no client retry, and the consistency checker
//! must find nothing. Every checkout is then followed to the end of the run (an ending is
//! final), the checker runs before the first kill and after every combination, and after
//! the last one the run waits out the recovery window and requires a clean final check.
//! Everything runs on loopback from the built binaries, on throw-away databases, and every
//! wait is bounded.

pub mod checker;
pub mod follow;
pub mod plan;
pub mod probe;
pub mod shop;
pub mod stores;
pub mod supervisor;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;

use self::{
    checker::{CheckResult, run_checker},
    follow::Follow,
    plan::{Combo, FaultSite, Process, Step, Trigger, window},
    probe::{CheckoutRef, Ending, Observed, Probe},
    shop::{ClientAnswer, Customer, ShopClient},
    stores::Stores,
    supervisor::{Addresses, Supervisor, now_rfc3339},
};
use crate::admin::{Rule, set_grpc_faults, set_http_faults};

/// How the stack is tuned so one combination takes seconds, not minutes.
#[derive(Debug, Clone, Serialize)]
pub struct Tuning {
    pub reservation_ttl_secs: u32,
    pub recovery_interval_ms: u32,
    pub checkout_lease_ms: u32,
    /// The gateway's checkout budget: long enough that a slowed step stays open until the
    /// kill.
    pub checkout_budget_ms: u32,
    /// Long payment-service timeouts, so calls held open by a window do not time out
    /// before the kill lands (the crash test); the soak keeps the defaults.
    pub hold_calls: bool,
    /// How long an event a killed consumer had not acknowledged waits before it is
    /// delivered again (the consumers' ack wait, platform::events::ConsumerSpec: 30 s); 0
    /// for the synchronous strategies.
    pub event_redelivery_ms: u32,
}

impl Tuning {
    /// The crash test's: short TTL, lease and recovery interval; a checkout budget that
    /// outlasts the slowest window (the gateway's lease is at least twice the budget plus
    /// a second, so the budget is what bounds how soon the recovery may step in).
    pub const CRASH: Self = Self {
        reservation_ttl_secs: 8,
        recovery_interval_ms: 300,
        checkout_lease_ms: 3000,
        checkout_budget_ms: 6000,
        hold_calls: true,
        event_redelivery_ms: 0,
    };

    /// The crash test's for `--strategy async`: the same, plus the consumers' redelivery
    /// wait, which bounds how soon an event a killed consumer held is handled again.
    pub const ASYNC: Self = Self {
        event_redelivery_ms: 30_000,
        ..Self::CRASH
    };

    /// The crash test's tuning for `strategy`.
    pub fn crash(strategy: &str) -> Self {
        if strategy == plan::ASYNC {
            Self::ASYNC
        } else {
            Self::CRASH
        }
    }

    /// The soak's: the services' own timeouts and budgets, recovery tightened so a crash's
    /// checkouts settle within the run.
    pub const SOAK: Self = Self {
        reservation_ttl_secs: 20,
        recovery_interval_ms: 1000,
        checkout_lease_ms: 5000,
        checkout_budget_ms: 2000,
        hold_calls: false,
        event_redelivery_ms: 0,
    };

    /// Settings of every process (the stores' come separately).
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "ITEM_RESERVATION_TTL_SECS",
                self.reservation_ttl_secs.to_string(),
            ),
            ("ITEM_SWEEP_INTERVAL_MS", "500".into()),
            (
                "USER_RECOVERY_INTERVAL_MS",
                self.recovery_interval_ms.to_string(),
            ),
            (
                "GATEWAY_CHECKOUT_LEASE_MS",
                self.checkout_lease_ms.to_string(),
            ),
            (
                "GATEWAY_CHECKOUT_BUDGET_MS",
                self.checkout_budget_ms.to_string(),
            ),
            ("PAYMENT_RECONCILE_INTERVAL_MS", "1000".into()),
        ];
        if self.hold_calls {
            env.push(("PAYMENT_GATEWAY_TIMEOUT_MS", "10000".into()));
            env.push(("PAYMENT_ITEM_TIMEOUT_MS", "10000".into()));
        }
        env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// The lease the gateway actually grants: never shorter than twice its checkout budget
    /// plus a second (gateway/src/config.rs).
    pub fn effective_lease_ms(&self) -> u64 {
        u64::from(self.checkout_lease_ms).max(2 * u64::from(self.checkout_budget_ms) + 1000)
    }

    /// After the restart, how long a checkout may take to reach its ending: the lease must
    /// expire, the reservation may have to expire, and recovery runs every interval.
    pub fn recovery_window(&self) -> Duration {
        Duration::from_millis(
            self.effective_lease_ms()
                + u64::from(self.reservation_ttl_secs) * 1000
                + 10 * u64::from(self.recovery_interval_ms)
                + u64::from(self.event_redelivery_ms)
                + 15_000,
        )
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub bin_dir: PathBuf,
    /// Process logs (appended across restarts).
    pub log_dir: PathBuf,
    pub combos: Vec<Combo>,
    /// orchestrated | parallel | chained | async.
    pub strategy: String,
    /// Write crash.json and crash.md here.
    pub out_dir: Option<PathBuf>,
    /// Keep the throw-away SQL databases (their names are printed) instead of dropping them.
    pub keep_databases: bool,
    /// Settings every process of the shop gets on top of the run's (e.g. a test-only
    /// switch that breaks the recovery on purpose).
    pub extra_env: Vec<(String, String)>,
}

/// One event of a combination, in ms since its checkout was sent.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub at_ms: u64,
    pub what: String,
}

/// The restarted process's counters for the event its killed predecessor held before the ack.
#[derive(Debug, Clone, Serialize)]
pub struct Redelivery {
    pub consumer: String,
    pub duplicate: u64,
    pub applied: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComboResult {
    pub combo: String,
    pub process: String,
    pub step: String,
    pub window: String,
    pub order_id: String,
    pub client: Option<ClientAnswer>,
    pub ending: Option<Ending>,
    pub last_seen: Observed,
    /// From the restart to the ending (or to giving up).
    pub settled_after_s: f64,
    /// Everything wrong with this combination's checkout, whenever it showed: while it
    /// ran, or later in the run (the checker naming its order, or the checkout leaving its
    /// ending).
    pub violations: Vec<String>,
    /// The harness could not run this combination as planned (counts as a failure).
    pub harness_error: Option<String>,
    /// For a consumer killed between its commit and its ack: what the restarted process
    /// did with the event delivered again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivery: Option<Redelivery>,
    pub timeline: Vec<Event>,
}

impl ComboResult {
    pub fn ok(&self) -> bool {
        self.violations.is_empty() && self.harness_error.is_none()
    }

    pub fn cell(&self) -> String {
        match (&self.harness_error, self.violations.len(), self.ending) {
            (Some(e), 0, Some(end)) if e.starts_with("window missed") => {
                format!("window missed ({})", end.name())
            }
            (Some(_), _, _) => "HARNESS ERROR".into(),
            (None, 0, Some(e)) => format!("ok ({})", e.name()),
            (None, n, _) => format!("{n} VIOLATION{}", if n == 1 { "" } else { "S" }),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MatrixReport {
    pub started_at: String,
    pub strategy: String,
    pub tuning: Tuning,
    pub recovery_window_s: f64,
    pub stores: String,
    pub checker_available: bool,
    /// The checker's violations before any kill (the fresh stores must be consistent).
    pub baseline_violations: Vec<String>,
    /// The checker's summary after the last combination.
    pub checker_summary: String,
    pub results: Vec<ComboResult>,
    /// The check after the last combination, once the recovery window has passed.
    pub final_check: FinalCheck,
    /// Checkouts followed from their ending to the end of the run.
    pub followed: usize,
    pub kills: u32,
    pub elapsed_s: f64,
}

/// The last check of a run: after the recovery window, nothing may be left in flight or
/// inconsistent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FinalCheck {
    /// From the last restart to the check.
    pub waited_s: f64,
    /// Every violation the checker reported (each is also filed with the combination
    /// whose order it names).
    pub violations: Vec<String>,
    /// The checker could not run.
    pub error: Option<String>,
}

impl FinalCheck {
    pub fn clean(&self) -> bool {
        self.violations.is_empty() && self.error.is_none()
    }
}

impl MatrixReport {
    /// Failed combinations, plus one if the stores were inconsistent before any kill and
    /// one if the final check was not clean.
    pub fn failures(&self) -> usize {
        self.results.iter().filter(|r| !r.ok()).count()
            + usize::from(!self.baseline_violations.is_empty())
            + usize::from(!self.final_check.clean())
    }

    /// One line per failure ([`MatrixReport::failures`] of them): empty on a pass.
    pub fn failure_list(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .results
            .iter()
            .filter(|r| !r.ok())
            .map(|r| {
                let mut why: Vec<String> = r.harness_error.iter().cloned().collect();
                why.extend(r.violations.iter().cloned());
                format!("{}: {}", r.combo, why.join("; "))
            })
            .collect();
        if !self.baseline_violations.is_empty() {
            out.push(format!(
                "before any kill: {}",
                self.baseline_violations.join("; ")
            ));
        }
        if !self.final_check.clean() {
            let mut why: Vec<String> = self.final_check.error.iter().cloned().collect();
            why.extend(self.final_check.violations.iter().cloned());
            out.push(format!("final check: {}", why.join("; ")));
        }
        out
    }

    /// The process x step table (markdown).
    pub fn table(&self) -> String {
        let steps = Step::of(&self.strategy);
        let mut s = String::from("| process |");
        for st in steps {
            s.push_str(&format!(" {} |", st.name()));
        }
        s.push_str("\n|---|");
        s.push_str(&"---|".repeat(steps.len()));
        s.push('\n');
        for p in Process::ALL {
            let row: Vec<&ComboResult> = self
                .results
                .iter()
                .filter(|r| r.process == p.name())
                .collect();
            if row.is_empty() {
                continue;
            }
            s.push_str(&format!("| {} |", p.name()));
            for st in steps {
                let cell = row
                    .iter()
                    .find(|r| r.step == st.name())
                    .map_or_else(|| "-".to_owned(), |r| r.cell());
                s.push_str(&format!(" {cell} |"));
            }
            s.push('\n');
        }
        s
    }

    /// Per-combination details: the client's answer, the ending, the violations.
    pub fn details(&self) -> String {
        let mut s = String::new();
        for r in &self.results {
            s.push_str(&format!(
                "- {}: client {}; {} after {:.1} s ({})\n",
                r.combo,
                r.client
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), ClientAnswer::summary),
                r.ending.map_or("NO ACCEPTABLE ENDING", Ending::name),
                r.settled_after_s,
                r.last_seen
            ));
            if let Some(e) = &r.harness_error {
                s.push_str(&format!("  - harness error: {e}\n"));
            }
            if let Some(d) = &r.redelivery {
                s.push_str(&format!(
                    "  - redelivered to the restarted {}: {} duplicate, {} applied\n",
                    d.consumer, d.duplicate, d.applied
                ));
            }
            for v in &r.violations {
                s.push_str(&format!("  - violation: {v}\n"));
            }
        }
        s
    }

    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Crash test ({})\n\nStarted {}; strategy `{}`; {} combinations, {} failed; {} SIGKILLs; {:.0} s.\n\n\
             Tuning: reservation TTL {} s, recovery every {} ms, gateway checkout lease {} ms (granted: {} ms), checkout budget {} ms; each checkout must end within {:.0} s of the restart.\n\n\
             Stores: {}.\n\nConsistency checker: {}.\n\n\
             Final check ({:.0} s after the last restart, {} checkouts followed to the end): {}.\n\n",
            if self.failures() == 0 { "pass" } else { "FAIL" },
            self.started_at,
            self.strategy,
            self.results.len(),
            self.failures(),
            self.kills,
            self.elapsed_s,
            self.tuning.reservation_ttl_secs,
            self.tuning.recovery_interval_ms,
            self.tuning.checkout_lease_ms,
            self.tuning.effective_lease_ms(),
            self.tuning.checkout_budget_ms,
            self.recovery_window_s,
            self.stores,
            if self.checker_available {
                format!(
                    "run after every combination; last: {}",
                    self.checker_summary
                )
            } else {
                "not run".to_owned()
            },
            self.final_check.waited_s,
            self.followed,
            if self.final_check.clean() {
                "clean".to_owned()
            } else {
                format!(
                    "FAILED: {}",
                    self.final_check
                        .error
                        .iter()
                        .chain(&self.final_check.violations)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            }
        );
        s.push_str(&self.table());
        s.push_str("\n## Each combination\n\n");
        s.push_str(&self.details());
        s
    }
}

/// The three gRPC servers' and the card gateway's fault rules, emptied (retrying while a
/// process that was just restarted settles).
pub async fn clear_faults(addrs: &Addresses) -> anyhow::Result<()> {
    let card = addrs.card_target()?;
    for attempt in 0.. {
        let r: anyhow::Result<()> = async {
            for url in [addrs.user_grpc(), addrs.item_grpc(), addrs.payment_grpc()] {
                set_grpc_faults(&url, &[]).await?;
            }
            set_http_faults(&card, "/admin/faults", None, &[]).await?;
            Ok(())
        }
        .await;
        match r {
            Ok(()) => return Ok(()),
            Err(e) if attempt >= 20 => return Err(e.context("clearing the fault rules")),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    Ok(())
}

async fn open_window(addrs: &Addresses, faults: &[(FaultSite, Rule)]) -> anyhow::Result<()> {
    let mut by_site: Vec<(FaultSite, Vec<Rule>)> = Vec::new();
    for (site, rule) in faults {
        match by_site.iter_mut().find(|(s, _)| s == site) {
            Some((_, rules)) => rules.push(rule.clone()),
            None => by_site.push((*site, vec![rule.clone()])),
        }
    }
    for (site, rules) in by_site {
        match site {
            FaultSite::User => set_grpc_faults(&addrs.user_grpc(), &rules).await?,
            FaultSite::Item => set_grpc_faults(&addrs.item_grpc(), &rules).await?,
            FaultSite::Payment => set_grpc_faults(&addrs.payment_grpc(), &rules).await?,
            FaultSite::Card => {
                set_http_faults(&addrs.card_target()?, "/admin/faults", None, &rules).await?
            }
        }
    }
    Ok(())
}

/// The stack of a crash run: supervisor, stores, the customer side.
pub struct Rig {
    pub sup: Supervisor,
    pub stores: Stores,
    pub client: ShopClient,
    pub probe: Probe,
    pub item_id: String,
    /// An admin (creates items).
    pub admin: Customer,
    pub tuning: Tuning,
    /// Every checkout that reached its ending, followed to the end of the run.
    pub follow: Follow,
    /// When the last killed process was back.
    pub last_restart: Option<Instant>,
    run_id: String,
}

impl Rig {
    /// Fresh databases, every process started, an admin and an item with plenty of stock.
    pub async fn start(
        bin_dir: &std::path::Path,
        log_dir: &std::path::Path,
        tuning: Tuning,
        extra_env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        Self::start_with_services_env(bin_dir, log_dir, tuning, extra_env, Vec::new()).await
    }

    /// [`Rig::start`] with settings only user-, item- and payment-service get (the event
    /// stream's, for the asynchronous checkout).
    pub async fn start_with_services_env(
        bin_dir: &std::path::Path,
        log_dir: &std::path::Path,
        tuning: Tuning,
        extra_env: Vec<(String, String)>,
        services_env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let stores = Stores::fresh().await?;
        let admin_email = format!("crash-admin-{run_id}@example.com");
        let mut env = stores.env();
        env.extend(tuning.env());
        env.push((
            "USER_JWT_SECRET".into(),
            format!("crash-{run_id}-{}", uuid::Uuid::new_v4().simple()),
        ));
        env.extend(extra_env);
        let addrs = Addresses::pick()?;
        let mut sup = Supervisor::new(bin_dir, log_dir, addrs.clone(), env)?;
        sup.set_services_env(services_env);
        if let Err(e) = sup.start_all().await {
            sup.stop_all().await;
            stores.drop_all().await;
            return Err(e);
        }
        let client = ShopClient::new(addrs.gateway_target()?)?;
        let probe = Probe::new(addrs.user_grpc(), addrs.item_grpc(), addrs.payment_grpc());
        let setup = async {
            // Registered like any account, made an admin by the operator's command on the
            // same database; the next login carries the role.
            client.customer(&admin_email).await?;
            sup.run_once(Process::UserService, &["admin", "grant", &admin_email])
                .await?;
            let admin = client.customer(&admin_email).await?;
            let item = client
                .create_item(&admin, &format!("CRASH-{}", run_id.to_ascii_uppercase()))
                .await?;
            anyhow::Ok((admin, item))
        };
        match setup.await {
            Ok((admin, item_id)) => Ok(Self {
                sup,
                stores,
                client,
                probe,
                item_id,
                admin,
                tuning,
                follow: Follow::default(),
                last_restart: None,
                run_id,
            }),
            Err(e) => {
                sup.stop_all().await;
                stores.drop_all().await;
                Err(e)
            }
        }
    }

    /// A fresh customer; retried while the gateway's breakers recover from the last kill.
    pub async fn customer(&self, n: usize) -> anyhow::Result<Customer> {
        let email = format!("crash-{}-{n}@example.com", self.run_id);
        let started = Instant::now();
        loop {
            match self.client.customer(&email).await {
                Ok(c) => return Ok(c),
                Err(e) if started.elapsed() > Duration::from_secs(30) => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    pub async fn shutdown(mut self, keep_databases: bool) {
        self.sup.stop_all().await;
        if !keep_databases {
            self.stores.drop_all().await;
        }
    }

    /// The consistency checker on this run's stores, with the run's recovery window.
    pub async fn check(&self) -> anyhow::Result<CheckResult> {
        run_checker(&self.stores, self.tuning.recovery_window()).await
    }

    /// Runs one combination (see the module doc).
    pub async fn run_combo(&mut self, n: usize, c: Combo, strategy: &str) -> ComboResult {
        let w = window(c);
        let mut res = ComboResult {
            combo: c.to_string(),
            process: c.process.name().into(),
            step: c.step.name().into(),
            window: w.what.into(),
            order_id: String::new(),
            client: None,
            ending: None,
            last_seen: Observed::default(),
            settled_after_s: 0.0,
            violations: Vec::new(),
            harness_error: None,
            redelivery: None,
            timeline: Vec::new(),
        };
        if let Err(e) = self.combo_inner(n, c, strategy, &w, &mut res).await {
            res.harness_error = Some(format!("{e:#}"));
        }
        // Whatever happened, the next combination starts with every process up and no
        // faults.
        if let Err(e) = self.sup.check_alive() {
            res.harness_error.get_or_insert(format!("{e:#}"));
        }
        match self.sup.revive().await {
            Ok(v) if v.is_empty() => {}
            Ok(v) => eprintln!(
                "[crash] restarted {} after it died by itself",
                v.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
            ),
            Err(e) => {
                res.harness_error.get_or_insert(format!("{e:#}"));
            }
        }
        if let Err(e) = clear_faults(&self.sup.addrs).await {
            res.harness_error.get_or_insert(format!("{e:#}"));
        }
        res
    }

    async fn combo_inner(
        &mut self,
        n: usize,
        c: Combo,
        strategy: &str,
        w: &plan::Window,
        res: &mut ComboResult,
    ) -> anyhow::Result<()> {
        self.sup.check_alive()?;
        let who = self.customer(n).await?;
        open_window(&self.sup.addrs, &w.faults).await?;
        let t0 = Instant::now();
        let ev = |res: &mut ComboResult, what: String| {
            res.timeline.push(Event {
                at_ms: t0.elapsed().as_millis() as u64,
                what,
            })
        };
        let (co, mut answer) = self.client.start_checkout(&who, &self.item_id, 1, strategy);
        // The asynchronous checkout answers 202 at once: its steps run after the answer.
        let asynchronous = co.asynchronous;
        res.order_id = co.order_id().to_string();
        ev(res, format!("checkout sent (order {})", res.order_id));

        // Into the window.
        let seen = self.wait_trigger(&co, w.trigger, &mut answer).await;
        let seen = match seen {
            Ok(s) => s,
            Err(e) => {
                // Never reached the step: no kill; still check where the checkout ended.
                ev(res, format!("window not reached: {e:#}"));
                self.finish(&co, &who, &mut answer, t0, res).await;
                anyhow::bail!("the window was not reached: {e:#}");
            }
        };
        ev(res, format!("in the window: {seen}"));
        if let Some(plan::Action::ReleaseReservation) = w.at_trigger {
            let now = self.probe.release_reservation(&co).await?;
            ev(res, format!("reservation released by the test (now {now})"));
        }
        tokio::time::sleep(w.then).await;
        if answer.is_finished() && !asynchronous {
            ev(res, "the checkout answered before the kill".into());
            self.finish(&co, &who, &mut answer, t0, res).await;
            anyhow::bail!("the checkout answered before the kill: the window closed too early");
        }
        let state = self.probe.observe(&co).await;
        // A checkout already at its ending when the kill lands did not test the step (the
        // asynchronous windows hold it with the event flow's fault points, so this should
        // not happen; it is reported if it does).
        let missed = asynchronous && state.ending().is_ok();
        self.sup.kill(c.process).await?;
        ev(
            res,
            format!("SIGKILL {} (state: {state})", c.process.name()),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.sup.start(c.process).await?;
        self.last_restart = Some(Instant::now());
        ev(res, format!("{} restarted and healthy", c.process.name()));
        clear_faults(&self.sup.addrs).await?;
        ev(res, "fault rules cleared".into());
        self.finish(&co, &who, &mut answer, t0, res).await;
        if let Some(consumer) = &w.redelivered {
            self.redelivery(c.process, consumer, t0, res).await;
        }
        if missed {
            anyhow::bail!(
                "window missed: the checkout had already ended ({state}) when the kill landed"
            );
        }
        Ok(())
    }

    /// Client answer and the ending (polled, following the earlier checkouts meanwhile);
    /// fills `res` and follows this checkout from its ending on.
    async fn finish(
        &mut self,
        co: &CheckoutRef,
        who: &Customer,
        answer: &mut tokio::task::JoinHandle<ClientAnswer>,
        t0: Instant,
        res: &mut ComboResult,
    ) {
        let restarted = Instant::now();
        let ev = |res: &mut ComboResult, what: String| {
            res.timeline.push(Event {
                at_ms: t0.elapsed().as_millis() as u64,
                what,
            })
        };
        // Poll the stores while the client waits, logging every change of state.
        let limit = self.tuning.recovery_window();
        let mut last: Option<Observed> = None;
        // The asynchronous checkout's customer follows the order page until it is no longer
        // pending (the answer was a 202): part of the ending.
        let mut page: Option<String> = None;
        let mut round = 0u32;
        let ending = loop {
            // The earlier checkouts about once a second: they must keep their endings.
            if round.is_multiple_of(5) {
                self.follow.look(&self.probe).await;
            }
            round += 1;
            if res.client.is_none() && answer.is_finished() {
                let a = match (&mut *answer).await {
                    Ok(a) => a,
                    Err(e) => ClientAnswer {
                        status: None,
                        detail: format!("client task failed: {e}"),
                    },
                };
                ev(res, format!("client answer: {}", a.summary()));
                res.client = Some(a);
            }
            let seen = self.probe.observe(co).await;
            if last.as_ref() != Some(&seen) {
                ev(res, format!("state: {seen}"));
                last = Some(seen.clone());
            }
            let ending = seen.ending();
            let mut page_settled = true;
            if co.asynchronous {
                let now = match self.client.order_status(who, co.order_id()).await {
                    Ok(s) => s,
                    Err(e) => format!("unreadable ({e:#})"),
                };
                if page.as_deref() != Some(now.as_str()) {
                    ev(res, format!("order page: {now}"));
                }
                page_settled = matches!(now.as_str(), "placed" | "cancelled" | "refunded");
                page = Some(now);
            }
            // Done when the checkout ended and the client has its answer (or gave up).
            if (ending.is_ok() && res.client.is_some() && page_settled)
                || restarted.elapsed() >= limit
            {
                break ending;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if res.client.is_none() {
            answer.abort();
            res.client = Some(ClientAnswer {
                status: None,
                detail: format!("no answer within {limit:?}"),
            });
        }
        res.settled_after_s = restarted.elapsed().as_secs_f64();
        res.last_seen = last.unwrap_or_default();
        match ending {
            Ok(e) => {
                ev(res, format!("ending: {}", e.name()));
                res.ending = Some(e);
                self.follow.add(&res.combo, co.clone(), e);
                if let Some(p) = &page {
                    let agrees = match e {
                        Ending::Placed => p == "placed",
                        Ending::RefundedReleased => p == "cancelled",
                        // Never accepted at all: no order to show.
                        Ending::NeverCharged => p == "cancelled" || p == "none",
                    };
                    if !agrees {
                        res.violations.push(format!(
                            "order {}: it ended {} but its page shows {p}",
                            co.order_id(),
                            e.name()
                        ));
                    }
                }
                if res.client.as_ref().and_then(|a| a.status) == Some(201) && e != Ending::Placed
                {
                    res.violations.push(format!(
                        "order {}: the client was told the order was placed (201), but it ended {}",
                        co.order_id(),
                        e.name()
                    ));
                }
            }
            Err(state) => res.violations.push(format!(
                "order {}: no acceptable ending (placed / refunded+released / never charged) within {:.0} s of the restart: {state}",
                co.order_id(),
                limit.as_secs_f64()
            )),
        }
    }

    /// The event the killed process's `consumer` held between its commit and its ack comes
    /// back after the ack wait: the restarted process must count it a duplicate and apply
    /// nothing (its own `events_consumed_total` since the restart). Waits at most the ack
    /// wait plus 30 s from the restart.
    async fn redelivery(&self, p: Process, consumer: &str, t0: Instant, res: &mut ComboResult) {
        let Some(url) = self.sup.addrs.metrics_url(p) else {
            res.harness_error
                .get_or_insert(format!("{} has no metrics page", p.name()));
            return;
        };
        let since = self.last_restart.unwrap_or_else(Instant::now);
        let limit = Duration::from_millis(u64::from(self.tuning.event_redelivery_ms))
            + Duration::from_secs(30);
        let consumer_label = format!("consumer=\"{consumer}\"");
        let count = |page: &str, outcome: &str| {
            crate::admin::metric_sum(
                page,
                "events_consumed_total",
                &[&consumer_label, &format!("outcome=\"{outcome}\"")],
            )
        };
        loop {
            let page = crate::admin::scrape(&url).await.unwrap_or_default();
            // Counters are whole numbers (an empty sum is -0.0).
            let whole = |v: f64| v.max(0.0).round() as u64;
            let (duplicate, applied) = (
                whole(count(&page, "duplicate")),
                whole(count(&page, "applied")),
            );
            if duplicate + applied >= 1 {
                res.timeline.push(Event {
                    at_ms: t0.elapsed().as_millis() as u64,
                    what: format!(
                        "{consumer} after the restart: {duplicate} duplicate, {applied} applied (its counters)"
                    ),
                });
                res.redelivery = Some(Redelivery {
                    consumer: consumer.to_owned(),
                    duplicate,
                    applied,
                });
                if applied > 0 {
                    res.violations.push(format!(
                        "order {}: {consumer} applied the event it held before its ack again after the restart ({applied} applied, {duplicate} duplicate)",
                        res.order_id
                    ));
                }
                return;
            }
            if since.elapsed() >= limit {
                res.violations.push(format!(
                    "order {}: the event {consumer} held before its ack was not delivered again within {:.0} s of the restart",
                    res.order_id,
                    limit.as_secs_f64()
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Polls until the checkout is in the step the trigger names (at most 20 s, and not
    /// after the client got its answer).
    async fn wait_trigger(
        &self,
        co: &CheckoutRef,
        trigger: Trigger,
        answer: &mut tokio::task::JoinHandle<ClientAnswer>,
    ) -> anyhow::Result<String> {
        let started = Instant::now();
        loop {
            let hit = match trigger {
                Trigger::Reserved => self
                    .probe
                    .reservation(co)
                    .await
                    .filter(|s| s == "RESERVED")
                    .map(|s| format!("reservation {s}")),
                Trigger::Charged => self
                    .probe
                    .payment(co)
                    .await
                    .0
                    .filter(|s| s == "SUCCEEDED")
                    .map(|s| format!("payment {s}")),
                Trigger::Committed => self
                    .probe
                    .reservation(co)
                    .await
                    .filter(|s| s == "COMMITTED")
                    .map(|s| format!("reservation {s}")),
                Trigger::Accepted => self
                    .probe
                    .order(co)
                    .await
                    .filter(|s| s != "none")
                    .map(|s| format!("order {s}")),
                Trigger::Placed => self
                    .probe
                    .order(co)
                    .await
                    .filter(|s| s == "PLACED")
                    .map(|s| format!("order {s}")),
            };
            if let Some(h) = hit {
                return Ok(h);
            }
            if answer.is_finished() && !co.asynchronous {
                anyhow::bail!(
                    "the checkout answered first (state: {})",
                    self.probe.observe(co).await
                );
            }
            if started.elapsed() > Duration::from_secs(20) {
                anyhow::bail!(
                    "not in the step after 20 s (state: {})",
                    self.probe.observe(co).await
                );
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
}

/// The event stream's settings for the asynchronous checkout: the stack's NATS server
/// (NATS_URL, which `scripts/stack up` exports) and streams of this run's own.
pub fn events_env() -> anyhow::Result<Vec<(String, String)>> {
    let url = std::env::var("NATS_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .context(
            "NATS_URL is not set: the asynchronous checkout needs NATS JetStream (eval \"$(scripts/stack up)\" exports it)",
        )?;
    let namespace = format!("crash_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    eprintln!("[crash] events: {namespace} on the stack's NATS");
    Ok(vec![
        ("NATS_URL".into(), url),
        ("SHOP_EVENTS_NAMESPACE".into(), namespace),
    ])
}

/// The whole matrix (or the chosen combinations), in one stack; prints as it goes.
pub async fn run_matrix(opts: &Options) -> anyhow::Result<MatrixReport> {
    let started = Instant::now();
    let started_at = now_rfc3339();
    let tuning = Tuning::crash(&opts.strategy);
    eprintln!(
        "[crash] starting the stack from {} (logs in {})",
        opts.bin_dir.display(),
        opts.log_dir.display()
    );
    let services_env = if opts.strategy == plan::ASYNC {
        events_env()?
    } else {
        Vec::new()
    };
    let mut rig = Rig::start_with_services_env(
        &opts.bin_dir,
        &opts.log_dir,
        tuning.clone(),
        opts.extra_env.clone(),
        services_env,
    )
    .await
    .context("starting the crash-test stack")?;
    eprintln!("[crash] stores: {}", rig.stores.describe());
    let mut results: Vec<ComboResult> = Vec::new();
    // Before any kill: the starting state must already be consistent.
    let baseline = match rig.check().await {
        Ok(b) => b,
        Err(e) => {
            rig.shutdown(true).await;
            return Err(e.context("the consistency checker cannot read the stores"));
        }
    };
    for v in &baseline.violations {
        eprintln!("[crash] before any kill: {v}");
    }
    for (i, c) in opts.combos.iter().enumerate() {
        eprintln!(
            "[crash] {}/{} {c}: {}",
            i + 1,
            opts.combos.len(),
            window(*c).what
        );
        let r = rig.run_combo(i, *c, &opts.strategy).await;
        let at = results.len();
        results.push(r);
        // The checker reads every store: each violation goes to the combination whose
        // order it names (this one's if none), however late it shows.
        match rig.check().await {
            Ok(check) => attribute(&mut results, at, check.violations, "checker"),
            Err(e) => {
                results[at]
                    .harness_error
                    .get_or_insert(format!("the checker failed: {e:#}"));
            }
        }
        attribute_followed(&mut results, at, rig.follow.take_found());
        let r = &results[at];
        eprintln!(
            "[crash]   -> {} (client {}; {:.1} s after the restart)",
            r.cell(),
            r.client
                .as_ref()
                .map_or_else(|| "-".to_owned(), ClientAnswer::summary),
            r.settled_after_s
        );
        for v in r.violations.iter().chain(&r.harness_error) {
            eprintln!("[crash]      {v}");
        }
        for e in results[..at].iter().filter(|e| !e.ok()) {
            eprintln!("[crash]      (still failing: {})", e.combo);
        }
    }
    let final_check = final_check(&mut rig, &mut results).await;
    let report = MatrixReport {
        started_at,
        strategy: opts.strategy.clone(),
        recovery_window_s: tuning.recovery_window().as_secs_f64(),
        tuning,
        stores: rig.stores.describe(),
        checker_available: baseline.available,
        baseline_violations: baseline.violations,
        checker_summary: final_check.1,
        results,
        final_check: final_check.0,
        followed: rig.follow.len(),
        kills: rig.sup.kills,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    let keep = opts.keep_databases || report.failures() > 0;
    if keep {
        eprintln!(
            "[crash] keeping the databases for inspection: {}",
            rig.stores.describe()
        );
    }
    rig.shutdown(keep).await;
    if let Some(dir) = &opts.out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(
            dir.join("crash.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
        std::fs::write(dir.join("crash.md"), report.markdown())?;
        eprintln!(
            "[crash] wrote {0}/crash.md and {0}/crash.json",
            dir.display()
        );
    }
    Ok(report)
}

/// Files each of `violations` with the combination whose order it names, or with the one at
/// `current` if it names none; a violation already filed there is not filed again.
fn attribute(results: &mut [ComboResult], current: usize, violations: Vec<String>, from: &str) {
    for v in violations {
        let owner = results
            .iter()
            .position(|r| !r.order_id.is_empty() && v.contains(&r.order_id))
            .unwrap_or(current);
        let line = format!("{from}: {v}");
        if !results[owner].violations.contains(&line) {
            if owner != current {
                eprintln!("[crash]      late, for {}: {line}", results[owner].combo);
            }
            results[owner].violations.push(line);
        }
    }
}

/// Files what following the checkouts found with the combination that started each.
fn attribute_followed(results: &mut [ComboResult], current: usize, found: Vec<(String, String)>) {
    for (combo, v) in found {
        let owner = results
            .iter()
            .position(|r| r.combo == combo)
            .unwrap_or(current);
        if owner != current {
            eprintln!("[crash]      late, for {}: {v}", results[owner].combo);
        }
        results[owner].violations.push(v);
    }
}

/// After the last combination: waits out the recovery window from the last restart while
/// following every checkout, then runs the checker once more; every violation is filed
/// with its combination and the check must be clean. Returns the check and the checker's
/// summary.
async fn final_check(rig: &mut Rig, results: &mut [ComboResult]) -> (FinalCheck, String) {
    let window = rig.tuning.recovery_window();
    let since = rig.last_restart.unwrap_or_else(Instant::now);
    eprintln!(
        "[crash] waiting out the recovery window ({:.0} s after the last restart), following {} checkouts",
        window.as_secs_f64(),
        rig.follow.len()
    );
    loop {
        rig.follow.look(&rig.probe).await;
        if since.elapsed() >= window {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1).min(window.saturating_sub(since.elapsed())))
            .await;
    }
    rig.follow.unreadable_at_last_look();
    let last = results.len().saturating_sub(1);
    let found = rig.follow.take_found();
    let mut check = FinalCheck {
        waited_s: since.elapsed().as_secs_f64(),
        ..FinalCheck::default()
    };
    let summary = match rig.check().await {
        Ok(c) => {
            check.violations = c.violations.clone();
            if !results.is_empty() {
                attribute(results, last, c.violations, "final checker");
            }
            c.summary
        }
        Err(e) => {
            check.error = Some(format!("the checker failed: {e:#}"));
            format!("the checker failed: {e:#}")
        }
    };
    // A followed checkout that left its ending is the final check's failure too.
    check
        .violations
        .extend(found.iter().map(|(combo, v)| format!("{combo}: {v}")));
    if !results.is_empty() {
        attribute_followed(results, last, found);
    }
    for v in check.error.iter().chain(&check.violations) {
        eprintln!("[crash] final check: {v}");
    }
    (check, summary)
}
