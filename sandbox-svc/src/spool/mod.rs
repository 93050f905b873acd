//! The per-process output spool: every event a process produced, numbered 1, 2, 3 …, on disk.
//!
//! One writer (the process's pump) appends; any number of readers replay from any seq and then
//! follow live. Readers and the writer share nothing but the files and a `watch` of the head, so a
//! slow or absent reader never slows the process, and memory stays flat whatever the output rate:
//! the data lives in the page cache, not in the broker's heap.
//!
//! Layout: `<dir>/<n>.seg`, each a run of records `[seq u64][kind u8][tag 3][len u32][payload]`
//! (little endian). Segments roll at `segment_bytes`; when the total passes the limit the oldest
//! segment is dropped (a reader holding it open finishes it first) and readers that ask for
//! what is gone get a `Truncated` event first.
//!
//! Two things keep a fast writer cheap. A dropped segment nobody reads is recycled: its file is
//! overwritten in place, because writing over cached pages costs a fraction of allocating fresh
//! ones. And the newest events also stay in a small in-memory window, so readers that keep up
//! (the usual live case) are served from memory and never read the file back.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

mod reopen;

pub use self::reopen::Reopened;

const HEADER_LEN: usize = 16;
/// The kind byte of each record, one per [`EventBody`] variant.
const KIND_STARTED: u8 = 1;
const KIND_STDOUT: u8 = 2;
const KIND_STDERR: u8 = 3;
const KIND_EXITED: u8 = 4;
const KIND_GAP: u8 = 5;
/// Most bytes one `SpoolReader::read_available` call pulls from disk (one record may exceed it).
/// Bounds the memory a reader holds per batch.
const READ_BATCH_BYTES: u64 = 256 << 10;
/// Payload bytes of the newest events kept in memory per spool for readers that keep up
/// (at most an eighth of the spool). Bounds the spool's heap use.
const RECENT_WINDOW_BYTES: u64 = 1 << 20;
/// Payload bytes held in all windows of the process together; past it every window keeps only
/// its newest event. Bounds the broker's heap when many processes write fast at once.
const ALL_WINDOWS_BYTES: u64 = 64 << 20;
/// Bytes currently held in windows, across spools.
static WINDOW_BYTES_IN_USE: AtomicU64 = AtomicU64::new(0);
/// Events kept in that window at most: many tiny events cost more in bookkeeping than payload.
const RECENT_WINDOW_EVENTS: usize = 64;

/// What a process did, as stored and as replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventBody {
    Started {
        pid: u32,
    },
    Stdout(Bytes),
    Stderr(Bytes),
    Exited {
        exit_code: i32,
        signal: i32,
    },
    /// Events before `first_available_seq` are gone. Synthesized for a reader whose start was
    /// dropped from the spool; also stored as a gap record where a provider lost output (an E2B
    /// stream cut, a broker restart), in which case `first_available_seq` is the next seq.
    Truncated {
        first_available_seq: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledEvent {
    pub seq: u64,
    pub body: EventBody,
}

/// What readers wait on: the newest seq written and whether more can come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolHead {
    pub last_seq: u64,
    pub finished: bool,
}

struct Segment {
    /// Open while the spool is live. Closed when it finishes, so an exited process holds no
    /// descriptor; readers of a finished spool open the path for as long as they read it.
    file: Mutex<Option<Arc<File>>>,
    path: PathBuf,
    first_seq: u64,
    /// Bytes of complete records; readers never read past it.
    len: AtomicU64,
    /// No more records will be appended (a newer segment exists).
    sealed: AtomicBool,
    /// Random per life of the file, carried by each of its records: a recycled file still holds
    /// records of its previous life past `len`, and a reopen after a crash must not take them
    /// (or bytes a process wrote to look like them) for this life's.
    tag: [u8; 3],
}

struct SpoolState {
    segments: VecDeque<Arc<Segment>>,
    total_bytes: u64,
    next_seq: u64,
    next_segment_number: u64,
    /// One dropped segment's file, kept to be overwritten by the next segment.
    spare: Option<(File, PathBuf)>,
    /// The newest events, oldest first; bounded by `recent_limit` payload bytes.
    recent: VecDeque<RecentEvent>,
    recent_bytes: u64,
    /// Set by `remove`: readers get an error instead of a silent end.
    removed: bool,
}

struct RecentEvent {
    event: SpooledEvent,
    /// Where the record ends on disk: a reader leaving the window resumes there.
    segment_first_seq: u64,
    end_offset: u64,
}

