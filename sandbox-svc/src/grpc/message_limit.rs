//! The message-size bound reported the way every other bound is.
//!
//! tonic rejects an oversize request while decoding it, as `OUT_OF_RANGE` with its own wording,
//! before any handler runs. The contract says a bound gives `RESOURCE_EXHAUSTED` naming it, so
//! this response mapper rewrites exactly that status (it arrives trailers-only, in the headers).

use http::HeaderValue;

/// Rewrites tonic's decode-limit status; every other response passes untouched.
pub fn report_as_resource_exhausted<B>(mut response: http::Response<B>, limit: usize) -> http::Response<B> {
    let headers = response.headers_mut();
    let is_out_of_range = headers.get("grpc-status").is_some_and(|s| s == "11");
    let is_size_limit = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| m.contains("message length too large") || m.contains("message%20length%20too%20large"));
    if is_out_of_range && is_size_limit {
        let message =
            format!("message size limit: the request is larger than {limit} bytes (SANDBOX_MAX_MESSAGE_BYTES)");
        headers.insert("grpc-status", HeaderValue::from_static("8"));
        if let Ok(value) = HeaderValue::from_str(&message.replace(' ', "%20")) {
            headers.insert("grpc-message", value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: &str, message: &str) -> http::Response<()> {
        let mut response = http::Response::new(());
        response.headers_mut().insert("grpc-status", HeaderValue::from_str(status).unwrap());
        response.headers_mut().insert("grpc-message", HeaderValue::from_str(message).unwrap());
        response
    }

    #[test]
    fn only_the_decode_limit_is_rewritten() {
        let rewritten = report_as_resource_exhausted(
            response("11", "Error,%20decoded%20message%20length%20too%20large:%20found%20100%20bytes"),
            64,
        );
        assert_eq!(rewritten.headers()["grpc-status"], "8");
        assert!(rewritten.headers()["grpc-message"].to_str().unwrap().contains("SANDBOX_MAX_MESSAGE_BYTES"));
        let other = report_as_resource_exhausted(response("11", "seq%20out%20of%20range"), 64);
        assert_eq!(other.headers()["grpc-status"], "11");
        let ok = report_as_resource_exhausted(http::Response::new(()), 64);
        assert!(ok.headers().get("grpc-status").is_none());
    }
}
