//! Phase 6: URL authorization (`[[rule]]`), like IIS URL Authorization and Apache `Require`.
//!
//! Semantics, chosen to be predictable:
//! 1. Only rules whose `path` matches the normalised path and whose `methods` (if any) include the
//!    request method apply.
//! 2. Of those, only the rules with the **most specific** path apply: more literal segments win,
//!    then fewer wildcards, then a pattern without `**`. `/admin/reports/**` beats `/admin/**`,
//!    which beats `/**`. Rules with equally specific paths apply together.
//! 3. Among the applying rules, a matching `deny` wins over any `allow`; then a matching `allow`
//!    admits; if rules apply but none allows, the request is denied (implicit deny).
//! 4. When no rule applies, phase 6 allows: authentication (phase 5) already decided who may in.

use std::collections::HashMap;
use std::fmt;

use crate::ipset::Origin;
use crate::path::{NormalizedPath, PathPattern};
use crate::{DenyAction, Identity, Reason, Refusal};

/// Who a rule names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// `user:NAME`.
    User(String),
    /// `group:NAME`.
    Group(String),
    /// `*`: any signed-in user.
    AnyUser,
    /// `anonymous`: a request without a signed-in user (public paths).
    Anonymous,
}

impl Principal {
    /// Parses `user:NAME`, `group:NAME`, `*` or `anonymous`.
    pub fn parse(s: &str) -> Result<Principal, String> {
        match s {
            "*" => Ok(Principal::AnyUser),
            "anonymous" => Ok(Principal::Anonymous),
            _ => match s.split_once(':') {
                Some(("user", n)) if !n.is_empty() => Ok(Principal::User(n.to_owned())),
                Some(("group", n)) if !n.is_empty() => Ok(Principal::Group(n.to_owned())),
                _ => Err(format!(
                    "\"{s}\" is not a principal: use \"user:NAME\", \"group:NAME\", \"*\" or \"anonymous\""
                )),
            },
        }
    }

    fn matches(&self, identity: &Identity) -> bool {
        match (self, &identity.user) {
            (Principal::Anonymous, user) => user.is_none(),
            (Principal::AnyUser, user) => user.is_some(),
            (Principal::User(n), Some(u)) => n == u,
            (Principal::Group(g), Some(_)) => identity.groups.iter().any(|x| x == g),
            _ => false,
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::User(n) => write!(f, "user:{n}"),
            Principal::Group(g) => write!(f, "group:{g}"),
            Principal::AnyUser => f.write_str("*"),
            Principal::Anonymous => f.write_str("anonymous"),
        }
    }
}

/// One `[[rule]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The path pattern.
    pub path: PathPattern,
    /// Upper-case methods, or `None` for all.
    pub methods: Option<Vec<String>>,
    /// Who is admitted.
    pub allow: Vec<Principal>,
    /// Who is refused (wins over `allow`).
    pub deny: Vec<Principal>,
    /// Where the rule is in the config.
    pub origin: Origin,
}

impl Rule {
    fn applies(&self, path: &NormalizedPath, method: &str) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x.eq_ignore_ascii_case(method)))
            && self.path.matches(path)
    }
}

/// Why phase 6 let a request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzVerdict<'a> {
    /// No rule applies to this path and method.
    NoRule,
    /// This rule's `allow` list names the requester.
    Allowed(&'a Rule, &'a Principal),
}

impl fmt::Display for AuthzVerdict<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthzVerdict::NoRule => f.write_str("allowed: no rule applies to this path and method"),
            AuthzVerdict::Allowed(rule, p) => write!(
                f,
                "allowed by {} (path \"{}\", allow \"{p}\")",
                rule.origin,
                rule.path.as_str()
            ),
        }
    }
}

/// The URL rules and the status their denials take.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// 401 (IIS, with a challenge) or 403.
    acl_status: u16,
    /// Each rule's specificity, computed once.
    specificity: Vec<(u32, u32, bool)>,
    /// Rules whose pattern starts with a literal segment, by that segment: a request only has to
    /// look at the rules of its own first segment plus `wild`, not at every rule.
    by_first: HashMap<String, Vec<usize>>,
    /// Rules whose pattern starts with a wildcard (or is `/`).
    wild: Vec<usize>,
    /// A path each rule matches ([`PathPattern::example`]), for [`RuleSet::authorize_below`].
    examples: Vec<NormalizedPath>,
}

