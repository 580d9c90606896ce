//! The operator's account administration: `user-service admin grant|revoke EMAIL`.
//!
//! Admins are made by whoever runs the service (and so holds its database credentials),
//! never by registering a particular address: emails are not verified. A role change
//! reaches a user through the next token, because login copies the role from the database
//! into the token; tokens issued before keep their role until they expire
//! (`USER_TOKEN_TTL_SECS`).

use std::fmt;

use platform::FieldError;
use sqlx::PgPool;

use crate::{
    config::Config,
    domain::{Email, Role, UserId},
    store::{Store, StoreError},
};

/// The `admin` subcommand's actions.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum AdminCommand {
    /// Give the account with this email the admin role (from its next login on).
    Grant { email: String },
    /// Make the account with this email a customer again (from its next login on; tokens
    /// already issued keep the admin role until they expire).
    Revoke { email: String },
}

/// What a grant or revoke did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleChange {
    pub user_id: UserId,
    /// The normalised (trimmed, lower-case) address.
    pub email: String,
    pub before: Role,
    pub after: Role,
}

impl fmt::Display for RoleChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (email, id, after) = (&self.email, self.user_id.0, self.after.as_str());
        if self.before == self.after {
            write!(
                f,
                "{email} (user {id}) already has the {after} role; nothing changed"
            )
        } else {
            write!(
                f,
                "{email} (user {id}): role {} -> {after}; it takes effect at the account's \
                 next login (tokens issued before keep their role until they expire)",
                self.before.as_str()
            )
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    BadEmail(#[from] FieldError),
    #[error(
        "no account with email {0}: the user registers first (web shop or POST /api/auth/register), then run this again"
    )]
    NoAccount(String),
    #[error("updating the account")]
    Store(#[from] StoreError),
}

/// Gives the account with `email` the admin role.
pub async fn grant(pool: &PgPool, email: &str) -> Result<RoleChange, AdminError> {
    set_role(pool, email, Role::Admin).await
}

/// Makes the account with `email` a customer.
pub async fn revoke(pool: &PgPool, email: &str) -> Result<RoleChange, AdminError> {
    set_role(pool, email, Role::Customer).await
}

async fn set_role(pool: &PgPool, email: &str, role: Role) -> Result<RoleChange, AdminError> {
    let email = Email::parse(email)?;
    let (user_id, before) = Store::new(pool.clone())
        .set_role(&email, role)
        .await?
        .ok_or_else(|| AdminError::NoAccount(email.as_str().to_owned()))?;
    Ok(RoleChange {
        user_id,
        email: email.as_str().to_owned(),
        before,
        after: role,
    })
}

/// Runs `command` against the database in `config` (the service's own settings), applying
/// the migrations first if this database has not seen them yet.
pub async fn run(config: &Config, command: &AdminCommand) -> anyhow::Result<RoleChange> {
    let pool = crate::app::open_database(config, 1).await?;
    let result = match command {
        AdminCommand::Grant { email } => grant(&pool, email).await,
        AdminCommand::Revoke { email } => revoke(&pool, email).await,
    };
    pool.close().await;
    Ok(result?)
}
