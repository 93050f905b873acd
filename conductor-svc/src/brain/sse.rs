//! An incremental Server-Sent Events parser, as the WHATWG `text/event-stream` rules describe it,
//! for the streaming brains (`anthropic`, `openai`).
//!
//! [`SseParser`] takes bytes in whatever pieces the network delivers (an event, a line, a UTF-8
//! character or a CRLF may be split anywhere) and yields whole events. [`SseReader`] drives it
//! from a `reqwest` body stream with an idle timeout between chunks.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `"message"` when the event had none (OpenAI-style streams).
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("a server-sent event exceeds {limit} bytes")]
    EventTooLarge { limit: usize },
    #[error("{0}")]
    Transport(String),
    #[error("no data for {0:?}")]
    Idle(Duration),
}

/// Incremental parser state. Feed it with [`SseParser::push`].
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of the line being read (no terminator yet). With `data`, bounded by `max_event_bytes`.
    line: Vec<u8>,
    event: String,
    /// The data of the event being read; bounded, with `line`, by `max_event_bytes`.
    data: String,
    has_data: bool,
    /// The previous byte was a CR, so an LF right after it belongs to the same line break.
    after_cr: bool,
    at_stream_start: bool,
    max_event_bytes: usize,
}

impl SseParser {
    /// A parser that fails with [`SseError::EventTooLarge`] once one event (its data plus the line
    /// being read) would exceed `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> SseParser {
        SseParser {
            line: Vec::new(),
            event: String::new(),
            data: String::new(),
            has_data: false,
            after_cr: false,
            at_stream_start: true,
            max_event_bytes,
        }
    }

    /// Parses `chunk`, appending every event it completes to `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        while !chunk.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if chunk[0] == b'\n' {
                    chunk = &chunk[1..];
                    continue;
                }
            }
            match chunk.iter().position(|&byte| byte == b'\n' || byte == b'\r') {
                Some(end) => {
                    self.append_to_line(&chunk[..end])?;
                    self.after_cr = chunk[end] == b'\r';
                    chunk = &chunk[end + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.process_line(&line, out)?;
                }
                None => {
                    self.append_to_line(chunk)?;
                    chunk = &[];
                }
            }
        }
        Ok(())
    }

    fn append_to_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + self.data.len() + bytes.len() > self.max_event_bytes {
            return Err(SseError::EventTooLarge { limit: self.max_event_bytes });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let mut line = line;
        if self.at_stream_start {
            self.at_stream_start = false;
            line = line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(()); // a comment, e.g. a keep-alive
        }
        let (field, value) = match line.iter().position(|&byte| byte == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"event" => self.event = value.into_owned(),
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max_event_bytes {
                    return Err(SseError::EventTooLarge { limit: self.max_event_bytes });
                }
                self.data.push_str(&value);
                self.data.push('\n');
                self.has_data = true;
            }
            _ => {} // `id`, `retry` and unknown fields mean nothing to a one-shot reply
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = std::mem::take(&mut self.event);
        let mut data = std::mem::take(&mut self.data);
        if !std::mem::take(&mut self.has_data) {
            return;
        }
        data.pop(); // the `\n` after the last data line
        let event = if event.is_empty() { "message".to_owned() } else { event };
        out.push(SseEvent { event, data });
    }
}

/// Reads events from an HTTP body stream.
pub struct SseReader<S> {
    body: S,
    parser: SseParser,
    /// Events parsed from the last chunk and not yet returned. Bounded by one chunk's worth of
    /// events (a chunk is at most what the HTTP stack hands over in one piece).
    pending: VecDeque<SseEvent>,
    idle_timeout: Duration,
    bytes_read: u64,
    ended: bool,
}

