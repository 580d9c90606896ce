//! The stack of a crash run (supervised processes on throw-away stores, the customer side)
//! and what it does with one combination: open its fault window, kill and restart the
//! process, and watch the checkout reach its ending.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{
    Tuning,
    checker::{CheckResult, run_checker},
    follow::Follow,
    plan::{self, Combo, FaultSite, Process, Trigger, window},
    probe::{CheckoutRef, Ending, Observed, Probe},
    report::{ComboResult, Event, Redelivery},
    shop::{ClientAnswer, Customer, ShopClient},
    stores::Stores,
    supervisor::{Addresses, Supervisor},
};
use crate::admin::{Rule, set_grpc_faults, set_http_faults};

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
