//! `[[rule]]` (URL authorization), and the user and group files the rules are checked against.
//!
//! A rule naming a group needs a group file, so that is an error; a group the file does not
//! define, or a user the htpasswd file does not hold (yet), is only a warning: both files can
//! change while the gateway runs.

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use policy::{Origin, PathPattern, Principal, Rule};
use toml::de::{DeTable, DeValue};

use super::{Checker, Value, type_name};
use crate::diagnostics::suggest;

/// Keys of a `[[rule]]` table.
pub(super) const RULE_KEYS: &[&str] = &["path", "methods", "allow", "deny"];
/// Methods of RFC 9110 and RFC 5789, lower-case (for suggestions).
const STANDARD_METHODS: &[&str] = &[
    "get", "head", "post", "put", "delete", "patch", "options", "trace", "connect",
];

/// What `auth.groups` gives the rules to check `group:` principals against.
#[derive(Debug, Default)]
pub(super) enum GroupNames {
    /// `auth.groups` is not set: naming a group is an error.
    #[default]
    NotConfigured,
    /// Set, but unusable (already reported): names are not checked.
    Unusable,
    /// The groups the file defines.
    Known {
        /// The file, as shown in messages.
        file: String,
        /// Group names.
        names: HashSet<String>,
    },
}

/// The user names of the htpasswd file, for checking `user:` principals.
#[derive(Debug)]
pub(super) struct UserNames {
    /// The file, as shown in messages.
    file: String,
    /// User names.
    names: HashSet<String>,
}

impl UserNames {
    /// The names in an htpasswd file: the text before the first ':' of each line that is not
    /// blank or a `#` comment. `None` when the file cannot be read (nothing is checked then).
    pub(super) fn read(path: &Path) -> Option<UserNames> {
        let text = std::fs::read_to_string(path).ok()?;
        let names = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once(':').map(|(user, _)| user.to_owned()))
            .collect();
        Some(UserNames {
            file: path.display().to_string(),
            names,
        })
    }
}

/// Parses an Apache AuthGroupFile: `group: member member …` lines, `#` comment lines.
/// Returns the defined groups and the (line, problem) of each malformed line.
fn parse_groups(text: &str) -> (HashSet<String>, Vec<(usize, &'static str)>) {
    let mut names = HashSet::new();
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((group, _members)) = line.split_once(':') else {
            problems.push((i + 1, "expected \"group: user user …\""));
            continue;
        };
        let group = group.trim();
        if group.is_empty() || group.contains(char::is_whitespace) {
            problems.push((i + 1, "the group name is empty or contains spaces"));
            continue;
        }
        names.insert(group.to_owned());
    }
    (names, problems)
}

/// One checked `allow` or `deny` entry: key path, principal, span.
type Listed = (String, Principal, Range<usize>);