/// One process's spool. Cheap to share (`Arc`).
pub struct Spool {
    dir: PathBuf,
    limit_bytes: u64,
    segment_bytes: u64,
    recent_limit: u64,
    state: Mutex<SpoolState>,
    head: watch::Sender<SpoolHead>,
}

impl Spool {
    /// Creates `dir` and an empty spool holding at most about `limit_bytes` of records (its
    /// files take at most `limit_bytes` plus two segments of disk).
    pub fn create(dir: PathBuf, limit_bytes: u64) -> io::Result<Arc<Spool>> {
        // Process output is private to the broker: owner-only, like the files below.
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        Ok(Arc::new(Spool {
            dir,
            limit_bytes,
            segment_bytes: Spool::segment_bytes_for(limit_bytes),
            recent_limit: RECENT_WINDOW_BYTES.min(limit_bytes / 8),
            state: Mutex::new(SpoolState {
                segments: VecDeque::new(),
                total_bytes: 0,
                next_seq: 1,
                next_segment_number: 0,
                spare: None,
                recent: VecDeque::new(),
                recent_bytes: 0,
                removed: false,
            }),
            head: watch::Sender::new(SpoolHead::default()),
        }))
    }

    /// Eight segments: eviction drops at most an eighth of the history at a time.
    fn segment_bytes_for(limit_bytes: u64) -> u64 {
        (limit_bytes / 8).clamp(16 << 10, 8 << 20)
    }

    pub fn head(&self) -> SpoolHead {
        *self.head.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<SpoolHead> {
        self.head.subscribe()
    }

    /// Appends one event and wakes readers; `Truncated` is stored as a gap at this seq (its
    /// `first_available_seq` becomes the next seq). Output longer than a segment holds is stored
    /// as several consecutive events, so eviction stays granular: whatever a reader lags, the
    /// newest output up to the limit is kept (one huge record would be dropped whole). Returns
    /// the (last) seq given.
    pub fn append(&self, body: &EventBody) -> io::Result<u64> {
        let max = self.segment_bytes as usize - HEADER_LEN;
        let (data, wrap): (&Bytes, fn(Bytes) -> EventBody) = match body {
            EventBody::Stdout(data) if data.len() > max => (data, EventBody::Stdout),
            EventBody::Stderr(data) if data.len() > max => (data, EventBody::Stderr),
            _ => return self.append_one(body),
        };
        let mut seq = 0;
        for start in (0..data.len()).step_by(max) {
            seq = self.append_one(&wrap(data.slice(start..(start + max).min(data.len()))))?;
        }
        Ok(seq)
    }

    fn append_one(&self, body: &EventBody) -> io::Result<u64> {
        let (kind, payload): (u8, Bytes) = match body {
            EventBody::Started { pid } => (KIND_STARTED, Bytes::copy_from_slice(&pid.to_le_bytes())),
            EventBody::Stdout(data) => (KIND_STDOUT, data.clone()),
            EventBody::Stderr(data) => (KIND_STDERR, data.clone()),
            EventBody::Exited { exit_code, signal } => {
                let mut b = [0u8; 8];
                b[..4].copy_from_slice(&exit_code.to_le_bytes());
                b[4..].copy_from_slice(&signal.to_le_bytes());
                (KIND_EXITED, Bytes::copy_from_slice(&b))
            }
            EventBody::Truncated { .. } => (KIND_GAP, Bytes::new()),
        };
        let record_len = (HEADER_LEN + payload.len()) as u64;
        let mut state = self.state.lock().expect("spool lock poisoned");
        if self.head.borrow().finished {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "spool is finished"));
        }
        let seq = state.next_seq;
        let needs_new_segment = match state.segments.back() {
            None => true,
            Some(segment) => segment.len.load(Ordering::Relaxed) + record_len > self.segment_bytes,
        };
        if needs_new_segment {
            self.open_segment(&mut state, seq)?;
        }
        let segment = state.segments.back().expect("a segment was just ensured").clone();
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(&seq.to_le_bytes());
        header[8] = kind;
        header[9..12].copy_from_slice(&segment.tag);
        header[12..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        let offset = segment.len.load(Ordering::Relaxed);
        write_all_at(&*segment.file()?, &header, &payload, offset)?;
        segment.len.store(offset + record_len, Ordering::Release);
        state.total_bytes += record_len;
        state.next_seq = seq + 1;
        let body = match body {
            EventBody::Truncated { .. } => EventBody::Truncated { first_available_seq: seq + 1 },
            other => other.clone(),
        };
        self.remember_recent(&mut state, SpooledEvent { seq, body }, &segment, offset + record_len);
        self.evict_oldest(&mut state);
        drop(state);
        self.head.send_modify(|head| head.last_seq = seq);
        Ok(seq)
    }

