//! What the SQL-backed services share about their pools.

/// Opens a transaction that a caller cut off mid-way cannot leave half open.
///
/// sqlx counts a transaction as open only once it has read BEGIN's answer. A future dropped
/// after sending BEGIN and before that answer (a request whose deadline ran out, a client
/// hanging up) hands the connection back to the pool inside a transaction nobody knows of:
/// every later statement on that connection reads one old snapshot (a row committed since
/// is "not found") and its writes stay uncommitted, holding their locks. Begun in a task of
/// its own, the transaction either exists, and dropping it rolls it back, or was never
/// started.
pub async fn begin<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
) -> Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.begin().await })
        .await
        .map_err(|e| sqlx::Error::Io(std::io::Error::other(e)))?
}
