//! The synchronous checkout's RPCs on reservations: ReserveStock, CommitReservation,
//! ReleaseReservation.

use mongodb::bson::doc;
use platform::ErrorReason;

use super::{
    EXPIRED, LineDoc, Moved, ReservationDoc, Reservations, Shortage, State, changing_concurrently,
    line_docs,
};
use crate::{
    error::{Error, is_duplicate_key},
    input::{Line, ReservationId},
};

impl Reservations {
    pub async fn reserve(
        &self,
        rid: &ReservationId,
        lines: &[Line],
    ) -> Result<ReservationDoc, Error> {
        let line_docs = line_docs(lines);
        let doc = ReservationDoc::pending(&rid.0, line_docs.clone(), self.ttl);
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
}