impl<S, E> SseReader<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    pub fn new(body: S, max_event_bytes: usize, idle_timeout: Duration) -> SseReader<S> {
        SseReader {
            body,
            parser: SseParser::new(max_event_bytes),
            pending: VecDeque::new(),
            idle_timeout,
            bytes_read: 0,
            ended: false,
        }
    }

    /// Body bytes received so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The next event, or `None` once the body ended. An event left unterminated at the end of the
    /// body is dropped, as the SSE rules say.
    pub async fn next_event(&mut self) -> Result<Option<SseEvent>, SseError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(Some(event));
            }
            if self.ended {
                return Ok(None);
            }
            let chunk = match tokio::time::timeout(self.idle_timeout, self.body.next()).await {
                Err(_) => return Err(SseError::Idle(self.idle_timeout)),
                Ok(None) => {
                    self.ended = true;
                    continue;
                }
                Ok(Some(Err(error))) => return Err(SseError::Transport(error.to_string())),
                Ok(Some(Ok(chunk))) => chunk,
            };
            self.bytes_read += chunk.len() as u64;
            let mut events = Vec::new();
            self.parser.push(&chunk, &mut events)?;
            self.pending.extend(events);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &[u8], piece: usize) -> Vec<SseEvent> {
        let mut parser = SseParser::new(1 << 20);
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            parser.push(chunk, &mut out).unwrap();
        }
        out
    }

    fn event(event: &str, data: &str) -> SseEvent {
        SseEvent { event: event.to_owned(), data: data.to_owned() }
    }

    const STREAM: &str = "\u{feff}: keep-alive comment\n\
        event: message_start\ndata: {\"type\":\"message_start\"}\n\n\
        event: content_block_delta\r\ndata: {\"text\":\"h\u{e9}llo \u{1f600}\"}\r\n\r\n\
        data: first\ndata:second\ndata\n\n\
        event: ping\rdata: {}\r\r\
        event: lonely\n\n\
        data: [DONE]\n\n\
        event: unterminated\ndata: lost";

    fn expected() -> Vec<SseEvent> {
        vec![
            event("message_start", "{\"type\":\"message_start\"}"),
            event("content_block_delta", "{\"text\":\"h\u{e9}llo \u{1f600}\"}"),
            event("message", "first\nsecond\n"),
            event("ping", "{}"),
            event("message", "[DONE]"),
        ]
    }

    #[test]
    fn whole_stream_parses_with_lf_crlf_cr_comments_and_multiline_data() {
        assert_eq!(parse_in_pieces(STREAM.as_bytes(), STREAM.len()), expected());
    }

    #[test]
    fn split_at_every_byte_gives_the_same_events() {
        assert_eq!(parse_in_pieces(STREAM.as_bytes(), 1), expected());
        for split in 1..STREAM.len() {
            let mut parser = SseParser::new(1 << 20);
            let mut out = Vec::new();
            parser.push(&STREAM.as_bytes()[..split], &mut out).unwrap();
            parser.push(&STREAM.as_bytes()[split..], &mut out).unwrap();
            assert_eq!(out, expected(), "split at byte {split}");
        }
    }

    #[test]
    fn an_oversized_event_is_an_error_not_a_growing_buffer() {
        let mut parser = SseParser::new(64);
        let mut out = Vec::new();
        let long_line = format!("data: {}\n", "x".repeat(100));
        assert_eq!(parser.push(long_line.as_bytes(), &mut out), Err(SseError::EventTooLarge { limit: 64 }));

        let mut parser = SseParser::new(64);
        let many_lines = "data: 0123456789\n".repeat(10);
        assert_eq!(parser.push(many_lines.as_bytes(), &mut out), Err(SseError::EventTooLarge { limit: 64 }));
        assert!(out.is_empty());
    }

    #[test]
    fn the_limit_is_per_event() {
        let mut parser = SseParser::new(64);
        let mut out = Vec::new();
        for _ in 0..100 {
            parser.push(b"data: 0123456789012345678901234567890123456789\n\n", &mut out).unwrap();
        }
        assert_eq!(out.len(), 100);
    }

    #[tokio::test]
    async fn reader_yields_events_across_chunks_and_counts_bytes() {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            vec![Ok(Bytes::from_static(b"event: a\nda")), Ok(Bytes::from_static(b"ta: 1\n\ndata: 2\n\n"))];
        let mut reader = SseReader::new(futures_util::stream::iter(chunks), 1024, Duration::from_secs(5));
        assert_eq!(reader.next_event().await.unwrap(), Some(event("a", "1")));
        assert_eq!(reader.next_event().await.unwrap(), Some(event("message", "2")));
        assert_eq!(reader.next_event().await.unwrap(), None);
        assert_eq!(reader.bytes_read(), 27);
    }

    #[tokio::test]
    async fn reader_reports_a_broken_body() {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            vec![Ok(Bytes::from_static(b"data: 1\n\n")), Err(std::io::Error::other("connection reset"))];
        let mut reader = SseReader::new(futures_util::stream::iter(chunks), 1024, Duration::from_secs(5));
        assert_eq!(reader.next_event().await.unwrap(), Some(event("message", "1")));
        assert_eq!(reader.next_event().await, Err(SseError::Transport("connection reset".to_owned())));
    }
}
