//! Picking up the spool a previous broker run left on disk, so seqs mean the same after a
//! restart: a client that read up to seq N before the broker died resumes "after N" and gets
//! what came next, never other bytes under numbers it has already seen.
//!
//! A segment's records run from its start up to the first header that does not continue the
//! seq run, carries another tag than the first (each life of a file has its own random tag), or
//! a record that does not fit in the file: beyond that lie bytes of a torn last write
//! or of the file's previous life (a dropped segment's file is recycled, overwritten in place as
//! the next segment, so file names say nothing about order and a segment can carry an old tail
//! that readers never reach). Reopening therefore orders segments by their first seq, keeps the
//! newest and every older one that ends exactly where the next begins, deletes the rest (an
//! evicted file waiting to be recycled, say), and cuts the newest file after its last complete
//! record.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::{
    EventBody, HEADER_LEN, KIND_EXITED, KIND_GAP, KIND_STARTED, RECENT_WINDOW_BYTES, Segment, Spool, SpoolHead,
    SpoolState, decode,
};

/// A segment file as found, before it is checked.
struct FoundSegment {
    number: u64,
    path: PathBuf,
}

/// What one segment held: its complete records.
struct ScannedSegment {
    path: PathBuf,
    first_seq: u64,
    last_seq: u64,
    last_kind: u8,
    /// Where the last record's payload starts.
    last_payload_offset: u64,
    /// Bytes of complete, in-sequence records.
    len: u64,
    /// The file holds more bytes than that (a torn write or an old tail).
    has_tail: bool,
    /// The tag of this life of the file (its first record's).
    tag: [u8; 3],
}

impl Spool {
    /// The spool in `dir` as a previous run left it: live again and appendable after its last
    /// seq, or finished when it already records the process's exit. `None` when it holds no
    /// record; the caller then starts afresh.
    pub fn reopen(dir: PathBuf, limit_bytes: u64) -> io::Result<Option<Reopened>> {
        let found = match list_segments(&dir) {
            Ok(found) => found,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let next_segment_number = found.iter().map(|segment| segment.number + 1).max().unwrap_or(0);
        let mut scanned = Vec::with_capacity(found.len());
        for segment in found {
            match scan_segment(&segment.path)? {
                Some(segment) => scanned.push(segment),
                None => remove_segment(&segment.path),
            }
        }
        // Newest first; the chain runs back from the newest while seqs stay contiguous.
        scanned.sort_by_key(|segment| std::cmp::Reverse(segment.first_seq));
        let mut kept: Vec<ScannedSegment> = Vec::new();
        for segment in scanned {
            let continues = kept.last().is_none_or(|newer| segment.last_seq + 1 == newer.first_seq);
            if continues {
                kept.push(segment);
            } else {
                remove_segment(&segment.path);
            }
        }
        kept.reverse();
        let Some(last) = kept.last() else { return Ok(None) };
        let exit = if last.last_kind == KIND_EXITED { Some(read_exit(last)?) } else { None };
        if last.has_tail {
            // The next append starts on a record boundary, and nothing stale lies beyond it.
            tracing::warn!(path = %last.path.display(), len = last.len, "spool segment cut after its last complete record");
            File::options().write(true).open(&last.path)?.set_len(last.len)?;
        }
        let last_seq = last.last_seq;
        let last_index = kept.len() - 1;
        let mut segments = VecDeque::with_capacity(kept.len());
        let mut total_bytes = 0;
        for (index, scanned) in kept.into_iter().enumerate() {
            let is_last = index == last_index;
            // Held open as a live spool holds its segments, so a reader that found one keeps it
            // even if the writer drops it meanwhile; writable, since a dropped segment's file
            // is recycled as the next one.
            let file = File::options().read(true).write(true).open(&scanned.path)?;
            total_bytes += scanned.len;
            segments.push_back(Arc::new(Segment {
                file: Mutex::new(Some(Arc::new(file))),
                path: scanned.path,
                first_seq: scanned.first_seq,
                len: AtomicU64::new(scanned.len),
                sealed: AtomicBool::new(!is_last),
                tag: scanned.tag,
            }));
        }
        let spool = Spool {
            dir,
            limit_bytes,
            segment_bytes: Spool::segment_bytes_for(limit_bytes),
            recent_limit: RECENT_WINDOW_BYTES.min(limit_bytes / 8),
            state: Mutex::new(SpoolState {
                segments,
                total_bytes,
                next_seq: last_seq + 1,
                next_segment_number,
                spare: None,
                recent: VecDeque::new(),
                recent_bytes: 0,
                removed: false,
            }),
            head: watch::Sender::new(SpoolHead { last_seq, finished: false }),
        };
        // The limit may be lower than the previous run's.
        spool.evict_oldest(&mut spool.state.lock().expect("spool lock poisoned"));
        if exit.is_some() {
            spool.finish();
        }
        Ok(Some(Reopened { spool: Arc::new(spool), exit }))
    }
}

/// A spool picked up from disk.
pub struct Reopened {
    pub spool: Arc<Spool>,
    /// `(exit_code, signal)` when the spool already records the process's end (it is then
    /// finished: a replay, nothing more to append).
    pub exit: Option<(i32, i32)>,
}

/// The `(exit_code, signal)` of the segment's last record, an `Exited` one.
fn read_exit(segment: &ScannedSegment) -> io::Result<(i32, i32)> {
    let mut payload = [0u8; 8];
    File::open(&segment.path)?.read_exact_at(&mut payload, segment.last_payload_offset)?;
    match decode(segment.last_seq, KIND_EXITED, bytes::Bytes::copy_from_slice(&payload))? {
        EventBody::Exited { exit_code, signal } => Ok((exit_code, signal)),
        other => unreachable!("an exit record decodes as an exit, not {other:?}"),
    }
}

/// `<n>.seg` files in `dir`, in the order they were written.
fn list_segments(dir: &Path) -> io::Result<Vec<FoundSegment>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let number = name.to_str().and_then(|n| n.strip_suffix(".seg")).and_then(|n| n.parse::<u64>().ok());
        match number {
            Some(number) if entry.file_type()?.is_file() => found.push(FoundSegment { number, path: entry.path() }),
            _ => tracing::warn!(path = %entry.path().display(), "not a spool segment; left alone"),
        }
    }
    found.sort_by_key(|segment| segment.number);
    Ok(found)
}

