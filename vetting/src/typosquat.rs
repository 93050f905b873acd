//! Finding the listed package a suspicious name imitates: edit distance (Damerau–Levenshtein, optimal
//! string alignment) with a small bound, separators changed or removed, words reordered, and npm scope
//! games. The index is built once per list; a lookup touches only names of nearby length.

use std::collections::HashMap;

/// How a name imitates a listed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resemblance {
    EditDistance(usize),
    Separators,
    WordOrder,
    Scope,
}

impl Resemblance {
    pub fn describe(&self) -> String {
        match self {
            Resemblance::EditDistance(distance) => format!("edit distance {distance}"),
            Resemblance::Separators => "the same name with separators changed".to_string(),
            Resemblance::WordOrder => "the same words in a different order".to_string(),
            Resemblance::Scope => "the same package name under a different scope".to_string(),
        }
    }
}

/// Lookup structures over one list of normalised names.
#[derive(Debug, Default)]
pub struct Index {
    /// Name indexes grouped by length in bytes, for the bounded edit-distance scan.
    by_length: Vec<Vec<u32>>,
    /// Name with every `-`, `_`, `.` removed → first name with that form.
    without_separators: HashMap<String, u32>,
    /// Words sorted and rejoined → first name with those words.
    sorted_words: HashMap<String, u32>,
    /// npm: the part after `@scope/` → scoped names ending in it.
    unscoped: HashMap<String, u32>,
}

/// The largest edit distance that still counts as a typo of a listed name of `length` bytes: one edit
/// for short names (two edits turn most 4-letter names into other real ones), two for longer names.
pub fn max_distance(length: usize) -> usize {
    if length <= 5 { 1 } else { 2 }
}

impl Index {
    pub fn new(names: &[String]) -> Index {
        let mut index = Index::default();
        for (position, name) in names.iter().enumerate() {
            let position = position as u32;
            if index.by_length.len() <= name.len() {
                index.by_length.resize(name.len() + 1, Vec::new());
            }
            index.by_length[name.len()].push(position);
            index.without_separators.entry(strip_separators(name)).or_insert(position);
            if let Some(key) = sorted_words_key(name) {
                index.sorted_words.entry(key).or_insert(position);
            }
            if let Some((_, bare)) = split_scope(name) {
                index.unscoped.entry(bare.to_string()).or_insert(position);
            }
        }
        index
    }

    /// The listed name `candidate` most resembles, if any. `candidate` must already be normalised and
    /// must not itself be on the list.
    pub fn closest<'n>(&self, names: &'n [String], candidate: &str) -> Option<(&'n str, Resemblance)> {
        if let Some(&position) = self.without_separators.get(&strip_separators(candidate)) {
            return Some((&names[position as usize], Resemblance::Separators));
        }
        let bare = split_scope(candidate).map_or(candidate, |(_, bare)| bare);
        if let Some(&position) = self.unscoped.get(bare) {
            return Some((&names[position as usize], Resemblance::Scope));
        }
        if let Some(&position) = sorted_words_key(candidate).and_then(|key| self.sorted_words.get(&key)) {
            return Some((&names[position as usize], Resemblance::WordOrder));
        }
        let mut best: Option<(usize, u32)> = None;
        let low = candidate.len().saturating_sub(2);
        let high = (candidate.len() + 2).min(self.by_length.len().saturating_sub(1));
        for length in low..=high {
            let Some(bucket) = self.by_length.get(length) else { continue };
            let bound = max_distance(length);
            if length.abs_diff(candidate.len()) > bound {
                continue;
            }
            for &position in bucket {
                let limit = best.map_or(bound, |(distance, _)| distance.min(bound));
                if let Some(distance) =
                    bounded_distance(candidate.as_bytes(), names[position as usize].as_bytes(), limit)
                {
                    let better = match best {
                        None => true,
                        Some((best_distance, best_position)) => {
                            distance < best_distance || distance == best_distance && position < best_position
                        }
                    };
                    if better {
                        best = Some((distance, position));
                    }
                }
            }
        }
        best.map(|(distance, position)| (names[position as usize].as_str(), Resemblance::EditDistance(distance)))
    }
}

fn strip_separators(name: &str) -> String {
    name.chars().filter(|c| !matches!(c, '-' | '_' | '.')).collect()
}

/// `requests-python` and `python-requests` share the key `python-requests`. Single words have none.
fn sorted_words_key(name: &str) -> Option<String> {
    let bare = split_scope(name).map_or(name, |(_, bare)| bare);
    let mut words: Vec<&str> = bare.split(['-', '_', '.']).filter(|w| !w.is_empty()).collect();
    if words.len() < 2 {
        return None;
    }
    words.sort_unstable();
    Some(words.join("-"))
}

/// `@scope/name` → (`scope`, `name`).
pub fn split_scope(name: &str) -> Option<(&str, &str)> {
    name.strip_prefix('@')?.split_once('/')
}

/// Optimal-string-alignment distance between `a` and `b` if it is at most `limit`, else `None`.
/// Stops as soon as a whole row exceeds the limit, so far-apart names cost a few cells.
pub fn bounded_distance(a: &[u8], b: &[u8], limit: usize) -> Option<usize> {
    if a.len().abs_diff(b.len()) > limit {
        return None;
    }
    let width = b.len() + 1;
    // Three rows: two back (for transpositions), previous, current.
    let mut before: Vec<usize> = vec![0; width];
    let mut previous: Vec<usize> = (0..width).collect();
    let mut current: Vec<usize> = vec![0; width];
    for i in 1..=a.len() {
        current[0] = i;
        let mut row_min = current[0];
        for j in 1..width {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut value = (previous[j] + 1).min(current[j - 1] + 1).min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                value = value.min(before[j - 2] + 1);
            }
            current[j] = value;
            row_min = row_min.min(value);
        }
        if row_min > limit {
            return None;
        }
        std::mem::swap(&mut before, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    let distance = previous[b.len()];
    (distance <= limit).then_some(distance)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn distance_counts_transpositions_as_one() {
        assert_eq!(bounded_distance(b"reqeusts", b"requests", 2), Some(1));
        assert_eq!(bounded_distance(b"lodahs", b"lodash", 2), Some(1));
        assert_eq!(bounded_distance(b"expres", b"express", 2), Some(1));
        assert_eq!(bounded_distance(b"kitten", b"sitting", 2), None);
        assert_eq!(bounded_distance(b"abc", b"abc", 0), Some(0));
    }

    #[test]
    fn finds_each_kind_of_imitation() {
        let list = names(&["express", "python-dateutil", "@anthropic-ai/claude-code", "jq", "react"]);
        let index = Index::new(&list);
        assert_eq!(index.closest(&list, "expres"), Some(("express", Resemblance::EditDistance(1))));
        assert_eq!(index.closest(&list, "pythondateutil"), Some(("python-dateutil", Resemblance::Separators)));
        assert_eq!(index.closest(&list, "dateutil-python"), Some(("python-dateutil", Resemblance::WordOrder)));
        assert_eq!(
            index.closest(&list, "@anthropic/claude-code"),
            Some(("@anthropic-ai/claude-code", Resemblance::Scope))
        );
        assert_eq!(index.closest(&list, "reakt"), Some(("react", Resemblance::EditDistance(1))));
        // Two edits on a short name is a different name, not a typo.
        assert_eq!(index.closest(&list, "rxact1"), None);
        assert_eq!(index.closest(&list, "malicious-package"), None);
    }
}
