//! A small POSIX-shell tokenizer: enough to find the commands in a `RUN` line or a shell script and
//! the words they were given, with each word's byte range in the text it came from. It does not
//! expand anything; a word that depends on an expansion is marked `dynamic`.

/// One shell word with quotes removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    pub start: usize,
    pub end: usize,
    /// Contains `$VAR`, `${…}`, `$(…)` or backquotes outside single quotes.
    pub dynamic: bool,
}

/// A simple command: its words, redirections removed.
pub type Command = Vec<Word>;

/// Commands joined by `|`.
pub type Pipeline = Vec<Command>;

/// Splits `text` into pipelines (separated by `&&`, `||`, `;`, `&`, newlines, parentheses).
pub fn pipelines(text: &str) -> Vec<Pipeline> {
    let mut tokenizer = Tokenizer { bytes: text.as_bytes(), text, at: 0, out: Vec::new(), pipeline: Vec::new() };
    tokenizer.run();
    tokenizer.out
}

/// The words from the program name on: leading `VAR=value` assignments, `sudo`/`env` and their
/// options, and shell keywords (`then`, `do`, `!`, `{`, `time`, …) are skipped.
pub fn program_words(command: &[Word]) -> &[Word] {
    let mut index = 0;
    while index < command.len() {
        let word = command[index].text.as_str();
        if is_assignment(word) || SKIPPED_PREFIXES.contains(&word) {
            index += 1;
        } else if word == "sudo" || word == "env" {
            index += 1;
            while let Some(next) = command.get(index) {
                let flag = next.text.as_str();
                if flag.starts_with('-') {
                    index += 1;
                    // sudo options that take a value.
                    if word == "sudo" && matches!(flag, "-u" | "-g" | "-h" | "-p" | "-C" | "-U" | "-r" | "-t") {
                        index += 1;
                    }
                } else if word == "env" && is_assignment(flag) {
                    index += 1;
                } else {
                    break;
                }
            }
        } else {
            break;
        }
    }
    &command[index.min(command.len())..]
}

/// Words that may precede the program without being it.
const SKIPPED_PREFIXES: &[&str] = &[
    "then", "do", "else", "elif", "if", "while", "until", "!", "{", "}", "time", "nohup", "exec", "command", "builtin",
];

pub fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit()
        }
        None => false,
    }
}

/// The last path component of a command name (`/usr/bin/curl` → `curl`).
pub fn base_name(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

struct Tokenizer<'a> {
    bytes: &'a [u8],
    text: &'a str,
    at: usize,
    out: Vec<Pipeline>,
    pipeline: Pipeline,
}

