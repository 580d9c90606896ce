//! Every checkout of a crash run, followed from its first acceptable ending to the end of
//! the run: an ending is final, so a checkout that later leaves it (a completed checkout
//! undone, a second refund, a late charge of one never charged) is a violation of the
//! combination that started it, whenever it shows.

use std::collections::HashSet;

use super::probe::{CheckoutRef, Ending, Observed, Probe};

/// One checkout that reached an acceptable ending.
struct Followed {
    /// The combination that started it (its `process:step`).
    combo: String,
    co: CheckoutRef,
    ending: Ending,
    /// The states already reported, so a departure is filed once, not every round.
    reported: HashSet<String>,
    /// Whether the last look could read all three stores.
    readable: bool,
}

/// The followed checkouts and the violations found since they were last taken.
#[derive(Default)]
pub struct Follow {
    followed: Vec<Followed>,
    found: Vec<(String, String)>,
}

impl Follow {
    /// Follows `co` from now on; `ending` is the one it reached in `combo`.
    pub fn add(&mut self, combo: &str, co: CheckoutRef, ending: Ending) {
        self.followed.push(Followed {
            combo: combo.to_owned(),
            co,
            ending,
            reported: HashSet::new(),
            readable: true,
        });
    }

    pub fn len(&self) -> usize {
        self.followed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.followed.is_empty()
    }

    /// Looks at every followed checkout once. A store that does not answer (its process is
    /// being killed) says nothing; any readable state other than the checkout's ending is a
    /// violation.
    pub async fn look(&mut self, probe: &Probe) {
        for f in &mut self.followed {
            let seen = probe.observe(&f.co).await;
            f.readable = readable(&seen);
            if !f.readable {
                continue;
            }
            let departure = match seen.ending() {
                Ok(e) if e == f.ending => None,
                Ok(e) => Some(format!("it is now {} ({seen})", e.name())),
                Err(state) => Some(format!("it is now no acceptable ending: {state}")),
            };
            if let Some(d) = departure
                && f.reported.insert(seen.to_string())
            {
                self.found.push((
                    f.combo.clone(),
                    format!(
                        "order {}: ended {}, then left it: {d}",
                        f.co.order_id(),
                        f.ending.name()
                    ),
                ));
            }
        }
    }

    /// After the run: a checkout whose stores could not be read at the last look is not
    /// known to have kept its ending.
    pub fn unreadable_at_last_look(&mut self) {
        for f in &self.followed {
            if !f.readable {
                self.found.push((
                    f.combo.clone(),
                    format!(
                        "order {}: ended {}, but its stores could not be read after the run",
                        f.co.order_id(),
                        f.ending.name()
                    ),
                ));
            }
        }
    }

    /// The violations found since the last call: (combination, violation).
    pub fn take_found(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.found)
    }
}

fn readable(o: &Observed) -> bool {
    o.order.is_some() && o.payment.is_some() && o.reservation.is_some()
}
