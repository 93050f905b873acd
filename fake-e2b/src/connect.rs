//! The Connect protocol as envd speaks it over HTTP/1.1 with the JSON codec: envelopes for
//! server streams, bare JSON for unary calls, and Connect error bodies with their HTTP statuses.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde_json::json;

/// Envelope flag: the payload is the end-of-stream message (always JSON).
pub(crate) const FLAG_END_STREAM: u8 = 0x02;
/// Envelope flag: the payload is compressed with `Connect-Content-Encoding` (unsupported here).
pub(crate) const FLAG_COMPRESSED: u8 = 0x01;

pub(crate) const STREAM_CONTENT_TYPE: &str = "application/connect+json";
pub(crate) const UNARY_CONTENT_TYPE: &str = "application/json";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Code {
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    Unimplemented,
    Internal,
    Unauthenticated,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status a unary error carries, per the Connect protocol's table.
    pub fn http_status(self) -> StatusCode {
        match self {
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ConnectError {
    pub code: Code,
    pub message: String,
}

impl ConnectError {
    pub fn new(code: Code, message: impl Into<String>) -> ConnectError {
        ConnectError { code, message: message.into() }
    }

    fn body(&self) -> serde_json::Value {
        json!({"code": self.code.as_str(), "message": self.message})
    }

    /// The end-of-stream envelope that ends a server stream with this error.
    pub fn end_stream_frame(&self) -> Bytes {
        envelope(FLAG_END_STREAM, &json!({"error": self.body()}))
    }
}

impl IntoResponse for ConnectError {
    /// A unary error: the mapped status and a JSON body with the code's name.
    fn into_response(self) -> Response {
        (self.code.http_status(), [(header::CONTENT_TYPE, UNARY_CONTENT_TYPE)], self.body().to_string()).into_response()
    }
}

/// One envelope: flags, the payload length as u32 big-endian, then the JSON payload.
pub(crate) fn envelope(flags: u8, message: &serde_json::Value) -> Bytes {
    let payload = message.to_string();
    let mut frame = BytesMut::with_capacity(5 + payload.len());
    frame.put_u8(flags);
    frame.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    frame.put_slice(payload.as_bytes());
    frame.freeze()
}

/// The successful end of a stream.
pub(crate) fn end_stream_ok() -> Bytes {
    envelope(FLAG_END_STREAM, &json!({}))
}

/// Decodes the single request envelope of a server-streaming call into its message.
pub(crate) fn decode_request_envelope<T: DeserializeOwned>(body: &[u8], type_name: &str) -> Result<T, ConnectError> {
    if body.len() < 5 {
        return Err(ConnectError::new(Code::InvalidArgument, "protocol error: incomplete envelope"));
    }
    let flags = body[0];
    if flags & FLAG_COMPRESSED != 0 {
        return Err(ConnectError::new(
            Code::Internal,
            "protocol error: sent compressed message without compression support",
        ));
    }
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let payload = &body[5..];
    if payload.len() != length {
        return Err(ConnectError::new(
            Code::InvalidArgument,
            format!("protocol error: promised {length} bytes in enveloped message, got {} bytes", payload.len()),
        ));
    }
    decode_message(payload, type_name)
}

/// Decodes a bare JSON message, mapping failures as connect-go does.
pub(crate) fn decode_message<T: DeserializeOwned>(payload: &[u8], type_name: &str) -> Result<T, ConnectError> {
    let payload = if payload.is_empty() { b"{}".as_slice() } else { payload };
    serde_json::from_slice(payload)
        .map_err(|error| ConnectError::new(Code::InvalidArgument, format!("unmarshal into {type_name}: {error}")))
}

fn content_type(headers: &HeaderMap) -> String {
    let value = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    value.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// `None` when the request's content type fits the call; otherwise the 415 connect-go answers.
pub(crate) fn reject_content_type(headers: &HeaderMap, expected: &str) -> Option<Response> {
    if content_type(headers) == expected {
        return None;
    }
    let mut response = StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
    response.headers_mut().insert("accept-post", HeaderValue::from_static("application/json, application/proto"));
    Some(response)
}

/// Response for a successful unary call.
pub(crate) fn unary_ok(message: serde_json::Value) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, UNARY_CONTENT_TYPE)], message.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_carry_flags_and_big_endian_length() {
        let frame = envelope(0, &json!({"a": 1}));
        assert_eq!(&frame[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(&frame[5..], br#"{"a":1}"#);
        assert_eq!(end_stream_ok()[0], FLAG_END_STREAM);
    }

    #[test]
    fn request_envelopes_round_trip_and_reject_lies() {
        let frame = envelope(0, &json!({"x": "y"}));
        let value: serde_json::Value = decode_request_envelope(&frame, "T").unwrap();
        assert_eq!(value, json!({"x": "y"}));
        let error = decode_request_envelope::<serde_json::Value>(&frame[..frame.len() - 1], "T").unwrap_err();
        assert_eq!(error.code, Code::InvalidArgument);
    }
}
