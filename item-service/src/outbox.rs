//! item-service's outbox: the event that announces a reservation's decision lives in the
//! reservation document itself, in its `outbox` field.
//!
//! There are no multi-document transactions here, so an event in a collection of its own
//! could not be written together with the state change it reports. Instead the one
//! conditional single-document update that decides an asynchronous checkout's reservation
//! (PENDING -> RESERVED or PENDING -> REJECTED, see [`crate::reservations`]) also sets
//! `outbox` to the event with its derived id (`checkout::event_id(order id, kind)`). So:
//!
//! - **no event is invented**: it exists only if the decision it reports is durable;
//! - **no event is lost**: a decision never exists without its event. A process that dies
//!   before the decision leaves the reservation PENDING and the request unacknowledged, so
//!   the redelivery finishes the work and decides; one that dies after it leaves the event
//!   for the relay to publish, and the redelivery finds it decided and writes nothing;
//! - **at most one event per decision**: the update matches only a document that has no
//!   event yet, so a twin delivery deciding at the same time loses and learns the decision.
//!
//! The relay ([`platform::events::Relay`]) claims unpublished events one document at a time:
//! it finds the oldest unclaimed one, then moves its `claimed_until` past now with an
//! `update_one` that pins the reservation's `rev` as found (a compare-and-set, see
//! [`crate::reservations`]), so two replicas never hold the same event at once; after
//! JetStream has stored an event it is marked published. (Not one `find_one_and_update`:
//! SecantusDB answers `findAndModify` with a scan of the whole collection; a real mongod
//! would not care.) Both writes increment `rev`, as every write to a reservation does. A relay that dies in between leaves the claim to expire; the next one
//! publishes the same id again and JetStream drops it as a duplicate.

use std::time::Duration;

use mongodb::{
    Collection, Database, IndexModel,
    bson::{DateTime, Document, doc},
    options::IndexOptions,
};
use platform::events::{Envelope, Outbox};
use serde::{Deserialize, Serialize};

use crate::{
    error::Error,
    reservations::{RESERVATIONS, bumping_rev, rev_is},
};

/// Finds per claim: a miss means another relay claimed that event first.
const CLAIM_ATTEMPTS: usize = 5;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One stored event, as the `outbox` field of a reservation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEvent {
    /// The envelope's (derived) id, as text.
    pub id: String,
    pub kind: String,
    /// The envelope exactly as it will be published (JSON).
    pub envelope: String,
    pub published: bool,
    /// A relay's claim on it lasts until then.
    pub claimed_until: DateTime,
    /// When it was written: the relay publishes oldest first.
    pub occurred_at: DateTime,
}

impl OutboxEvent {
    /// `envelope`, stamped now (it is about to be written), unclaimed and unpublished.
    pub fn new(mut envelope: Envelope) -> Self {
        let now = DateTime::now();
        envelope.occurred_at_ms = now.timestamp_millis();
        Self {
            id: envelope.id.to_string(),
            kind: envelope.kind.clone(),
            envelope: String::from_utf8(envelope.encode()).unwrap_or_default(),
            published: false,
            claimed_until: now,
            occurred_at: now,
        }
    }

    pub fn envelope(&self) -> Result<Envelope, platform::events::EnvelopeError> {
        Envelope::decode(self.envelope.as_bytes())
    }
}

/// The outbox as the relay sees it: the `outbox` fields of the `reservations` collection.
#[derive(Debug, Clone)]
pub struct ReservationOutbox {
    reservations: Collection<Document>,
}

impl ReservationOutbox {
    pub fn new(db: &Database) -> Self {
        Self {
            reservations: db.collection(RESERVATIONS),
        }
    }

