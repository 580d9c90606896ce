//! Throw-away SQL databases on the stack's PostgreSQL and MariaDB servers.

use sqlx::Connection;

use crate::{database_name, env};

/// A database created for one test.
#[derive(Debug, Clone)]
pub struct FreshDatabase {
    /// Its URL: the stack's URL with the database path replaced.
    pub url: String,
    /// Its name (`shop_<service>_t<12 hex>`).
    pub name: String,
}

/// Creates a database for `service` on the stack's PostgreSQL (`USER_DATABASE_URL`).
#[cfg(feature = "postgres")]
pub async fn fresh_postgres(service: &str) -> FreshDatabase {
    let base = env("USER_DATABASE_URL");
    let name = database_name(service);
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .expect("connect to the stack's PostgreSQL (USER_DATABASE_URL)");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create the test database");
    conn.close().await.ok();
    FreshDatabase {
        url: with_database(&base, &name),
        name,
    }
}

/// Creates a database for `service` on the stack's MariaDB (`PAYMENT_DATABASE_URL`).
#[cfg(feature = "mysql")]
pub async fn fresh_mysql(service: &str) -> FreshDatabase {
    let base = env("PAYMENT_DATABASE_URL");
    let name = database_name(service);
    let mut conn = sqlx::MySqlConnection::connect(&base)
        .await
        .expect("connect to the stack's MariaDB (PAYMENT_DATABASE_URL)");
    sqlx::query(&format!("CREATE DATABASE `{name}`"))
        .execute(&mut conn)
        .await
        .expect("create the test database");
    conn.close().await.ok();
    FreshDatabase {
        url: with_database(&base, &name),
        name,
    }
}

/// Drops a database made by [`fresh_mysql`].
#[cfg(feature = "mysql")]
pub async fn drop_mysql(name: &str) {
    let mut conn = sqlx::MySqlConnection::connect(&env("PAYMENT_DATABASE_URL"))
        .await
        .expect("connect to the stack's MariaDB to drop a test database");
    sqlx::query(&format!("DROP DATABASE `{name}`"))
        .execute(&mut conn)
        .await
        .expect("drop the test database");
    conn.close().await.ok();
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

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_only_the_database_path() {
        assert_eq!(
            with_database("postgres://u:p@127.0.0.1:5432/shop_user", "shop_user_t0"),
            "postgres://u:p@127.0.0.1:5432/shop_user_t0"
        );
        assert_eq!(
            with_database("mysql://u@h:3306/shop?ssl-mode=disabled", "shop_payment_t0"),
            "mysql://u@h:3306/shop_payment_t0?ssl-mode=disabled"
        );
        assert_eq!(
            with_database("mysql://u@h:3306", "shop_payment_t0"),
            "mysql://u@h:3306/shop_payment_t0"
        );
    }
}
