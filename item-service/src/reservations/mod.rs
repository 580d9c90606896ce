//! Stock reservations: the checkout's first write.
//!
//! No multi-document transactions. A reservation is a document in `reservations` (keyed by
//! the caller's id, which makes ReserveStock idempotent: the insert of a second attempt hits
//! the unique `_id`) plus one conditional single-document update per line on the item's
//! stock in `inventory` (never its catalog document, see [`crate::inventory`]):
//!
//! - take a line:  filter `{_id, stock >= qty, holds != rid}`, update `$inc stock -qty,
//!   $push holds rid`. Atomic in MongoDB, never read-then-write, so stock cannot go
//!   negative, and `holds` makes the line idempotent: it is taken at most once per
//!   reservation however often it is retried.
//! - put it back: filter `{_id, holds == rid}`, update `$inc stock +qty, $pull holds rid`,
//!   so stock comes back exactly once, whoever (caller, failed reserve, sweeper, a second
//!   replica) tries.
//! - commit: `$pull holds rid` only; the stock stays sold. Done after CommitReservation
//!   has answered (COMMITTED is already durable then), so the answer costs only the
//!   status change.
//!
//! Every status change is a compare-and-set on the status it expects (PENDING->RESERVED,
//! RESERVED->COMMITTED, PENDING|RESERVED->RELEASED), so of two racing actors exactly one
//! wins and only the winner goes on to touch stock. `settled` records that the per-line
//! work after a status change is done; the sweeper finishes it when a process died in
//! between.
//!
//! The compare-and-set is a read by `_id` then an `update_one` whose filter pins what was
//! read: the status and `rev`, a counter every write to a reservation increments (status
//! changes, mark-settled, the sweeper's claims, the outbox relay's claim and mark; a
//! document from before `rev` existed has none and is matched by `rev: {$exists: false}`).
//! The winner is whoever's update matched (`matched_count`), and its post-image is the
//! read document with the same `$set`s applied here, exact because nothing else wrote in
//! between (same `rev`). A miss reads again and retries, a bounded number of times. Why not
//! `find_one_and_update`, which does all this in one round trip: SecantusDB (0.7) answers
//! `findAndModify` with a scan of the whole collection even for an `_id` filter (0.6 ms
//! empty, 15 ms at 3,000 reservations, linear), while `find`/`update` by `_id` stay flat
//! (0.25-0.4 ms). A real mongod would not care; the two flat round trips cost it little.
//!
//! The sweeper finds its work through one sparse index on `due`, a time present only
//! while a reservation may need it: the hold's expiry while PENDING or RESERVED, and a
//! grace period after a status change that leaves per-line work (COMMITTED, RELEASED);
//! settling and rejecting remove it. A settled reservation has no index entry at all, and
//! PENDING->RESERVED changes no indexed field. (Two indexes on `status, expires_at` and
//! `settled, updated_at` did the same before, and every status change rewrote both.)
//!
//! The asynchronous checkout ([`crate::checkout`]) uses the same documents and per-line
//! operations in smaller steps ([`Reservations::begin`], [`Reservations::take_lines`],
//! [`Reservations::decide`]); its deciding status change also stores the event that
//! announces the decision ([`crate::outbox`]), in the same single-document write.
//!
//! This module holds the documents and the compare-and-set core; the operations on them
//! are split by who calls them: `stock` (the per-line operations), `rpc` (the
//! synchronous RPCs), `asynchronous` (the asynchronous checkout's steps) and `sweeper`.

mod asynchronous;
mod rpc;
mod stock;
mod sweeper;

use std::time::Duration;

use mongodb::{
    Collection, Database, IndexModel,
    bson::{Bson, DateTime, Document, doc},
    options::IndexOptions,
};
use platform::ErrorReason;
use serde::{Deserialize, Serialize};
use shop_proto::{common::v1 as common, item::v1 as pb};

use crate::{
    cache::Cache,
    error::Error,
    input::{ItemId, Line},
    inventory::INVENTORY,
    outbox::OutboxEvent,
    store::count_read,
};