    /// Only reservations with an event have entries: unpublished ones in the relay's index
    /// (partial), any with an event in the lookup by event id (sparse). A synchronous
    /// checkout's reservation has none, so its status changes rewrite no entry here (a
    /// MongoDB-wire server may rewrite every entry of a changed document). The names are
    /// new: the start-up migration drops the full indexes of before.
    pub async fn ensure_indexes(&self) -> Result<(), Error> {
        self.reservations
            .create_indexes(vec![
                IndexModel::builder()
                    .keys(doc! { "outbox.occurred_at": 1 })
                    .options(
                        IndexOptions::builder()
                            .name("outbox_unpublished_only".to_owned())
                            .partial_filter_expression(doc! { "outbox.published": false })
                            .build(),
                    )
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "outbox.id": 1 })
                    .options(
                        IndexOptions::builder()
                            .name("outbox_event_id".to_owned())
                            .sparse(true)
                            .build(),
                    )
                    .build(),
            ])
            .await
            .map_err(Error::mongo("creating outbox indexes"))?;
        Ok(())
    }

    /// Claims the oldest unpublished event no live claim holds; None when there is none.
    async fn claim_one(&self, lease: Duration) -> Result<Option<OutboxEvent>, Error> {
        let now = DateTime::now();
        let until = DateTime::from_millis(
            now.timestamp_millis()
                .saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)),
        );
        let unclaimed = doc! { "outbox.published": false, "outbox.claimed_until": { "$lte": now } };
        for _ in 0..CLAIM_ATTEMPTS {
            // Find, then claim what was found by compare-and-set on its `rev` (see the
            // module comment for why not `find_one_and_update`).
            let found = self
                .reservations
                .find_one(unclaimed.clone())
                .sort(doc! { "outbox.occurred_at": 1 })
                .projection(doc! { "outbox": 1, "rev": 1 })
                .await
                .map_err(Error::mongo("finding an outbox event"))?;
            let Some(doc) = found else { return Ok(None) };
            let Some(id) = doc.get("_id").cloned() else {
                return Ok(None);
            };
            let mut filter = unclaimed.clone();
            filter.insert("_id", id);
            filter.extend(rev_is(doc.get("rev").cloned()));
            let res = self
                .reservations
                .update_one(
                    filter,
                    bumping_rev(doc! { "$set": { "outbox.claimed_until": until } }),
                )
                .await
                .map_err(Error::mongo("claiming an outbox event"))?;
            if res.matched_count != 1 {
                continue;
            }
            let event = doc
                .get_document("outbox")
                .ok()
                .and_then(|o| mongodb::bson::from_document::<OutboxEvent>(o.clone()).ok())
                .map(|e| OutboxEvent {
                    claimed_until: until,
                    ..e
                });
            if event.is_none() {
                tracing::error!(reservation_id = ?doc.get("_id"), "outbox field is not an event; skipped");
            }
            return Ok(event);
        }
        // Others kept claiming first: leave the rest to the next round.
        Ok(None)
    }
}

impl Outbox for ReservationOutbox {
    async fn claim(&self, limit: usize, lease: Duration) -> Result<Vec<Envelope>, BoxError> {
        let mut events = Vec::new();
        while events.len() < limit {
            let Some(stored) = self.claim_one(lease).await? else {
                break;
            };
            match stored.envelope() {
                Ok(e) => events.push(e),
                // Written by this service, so never expected; it stays unpublished (and
                // visible in the backlog) rather than stopping every event behind it.
                Err(e) => tracing::error!(
                    event_id = %stored.id,
                    error = %platform::telemetry::chain(&e),
                    "stored event does not decode; skipped"
                ),
            }
        }
        Ok(events)
    }

    async fn mark_published(&self, ids: &[uuid::Uuid]) -> Result<(), BoxError> {
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        self.reservations
            .update_many(
                doc! { "outbox.id": { "$in": ids } },
                doc! { "$set": { "outbox.published": true }, "$inc": { "rev": 1_i64 } },
            )
            .await
            .map_err(Error::mongo("marking events published"))?;
        Ok(())
    }

    async fn backlog(&self) -> Result<u64, BoxError> {
        Ok(self
            .reservations
            .count_documents(doc! { "outbox.published": false })
            .await
            .map_err(Error::mongo("counting unpublished events"))?)
    }
}