impl Tokenizer<'_> {
    fn run(&mut self) {
        let mut command: Command = Vec::new();
        while self.at < self.bytes.len() {
            let byte = self.bytes[self.at];
            match byte {
                b' ' | b'\t' | b'\r' => self.at += 1,
                b'\n' | b';' | b'(' | b')' => {
                    self.at += 1;
                    self.end_pipeline(&mut command);
                }
                b'&' if self.peek(1) == Some(b'>') => self.skip_redirection(),
                b'&' => {
                    self.at += if self.peek(1) == Some(b'&') { 2 } else { 1 };
                    self.end_pipeline(&mut command);
                }
                b'|' if self.peek(1) == Some(b'|') => {
                    self.at += 2;
                    self.end_pipeline(&mut command);
                }
                b'|' => {
                    self.at += if self.peek(1) == Some(b'&') { 2 } else { 1 };
                    self.pipeline.push(std::mem::take(&mut command));
                }
                b'#' => {
                    while self.at < self.bytes.len() && self.bytes[self.at] != b'\n' {
                        self.at += 1;
                    }
                }
                b'>' | b'<' if self.peek(1) != Some(b'(') => self.skip_redirection(),
                _ => {
                    let word = self.word();
                    // `2>file`: the digits are a file descriptor, not a word.
                    let redirect_next = matches!(self.bytes.get(self.at), Some(b'>' | b'<'));
                    if redirect_next && !word.text.is_empty() && word.text.bytes().all(|b| b.is_ascii_digit()) {
                        continue;
                    }
                    command.push(word);
                }
            }
        }
        self.end_pipeline(&mut command);
    }

    fn peek(&self, ahead: usize) -> Option<u8> {
        self.bytes.get(self.at + ahead).copied()
    }

    fn end_pipeline(&mut self, command: &mut Command) {
        if !command.is_empty() {
            self.pipeline.push(std::mem::take(command));
        }
        if !self.pipeline.is_empty() {
            self.out.push(std::mem::take(&mut self.pipeline));
        }
    }

    /// Skips a redirection operator and its target word.
    fn skip_redirection(&mut self) {
        while matches!(self.bytes.get(self.at), Some(b'>' | b'<' | b'&' | b'|' | b'-')) {
            self.at += 1;
        }
        while matches!(self.bytes.get(self.at), Some(b' ' | b'\t')) {
            self.at += 1;
        }
        if self.at < self.bytes.len() && !matches!(self.bytes[self.at], b'\n' | b';' | b'|' | b'&' | b'(' | b')') {
            self.word();
        }
    }

    /// Reads one word starting at `self.at`.
    fn word(&mut self) -> Word {
        let start = self.at;
        let mut text = String::new();
        let mut dynamic = false;
        while self.at < self.bytes.len() {
            let byte = self.bytes[self.at];
            match byte {
                b' ' | b'\t' | b'\r' | b'\n' | b';' | b'&' | b'|' | b'(' | b')' => break,
                b'>' | b'<' if self.peek(1) != Some(b'(') => break,
                b'\'' => {
                    let end = self.find_from(self.at + 1, b'\'');
                    text.push_str(&self.text[self.at + 1..end]);
                    self.at = (end + 1).min(self.bytes.len());
                }
                b'"' => {
                    self.at += 1;
                    while self.at < self.bytes.len() && self.bytes[self.at] != b'"' {
                        match self.bytes[self.at] {
                            b'\\' if self.at + 1 < self.bytes.len() => {
                                let next = self.bytes[self.at + 1];
                                if !matches!(next, b'"' | b'\\' | b'$' | b'`') {
                                    text.push('\\');
                                }
                                self.push_char_at(&mut text, self.at + 1);
                            }
                            b'$' | b'`' => {
                                dynamic = true;
                                self.expansion(&mut text);
                            }
                            _ => self.push_char_at(&mut text, self.at),
                        }
                    }
                    self.at = (self.at + 1).min(self.bytes.len());
                }
                b'\\' if self.at + 1 < self.bytes.len() => self.push_char_at(&mut text, self.at + 1),
                b'$' | b'`' => {
                    dynamic = true;
                    self.expansion(&mut text);
                }
                b'<' | b'>' => {
                    // Process substitution `<(…)`: kept whole, like `$(…)`.
                    dynamic = true;
                    text.push(char::from(byte));
                    self.at += 1;
                    self.expansion(&mut text);
                }
                _ => self.push_char_at(&mut text, self.at),
            }
        }
        Word { text, start, end: self.at, dynamic }
    }

    /// Pushes the character starting at `index` and moves past it.
    fn push_char_at(&mut self, text: &mut String, index: usize) {
        let ch = self.text[index..].chars().next().expect("index is on a char boundary");
        text.push(ch);
        self.at = index + ch.len_utf8();
    }

    fn find_from(&self, from: usize, needle: u8) -> usize {
        self.bytes[from.min(self.bytes.len())..]
            .iter()
            .position(|&b| b == needle)
            .map_or(self.bytes.len(), |p| from + p)
    }

    /// Copies an expansion (`$VAR`, `${…}`, `$(…)`, `` `…` ``, or `(…)` after `<`/`>`) verbatim.
    fn expansion(&mut self, text: &mut String) {
        let start = self.at;
        let end = match (self.bytes[self.at], self.peek(1)) {
            (b'`', _) => self.find_from(self.at + 1, b'`') + 1,
            (b'$', Some(b'{')) => self.find_from(self.at + 2, b'}') + 1,
            (b'$', Some(b'(')) => self.matching_paren(self.at + 1),
            (b'(', _) => self.matching_paren(self.at),
            (b'$', _) => {
                let mut end = self.at + 1;
                while end < self.bytes.len() && (self.bytes[end].is_ascii_alphanumeric() || self.bytes[end] == b'_') {
                    end += 1;
                }
                // `$?`, `$1`, `$$`: one special character.
                if end == self.at + 1 && end < self.bytes.len() && !self.bytes[end].is_ascii_whitespace() {
                    end += 1;
                }
                end
            }
            _ => self.at + 1,
        };
        let end = end.min(self.bytes.len());
        text.push_str(&self.text[start..end]);
        self.at = end;
    }

    /// Index just past the `)` matching the `(` at `open`, skipping quoted text.
    fn matching_paren(&self, open: usize) -> usize {
        let mut depth = 0usize;
        let mut index = open;
        let mut quote: Option<u8> = None;
        while index < self.bytes.len() {
            let byte = self.bytes[index];
            match quote {
                Some(q) if byte == q => quote = None,
                Some(_) => {}
                None => match byte {
                    b'\'' | b'"' => quote = Some(byte),
                    b'(' => depth += 1,
                    b')' => {
                        depth -= 1;
                        if depth == 0 {
                            return index + 1;
                        }
                    }
                    _ => {}
                },
            }
            index += 1;
        }
        self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str) -> Vec<Vec<Vec<String>>> {
        pipelines(text)
            .into_iter()
            .map(|p| p.into_iter().map(|c| c.into_iter().map(|w| w.text).collect()).collect())
            .collect()
    }

    #[test]
    fn splits_commands_pipes_and_redirections() {
        let got =
            texts("apt-get update && curl -fsSL 'https://x/k' | gpg --dearmor -o /k 2>&1 > /dev/null; echo \"a b\"");
        assert_eq!(
            got,
            vec![
                vec![vec!["apt-get", "update"]],
                vec![vec!["curl", "-fsSL", "https://x/k"], vec!["gpg", "--dearmor", "-o", "/k"]],
                vec![vec!["echo", "a b"]],
            ]
        );
    }

    #[test]
    fn keeps_expansions_whole_and_marks_them() {
        let pipelines =
            pipelines("npm install -g \"@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}\" $(cat x) <(curl y)");
        let words = &pipelines[0][0];
        assert_eq!(words[3].text, "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}");
        assert!(words[3].dynamic);
        assert_eq!(words[4].text, "$(cat x)");
        assert_eq!(words[5].text, "<(curl y)");
        assert!(!words[2].dynamic);
    }

    #[test]
    fn word_offsets_point_into_the_text() {
        let text = "if true; then sudo -E apt-get install -y jq; fi";
        let pipelines = pipelines(text);
        let command = &pipelines[1][0];
        let program = program_words(command);
        assert_eq!(program[0].text, "apt-get");
        let jq = program.last().unwrap();
        assert_eq!(&text[jq.start..jq.end], "jq");
    }

    #[test]
    fn comments_end_at_newline() {
        assert_eq!(texts("a # b c\nd"), vec![vec![vec!["a"]], vec![vec!["d"]]]);
    }
}
