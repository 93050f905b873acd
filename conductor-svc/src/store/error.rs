//! What can go wrong in the store. Messages never carry a password from the store URL: URLs are
//! shown redacted and driver text from connecting or migrating is scrubbed of the password.

/// An error from [`super::Store`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no backend the store speaks.
    #[error(
        "unsupported store URL {url:?}: expected sqlite://<path> (e.g. sqlite://.studio/conductor.db), \
         sqlite::memory:, postgres://… or postgresql://…"
    )]
    UnsupportedUrl { url: String },

    /// The URL names a backend but cannot be parsed or prepared (e.g. its directory cannot be created).
    #[error("invalid {backend} store URL {url:?}: {message}")]
    InvalidUrl { backend: &'static str, url: String, message: String },

    /// The database did not accept a connection.
    #[error("cannot connect to the {backend} store at {url}: {message}")]
    Connect { backend: &'static str, url: String, message: String },

    /// The schema could not be brought up to date.
    #[error("migrating the {backend} store at {url} failed: {message}")]
    Migrate { backend: &'static str, url: String, message: String },

    /// The row an operation needs does not exist.
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },

    /// A row with this id exists already.
    #[error("{what} {id:?} already exists")]
    AlreadyExists { what: &'static str, id: String },

    /// A value does not fit its column (u64 counters are stored as signed 64-bit integers).
    #[error("{field} = {value} is too large for the store (at most {max})", max = i64::MAX)]
    OutOfRange { field: &'static str, value: u64 },

    /// A stored value cannot be turned back into its Rust type (hand-edited rows, a newer schema).
    #[error("stored {what} cannot be read: {message}")]
    Corrupt { what: &'static str, message: String },

    /// Any other failure of a query: the database went away, a lock timed out, ….
    #[error("{backend} store query failed: {source}")]
    Database {
        backend: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

impl StoreError {
    /// True for failures that may pass when retried (connection lost, pool exhausted, lock timeouts):
    /// callers map these to `UNAVAILABLE`.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Connect { .. } => true,
            StoreError::Database { source, .. } => {
                matches!(
                    source,
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::WorkerCrashed
                ) || is_busy(source)
            }
            _ => false,
        }
    }
}

/// SQLite's "database is locked" (`SQLITE_BUSY` and its extended codes) after the busy timeout, or Postgres'
/// serialization / deadlock failures: contention, not a defect.
fn is_busy(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(database_error) = error else {
        return false;
    };
    matches!(database_error.code().as_deref(), Some("5" | "261" | "517" | "773" | "40001" | "40P01"))
}

/// `url` with the password (userinfo or `password=` query parameter) replaced by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return scrub(url, url);
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| if pair.starts_with("password=") { "password=***".to_string() } else { pair.to_string() })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// `text` with every password found in `url` replaced by `***` (for driver error messages).
pub(crate) fn scrub(text: &str, url: &str) -> String {
    let mut scrubbed = text.to_string();
    for password in url_passwords(url) {
        scrubbed = scrubbed.replace(&password, "***");
    }
    scrubbed
}

/// The passwords a URL carries, raw as written (they may be percent-encoded; drivers decode them,
/// so the decoded form is returned as well).
fn url_passwords(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && let Some((_, password)) = userinfo.split_once(':')
        {
            found.push(password.to_string());
        }
    }
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split(['&', '#']) {
            if let Some(password) = pair.strip_prefix("password=") {
                found.push(password.to_string());
            }
        }
    }
    let decoded: Vec<String> = found.iter().map(|password| percent_decode(password)).collect();
    found.extend(decoded);
    found.retain(|password| !password.is_empty());
    found.sort_by_key(|password| std::cmp::Reverse(password.len()));
    found.dedup();
    found
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && index + 2 < bytes.len()
            && let Some(byte) =
                std::str::from_utf8(&bytes[index + 1..index + 3]).ok().and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_userinfo_and_query_passwords() {
        assert_eq!(redact_url("postgres://studio:hunter2@db:5432/stu"), "postgres://studio:***@db:5432/stu");
        assert_eq!(redact_url("postgres://db/stu?user=a&password=s3cret"), "postgres://db/stu?user=a&password=***");
        assert_eq!(redact_url("postgres://studio:p%40ss@db/stu"), "postgres://studio:***@db/stu");
        assert_eq!(redact_url("sqlite://.studio/conductor.db"), "sqlite://.studio/conductor.db");
        assert_eq!(redact_url("postgres://studio:studio@db/studio"), "postgres://studio:***@db/studio");
        assert_eq!(redact_url("postgres://studio@db/stu"), "postgres://studio@db/stu");
        assert_eq!(scrub("auth failed for p@ss", "postgres://studio:p%40ss@db/stu"), "auth failed for ***");
    }
}
