//! The stores a crash run (and the soak) uses: throw-away databases on the local stack's
//! SQL servers (the URLs `scripts/stack up` exports), so the checker sees only this run's
//! checkouts, and a MongoDB-wire server of the run's own on a fresh storage directory
//! (see [`crate::mongo_server`]), so no run inherits another's data.

use std::sync::Arc;

use anyhow::Context as _;
use sqlx::Connection as _;

use crate::mongo_server::MongoServer;

/// Where this run's data lives.
#[derive(Debug, Clone)]
pub struct Stores {
    /// user-service's PostgreSQL database (orders = checkout records).
    pub user_db_url: String,
    /// payment-service's MariaDB database.
    pub payment_db_url: String,
    /// item-service's MongoDB server and database.
    pub mongo_url: String,
    pub mongo_db: String,
    pub redis_url: Option<String>,
    pub(crate) created: Vec<Created>,
    /// Stopped when the last clone goes.
    pub mongo_server: Arc<MongoServer>,
}

#[derive(Debug, Clone)]
pub(crate) enum Created {
    Postgres { base: String, name: String },
    Mysql { base: String, name: String },
}

fn env(name: &str) -> anyhow::Result<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => anyhow::bail!(
            "{name} is not set: start the local stack and load its settings first, with eval \"$(scripts/stack up)\""
        ),
    }
}

/// `base` with its database path replaced by `db` (query parameters kept).
pub fn with_database(base: &str, db: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (base, None),
    };
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let path_start = head[scheme_end..]
        .find('/')
        .map_or(head.len(), |i| scheme_end + i);
    let mut url = format!("{}/{db}", &head[..path_start]);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

impl Stores {
    /// Fresh databases named `shop_<service>_c<12 hex>` (the stack's MariaDB user may only
    /// create databases starting with `shop_payment`).
    pub async fn fresh() -> anyhow::Result<Self> {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let pg_base = env("USER_DATABASE_URL")?;
        let my_base = env("PAYMENT_DATABASE_URL")?;
        // First: if it cannot start, no SQL database is left behind.
        let mongo = MongoServer::start(&std::env::temp_dir()).await?;
        let user_db = format!("shop_user_c{suffix}");
        let pay_db = format!("shop_payment_c{suffix}");

        let mut pg = sqlx::PgConnection::connect(&pg_base)
            .await
            .context("connecting to PostgreSQL (USER_DATABASE_URL)")?;
        sqlx::query(&format!("CREATE DATABASE {user_db}"))
            .execute(&mut pg)
            .await
            .with_context(|| format!("CREATE DATABASE {user_db}"))?;
        pg.close().await.ok();
        let mut my = sqlx::MySqlConnection::connect(&my_base)
            .await
            .context("connecting to MariaDB (PAYMENT_DATABASE_URL)")?;
        sqlx::query(&format!("CREATE DATABASE `{pay_db}`"))
            .execute(&mut my)
            .await
            .with_context(|| format!("CREATE DATABASE {pay_db}"))?;
        my.close().await.ok();

        Ok(Self {
            user_db_url: with_database(&pg_base, &user_db),
            payment_db_url: with_database(&my_base, &pay_db),
            mongo_url: mongo.url.clone(),
            mongo_db: format!("shop_item_c{suffix}"),
            redis_url: std::env::var("ITEM_REDIS_URL")
                .ok()
                .filter(|v| !v.is_empty()),
            created: vec![
                Created::Postgres {
                    base: pg_base,
                    name: user_db,
                },
                Created::Mysql {
                    base: my_base,
                    name: pay_db,
                },
            ],
            mongo_server: Arc::new(mongo),
        })
    }

    /// The services' settings for these stores.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("USER_DATABASE_URL".into(), self.user_db_url.clone()),
            ("PAYMENT_DATABASE_URL".into(), self.payment_db_url.clone()),
            ("ITEM_MONGODB_URL".into(), self.mongo_url.clone()),
            ("ITEM_MONGODB_DATABASE".into(), self.mongo_db.clone()),
        ];
        if let Some(r) = &self.redis_url {
            env.push(("ITEM_REDIS_URL".into(), r.clone()));
        }
        env
    }

    /// Names, for the report (and for looking at the data after a failed run).
    pub fn describe(&self) -> String {
        format!(
            "PostgreSQL {}, MariaDB {}, MongoDB {} on {}",
            db_of(&self.user_db_url),
            db_of(&self.payment_db_url),
            self.mongo_db,
            self.mongo_server.describe()
        )
    }

    /// Drops the SQL databases; the run's own MongoDB server's storage goes with the server
    /// (on a shared server the database is left to the stack's throw-away data).
    pub async fn drop_all(&self) {
        self.mongo_server.discard_storage();
        for c in &self.created {
            let r: anyhow::Result<()> = async {
                match c {
                    Created::Postgres { base, name } => {
                        let mut pg = sqlx::PgConnection::connect(base).await?;
                        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .execute(&mut pg)
                            .await?;
                        pg.close().await.ok();
                    }
                    Created::Mysql { base, name } => {
                        let mut my = sqlx::MySqlConnection::connect(base).await?;
                        sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
                            .execute(&mut my)
                            .await?;
                        my.close().await.ok();
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = r {
                eprintln!("[crash] could not drop a test database: {e:#}");
            }
        }
    }
}

fn db_of(url: &str) -> &str {
    let head = url.split('?').next().unwrap_or(url);
    head.rsplit('/').next().unwrap_or(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_the_database_path() {
        assert_eq!(
            with_database("postgres://u:p@127.0.0.1:5432/shop_user", "x"),
            "postgres://u:p@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("mysql://u@h:3306/shop?ssl-mode=disabled", "y"),
            "mysql://u@h:3306/y?ssl-mode=disabled"
        );
        assert_eq!(db_of("mysql://u@h:3306/y?ssl-mode=disabled"), "y");
    }
}
