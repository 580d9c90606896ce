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

    /// Many samples per retry: each within its cap, spread over the whole range (jitter),
    /// and growing by about twice per retry until the cap. Backoff that were always zero,
    /// constant, or not growing fails here.
    #[test]
    fn backoff_grows_to_its_cap_with_full_jitter() {
        let p = RetryPolicy {
            enabled: true,
            max_attempts: 3,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(160),
        };
        const SAMPLES: u32 = 2000;
        let mut means = Vec::new();
        for retry in 1..=8u32 {
            let cap = (10u64 << (retry - 1)).min(160);
            let samples: Vec<u64> = (0..SAMPLES)
                .map(|_| p.backoff(retry).as_millis() as u64)
                .collect();
            assert!(
                samples.iter().all(|&ms| ms <= cap),
                "retry {retry}: over its cap of {cap} ms"
            );
            // Spread: both ends of 0..=cap are reached (each miss has odds of 0.75^2000).
            assert!(
                samples.iter().any(|&ms| ms * 4 < cap),
                "retry {retry}: nothing in the bottom quarter"
            );
            assert!(
                samples.iter().any(|&ms| ms * 4 > cap * 3),
                "retry {retry}: nothing in the top quarter"
            );
            means.push(samples.iter().sum::<u64>() as f64 / f64::from(SAMPLES));
        }
        // Growth: the mean (cap / 2) doubles per retry until the cap (retry 5), then stays.
        for w in means[..5].windows(2) {
            let ratio = w[1] / w[0];
            assert!((1.6..2.4).contains(&ratio), "means {means:?}");
        }
        for &m in &means[5..] {
            let ratio = m / means[4];
            assert!((0.85..1.15).contains(&ratio), "capped means {means:?}");
        }
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
