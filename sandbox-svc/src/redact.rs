//! Secret redaction for everything the broker emits: process output (streamed) and error/log text.
//!
//! Modelled on the GitHub Actions runner's secret masking. Each registered secret is masked in these forms:
//!
//! * the raw bytes;
//! * base64, standard and URL-safe alphabets, as the secret appears at byte offset 0, 1 or 2 of a longer
//!   encoded value (only the characters that depend on the secret's bits alone, so `Basic <b64(user:key)>`
//!   headers and tokens embedded in base64 blobs are caught);
//! * percent-encoded (every byte outside RFC 3986 "unreserved"), with upper- and lower-case hex;
//! * JSON-string-escaped the way `serde_json` writes it, and the same with `/` written as `\/`.
//!
//! Every run of overlapping hits becomes a single [`REDACTED`] marker.
//!
//! Known gaps, i.e. a secret still leaks if the output contains it as: hex or any other encoding not listed;
//! reversed, upper/lower-cased or otherwise transformed text; compressed or encrypted data; one character at a
//! time (split by newlines, escape sequences, terminal cursor moves); nested encodings (base64 of the
//! percent-encoded form, doubly-escaped JSON); or a value derived from it that was never registered (a minted
//! JWT, a hash, a session token returned by the provider). Register such values as secrets when they are known.
//!
//! Streaming: [`StreamRedactor`] holds back only the bytes that could still turn into a secret, so ordinary
//! output is never delayed, and a secret split across chunks at any byte is masked exactly as
//! [`Redactor::redact_bytes`] would mask the concatenation.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, Input, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use bytes::{Bytes, BytesMut};

/// What every masked run of bytes is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Secrets shorter than this are refused by `Redactor::new` (they would mask ordinary text).
pub const MIN_SECRET_LEN: usize = 8;

/// Why a set of secrets cannot be used for redaction.
#[derive(Debug, thiserror::Error)]
pub enum RedactorError {
    /// A secret (counting skipped empty ones in `index`) is too short.
    #[error("secret #{index} is {len} bytes; secrets must be at least {MIN_SECRET_LEN} bytes")]
    TooShort {
        /// Position in the input.
        index: usize,
        /// Its length in bytes.
        len: usize,
    },
}

/// Masks a fixed set of secrets. Cheap to clone; share one per broker.
#[derive(Clone)]
pub struct Redactor {
    /// `None` when there is nothing to mask, so the hot path can skip all work.
    inner: Option<Arc<Inner>>,
}

struct Inner {
    ac: AhoCorasick,
    /// Sorted and deduplicated, so "is this tail a proper prefix of some variant" is a binary search.
    variants: Vec<Box<[u8]>>,
    /// Bytes that begin some variant; other positions can never start a held suffix.
    starts: [bool; 256],
    max_len: usize,
    secrets: usize,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secrets, variants) = self.inner.as_ref().map_or((0, 0), |i| (i.secrets, i.variants.len()));
        f.debug_struct("Redactor").field("secrets", &secrets).field("variants", &variants).finish()
    }
}

