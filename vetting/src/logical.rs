//! Logical lines: Dockerfile instructions and shell commands put back together from the physical lines
//! they span (`\` continuations, heredocs), with a map from every byte of the joined text back to the
//! physical line, so a check on the joined text can name the line and tell whether the diff added it.

/// One physical line of a logical line.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    /// Line number in the new file.
    pub line: u32,
    pub text: &'a str,
    /// The diff added this line (always true when a whole file is checked).
    pub added: bool,
}

/// A Dockerfile instruction or a shell command line.
#[derive(Debug, Clone)]
pub struct Logical<'a> {
    /// The instruction keyword, uppercase (`RUN`, `FROM`, or an unknown word); `None` for shell lines
    /// and for fragments.
    pub keyword: Option<String>,
    /// Starts inside an instruction whose first line lies outside the diff's context.
    pub fragment: bool,
    /// Arguments with the keyword and the continuation markers removed; continued lines joined by a
    /// space, heredoc lines by a newline.
    pub text: String,
    pub segments: Vec<Segment<'a>>,
    /// Offset in `text` where each segment's part begins (parallel to `segments`).
    starts: Vec<usize>,
    /// The last line still ended with a continuation marker (or a heredoc never closed).
    pub unterminated: bool,
}

impl<'a> Logical<'a> {
    pub fn first_line(&self) -> u32 {
        self.segments.first().map_or(0, |segment| segment.line)
    }

    pub fn has_added(&self) -> bool {
        self.segments.iter().any(|segment| segment.added)
    }

    #[cfg(test)]
    pub fn segment_at(&self, offset: usize) -> &Segment<'a> {
        let index = self.starts.partition_point(|&start| start <= offset).saturating_sub(1);
        &self.segments[index]
    }

    /// The first added segment that the byte range `start..end` of `text` touches.
    pub fn added_in(&self, start: usize, end: usize) -> Option<&Segment<'a>> {
        let first = self.starts.partition_point(|&s| s <= start).saturating_sub(1);
        let last = self.starts.partition_point(|&s| s < end.max(start + 1)).saturating_sub(1);
        self.segments[first..=last.max(first)].iter().find(|segment| segment.added)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Dockerfile,
    Shell,
}

/// Every instruction a Dockerfile may use (BuildKit's list).
pub const INSTRUCTIONS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

pub fn is_instruction(word: &str) -> bool {
    INSTRUCTIONS.iter().any(|known| known.eq_ignore_ascii_case(word))
}

/// Joins `lines` (consecutive lines of one file, or of one hunk's new side) into logical lines.
/// With `allow_fragment`, leading lines that cannot start an instruction (indented, or not an
/// instruction keyword) are taken as the tail of one that began before the hunk.
pub fn build<'a>(
    lines: impl IntoIterator<Item = Segment<'a>>,
    mode: Mode,
    allow_fragment: bool,
    escape: char,
) -> Vec<Logical<'a>> {
    let mut done = Vec::new();
    let mut open: Option<Logical<'a>> = None;
    let mut continuing = false;
    // Heredoc delimiters still to be closed, in order, with their `<<-` flag.
    let mut heredocs: Vec<(String, bool)> = Vec::new();
    let mut seen_any = false;

    for segment in lines {
        let trimmed = segment.text.trim_start();
        if let Some(logical) = open.as_mut().filter(|_| !heredocs.is_empty()) {
            let (delimiter, strip_tabs) = &heredocs[0];
            let candidate = if *strip_tabs { trimmed } else { segment.text };
            push_segment(logical, segment, segment.text, "\n");
            if candidate.trim_end() == delimiter {
                heredocs.remove(0);
                if heredocs.is_empty() {
                    done.extend(open.take());
                }
            }
            continue;
        }
        if continuing {
            let logical = open.as_mut().expect("continuing an open line");
            // Docker drops comment lines and empty lines inside a continued instruction.
            if trimmed.starts_with('#') || trimmed.is_empty() {
                continue;
            }
            let (body, continues) = strip_continuation(segment.text, escape);
            push_segment(logical, segment, body, " ");
            continuing = continues;
            if !continuing {
                heredocs = heredoc_delimiters(&logical.text);
                if heredocs.is_empty() {
                    done.extend(open.take());
                }
            }
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let first_word = trimmed.split_whitespace().next().unwrap_or("");
        let indented = trimmed.len() != segment.text.len();
        let fragment = allow_fragment
            && !seen_any
            && (mode == Mode::Shell && indented
                || mode == Mode::Dockerfile && (indented || !is_instruction(first_word)));
        seen_any = true;
        let (keyword, rest) = match mode {
            Mode::Dockerfile if !fragment => (Some(first_word.to_ascii_uppercase()), &trimmed[first_word.len()..]),
            _ => (None, segment.text),
        };
        let (body, continues) = strip_continuation(rest, escape);
        let mut logical = Logical {
            keyword,
            fragment,
            text: String::new(),
            segments: Vec::new(),
            starts: Vec::new(),
            unterminated: false,
        };
        push_segment(&mut logical, segment, body.trim_start(), "");
        continuing = continues;
        if !continuing {
            heredocs = heredoc_delimiters(&logical.text);
        }
        if continuing || !heredocs.is_empty() {
            open = Some(logical);
        } else {
            done.push(logical);
        }
    }
    if let Some(mut logical) = open {
        logical.unterminated = true;
        done.push(logical);
    }
    done
}