impl Checker<'_> {
    /// `auth.groups`: an Apache AuthGroupFile that exists and parses.
    pub(super) fn groups_file(&mut self, key: &str, v: &Value<'_>) -> Option<PathBuf> {
        self.groups = GroupNames::Unusable;
        let text = self.string(key, v)?;
        if text.is_empty() {
            self.report(
                key,
                Some(v.span()),
                "must name a group file, e.g. \"groups.txt\"",
            );
            return None;
        }
        let path = self.resolve(text);
        let shown = path.display().to_string();
        if path.is_dir() {
            self.report(key, Some(v.span()), format!("{shown} is not a file"));
            return None;
        }
        let content = match std::fs::read_to_string(&path) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.report(
                    key,
                    Some(v.span()),
                    format!(
                        "group file not found: {shown} (one line per group, like \
                         \"admins: alice bob\")"
                    ),
                );
                return None;
            }
            Err(e) => {
                self.report(
                    key,
                    Some(v.span()),
                    format!("cannot read group file {shown}: {e}"),
                );
                return None;
            }
        };
        let (names, problems) = parse_groups(&content);
        for (line, problem) in &problems {
            self.report(key, Some(v.span()), format!("{shown}:{line}: {problem}"));
        }
        if !problems.is_empty() {
            return None;
        }
        self.groups = GroupNames::Known { file: shown, names };
        Some(path)
    }

    /// `[[rule]]`: the array of rule tables, in file order.
    pub(super) fn rules(&mut self, key_span: Range<usize>, v: &Value<'_>) -> Vec<Rule> {
        let items = match v.get_ref() {
            DeValue::Array(a) => a,
            DeValue::Table(_) => {
                self.report(
                    "rule",
                    Some(key_span),
                    "write [[rule]] with double brackets: each rule is one entry of an array \
                     of tables",
                );
                return Vec::new();
            }
            other => {
                self.report(
                    "rule",
                    Some(v.span()),
                    format!("expected [[rule]] tables, found {}", type_name(other)),
                );
                return Vec::new();
            }
        };
        let mut out: Vec<(Rule, Range<usize>)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key = format!("rule[{i}]");
            let DeValue::Table(t) = item.get_ref() else {
                self.report(
                    key,
                    Some(item.span()),
                    format!(
                        "expected a table with path, allow and deny, found {}",
                        type_name(item.get_ref())
                    ),
                );
                continue;
            };
            let Some(rule) = self.rule(&key, t, item.span()) else {
                continue;
            };
            if let Some((earlier, _)) = out.iter().find(|(r, _)| self.same_target(r, &rule)) {
                self.warn(
                    key,
                    Some(item.span()),
                    format!(
                        "duplicate of {}: same path and methods, so the two apply together \
                         and a deny in either wins; merge them into one rule",
                        earlier.origin
                    ),
                );
            }
            out.push((rule, item.span()));
        }
        // A rule limited to some methods decides nothing for the others: unless another rule
        // of the same path covers every method, they match no rule and are let through.
        for (i, (rule, span)) in out.iter().enumerate() {
            let Some(methods) = &rule.methods else {
                continue;
            };
            let covered = out.iter().any(|(other, _)| {
                other.methods.is_none()
                    && (other.path.as_str() == rule.path.as_str() || other.path.as_str() == "/**")
            });
            if !covered {
                let path = rule.path.as_str().to_owned();
                self.warn(
                    format!("rule[{i}]"),
                    Some(span.clone()),
                    format!(
                        "applies only to {}: other methods on {path} match no rule and are let \
                         through; add a rule for {path} without `methods` to decide them",
                        methods.join(", ")
                    ),
                );
            }
        }
        out.into_iter().map(|(r, _)| r).collect()
    }

    /// Whether two rules have the same path pattern (as written) and the same methods.
    fn same_target(&self, a: &Rule, b: &Rule) -> bool {
        let path = |r: &Rule| {
            if self.case_insensitive_paths {
                r.path.as_str().to_lowercase()
            } else {
                r.path.as_str().to_owned()
            }
        };
        let methods = |r: &Rule| {
            r.methods.clone().map(|mut m| {
                m.sort();
                m
            })
        };
        path(a) == path(b) && methods(a) == methods(b)
    }

    /// One `[[rule]]` table; `span` is its header (or inline table).
    fn rule(&mut self, key: &str, t: &DeTable<'_>, span: Range<usize>) -> Option<Rule> {
        self.unknown_in(t, &format!("{key}."), RULE_KEYS);
        let path = match t.get("path") {
            None => {
                self.report(
                    format!("{key}.path"),
                    Some(span.clone()),
                    "is required in each [[rule]] (for example path = \"/admin/**\")",
                );
                None
            }
            Some(v) => self.string(&format!("{key}.path"), v).and_then(|text| {
                match PathPattern::parse(text) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        self.report(format!("{key}.path"), Some(v.span()), e.to_string());
                        None
                    }
                }
            }),
        };
        let methods = t
            .get("methods")
            .map(|v| self.methods(&format!("{key}.methods"), v));
        let allow = self.principals(&format!("{key}.allow"), t.get("allow"));
        let deny = self.principals(&format!("{key}.deny"), t.get("deny"));

        // Entries written but invalid are already reported; only lists left empty are this.
        let written = |v: Option<&Value<'_>>| {
            v.is_some_and(|v| !matches!(v.get_ref(), DeValue::Array(a) if a.is_empty()))
        };
        if !written(t.get("allow")) && !written(t.get("deny")) {
            self.report(
                key,
                Some(span.clone()),
                "a rule with neither allow nor deny never admits anyone, and hides the less \
                 specific rules for its path; add allow = [\"group:…\"] or deny = [\"user:…\"]",
            );
        }
        for (entry, p, s) in &allow {
            if deny.iter().any(|(_, d, _)| d == p) {
                self.warn(
                    entry,
                    Some(s.clone()),
                    format!(
                        "\"{p}\" is also in {key}.deny; deny wins, so this entry admits no one"
                    ),
                );
            }
        }
        Some(Rule {
            path: path?,
            methods,
            allow: allow.into_iter().map(|(_, p, _)| p).collect(),
            deny: deny.into_iter().map(|(_, p, _)| p).collect(),
            origin: Origin::new(key, Some(self.line(span.start))),
        })
    }

    /// `rule[i].methods`: method tokens, upper-cased.
    fn methods(&mut self, key: &str, v: &Value<'_>) -> Vec<String> {
        match v.get_ref() {
            DeValue::Array(a) if a.is_empty() => {
                self.report(
                    key,
                    Some(v.span()),
                    "lists no method; leave methods out to apply the rule to every method",
                );
                return Vec::new();
            }
            DeValue::Array(_) => {}
            other => {
                self.report(
                    key,
                    Some(v.span()),
                    format!(
                        "expected an array of methods such as [\"GET\", \"POST\"], found {}",
                        type_name(other)
                    ),
                );
                return Vec::new();
            }
        }
        let mut out: Vec<String> = Vec::new();
        for (path, text, span) in self.strings(key, v) {
            if text.is_empty() || !text.bytes().all(is_tchar) {
                self.report(
                    path,
                    Some(span),
                    format!("\"{text}\" is not an HTTP method name such as \"GET\""),
                );
                continue;
            }
            let method = text.to_ascii_uppercase();
            if out.contains(&method) {
                self.warn(path, Some(span), format!("\"{method}\" is listed twice"));
                continue;
            }
            let lower = method.to_ascii_lowercase();
            if !STANDARD_METHODS.contains(&lower.as_str())
                && let Some(near) = suggest(&lower, STANDARD_METHODS)
            {
                self.warn_suggest(
                    path,
                    Some(span),
                    format!(
                        "\"{method}\" is not a standard method; the rule applies only to \
                         requests that use exactly this method"
                    ),
                    Some(&near.to_ascii_uppercase()),
                );
            }
            out.push(method);
        }
        out
    }

    /// `rule[i].allow` / `rule[i].deny`: principals, checked against the user and group files.
    fn principals(&mut self, key: &str, v: Option<&Value<'_>>) -> Vec<Listed> {
        let Some(v) = v else { return Vec::new() };
        if !self.expect_array(
            key,
            v,
            "an array such as [\"group:admins\", \"user:alice\", \"*\"]",
        ) {
            return Vec::new();
        }
        let mut out: Vec<Listed> = Vec::new();
        for (path, text, span) in self.strings(key, v) {
            let principal = match Principal::parse(text) {
                Ok(p) => p,
                Err(e) => {
                    let near = principal_suggestion(text);
                    self.report_suggest(path, Some(span), e, near.as_deref());
                    continue;
                }
            };
            if out.iter().any(|(_, q, _)| *q == principal) {
                self.warn(path, Some(span), format!("\"{principal}\" is listed twice"));
                continue;
            }
            self.check_principal(&path, &principal, &span);
            out.push((path, principal, span));
        }
        out
    }

    /// A `group:` needs `auth.groups`; unknown groups and users are warned about.
    fn check_principal(&mut self, key: &str, p: &Principal, span: &Range<usize>) {
        match p {
            Principal::Group(g) => match &self.groups {
                GroupNames::NotConfigured => self.report(
                    key,
                    Some(span.clone()),
                    format!(
                        "group:{g} needs auth.groups: set it in [auth] to a group file with \
                         lines like \"{g}: alice bob\""
                    ),
                ),
                GroupNames::Known { file, names } if !names.contains(g) => {
                    let known: Vec<&str> = names.iter().map(String::as_str).collect();
                    let near = suggest(g, &known).map(|n| format!("group:{n}"));
                    let message = format!("unknown group \"{g}\": {file} does not define it");
                    self.warn_suggest(key, Some(span.clone()), message, near.as_deref());
                }
                GroupNames::Known { .. } | GroupNames::Unusable => {}
            },
            Principal::User(u) => {
                let Some(users) = &self.users else { return };
                if users.names.contains(u) {
                    return;
                }
                let known: Vec<&str> = users.names.iter().map(String::as_str).collect();
                let near = suggest(u, &known).map(|n| format!("user:{n}"));
                let message = format!(
                    "unknown user \"{u}\": {} has no such user (yet); the entry matches no one \
                     until it is added",
                    users.file
                );
                self.warn_suggest(key, Some(span.clone()), message, near.as_deref());
            }
            Principal::AnyUser | Principal::Anonymous => {}
        }
    }
}