impl Redactor {
    /// Builds a redactor for `secrets`. Empty secrets are skipped (an unset optional key is not an error);
    /// duplicates are fine.
    ///
    /// # Errors
    /// [`RedactorError::TooShort`] for the first non-empty secret shorter than [`MIN_SECRET_LEN`].
    ///
    /// # Panics
    /// Only if the patterns overflow aho-corasick's state IDs, which takes megabytes of secrets.
    pub fn new<I, S>(secrets: I) -> Result<Redactor, RedactorError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut distinct = BTreeSet::new();
        for (index, secret) in secrets.into_iter().enumerate() {
            let secret = secret.as_ref();
            match secret.len() {
                0 => {}
                len if len < MIN_SECRET_LEN => return Err(RedactorError::TooShort { index, len }),
                _ => {
                    distinct.insert(secret.to_vec());
                }
            }
        }
        if distinct.is_empty() {
            return Ok(Redactor::empty());
        }
        let mut variants = BTreeSet::new();
        for secret in &distinct {
            add_variants(secret, &mut variants);
        }
        let variants: Vec<Box<[u8]>> = variants.into_iter().map(Vec::into_boxed_slice).collect();
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&variants)
            .expect("secret patterns fit in an Aho-Corasick automaton");
        let mut starts = [false; 256];
        for v in &variants {
            starts[usize::from(v[0])] = true;
        }
        let max_len = variants.iter().map(|v| v.len()).max().unwrap_or(0);
        let inner = Inner { ac, variants, starts, max_len, secrets: distinct.len() };
        Ok(Redactor { inner: Some(Arc::new(inner)) })
    }

    /// A redactor that masks nothing.
    #[must_use]
    pub fn empty() -> Redactor {
        Redactor { inner: None }
    }

    /// True when no secret is registered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.inner.is_none()
    }

    /// Masks a complete buffer. Borrows the input when nothing needed masking.
    #[must_use]
    pub fn redact_bytes<'a>(&self, input: &'a [u8]) -> Cow<'a, [u8]> {
        match self.inner.as_deref().and_then(|i| i.mask(input, 0, input.len()).0) {
            Some(masked) => Cow::Owned(masked),
            None => Cow::Borrowed(input),
        }
    }

    /// Masks a complete string, for error messages and log lines.
    #[must_use]
    pub fn redact_str<'a>(&self, input: &'a str) -> Cow<'a, str> {
        match self.redact_bytes(input.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(input),
            // A secret given as arbitrary bytes may end inside a UTF-8 sequence of the text.
            Cow::Owned(v) => {
                Cow::Owned(String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
            }
        }
    }

    /// A masker for one output stream (e.g. a process's stdout). Call `finish` at end of stream.
    #[must_use]
    pub fn stream(&self) -> StreamRedactor {
        StreamRedactor { redactor: self.clone(), pending: BytesMut::new(), covered: 0 }
    }
}

/// Registers every form of `secret` that output is masked in (see the module docs).
fn add_variants(secret: &[u8], out: &mut BTreeSet<Vec<u8>>) {
    out.insert(secret.to_vec());
    for engine in [&STANDARD, &URL_SAFE] {
        for offset in 0..3 {
            let mut data = vec![0; offset];
            data.extend_from_slice(secret);
            let encoded = engine.encode(&data);
            // Character j carries bits [6j, 6j+6); keep those lying wholly inside the secret's bits.
            let first = (8 * offset).div_ceil(6);
            let end = 8 * (offset + secret.len()) / 6;
            out.insert(encoded.as_bytes()[first..end].to_vec());
        }
    }
    for hex in [b"0123456789ABCDEF", b"0123456789abcdef"] {
        let mut pct = Vec::with_capacity(secret.len() * 3);
        for &b in secret {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                pct.push(b);
            } else {
                pct.extend_from_slice(&[b'%', hex[usize::from(b >> 4)], hex[usize::from(b & 15)]]);
            }
        }
        out.insert(pct);
    }
    let json = json_escape(secret);
    let mut slash = Vec::with_capacity(json.len());
    for &b in &json {
        if b == b'/' {
            slash.push(b'\\');
        }
        slash.push(b);
    }
    out.insert(json);
    out.insert(slash);
}

/// The bytes `serde_json` writes for `secret` inside a string literal.
fn json_escape(secret: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(secret.len() + 8);
    for &b in secret {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\x08' => out.extend_from_slice(b"\\b"),
            b'\x0c' => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..0x20 => {
                let hex = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.extend_from_slice(&[hex[usize::from(b >> 4)], hex[usize::from(b & 15)]]);
            }
            _ => out.push(b),
        }
    }
    out
}

impl Inner {
    /// Start of the longest suffix of `buf` that is a proper prefix of some variant (`buf.len()` if none):
    /// the only bytes that more input could still turn into a hit.
    fn hold_from(&self, buf: &[u8]) -> usize {
        let lo = buf.len().saturating_sub(self.max_len - 1);
        (lo..buf.len()).find(|&p| self.starts[usize::from(buf[p])] && self.extends(&buf[p..])).unwrap_or(buf.len())
    }

    /// Whether some variant starts with `tail` and is longer. Such variants sort directly after every
    /// variant `<= tail`, so checking the first one past that point is enough.
    fn extends(&self, tail: &[u8]) -> bool {
        let i = self.variants.partition_point(|v| **v <= *tail);
        self.variants.get(i).is_some_and(|v| v.starts_with(tail))
    }

