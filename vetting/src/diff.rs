//! A one-pass parser for unified diffs as `git diff` and GitHub's `application/vnd.github.diff` write
//! them. It never fails: what it cannot read is reported in [`ParsedDiff::malformed`], and the vetting
//! turns that into a blocking finding, because content the parser skipped is content nobody checked.

/// What a diff does to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStatus {
    Added,
    Deleted,
    Modified,
    Renamed,
    Copied,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    Context,
    Added,
    Removed,
}

/// One line of a hunk, without its leading marker and without a trailing `\r`.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    pub kind: LineKind,
    /// Line number in the new file. For a removed line, the new-file line it sat before.
    pub new_line: u32,
    pub text: &'a str,
}

#[derive(Debug, Clone)]
pub struct Hunk<'a> {
    /// The text git prints after the second `@@` (the enclosing "function" line), often the
    /// instruction a hunk starts inside of.
    pub header_context: &'a str,
    pub lines: Vec<Line<'a>>,
}

impl Hunk<'_> {
    /// Context lines after the last added or removed line.
    pub fn trailing_context(&self) -> usize {
        self.lines.iter().rev().take_while(|line| line.kind == LineKind::Context).count()
    }
}

#[derive(Debug, Clone)]
pub struct FileDiff<'a> {
    pub old_path: Option<String>,
    pub new_path: Option<String>,
    pub status: FileStatus,
    pub binary: bool,
    /// Git file mode of the new side (`100644`, `100755`, `120000` symlink, `160000` submodule).
    pub new_mode: Option<String>,
    /// The new side ends without a newline (`\ No newline at end of file` after a new-side line).
    pub new_ends_without_newline: bool,
    pub hunks: Vec<Hunk<'a>>,
}

impl FileDiff<'_> {
    /// The path the finding names: the new path, or the old one for a deletion.
    pub fn path(&self) -> &str {
        self.new_path.as_deref().or(self.old_path.as_deref()).unwrap_or("")
    }

    pub fn added_lines(&self) -> impl Iterator<Item = &Line<'_>> {
        self.hunks.iter().flat_map(|hunk| hunk.lines.iter()).filter(|line| line.kind == LineKind::Added)
    }

    /// Whether the diff shows the new file through its last line: the whole file is new, or the
    /// last hunk ends with fewer context lines than git's default three (so the file ended there).
    pub fn shows_end_of_new_file(&self) -> bool {
        if self.status == FileStatus::Added || self.new_ends_without_newline {
            return true;
        }
        self.hunks.last().is_some_and(|hunk| hunk.trailing_context() < GIT_DEFAULT_CONTEXT)
    }
}

/// `git diff` and GitHub both write three context lines; a hunk that ends with fewer reached the end
/// of the file.
const GIT_DEFAULT_CONTEXT: usize = 3;

#[derive(Debug, Default)]
pub struct ParsedDiff<'a> {
    pub files: Vec<FileDiff<'a>>,
    pub added: usize,
    pub removed: usize,
    /// Lines the parser could not place, as (1-based line of the diff text, reason).
    pub malformed: Vec<(usize, String)>,
}