    /// Marks the spool complete: readers that reach the end stop instead of waiting.
    pub fn finish(&self) {
        let mut state = self.state.lock().expect("spool lock poisoned");
        // Nobody follows a finished spool live: give the window's memory and the files back.
        Self::clear_recent(&mut state);
        if let Some((_, path)) = state.spare.take() {
            let _ = std::fs::remove_file(path);
        }
        for segment in &state.segments {
            segment.file.lock().expect("segment lock poisoned").take();
        }
        self.head.send_modify(|head| head.finished = true);
    }

    /// Deletes the spool's files. Open readers keep what they hold open.
    pub fn remove(&self) {
        let mut state = self.state.lock().expect("spool lock poisoned");
        state.segments.clear();
        state.removed = true;
        state.spare = None;
        Self::clear_recent(&mut state);
        state.total_bytes = 0;
        drop(state);
        if let Err(error) = std::fs::remove_dir_all(&self.dir)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), %error, "could not remove spool directory");
        }
    }

    /// A reader positioned after `after_seq`.
    pub fn reader(self: &Arc<Self>, after_seq: u64) -> SpoolReader {
        SpoolReader { spool: self.clone(), next_seq: after_seq + 1, current: None, resume_at: None }
    }

    fn open_segment(&self, state: &mut SpoolState, first_seq: u64) -> io::Result<()> {
        let (file, path) = match state.spare.take() {
            Some(spare) => spare,
            None => {
                let path = self.dir.join(format!("{:06}.seg", state.next_segment_number));
                (File::options().create_new(true).write(true).read(true).mode(0o600).open(&path)?, path)
            }
        };
        if let Some(previous) = state.segments.back() {
            previous.sealed.store(true, Ordering::Release);
        }
        state.next_segment_number += 1;
        let random = uuid::Uuid::new_v4();
        let tag = [random.as_bytes()[0], random.as_bytes()[1], random.as_bytes()[2]];
        state.segments.push_back(Arc::new(Segment {
            file: Mutex::new(Some(Arc::new(file))),
            path,
            first_seq,
            len: AtomicU64::new(0),
            sealed: AtomicBool::new(false),
            tag,
        }));
        Ok(())
    }

    fn evict_oldest(&self, state: &mut SpoolState) {
        while state.total_bytes > self.limit_bytes && state.segments.len() > 1 {
            let oldest = state.segments.pop_front().expect("len checked");
            state.total_bytes -= oldest.len.load(Ordering::Relaxed);
            // Nobody else holds it (readers only get segments under this lock): recycle the file.
            let oldest = match Arc::try_unwrap(oldest) {
                Ok(segment) if state.spare.is_none() => {
                    let file = segment.file.into_inner().expect("segment lock poisoned");
                    match file.map(Arc::try_unwrap) {
                        Some(Ok(file)) => {
                            state.spare = Some((file, segment.path));
                            continue;
                        }
                        _ => Arc::new(Segment { file: Mutex::new(None), ..segment }),
                    }
                }
                Ok(segment) => Arc::new(segment),
                Err(shared) => shared,
            };
            if let Err(error) = std::fs::remove_file(&oldest.path) {
                tracing::warn!(path = %oldest.path.display(), %error, "could not delete spool segment");
            }
        }
    }

    fn remember_recent(&self, state: &mut SpoolState, event: SpooledEvent, segment: &Segment, end_offset: u64) {
        let added = payload_len(&event.body);
        state.recent_bytes += added;
        WINDOW_BYTES_IN_USE.fetch_add(added, Ordering::Relaxed);
        state.recent.push_back(RecentEvent { event, segment_first_seq: segment.first_seq, end_offset });
        while state.recent.len() > 1
            && (state.recent_bytes > self.recent_limit
                || state.recent.len() > RECENT_WINDOW_EVENTS
                || WINDOW_BYTES_IN_USE.load(Ordering::Relaxed) > ALL_WINDOWS_BYTES)
        {
            let dropped = state.recent.pop_front().expect("len checked");
            let removed = payload_len(&dropped.event.body);
            state.recent_bytes -= removed;
            WINDOW_BYTES_IN_USE.fetch_sub(removed, Ordering::Relaxed);
        }
    }

    fn clear_recent(state: &mut SpoolState) {
        state.recent.clear();
        WINDOW_BYTES_IN_USE.fetch_sub(std::mem::take(&mut state.recent_bytes), Ordering::Relaxed);
    }

    /// Copies events from `next_seq` on out of the in-memory window, if it still holds
    /// `next_seq`. Returns where the last one ends on disk, or `None` when the window cannot serve.
    fn read_recent(&self, next_seq: u64, out: &mut Vec<SpooledEvent>) -> Option<(u64, u64)> {
        let state = self.state.lock().expect("spool lock poisoned");
        let first = state.recent.front()?.event.seq;
        if next_seq < first || next_seq >= state.next_seq {
            return None;
        }
        let mut taken_bytes = 0;
        let mut resume_at = None;
        for recent in state.recent.iter().skip((next_seq - first) as usize) {
            if taken_bytes >= READ_BATCH_BYTES {
                break;
            }
            taken_bytes += payload_len(&recent.event.body);
            out.push(recent.event.clone());
            resume_at = Some((recent.segment_first_seq, recent.end_offset));
        }
        resume_at
    }

    /// The segment holding `seq`, or the seq of the first event still held when `seq` is gone.
    fn locate(&self, seq: u64) -> Locate {
        let state = self.state.lock().expect("spool lock poisoned");
        if state.removed {
            return Locate::Removed;
        }
        let Some(first) = state.segments.front() else {
            return Locate::NotYetWritten;
        };
        if seq < first.first_seq {
            return Locate::Evicted { first_available_seq: first.first_seq };
        }
        match state.segments.iter().rev().find(|segment| segment.first_seq <= seq) {
            Some(segment) => Locate::Found(segment.clone()),
            None => Locate::NotYetWritten,
        }
    }
}