pub const RESERVATIONS: &str = "reservations";
/// An unsettled reservation older than this is assumed abandoned by a dead process.
const SETTLE_GRACE: Duration = Duration::from_secs(30);
/// Attempts of one compare-and-set on a reservation before answering "changing
/// concurrently; retry". Each miss means another writer's update applied.
const CAS_ATTEMPTS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Lines are being taken.
    Pending,
    Reserved,
    Committed,
    Released,
    Rejected,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Reserved => "reserved",
            Self::Committed => "committed",
            Self::Released => "released",
            Self::Rejected => "rejected",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineDoc {
    pub item_id: mongodb::bson::oid::ObjectId,
    pub quantity: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReservationDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub lines: Vec<LineDoc>,
    pub status: State,
    pub expires_at: DateTime,
    #[serde(default)]
    pub reason: String,
    /// For a rejection: the request field it names, and whether the item did not exist.
    #[serde(default)]
    pub reject_field: String,
    #[serde(default)]
    pub reject_not_found: bool,
    pub settled: bool,
    pub created_at: DateTime,
    pub updated_at: DateTime,
    /// When the sweeper should look at it, while it may need to (see the module comment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<DateTime>,
    /// The event announcing how an asynchronous checkout's reservation was decided
    /// (`stock.reserved` / `stock.refused`), written by the deciding status change itself.
    /// None on reservations of the synchronous checkout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox: Option<OutboxEvent>,
    /// Incremented by every write to the document (see the module comment); None on
    /// documents from before it existed, which count as 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<i64>,
}

impl ReservationDoc {
    /// A reservation being made now: PENDING, held until `ttl` from now, with the sweeper's
    /// `due` at its expiry (the synchronous ReserveStock and the asynchronous checkout both
    /// begin one this way).
    pub(crate) fn pending(id: &str, lines: Vec<LineDoc>, ttl: Duration) -> Self {
        let now = DateTime::now();
        let expires_at = now_plus(ttl);
        Self {
            id: id.to_owned(),
            lines,
            status: State::Pending,
            expires_at,
            reason: String::new(),
            reject_field: String::new(),
            reject_not_found: false,
            settled: false,
            created_at: now,
            updated_at: now,
            due: Some(expires_at),
            outbox: None,
            rev: Some(0),
        }
    }

    pub fn to_pb(&self) -> pb::Reservation {
        use pb::ReservationStatus as S;
        let status = match self.status {
            State::Pending => S::Unspecified,
            State::Reserved => S::Reserved,
            State::Committed => S::Committed,
            State::Released => S::Released,
            State::Rejected => S::Rejected,
        };
        let ms = self.expires_at.timestamp_millis();
        pb::Reservation {
            reservation_id: self.id.clone(),
            lines: self
                .lines
                .iter()
                .map(|l| common::ItemLine {
                    item_id: l.item_id.to_hex(),
                    quantity: l.quantity,
                })
                .collect(),
            status: status as i32,
            expires_at: Some(prost_types::Timestamp {
                seconds: ms.div_euclid(1000),
                nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
            }),
            reason: if self.status == State::Pending {
                "being made".to_owned()
            } else {
                self.reason.clone()
            },
        }
    }

    fn item_ids(&self) -> Vec<ItemId> {
        self.lines.iter().map(|l| ItemId(l.item_id)).collect()
    }

    /// The error a rejected reservation answers with, first time and on every retry.
    fn rejection(&self) -> Error {
        let field = (!self.reject_field.is_empty()).then(|| self.reject_field.clone());
        if self.reject_not_found {
            Error::LineNotFound {
                field,
                message: self.reason.clone(),
            }
        } else {
            Error::Precondition {
                reason: ErrorReason::OutOfStock,
                field,
                message: self.reason.clone(),
            }
        }
    }
}

/// Why a line could not be taken.
enum Shortfall {
    NotFound,
    Left(i64),
}

/// A line that could not be taken, said as a rejection says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortage {
    /// `lines[i].quantity`, or `lines[i].item_id` when the item does not exist.
    pub field: String,
    pub not_found: bool,
    /// "item 65.. has 1 left, 3 wanted"
    pub message: String,
}

impl Shortage {
    fn of(i: usize, line: &Line, shortfall: Shortfall) -> Self {
        match shortfall {
            Shortfall::NotFound => Self {
                field: format!("lines[{i}].item_id"),
                not_found: true,
                message: format!("item {} not found", line.item.hex()),
            },
            Shortfall::Left(left) => Self {
                field: format!("lines[{i}].quantity"),
                not_found: false,
                message: format!(
                    "item {} has {left} left, {} wanted",
                    line.item.hex(),
                    line.quantity
                ),
            },
        }
    }
}

/// An asynchronous reservation on arrival of its request.
#[derive(Debug)]
pub enum Begun {
    /// Created now, PENDING.
    Fresh,
    /// It existed: a redelivered request (or the same id reused).
    Exists(Box<ReservationDoc>),
}

/// What deciding an asynchronous reservation came to.
#[derive(Debug)]
pub enum Decided {
    /// This call decided it and stored the event with the decision.
    Now(ReservationDoc),
    /// It had been decided (with its event) before: a redelivery or a twin delivery.
    Earlier(ReservationDoc),
    /// It was released (order cancelled, or expired) before it could be decided; whatever
    /// this call had taken is back.
    Released(ReservationDoc),
}