    /// Calls `f(start, end)` for each maximal run of overlapping hits in `buf`, in order. `covered > 0` means
    /// `buf[..covered]` continues a run whose marker was already emitted; that run is reported from 0.
    ///
    /// Leftmost-longest alone would skip hits starting inside an earlier hit, leaking the tail of e.g. a
    /// second, overlapping secret; so after each hit the search resumes one byte past its start.
    fn for_each_run(&self, buf: &[u8], covered: usize, mut f: impl FnMut(usize, usize) -> ControlFlow<()>) {
        let mut run = (covered > 0).then_some((0, covered));
        let mut from = 0;
        loop {
            let hit = self.ac.find(Input::new(buf).span(from..buf.len()));
            if let (Some((start, end)), Some(m)) = (run, hit)
                && m.start() < end
            {
                run = Some((start, end.max(m.end())));
                from = m.start() + 1;
                continue;
            }
            if let Some((start, end)) = run
                && f(start, end).is_break()
            {
                return;
            }
            let Some(m) = hit else { return };
            run = Some((m.start(), m.end()));
            from = m.start() + 1;
        }
    }

    /// Masks `buf[..hold]` (`buf[hold..]` is kept back by the caller). Returns the masked bytes, or `None`
    /// when they equal `buf[..hold]`, and how many bytes of `buf[hold..]` the last emitted marker already
    /// covers (a run straddling `hold` that more input may still extend).
    fn mask(&self, buf: &[u8], covered: usize, hold: usize) -> (Option<Vec<u8>>, usize) {
        let mut out: Option<Vec<u8>> = None;
        let mut last = 0;
        let mut carry = 0;
        self.for_each_run(buf, covered, |start, end| {
            let continued = start == 0 && covered > 0;
            if start >= hold && !continued {
                return ControlFlow::Break(());
            }
            let out = out.get_or_insert_with(|| Vec::with_capacity(hold + REDACTED.len()));
            out.extend_from_slice(&buf[last..start]);
            if !continued {
                out.extend_from_slice(REDACTED.as_bytes());
            }
            if end > hold {
                // Emit the marker now rather than holding the whole run: a run of repeated hits could
                // otherwise grow without bound.
                carry = end - hold;
                last = hold;
                return ControlFlow::Break(());
            }
            last = end;
            ControlFlow::Continue(())
        });
        if let Some(out) = &mut out {
            out.extend_from_slice(&buf[last..hold]);
        }
        (out, carry)
    }
}

/// Masks one stream of chunks; a secret split across chunks at any byte is still masked.
pub struct StreamRedactor {
    redactor: Redactor,
    /// Held-back tail: the longest suffix that is a proper prefix of some variant.
    pending: BytesMut,
    /// Leading bytes of `pending` already represented by an emitted marker.
    covered: usize,
}

impl fmt::Debug for StreamRedactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The held bytes may be most of a secret; never print them.
        f.debug_struct("StreamRedactor").field("held", &self.pending.len()).finish_non_exhaustive()
    }
}

