//! A string that never prints: `Debug` and `Display` show `[redacted]`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A secret from the environment or a flag. Read it with [`SecretString::expose`], on purpose.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> SecretString {
        SecretString(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl FromStr for SecretString {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretString(s.to_owned()))
    }
}

/// A `*_FILE` secret that could not be used. Never carries the file's content.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: cannot read secret file {path}: {reason}")]
pub struct SecretFileError {
    pub variable: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

/// Settles one secret from its variable and its `*_FILE` companion: an empty value counts as
/// unset (`GITHUB_TOKEN=` in a compose file), and a file, when given, takes precedence (trailing
/// newline trimmed; an empty file is an error). Reading twice is harmless.
pub fn resolve_secret(
    variable: &'static str,
    file: Option<&Path>,
    value: &mut Option<SecretString>,
) -> Result<(), SecretFileError> {
    if value.as_ref().is_some_and(|v| v.expose().is_empty()) {
        *value = None;
    }
    let Some(path) = file else { return Ok(()) };
    let error = |reason: String| SecretFileError { variable, path: path.to_owned(), reason };
    let content = std::fs::read_to_string(path).map_err(|e| error(e.kind().to_string()))?;
    let secret = content.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(error("the file is empty".into()));
    }
    *value = Some(SecretString::new(secret));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = SecretString::new("ghp_supersecretvalue");
        assert_eq!(format!("{secret:?} {secret}"), "[redacted] [redacted]");
        assert_eq!(secret.expose(), "ghp_supersecretvalue");
    }
}
