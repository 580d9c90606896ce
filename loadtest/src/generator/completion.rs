//! Time to a completed order, next to time to the customer's answer. A synchronous checkout
//! is complete when it answers (201 placed); an asynchronous one answers 202 with the order
//! pending, and the order completes later through the event stream. For those the workload
//! follows the order (`GET /api/orders/{id}`, see [`poll_wait`]) in a task of its own,
//! outside the engine's timed operation, and records here when it left `pending`, measured
//! from the checkout's intended start like every open-model latency.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::generator::{
    http::HttpPool,
    stats::{Latency, new_histogram},
};

/// How often a young pending order is polled.
pub const POLL_EVERY: Duration = Duration::from_millis(50);
/// The longest wait between two polls of an old pending order.
pub const POLL_MAX: Duration = Duration::from_millis(500);

/// The wait before the next poll of an order `age` old: 50 ms, or a tenth of its age up to
/// 500 ms. A backlog of pending orders (a consumer down) would otherwise turn the polling
/// into load of its own (90 orders polled every 50 ms are 1,800 requests/s), and an order
/// pending for seconds is still timed to within a tenth of its age.
pub fn poll_wait(age: Duration) -> Duration {
    (age / 10).clamp(POLL_EVERY, POLL_MAX)
}

/// How one checkout's answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 201: placed (synchronous), or a repeat that found the order finished.
    Placed,
    /// 202: accepted, order pending.
    Accepted,
    /// Anything else, including timeouts and connection errors.
    Failed,
}

/// How one checkout's order ended (as far as the customer could see).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Placed,
    /// Cancelled or refunded: nothing kept.
    Cancelled,
    /// Still pending (or never answered 202) when following it gave up.
    Unfinished,
}

/// One checkout, as the customer saw it.
#[derive(Debug, Clone, Copy)]
pub struct Checkout {
    pub intended: Instant,
    pub answered: Instant,
    pub answer: Answer,
    /// When the order left `pending` (the answer for a synchronous checkout) and how.
    pub ended: Option<(Instant, Ending)>,
}

/// Every checkout of a run and its ending; shared by the workload and whoever reads it.
#[derive(Default)]
pub struct Tracker {
    checkouts: Mutex<Vec<Checkout>>,
    following: AtomicU64,
}

/// Summary of a run's checkouts, measured from their intended start.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CompletionStats {
    /// "asynchronous" or "synchronous: completion = answer (201)".
    pub note: String,
    pub checkouts: u64,
    /// Answers 201 (placed at once).
    pub answered_placed: u64,
    /// Answers 202 (accepted, pending).
    pub answered_accepted: u64,
    pub answered_failed: u64,
    /// Time to the customer's answer (successful answers).
    pub answer: Latency,
    /// Time to a placed order.
    pub completion: Latency,
    pub placed: u64,
    pub cancelled: u64,
    /// Accepted but still pending when following it gave up.
    pub unfinished: u64,
}

impl Tracker {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn push(&self, c: Checkout) {
        self.checkouts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(c);
    }

    /// Records an answer; for a 202 (`follow` = the order id and bearer token) follows the
    /// order until it is no longer pending or `give_up` passed since the intended start.
    pub fn answered(
        self: &Arc<Self>,
        intended: Instant,
        answer: Answer,
        follow: Option<(Arc<HttpPool>, String, String)>,
        give_up: Duration,
    ) {
        let answered = Instant::now();
        let ended = match answer {
            Answer::Placed => Some((answered, Ending::Placed)),
            Answer::Failed => None,
            Answer::Accepted => {
                if let Some((pool, order_id, token)) = follow {
                    self.following.fetch_add(1, Ordering::SeqCst);
                    let me = self.clone();
                    tokio::spawn(async move {
                        let ended =
                            follow_order(&pool, &order_id, &token, intended, intended + give_up)
                                .await
                                .map(|e| (Instant::now(), e));
                        me.push(Checkout {
                            intended,
                            answered,
                            answer,
                            ended,
                        });
                        me.following.fetch_sub(1, Ordering::SeqCst);
                    });
                    return;
                }
                None
            }
        };
        self.push(Checkout {
            intended,
            answered,
            answer,
            ended,
        });
    }