impl StreamRedactor {
    /// Masks `chunk` and returns the bytes that are safe to emit now. Holds back ONLY the longest suffix
    /// that is a proper prefix of some variant (not a fixed max_len-1 tail), so ordinary output like a prompt
    /// "ready> " is never delayed when it cannot be the start of a secret. The held bytes are bounded by the
    /// longest variant.
    #[must_use = "the returned bytes are the stream's output"]
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        let Some(inner) = self.redactor.inner.as_deref() else {
            return Bytes::copy_from_slice(chunk);
        };
        if self.pending.is_empty() {
            // Common case: search the caller's chunk in place instead of copying it into `pending` first.
            let hold = inner.hold_from(chunk);
            let (masked, covered) = inner.mask(chunk, 0, hold);
            self.covered = covered;
            self.pending.extend_from_slice(&chunk[hold..]);
            return masked.map_or_else(|| Bytes::copy_from_slice(&chunk[..hold]), Bytes::from);
        }
        self.pending.extend_from_slice(chunk);
        let hold = inner.hold_from(&self.pending);
        let (masked, covered) = inner.mask(&self.pending, self.covered, hold);
        self.covered = covered;
        let head = self.pending.split_to(hold).freeze();
        masked.map_or(head, Bytes::from)
    }

    /// Like [`StreamRedactor::push`], but returns a slice of `chunk` itself — no copy — in the
    /// common case where nothing is held from before and nothing in it matches.
    pub fn push_bytes(&mut self, chunk: Bytes) -> Bytes {
        let Some(inner) = self.redactor.inner.as_deref() else {
            return chunk;
        };
        if !self.pending.is_empty() {
            return self.push(&chunk);
        }
        let hold = inner.hold_from(&chunk);
        let (masked, covered) = inner.mask(&chunk, 0, hold);
        self.covered = covered;
        self.pending.extend_from_slice(&chunk[hold..]);
        masked.map_or_else(|| chunk.slice(..hold), Bytes::from)
    }

    /// End of stream: emit whatever is held (a partial prefix of a secret is not a secret).
    #[must_use = "the returned bytes are the end of the stream's output"]
    pub fn finish(&mut self) -> Bytes {
        let Some(inner) = self.redactor.inner.as_deref() else {
            return Bytes::new();
        };
        let (masked, _) = inner.mask(&self.pending, self.covered, self.pending.len());
        self.covered = 0;
        let rest = self.pending.split().freeze();
        masked.map_or(rest, Bytes::from)
    }

    /// Bytes currently held back (for tests and metrics).
    #[must_use]
    pub fn held(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ghp_` + 36 alphanumerics, like a classic GitHub PAT.
    const GHP: &str = "ghp_9fKq2LmZx7TbW4nRcV1sYh8JdPuE3aGo6iQe";
    /// Shaped like an Anthropic key: only URL-unreserved characters.
    const ANT: &str = "sk-ant-api03-Xy7_Qp2-Lm9zTb4WnRcV1sYh8JdPuE3aGo6iQeKf5-Ab";
    /// `e2b_` + 40 hex.
    const E2B: &str = "e2b_3f9c1a7e5b2d4086af1c9e7b3d5a2f40c8e6b1d9";
    /// A config-supplied password exercising every escape path: `"`, `\`, `/`, control bytes, `~~~~`
    /// (whose base64 contains '+' at any alignment, so the URL-safe form differs).
    const ODD: &str = "p@ss/w\"0rd\\~~~~\t?&=+ z";

    fn redactor() -> Redactor {
        Redactor::new([GHP, ANT, E2B, ODD]).unwrap()
    }

    fn variants(r: &Redactor) -> Vec<Box<[u8]>> {
        r.inner.as_ref().unwrap().variants.clone()
    }

    fn assert_clean(r: &Redactor, out: &[u8]) {
        for v in variants(r) {
            assert!(!out.windows(v.len()).any(|w| w == &*v), "variant {:?} leaked", String::from_utf8_lossy(&v));
        }
    }

    /// Deterministic pseudo-random bytes (no rand crate in the project).
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 33) as u8
            })
            .collect()
    }

    fn pct(s: &str, hex: &[u8; 16]) -> String {
        let mut out = String::new();
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(b as char);
            } else {
                out.push('%');
                out.push(hex[usize::from(b >> 4)] as char);
                out.push(hex[usize::from(b & 15)] as char);
            }
        }
        out
    }

    /// Independent of `json_escape`: written from the JSON grammar.
    fn json(s: &str) -> String {
        s.chars()
            .map(|c| match c {
                '"' => "\\\"".to_string(),
                '\\' => "\\\\".to_string(),
                '\t' => "\\t".to_string(),
                c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32),
                c => c.to_string(),
            })
            .collect()
    }

    fn stream_all<'a>(r: &Redactor, chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
        let mut s = r.stream();
        let max = r.inner.as_ref().map_or(0, |i| i.max_len);
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&s.push(c));
            assert!(s.held() < max.max(1), "held {} >= longest variant {max}", s.held());
        }
        out.extend_from_slice(&s.finish());
        assert_eq!(s.held(), 0);
        out
    }

    #[test]
    fn push_bytes_matches_push_at_every_split() {
        let redactor = Redactor::new([GHP]).unwrap();
        let text = format!("before {GHP} middle {GHP} after\n");
        for split in 0..text.len() {
            let (mut a, mut b) = (redactor.stream(), redactor.stream());
            let mut by_slice = a.push(&text.as_bytes()[..split]).to_vec();
            by_slice.extend_from_slice(&a.push(&text.as_bytes()[split..]));
            by_slice.extend_from_slice(&a.finish());
            let mut by_bytes = b.push_bytes(Bytes::copy_from_slice(&text.as_bytes()[..split])).to_vec();
            by_bytes.extend_from_slice(&b.push_bytes(Bytes::copy_from_slice(&text.as_bytes()[split..])));
            by_bytes.extend_from_slice(&b.finish());
            assert_eq!(by_slice, by_bytes, "split at {split}");
            assert!(!String::from_utf8_lossy(&by_bytes).contains(GHP));
        }
    }

    #[test]
    fn canaries_have_realistic_shapes() {
        assert_eq!(GHP.len(), 4 + 36);
        assert!(GHP[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(E2B.len(), 4 + 40);
        assert!(E2B[4..].bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn raw_and_percent_encoded_forms_are_masked() {
        let r = redactor();
        for s in [GHP, ANT, E2B, ODD] {
            let raw = format!("token {s} end");
            assert_eq!(r.redact_str(&raw), "token [redacted] end");
            for hex in [b"0123456789ABCDEF", b"0123456789abcdef"] {
                let url = format!("GET /cb?code={}&x=1", pct(s, hex));
                assert_eq!(r.redact_str(&url), "GET /cb?code=[redacted]&x=1", "{url}");
            }
        }
        assert!(pct(ODD, b"0123456789abcdef").contains("%2f"), "lower-case form must differ from upper");
    }

    #[test]
    fn base64_forms_at_every_offset_are_masked() {
        use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
        let r = redactor();
        let engines =
            [("std", STANDARD), ("url", URL_SAFE), ("std-nopad", STANDARD_NO_PAD), ("url-nopad", URL_SAFE_NO_PAD)];
        for (i, s) in [GHP, ANT, E2B, ODD].into_iter().enumerate() {
            for pre in 0..6 {
                for post in 0..4 {
                    let seed = (i * 100 + pre * 10 + post) as u64;
                    let mut data = noise(seed, pre);
                    data.extend_from_slice(s.as_bytes());
                    data.extend_from_slice(&noise(seed + 7, post));
                    // Exactly the characters fully determined by the secret's bits must go.
                    let first = (8 * pre).div_ceil(6);
                    let end = 8 * (pre + s.len()) / 6;
                    for (name, engine) in &engines {
                        let e = engine.encode(&data);
                        let want = format!("auth: {}{REDACTED}{}\n", &e[..first], &e[end..]);
                        let got = r.redact_str(&format!("auth: {e}\n")).into_owned();
                        assert_eq!(got, want, "{name} secret #{i} prefix {pre} suffix {post}");
                    }
                }
            }
        }
        // Guard that the URL-safe alphabet is really exercised at every offset.
        for pre in 0..3 {
            let data = [&vec![0; pre][..], ODD.as_bytes()].concat();
            assert_ne!(STANDARD.encode(&data), URL_SAFE.encode(&data));
        }
    }

    #[test]
    fn json_escaped_forms_are_masked() {
        let r = redactor();
        let esc = json(ODD);
        assert!(esc.contains("\\\"") && esc.contains("\\\\") && esc.contains("\\t") && esc.contains('/'));
        let body = format!("{{\"password\":\"{esc}\",\"n\":1}}");
        assert_eq!(r.redact_str(&body), "{\"password\":\"[redacted]\",\"n\":1}");
        let body = body.replace('/', "\\/");
        assert_eq!(r.redact_str(&body), "{\"password\":\"[redacted]\",\"n\":1}");
        // A control byte below 0x20 other than the short escapes goes to \u00XX, lower-case.
        let bell = "bell\x07-and-\x1f-secret";
        let r = Redactor::new([bell]).unwrap();
        assert_eq!(r.redact_str(&format!("\"{}\"", json(bell))), "\"[redacted]\"");
    }

    fn canary_text() -> Vec<u8> {
        let basic = STANDARD.encode(format!("x-access-token:{GHP}"));
        let text = format!(
            "$ git push\nremote: {GHP}\nurl=https://h/?k={}&v={}\nAuthorization: Basic {basic}\n\
             {{\"key\":\"{}\",\"e2b\":\"{E2B}\"}}\nready> ",
            pct(ODD, b"0123456789ABCDEF"),
            pct(ANT, b"0123456789abcdef"),
            json(ODD).replace('/', "\\/"),
        );
        text.into_bytes()
    }

    #[test]
    fn split_at_every_boundary_equals_one_shot() {
        let r = redactor();
        let text = canary_text();
        let once = r.redact_bytes(&text).into_owned();
        assert_eq!(once.windows(REDACTED.len()).filter(|w| *w == REDACTED.as_bytes()).count(), 6);
        assert_clean(&r, &once);
        for i in 0..=text.len() {
            let (a, b) = text.split_at(i);
            assert_eq!(stream_all(&r, [a, b]), once, "split at {i}");
        }
        assert_eq!(stream_all(&r, text.chunks(1)), once, "byte at a time");
    }

    #[test]
    fn random_chunking_equals_one_shot() {
        let r = redactor();
        let mut text = Vec::new();
        for i in 0..40u64 {
            text.extend_from_slice(&noise(i, (i as usize * 7) % 23));
            text.extend_from_slice(&canary_text()[(i as usize * 13) % 50..]);
        }
        let once = r.redact_bytes(&text).into_owned();
        assert_clean(&r, &once);
        for seed in 0..50u64 {
            let sizes = noise(seed, text.len());
            let mut chunks = Vec::new();
            let mut rest = &text[..];
            for &n in &sizes {
                if rest.is_empty() {
                    break;
                }
                let (c, tail) = rest.split_at(usize::from(n % 90).min(rest.len()));
                chunks.push(c);
                rest = tail;
            }
            assert_eq!(stream_all(&r, chunks), once, "seed {seed}");
        }
    }

    #[test]
    fn plain_text_is_not_held_but_a_partial_prefix_is() {
        let r = redactor();
        let mut s = r.stream();
        assert_eq!(&s.push(b"hello\n")[..], b"hello\n");
        assert_eq!(s.held(), 0);
        assert_eq!(&s.push(b"ready> ")[..], b"ready> ");
        assert_eq!(s.held(), 0);
        // A complete secret that no longer variant extends is masked at once, not held (alone, since
        // its last byte 'e' also starts E2B).
        let mut only = Redactor::new([GHP]).unwrap().stream();
        assert_eq!(&only.push(format!("x{GHP}").as_bytes())[..], b"x[redacted]");
        assert_eq!(only.held(), 0);
        assert_eq!(&s.push(format!("token={}", &GHP[..10]).as_bytes())[..], b"token=");
        assert_eq!(s.held(), 10);
        assert_eq!(&s.finish()[..], &GHP.as_bytes()[..10]);
        assert_eq!(s.held(), 0);
        // The held prefix completes into a secret on the next push.
        assert_eq!(&s.push(&GHP.as_bytes()[..20])[..], b"");
        assert_eq!(&s.push(format!("{}!\n", &GHP[20..]).as_bytes())[..], b"[redacted]!\n");
    }

    #[test]
    fn secret_that_prefixes_another_is_masked_whole() {
        let long = format!("{E2B}_rotated");
        let r = Redactor::new([E2B, long.as_str()]).unwrap();
        let text = format!("a {long} b {E2B}_rot c {E2B}");
        let once = r.redact_str(&text).into_owned();
        assert_eq!(once, "a [redacted] b [redacted]_rot c [redacted]");
        for i in 0..=text.len() {
            let (a, b) = text.as_bytes().split_at(i);
            assert_eq!(stream_all(&r, [a, b]), once.as_bytes(), "split at {i}");
        }
        // Both a complete shorter secret and a proper prefix of the longer one: must wait for more input.
        let mut s = r.stream();
        assert_eq!(&s.push(format!("k={E2B}").as_bytes())[..], b"k=");
        assert_eq!(&s.push(b"_rotated\n")[..], b"[redacted]\n");
    }

    #[test]
    fn overlapping_occurrences_become_one_marker() {
        let r = Redactor::new(["ab12ab12ab"]).unwrap();
        assert_eq!(r.redact_str("<ab12ab12ab12ab>"), "<[redacted]>");
        let r = Redactor::new(["AAAA1111BBBB", "1111BBBBCCCC"]).unwrap();
        assert_eq!(r.redact_str("<AAAA1111BBBBCCCC>"), "<[redacted]>");
        let r = Redactor::new(["AAAA1111BBBB", "BBBBCCCCDDDD"]).unwrap();
        assert_eq!(r.redact_str("AAAA1111BBBBCCCCDDDD"), "[redacted]");
        // Adjacent but not overlapping stays two markers.
        assert_eq!(r.redact_str("AAAA1111BBBBBBBBCCCCDDDD"), "[redacted][redacted]");
    }

    /// Spec of the one-shot output, by brute force: every occurrence of every variant, runs of strictly
    /// overlapping occurrences merged, one marker per run.
    fn naive(variants: &[Box<[u8]>], text: &[u8]) -> Vec<u8> {
        let mut hits: Vec<(usize, usize)> = (0..text.len())
            .flat_map(|p| variants.iter().filter(move |v| text[p..].starts_with(v)).map(move |v| (p, p + v.len())))
            .collect();
        hits.sort();
        let (mut out, mut last, mut run) = (Vec::new(), 0, None::<(usize, usize)>);
        for (s, e) in hits.into_iter().map(Some).chain([None]).map(|h| h.unwrap_or((usize::MAX, 0))) {
            match run {
                Some((rs, re)) if s < re => run = Some((rs, re.max(e))),
                _ => {
                    if let Some((rs, re)) = run {
                        out.extend_from_slice(&text[last..rs]);
                        out.extend_from_slice(REDACTED.as_bytes());
                        last = re;
                    }
                    run = (s != usize::MAX).then_some((s, e));
                }
            }
        }
        out.extend_from_slice(&text[last..]);
        out
    }

    #[test]
    fn one_shot_matches_brute_force_reference() {
        let r = Redactor::new(["abababab", "babab12ab", "12ab12ab", "ab12ab12ab1"]).unwrap();
        let vs = variants(&r);
        for seed in 0..300u64 {
            // Few distinct tokens, so hits are dense and overlap often.
            let tokens: [&[u8]; 6] = [b"ab", b"ab", b"ab", b"12", b"a", b"b"];
            let text: Vec<u8> = noise(seed, 100).iter().flat_map(|b| tokens[usize::from(b % 6)]).copied().collect();
            let once = r.redact_bytes(&text).into_owned();
            assert_eq!(once, naive(&vs, &text), "seed {seed}");
            let chunks = text.chunks(usize::from(noise(seed, 1)[0] % 13) + 1);
            assert_eq!(stream_all(&r, chunks), once, "seed {seed}");
        }
    }

    #[test]
    fn endless_overlapping_run_is_not_held_unbounded() {
        let r = Redactor::new(["zzzzzzzz"]).unwrap();
        let text = vec![b'z'; 100_000];
        assert_eq!(&r.redact_bytes(&text)[..], REDACTED.as_bytes());
        // stream_all asserts held() stays below the longest variant after every push.
        assert_eq!(stream_all(&r, text.chunks(1000)), REDACTED.as_bytes());
        assert_eq!(stream_all(&r, text.chunks(3)), REDACTED.as_bytes());
        let mut tail = text.clone();
        tail.extend_from_slice(b" done\n");
        assert_eq!(stream_all(&r, tail.chunks(7)), b"[redacted] done\n");
    }

    #[test]
    fn too_short_and_empty_secrets() {
        let err = Redactor::new([ANT, "", "hunter2"]).unwrap_err();
        assert!(matches!(err, RedactorError::TooShort { index: 2, len: 7 }));
        assert_eq!(err.to_string(), "secret #2 is 7 bytes; secrets must be at least 8 bytes");
        assert!(Redactor::new(["", ""]).unwrap().is_empty());
        assert!(!Redactor::new(["", "12345678", "12345678"]).unwrap().is_empty());

        let r = Redactor::empty();
        assert!(matches!(r.redact_bytes(b"abc"), Cow::Borrowed(_)));
        let mut s = r.stream();
        assert_eq!(&s.push(b"anything")[..], b"anything");
        assert_eq!(s.held(), 0);
        assert!(s.finish().is_empty());
    }

    #[test]
    fn unaffected_input_is_borrowed() {
        let r = redactor();
        assert!(matches!(r.redact_str("no secrets here"), Cow::Borrowed(_)));
        assert!(matches!(r.redact_str(&format!("err: {GHP}")), Cow::Owned(_)));
    }

    #[test]
    fn debug_never_prints_a_secret() {
        let r = redactor();
        let mut s = r.stream();
        let _ = s.push(&GHP.as_bytes()[..30]);
        for dbg in [format!("{r:?}"), format!("{r:#?}"), format!("{s:?}")] {
            assert!(!dbg.contains(&GHP[..12]) && !dbg.contains(&E2B[..12]) && !dbg.contains("ss/w"), "{dbg}");
        }
        assert!(format!("{r:?}").contains("secrets: 4"));
    }
}
