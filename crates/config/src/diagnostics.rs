//! Located configuration problems, and the "did you mean" that goes with a misspelt name.
//!
//! A bad config must never half-start, and the operator should fix it in one pass: so every
//! problem is collected (not just the first) with the dotted key path and the file line it
//! came from, and printed one per line in the `file:line: key: message` form editors and CI
//! logs already know how to jump to.

use std::fmt::{self, Write as _};

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Dotted key path, e.g. `server.listen[1]` (empty for problems with the whole file).
    pub key: String,
    /// 1-based line in the file, when the problem has a place in it.
    pub line: Option<usize>,
    /// What is wrong, in plain words.
    pub message: String,
    /// A likely intended name, for misspelt keys, sections and values.
    pub suggestion: Option<String>,
}

/// Every problem found in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics {
    /// The file name as the operator gave it.
    pub file: String,
    /// The problems, in file order.
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// A single problem with the whole file (unreadable, not TOML, …).
    pub fn single(
        file: impl Into<String>,
        line: Option<usize>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostics {
            file: file.into(),
            items: vec![Diagnostic {
                key: String::new(),
                line,
                message: message.into(),
                suggestion: None,
            }],
        }
    }

    /// The problem reported for `key`, if there is one (handy for callers and tests).
    pub fn find(&self, key: &str) -> Option<&Diagnostic> {
        self.items.iter().find(|d| d.key == key)
    }
}

impl fmt::Display for Diagnostic {
    /// `key: message (did you mean "x"?)`, without the file and line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)?;
        if let Some(s) = &self.suggestion {
            write!(f, " (did you mean \"{s}\"?)")?;
        }
        Ok(())
    }
}

impl fmt::Display for Diagnostics {
    /// One `file:line: key: message` line per problem.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.items.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            match d.line {
                Some(line) => write!(f, "{}:{line}: {d}", self.file)?,
                None => write!(f, "{}: {d}", self.file)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// One `file:line: warning: key: message` line per warning (no trailing newline), the form
/// `check-config` prints after a config that loads.
pub fn format_warnings(file: &str, warnings: &[Diagnostic]) -> String {
    let mut out = String::new();
    for (i, d) in warnings.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        match d.line {
            Some(line) => write!(out, "{file}:{line}: warning: {d}"),
            None => write!(out, "{file}: warning: {d}"),
        }
        .expect("writing to a String cannot fail");
    }
    out
}

/// The known name closest to `input`, if it is close enough to be a plausible misspelling.
pub(crate) fn suggest<'a>(input: &str, known: &[&'a str]) -> Option<&'a str> {
    let input = input.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&input, k), *k))
        .filter(|(d, k)| *d <= (k.chars().count() / 3).clamp(1, 2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Edit distance counting insertions, deletions, substitutions and adjacent transpositions
/// (optimal string alignment), so `listn`, `lsiten` and `lisen` are all one step from `listen`.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_counts_each_kind_of_typo_once() {
        assert_eq!(edit_distance("listen", "listen"), 0);
        assert_eq!(edit_distance("listn", "listen"), 1);
        assert_eq!(edit_distance("lsiten", "listen"), 1);
        assert_eq!(edit_distance("listenn", "listen"), 1);
        assert_eq!(edit_distance("lastan", "listen"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        let known = ["listen", "upstream", "tls", "workers"];
        assert_eq!(suggest("listn", &known), Some("listen"));
        assert_eq!(suggest("Upstream", &known), Some("upstream"));
        assert_eq!(suggest("tsl", &known), Some("tls"));
        assert_eq!(suggest("colour", &known), None);
        assert_eq!(suggest("abc", &known), None);
    }

    #[test]
    fn warnings_are_one_line_each_and_marked() {
        let w = [
            Diagnostic {
                key: "rule[1]".into(),
                line: Some(12),
                message: "duplicate of rule[0] (line 8)".into(),
                suggestion: None,
            },
            Diagnostic {
                key: "rule[2].methods[0]".into(),
                line: None,
                message: "\"GTE\" is not a standard method".into(),
                suggestion: Some("GET".into()),
            },
        ];
        assert_eq!(
            format_warnings("p.toml", &w),
            "p.toml:12: warning: rule[1]: duplicate of rule[0] (line 8)\n\
             p.toml: warning: rule[2].methods[0]: \"GTE\" is not a standard method (did you mean \"GET\"?)"
        );
        assert_eq!(format_warnings("p.toml", &[]), "");
    }

    #[test]
    fn display_is_one_line_per_problem() {
        let d = Diagnostics {
            file: "portcullis.toml".into(),
            items: vec![
                Diagnostic {
                    key: "server.listn".into(),
                    line: Some(7),
                    message: "unknown key".into(),
                    suggestion: Some("listen".into()),
                },
                Diagnostic {
                    key: "auth.users".into(),
                    line: None,
                    message: "is required".into(),
                    suggestion: None,
                },
            ],
        };
        assert_eq!(
            d.to_string(),
            "portcullis.toml:7: server.listn: unknown key (did you mean \"listen\"?)\n\
             portcullis.toml: auth.users: is required"
        );
    }
}
