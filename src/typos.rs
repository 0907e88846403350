//! Which variables of the environment look like a mistake in colorproxy's configuration: a
//! typo of a color (`GREN_WEIGHT`), of a suffix (`GREEN_WIEGHT`) or of a setting
//! (`CONECT_TIMEOUT`), a color's variable without its URL, a color's URL forgotten in `COLORS`.
//!
//! Everything else in the environment belongs to other software (`NPM_CONFIG_PREFIX`,
//! `_PYENV_INSTALL_PREFIX`) and is none of colorproxy's business: a warning about it would
//! only teach operators to ignore warnings.

use std::collections::{BTreeMap, HashSet};

/// What the warnings are checked against.
pub struct Known<'a> {
    /// The color names in COLORS, lowercase.
    pub colors: &'a [String],
    /// The colors that have a URL.
    pub configured: &'a HashSet<&'a str>,
    /// The fixed-name settings (COLORS, LISTEN ...).
    pub settings: &'a [&'a str],
    /// Per-color suffixes, with their underscore (`_WEIGHT`).
    pub suffixes: &'a [&'a str],
}

/// One warning per suspicious variable, in the order of the variables' names.
pub fn warnings(env: &BTreeMap<String, String>, known: &Known<'_>) -> Vec<String> {
    let colors = known.colors.join(",");
    let mut out = Vec::new();
    for var in env.keys() {
        if known.settings.contains(&var.as_str()) || is_color_url(var, known) {
            continue;
        }
        if let Some((stem, suffix)) = known
            .suffixes
            .iter()
            .find_map(|s| var.strip_suffix(s).map(|stem| (stem, s)))
            .filter(|(stem, _)| !stem.is_empty())
        {
            let color = stem.to_lowercase();
            if known.colors.contains(&color) {
                if !known.configured.contains(color.as_str()) {
                    out.push(format!(
                        "{var} is set but {stem} is not, so {color} is not configured"
                    ));
                }
                continue;
            }
            if env
                .get(stem)
                .is_some_and(|v| v.trim_start().starts_with("http://"))
            {
                out.push(format!(
                    "{var} and {stem} are set but {color} is not in COLORS={colors}; both are ignored"
                ));
            } else if let Some(near) = closest(stem, known.colors.iter().map(String::as_str)) {
                out.push(format!(
                    "{var} is set but {color} is not a color (COLORS={colors}); it is ignored. Did you mean {}{suffix}?",
                    near.to_uppercase()
                ));
            }
            continue;
        }
        if let Some(meant) = misspelt_suffix(var, known) {
            out.push(format!(
                "{var} is not a colorproxy variable; it is ignored. Did you mean {meant}?"
            ));
        } else if let Some(meant) = closest(var, known.settings.iter().copied()) {
            out.push(format!(
                "{var} is not a colorproxy variable; it is ignored. Did you mean {meant}?"
            ));
        }
    }
    out
}

/// `BLUE` itself, for a color in COLORS.
fn is_color_url(var: &str, known: &Known<'_>) -> bool {
    known.colors.iter().any(|c| c.eq_ignore_ascii_case(var))
}

/// `GREEN_WIEGHT` → `GREEN_WEIGHT`, for colors in COLORS.
fn misspelt_suffix(var: &str, known: &Known<'_>) -> Option<String> {
    known.colors.iter().find_map(|color| {
        let rest = var
            .get(..color.len())
            .filter(|head| head.eq_ignore_ascii_case(color))
            .and_then(|_| var[color.len()..].strip_prefix('_'))?;
        let suffix = closest(rest, known.suffixes.iter().map(|s| &s[1..]))?;
        Some(format!("{}_{suffix}", color.to_uppercase()))
    })
}

/// The candidate that `word` most likely misspells: the nearest by edit distance, if it is
/// near enough for its length (1 edit up to 5 letters, 2 beyond) and not equal. Words of
/// fewer than 3 letters are left alone: too many words are near them.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_ascii_uppercase();
    candidates
        .filter(|c| c.len() >= 3)
        .map(|c| (distance(&word, &c.to_ascii_uppercase()), c))
        .filter(|&(d, c)| d > 0 && d <= if c.len() <= 5 { 1 } else { 2 })
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
/// neighbours (`BLEU` is one edit from `BLUE`) each count 1.
fn distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances() {
        assert_eq!(distance("BLUE", "BLUE"), 0);
        assert_eq!(distance("GREN", "GREEN"), 1);
        assert_eq!(distance("BLEU", "BLUE"), 1);
        assert_eq!(distance("WIEGHT", "WEIGHT"), 1);
        assert_eq!(distance("", "ABC"), 3);
        assert_eq!(distance("NPM_CONFIG", "GREEN"), 9);
    }

    #[test]
    fn only_near_candidates_are_suggested() {
        let colors = ["blue", "green", "canary"];
        let near = |w| closest(w, colors.iter().copied());
        assert_eq!(near("GREN"), Some("green"));
        assert_eq!(near("BLEU"), Some("blue"));
        assert_eq!(near("CANARI"), Some("canary"));
        assert_eq!(near("CNRY"), Some("canary"));
        assert_eq!(near("CAN"), None);
        assert_eq!(near("GLUE_X"), None);
        assert_eq!(near("NPM_CONFIG"), None);
        assert_eq!(near("_PYENV_INSTALL"), None);
        assert_eq!(near("RED"), None);
        assert_eq!(near("BLUE"), None);
    }
}
