//! Retries for calls that are safe to repeat (reads, and writes that carry an idempotency
//! key), with full-jitter exponential backoff, throttled per service by a token bucket as in
//! gRFC A6: every failure takes a token, every success gives back `token_ratio`, and retries
//! stop while the bucket is at or below half, so a struggling service is not hit with
//! `max_attempts` times the load.

use std::{sync::Mutex, time::Duration};

use rand::Rng;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub enabled: bool,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// Backoff before retry number `retry` (1 = the first retry): uniform in
    /// `0..=min(max, base * 2^(retry-1))`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .base_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16));
        let cap = exp.min(self.max_backoff);
        let ms = cap.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=ms))
    }

    /// Whether a failed call with this code may be tried again.
    pub fn retryable(code: tonic::Code) -> bool {
        // UNAVAILABLE means the call did not run or the service is restarting; anything else
        // is an answer (or the deadline is spent).
        code == tonic::Code::Unavailable
    }
}

/// gRFC A6 retry throttling.
#[derive(Debug)]
pub struct RetryBudget {
    max_tokens: f64,
    token_ratio: f64,
    tokens: Mutex<f64>,
}

impl RetryBudget {
    pub fn new(max_tokens: f64, token_ratio: f64) -> Self {
        let max_tokens = if max_tokens > 0.0 { max_tokens } else { 10.0 };
        Self {
            max_tokens,
            token_ratio: token_ratio.max(0.0),
            tokens: Mutex::new(max_tokens),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut f64) -> R) -> R {
        match self.tokens.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    pub fn on_success(&self) {
        let (max, ratio) = (self.max_tokens, self.token_ratio);
        self.with(|t| *t = (*t + ratio).min(max));
    }

    pub fn on_failure(&self) {
        self.with(|t| *t = (*t - 1.0).max(0.0));
    }

    /// True while retries are allowed (tokens above half the bucket).
    pub fn allows_retry(&self) -> bool {
        let half = self.max_tokens / 2.0;
        self.with(|t| *t > half)
    }

    pub fn tokens(&self) -> f64 {
        self.with(|t| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let p = RetryPolicy {
            enabled: true,
            max_attempts: 3,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
        };
        for retry in 1..10 {
            assert!(p.backoff(retry) <= Duration::from_millis(40));
        }
        assert!(p.backoff(1) <= Duration::from_millis(10));
    }

    #[test]
    fn budget_stops_retries_after_many_failures_and_recovers() {
        let b = RetryBudget::new(10.0, 0.5);
        assert!(b.allows_retry());
        for _ in 0..5 {
            b.on_failure();
        }
        assert!(
            !b.allows_retry(),
            "5 of 10 tokens gone: at half, no retries"
        );
        for _ in 0..3 {
            b.on_success();
        }
        assert!(b.allows_retry());
    }
}