/// Parses `diff` in one pass. CRLF line endings are accepted anywhere.
pub fn parse(diff: &str) -> ParsedDiff<'_> {
    let mut parsed = ParsedDiff::default();
    let mut current: Option<FileDiff<'_>> = None;
    // Lines still expected on the (old, new) side of the open hunk.
    let mut remaining = (0u32, 0u32);
    let mut new_line = 0u32;
    let mut last_kind = LineKind::Context;

    for (index, raw) in diff.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if remaining.0 > 0 || remaining.1 > 0 {
            let file = current.as_mut().expect("a hunk is open only inside a file");
            let hunk = file.hunks.last_mut().expect("a hunk is open");
            let (kind, text) = match line.as_bytes().first() {
                Some(b'+') => (LineKind::Added, &line[1..]),
                Some(b'-') => (LineKind::Removed, &line[1..]),
                Some(b' ') => (LineKind::Context, &line[1..]),
                // Some tools strip the lone space of an empty context line.
                None => (LineKind::Context, ""),
                Some(b'\\') => {
                    if last_kind != LineKind::Removed {
                        file.new_ends_without_newline = true;
                    }
                    continue;
                }
                Some(_) => {
                    parsed.malformed.push((index + 1, "hunk ended before its header's line count".into()));
                    remaining = (0, 0);
                    start_of_header_line(line, &mut current, &mut parsed);
                    continue;
                }
            };
            let (old_left, new_left) = &mut remaining;
            match kind {
                LineKind::Context if *old_left > 0 && *new_left > 0 => {
                    *old_left -= 1;
                    *new_left -= 1;
                }
                LineKind::Added if *new_left > 0 => *new_left -= 1,
                LineKind::Removed if *old_left > 0 => *old_left -= 1,
                _ => {
                    parsed.malformed.push((index + 1, "hunk has more lines than its header says".into()));
                    remaining = (0, 0);
                    continue;
                }
            }
            match kind {
                LineKind::Added => parsed.added += 1,
                LineKind::Removed => parsed.removed += 1,
                LineKind::Context => {}
            }
            hunk.lines.push(Line { kind, new_line, text });
            if kind != LineKind::Removed {
                new_line += 1;
            }
            last_kind = kind;
            continue;
        }
        if let Some(rest) = line.strip_prefix("@@ ") {
            let Some(file) = current.as_mut() else {
                parsed.malformed.push((index + 1, "hunk outside any file".into()));
                continue;
            };
            match parse_hunk_header(rest) {
                Some((old_count, new_start, new_count, header_context)) => {
                    remaining = (old_count, new_count);
                    // A hunk that adds to an empty file says `+0,0`... `+1,n`; line numbers start at 1.
                    new_line = new_start.max(1);
                    last_kind = LineKind::Context;
                    file.hunks.push(Hunk { header_context, lines: Vec::new() });
                }
                None => parsed.malformed.push((index + 1, format!("bad hunk header {line:?}"))),
            }
            continue;
        }
        if line.starts_with('\\') {
            // `\ No newline at end of file` after a hunk's last line.
            if let Some(file) = current.as_mut().filter(|file| !file.hunks.is_empty())
                && last_kind != LineKind::Removed
            {
                file.new_ends_without_newline = true;
            }
            continue;
        }
        start_of_header_line(line, &mut current, &mut parsed);
    }
    if remaining.0 > 0 || remaining.1 > 0 {
        parsed.malformed.push((diff.lines().count(), "diff ended inside a hunk".into()));
    }
    parsed.files.extend(current);
    parsed
}

/// Handles a line outside any hunk: file headers and extended headers. Unknown lines there (an email
/// preamble, `index …`) carry no file content and are ignored.
fn start_of_header_line<'a>(line: &'a str, current: &mut Option<FileDiff<'a>>, parsed: &mut ParsedDiff<'a>) {
    if let Some(rest) = line.strip_prefix("diff --git ") {
        parsed.files.extend(current.take());
        let (old_path, new_path) = split_git_header_paths(rest);
        *current = Some(new_file(old_path, new_path));
        return;
    }
    // A plain unified diff (no `diff --git` line): `---` starts a file when none is open or the open
    // one already has hunks.
    if let Some(rest) = line.strip_prefix("--- ") {
        if current.as_ref().is_none_or(|file| !file.hunks.is_empty()) {
            parsed.files.extend(current.take());
            *current = Some(new_file(None, None));
        }
        if let Some(file) = current.as_mut() {
            file.old_path = header_path(rest);
            if file.old_path.is_none() {
                file.status = FileStatus::Added;
            }
        }
        return;
    }
    let Some(file) = current.as_mut() else { return };
    if let Some(rest) = line.strip_prefix("+++ ") {
        file.new_path = header_path(rest);
        if file.new_path.is_none() {
            file.status = FileStatus::Deleted;
        }
    } else if let Some(mode) = line.strip_prefix("new file mode ") {
        file.status = FileStatus::Added;
        file.old_path = None;
        file.new_mode = Some(mode.trim().to_string());
    } else if line.starts_with("deleted file mode ") {
        file.status = FileStatus::Deleted;
        file.new_path = None;
    } else if let Some(mode) = line.strip_prefix("new mode ") {
        file.new_mode = Some(mode.trim().to_string());
    } else if let Some(mode) = line.strip_prefix("index ") {
        // `index abc..def 100644` carries the mode when it did not change.
        if let Some((_, mode)) = mode.split_once(' ') {
            file.new_mode.get_or_insert_with(|| mode.trim().to_string());
        }
    } else if let Some(path) = line.strip_prefix("rename from ") {
        file.status = FileStatus::Renamed;
        file.old_path = Some(unquote(path));
    } else if let Some(path) = line.strip_prefix("rename to ") {
        file.status = FileStatus::Renamed;
        file.new_path = Some(unquote(path));
    } else if let Some(path) = line.strip_prefix("copy from ") {
        file.status = FileStatus::Copied;
        file.old_path = Some(unquote(path));
    } else if let Some(path) = line.strip_prefix("copy to ") {
        file.status = FileStatus::Copied;
        file.new_path = Some(unquote(path));
    } else if line.starts_with("Binary files ") || line == "GIT binary patch" {
        file.binary = true;
    }
}

