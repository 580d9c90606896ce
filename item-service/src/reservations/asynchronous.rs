//! The asynchronous checkout's steps on reservations ([`crate::checkout`] calls them):
//! begin, take the lines, decide (storing the event with the decision), and the tombstone
//! of an order cancelled before its reservation existed.

use std::time::Duration;

use mongodb::bson::{DateTime, Document, doc};

use super::{
    Begun, Decided, Moved, ReservationDoc, Reservations, Shortage, State, count_outcome, due_after,
    line_docs,
};
use crate::{
    error::{Error, is_duplicate_key},
    input::{Line, ReservationId},
    outbox::OutboxEvent,
};

impl Reservations {
    /// Creates the PENDING reservation of an asynchronous checkout, holding for `ttl`, or
    /// finds the one a previous delivery of the same request created.
    pub async fn begin(
        &self,
        rid: &ReservationId,
        lines: &[Line],
        ttl: Duration,
    ) -> Result<Begun, Error> {
        let doc = ReservationDoc::pending(&rid.0, line_docs(lines), ttl);
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
}