    /// Waits until every followed order ended or was given up, at most `limit`.
    pub async fn settle(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while self.following.load(Ordering::SeqCst) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Orders still being followed.
    pub fn following(&self) -> u64 {
        self.following.load(Ordering::SeqCst)
    }

    /// Every checkout recorded so far (followed ones once they ended).
    pub fn checkouts(&self) -> Vec<Checkout> {
        self.checkouts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Summary of the checkouts intended at or after `from`.
    pub fn stats(&self, from: Instant, asynchronous: bool) -> CompletionStats {
        let cs = self.checkouts();
        let mut s = CompletionStats {
            note: if asynchronous {
                "asynchronous: answer = 202 accepted; completion = the order left pending (GET /api/orders/{id} every 50 ms, backing off to a tenth of the order's age, at most 500 ms)".into()
            } else {
                "synchronous: completion = answer (201 placed)".into()
            },
            ..Default::default()
        };
        let (mut ans, mut done) = (new_histogram(), new_histogram());
        let us = |d: Duration| (d.as_micros() as u64).max(1);
        for c in cs.iter().filter(|c| c.intended >= from) {
            s.checkouts += 1;
            match c.answer {
                Answer::Placed => s.answered_placed += 1,
                Answer::Accepted => s.answered_accepted += 1,
                Answer::Failed => s.answered_failed += 1,
            }
            if c.answer != Answer::Failed {
                let _ = ans.record(us(c.answered.saturating_duration_since(c.intended)));
            }
            match c.ended {
                Some((t, Ending::Placed)) => {
                    s.placed += 1;
                    let _ = done.record(us(t.saturating_duration_since(c.intended)));
                }
                Some((_, Ending::Cancelled)) => s.cancelled += 1,
                Some((_, Ending::Unfinished)) => s.unfinished += 1,
                None if c.answer == Answer::Accepted => s.unfinished += 1,
                None => {}
            }
        }
        s.answer = Latency::of(&ans);
        s.completion = Latency::of(&done);
        s
    }
}

/// The order's status word in a `GET /api/orders/{id}` body.
fn status_of(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let s = v.get("order").unwrap_or(&v).get("status")?.as_str()?;
    Some(s.to_owned())
}

/// The order id in a checkout's answer.
pub fn order_id_of(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let id = v.get("order").unwrap_or(&v).get("id")?.as_str()?;
    Some(id.to_owned())
}

async fn follow_order(
    pool: &HttpPool,
    order_id: &str,
    token: &str,
    intended: Instant,
    deadline: Instant,
) -> Option<Ending> {
    let path = format!("/api/orders/{order_id}");
    let headers = [("authorization", token.to_owned())];
    loop {
        tokio::time::sleep(poll_wait(intended.elapsed())).await;
        if Instant::now() >= deadline {
            return Some(Ending::Unfinished);
        }
        // A failed poll (the gateway busy, a service down) is simply tried again.
        if let Ok(r) = pool.get(&path, &headers).await
            && r.status.is_success()
        {
            match status_of(&r.body).as_deref() {
                Some("pending" | "cancelling") | None => {}
                Some("placed") => return Some(Ending::Placed),
                Some(_) => return Some(Ending::Cancelled),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_and_id_wrapped_or_bare() {
        assert_eq!(
            status_of(br#"{"order":{"id":"a","status":"placed"}}"#).as_deref(),
            Some("placed")
        );
        assert_eq!(
            status_of(br#"{"status":"pending"}"#).as_deref(),
            Some("pending")
        );
        assert_eq!(
            order_id_of(br#"{"order":{"id":"o1"}}"#).as_deref(),
            Some("o1")
        );
        assert_eq!(order_id_of(b"not json"), None);
    }

    #[test]
    fn polls_back_off_with_the_order_age() {
        assert_eq!(poll_wait(Duration::ZERO), POLL_EVERY);
        assert_eq!(
            poll_wait(Duration::from_secs(2)),
            Duration::from_millis(200)
        );
        assert_eq!(poll_wait(Duration::from_secs(60)), POLL_MAX);
    }

    #[test]
    fn synchronous_completion_is_the_answer() {
        let t = Tracker::new();
        let t0 = Instant::now();
        t.answered(t0, Answer::Placed, None, Duration::from_secs(1));
        t.answered(t0, Answer::Failed, None, Duration::from_secs(1));
        let s = t.stats(t0, false);
        assert_eq!((s.checkouts, s.placed, s.answered_failed), (2, 1, 1));
        assert_eq!(s.answer.count, 1);
        assert_eq!(s.completion.p50_ms, s.answer.p50_ms);
    }
}