/// Walks the record headers of one segment from its start while seqs run on. `None` when it
/// holds no complete record.
fn scan_segment(path: &Path) -> io::Result<Option<ScannedSegment>> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut scanned: Option<ScannedSegment> = None;
    let mut offset = 0u64;
    let mut header = [0u8; HEADER_LEN];
    while offset + HEADER_LEN as u64 <= file_len {
        file.read_exact_at(&mut header, offset)?;
        let seq = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let kind = header[8];
        let tag: [u8; 3] = header[9..12].try_into().expect("3 bytes");
        let len = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes")) as u64;
        let end = offset + HEADER_LEN as u64 + len;
        let continues = seq >= 1 && scanned.as_ref().is_none_or(|s| seq == s.last_seq + 1 && tag == s.tag);
        if !continues
            || !(KIND_STARTED..=KIND_GAP).contains(&kind)
            || end > file_len
            || (kind == KIND_EXITED && len != 8)
        {
            break;
        }
        let record = scanned.get_or_insert(ScannedSegment {
            path: path.to_owned(),
            first_seq: seq,
            last_seq: seq,
            last_kind: kind,
            last_payload_offset: 0,
            len: 0,
            has_tail: false,
            tag,
        });
        record.last_seq = seq;
        record.last_kind = kind;
        record.last_payload_offset = offset + HEADER_LEN as u64;
        record.len = end;
        offset = end;
    }
    Ok(scanned.map(|s| ScannedSegment { has_tail: file_len > s.len, ..s }))
}

