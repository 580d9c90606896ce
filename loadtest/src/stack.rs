//! The stack under test, started as child processes from the built binaries, each on free
//! loopback ports with its log in a file, and killed when the [`Stack`] is dropped.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::process::{Child, Command};

use crate::identity::StackKeys;

/// A free loopback port for a child that binds it a moment later
/// ([`platform::net::free_loopback_addr`]: below the ephemeral range, so no client socket
/// takes it in between).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    platform::net::free_loopback_addr().context("finding a free port")
}

struct Proc {
    name: String,
    child: Child,
}

pub struct Stack {
    bin_dir: PathBuf,
    log_dir: PathBuf,
    procs: Vec<Proc>,
    /// Every process's key and the trust file (in the log directory's `keys/`).
    keys: StackKeys,
    /// Environment every child gets on top of ours.
    pub common_env: Vec<(String, String)>,
}

impl Stack {
    pub fn new(bin_dir: &Path, log_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        Ok(Self {
            bin_dir: bin_dir.to_owned(),
            log_dir: log_dir.to_owned(),
            procs: Vec::new(),
            keys: StackKeys::init(&log_dir.join("keys"))?,
            common_env: Vec::new(),
        })
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    pub fn has_bin(&self, name: &str) -> bool {
        self.bin(name).is_file()
    }

    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    fn command(&self, bin: &str, args: &[&str], env: &[(&str, String)]) -> Command {
        let mut cmd = Command::new(self.bin(bin));
        cmd.args(args);
        // Per-request log lines cost CPU the services need; warnings only unless asked.
        cmd.env(
            "RUST_LOG",
            std::env::var("LOADTEST_CHILD_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        for (k, v) in self.keys.env_for(bin) {
            cmd.env(k, v);
        }
        for (k, v) in &self.common_env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs `bin args` to completion (e.g. `item-service seed`).
    pub async fn run_once(
        &self,
        bin: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> anyhow::Result<()> {
        let out = self
            .command(bin, args, env)
            .output()
            .await
            .with_context(|| format!("running {}", self.bin(bin).display()))?;
        if !out.status.success() {
            anyhow::bail!(
                "{bin} {}: {}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts `bin` as `name` and waits until `addr` accepts connections.
    pub async fn start(
        &mut self,
        name: &str,
        bin: &str,
        env: &[(&str, String)],
        addr: SocketAddr,
    ) -> anyhow::Result<()> {
        let log_path = self.log_dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = self.command(bin, &[], env);
        cmd.stdout(log.try_clone()?).stderr(log).kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin(bin).display()))?;
        self.procs.push(Proc {
            name: name.to_owned(),
            child,
        });
        let started = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            let p = self
                .procs
                .last_mut()
                .ok_or_else(|| anyhow::anyhow!("no process"))?;
            if let Some(status) = p.child.try_wait()? {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                self.procs.pop();
                anyhow::bail!(
                    "{name} exited ({status}) before listening on {addr}:\n{}",
                    tail.join("\n")
                );
            }
            if started.elapsed() > Duration::from_secs(60) {
                anyhow::bail!(
                    "{name} did not listen on {addr} within 60 s (log: {})",
                    log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every running process's name and pid (for CPU accounting).
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.procs
            .iter()
            .filter_map(|p| p.child.id().map(|id| (p.name.clone(), id)))
            .collect()
    }

    /// Stops one process by name (SIGKILL; the stack is throw-away).
    pub async fn stop(&mut self, name: &str) {
        if let Some(i) = self.procs.iter().position(|p| p.name == name) {
            let mut p = self.procs.remove(i);
            let _ = p.child.kill().await;
        }
    }

    pub async fn stop_all(&mut self) {
        for mut p in self.procs.drain(..) {
            let _ = p.child.kill().await;
        }
    }
}
