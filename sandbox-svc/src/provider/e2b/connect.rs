//! The Connect protocol (connectrpc.com/docs/protocol) as envd speaks it: the JSON codec over
//! HTTP/1.1, no compression.
//!
//! Unary calls carry one bare JSON message each way and fail with a non-200 status and a
//! `{"code","message"}` body. Server streams answer 200 and then a run of envelopes, each a
//! 5-byte prefix (flags, big-endian length) and one message; the last one has the end-of-stream
//! flag and carries the call's error, if any. A body that stops without that envelope is a cut
//! connection, not a clean end: the caller must tell the two apart.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::http::{error_chain, read_limited};

/// Envelope flag: the payload is compressed (we never negotiate compression).
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Envelope flag: the end-of-stream message, always JSON, always last.
pub const FLAG_END_STREAM: u8 = 0x02;
const PREFIX_LEN: usize = 5;

/// Largest envelope payload accepted. envd sends output in chunks of at most 32 KiB (about
/// 44 KiB once base64'd into JSON); a length prefix near this bound is a broken or hostile
/// peer, and without a bound one prefix could make us buffer 4 GiB.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// Largest unary response body read (envd's `List` of many processes is the biggest).
pub const MAX_UNARY_BODY_BYTES: usize = 4 << 20;
/// How much of an error body is kept: enough for any Connect or edge error message.
pub const MAX_ERROR_BODY_BYTES: usize = 16 << 10;

pub const CONTENT_TYPE_UNARY: &str = "application/json";
pub const CONTENT_TYPE_STREAM: &str = "application/connect+json";

/// One envelope as it goes on the wire.
pub fn encode_envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(PREFIX_LEN + payload.len());
    out.put_u8(flags);
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
    out.freeze()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub flags: u8,
    pub payload: Bytes,
}

