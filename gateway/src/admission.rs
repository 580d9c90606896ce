//! Admission control for logins and registrations: a bulkhead of its own. Each of them
//! costs user-service an argon2 hash (a core and ~19 MiB for tens of milliseconds), and
//! user-service runs only so many at once. Past this gateway's share of those slots, a
//! login or registration is refused with 429 at once instead of queueing there: a flood
//! then costs the flooder fast refusals, not everybody's requests time-outs, and
//! user-service never answers RESOURCE_EXHAUSTED or runs late on the calls customers'
//! orders and checkouts need.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
}

/// A place in the bulkhead, given back on drop.
#[derive(Debug)]
pub struct Admitted(#[allow(dead_code)] OwnedSemaphorePermit);

impl Admission {
    /// At most `limit` (at least 1) at once.
    pub fn new(limit: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limit.max(1))),
        }
    }

    /// A place now, or None when every place is taken (never waits).
    pub fn try_admit(&self) -> Option<Admitted> {
        match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(p) => Some(Admitted(p)),
            Err(_) => {
                metrics::counter!("gateway_auth_refused_total", "reason" => "busy").increment(1);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_limit_and_frees_a_place_on_drop() {
        let a = Admission::new(2);
        let first = a.try_admit().expect("one");
        let _second = a.try_admit().expect("two");
        assert!(a.try_admit().is_none(), "full");
        drop(first);
        assert!(a.try_admit().is_some(), "a place came back");
    }
}