fn push_segment<'a>(logical: &mut Logical<'a>, segment: Segment<'a>, body: &str, separator: &str) {
    if !logical.segments.is_empty() {
        logical.text.push_str(separator);
    }
    logical.starts.push(logical.text.len());
    logical.text.push_str(body);
    logical.segments.push(segment);
}

/// Removes a trailing continuation marker (trailing spaces after it are tolerated, as BuildKit does).
fn strip_continuation(text: &str, escape: char) -> (&str, bool) {
    let trimmed = text.trim_end();
    match trimmed.strip_suffix(escape) {
        // `\\` at the end is an escaped backslash, not a continuation.
        Some(body) if !body.ends_with(escape) => (body, true),
        _ => (text, false),
    }
}

/// Heredoc delimiters opened by `text` (`<<EOF`, `<<-"EOF"`), outside quotes. In Dockerfiles only
/// RUN/COPY/ADD take heredocs, but the keyword has already been cut off, so any `<<WORD` counts.
fn heredoc_delimiters(text: &str) -> Vec<(String, bool)> {
    let mut found = Vec::new();
    let bytes = text.as_bytes();
    let mut quote: Option<u8> = None;
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        match quote {
            Some(q) if byte == q => quote = None,
            Some(_) => {}
            None if byte == b'\'' || byte == b'"' => quote = Some(byte),
            None if byte == b'<' && bytes.get(index + 1) == Some(&b'<') && bytes.get(index + 2) != Some(&b'<') => {
                let mut cursor = index + 2;
                let strip_tabs = bytes.get(cursor) == Some(&b'-');
                if strip_tabs {
                    cursor += 1;
                }
                while bytes.get(cursor) == Some(&b' ') {
                    cursor += 1;
                }
                let quoted = matches!(bytes.get(cursor), Some(b'\'' | b'"'));
                if quoted {
                    cursor += 1;
                }
                let start = cursor;
                while cursor < bytes.len() && (bytes[cursor].is_ascii_alphanumeric() || bytes[cursor] == b'_') {
                    cursor += 1;
                }
                if cursor > start && !bytes[start].is_ascii_digit() {
                    found.push((text[start..cursor].to_string(), strip_tabs));
                }
                index = cursor + usize::from(quoted);
                continue;
            }
            None => {}
        }
        index += 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(text: &str) -> Vec<Segment<'_>> {
        text.lines().enumerate().map(|(i, line)| Segment { line: i as u32 + 1, text: line, added: true }).collect()
    }

    #[test]
    fn joins_continuations_and_skips_comments_inside() {
        let text = "FROM x:1\nRUN apt-get install -y \\\n    # tools\n    curl \\\n    git\nUSER user\n";
        let logicals = build(segments(text), Mode::Dockerfile, false, '\\');
        let keywords: Vec<_> = logicals.iter().map(|l| l.keyword.clone().unwrap()).collect();
        assert_eq!(keywords, ["FROM", "RUN", "USER"]);
        let run = &logicals[1];
        assert_eq!(run.text.split_whitespace().collect::<Vec<_>>(), ["apt-get", "install", "-y", "curl", "git"]);
        let offset = run.text.find("git").unwrap();
        assert_eq!(run.segment_at(offset).line, 5);
        assert_eq!(run.segment_at(0).line, 2);
    }

    #[test]
    fn a_hunk_that_starts_inside_an_instruction_is_a_fragment() {
        let text = "        git \\\n        jq \\\n    && rm -rf /x\n\nUSER user\n";
        let logicals = build(segments(text), Mode::Dockerfile, true, '\\');
        assert!(logicals[0].fragment);
        assert_eq!(logicals[0].keyword, None);
        assert_eq!(logicals[0].segments.len(), 3);
        assert_eq!(logicals[1].keyword.as_deref(), Some("USER"));
    }

    #[test]
    fn heredoc_body_belongs_to_its_instruction() {
        let text = "RUN <<EOF\napt-get update\nFROM inside\nEOF\nUSER user\n";
        let logicals = build(segments(text), Mode::Dockerfile, false, '\\');
        assert_eq!(logicals.len(), 2);
        assert!(logicals[0].text.contains("FROM inside"));
    }

    #[test]
    fn dangling_continuation_is_unterminated() {
        let logicals = build(segments("RUN a \\\n"), Mode::Dockerfile, false, '\\');
        assert!(logicals[0].unterminated);
    }
}
