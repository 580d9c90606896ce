//! The crash test's process supervisor: every process of the distributed shop started from
//! the built binaries on loopback ports chosen once, so a process killed with SIGKILL comes
//! back on the same address and its callers reconnect to it without being told.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::process::{Child, Command};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use crate::{
    generator::{http::Target, scenario::grpc_channel},
    identity::StackKeys,
    stack::free_addr,
};

/// A process of the shop the crash test may kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Process {
    Gateway,
    UserService,
    ItemService,
    PaymentService,
    CardGateway,
}

impl Process {
    pub const ALL: [Self; 5] = [
        Self::Gateway,
        Self::UserService,
        Self::ItemService,
        Self::PaymentService,
        Self::CardGateway,
    ];

    /// The name on the command line and in reports (also the binary's name).
    pub fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::UserService => "user-service",
            Self::ItemService => "item-service",
            Self::PaymentService => "payment-service",
            Self::CardGateway => "card-gateway",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }

    /// The gRPC service health reports on (None: an HTTP process).
    fn grpc_service(self) -> Option<&'static str> {
        match self {
            Self::UserService => Some("shop.user.v1.UserService"),
            Self::ItemService => Some("shop.item.v1.ItemService"),
            Self::PaymentService => Some("shop.payment.v1.PaymentService"),
            Self::Gateway | Self::CardGateway => None,
        }
    }
}

/// Where each process listens: fixed for the supervisor's lifetime.
#[derive(Debug, Clone)]
pub struct Addresses {
    pub gateway: SocketAddr,
    /// The gateway's operator listener (/metrics, /debug/downstreams).
    pub gateway_metrics: SocketAddr,
    pub card: SocketAddr,
    pub user: SocketAddr,
    pub user_metrics: SocketAddr,
    pub item: SocketAddr,
    pub item_metrics: SocketAddr,
    pub payment: SocketAddr,
    pub payment_metrics: SocketAddr,
}

impl Addresses {
    pub fn pick() -> anyhow::Result<Self> {
        Ok(Self {
            gateway: free_addr()?,
            gateway_metrics: free_addr()?,
            card: free_addr()?,
            user: free_addr()?,
            user_metrics: free_addr()?,
            item: free_addr()?,
            item_metrics: free_addr()?,
            payment: free_addr()?,
            payment_metrics: free_addr()?,
        })
    }

    pub fn gateway_target(&self) -> anyhow::Result<Target> {
        Target::parse(&url(self.gateway))
    }

    pub fn card_target(&self) -> anyhow::Result<Target> {
        Target::parse(&url(self.card))
    }

    pub fn user_grpc(&self) -> String {
        url(self.user)
    }

    pub fn item_grpc(&self) -> String {
        url(self.item)
    }

    pub fn payment_grpc(&self) -> String {
        url(self.payment)
    }

    pub fn user_metrics_url(&self) -> String {
        format!("http://{}/metrics", self.user_metrics)
    }

    /// `p`'s Prometheus page on its metrics listener (the gateway and user-, item- and
    /// payment-service have one).
    pub fn metrics_url(&self, p: Process) -> Option<String> {
        let addr = match p {
            Process::Gateway => self.gateway_metrics,
            Process::UserService => self.user_metrics,
            Process::ItemService => self.item_metrics,
            Process::PaymentService => self.payment_metrics,
            Process::CardGateway => return None,
        };
        Some(format!("http://{addr}/metrics"))
    }

    /// The address whose answers mean `p` is up.
    fn of(&self, p: Process) -> SocketAddr {
        match p {
            Process::Gateway => self.gateway,
            Process::UserService => self.user,
            Process::ItemService => self.item,
            Process::PaymentService => self.payment,
            Process::CardGateway => self.card,
        }
    }
}

pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// How long a process may take to become healthy (a debug build on a busy 2-core machine
/// applies migrations and connects to four stores).
const START_LIMIT: Duration = Duration::from_secs(60);

struct Running {
    child: Child,
    started: Instant,
}

pub struct Supervisor {
    bin_dir: PathBuf,
    log_dir: PathBuf,
    pub addrs: Addresses,
    /// Environment of every process (stores, secrets, the short recovery settings).
    common_env: Vec<(String, String)>,
    /// Settings of user-, item- and payment-service only (the event stream's).
    services_env: Vec<(String, String)>,
    /// Every process's key and the trust file (in the log directory's `keys/`).
    keys: StackKeys,
    procs: BTreeMap<Process, Running>,
    /// SIGKILLs delivered so far.
    pub kills: u32,
}

