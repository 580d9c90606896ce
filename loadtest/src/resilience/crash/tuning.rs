//! How the crash test's and the soak's stack is tuned: timeouts, leases and intervals short
//! enough that a checkout cut off by a kill ends within seconds.

use std::time::Duration;

use serde::Serialize;

use super::plan;

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