fn new_file<'a>(old_path: Option<String>, new_path: Option<String>) -> FileDiff<'a> {
    FileDiff {
        old_path,
        new_path,
        status: FileStatus::Modified,
        binary: false,
        new_mode: None,
        new_ends_without_newline: false,
        hunks: Vec::new(),
    }
}

/// `-a,b +c,d @@ context` → (b, c, d, context). Counts default to 1 when omitted.
fn parse_hunk_header(rest: &str) -> Option<(u32, u32, u32, &str)> {
    let (ranges, context) = rest.split_once(" @@")?;
    let (old, new) = ranges.split_once(' ')?;
    let (_, old_count) = parse_range(old.strip_prefix('-')?)?;
    let (new_start, new_count) = parse_range(new.strip_prefix('+')?)?;
    Some((old_count, new_start, new_count, context.trim_start()))
}

fn parse_range(range: &str) -> Option<(u32, u32)> {
    match range.split_once(',') {
        Some((start, count)) => Some((start.parse().ok()?, count.parse().ok()?)),
        None => Some((range.parse().ok()?, 1)),
    }
}

/// The path of a `---`/`+++` line: `None` for `/dev/null`; the `a/`/`b/` prefix and a trailing
/// tab-separated timestamp removed.
fn header_path(rest: &str) -> Option<String> {
    let rest = rest.split('\t').next().unwrap_or(rest);
    let path = unquote(rest.trim_end());
    if path == "/dev/null" {
        return None;
    }
    Some(strip_side_prefix(&path).to_string())
}

fn strip_side_prefix(path: &str) -> &str {
    path.strip_prefix("a/").or_else(|| path.strip_prefix("b/")).unwrap_or(path)
}

/// Splits `a/x b/x` (possibly C-quoted). Unquoted paths with spaces are ambiguous; when both halves
/// are equal (the common case) the split is exact, otherwise the first ` b/` wins and the later
/// `---`/`+++`/`rename` lines correct it.
fn split_git_header_paths(rest: &str) -> (Option<String>, Option<String>) {
    if rest.starts_with('"')
        && let Some(end) = closing_quote(rest)
    {
        let old = unquote(&rest[..=end]);
        let new = unquote(rest[end + 1..].trim_start());
        return (Some(strip_side_prefix(&old).to_string()), Some(strip_side_prefix(&new).to_string()));
    }
    let bytes = rest.len();
    if bytes % 2 == 1 {
        let half = bytes / 2;
        if rest.is_char_boundary(half) && rest.as_bytes()[half] == b' ' {
            let (old, new) = (&rest[..half], &rest[half + 1..]);
            if strip_side_prefix(old) == strip_side_prefix(new) {
                return (Some(strip_side_prefix(old).to_string()), Some(strip_side_prefix(new).to_string()));
            }
        }
    }
    match rest.split_once(" b/") {
        Some((old, new)) => (Some(strip_side_prefix(old).to_string()), Some(new.to_string())),
        None => (None, None),
    }
}

fn closing_quote(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut index = 1;
    while index < bytes.len() {
        match bytes[index] {
            b'\\' => index += 2,
            b'"' => return Some(index),
            _ => index += 1,
        }
    }
    None
}