impl Supervisor {
    /// Checks the binaries are there; starts nothing yet.
    pub fn new(
        bin_dir: &Path,
        log_dir: &Path,
        addrs: Addresses,
        common_env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        for p in Process::ALL {
            let bin = bin_dir.join(p.name());
            if !bin.is_file() {
                anyhow::bail!(
                    "{} is missing: build the binaries first (cargo build --release --workspace --bins)",
                    bin.display()
                );
            }
        }
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        Ok(Self {
            bin_dir: bin_dir.to_owned(),
            log_dir: log_dir.to_owned(),
            addrs,
            common_env,
            services_env: Vec::new(),
            keys: StackKeys::init(&log_dir.join("keys"))?,
            procs: BTreeMap::new(),
            kills: 0,
        })
    }

    /// Settings only user-, item- and payment-service get (from their next start).
    pub fn set_services_env(&mut self, env: Vec<(String, String)>) {
        self.services_env = env;
    }

    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The running processes' ids, by name (a restart gives a process a new one).
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.procs
            .iter()
            .filter_map(|(p, r)| r.child.id().map(|id| (p.name(), id)))
            .collect()
    }

    /// The process's own settings: where it listens and where its downstreams are.
    fn env_of(&self, p: Process) -> Vec<(&'static str, String)> {
        let a = &self.addrs;
        match p {
            // Its books on disk, as a real card processor keeps them: a kill must not make
            // it forget the charges the recovery then refunds.
            Process::CardGateway => vec![
                ("CARD_GATEWAY_ADDR", a.card.to_string()),
                (
                    "CARD_GATEWAY_JOURNAL",
                    self.log_dir
                        .join("card-gateway.journal")
                        .display()
                        .to_string(),
                ),
            ],
            Process::ItemService => vec![
                ("ITEM_GRPC_ADDR", a.item.to_string()),
                ("ITEM_METRICS_ADDR", a.item_metrics.to_string()),
            ],
            Process::PaymentService => vec![
                ("PAYMENT_GRPC_ADDR", a.payment.to_string()),
                ("PAYMENT_METRICS_ADDR", a.payment_metrics.to_string()),
                ("CARD_GATEWAY_URL", url(a.card)),
                ("ITEM_SERVICE_URL", url(a.item)),
                ("USER_SERVICE_URL", url(a.user)),
            ],
            Process::UserService => vec![
                ("USER_GRPC_ADDR", a.user.to_string()),
                ("USER_METRICS_ADDR", a.user_metrics.to_string()),
                ("PAYMENT_SERVICE_URL", url(a.payment)),
                ("ITEM_SERVICE_URL", url(a.item)),
            ],
            Process::Gateway => vec![
                ("GATEWAY_HTTP_ADDR", a.gateway.to_string()),
                ("GATEWAY_METRICS_ADDR", a.gateway_metrics.to_string()),
                // The asynchronous checkout turns the card into the processor's token
                // before the order is accepted.
                ("CARD_GATEWAY_URL", url(a.card)),
                ("USER_SERVICE_URL", url(a.user)),
                ("ITEM_SERVICE_URL", url(a.item)),
                ("PAYMENT_SERVICE_URL", url(a.payment)),
                // Every test account registers from this one address.
                ("GATEWAY_REGISTER_THROTTLE", "off".into()),
            ],
        }
    }

    fn command(&self, p: Process, log: std::fs::File) -> anyhow::Result<Command> {
        let mut cmd = Command::new(self.bin_dir.join(p.name()));
        cmd.env(
            "RUST_LOG",
            std::env::var("LOADTEST_CHILD_RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        for (k, v) in self.keys.env_for(p.name()) {
            cmd.env(k, v);
        }
        for (k, v) in &self.common_env {
            cmd.env(k, v);
        }
        for (k, v) in self.env_of(p) {
            cmd.env(k, v);
        }
        if matches!(
            p,
            Process::UserService | Process::ItemService | Process::PaymentService
        ) {
            for (k, v) in &self.services_env {
                cmd.env(k, v);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        Ok(cmd)
    }

    /// Runs `p`'s binary once with `args` and its settings (an operator command such as
    /// `user-service admin grant EMAIL`), its output appended to its log; fails unless it
    /// exits 0.
    pub async fn run_once(&self, p: Process, args: &[&str]) -> anyhow::Result<()> {
        let path = self.log_path(p);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut cmd = self.command(p, log)?;
        let status = cmd
            .args(args)
            .status()
            .await
            .with_context(|| format!("running {} {}", p.name(), args.join(" ")))?;
        if !status.success() {
            anyhow::bail!(
                "{} {}: {status} (see {})",
                p.name(),
                args.join(" "),
                path.display()
            );
        }
        Ok(())
    }

    fn log_path(&self, p: Process) -> PathBuf {
        self.log_dir.join(format!("{}.log", p.name()))
    }

    /// Starts `p` (appending to its log) and waits until it is healthy.
    pub async fn start(&mut self, p: Process) -> anyhow::Result<()> {
        if self.procs.contains_key(&p) {
            anyhow::bail!("{} is already running", p.name());
        }
        let path = self.log_path(p);
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(
            log,
            "=== loadtest crash: starting {} at {} ===",
            p.name(),
            now_rfc3339()
        )?;
        let child = self
            .command(p, log)?
            .spawn()
            .with_context(|| format!("starting {}", self.bin_dir.join(p.name()).display()))?;
        self.procs.insert(
            p,
            Running {
                child,
                started: Instant::now(),
            },
        );
        self.wait_healthy(p).await
    }

    /// Starts every process, downstreams first.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        for p in [
            Process::CardGateway,
            Process::ItemService,
            Process::PaymentService,
            Process::UserService,
            Process::Gateway,
        ] {
            self.start(p).await?;
        }
        Ok(())
    }

    /// SIGKILL (no shutdown hook runs, nothing is flushed) and reaps the process.
    pub async fn kill(&mut self, p: Process) -> anyhow::Result<()> {
        let Some(mut r) = self.procs.remove(&p) else {
            anyhow::bail!("{} is not running", p.name());
        };
        r.child
            .start_kill()
            .with_context(|| format!("SIGKILL {}", p.name()))?;
        let _ = tokio::time::timeout(Duration::from_secs(10), r.child.wait()).await;
        self.kills += 1;
        Ok(())
    }

    /// SIGKILL, then the same binary on the same address again.
    pub async fn kill_and_restart(&mut self, p: Process, pause: Duration) -> anyhow::Result<()> {
        self.kill(p).await?;
        tokio::time::sleep(pause).await;
        self.start(p).await
    }

    /// Waits until `p` answers its health check; fails when it exits or takes too long.
    pub async fn wait_healthy(&mut self, p: Process) -> anyhow::Result<()> {
        let addr = self.addrs.of(p);
        loop {
            if healthy(p, addr).await {
                return Ok(());
            }
            let r = self
                .procs
                .get_mut(&p)
                .ok_or_else(|| anyhow::anyhow!("{} is not running", p.name()))?;
            if let Some(status) = r.child.try_wait()? {
                self.procs.remove(&p);
                anyhow::bail!(
                    "{} exited ({status}) before it was healthy:\n{}",
                    p.name(),
                    tail(&self.log_path(p), 15)
                );
            }
            if r.started.elapsed() > START_LIMIT {
                anyhow::bail!(
                    "{} was not healthy on {addr} within {START_LIMIT:?} (log: {})",
                    p.name(),
                    self.log_path(p).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every process still running (none died on its own)?
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        let mut dead = None;
        for (p, r) in &mut self.procs {
            if let Some(status) = r.child.try_wait()? {
                dead = Some((*p, status));
                break;
            }
        }
        if let Some((p, status)) = dead {
            self.procs.remove(&p);
            anyhow::bail!(
                "{} exited by itself ({status}):\n{}",
                p.name(),
                tail(&self.log_path(p), 15)
            );
        }
        Ok(())
    }

    /// Starts every process that is not running (one that died by itself); returns them.
    pub async fn revive(&mut self) -> anyhow::Result<Vec<Process>> {
        let mut started = Vec::new();
        for p in Process::ALL {
            if !self.procs.contains_key(&p) {
                self.start(p).await?;
                started.push(p);
            }
        }
        Ok(started)
    }

    /// SIGTERM to every process, callers first (their graceful stop: drain, flush what
    /// they buffer), waiting for each to exit; SIGKILL for one that does not in time.
    pub async fn stop_all_gracefully(&mut self) {
        for p in [
            Process::Gateway,
            Process::UserService,
            Process::PaymentService,
            Process::ItemService,
            Process::CardGateway,
        ] {
            let Some(mut r) = self.procs.remove(&p) else {
                continue;
            };
            if let Some(pid) = r.child.id() {
                // `kill` rather than a signal call of our own: this crate forbids unsafe.
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            if tokio::time::timeout(Duration::from_secs(20), r.child.wait())
                .await
                .is_err()
            {
                let _ = r.child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(10), r.child.wait()).await;
            }
        }
    }

    pub async fn stop_all(&mut self) {
        for (_, mut r) in std::mem::take(&mut self.procs) {
            let _ = r.child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), r.child.wait()).await;
        }
    }
}

async fn healthy(p: Process, addr: SocketAddr) -> bool {
    let probe = async {
        match p.grpc_service() {
            Some(service) => {
                let Ok(ch) = grpc_channel(&url(addr)).await else {
                    return false;
                };
                let mut c = tonic_health::pb::health_client::HealthClient::new(ch);
                matches!(
                    c.check(HealthCheckRequest {
                        service: service.into(),
                    })
                    .await,
                    Ok(r) if r.get_ref().status() == ServingStatus::Serving
                )
            }
            None => {
                let path = if p == Process::Gateway {
                    "/healthz"
                } else {
                    "/health"
                };
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(2))
                    .build();
                let Ok(client) = client else { return false };
                matches!(client.get(format!("{}{path}", url(addr))).send().await,
                    Ok(r) if r.status().is_success())
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), probe)
        .await
        .unwrap_or(false)
}

fn tail(path: &Path, n: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
