//! The MongoDB-wire server a run uses for item-service. SecantusDB (the Python server the
//! local stack runs) gets slower as its storage grows, so a run that shared the stack's
//! server would inherit every earlier run's data and compare store states instead of
//! deployments. Where `scripts/stack up` exported the server's binary (`SECANTUSD`), each
//! run starts its own on a fresh storage directory; otherwise (e.g. a real `mongod` the
//! user pointed `ITEM_MONGODB_URL` at) it uses that server, and the caller makes a fresh
//! database on it.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::process::{Child, Command};

use crate::stack::free_addr;

/// The binary's environment variable (exported by `scripts/stack up`).
pub const BINARY_ENV: &str = "SECANTUSD";

/// How long a fresh server may take to accept connections (it starts in about a second).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A server of this run's own (killed when dropped; its storage deleted by [`stop`] or,
/// once [`discard_storage`] was called, on drop: kept otherwise, for inspection), or the
/// one `ITEM_MONGODB_URL` names.
///
/// [`stop`]: MongoServer::stop
/// [`discard_storage`]: MongoServer::discard_storage
#[derive(Debug)]
pub struct MongoServer {
    pub url: String,
    own: Option<Own>,
    discard: AtomicBool,
}

#[derive(Debug)]
struct Own {
    child: Child,
    storage: PathBuf,
    log: PathBuf,
}

impl Own {
    fn remove_files(&self) {
        let _ = std::fs::remove_dir_all(&self.storage);
        let _ = std::fs::remove_file(&self.log);
    }
}

impl MongoServer {
    /// Starts a server of the run's own when `SECANTUSD` names one (storage and log under
    /// `dir`), else uses `ITEM_MONGODB_URL`.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        match std::env::var(BINARY_ENV) {
            Ok(bin) if !bin.is_empty() => Self::start_own(Path::new(&bin), dir).await,
            _ => Self::shared(),
        }
    }

    /// The server `ITEM_MONGODB_URL` names, shared with whatever else uses it.
    pub fn shared() -> anyhow::Result<Self> {
        match std::env::var("ITEM_MONGODB_URL") {
            Ok(url) if !url.is_empty() => Ok(Self {
                url,
                own: None,
                discard: AtomicBool::new(false),
            }),
            _ => anyhow::bail!(
                "neither {BINARY_ENV} nor ITEM_MONGODB_URL is set: start the local stack first, with eval \"$(scripts/stack up)\""
            ),
        }
    }

    async fn start_own(bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        let storage = dir.join(format!(
            "secantus-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&storage)
            .with_context(|| format!("creating {}", storage.display()))?;
        let log_path = storage.with_extension("log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let addr = free_addr()?;
        let mut child = Command::new(bin)
            .arg("--host")
            .arg(addr.ip().to_string())
            .arg("--port")
            .arg(addr.port().to_string())
            .arg("--storage-path")
            .arg(&storage)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} ({BINARY_ENV})", bin.display()))?;
        let started = Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!(
                    "{} exited ({status}) before listening on {addr} (log: {})",
                    bin.display(),
                    log_path.display()
                );
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = child.kill().await;
                anyhow::bail!(
                    "{} did not listen on {addr} within {START_TIMEOUT:?} (log: {})",
                    bin.display(),
                    log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            url: format!("mongodb://{addr}/?directConnection=true"),
            own: Some(Own {
                child,
                storage,
                log: log_path,
            }),
            discard: AtomicBool::new(false),
        })
    }

    /// The server's process id, when this run started it (for CPU accounting).
    pub fn pid(&self) -> Option<u32> {
        self.own.as_ref().and_then(|o| o.child.id())
    }

    /// Whether the server is this run's own (fresh storage) or shared.
    pub fn is_own(&self) -> bool {
        self.own.is_some()
    }

    /// For reports: where the store came from.
    pub fn describe(&self) -> String {
        match &self.own {
            Some(o) => format!(
                "a SecantusDB of this run's own on a fresh storage directory ({})",
                o.storage.display()
            ),
            None => {
                "the server ITEM_MONGODB_URL names, on a fresh database of this run's own".into()
            }
        }
    }

    /// Deletes the storage when the server is dropped (by default it stays for a look at
    /// a failed run's data).
    pub fn discard_storage(&self) {
        self.discard.store(true, Ordering::Relaxed);
    }

    /// Kills the server and waits for it, then deletes its storage and log.
    pub async fn stop(mut self) {
        if let Some(mut o) = self.own.take() {
            let _ = o.child.kill().await;
            o.remove_files();
        }
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        // Not stopped explicitly: the child is killed; the storage goes if the owner said
        // so (best effort: the process may still be exiting).
        if let Some(mut o) = self.own.take() {
            let _ = o.child.start_kill();
            if self.discard.load(Ordering::Relaxed) {
                o.remove_files();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two servers started one after the other hold nothing of each other's, whatever the
    /// shared stack's server holds (needs `scripts/stack up`, which exports SECANTUSD).
    #[tokio::test]
    async fn each_run_gets_an_empty_server_of_its_own() {
        let bin = std::env::var(BINARY_ENV)
            .expect("SECANTUSD set: run the tests after eval \"$(scripts/stack up)\"");
        let dir = std::env::temp_dir();
        let first = MongoServer::start_own(Path::new(&bin), &dir)
            .await
            .expect("first server");
        assert!(first.is_own() && first.pid().is_some());
        let client = mongodb::Client::with_uri_str(&first.url)
            .await
            .expect("client");
        client
            .database("drift")
            .collection::<mongodb::bson::Document>("c")
            .insert_one(mongodb::bson::doc! {"x": 1})
            .await
            .expect("insert");
        first.stop().await;

        let second = MongoServer::start_own(Path::new(&bin), &dir)
            .await
            .expect("second server");
        let client = mongodb::Client::with_uri_str(&second.url)
            .await
            .expect("client");
        let names = client.list_database_names().await.expect("list");
        assert!(
            !names.iter().any(|n| n == "drift"),
            "the second server inherited the first's data: {names:?}"
        );
        second.stop().await;
    }
}
