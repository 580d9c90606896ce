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
    error::{Error, is_duplicate_key},
    input::{ItemId, Line, ReservationId},
    inventory::INVENTORY,
    outbox::OutboxEvent,
    store::count_read,
};

pub const RESERVATIONS: &str = "reservations";
/// An unsettled reservation older than this is assumed abandoned by a dead process.
const SETTLE_GRACE: Duration = Duration::from_secs(30);
/// At most this many reservations per sweep round (the next round continues).
const SWEEP_BATCH: usize = 500;
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

    // ----- per-line operations on the items' stock -----

    /// Takes one line; Ok(None) when taken (now or by an earlier attempt).
    async fn take(&self, rid: &str, line: &Line) -> Result<Option<Shortfall>, Error> {
        let qty = i64::from(line.quantity);
        // A concurrent put-back can make a failed update succeed on a second try; a few
        // attempts keep the "n left" answer honest.
        for _ in 0..3 {
            let res = self
                .stock
                .update_one(
                    doc! { "_id": line.item.0, "stock": { "$gte": qty }, "holds": { "$ne": rid } },
                    doc! {
                        "$inc": { "stock": -qty, "version": 1_i64 },
                        "$push": { "holds": rid },
                    },
                )
                .await
                .map_err(Error::mongo("taking stock"))?;
            if res.matched_count == 1 {
                return Ok(None);
            }
            count_read("reserve_check");
            let current = self
                .stock
                .find_one(doc! { "_id": line.item.0 })
                .projection(doc! { "stock": 1, "holds": 1 })
                .await
                .map_err(Error::mongo("reading stock"))?;
            let Some(current) = current else {
                return Ok(Some(Shortfall::NotFound));
            };
            let held = current
                .get_array("holds")
                .is_ok_and(|h| h.iter().any(|v| v.as_str() == Some(rid)));
            if held {
                return Ok(None);
            }
            let left = current
                .get_i64("stock")
                .or_else(|_| current.get_i32("stock").map(i64::from))
                .unwrap_or(0);
            if left < qty {
                return Ok(Some(Shortfall::Left(left)));
            }
        }
        Err(Error::Aborted(
            ErrorReason::ConcurrentChange,
            format!(
                "stock of item {} is changing too fast; retry",
                line.item.hex()
            ),
        ))
    }

    /// Puts one line back if (and only if) this reservation still holds it.
    async fn put_back(&self, rid: &str, line: &LineDoc) -> Result<(), Error> {
        self.stock
            .update_one(
                doc! { "_id": line.item_id, "holds": rid },
                doc! {
                    "$inc": { "stock": i64::from(line.quantity), "version": 1_i64 },
                    "$pull": { "holds": rid },
                },
            )
            .await
            .map_err(Error::mongo("putting stock back"))?;
        Ok(())
    }

    /// Makes one line final: the stock stays taken, the hold marker goes.
    async fn finalize(&self, rid: &str, line: &LineDoc) -> Result<(), Error> {
        self.stock
            .update_one(
                doc! { "_id": line.item_id, "holds": rid },
                doc! { "$pull": { "holds": rid } },
            )
            .await
            .map_err(Error::mongo("committing stock"))?;
        Ok(())
    }

    async fn put_back_all(&self, rid: &str, lines: &[LineDoc]) -> Result<(), Error> {
        for l in lines {
            self.put_back(rid, l).await?;
        }
        Ok(())
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

    // ----- the RPCs -----

    pub async fn reserve(
        &self,
        rid: &ReservationId,
        lines: &[Line],
    ) -> Result<ReservationDoc, Error> {
        let line_docs = line_docs(lines);
        let now = DateTime::now();
        let expires_at = now_plus(self.ttl);
        let doc = ReservationDoc {
            id: rid.0.clone(),
            lines: line_docs.clone(),
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
        };
        match self.reservations.insert_one(&doc).await {
            Ok(_) => {}
            Err(e) if is_duplicate_key(&e) => {
                // A retry (or a reuse of the id): answer with the first outcome.
                let existing = self.get_existing(&rid.0).await?;
                if existing.lines != line_docs {
                    return Err(Error::ReservationMismatch(rid.0.clone()));
                }
                return match existing.status {
                    State::Rejected => Err(existing.rejection()),
                    State::Pending => Err(Error::Aborted(
                        ErrorReason::InProgress,
                        format!("reservation {:?} is still being made; retry", rid.0),
                    )),
                    _ => Ok(existing),
                };
            }
            Err(e) => return Err(Error::mongo("creating a reservation")(e)),
        }

        let outcome = self.take_all(&doc, lines, &line_docs).await;
        self.cache.invalidate(&doc.item_ids()).await;
        outcome
    }

    /// Takes every line of `inserted` (the PENDING reservation just written) and moves it
    /// to RESERVED, or to REJECTED with every line back.
    async fn take_all(
        &self,
        inserted: &ReservationDoc,
        lines: &[Line],
        line_docs: &[LineDoc],
    ) -> Result<ReservationDoc, Error> {
        let id = inserted.id.as_str();
        for (i, line) in lines.iter().enumerate() {
            let shortfall = match self.take(id, line).await {
                Ok(s) => s,
                Err(e) => {
                    // Storage trouble half-way: undo what was taken and forget the attempt
                    // so a retry starts afresh. If even that fails, the reservation stays
                    // PENDING and the sweeper returns its stock when it expires.
                    if self.put_back_all(id, line_docs).await.is_ok() {
                        let _ = self
                            .reservations
                            .delete_one(doc! { "_id": id, "status": State::Pending.as_str() })
                            .await;
                    }
                    return Err(e);
                }
            };
            let Some(shortfall) = shortfall else { continue };
            // All or nothing: put back the lines taken so far before answering.
            self.put_back_all(id, &line_docs[..i]).await?;
            let Shortage {
                field,
                not_found,
                message: reason,
            } = Shortage::of(i, line, shortfall);
            let rejected = self
                .transition(
                    id,
                    Some(inserted.clone()),
                    &[State::Pending],
                    State::Rejected,
                    doc! {
                        "reason": &reason,
                        "reject_field": &field,
                        "reject_not_found": not_found,
                        "settled": true,
                    },
                )
                .await?;
            return Err(match rejected {
                Moved::Now(doc) => doc.rejection(),
                Moved::Not(_) => Error::Aborted(
                    ErrorReason::ReservationReleased,
                    format!("reservation {id:?} was released while it was being made"),
                ),
            });
        }
        match self
            .transition(
                id,
                Some(inserted.clone()),
                &[State::Pending],
                State::Reserved,
                doc! {},
            )
            .await?
        {
            Moved::Now(doc) => Ok(doc),
            Moved::Not(_) => {
                // Released (by the caller or the sweeper) while we were taking lines: the
                // releaser put back what it saw; put back the rest.
                self.put_back_all(id, line_docs).await?;
                Err(Error::Aborted(
                    ErrorReason::ReservationReleased,
                    format!("reservation {id:?} was released while it was being made"),
                ))
            }
        }
    }

    /// Commits in two flat round trips when the reservation is RESERVED (the read and the
    /// compare-and-set of RESERVED->COMMITTED; one `find_one_and_update` before, which
    /// SecantusDB answers with a collection scan); the read also tells why when it is not
    /// RESERVED. The per-line work (dropping the hold markers) runs after
    /// the answer: COMMITTED is durable once the change is made, the stock stays taken
    /// either way, the work is idempotent, and the sweeper finishes it after
    /// `SETTLE_GRACE` if this process dies first.
    pub async fn commit(&self, rid: &ReservationId) -> Result<ReservationDoc, Error> {
        self.commit_applied(rid).await.map(|(doc, _)| doc)
    }

    /// [`Self::commit`], also telling whether this call committed it (false: it had been
    /// committed before, a retry or a redelivery).
    pub async fn commit_applied(
        &self,
        rid: &ReservationId,
    ) -> Result<(ReservationDoc, bool), Error> {
        let doc = match self
            .transition(
                &rid.0,
                None,
                &[State::Reserved],
                State::Committed,
                doc! { "settled": false },
            )
            .await?
        {
            Moved::Now(doc) => {
                self.settle_later(doc.clone());
                return Ok((doc, true));
            }
            Moved::Not(doc) => doc,
        };
        match doc.status {
            State::Committed => {
                // A retry: the answer is the same; finish the work if it is not done
                // (the first attempt's settling may still be running: idempotent).
                if !doc.settled {
                    self.settle_later(doc.clone());
                }
                Ok((doc, false))
            }
            // Not answered by `transition` (RESERVED is what it moves on from).
            State::Reserved => Err(changing_concurrently(&rid.0)),
            State::Released => Err(Error::Precondition {
                reason: if doc.reason == EXPIRED {
                    ErrorReason::ReservationExpired
                } else {
                    ErrorReason::ReservationReleased
                },
                field: Some("reservation_id".to_owned()),
                message: format!(
                    "reservation {:?} was released ({}); its stock is no longer held",
                    rid.0, doc.reason
                ),
            }),
            State::Rejected => Err(Error::Precondition {
                reason: ErrorReason::ReservationRejected,
                field: Some("reservation_id".to_owned()),
                message: format!("reservation {:?} was rejected: {}", rid.0, doc.reason),
            }),
            State::Pending => Err(Error::Aborted(
                ErrorReason::InProgress,
                format!("reservation {:?} is still being made; retry", rid.0),
            )),
        }
    }

    /// Settles `doc` on its own task, after the caller has its answer. A plain spawn, not
    /// `timing::carry`: its round trips are not part of the request's time. On failure the
    /// reservation stays unsettled and the sweeper finishes it.
    fn settle_later(&self, doc: ReservationDoc) {
        let this = self.clone();
        tokio::spawn(async move {
            let id = doc.id.clone();
            if let Err(e) = this.settle(doc).await {
                tracing::warn!(
                    reservation_id = %id,
                    error = %platform::telemetry::chain(&e),
                    "settling a reservation failed; the sweeper will finish it"
                );
            }
        });
    }

    pub async fn release(&self, rid: &ReservationId) -> Result<ReservationDoc, Error> {
        self.release_applied(rid, "released by caller")
            .await
            .map(|(doc, _)| doc)
    }

    /// [`Self::release`] giving `reason` as the stored reason, and telling whether this
    /// call released it (false: released before, or rejected, so nothing was held).
    pub async fn release_applied(
        &self,
        rid: &ReservationId,
        reason: &str,
    ) -> Result<(ReservationDoc, bool), Error> {
        for _ in 0..3 {
            let doc = self.get_existing(&rid.0).await?;
            match doc.status {
                State::Released if doc.settled => return Ok((doc, false)),
                State::Released => return Ok((self.settle(doc).await?, false)),
                State::Rejected => return Ok((doc, false)),
                State::Reserved | State::Pending => {
                    // Moved::Not: changed since the read above; look again.
                    if let Moved::Now(doc) = self
                        .transition(
                            &rid.0,
                            Some(doc),
                            &[State::Reserved, State::Pending],
                            State::Released,
                            doc! { "settled": false, "reason": reason },
                        )
                        .await?
                    {
                        return Ok((self.settle(doc).await?, true));
                    }
                }
                State::Committed => {
                    return Err(Error::Precondition {
                        reason: ErrorReason::ReservationCommitted,
                        field: Some("reservation_id".to_owned()),
                        message: format!(
                            "reservation {:?} is already committed and cannot be released",
                            rid.0
                        ),
                    });
                }
            }
        }
        Err(Error::Aborted(
            ErrorReason::ConcurrentChange,
            format!("reservation {:?} is changing concurrently; retry", rid.0),
        ))
    }

    // ----- the asynchronous checkout, step by step -----

    /// Creates the PENDING reservation of an asynchronous checkout, holding for `ttl`, or
    /// finds the one a previous delivery of the same request created.
    pub async fn begin(
        &self,
        rid: &ReservationId,
        lines: &[Line],
        ttl: Duration,
    ) -> Result<Begun, Error> {
        let now = DateTime::now();
        let expires_at = now_plus(ttl);
        let doc = ReservationDoc {
            id: rid.0.clone(),
            lines: line_docs(lines),
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
        };
        match self.reservations.insert_one(&doc).await {
            Ok(_) => Ok(Begun::Fresh),
            Err(e) if is_duplicate_key(&e) => {
                Ok(Begun::Exists(Box::new(self.get_existing(&rid.0).await?)))
            }
            Err(e) => Err(Error::mongo("creating a reservation")(e)),
        }
    }

    /// Takes every line for `rid` (lines it holds already count as taken). On a shortage
    /// every line is put back and the shortage returned. A storage error leaves what was
    /// taken held: the caller's retry takes the rest, or the sweeper returns it at expiry.
    pub async fn take_lines(
        &self,
        rid: &ReservationId,
        lines: &[Line],
    ) -> Result<Option<Shortage>, Error> {
        let mut outcome = Ok(None);
        for (i, line) in lines.iter().enumerate() {
            match self.take(&rid.0, line).await {
                Ok(None) => {}
                Ok(Some(shortfall)) => {
                    // All lines, not only those before i: an earlier delivery that died may
                    // have taken later ones (put_back is a no-op where nothing is held).
                    outcome = self
                        .put_back_all(&rid.0, &line_docs(lines))
                        .await
                        .map(|()| Some(Shortage::of(i, line, shortfall)));
                    break;
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        self.cache
            .invalidate(&lines.iter().map(|l| l.item).collect::<Vec<_>>())
            .await;
        outcome
    }

    /// Puts back whatever `rid` holds of `lines` (nothing where it holds nothing).
    pub async fn put_back_lines(&self, rid: &ReservationId, lines: &[Line]) -> Result<(), Error> {
        let res = self.put_back_all(&rid.0, &line_docs(lines)).await;
        self.cache
            .invalidate(&lines.iter().map(|l| l.item).collect::<Vec<_>>())
            .await;
        res
    }

    /// Decides `rid`: moves it from `from` to `to` (with `extra` fields) and stores `event`
    /// in the same single-document update, if it is still in `from` and has no event yet.
    /// Otherwise says why not; a call that had taken `lines` (`to` RESERVED) and lost to a
    /// rejection or a release puts them back.
    pub async fn decide(
        &self,
        rid: &ReservationId,
        lines: &[Line],
        (from, to): (State, State),
        extra: Document,
        event: OutboxEvent,
    ) -> Result<Decided, Error> {
        let event = mongodb::bson::to_bson(&event).map_err(|e| Error::Encode {
            what: "an outbox event",
            source: e,
        })?;
        let mut set =
            doc! { "status": to.as_str(), "updated_at": DateTime::now(), "outbox": event };
        set.extend(extra);
        let update = if from == to {
            doc! { "$set": set }
        } else {
            due_after(to, set)
        };
        // Read, then compare-and-set on what was read (not `find_one_and_update`, which
        // SecantusDB answers with a collection scan; see the module comment).
        let undecided = |doc: &ReservationDoc| doc.status == from && doc.outbox.is_none();
        let doc = match self
            .read_and_set(
                &rid.0,
                None,
                undecided,
                doc! { "outbox": { "$exists": false } },
                update,
                "deciding a reservation",
            )
            .await?
        {
            Moved::Now(doc) => {
                if from != to {
                    count_outcome(to.as_str());
                }
                return Ok(Decided::Now(doc));
            }
            Moved::Not(doc) => doc,
        };
        let holds_ours = matches!(doc.status, State::Reserved | State::Committed);
        if to == State::Reserved && !holds_ours {
            self.put_back_all(&rid.0, &line_docs(lines)).await?;
            self.cache
                .invalidate(&lines.iter().map(|l| l.item).collect::<Vec<_>>())
                .await;
        }
        Ok(match doc.status {
            State::Released if doc.outbox.is_none() => Decided::Released(doc),
            _ => Decided::Earlier(doc),
        })
    }

    /// Records that an order was cancelled before its reservation was made (so a late
    /// request for it reserves nothing). False when the reservation exists after all.
    pub async fn tombstone(&self, rid: &ReservationId, reason: &str) -> Result<bool, Error> {
        let now = DateTime::now();
        let doc = ReservationDoc {
            id: rid.0.clone(),
            lines: Vec::new(),
            status: State::Released,
            expires_at: now,
            reason: reason.to_owned(),
            reject_field: String::new(),
            reject_not_found: false,
            settled: true,
            created_at: now,
            updated_at: now,
            due: None,
            outbox: None,
            rev: Some(0),
        };
        match self.reservations.insert_one(&doc).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(Error::mongo("recording a cancelled order")(e)),
        }
    }

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
