//! A minimal, deterministic `.tar.gz` writer for template build uploads.
//!
//! E2B's build API takes the files of each COPY step as a gzipped tar (the SDK's format). The
//! template files are small, so the gzip stream uses stored (uncompressed) deflate blocks:
//! valid gzip, no compression dependency, and byte-for-byte reproducible (all mtimes 0).

use bytes::{BufMut, Bytes, BytesMut};

const BLOCK: usize = 512;
/// Largest stored deflate block.
const MAX_STORED: usize = 0xffff;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TarError {
    #[error("path {0:?} is too long for a tar header")]
    PathTooLong(String),
    #[error("file {0:?} is too large for a tar header")]
    TooLarge(String),
}

/// One file to archive: a relative path, its content, and whether it is executable.
pub struct TarFile<'a> {
    pub path: &'a str,
    pub content: &'a [u8],
    pub executable: bool,
}

/// The files as an uncompressed ustar archive, in the order given.
pub fn tar(files: &[TarFile<'_>]) -> Result<Vec<u8>, TarError> {
    let mut out = Vec::new();
    for file in files {
        out.extend_from_slice(&header(file)?);
        out.extend_from_slice(file.content);
        out.resize(out.len().next_multiple_of(BLOCK), 0);
    }
    // Two zero blocks end the archive.
    out.resize(out.len() + 2 * BLOCK, 0);
    Ok(out)
}

fn header(file: &TarFile<'_>) -> Result<[u8; BLOCK], TarError> {
    let mut header = [0u8; BLOCK];
    let (prefix, name) = split_path(file.path).ok_or_else(|| TarError::PathTooLong(file.path.to_owned()))?;
    header[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut header[100..108], if file.executable { 0o755 } else { 0o644 });
    octal(&mut header[108..116], 0); // uid
    octal(&mut header[116..124], 0); // gid
    if file.content.len() as u64 >= 0o77777777777 {
        return Err(TarError::TooLarge(file.path.to_owned()));
    }
    octal(&mut header[124..136], file.content.len() as u64);
    octal(&mut header[136..148], 0); // mtime: reproducible archives
    header[156] = b'0'; // regular file
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    // The checksum counts its own field as spaces.
    header[148..156].fill(b' ');
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    let digits = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(digits.as_bytes());
    Ok(header)
}

/// `(prefix, name)` with `name` ≤ 100 bytes and `prefix` ≤ 155, split at a `/`.
fn split_path(path: &str) -> Option<(&str, &str)> {
    if path.len() <= 100 {
        return Some(("", path));
    }
    path.match_indices('/')
        .map(|(i, _)| (&path[..i], &path[i + 1..]))
        .find(|(prefix, name)| prefix.len() <= 155 && name.len() <= 100 && !name.is_empty())
}

/// Writes `value` as zero-padded octal filling all but the last byte, which stays NUL.
fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let digits = format!("{value:0width$o}");
    field[..width].copy_from_slice(digits.as_bytes());
    field[width] = 0;
}

/// `data` as a gzip member made of stored deflate blocks.
pub fn gzip_stored(data: &[u8]) -> Bytes {
    let blocks = data.len().div_ceil(MAX_STORED).max(1);
    let mut out = BytesMut::with_capacity(data.len() + blocks * 5 + 18);
    // Magic, deflate, no flags, mtime 0, no extra flags, OS unknown.
    out.put_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    let mut chunks = data.chunks(MAX_STORED).peekable();
    if chunks.peek().is_none() {
        out.put_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        // BFINAL in bit 0, BTYPE 00 (stored); the rest of the byte pads to a byte boundary.
        out.put_u8(u8::from(last));
        let len = chunk.len() as u16;
        out.put_u16_le(len);
        out.put_u16_le(!len);
        out.put_slice(chunk);
    }
    out.put_u32_le(crc32(data));
    out.put_u32_le(data.len() as u32);
    out.freeze()
}

/// CRC-32 (IEEE 802.3), as gzip needs it.
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 != 0 { 0xedb8_8320 ^ (crc >> 1) } else { crc >> 1 };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |crc, &b| TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn archives_are_deterministic_and_block_aligned() {
        let files = [
            TarFile { path: "setup.sh", content: b"#!/bin/sh\necho hi\n", executable: true },
            TarFile { path: "conf/app.toml", content: b"x = 1\n", executable: false },
        ];
        let first = tar(&files).unwrap();
        assert_eq!(first, tar(&files).unwrap());
        assert_eq!(first.len() % BLOCK, 0);
        assert_eq!(first.len(), 4 * BLOCK + 2 * BLOCK);
        assert_eq!(&first[257..263], b"ustar\0");
        assert_eq!(&first[100..107], b"0000755");
    }

    #[test]
    fn long_paths_split_into_prefix_and_name() {
        let path = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        assert_eq!(split_path(&path), Some((&path[..120], &path[121..])));
        assert_eq!(split_path(&"x".repeat(300)), None);
    }

    /// The system's tar and gzip read what we write (skipped where they are missing).
    #[test]
    fn system_tar_extracts_the_archive() {
        let Ok(dir) = tempfile::tempdir() else { return };
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let files = [
            TarFile { path: "a/b/run.sh", content: b"#!/bin/sh\n", executable: true },
            TarFile { path: "big.bin", content: &big, executable: false },
        ];
        let archive = dir.path().join("x.tar.gz");
        std::fs::write(&archive, gzip_stored(&tar(&files).unwrap())).unwrap();
        let Ok(status) = std::process::Command::new("tar").arg("-xzf").arg(&archive).arg("-C").arg(dir.path()).status()
        else {
            return;
        };
        assert!(status.success());
        assert_eq!(std::fs::read(dir.path().join("a/b/run.sh")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(std::fs::read(dir.path().join("big.bin")).unwrap(), big);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("a/b/run.sh")).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{mode:o}");
    }
}