impl RuleSet {
    /// Rules in config order; `acl_status` is 401 or 403.
    pub fn new(rules: Vec<Rule>, acl_status: u16) -> RuleSet {
        let specificity = rules.iter().map(|r| r.path.specificity()).collect();
        let mut by_first: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wild = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            match r.path.first_literal() {
                Some(first) => by_first.entry(first.to_owned()).or_default().push(i),
                None => wild.push(i),
            }
        }
        let examples = rules.iter().map(|r| r.path.example()).collect();
        RuleSet {
            rules,
            acl_status,
            specificity,
            by_first,
            wild,
            examples,
        }
    }

    /// Indices of the rules that may match `path`, in config order.
    fn candidates<'a>(&'a self, path: &NormalizedPath) -> impl Iterator<Item = usize> + 'a {
        let listed: &[usize] = path
            .segments()
            .first()
            .and_then(|f| self.by_first.get(f.as_str()))
            .map_or(&[], Vec::as_slice);
        merge_sorted(listed, &self.wild)
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Decides phase 6 for `identity` requesting `method path`.
    pub fn authorize(
        &self,
        path: &NormalizedPath,
        method: &str,
        identity: &Identity,
    ) -> Result<AuthzVerdict<'_>, Refusal> {
        // One matching pass; only the rules of the most specific path are kept.
        let mut best: Option<(u32, u32, bool)> = None;
        let mut hits: Vec<usize> = Vec::new();
        for i in self.candidates(path) {
            if !self.rules[i].applies(path, method) {
                continue;
            }
            let s = self.specificity[i];
            if best.is_none_or(|b| s > b) {
                best = Some(s);
                hits.clear();
            }
            if best == Some(s) {
                hits.push(i);
            }
        }
        if hits.is_empty() {
            return Ok(AuthzVerdict::NoRule);
        }
        let applying = || hits.iter().map(|&i| &self.rules[i]);
        let who = identity.user.as_deref().unwrap_or("anonymous");
        for r in applying() {
            if let Some(p) = r.deny.iter().find(|p| p.matches(identity)) {
                return Err(self.denial(format!(
                    "{who} is denied by {} (path \"{}\", deny \"{p}\")",
                    r.origin,
                    r.path.as_str()
                )));
            }
        }
        for r in applying() {
            if let Some(p) = r.allow.iter().find(|p| p.matches(identity)) {
                return Ok(AuthzVerdict::Allowed(r, p));
            }
        }
        let names: Vec<String> = applying().map(|r| r.origin.to_string()).collect();
        Err(self.denial(format!(
            "{who} is not in the allow list of {}",
            names.join(", ")
        )))
    }

    /// For a request whose effect reaches everything below `path` (WebDAV `DELETE`, `MOVE` or
    /// the overwritten `Destination` of a `COPY`/`MOVE` on a collection): refused when a rule
    /// that matches something *below* `path` would refuse `identity` for `method` there. Each
    /// rule is asked about one path it matches (its pattern with `*` read as `_`, see
    /// [`PathPattern::example`]), judged with all the rules as a request to it would be.
    pub fn authorize_below(
        &self,
        path: &NormalizedPath,
        method: &str,
        identity: &Identity,
    ) -> Result<(), Refusal> {
        let under = path.segments();
        for example in &self.examples {
            let segments = example.segments();
            if segments.len() <= under.len() || segments[..under.len()] != *under {
                continue;
            }
            if let Err(mut refusal) = self.authorize(example, method, identity) {
                refusal.detail = format!(
                    "{method} on {path} would reach {example}, where: {}",
                    refusal.detail
                );
                return Err(refusal);
            }
        }
        Ok(())
    }

    /// The refusal of a rule denial (`acl_denied`, 401.3, or 403 with `auth.acl_status = 403`).
    pub fn denial(&self, detail: String) -> Refusal {
        let r = Refusal::new(Reason::AclDenied).with_detail(detail);
        if self.acl_status == 403 {
            r.with_action(DenyAction::Forbidden)
        } else {
            r
        }
    }
}

