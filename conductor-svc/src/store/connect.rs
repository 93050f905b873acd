//! Opening a store: which backend a URL names, the connection options and pool bounds per
//! backend, and bringing the schema up to date.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};

use super::error::{redact_url, scrub};
use super::{Backend, Pool, StoreError};

/// Connections to a SQLite file. SQLite takes one writer at a time (others wait up to
/// [`SQLITE_BUSY_TIMEOUT`]); in WAL mode readers run beside it, which is what the extra connections are for.
const SQLITE_MAX_CONNECTIONS: u32 = 4;
/// How long a SQLite writer waits for another writer's lock before failing with "database is locked".
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections per conductor replica to PostgreSQL. Replicas share the server's `max_connections`
/// (100 by default), so ten replicas fit with room for operators.
const POSTGRES_MAX_CONNECTIONS: u32 = 10;
/// How long opening the store, or waiting for a free pooled connection, may take.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which backend a URL names, parsed into its connection options.
enum Target {
    /// `sqlite::memory:`: one connection, because the database lives exactly as long as its last connection.
    SqliteMemory(SqliteConnectOptions),
    SqliteFile(SqliteConnectOptions),
    Postgres(PgConnectOptions),
}

/// Held while a SQLite file store is opened and migrated: within this process (one conductor per
/// SQLite file) stores open one at a time.
static SQLITE_OPENING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(super) async fn open(url: &str) -> Result<Pool, StoreError> {
    match parse(url)? {
        Target::SqliteMemory(options) => {
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await
                .map_err(|error| connect_error(Backend::Sqlite, url, &error))?;
            migrate(Backend::Sqlite, url, &Pool::Sqlite(pool.clone())).await?;
            Ok(Pool::Sqlite(pool))
        }
        Target::SqliteFile(options) => {
            if let Some(parent) = options.get_filename().parent().filter(|parent| !parent.as_os_str().is_empty()) {
                create_directory(url, parent).await?;
            }
            // Opening sets the journal mode, which a file being migrated by another store refuses
            // at once ("database is locked", no busy wait): open and migrate one store at a time.
            let _one_at_a_time = SQLITE_OPENING.lock().await;
            let pool = SqlitePoolOptions::new()
                .max_connections(SQLITE_MAX_CONNECTIONS)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await
                .map_err(|error| connect_error(Backend::Sqlite, url, &error))?;
            let pool = Pool::Sqlite(pool);
            migrate(Backend::Sqlite, url, &pool).await?;
            Ok(pool)
        }
        Target::Postgres(options) => {
            // One direct connection first: the pool retries refused connections until its timeout and
            // then reports only "timed out", while this names the cause (refused, bad password, no database).
            let probe = tokio::time::timeout(ACQUIRE_TIMEOUT, options.connect())
                .await
                .map_err(|_| StoreError::Connect {
                    backend: Backend::Postgres.name(),
                    url: redact_url(url),
                    message: format!("no answer within {ACQUIRE_TIMEOUT:?}"),
                })?
                .map_err(|error| connect_error(Backend::Postgres, url, &error))?;
            let _ = probe.close().await;
            let pool = PgPoolOptions::new()
                .max_connections(POSTGRES_MAX_CONNECTIONS)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await
                .map_err(|error| connect_error(Backend::Postgres, url, &error))?;
            let pool = Pool::Postgres(pool);
            migrate(Backend::Postgres, url, &pool).await?;
            Ok(pool)
        }
    }
}

fn parse(url: &str) -> Result<Target, StoreError> {
    match url.split_once(':').map(|(scheme, _)| scheme) {
        Some("sqlite") => {
            let invalid = |message: String| StoreError::InvalidUrl {
                backend: Backend::Sqlite.name(),
                url: redact_url(url),
                message,
            };
            let options =
                SqliteConnectOptions::from_str(url).map_err(|error| invalid(scrub(&error.to_string(), url)))?;
            if url.contains(":memory:") || url.contains("mode=memory") {
                return Ok(Target::SqliteMemory(options.foreign_keys(true)));
            }
            if options.get_filename().as_os_str().is_empty() {
                return Err(invalid("no file path (use sqlite://<path>, e.g. sqlite://.studio/conductor.db)".into()));
            }
            Ok(Target::SqliteFile(
                options
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // With WAL, NORMAL loses at most the last transactions on power loss, never integrity.
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT)
                    .foreign_keys(true),
            ))
        }
        Some("postgres" | "postgresql") => {
            let options = PgConnectOptions::from_str(url).map_err(|error| StoreError::InvalidUrl {
                backend: Backend::Postgres.name(),
                url: redact_url(url),
                message: scrub(&error.to_string(), url),
            })?;
            Ok(Target::Postgres(options.application_name("conductor-svc")))
        }
        _ => Err(StoreError::UnsupportedUrl { url: redact_url(url) }),
    }
}

async fn create_directory(url: &str, directory: &Path) -> Result<(), StoreError> {
    tokio::fs::create_dir_all(directory).await.map_err(|error| StoreError::InvalidUrl {
        backend: Backend::Sqlite.name(),
        url: redact_url(url),
        message: format!("cannot create directory {}: {error}", directory.display()),
    })
}

async fn migrate(backend: Backend, url: &str, pool: &Pool) -> Result<(), StoreError> {
    let mut migrator = match backend {
        Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("migrations/postgres"),
    };
    // Replicas are upgraded one at a time: an older replica must still start against a schema a newer
    // one has migrated. Migrations are therefore additive only (new tables, new nullable/defaulted columns).
    migrator.set_ignore_missing(true);
    let result = match pool {
        // sqlx takes no lock on SQLite: two stores opening one new file at once would both apply the
        // first migration. `open` serialises file stores (SQLITE_OPENING); in-memory ones are private.
        Pool::Sqlite(pool) => migrator.run(pool).await,
        // Concurrent replicas serialise here: sqlx holds a PostgreSQL advisory lock while migrating.
        Pool::Postgres(pool) => migrator.run(pool).await,
    };
    result.map_err(|error| StoreError::Migrate {
        backend: backend.name(),
        url: redact_url(url),
        message: scrub(&error.to_string(), url),
    })
}

fn connect_error(backend: Backend, url: &str, error: &sqlx::Error) -> StoreError {
    StoreError::Connect { backend: backend.name(), url: redact_url(url), message: scrub(&error.to_string(), url) }
}