#[derive(Clone, Debug)]
pub struct Reservations {
    /// The items' stock (`inventory`): the only collection besides `reservations` a
    /// reservation writes.
    stock: Collection<Document>,
    reservations: Collection<ReservationDoc>,
    cache: Cache,
    ttl: Duration,
}

/// The stored reason of a reservation the sweeper released because it expired.
pub const EXPIRED: &str = "expired";

/// Reservations by what happened to them: reserved, rejected, committed, released
/// (by a caller), expired (released by the sweeper).
fn count_outcome(outcome: &'static str) {
    metrics::counter!("item_reservations_total", "outcome" => outcome).increment(1);
}

fn line_docs(lines: &[Line]) -> Vec<LineDoc> {
    lines
        .iter()
        .map(|l| LineDoc {
            item_id: l.item.0,
            quantity: l.quantity,
        })
        .collect()
}

fn now_plus(d: Duration) -> DateTime {
    DateTime::from_millis(
        DateTime::now()
            .timestamp_millis()
            .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
    )
}

/// The update of a status change to `to` setting `set`, with `due` as `to` needs it: a
/// change that leaves per-line work (COMMITTED, RELEASED) is due after the grace period
/// (the sweeper finishes it if this process dies first); REJECTED leaves none; RESERVED
/// keeps the hold's expiry it had since PENDING.
fn due_after(to: State, mut set: Document) -> Document {
    match to {
        State::Committed | State::Released => {
            set.insert("due", now_plus(SETTLE_GRACE));
            doc! { "$set": set }
        }
        State::Rejected => doc! { "$set": set, "$unset": { "due": "" } },
        State::Pending | State::Reserved => doc! { "$set": set },
    }
}

/// The filter part that pins a document's `rev` as read (`None`: written before `rev`
/// existed, so it has no such field).
pub(crate) fn rev_is(rev: Option<Bson>) -> Document {
    match rev {
        Some(r) => doc! { "rev": r },
        None => doc! { "rev": { "$exists": false } },
    }
}

/// `update` also incrementing `rev` (a missing `rev` becomes 1).
pub(crate) fn bumping_rev(mut update: Document) -> Document {
    match update.get_document_mut("$inc") {
        Ok(inc) => {
            inc.insert("rev", 1_i64);
        }
        Err(_) => {
            update.insert("$inc", doc! { "rev": 1_i64 });
        }
    }
    update
}

/// What `update` (top-level `$set` / `$unset` and the `rev` increment, the only forms the
/// status changes use) makes of `read`: the post-image of a compare-and-set that matched.
// The service's one error type, as every other (async) function here returns it.
#[allow(clippy::result_large_err)]
fn post_image(read: &ReservationDoc, update: &Document) -> Result<ReservationDoc, Error> {
    let mut doc = mongodb::bson::to_document(read).map_err(|e| Error::Encode {
        what: "a reservation",
        source: e,
    })?;
    if let Ok(set) = update.get_document("$set") {
        for (k, v) in set {
            debug_assert!(!k.contains('.'), "post_image applies top-level fields only");
            doc.insert(k.clone(), v.clone());
        }
    }
    if let Ok(unset) = update.get_document("$unset") {
        for k in unset.keys() {
            doc.remove(k);
        }
    }
    let mut after: ReservationDoc =
        mongodb::bson::from_document(doc).map_err(|e| Error::Decode {
            what: "a reservation",
            source: Box::new(e),
        })?;
    after.rev = Some(read.rev.unwrap_or(0) + 1);
    Ok(after)
}

fn changing_concurrently(id: &str) -> Error {
    Error::Aborted(
        ErrorReason::ConcurrentChange,
        format!("reservation {id:?} is changing concurrently; retry"),
    )
}

/// What a status change came to.
#[derive(Debug)]
enum Moved {
    /// This call made it; the document after it.
    Now(ReservationDoc),
    /// It was not in one of the expected states: the document as read.
    Not(ReservationDoc),
}

impl Reservations {
    pub fn new(db: &Database, cache: Cache, ttl: Duration) -> Self {
        Self {
            stock: db.collection(INVENTORY),
            reservations: db.collection(RESERVATIONS),
            cache,
            ttl,
        }
    }