/// Undoes git's C-style quoting of unusual paths (`"a/t\303\251st"`); other text is returned as is.
fn unquote(text: &str) -> String {
    let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) else {
        return text.to_string();
    };
    let mut bytes = Vec::with_capacity(inner.len());
    let raw = inner.as_bytes();
    let mut index = 0;
    while index < raw.len() {
        if raw[index] != b'\\' || index + 1 == raw.len() {
            bytes.push(raw[index]);
            index += 1;
            continue;
        }
        let next = raw[index + 1];
        index += 2;
        match next {
            b'n' => bytes.push(b'\n'),
            b't' => bytes.push(b'\t'),
            b'0'..=b'7' => {
                let mut value = u32::from(next - b'0');
                for _ in 0..2 {
                    if let Some(digit @ b'0'..=b'7') = raw.get(index) {
                        value = value * 8 + u32::from(digit - b'0');
                        index += 1;
                    }
                }
                bytes.push(value as u8);
            }
            other => bytes.push(other),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_HUNKS: &str = "diff --git a/worker/Dockerfile b/worker/Dockerfile
index 1111111..2222222 100644
--- a/worker/Dockerfile
+++ b/worker/Dockerfile
@@ -1,3 +1,4 @@
 FROM ubuntu:22.04
+ARG A=1
 RUN true
 RUN false
@@ -10,4 +11,4 @@ RUN apt-get update \\
 x
-y
+z
 w
 v
";

    #[test]
    fn numbers_new_lines_across_hunks() {
        let parsed = parse(TWO_HUNKS);
        assert!(parsed.malformed.is_empty(), "{:?}", parsed.malformed);
        let file = &parsed.files[0];
        assert_eq!(file.path(), "worker/Dockerfile");
        assert_eq!(file.status, FileStatus::Modified);
        let added: Vec<_> = file.added_lines().map(|l| (l.new_line, l.text)).collect();
        assert_eq!(added, vec![(2, "ARG A=1"), (12, "z")]);
        assert_eq!(file.hunks[1].header_context, "RUN apt-get update \\");
        assert_eq!((parsed.added, parsed.removed), (2, 1));
    }

    #[test]
    fn accepts_crlf() {
        let crlf = TWO_HUNKS.replace('\n', "\r\n");
        let parsed = parse(&crlf);
        assert!(parsed.malformed.is_empty());
        let added: Vec<_> = parsed.files[0].added_lines().map(|l| (l.new_line, l.text)).collect();
        assert_eq!(added, vec![(2, "ARG A=1"), (12, "z")]);
    }

    #[test]
    fn reads_new_deleted_renamed_and_binary_files() {
        let diff = "diff --git a/n.txt b/n.txt
new file mode 100755
index 0000000..1111111
--- /dev/null
+++ b/n.txt
@@ -0,0 +1,2 @@
+one
+two
\\ No newline at end of file
diff --git a/gone b/gone
deleted file mode 100644
--- a/gone
+++ /dev/null
@@ -1 +0,0 @@
-bye
diff --git a/old name b/new name
similarity index 90%
rename from old name
rename to new name
diff --git a/img.png b/img.png
new file mode 100644
Binary files /dev/null and b/img.png differ
";
        let parsed = parse(diff);
        assert!(parsed.malformed.is_empty(), "{:?}", parsed.malformed);
        let statuses: Vec<_> = parsed.files.iter().map(|f| (f.path().to_string(), f.status, f.binary)).collect();
        assert_eq!(
            statuses,
            vec![
                ("n.txt".to_string(), FileStatus::Added, false),
                ("gone".to_string(), FileStatus::Deleted, false),
                ("new name".to_string(), FileStatus::Renamed, false),
                ("img.png".to_string(), FileStatus::Added, true),
            ]
        );
        assert_eq!(parsed.files[0].new_mode.as_deref(), Some("100755"));
        assert!(parsed.files[0].new_ends_without_newline);
        assert_eq!(parsed.files[2].old_path.as_deref(), Some("old name"));
    }

    #[test]
    fn a_removed_line_that_looks_like_a_header_stays_in_its_hunk() {
        let diff = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,1 +1,1 @@\n--- not a header\n+++ b/y\n";
        let parsed = parse(diff);
        assert!(parsed.malformed.is_empty());
        assert_eq!(parsed.files.len(), 1);
        assert_eq!(parsed.files[0].added_lines().next().map(|l| l.text), Some("++ b/y"));
    }

    #[test]
    fn reports_a_truncated_hunk() {
        let parsed = parse("diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,1 +1,5 @@\n+a\n");
        assert!(!parsed.malformed.is_empty());
    }

    #[test]
    fn unquotes_c_style_paths() {
        let parsed = parse("diff --git \"a/t\\303\\251st\" \"b/t\\303\\251st\"\nnew file mode 100644\n");
        assert_eq!(parsed.files[0].path(), "tést");
    }
}
