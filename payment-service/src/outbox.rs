//! payment-service's transactional outbox in MariaDB: an event is inserted by the same
//! transaction as the payment change it announces, and relayed to NATS JetStream by
//! `platform::events::Relay` (the "event relay" task).
//!
//! Claims use `SELECT ... FOR UPDATE SKIP LOCKED` (MariaDB 10.6+) and a lease
//! (`claimed_until`), so several replicas' relays take different rows and a relay that
//! died mid-batch leaves its rows to whoever claims them after the lease.

use std::time::Duration;

use platform::{
    events::{Envelope, Outbox},
    timing::StoreOp as _,
};
use sqlx::{MySql, MySqlPool, QueryBuilder, Transaction};
use time::PrimitiveDateTime;
use uuid::Uuid;

use crate::store;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Stores `event` within `tx`. Writing an event that is already there (same derived id: a
/// redelivered trigger, the reconciler) changes nothing; true if it was new.
pub async fn write(tx: &mut Transaction<'_, MySql>, event: &Envelope) -> sqlx::Result<bool> {
    insert(&mut **tx, event).await
}

async fn insert<'e, E>(exec: E, event: &Envelope) -> sqlx::Result<bool>
where
    E: sqlx::Executor<'e, Database = MySql>,
{
    let res = sqlx::query(
        "INSERT IGNORE INTO outbox (id, kind, event_key, body, created_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(event.id.to_string())
    .bind(&event.kind)
    .bind(&event.key)
    .bind(String::from_utf8_lossy(&event.encode()).into_owned())
    .bind(store::now())
    .execute(exec)
    .store_op("mysql", "outbox_write")
    .await?;
    Ok(res.rows_affected() == 1)
}

#[derive(Clone)]
pub struct MySqlOutbox {
    pool: MySqlPool,
}

impl MySqlOutbox {
    pub fn new(pool: MySqlPool) -> Self {
        Self { pool }
    }

    /// Stores `event` on its own (an event whose state change is already committed: a
    /// settled payment whose trigger came again). True if it was new.
    pub async fn ensure(&self, event: &Envelope) -> sqlx::Result<bool> {
        insert(&self.pool, event).await
    }

    /// Forgets events published before `before` (the stream keeps them from then on).
    pub async fn purge_published(&self, before: PrimitiveDateTime) -> sqlx::Result<u64> {
        let res = sqlx::query("DELETE FROM outbox WHERE published_at < ? LIMIT 10000")
            .bind(before)
            .execute(&self.pool)
            .store_op("mysql", "outbox_purge")
            .await?;
        Ok(res.rows_affected())
    }
}

impl Outbox for MySqlOutbox {
    async fn claim(&self, limit: usize, lease: Duration) -> Result<Vec<Envelope>, BoxError> {
        let now = store::now();
        let mut tx = platform::sql::begin(&self.pool).await?;
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, body FROM outbox \
             WHERE published_at IS NULL AND (claimed_until IS NULL OR claimed_until < ?) \
             ORDER BY created_at, id LIMIT ? FOR UPDATE SKIP LOCKED",
        )
        .bind(now)
        .bind(u64::try_from(limit).unwrap_or(u64::MAX))
        .fetch_all(&mut *tx)
        .store_op("mysql", "outbox_claim")
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let mut claim = QueryBuilder::<MySql>::new("UPDATE outbox SET claimed_until = ");
        claim.push_bind(store::later(now, lease));
        claim.push(" WHERE id IN (");
        let mut ids = claim.separated(", ");
        for (id, _) in &rows {
            ids.push_bind(id);
        }
        claim.push(")");
        claim
            .build()
            .execute(&mut *tx)
            .store_op("mysql", "outbox_claim")
            .await?;
        tx.commit().await?;
        let mut events = Vec::with_capacity(rows.len());
        for (id, body) in rows {
            match Envelope::decode(body.as_bytes()) {
                Ok(e) => events.push(e),
                // Written by this service from an Envelope, so never expected; keep the row
                // (it stays unpublished, visible in the backlog) and relay the rest.
                Err(e) => tracing::error!(
                    event_id = %id,
                    error = %platform::telemetry::chain(&e),
                    "outbox row is not an event envelope; left unpublished"
                ),
            }
        }
        Ok(events)
    }

    async fn mark_published(&self, ids: &[Uuid]) -> Result<(), BoxError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut mark = QueryBuilder::<MySql>::new("UPDATE outbox SET published_at = ");
        mark.push_bind(store::now());
        mark.push(", claimed_until = NULL WHERE id IN (");
        let mut list = mark.separated(", ");
        for id in ids {
            list.push_bind(id.to_string());
        }
        mark.push(")");
        mark.build()
            .execute(&self.pool)
            .store_op("mysql", "outbox_mark_published")
            .await?;
        Ok(())
    }

    async fn backlog(&self) -> Result<u64, BoxError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&self.pool)
            .store_op("mysql", "outbox_backlog")
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
