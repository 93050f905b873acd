//! Durable state (conversations, messages, workers, memories, capabilities, audit log) over
//! SQLite (a file in the data dir, the default) or PostgreSQL (`postgres://…`, shared by replicas).
//!
//! [`Store`] is one concrete type for both backends: each method's SQL is written once (numbered
//! `$1` placeholders work in both) and runs on whichever pool the URL opened. Everything a
//! concurrent writer could race on is decided inside the database (counters incremented in SQL,
//! `last_seq` raised with a SQL maximum), so several handles, or several conductor replicas on one
//! PostgreSQL database, stay consistent.
//!
//! Stored forms: timestamps as BIGINT unix milliseconds (rows come back truncated to the
//! millisecond, see [`truncate_to_millis`]), u64 counters as BIGINT, lists and message blocks as JSON
//! text. The schema lives in `migrations/sqlite` and `migrations/postgres` and is applied by
//! [`Store::connect`].
//!
//! PostgreSQL connections are plain TCP: sqlx is built without a TLS feature, so `sslmode=require`
//! fails with a clear error. Managed PostgreSQL that insists on TLS needs sqlx's
//! `tls-rustls-aws-lc-rs` (or `tls-rustls-ring`) feature in the workspace.

mod audit;
mod changes;
mod codec;
mod connect;
mod conversations;
mod error;
mod memories;
pub mod model;
mod workers;

pub use codec::{DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, from_millis, to_millis, truncate_to_millis};
pub use error::StoreError;
pub use model::*;

/// Runs `$body` with `$pool` bound to the concrete pool (`&SqlitePool` or `&PgPool`): the body is
/// written once and type-checked once per backend.
macro_rules! with_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Sqlite($pool) => $body,
            $crate::store::Pool::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// Conductor state over SQLite or PostgreSQL. Cheap to clone (clones share one connection pool).
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    backend: Backend,
    /// The URL it was opened with, password redacted: for `Debug` and logs.
    redacted_url: String,
}

#[derive(Clone)]
enum Pool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// How a transaction that writes begins. SQLite's default `BEGIN` is deferred: two such
    /// transactions that both read first can deadlock on the upgrade to a write lock and fail at once
    /// with "database is locked"; `BEGIN IMMEDIATE` takes the write lock up front and waits for it
    /// (up to the busy timeout) instead.
    fn begin_write(self) -> &'static str {
        match self {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store at `url` and brings its schema up to date.
    ///
    /// - `sqlite://path/to/file.db` (relative to the working directory; `sqlite:///abs/path.db` for
    ///   an absolute path): the file and its directory are created if missing; WAL journal, a busy
    ///   timeout, foreign keys on.
    /// - `sqlite::memory:`: a private in-memory database, gone when the last clone is dropped (tests).
    /// - `postgres://user:password@host:port/database` (or `postgresql://`): the database must exist.
    ///   Several conductor replicas may share it; migrations are serialised by an advisory lock.
    ///
    /// Errors name the accepted schemes for any other URL, and never contain the URL's password.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let pool = connect::open(url).await?;
        let backend = match pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        };
        Ok(Store { pool, backend, redacted_url: error::redact_url(url) })
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        self.backend.name()
    }

    /// Closes every pooled connection (for all clones) and waits until they are closed. Calls on a
    /// closed store fail with an "attempted to acquire a connection on a closed pool" error.
    pub async fn close(&self) {
        with_pool!(self, |pool| pool.close().await)
    }

    fn database_error(&self, source: sqlx::Error) -> StoreError {
        StoreError::Database { backend: self.backend.name(), source }
    }

    /// Maps a unique-key violation to [`StoreError::AlreadyExists`], anything else to a database error.
    fn insert_error(&self, what: &'static str, id: &str, source: sqlx::Error) -> StoreError {
        match &source {
            sqlx::Error::Database(database_error) if database_error.is_unique_violation() => {
                StoreError::AlreadyExists { what, id: id.to_string() }
            }
            _ => self.database_error(source),
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend.name()).field("url", &self.redacted_url).finish()
    }
}