/// Merges two ascending index lists.
fn merge_sorted<'a>(a: &'a [usize], b: &'a [usize]) -> impl Iterator<Item = usize> + 'a {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || match (a.get(i), b.get(j)) {
        (Some(&x), Some(&y)) if x <= y => {
            i += 1;
            Some(x)
        }
        (_, Some(&y)) => {
            j += 1;
            Some(y)
        }
        (Some(&x), None) => {
            i += 1;
            Some(x)
        }
        (None, None) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize_path;

    fn rule(i: usize, path: &str, methods: Option<&[&str]>, allow: &[&str], deny: &[&str]) -> Rule {
        Rule {
            path: PathPattern::parse(path).unwrap(),
            methods: methods.map(|m| m.iter().map(|s| s.to_string()).collect()),
            allow: allow.iter().map(|p| Principal::parse(p).unwrap()).collect(),
            deny: deny.iter().map(|p| Principal::parse(p).unwrap()).collect(),
            origin: Origin::new(format!("rule[{i}]"), Some(10 + i)),
        }
    }

    fn who(user: Option<&str>, groups: &[&str]) -> Identity {
        Identity {
            user: user.map(str::to_owned),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Identity::default()
        }
    }

    #[test]
    fn a_rule_below_a_collection_stands_for_its_deletion() {
        let rules = RuleSet::new(
            vec![
                rule(
                    0,
                    "/public/locked/**",
                    Some(&["DELETE", "MOVE"]),
                    &["group:admins"],
                    &[],
                ),
                rule(1, "/public/*/x", None, &["*"], &["user:bob"]),
            ],
            401,
        );
        let alice = who(Some("alice"), &[]);
        let admin = who(Some("root"), &["admins"]);
        let public = normalize_path("/public/");
        assert!(rules.authorize_below(&public, "DELETE", &alice).is_err());
        assert!(rules.authorize_below(&public, "DELETE", &admin).is_ok());
        // A wildcard right under the folder is seen too.
        let bob = who(Some("bob"), &[]);
        assert!(rules.authorize_below(&public, "PUT", &bob).is_err());
        // Not a method the rule limits.
        assert!(rules.authorize_below(&public, "PUT", &alice).is_ok());
        // Deleting the locked folder itself deletes what is in it.
        let locked = normalize_path("/public/locked");
        assert!(rules.authorize_below(&locked, "DELETE", &alice).is_err());
        // A file has nothing below it.
        let file = normalize_path("/public/a.txt");
        assert!(rules.authorize_below(&file, "DELETE", &alice).is_ok());
        // The root is above everything.
        assert!(
            rules
                .authorize_below(&normalize_path("/"), "MOVE", &alice)
                .is_err()
        );
        // Rules that never match their own folder: a glob below it, a more specific allow.
        let rules = RuleSet::new(
            vec![
                rule(0, "/public/locked/*.key", None, &[], &["user:alice"]),
                rule(1, "/docs/locked/**", None, &["*"], &["user:alice"]),
                rule(2, "/docs/locked", None, &["user:alice"], &[]),
            ],
            401,
        );
        assert!(rules.authorize_below(&public, "DELETE", &alice).is_err());
        assert!(
            rules
                .authorize_below(&normalize_path("/docs"), "DELETE", &alice)
                .is_err()
        );
    }

    #[test]
    fn table_of_decisions() {
        let rules = RuleSet::new(
            vec![
                rule(0, "/admin/**", None, &["group:admins"], &[]),
                rule(
                    1,
                    "/admin/reports/**",
                    None,
                    &["group:admins", "user:carol"],
                    &["user:mallory"],
                ),
                rule(2, "/admin/**", Some(&["DELETE"]), &[], &["*"]),
                rule(3, "/public/**", None, &["anonymous", "*"], &[]),
                rule(4, "/**", None, &["*"], &["user:banned"]),
            ],
            401,
        );
        let alice = who(Some("alice"), &["admins"]);
        let bob = who(Some("bob"), &[]);
        let carol = who(Some("carol"), &[]);
        let mallory = who(Some("mallory"), &["admins"]);
        let anon = who(None, &[]);
        let cases: &[(&str, &str, &Identity, Result<&str, &str>)] = &[
            ("GET", "/admin/x", &alice, Ok("rule[0]")),
            (
                "GET",
                "/admin/x",
                &bob,
                Err("not in the allow list of rule[0]"),
            ),
            ("GET", "/admin/../admin/x", &bob, Err("rule[0]")), // normalised: no bypass
            ("GET", "/%61dmin/x", &bob, Err("rule[0]")),
            ("GET", "//admin//x", &bob, Err("rule[0]")),
            ("GET", "/admin/reports/q1", &carol, Ok("rule[1]")), // the more specific rule decides
            (
                "GET",
                "/admin/reports/q1",
                &mallory,
                Err("denied by rule[1]"),
            ),
            ("DELETE", "/admin/x", &alice, Err("denied by rule[2]")), // same specificity: deny wins
            ("GET", "/public/a", &anon, Ok("rule[3]")),
            ("GET", "/other", &bob, Ok("rule[4]")),
            (
                "GET",
                "/other",
                &who(Some("banned"), &[]),
                Err("denied by rule[4]"),
            ),
            (
                "GET",
                "/other",
                &anon,
                Err("anonymous is not in the allow list"),
            ),
        ];
        for (method, path, id, want) in cases {
            let got = rules.authorize(&normalize_path(path), method, id);
            match (got, want) {
                (Ok(AuthzVerdict::Allowed(r, _)), Ok(k)) => {
                    assert_eq!(r.origin.key, *k, "{method} {path}")
                }
                (Err(r), Err(text)) => {
                    assert!(r.detail.contains(text), "{method} {path}: {}", r.detail);
                    assert_eq!((r.status(), r.reason.substatus()), (401, 3));
                }
                (got, want) => panic!("{method} {path}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn no_rule_allows_and_acl_status_403_is_403_3() {
        let rules = RuleSet::new(
            vec![rule(0, "/admin/**", None, &["group:admins"], &[])],
            403,
        );
        assert_eq!(
            rules.authorize(&normalize_path("/x"), "GET", &who(Some("bob"), &[])),
            Ok(AuthzVerdict::NoRule)
        );
        let r = rules
            .authorize(&normalize_path("/admin"), "GET", &who(Some("bob"), &[]))
            .unwrap_err();
        assert_eq!((r.status(), r.reason.substatus()), (403, 3));
    }

    #[test]
    fn rules_starting_with_a_wildcard_are_found_beside_indexed_ones() {
        let rules = RuleSet::new(
            vec![
                rule(0, "/a/x", None, &["*"], &[]),
                rule(1, "/*/reports", None, &[], &["user:bob"]),
                rule(2, "/b/reports", None, &["*"], &[]),
                rule(3, "/", None, &["anonymous"], &[]),
            ],
            401,
        );
        let bob = who(Some("bob"), &[]);
        // /a/reports: only the wildcard rule applies.
        assert!(
            rules
                .authorize(&normalize_path("/a/reports"), "GET", &bob)
                .unwrap_err()
                .detail
                .contains("rule[1]")
        );
        // /b/reports: the literal rule is more specific than the wildcard one.
        assert!(
            matches!(rules.authorize(&normalize_path("/b/reports"), "GET", &bob), Ok(AuthzVerdict::Allowed(r, _)) if r.origin.key == "rule[2]")
        );
        // The root pattern is found for the root path.
        assert!(
            matches!(rules.authorize(&normalize_path("/"), "GET", &who(None, &[])), Ok(AuthzVerdict::Allowed(r, _)) if r.origin.key == "rule[3]")
        );
        assert_eq!(
            rules.authorize(&normalize_path("/c"), "GET", &bob),
            Ok(AuthzVerdict::NoRule)
        );
    }

    #[test]
    fn merge_keeps_config_order() {
        assert_eq!(
            merge_sorted(&[1, 4, 9], &[0, 5, 6, 10]).collect::<Vec<_>>(),
            [0, 1, 4, 5, 6, 9, 10]
        );
        assert_eq!(merge_sorted(&[], &[2]).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn principals_parse() {
        assert_eq!(
            Principal::parse("user:alice").unwrap(),
            Principal::User("alice".into())
        );
        assert_eq!(
            Principal::parse("group:x").unwrap(),
            Principal::Group("x".into())
        );
        assert!(Principal::parse("alice").is_err());
        assert!(Principal::parse("user:").is_err());
    }
}