fn remove_segment(path: &Path) {
    if let Err(error) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), %error, "could not delete a spool segment");
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use bytes::Bytes;

    use super::super::{EventBody, SpoolReader, SpooledEvent};
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

    /// A spool a broker was writing when it died: never finished, files left as they are.
    fn abandoned(dir: &Path, limit: u64, lines: usize) -> Vec<SpooledEvent> {
        let spool = Spool::create(dir.to_owned(), limit).unwrap();
        spool.append(&EventBody::Started { pid: 7 }).unwrap();
        for i in 0..lines {
            spool.append(&stdout(&format!("{i:>50}\n"))).unwrap();
        }
        read_all(&mut spool.reader(0))
    }

    #[test]
    fn a_reopened_spool_replays_every_seq_as_before_and_appends_after_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        // 1 MiB: several segments, nothing evicted.
        let before = abandoned(&path, 1 << 20, 5000);
        let spool = Spool::reopen(path, 1 << 20).unwrap().expect("records to continue").spool;
        assert_eq!(spool.head(), SpoolHead { last_seq: 5001, finished: false });
        assert!(spool.state.lock().unwrap().segments.len() > 1);
        assert_eq!(read_all(&mut spool.reader(0)), before, "same events under the same seqs");
        let mut follower = spool.reader(5001);
        assert_eq!(spool.append(&EventBody::Truncated { first_available_seq: 0 }).unwrap(), 5002);
        assert_eq!(spool.append(&stdout("after\n")).unwrap(), 5003);
        let after = read_all(&mut follower);
        assert_eq!(after[0].body, EventBody::Truncated { first_available_seq: 5003 });
        assert_eq!(after[1], SpooledEvent { seq: 5003, body: stdout("after\n") });
        // And from disk, once the in-memory window cannot serve it.
        let from_4990 = read_all(&mut spool.reader(4990));
        assert_eq!(from_4990.iter().map(|e| e.seq).collect::<Vec<_>>(), (4991..=5003).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_last_record_is_cut_and_the_next_append_takes_its_seq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let before = abandoned(&path, 1 << 20, 10);
        let segment = path.join("000000.seg");
        let intact_len = std::fs::metadata(&segment).unwrap().len();
        // Half a record: a header announcing 100 bytes, 3 of them written.
        let mut torn = Vec::from(12u64.to_le_bytes());
        torn.extend([2, 0, 0, 0]);
        torn.extend(100u32.to_le_bytes());
        torn.extend(b"abc");
        std::fs::OpenOptions::new().append(true).open(&segment).unwrap().write_all(&torn).unwrap();
        let spool = Spool::reopen(path.clone(), 1 << 20).unwrap().unwrap().spool;
        assert_eq!(std::fs::metadata(&segment).unwrap().len(), intact_len, "the torn record is gone");
        drop(spool);
        // A whole record in sequence, but not of this life of the file (an old tail of a recycled
        // file, or output made to look like a record): its tag gives it away.
        let written = std::fs::read(&segment).unwrap();
        let life_tag = &written[9..12];
        let mut forged = Vec::from(12u64.to_le_bytes());
        forged.push(4);
        forged.extend(life_tag.iter().map(|b| !b));
        forged.extend(8u32.to_le_bytes());
        forged.extend([0u8; 8]);
        std::fs::OpenOptions::new().append(true).open(&segment).unwrap().write_all(&forged).unwrap();
        let spool = Spool::reopen(path, 1 << 20).unwrap().unwrap().spool;
        assert_eq!(std::fs::metadata(&segment).unwrap().len(), intact_len, "the foreign record is gone");
        assert!(!spool.head().finished, "its forged exit was not taken");
        assert_eq!(read_all(&mut spool.reader(0)), before);
        assert_eq!(spool.append(&stdout("next\n")).unwrap(), 12);
        assert_eq!(read_all(&mut spool.reader(11)), [SpooledEvent { seq: 12, body: stdout("next\n") }]);
    }

    #[test]
    fn recycled_and_evicted_segment_files_do_not_confuse_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        // 64 KiB: thousands of evictions; dropped segments' files are overwritten as new ones,
        // so file names no longer follow seq order and one file may wait as a spare.
        let before = abandoned(&path, 64 << 10, 20_000);
        let first_kept = before[1].seq;
        assert!(matches!(before[0].body, EventBody::Truncated { .. }) && first_kept > 1000);
        let spool = Spool::reopen(path.clone(), 64 << 10).unwrap().unwrap().spool;
        assert_eq!(spool.head().last_seq, 20_001);
        let after = read_all(&mut spool.reader(0));
        // The same history, though a spare file with older records may now be counted in.
        let tail = |events: &[SpooledEvent]| events.iter().filter(|e| e.seq >= first_kept).cloned().collect::<Vec<_>>();
        assert_eq!(tail(&after), tail(&before));
        assert!(after.windows(2).skip(1).all(|w| w[1].seq == w[0].seq + 1), "contiguous after the gap");
        assert_eq!(spool.append(&stdout("more\n")).unwrap(), 20_002);
        // Writing on recycles the reopened segments' files as new ones.
        for i in 0..20_000 {
            spool.append(&stdout(&format!("{i:>50}\n"))).unwrap();
        }
        spool.append(&EventBody::Exited { exit_code: 0, signal: 0 }).unwrap();
        let tail = read_all(&mut spool.reader(0));
        assert_eq!(tail.last().unwrap().seq, 40_003);
        assert!(tail.windows(2).skip(1).all(|w| w[1].seq == w[0].seq + 1), "contiguous after the gap");
    }

    #[test]
    fn an_empty_or_missing_spool_gives_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Spool::reopen(dir.path().join("missing"), 1 << 20).unwrap().is_none());
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        std::fs::write(empty.join("000000.seg"), b"").unwrap();
        assert!(Spool::reopen(empty, 1 << 20).unwrap().is_none());
    }

    #[test]
    fn a_spool_that_recorded_the_exit_comes_back_finished_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ended");
        let spool = Spool::create(path.clone(), 1 << 20).unwrap();
        spool.append(&stdout("bye\n")).unwrap();
        spool.append(&EventBody::Exited { exit_code: 3, signal: 9 }).unwrap();
        let before = read_all(&mut spool.reader(0));
        drop(spool);
        let reopened = Spool::reopen(path, 1 << 20).unwrap().unwrap();
        assert_eq!(reopened.exit, Some((3, 9)));
        assert_eq!(reopened.spool.head(), SpoolHead { last_seq: 2, finished: true });
        assert_eq!(read_all(&mut reopened.spool.reader(0)), before);
        assert!(reopened.spool.append(&stdout("more\n")).is_err(), "nothing is appended after the exit");
    }
}