impl Segment {
    /// The open file, or (once the spool finished) a fresh handle on the path.
    fn file(&self) -> io::Result<Arc<File>> {
        if let Some(file) = self.file.lock().expect("segment lock poisoned").as_ref() {
            return Ok(file.clone());
        }
        File::open(&self.path).map(Arc::new).map_err(|error| {
            if error.kind() == io::ErrorKind::NotFound {
                io::Error::new(io::ErrorKind::NotFound, "the spool was removed")
            } else {
                error
            }
        })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Ok(state) = self.state.get_mut() {
            Self::clear_recent(state);
        }
    }
}

enum Locate {
    Found(Arc<Segment>),
    Evicted { first_available_seq: u64 },
    NotYetWritten,
    Removed,
}

fn payload_len(body: &EventBody) -> u64 {
    match body {
        EventBody::Stdout(data) | EventBody::Stderr(data) => data.len() as u64,
        _ => 8,
    }
}

/// Writes `header` then `payload` at `offset` with one `pwritev` (usually).
fn write_all_at(file: &File, header: &[u8], payload: &[u8], mut offset: u64) -> io::Result<()> {
    let mut storage = [IoSlice::new(header), IoSlice::new(payload)];
    let mut slices: &mut [IoSlice<'_>] = &mut storage;
    while !slices.is_empty() {
        // SAFETY: IoSlice is ABI-compatible with iovec; the fd and buffers are live.
        let written = unsafe {
            libc::pwritev(
                std::os::fd::AsRawFd::as_raw_fd(file),
                slices.as_ptr().cast(),
                slices.len() as libc::c_int,
                offset as libc::off_t,
            )
        };
        if written < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if written == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "spool write returned zero"));
        }
        offset += written as u64;
        IoSlice::advance_slices(&mut slices, written as usize);
    }
    Ok(())
}

/// Reads a spool in seq order from a starting point. Holds no buffer between calls.
pub struct SpoolReader {
    spool: Arc<Spool>,
    next_seq: u64,
    /// The segment being read, its file, and the byte offset of the next record in it.
    current: Option<(Arc<Segment>, Arc<File>, u64)>,
    /// After reading from the in-memory window: `(segment first_seq, offset)` where the disk
    /// read resumes if the reader falls behind it.
    resume_at: Option<(u64, u64)>,
}