/// A likely meant principal for a rejected one: `users:x` → `user:x`, `alice` → `user:alice`.
fn principal_suggestion(text: &str) -> Option<String> {
    match text.split_once(':') {
        Some((kind, name)) if !name.is_empty() => {
            suggest(kind, &["user", "group"]).map(|k| format!("{k}:{name}"))
        }
        Some(_) => None,
        None => {
            let plain = !text.is_empty()
                && text
                    .chars()
                    .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
            plain.then(|| format!("user:{text}"))
        }
    }
}

/// An RFC 9110 token character.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_file_lines() {
        let (names, problems) =
            parse_groups("# staff\nadmins: alice bob\n\nops:\nno colon here\nbad name: x\n");
        let mut names: Vec<String> = names.into_iter().collect();
        names.sort();
        assert_eq!(names, ["admins", "ops"]);
        assert_eq!(
            problems,
            [
                (5, "expected \"group: user user …\""),
                (6, "the group name is empty or contains spaces")
            ]
        );
    }

    #[test]
    fn principal_suggestions() {
        assert_eq!(
            principal_suggestion("users:bob").as_deref(),
            Some("user:bob")
        );
        assert_eq!(
            principal_suggestion("grop:ops").as_deref(),
            Some("group:ops")
        );
        assert_eq!(principal_suggestion("alice").as_deref(), Some("user:alice"));
        assert_eq!(principal_suggestion("role:x"), None);
        assert_eq!(principal_suggestion("a b"), None);
    }
}
