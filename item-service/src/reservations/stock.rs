//! The per-line operations on the items' stock (`inventory`): take a line, put it back,
//! make it final. Each is one conditional single-document update, idempotent per
//! reservation (see the parent module).

use mongodb::bson::doc;
use platform::ErrorReason;

use super::{LineDoc, Reservations, Shortfall};
use crate::{error::Error, input::Line, store::count_read};

impl Reservations {
    /// Takes one line; Ok(None) when taken (now or by an earlier attempt).
    pub(super) async fn take(&self, rid: &str, line: &Line) -> Result<Option<Shortfall>, Error> {
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
    pub(super) async fn put_back(&self, rid: &str, line: &LineDoc) -> Result<(), Error> {
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
    pub(super) async fn finalize(&self, rid: &str, line: &LineDoc) -> Result<(), Error> {
        self.stock
            .update_one(
                doc! { "_id": line.item_id, "holds": rid },
                doc! { "$pull": { "holds": rid } },
            )
            .await
            .map_err(Error::mongo("committing stock"))?;
        Ok(())
    }

    pub(super) async fn put_back_all(&self, rid: &str, lines: &[LineDoc]) -> Result<(), Error> {
        for l in lines {
            self.put_back(rid, l).await?;
        }
        Ok(())
    }
}