impl SpoolReader {
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends to `out` every event available now (up to about [`READ_BATCH_BYTES`]).
    /// Leaves `out` unchanged when the reader is caught up.
    pub fn read_available(&mut self, out: &mut Vec<SpooledEvent>) -> io::Result<()> {
        if let Some(resume_at) = self.spool.read_recent(self.next_seq, out) {
            self.next_seq = out.last().expect("read_recent returned events").seq + 1;
            self.current = None;
            self.resume_at = Some(resume_at);
            return Ok(());
        }
        loop {
            let (segment, file, offset) = match self.current.take() {
                Some(current) => current,
                None => match self.spool.locate(self.next_seq) {
                    Locate::Found(segment) => {
                        let offset = match self.resume_at.take() {
                            Some((first_seq, offset)) if first_seq == segment.first_seq => offset,
                            _ => 0,
                        };
                        let file = segment.file()?;
                        (segment, file, offset)
                    }
                    Locate::NotYetWritten => return Ok(()),
                    Locate::Removed => {
                        return Err(io::Error::new(io::ErrorKind::NotFound, "the spool was removed"));
                    }
                    Locate::Evicted { first_available_seq } => {
                        out.push(SpooledEvent {
                            seq: first_available_seq - 1,
                            body: EventBody::Truncated { first_available_seq },
                        });
                        self.next_seq = first_available_seq;
                        continue;
                    }
                },
            };
            // Read `sealed` before `len`: a sealed segment's len is final.
            let sealed = segment.sealed.load(Ordering::Acquire);
            let available = segment.len.load(Ordering::Acquire);
            if offset < available {
                let before = out.len();
                let consumed = self.read_records(&file, offset, available, out)?;
                self.current = Some((segment, file, offset + consumed));
                if out.len() > before {
                    return Ok(());
                }
                // Only records before `next_seq` so far (an attach far into a segment): keep going.
                continue;
            }
            if !sealed {
                self.current = Some((segment, file, offset));
                return Ok(());
            }
            // Done with this segment: the next lookup finds the one holding `next_seq`.
        }
    }

    fn read_records(
        &mut self,
        file: &File,
        offset: u64,
        available: u64,
        out: &mut Vec<SpooledEvent>,
    ) -> io::Result<u64> {
        let mut want = (available - offset).min(READ_BATCH_BYTES);
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, offset)?;
        let first_record = HEADER_LEN as u64 + u32::from_le_bytes(header[12..16].try_into().unwrap()) as u64;
        want = want.max(first_record);
        let buf = read_exact_uninit(file, want as usize, offset)?;
        let mut pos = 0usize;
        while pos + HEADER_LEN <= buf.len() {
            let seq = u64::from_le_bytes(buf[pos..pos + 8].try_into().unwrap());
            let kind = buf[pos + 8];
            let len = u32::from_le_bytes(buf[pos + 12..pos + 16].try_into().unwrap()) as usize;
            let end = pos + HEADER_LEN + len;
            if end > buf.len() {
                break;
            }
            let payload = buf.slice(pos + HEADER_LEN..end);
            pos = end;
            if seq < self.next_seq {
                continue;
            }
            let body = decode(seq, kind, payload)?;
            out.push(SpooledEvent { seq, body });
            self.next_seq = seq + 1;
        }
        Ok(pos as u64)
    }
}

/// `len` bytes at `offset`, into a fresh buffer that is not zeroed first (it is fully
/// overwritten; zeroing it cost a measurable share of replay throughput).
fn read_exact_uninit(file: &File, len: usize, offset: u64) -> io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(len);
    let mut filled = 0;
    while filled < len {
        let spare = buf.spare_capacity_mut();
        // SAFETY: pread writes at most `spare.len()` bytes into the spare capacity, and only
        // the bytes it reports written are exposed by `set_len` below.
        let n = unsafe {
            libc::pread(
                std::os::fd::AsRawFd::as_raw_fd(file),
                spare.as_mut_ptr().cast(),
                len - filled,
                (offset + filled as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "spool segment ended early"));
        }
        filled += n as usize;
        // SAFETY: the first `filled` bytes were written by pread.
        unsafe { buf.set_len(filled) };
    }
    Ok(buf.freeze())
}

