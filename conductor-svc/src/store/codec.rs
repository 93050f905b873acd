//! How Rust values become column values and back: timestamps as unix milliseconds, u64 counters as
//! BIGINT, lists and blocks as JSON text. One row-reading trait serves both backends.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use super::StoreError;

/// A list method's `limit` when the caller passes 0.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
/// The most rows one list call returns, whatever the caller asks for.
pub const MAX_LIST_LIMIT: u32 = 1000;

/// 0 → [`DEFAULT_LIST_LIMIT`], anything else capped at [`MAX_LIST_LIMIT`].
pub(crate) fn list_limit(limit: u32) -> i64 {
    i64::from(if limit == 0 { DEFAULT_LIST_LIMIT } else { limit.min(MAX_LIST_LIMIT) })
}

/// Unix milliseconds, negative before 1970, saturating far outside ±292 million years.
pub fn to_millis(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => {
            let before = before.duration();
            // Round towards minus infinity so that from_millis(to_millis(t)) <= t holds before 1970 too.
            let millis = before.as_millis() + u128::from(before.subsec_nanos() % 1_000_000 != 0);
            i64::try_from(millis).map(|millis| -millis).unwrap_or(i64::MIN)
        }
    }
}

/// The inverse of [`to_millis`].
pub fn from_millis(millis: i64) -> SystemTime {
    let magnitude = Duration::from_millis(millis.unsigned_abs());
    if millis >= 0 { UNIX_EPOCH + magnitude } else { UNIX_EPOCH - magnitude }
}

/// `time` as the store gives it back: truncated to the millisecond (timestamps are stored as
/// unix milliseconds). Useful for comparing a row read back with the row written.
pub fn truncate_to_millis(time: SystemTime) -> SystemTime {
    from_millis(to_millis(time))
}

pub(crate) fn u64_to_i64(field: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { field, value })
}

pub(crate) fn i64_to_u64(what: &'static str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt { what, message: format!("negative counter {value}") })
}

pub(crate) fn to_json<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|error| StoreError::Corrupt { what, message: format!("cannot encode as JSON: {error}") })
}

pub(crate) fn from_json<T: DeserializeOwned>(what: &'static str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|error| StoreError::Corrupt { what, message: format!("invalid JSON: {error}") })
}

/// Column access shared by [`SqliteRow`] and [`PgRow`], so every row decoder is written once.
pub(crate) trait StoreRow {
    fn text(&self, column: &'static str) -> Result<String, StoreError>;
    fn int(&self, column: &'static str) -> Result<i64, StoreError>;
    fn optional_int(&self, column: &'static str) -> Result<Option<i64>, StoreError>;
    fn real(&self, column: &'static str) -> Result<f64, StoreError>;

    fn time(&self, column: &'static str) -> Result<SystemTime, StoreError> {
        self.int(column).map(from_millis)
    }

    fn optional_time(&self, column: &'static str) -> Result<Option<SystemTime>, StoreError> {
        Ok(self.optional_int(column)?.map(from_millis))
    }

    fn counter(&self, column: &'static str) -> Result<u64, StoreError> {
        i64_to_u64(column, self.int(column)?)
    }
}

fn column_error(column: &'static str, error: sqlx::Error) -> StoreError {
    StoreError::Corrupt { what: column, message: error.to_string() }
}

macro_rules! impl_store_row {
    ($($row:ty),+) => {$(
        impl StoreRow for $row {
            fn text(&self, column: &'static str) -> Result<String, StoreError> {
                self.try_get(column).map_err(|error| column_error(column, error))
            }
            fn int(&self, column: &'static str) -> Result<i64, StoreError> {
                self.try_get(column).map_err(|error| column_error(column, error))
            }
            fn optional_int(&self, column: &'static str) -> Result<Option<i64>, StoreError> {
                self.try_get(column).map_err(|error| column_error(column, error))
            }
            fn real(&self, column: &'static str) -> Result<f64, StoreError> {
                self.try_get(column).map_err(|error| column_error(column, error))
            }
        }
    )+};
}

impl_store_row!(SqliteRow, PgRow);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_trip_truncates_towards_the_past() {
        let after = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(to_millis(after), 1_700_000_000_123);
        assert_eq!(truncate_to_millis(after), UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));

        let before = UNIX_EPOCH - Duration::new(5, 500_000);
        assert_eq!(to_millis(before), -5_001);
        assert!(truncate_to_millis(before) <= before);
        assert_eq!(from_millis(0), UNIX_EPOCH);
    }

    #[test]
    fn list_limits_default_and_cap() {
        assert_eq!(list_limit(0), 100);
        assert_eq!(list_limit(7), 7);
        assert_eq!(list_limit(50_000), 1000);
    }
}
