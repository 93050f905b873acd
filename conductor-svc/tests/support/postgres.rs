//! A fresh PostgreSQL database per test, so tests run in parallel and leave nothing behind.
//!
//! Include it from any test file with
//! `#[path = "support/postgres.rs"] mod postgres;` and call
//! `let database = postgres::FreshDatabase::create().await;` then use `database.url()`. The
//! database is dropped when `database` is (also when the test panics).
//!
//! The server comes from `CONDUCTOR_TEST_POSTGRES_URL` (default
//! `postgres://studio:studio@127.0.0.1:5432/postgres`); its role needs `CREATEDB`. `bash .ci/run`
//! installs and starts such a server. An unreachable server fails the test: it is never skipped.

#![allow(dead_code)]

use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};

pub const URL_VARIABLE: &str = "CONDUCTOR_TEST_POSTGRES_URL";
pub const DEFAULT_URL: &str = "postgres://studio:studio@127.0.0.1:5432/postgres";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A database `t_<uuid>` created for one test and dropped with this value.
pub struct FreshDatabase {
    name: String,
    url: String,
    admin_url: String,
}

impl FreshDatabase {
    /// Creates the database; panics, saying how to get a server, when none answers.
    pub async fn create() -> FreshDatabase {
        let admin_url = std::env::var(URL_VARIABLE).unwrap_or_else(|_| DEFAULT_URL.to_string());
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = admin_connection(&admin_url).await;
        admin.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.unwrap_or_else(|error| {
            panic!("creating test database {name} failed (does the role have CREATEDB?): {error}")
        });
        let _ = admin.close().await;
        let url = with_database(&admin_url, &name);
        FreshDatabase { name, url, admin_url }
    }

    /// `postgres://…/t_<uuid>`: the fresh database on the test server.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        // Drop cannot await: drop the database from a thread with its own runtime.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            runtime.block_on(drop_database(&admin_url, &name))
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("warning: dropping test database {} failed: {error}", self.name);
        }
    }
}

/// Ends the connections a store under test may still hold, then drops the database. Not `DROP
/// DATABASE … WITH (FORCE)`: for a role without superuser it fails outright when an autovacuum worker
/// happens to be in the database, while a plain `DROP DATABASE` waits (up to 5 s) for autovacuum to leave.
async fn drop_database(admin_url: &str, name: &str) -> Result<(), sqlx::Error> {
    let mut admin = PgConnection::connect(admin_url).await?;
    let mut result = Ok(());
    for _attempt in 0..3 {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND usename = current_user AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .execute(&mut admin)
        .await?;
        result = admin.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).await.map(drop);
        if result.is_ok() {
            break;
        }
    }
    let _ = admin.close().await;
    result
}

async fn admin_connection(admin_url: &str) -> PgConnection {
    let help = format!(
        "PostgreSQL for tests is not reachable at {shown} ({URL_VARIABLE}{unset}). Run `bash .ci/run` \
         (installs and starts PostgreSQL with role studio/studio) or set {URL_VARIABLE} to a server whose \
         role may CREATE DATABASE",
        shown = redact(admin_url),
        unset = if std::env::var_os(URL_VARIABLE).is_some() { "" } else { " unset, using the default" },
    );
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(admin_url)).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => panic!("{help}: {error}"),
        Err(_) => panic!("{help}: no answer within {CONNECT_TIMEOUT:?}"),
    }
}

/// `url` with its path (the database name) replaced by `database`, query kept.
fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("postgres URL has a scheme");
    let (authority_and_path, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority = authority_and_path.split('/').next().unwrap_or("");
    match query {
        Some(query) => format!("{scheme}://{authority}/{database}?{query}"),
        None => format!("{scheme}://{authority}/{database}"),
    }
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(_)) => {
            let (userinfo, host) = rest.rsplit_once('@').unwrap_or(("", rest));
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_string(),
    }
}
