//! PostgreSQL access for accounts and order history. Parameterised queries only.

use platform::timing::StoreOp as _;
use secrecy::SecretString;
use sqlx::{PgPool, types::Json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    domain::{DisplayName, Email, Role, UserId},
    orders::{NewOrder, StoredLine},
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("email already registered")]
    DuplicateEmail,
    #[error("no such user")]
    UnknownUser,
    #[error("database error")]
    Db(#[from] sqlx::Error),
    /// An event this service failed to build (a bug: its transaction is not committed).
    #[error("building an event: {0}")]
    Event(String),
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub user_id: Uuid,
    pub email: String,
    pub display_name: String,
    pub role: String,
    pub created_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct CredentialRow {
    #[sqlx(flatten)]
    user: UserRow,
    password_hash: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderRow {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub lines: Json<Vec<StoredLine>>,
    /// False while a chained checkout's lines await payment-service's prices.
    pub priced: bool,
    pub total_minor: Option<i64>,
    pub currency: Option<String>,
    pub payment_id: Option<String>,
    pub reservation_id: String,
    pub status: String,
    pub failure: Option<String>,
    pub strategy: String,
    pub trace_id: String,
    pub lease_token: Option<Uuid>,
    pub attempts: i32,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

const USER_COLUMNS: &str = "user_id, email, display_name, role, created_at";
pub(crate) const ORDER_COLUMNS: &str = "order_id, user_id, lines, priced, total_minor, currency, \
     payment_id, reservation_id, status, failure, strategy, trace_id, lease_token, attempts, \
     created_at, updated_at";

#[derive(Clone)]
pub struct Store {
    pub(crate) pool: PgPool,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Whether an account has this email (checked before a registration spends a hash;
    /// the unique constraint still decides between concurrent registrations).
    pub async fn email_registered(&self, email: &Email) -> Result<bool, StoreError> {
        Ok(
            sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM users WHERE email = $1)")
                .bind(email.as_str())
                .fetch_one(&self.pool)
                .store_op("postgres", "email_registered")
                .await?,
        )
    }

    /// Inserts an account. A duplicate email is detected by the unique constraint, so two
    /// concurrent registrations of one address cannot both succeed.
    pub async fn insert_user(
        &self,
        email: &Email,
        display_name: &DisplayName,
        password_hash: &str,
        role: Role,
    ) -> Result<UserRow, StoreError> {
        let sql = format!(
            "INSERT INTO users (user_id, email, display_name, password_hash, role) \
             VALUES ($1, $2, $3, $4, $5) RETURNING {USER_COLUMNS}"
        );
        sqlx::query_as::<_, UserRow>(&sql)
            .bind(Uuid::now_v7())
            .bind(email.as_str())
            .bind(display_name.as_str())
            .bind(password_hash)
            .bind(role.as_str())
            .fetch_one(&self.pool)
            .store_op("postgres", "insert_user")
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(db) if db.constraint() == Some("users_email_key") => {
                    StoreError::DuplicateEmail
                }
                _ => StoreError::Db(e),
            })
    }

    /// The account and its password hash, for login.
    pub async fn credentials(
        &self,
        email: &Email,
    ) -> Result<Option<(UserRow, SecretString)>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = $1");
        let row = sqlx::query_as::<_, CredentialRow>(&sql)
            .bind(email.as_str())
            .fetch_optional(&self.pool)
            .store_op("postgres", "credentials")
            .await?;
        Ok(row.map(|r| (r.user, SecretString::from(r.password_hash))))
    }

    /// Sets the role of the account with `email` (the operator's `admin grant|revoke`).
    /// Returns the account's id and its role before the change; None when no account has
    /// that email. One statement, so the reported "before" is the row it replaced.
    pub async fn set_role(
        &self,
        email: &Email,
        role: Role,
    ) -> Result<Option<(UserId, Role)>, StoreError> {
        let row: Option<(Uuid, String)> = sqlx::query_as(
            "WITH old AS (SELECT user_id, role FROM users WHERE email = $1 FOR UPDATE) \
             UPDATE users SET role = $2 FROM old WHERE users.user_id = old.user_id \
             RETURNING users.user_id, old.role",
        )
        .bind(email.as_str())
        .bind(role.as_str())
        .fetch_optional(&self.pool)
        .store_op("postgres", "set_role")
        .await?;
        Ok(row.map(|(id, before)| (UserId(id), Role::from_db(&before))))
    }

    pub async fn user(&self, id: UserId) -> Result<Option<UserRow>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE user_id = $1");
        Ok(sqlx::query_as::<_, UserRow>(&sql)
            .bind(id.0)
            .fetch_optional(&self.pool)
            .store_op("postgres", "user")
            .await?)
    }

    /// Records an order once. Returns the stored order and whether this call created it;
    /// a retry with the same order id gets the first one back unchanged.
    pub async fn insert_order(&self, order: &NewOrder) -> Result<(OrderRow, bool), StoreError> {
        let sql = format!(
            "INSERT INTO orders (order_id, user_id, lines, total_minor, currency, payment_id, \
             reservation_id, status) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (order_id) DO NOTHING RETURNING {ORDER_COLUMNS}"
        );
        let inserted = sqlx::query_as::<_, OrderRow>(&sql)
            .bind(order.order_id)
            .bind(order.user_id.0)
            .bind(Json(&order.lines))
            .bind(order.total.amount_minor())
            .bind(order.total.currency().code())
            .bind(&order.payment_id)
            .bind(&order.reservation_id)
            .bind(order.status)
            .fetch_optional(&self.pool)
            .store_op("postgres", "insert_order")
            .await
            .map_err(|e| match &e {
                sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                    StoreError::UnknownUser
                }
                _ => StoreError::Db(e),
            })?;
        if let Some(row) = inserted {
            return Ok((row, true));
        }
        let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = $1");
        let existing = sqlx::query_as::<_, OrderRow>(&sql)
            .bind(order.order_id)
            .fetch_one(&self.pool)
            .store_op("postgres", "insert_order")
            .await?;
        Ok((existing, false))
    }

    pub async fn order(
        &self,
        order_id: Uuid,
        user: UserId,
    ) -> Result<Option<OrderRow>, StoreError> {
        let sql =
            format!("SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = $1 AND user_id = $2");
        Ok(sqlx::query_as::<_, OrderRow>(&sql)
            .bind(order_id)
            .bind(user.0)
            .fetch_optional(&self.pool)
            .store_op("postgres", "order")
            .await?)
    }

    /// Whose order (or checkout record) `order_id` is.
    pub async fn order_owner(&self, order_id: Uuid) -> Result<Option<Uuid>, StoreError> {
        Ok(
            sqlx::query_scalar::<_, Uuid>("SELECT user_id FROM orders WHERE order_id = $1")
                .bind(order_id)
                .fetch_optional(&self.pool)
                .store_op("postgres", "order_owner")
                .await?,
        )
    }

    /// A page of a user's orders, newest first, strictly after the cursor `after`: placed
    /// and refunded ones, and checkouts still being settled; not the cancelled checkouts
    /// that ended with nothing kept (GetOrder still shows those).
    pub async fn list_orders(
        &self,
        user: UserId,
        after: Option<(OffsetDateTime, Uuid)>,
        limit: u32,
    ) -> Result<Vec<OrderRow>, StoreError> {
        let rows = match after {
            None => {
                let sql = format!(
                    "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = $1 \
                     AND status <> 'cancelled' \
                     ORDER BY created_at DESC, order_id DESC LIMIT $2"
                );
                sqlx::query_as::<_, OrderRow>(&sql)
                    .bind(user.0)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .store_op("postgres", "list_orders")
                    .await?
            }
            Some((at, id)) => {
                let sql = format!(
                    "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = $1 \
                     AND status <> 'cancelled' AND (created_at, order_id) < ($2, $3) \
                     ORDER BY created_at DESC, order_id DESC LIMIT $4"
                );
                sqlx::query_as::<_, OrderRow>(&sql)
                    .bind(user.0)
                    .bind(at)
                    .bind(id)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .store_op("postgres", "list_orders")
                    .await?
            }
        };
        Ok(rows)
    }
}
