//! The shipped lists of known package names (`vetting/data/*.txt`), embedded at compile time and
//! indexed once per process, and the verdict on one name: known, a typosquat of a known name, or
//! unknown.

use std::collections::HashSet;
use std::sync::LazyLock;

use crate::typosquat::{Index, Resemblance, split_scope};

/// A package registry whose names the vetting checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ecosystem {
    Npm,
    Pypi,
    Debian,
}

impl Ecosystem {
    /// How a finding names a package of this ecosystem: `npm package "x"`.
    pub fn noun(self) -> &'static str {
        match self {
            Ecosystem::Npm => "npm package",
            Ecosystem::Pypi => "PyPI package",
            Ecosystem::Debian => "apt package",
        }
    }

    /// The list file, as the finding tells a reader where to extend it.
    pub fn list_path(self) -> &'static str {
        match self {
            Ecosystem::Npm => "vetting/data/npm.txt",
            Ecosystem::Pypi => "vetting/data/pypi.txt",
            Ecosystem::Debian => "vetting/data/debian.txt",
        }
    }

    pub fn list_name(self) -> &'static str {
        match self {
            Ecosystem::Npm => "known npm packages",
            Ecosystem::Pypi => "known PyPI packages",
            Ecosystem::Debian => "known Debian/Ubuntu packages",
        }
    }

    /// The registry's own notion of "the same name": npm and Debian names are lowercase; PyPI
    /// compares names per PEP 503 (lowercase, runs of `-`, `_`, `.` become one `-`).
    pub fn normalize(self, name: &str) -> String {
        match self {
            Ecosystem::Npm | Ecosystem::Debian => name.to_ascii_lowercase(),
            Ecosystem::Pypi => {
                let mut out = String::with_capacity(name.len());
                let mut in_separator_run = false;
                for ch in name.chars() {
                    if matches!(ch, '-' | '_' | '.') {
                        if !in_separator_run {
                            out.push('-');
                        }
                        in_separator_run = true;
                    } else {
                        out.push(ch.to_ascii_lowercase());
                        in_separator_run = false;
                    }
                }
                out
            }
        }
    }
}

/// One embedded list with its lookup structures.
pub struct KnownList {
    pub ecosystem: Ecosystem,
    /// Normalised names in file order (earlier = preferred when two are equally close).
    names: Vec<String>,
    set: HashSet<String>,
    index: Index,
}

impl KnownList {
    fn parse(ecosystem: Ecosystem, text: &str) -> KnownList {
        let mut names = Vec::new();
        let mut set = HashSet::new();
        for line in text.lines() {
            let name = line.split('#').next().unwrap_or("").trim();
            if name.is_empty() {
                continue;
            }
            let normalized = ecosystem.normalize(name);
            if set.insert(normalized.clone()) {
                names.push(normalized);
            }
        }
        let index = Index::new(&names);
        KnownList { ecosystem, names, set, index }
    }

    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn contains(&self, name: &str) -> bool {
        let normalized = self.ecosystem.normalize(name);
        self.set.contains(&normalized) || self.is_types_package_of_known(&normalized)
    }

    /// `@types/x` for a listed `x`: DefinitelyTyped publishes every `@types/*` package from one
    /// reviewed repository, so its typings of a known package are as trusted as the package.
    fn is_types_package_of_known(&self, normalized: &str) -> bool {
        self.ecosystem == Ecosystem::Npm
            && split_scope(normalized).is_some_and(|(scope, bare)| scope == "types" && self.set.contains(bare))
    }

    pub fn check(&self, name: &str) -> NameCheck {
        let normalized = self.ecosystem.normalize(name);
        if self.set.contains(&normalized) || self.is_types_package_of_known(&normalized) {
            return NameCheck::Known;
        }
        match self.index.closest(&self.names, &normalized) {
            Some((of, how)) => NameCheck::Typosquat { of: of.to_string(), how },
            None => NameCheck::Unknown,
        }
    }
}

/// The verdict on one package name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameCheck {
    Known,
    Typosquat { of: String, how: Resemblance },
    Unknown,
}

static NPM: LazyLock<KnownList> = LazyLock::new(|| KnownList::parse(Ecosystem::Npm, include_str!("../data/npm.txt")));
static PYPI: LazyLock<KnownList> =
    LazyLock::new(|| KnownList::parse(Ecosystem::Pypi, include_str!("../data/pypi.txt")));
static DEBIAN: LazyLock<KnownList> =
    LazyLock::new(|| KnownList::parse(Ecosystem::Debian, include_str!("../data/debian.txt")));

/// The embedded list for `ecosystem`.
pub fn list(ecosystem: Ecosystem) -> &'static KnownList {
    match ecosystem {
        Ecosystem::Npm => &NPM,
        Ecosystem::Pypi => &PYPI,
        Ecosystem::Debian => &DEBIAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_large_enough_and_hold_what_the_templates_install() {
        assert!(list(Ecosystem::Npm).len() >= 400, "npm list has {}", list(Ecosystem::Npm).len());
        assert!(list(Ecosystem::Pypi).len() >= 400, "pypi list has {}", list(Ecosystem::Pypi).len());
        assert!(list(Ecosystem::Debian).len() >= 600, "debian list has {}", list(Ecosystem::Debian).len());
        for name in ["@anthropic-ai/claude-code", "playwright", "@playwright/test", "typescript", "express", "lodash"] {
            assert!(list(Ecosystem::Npm).contains(name), "{name}");
        }
        for name in ["requests", "numpy", "pandas", "playwright", "python-dateutil"] {
            assert!(list(Ecosystem::Pypi).contains(name), "{name}");
        }
        for name in ["build-essential", "chromium", "nodejs", "vim-tiny", "fonts-noto-color-emoji", "libnss3", "xvfb"] {
            assert!(list(Ecosystem::Debian).contains(name), "{name}");
        }
    }

    #[test]
    fn pypi_names_compare_per_pep_503() {
        assert_eq!(Ecosystem::Pypi.normalize("Python_Dateutil"), "python-dateutil");
        assert_eq!(Ecosystem::Pypi.normalize("zope.interface"), "zope-interface");
        assert_eq!(list(Ecosystem::Pypi).check("Python_Dateutil"), NameCheck::Known);
        assert_eq!(list(Ecosystem::Pypi).check("python.dateutil"), NameCheck::Known);
        assert_eq!(
            list(Ecosystem::Pypi).check("pythondateutil"),
            NameCheck::Typosquat { of: "python-dateutil".into(), how: Resemblance::Separators }
        );
    }

    #[test]
    fn typosquats_name_the_real_package() {
        let check = |ecosystem, name| list(ecosystem).check(name);
        assert_eq!(
            check(Ecosystem::Npm, "expres"),
            NameCheck::Typosquat { of: "express".into(), how: Resemblance::EditDistance(1) }
        );
        assert_eq!(
            check(Ecosystem::Npm, "lodahs"),
            NameCheck::Typosquat { of: "lodash".into(), how: Resemblance::EditDistance(1) }
        );
        assert_eq!(
            check(Ecosystem::Pypi, "reqeusts"),
            NameCheck::Typosquat { of: "requests".into(), how: Resemblance::EditDistance(1) }
        );
        assert_eq!(
            check(Ecosystem::Npm, "@anthropic/claude-code"),
            NameCheck::Typosquat { of: "@anthropic-ai/claude-code".into(), how: Resemblance::Scope }
        );
        assert_eq!(check(Ecosystem::Npm, "malicious-package"), NameCheck::Unknown);
        assert_eq!(check(Ecosystem::Npm, "@types/express"), NameCheck::Known);
    }
}
