//! The sweeper: releases expired reservations and finishes settlements a dead process left
//! half-done, and reports how many reservations hold stock.

use std::time::Duration;

use mongodb::bson::{DateTime, doc};

use super::{
    EXPIRED, ReservationDoc, Reservations, SETTLE_GRACE, State, count_outcome, due_after, now_plus,
};
use crate::error::Error;

/// At most this many reservations per sweep round (the next round continues).
const SWEEP_BATCH: usize = 500;

impl Reservations {
    /// One sweep: releases expired reservations and finishes settlements that a dead
    /// process left half-done. Safe with several replicas sweeping at once: each
    /// reservation is claimed by a conditional status change before its stock moves.
    pub async fn sweep(&self) -> Result<usize, Error> {
        // Each claim: find one candidate through the `due` index (a plain find, flat),
        // then claim it by compare-and-set; a miss means another replica or a caller got
        // there first, and the next find sees what is left. (Not one `find_one_and_update`:
        // SecantusDB scans the whole collection for it; see the module comment.)
        let mut done = 0;
        for _ in 0..SWEEP_BATCH {
            let Some(read) = self
                .due(
                    &[State::Reserved, State::Pending],
                    "finding an expired reservation",
                )
                .await?
            else {
                break;
            };
            let update = due_after(
                State::Released,
                doc! {
                    "status": State::Released.as_str(),
                    "reason": EXPIRED,
                    "settled": false,
                    "updated_at": DateTime::now(),
                },
            );
            let claimed = self
                .cas(&read, doc! {}, update, "claiming an expired reservation")
                .await?;
            let Some(doc) = claimed else { continue };
            tracing::info!(reservation_id = %doc.id, "reservation expired; returning its stock");
            count_outcome("expired");
            self.settle(doc).await?;
            done += 1;
        }
        for _ in 0..SWEEP_BATCH {
            let Some(read) = self
                .due(
                    &[State::Committed, State::Released],
                    "finding an unsettled reservation",
                )
                .await?
            else {
                break;
            };
            // Claim by moving `due` on, so another replica leaves it alone for a while.
            let claimed = self
                .cas(
                    &read,
                    doc! {},
                    doc! { "$set": { "updated_at": DateTime::now(), "due": now_plus(SETTLE_GRACE) } },
                    "claiming an unsettled reservation",
                )
                .await?;
            let Some(doc) = claimed else { continue };
            tracing::info!(reservation_id = %doc.id, status = ?doc.status, "finishing an unsettled reservation");
            self.settle(doc).await?;
            done += 1;
        }
        Ok(done)
    }

    /// The reservation in one of `statuses` that has been due longest, if one is due now.
    async fn due(
        &self,
        statuses: &[State],
        what: &'static str,
    ) -> Result<Option<ReservationDoc>, Error> {
        let statuses: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
        self.reservations
            .find_one(doc! {
                "due": { "$lte": DateTime::now() },
                "status": { "$in": statuses },
            })
            .sort(doc! { "due": 1 })
            .await
            .map_err(Error::mongo(what))
    }

    /// Reservations holding stock now (pending or reserved), counted in the store so every
    /// replica reports the same number: a dashboard takes the `max` across replicas. Left
    /// unchanged when the store cannot answer (the sweep's warning says why).
    pub async fn held(&self) -> Result<u64, Error> {
        self.reservations
            .count_documents(doc! {
                // Every holding reservation has a `due`: the range keeps the count on the
                // sparse index (settled ones have no entry) instead of a collection scan.
                "due": { "$gte": DateTime::from_millis(0) },
                "status": { "$in": [State::Reserved.as_str(), State::Pending.as_str()] },
            })
            .await
            .map_err(Error::mongo("counting held reservations"))
    }

    async fn publish_held(&self) {
        match self.held().await {
            Ok(n) => metrics::gauge!("item_reservations_held").set(n as f64),
            Err(e) => {
                tracing::debug!(error = %platform::telemetry::chain(&e), "counting held reservations failed");
            }
        }
    }

    /// Sweeps every `interval` until `shutdown` resolves.
    pub async fn run_sweeper(
        &self,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %platform::telemetry::chain(&e), "reservation sweep failed");
            }
            self.publish_held().await;
        }
    }
}