impl Frame {
    pub fn is_end_stream(&self) -> bool {
        self.flags & FLAG_END_STREAM != 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("envelope of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("compressed envelope, but no compression was negotiated")]
    Compressed,
}

/// Splits a byte stream into envelopes. Between calls it holds at most one partial envelope
/// (at most `max_frame + 5` bytes, checked as soon as a prefix is readable) plus the rest of the
/// last network read.
pub struct EnvelopeDecoder {
    buf: BytesMut,
    max_frame: usize,
}

impl EnvelopeDecoder {
    pub fn new(max_frame: usize) -> EnvelopeDecoder {
        EnvelopeDecoder { buf: BytesMut::new(), max_frame }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete envelope, `None` until more bytes arrive.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < PREFIX_LEN {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max_frame {
            return Err(FrameError::TooLarge(len));
        }
        if flags & FLAG_COMPRESSED != 0 {
            return Err(FrameError::Compressed);
        }
        if self.buf.len() < PREFIX_LEN + len {
            // Reserve once, so a large envelope arriving in many reads is not copied repeatedly.
            self.buf.reserve(PREFIX_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(PREFIX_LEN);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Frame { flags, payload }))
    }

    /// Bytes received that do not yet form an envelope.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// Connect's error codes (the gRPC set, snake_case on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    /// The code named `name`; names this client does not know are `Unknown`, as the spec says.
    pub fn from_name(name: &str) -> Code {
        match name {
            "canceled" => Code::Canceled,
            "invalid_argument" => Code::InvalidArgument,
            "deadline_exceeded" => Code::DeadlineExceeded,
            "not_found" => Code::NotFound,
            "already_exists" => Code::AlreadyExists,
            "permission_denied" => Code::PermissionDenied,
            "resource_exhausted" => Code::ResourceExhausted,
            "failed_precondition" => Code::FailedPrecondition,
            "aborted" => Code::Aborted,
            "out_of_range" => Code::OutOfRange,
            "unimplemented" => Code::Unimplemented,
            "internal" => Code::Internal,
            "unavailable" => Code::Unavailable,
            "data_loss" => Code::DataLoss,
            "unauthenticated" => Code::Unauthenticated,
            _ => Code::Unknown,
        }
    }

    /// The code a non-Connect HTTP failure (an edge 502, envd's own 401 body) stands for,
    /// per the protocol's table.
    pub fn from_http_status(status: u16) -> Code {
        match status {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502 | 503 | 504 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }
}

/// A failed Connect call: the code, the peer's message, and the HTTP status when the failure
/// came as one (an edge 502 "sandbox not found" means something else than an envd error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.name())]
pub struct ConnectError {
    pub code: Code,
    pub message: String,
    pub http_status: Option<u16>,
}

impl ConnectError {
    pub fn new(code: Code, message: impl Into<String>) -> ConnectError {
        ConnectError { code, message: message.into(), http_status: None }
    }

    /// From a non-200 response: a Connect error body when there is one (`code` a string),
    /// else the status table with whatever text the body held.
    pub fn from_http(status: u16, body: &[u8]) -> ConnectError {
        #[derive(serde::Deserialize)]
        struct Body {
            #[serde(default)]
            code: serde_json::Value,
            #[serde(default)]
            message: String,
        }
        let parsed = serde_json::from_slice::<Body>(body).ok();
        let (code, message) = match parsed {
            Some(Body { code: serde_json::Value::String(name), message }) => (Code::from_name(&name), message),
            Some(Body { message, .. }) if !message.is_empty() => (Code::from_http_status(status), message),
            _ => (Code::from_http_status(status), String::from_utf8_lossy(body).trim().to_owned()),
        };
        let message = if message.is_empty() { format!("HTTP {status}") } else { message };
        ConnectError { code, message, http_status: Some(status) }
    }

    /// The error an end-of-stream envelope carries, if any. `{}` (or metadata only) is success.
    pub fn from_end_stream(payload: &[u8]) -> Option<ConnectError> {
        #[derive(serde::Deserialize)]
        struct EndStream {
            #[serde(default)]
            error: Option<ErrorBody>,
        }
        #[derive(serde::Deserialize)]
        struct ErrorBody {
            #[serde(default)]
            code: String,
            #[serde(default)]
            message: String,
        }
        if payload.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        match serde_json::from_slice::<EndStream>(payload) {
            Ok(EndStream { error: None }) => None,
            Ok(EndStream { error: Some(error) }) => {
                Some(ConnectError::new(Code::from_name(&error.code), error.message))
            }
            Err(error) => Some(ConnectError::new(Code::Internal, format!("unreadable end-of-stream message: {error}"))),
        }
    }
}

/// Sends one unary call. `request` already carries the URL and headers.
pub async fn unary<Req: Serialize, Resp: DeserializeOwned>(
    request: reqwest::RequestBuilder,
    message: &Req,
    timeout: Duration,
) -> Result<Resp, ConnectError> {
    let body = serde_json::to_vec(message).map_err(|e| ConnectError::new(Code::Internal, e.to_string()))?;
    let response = request
        .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE_UNARY)
        .header("connect-protocol-version", "1")
        .header("connect-timeout-ms", timeout.as_millis().to_string())
        .timeout(timeout)
        .body(body)
        .send()
        .await
        .map_err(transport_error)?;
    let status = response.status().as_u16();
    if status != 200 {
        let body = read_limited(response, MAX_ERROR_BODY_BYTES).await.unwrap_or_default();
        return Err(ConnectError::from_http(status, &body));
    }
    let body =
        read_limited(response, MAX_UNARY_BODY_BYTES).await.map_err(|e| ConnectError::new(Code::Unavailable, e))?;
    serde_json::from_slice(&body).map_err(|e| ConnectError::new(Code::Internal, format!("unreadable response: {e}")))
}

/// Opens a server stream: sends the one request envelope and checks the HTTP answer.
/// `request` carries the URL and headers (a `connect-timeout-ms` included, if wanted); no
/// total timeout is set here, since a stream lives as long as its process.
pub async fn open_stream<Req: Serialize>(
    request: reqwest::RequestBuilder,
    message: &Req,
    idle_timeout: Duration,
) -> Result<ServerStream, ConnectError> {
    let payload = serde_json::to_vec(message).map_err(|e| ConnectError::new(Code::Internal, e.to_string()))?;
    let response = request
        .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE_STREAM)
        .header("connect-protocol-version", "1")
        .body(encode_envelope(0, &payload))
        .send()
        .await
        .map_err(transport_error)?;
    let status = response.status().as_u16();
    if status != 200 {
        let body = read_limited(response, MAX_ERROR_BODY_BYTES).await.unwrap_or_default();
        return Err(ConnectError::from_http(status, &body));
    }
    Ok(ServerStream {
        body: Box::pin(response.bytes_stream()),
        decoder: EnvelopeDecoder::new(MAX_FRAME_BYTES),
        idle_timeout,
        finished: false,
    })
}

fn transport_error(error: reqwest::Error) -> ConnectError {
    let code = if error.is_timeout() { Code::DeadlineExceeded } else { Code::Unavailable };
    ConnectError::new(code, error_chain(&error))
}

/// Why a server stream stopped without a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The end-of-stream envelope carried an error: the call failed.
    #[error("{0}")]
    Failed(ConnectError),
    /// The body ended, broke or went silent before the end-of-stream envelope: the connection
    /// was cut, the call itself may still be going on at the other end.
    #[error("stream cut: {0}")]
    Cut(String),
    /// The peer sent something that is not the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
}

type BodyStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The response side of a server stream.
pub struct ServerStream {
    body: BodyStream,
    decoder: EnvelopeDecoder,
    /// Longest silence tolerated between two reads (envd sends keepalives more often).
    idle_timeout: Duration,
    finished: bool,
}

impl ServerStream {
    /// The next message; `Ok(None)` after a successful end-of-stream envelope.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, StreamError> {
        if self.finished {
            return Ok(None);
        }
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) if frame.is_end_stream() => {
                    self.finished = true;
                    return match ConnectError::from_end_stream(&frame.payload) {
                        None => Ok(None),
                        Some(error) => Err(StreamError::Failed(error)),
                    };
                }
                Ok(Some(frame)) => {
                    return serde_json::from_slice(&frame.payload)
                        .map(Some)
                        .map_err(|e| self.fail(StreamError::Protocol(format!("unreadable message: {e}"))));
                }
                Ok(None) => {}
                Err(error) => return Err(self.fail(StreamError::Protocol(error.to_string()))),
            }
            match tokio::time::timeout(self.idle_timeout, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.decoder.push(&chunk),
                Ok(Some(Err(error))) => return Err(self.fail(StreamError::Cut(error_chain(&error)))),
                Ok(None) => {
                    let partial = self.decoder.buffered();
                    let why = if partial > 0 {
                        format!("body ended inside an envelope ({partial} bytes pending)")
                    } else {
                        "body ended without an end-of-stream envelope".to_owned()
                    };
                    return Err(self.fail(StreamError::Cut(why)));
                }
                Err(_) => {
                    let secs = self.idle_timeout.as_secs();
                    return Err(self.fail(StreamError::Cut(format!("nothing received for {secs}s"))));
                }
            }
        }
    }

    fn fail(&mut self, error: StreamError) -> StreamError {
        self.finished = true;
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_across_arbitrary_read_boundaries() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&encode_envelope(0, br#"{"event":{"start":{"pid":7}}}"#));
        wire.extend_from_slice(&encode_envelope(0, b""));
        wire.extend_from_slice(&encode_envelope(FLAG_END_STREAM, b"{}"));
        for split in 0..=wire.len() {
            let mut decoder = EnvelopeDecoder::new(MAX_FRAME_BYTES);
            let mut frames = Vec::new();
            for chunk in [&wire[..split], &wire[split..]] {
                decoder.push(chunk);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    frames.push(frame);
                }
            }
            assert_eq!(frames.len(), 3, "split at {split}");
            assert_eq!(&frames[0].payload[..], br#"{"event":{"start":{"pid":7}}}"#);
            assert!(frames[1].payload.is_empty() && !frames[1].is_end_stream());
            assert!(frames[2].is_end_stream());
            assert_eq!(decoder.buffered(), 0);
        }
    }

    #[test]
    fn the_prefix_is_flags_then_big_endian_length() {
        let frame = encode_envelope(FLAG_END_STREAM, b"abc");
        assert_eq!(&frame[..], &[0x02, 0, 0, 0, 3, b'a', b'b', b'c']);
    }

    #[test]
    fn an_oversized_length_is_refused_before_its_payload_is_buffered() {
        let mut decoder = EnvelopeDecoder::new(16);
        decoder.push(&[0, 0, 0, 0, 17]);
        assert_eq!(decoder.next_frame(), Err(FrameError::TooLarge(17)));
        let mut decoder = EnvelopeDecoder::new(MAX_FRAME_BYTES);
        decoder.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(decoder.next_frame(), Err(FrameError::TooLarge(u32::MAX as usize)));
    }

    #[test]
    fn a_compressed_envelope_is_refused() {
        let mut decoder = EnvelopeDecoder::new(MAX_FRAME_BYTES);
        decoder.push(&encode_envelope(FLAG_COMPRESSED, b"x"));
        assert_eq!(decoder.next_frame(), Err(FrameError::Compressed));
    }

    #[test]
    fn end_of_stream_success_and_error() {
        assert_eq!(ConnectError::from_end_stream(b"{}"), None);
        assert_eq!(ConnectError::from_end_stream(br#"{"metadata":{"k":["v"]}}"#), None);
        assert_eq!(ConnectError::from_end_stream(b""), None);
        let error = ConnectError::from_end_stream(
            br#"{"error":{"code":"deadline_exceeded","message":"context deadline exceeded"}}"#,
        )
        .unwrap();
        assert_eq!(error.code, Code::DeadlineExceeded);
        assert_eq!(error.message, "context deadline exceeded");
        assert_eq!(ConnectError::from_end_stream(b"not json").unwrap().code, Code::Internal);
    }

    #[test]
    fn unary_errors_use_the_body_code_else_the_status_table() {
        let error = ConnectError::from_http(404, br#"{"code":"not_found","message":"process with pid 9 not found"}"#);
        assert_eq!((error.code, error.message.as_str()), (Code::NotFound, "process with pid 9 not found"));
        // envd's REST-style 401 has an integer code: the status decides.
        let error = ConnectError::from_http(401, br#"{"code":401,"message":"unauthorized access"}"#);
        assert_eq!((error.code, error.message.as_str()), (Code::Unauthenticated, "unauthorized access"));
        // The edge's 502 when the sandbox is gone.
        let error =
            ConnectError::from_http(502, br#"{"sandboxId":"x","message":"The sandbox was not found","code":502}"#);
        assert_eq!((error.code, error.http_status), (Code::Unavailable, Some(502)));
        let error = ConnectError::from_http(502, b"<html>bad gateway</html>");
        assert_eq!(error.code, Code::Unavailable);
        assert_eq!(ConnectError::from_http(404, b"").code, Code::Unimplemented);
        assert_eq!(ConnectError::from_http(418, b"").message, "HTTP 418");
        assert_eq!(Code::from_name("something_new"), Code::Unknown);
    }
}
