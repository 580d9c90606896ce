//! user-service's transactional outbox in PostgreSQL: events are inserted by the same
//! transaction as the order change they announce, and relayed to NATS JetStream by
//! `platform::events::Relay` (the "event relay" task).

use std::time::Duration;

use platform::events::{Envelope, Outbox};
use sqlx::{PgPool, Postgres, Transaction, types::Json};
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Stores `event` in the outbox within `tx`. Writing an event that is already there (same
/// derived id: a redelivered trigger) changes nothing.
pub async fn write(tx: &mut Transaction<'_, Postgres>, event: &Envelope) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO outbox (event_id, kind, key, envelope) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event.id)
    .bind(&event.kind)
    .bind(&event.key)
    .bind(Json(event))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Clone)]
pub struct PgOutbox {
    pub(crate) pool: PgPool,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Outbox for PgOutbox {
    async fn claim(&self, limit: usize, lease: Duration) -> Result<Vec<Envelope>, BoxError> {
        // SKIP LOCKED and the claim keep two replicas' relays on different rows.
        let rows: Vec<(Json<Envelope>,)> = sqlx::query_as(
            "UPDATE outbox SET claimed_until = now() + $2 * interval '1 millisecond' \
             WHERE event_id IN (SELECT event_id FROM outbox \
                 WHERE published_at IS NULL AND (claimed_until IS NULL OR claimed_until < now()) \
                 ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING envelope",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(millis(lease))
        .fetch_all(&self.pool)
        .await?;
        let mut events: Vec<Envelope> = rows.into_iter().map(|(e,)| e.0).collect();
        events.sort_by_key(|e| e.occurred_at_ms);
        Ok(events)
    }

    async fn mark_published(&self, ids: &[Uuid]) -> Result<(), BoxError> {
        sqlx::query("UPDATE outbox SET published_at = now() WHERE event_id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn backlog(&self) -> Result<u64, BoxError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