    pub async fn ensure_indexes(&self) -> Result<(), Error> {
        self.reservations
            .create_indexes(vec![
                IndexModel::builder()
                    .keys(doc! { "due": 1 })
                    .options(
                        IndexOptions::builder()
                            .name("due".to_owned())
                            .sparse(true)
                            .build(),
                    )
                    .build(),
            ])
            .await
            .map_err(Error::mongo("creating reservation indexes"))?;
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Option<ReservationDoc>, Error> {
        count_read("reservation");
        self.reservations
            .find_one(doc! { "_id": id })
            .await
            .map_err(Error::mongo("reading a reservation"))
    }

    async fn get_existing(&self, id: &str) -> Result<ReservationDoc, Error> {
        self.get(id)
            .await?
            .ok_or_else(|| Error::ReservationNotFound(id.to_owned()))
    }

    // ----- status transitions -----

    /// Compare-and-set: applies `update` (and the `rev` increment) to the reservation only
    /// if it is still as `read` (same status, same `rev`) and `cond` holds; then the
    /// document after it, built from `read`. None when another write came first.
    /// (Not `find_one_and_update`: SecantusDB scans the collection for it, see the module
    /// comment.)
    async fn cas(
        &self,
        read: &ReservationDoc,
        cond: Document,
        update: Document,
        what: &'static str,
    ) -> Result<Option<ReservationDoc>, Error> {
        let mut filter = doc! { "_id": &read.id, "status": read.status.as_str() };
        filter.extend(rev_is(read.rev.map(Bson::Int64)));
        filter.extend(cond);
        let update = bumping_rev(update);
        let res = self
            .reservations
            .update_one(filter, update.clone())
            .await
            .map_err(Error::mongo(what))?;
        if res.matched_count != 1 {
            return Ok(None);
        }
        post_image(read, &update).map(Some)
    }

    /// Moves `id` from one of `from` to `to`, or says it was not in `from` (as read).
    /// `known` is the document if the caller has just read (or written) it, saving the
    /// first read; it is only a guess: a miss reads again.
    async fn transition(
        &self,
        id: &str,
        known: Option<ReservationDoc>,
        from: &[State],
        to: State,
        extra: Document,
    ) -> Result<Moved, Error> {
        let mut set = doc! { "status": to.as_str(), "updated_at": DateTime::now() };
        set.extend(extra);
        let moved = self
            .read_and_set(
                id,
                known,
                |doc| from.contains(&doc.status),
                doc! {},
                due_after(to, set),
                "changing a reservation",
            )
            .await?;
        if matches!(moved, Moved::Now(_)) {
            count_outcome(to.as_str());
        }
        Ok(moved)
    }

    /// Reads `id` (or takes `known`, a guess that may be stale) and, while it `qualifies`,
    /// compare-and-sets `update` on what was read; a miss means another write came
    /// between, so it reads again, a bounded number of times. `Moved::Not` carries the
    /// document that no longer qualifies.
    async fn read_and_set(
        &self,
        id: &str,
        mut known: Option<ReservationDoc>,
        qualifies: impl Fn(&ReservationDoc) -> bool,
        cond: Document,
        update: Document,
        what: &'static str,
    ) -> Result<Moved, Error> {
        for _ in 0..CAS_ATTEMPTS {
            let read = match known.take() {
                Some(doc) if qualifies(&doc) => doc,
                _ => {
                    let doc = self.get_existing(id).await?;
                    if !qualifies(&doc) {
                        return Ok(Moved::Not(doc));
                    }
                    doc
                }
            };
            if let Some(doc) = self.cas(&read, cond.clone(), update.clone(), what).await? {
                return Ok(Moved::Now(doc));
            }
        }
        Err(changing_concurrently(id))
    }

    async fn mark_settled(&self, doc: &mut ReservationDoc) -> Result<(), Error> {
        self.reservations
            .update_one(
                doc! { "_id": &doc.id, "status": doc.status.as_str() },
                doc! {
                    "$set": { "settled": true },
                    "$unset": { "due": "" },
                    "$inc": { "rev": 1_i64 },
                },
            )
            .await
            .map_err(Error::mongo("settling a reservation"))?;
        doc.settled = true;
        doc.due = None;
        // Not known any more (another write may have come between): a later
        // compare-and-set from this copy misses and reads again.
        doc.rev = None;
        Ok(())
    }

    /// Does the per-line work a status implies (idempotent), then records it as done.
    async fn settle(&self, mut doc: ReservationDoc) -> Result<ReservationDoc, Error> {
        match doc.status {
            State::Released => {
                let res = self.put_back_all(&doc.id, &doc.lines).await;
                self.cache.invalidate(&doc.item_ids()).await;
                res?;
            }
            State::Committed => {
                for l in &doc.lines {
                    self.finalize(&doc.id, l).await?;
                }
            }
            State::Pending | State::Reserved | State::Rejected => return Ok(doc),
        }
        self.mark_settled(&mut doc).await?;
        Ok(doc)
    }
}
