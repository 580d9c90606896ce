//! [`Gateway`], the handle on a running gateway's state: the books, the injected faults and
//! hangs, and the processing of one request under them.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use platform::faults::{FaultInjector, Verdict};
use tokio::sync::watch;

use crate::{
    api,
    ledger::{Executed, Ledger},
};

/// A hang lasts this long at most (or until shutdown): far past any sane caller timeout.
const HANG: Duration = Duration::from_secs(600);

/// Handle on a running gateway's state (clonable; tests use it to read counters and set
/// faults without HTTP).
#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) ledger: Mutex<Ledger>,
    pub(crate) faults: FaultInjector,
    pub(crate) hangs: FaultInjector,
    pub(crate) stop: watch::Sender<bool>,
}

impl Gateway {
    pub(crate) fn new(faults: FaultInjector, hangs: FaultInjector, ledger: Ledger) -> Self {
        Self {
            inner: Arc::new(Shared {
                ledger: Mutex::new(ledger),
                faults,
                hangs,
                stop: watch::channel(false).0,
            }),
        }
    }

    pub(crate) fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner
            .ledger
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn stats(&self) -> api::Stats {
        self.ledger().stats.clone()
    }

    pub fn faults(&self) -> &FaultInjector {
        &self.inner.faults
    }

    pub fn hangs(&self) -> &FaultInjector {
        &self.inner.hangs
    }

    /// Faults, then hang, then `exec` under the ledger lock; the key is stored or abandoned.
    pub(crate) async fn process(
        &self,
        route: &'static str,
        key: Option<String>,
        exec: impl FnOnce(&mut Ledger) -> Executed,
    ) -> Processed {
        let abandon = |gw: &Self| {
            if let Some(k) = &key {
                gw.ledger().abandon(k);
            }
        };
        if self.inner.faults.inject(route).await == Verdict::Fail {
            abandon(self);
            self.ledger().stats.injected_errors += 1;
            metrics::counter!("card_gateway_injected_total", "kind" => "error").increment(1);
            return Processed::Error;
        }
        if self.inner.hangs.inject(route).await == Verdict::Fail {
            abandon(self);
            self.ledger().stats.injected_hangs += 1;
            metrics::counter!("card_gateway_injected_total", "kind" => "hang").increment(1);
            return Processed::Hang;
        }
        let mut ledger = self.ledger();
        let executed = exec(&mut ledger);
        if let Some(k) = &key {
            ledger.finish(k, &executed);
        }
        Processed::Done(executed)
    }

    pub(crate) async fn hang(&self) {
        let mut stop = self.inner.stop.subscribe();
        tokio::select! {
            () = tokio::time::sleep(HANG) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

pub(crate) enum Processed {
    Done(Executed),
    Error,
    Hang,
}
