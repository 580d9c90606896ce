//! A server running as a task of the test's runtime, stopped when the test is done with it.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{sync::oneshot, task::JoinHandle};

/// The shutdown signal handed to a server's `run_until_stopped`: resolves on
/// [`Running::stop`] or when the [`Running`] is dropped.
pub struct Shutdown(oneshot::Receiver<()>);

impl Future for Shutdown {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // A dropped sender means the handle is gone: stop as well.
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// Handle of a spawned server; stops it on [`Running::stop`] or on drop.
pub struct Running {
    /// The address the server listens on (for a gRPC service, its gRPC address).
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: Option<JoinHandle<()>>,
}

impl Running {
    /// Spawns `run(shutdown)` (e.g. `|stop| app.run_until_stopped(stop)`); an error the
    /// server ends with is printed, so a failing test shows it.
    pub fn spawn<F, Fut>(addr: SocketAddr, run: F) -> Self
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let server = run(Shutdown(rx));
        let done = tokio::spawn(async move {
            if let Err(e) = server.await {
                eprintln!("server on {addr} stopped with an error: {e:#}");
            }
        });
        Self {
            addr,
            stop: Some(tx),
            done: Some(done),
        }
    }

    /// Stops the server and waits (at most 10 s) until it has drained and no longer serves.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), done).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
