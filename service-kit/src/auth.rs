//! Bearer-token check for every RPC except health.

use tonic::{Request, Status};

use crate::secret::SecretString;

/// A tonic interceptor: `authorization: Bearer <token>` must match, compared in constant time.
/// With no token configured (loopback only, enforced at startup) every call passes.
#[derive(Clone)]
pub struct BearerAuth {
    expected: Option<Vec<u8>>,
}

impl BearerAuth {
    pub fn new(token: Option<&SecretString>) -> BearerAuth {
        BearerAuth { expected: token.map(|t| format!("Bearer {}", t.expose()).into_bytes()) }
    }

    pub fn check<T>(&self, request: Request<T>) -> Result<Request<T>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let Some(presented) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated("missing `authorization: Bearer <token>` metadata"));
        };
        if !constant_time_eq(presented.as_bytes(), expected) {
            return Err(Status::unauthenticated("invalid bearer token"));
        }
        Ok(request)
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(request)
    }
}

/// A fresh random token (122 bits), written owner-only to `path`.
pub fn generate_token_file(path: &std::path::Path) -> anyhow::Result<SecretString> {
    use anyhow::Context;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write the generated auth token to {}", path.display()))?;
    writeln!(file, "{token}")?;
    Ok(SecretString::new(token))
}

/// Compares without an early exit, so timing reveals at most the length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(header: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = header {
            request.metadata_mut().insert("authorization", value.parse().unwrap());
        }
        request
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let auth = BearerAuth::new(Some(&SecretString::new("0123456789abcdef")));
        assert!(auth.check(request(Some("Bearer 0123456789abcdef"))).is_ok());
        for bad in [None, Some("Bearer 0123456789abcdeX"), Some("0123456789abcdef"), Some("Bearer ")] {
            let status = auth.check(request(bad)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        assert!(BearerAuth::new(None).check(request(None)).is_ok());
    }
}