fn decode(seq: u64, kind: u8, payload: Bytes) -> io::Result<EventBody> {
    let corrupt = || io::Error::new(io::ErrorKind::InvalidData, format!("corrupt spool record of kind {kind}"));
    let int_at = |at: usize| -> io::Result<[u8; 4]> {
        payload.get(at..at + 4).and_then(|b| b.try_into().ok()).ok_or_else(corrupt)
    };
    Ok(match kind {
        KIND_STARTED => EventBody::Started { pid: u32::from_le_bytes(int_at(0)?) },
        KIND_STDOUT => EventBody::Stdout(payload),
        KIND_STDERR => EventBody::Stderr(payload),
        KIND_EXITED => {
            EventBody::Exited { exit_code: i32::from_le_bytes(int_at(0)?), signal: i32::from_le_bytes(int_at(4)?) }
        }
        KIND_GAP => EventBody::Truncated { first_available_seq: seq + 1 },
        _ => return Err(corrupt()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stdout(text: &str) -> EventBody {
        EventBody::Stdout(Bytes::copy_from_slice(text.as_bytes()))
    }

    fn read_all(reader: &mut SpoolReader) -> Vec<SpooledEvent> {
        let mut out = Vec::new();
        loop {
            let before = out.len();
            reader.read_available(&mut out).unwrap();
            if out.len() == before {
                return out;
            }
        }
    }

    #[test]
    fn replays_from_any_seq_without_gaps_or_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::create(dir.path().join("p"), 1 << 20).unwrap();
        spool.append(&EventBody::Started { pid: 42 }).unwrap();
        for i in 0..1000 {
            spool.append(&stdout(&format!("line {i}\n"))).unwrap();
        }
        spool.append(&EventBody::Exited { exit_code: 3, signal: 0 }).unwrap();
        spool.finish();
        for after in [0, 1, 500, 1001, 1002] {
            let events = read_all(&mut spool.reader(after));
            let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
            assert_eq!(seqs, ((after + 1)..=1002).collect::<Vec<_>>(), "after {after}");
        }
        let events = read_all(&mut spool.reader(0));
        assert_eq!(events[0].body, EventBody::Started { pid: 42 });
        assert_eq!(events[501].body, stdout("line 500\n"));
        assert_eq!(events[1001].body, EventBody::Exited { exit_code: 3, signal: 0 });
        assert!(spool.head().finished);
    }

    #[test]
    fn a_stored_gap_replays_as_truncated_pointing_at_the_next_seq() {
        let dir = tempfile::tempdir().unwrap();
        // Tiny: the gap must survive being read back from disk, not only from the memory window.
        let spool = Spool::create(dir.path().join("p"), 1 << 20).unwrap();
        spool.append(&stdout("before\n")).unwrap();
        assert_eq!(spool.append(&EventBody::Truncated { first_available_seq: 0 }).unwrap(), 2);
        spool.append(&stdout("after\n")).unwrap();
        spool.finish();
        for after in [0, 1] {
            let events = read_all(&mut spool.reader(after));
            let gap = events.iter().find(|e| e.seq == 2).unwrap();
            assert_eq!(gap.body, EventBody::Truncated { first_available_seq: 3 }, "after {after}");
        }
        let from_disk = decode(2, KIND_GAP, Bytes::new()).unwrap();
        assert_eq!(from_disk, EventBody::Truncated { first_available_seq: 3 });
    }

    #[test]
    fn a_reader_follows_appends_made_after_it_caught_up() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::create(dir.path().join("p"), 64 << 10).unwrap();
        let mut reader = spool.reader(0);
        assert!(read_all(&mut reader).is_empty());
        let mut seen = Vec::new();
        // Small limit: this crosses many segment rolls and evictions while the reader keeps up.
        for i in 0..5000 {
            spool.append(&stdout(&format!("{i:>40}\n"))).unwrap();
            if i % 7 == 0 {
                seen.extend(read_all(&mut reader));
            }
        }
        seen.extend(read_all(&mut reader));
        assert_eq!(seen.len(), 5000);
        assert!(seen.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1));
        assert!(spool.state.lock().unwrap().segments.len() > 1);
    }

    #[test]
    fn evicted_history_is_reported_as_truncated_then_replayed_from_the_first_kept_event() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::create(dir.path().join("p"), 64 << 10).unwrap();
        for i in 0..10_000 {
            spool.append(&stdout(&format!("{i:>60}\n"))).unwrap();
        }
        let state = spool.state.lock().unwrap();
        assert!(state.total_bytes <= 64 << 10, "spool holds {} bytes", state.total_bytes);
        let on_disk: u64 = std::fs::read_dir(&spool.dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        // Evicted segments are deleted but for one spare kept for reuse, and a reused file keeps
        // its old size until overwritten: disk use stays within the limit plus two segments.
        assert!(on_disk <= spool.limit_bytes + 2 * spool.segment_bytes, "{on_disk} bytes on disk");
        drop(state);
        let events = read_all(&mut spool.reader(5));
        let EventBody::Truncated { first_available_seq } = events[0].body else {
            panic!("first event {:?}", events[0]);
        };
        assert!(first_available_seq > 6);
        assert_eq!(events[0].seq, first_available_seq - 1);
        assert_eq!(events[1].seq, first_available_seq);
        assert_eq!(events.last().unwrap().seq, 10_000);
        assert_eq!(events.len() as u64, 10_000 - first_available_seq + 2);
    }

    #[test]
    fn a_lagging_reader_finishes_its_open_segment_even_after_eviction() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::create(dir.path().join("p"), 64 << 10).unwrap();
        spool.append(&stdout("first\n")).unwrap();
        let mut reader = spool.reader(0);
        let mut out = Vec::new();
        reader.read_available(&mut out).unwrap();
        for _ in 0..10_000 {
            spool.append(&stdout(&"x".repeat(60))).unwrap();
        }
        let rest = read_all(&mut reader);
        // Everything in the segment it had open, then a reported gap, then the kept tail.
        let gap = rest.iter().position(|e| matches!(e.body, EventBody::Truncated { .. })).expect("a gap");
        assert!(rest[..gap].windows(2).all(|w| w[1].seq == w[0].seq + 1));
        assert_eq!(rest.last().unwrap().seq, 10_001);
    }

    #[test]
    fn an_attach_deep_into_a_segment_skips_to_its_seq() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::create(dir.path().join("p"), 64 << 20).unwrap();
        for i in 0..20_000 {
            spool.append(&stdout(&format!("{i:>60}\n"))).unwrap();
        }
        let mut out = Vec::new();
        spool.reader(19_990).read_available(&mut out).unwrap();
        assert_eq!(out.first().map(|e| e.seq), Some(19_991));
    }

    #[test]
    fn a_finished_spool_holds_no_descriptor_and_still_replays() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::create(dir.path().join("p"), 64 << 10).unwrap();
        for i in 0..3000 {
            spool.append(&stdout(&format!("{i:>40}\n"))).unwrap();
        }
        spool.finish();
        let state = spool.state.lock().unwrap();
        assert!(state.segments.iter().all(|s| s.file.lock().unwrap().is_none()) && state.spare.is_none());
        drop(state);
        let events = read_all(&mut spool.reader(2990));
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), (2991..=3000).collect::<Vec<_>>());
        spool.remove();
        let error = spool.reader(0).read_available(&mut Vec::new()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn output_larger_than_a_segment_is_split_so_the_newest_survives_eviction() {
        let dir = tempfile::tempdir().unwrap();
        // 64 KiB: 16 KiB segments. One 200 KiB chunk, then the exit, with nobody reading.
        let spool = Spool::create(dir.path().join("p"), 64 << 10).unwrap();
        spool.append(&EventBody::Started { pid: 1 }).unwrap();
        let data: Vec<u8> = (0..200u32 << 10).map(|i| (i % 251) as u8).collect();
        let last = spool.append(&EventBody::Stdout(Bytes::from(data.clone()))).unwrap();
        assert!(last > 10, "stored as many events, the last at seq {last}");
        spool.append(&EventBody::Exited { exit_code: 0, signal: 0 }).unwrap();
        spool.finish();
        let events = read_all(&mut spool.reader(0));
        assert!(matches!(events[0].body, EventBody::Truncated { .. }), "{:?}", events[0]);
        let kept: Vec<u8> = events
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::Stdout(chunk) => Some(chunk.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        assert!(kept.len() >= 32 << 10, "the newest output is kept: {} bytes", kept.len());
        assert!(data.ends_with(&kept), "and it is the tail, in order");
        assert_eq!(events.last().unwrap().body, EventBody::Exited { exit_code: 0, signal: 0 });
    }

    #[test]
    fn a_large_record_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::create(dir.path().join("p"), 64 << 20).unwrap();
        let big = "y".repeat(READ_BATCH_BYTES as usize * 2);
        spool.append(&stdout(&big)).unwrap();
        let events = read_all(&mut spool.reader(0));
        assert_eq!(events, vec![SpooledEvent { seq: 1, body: stdout(&big) }]);
    }
}
