//! Request paths as the policy sees them, and the patterns that match them.
//!
//! Every rule and every public path is matched against the *normalised* path: percent-decoded,
//! `\` read as `/` (as IIS does), empty and `.` segments dropped, `..` resolved without climbing
//! above the root. Matching raw paths would let `/static/../admin` or `/%61dmin` slip past a rule.

use std::fmt;

/// A request path after normalisation, kept as its segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    segments: Vec<String>,
}

impl NormalizedPath {
    /// The segments, without separators.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }
}

impl fmt::Display for NormalizedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments.is_empty() {
            return f.write_str("/");
        }
        for s in &self.segments {
            write!(f, "/{s}")?;
        }
        Ok(())
    }
}

/// Normalises a request path (the part before `?`).
pub fn normalize_path(raw: &str) -> NormalizedPath {
    let mut segments: Vec<String> = Vec::new();
    // Split on the separators as sent, then decode each segment: an encoded slash (`%2F`) stays
    // data inside its segment, as the upstream sees it, instead of creating a segment boundary
    // the upstream does not have.
    for raw_seg in raw.split(['/', '\\']) {
        let decoded = percent_decode(raw_seg);
        // Path parameters (`;jsessionid=…`, `..;`) are dropped before matching, as servlet
        // containers do, so `/static/..;/admin` is `/admin` and `/admin;x` is `/admin`.
        let seg = decoded.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s.to_owned()),
        }
    }
    NormalizedPath { segments }
}

/// Refuses request paths that different servers read differently: an encoded slash or
/// backslash (`%2F`, `%5C`: a separator for WSGI and CGI applications, data for others) and an
/// encoded NUL. Apache refuses encoded slashes by default too (`AllowEncodedSlashes Off`).
pub fn check_raw_path(raw: &str) -> Result<(), crate::Refusal> {
    let b = raw.as_bytes();
    let bad = b.windows(3).find(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_uppercase()),
                (b'2', b'F') | (b'5', b'C') | (b'0', b'0')
            )
    });
    match bad {
        None => Ok(()),
        Some(w) => Err(crate::Refusal::new(crate::Reason::BadRequest).with_detail(format!(
            "the path contains {}, which servers read differently (an encoded separator or NUL); it is refused",
            String::from_utf8_lossy(w)
        ))),
    }
}

/// The path to forward for a request whose path the decision read with [`normalize_path`]: the
/// same segments (separators `/` and `\`, `;params` dropped, dot segments resolved, nothing
/// above the root), each percent-encoded again from its decoded bytes, and a trailing `/` kept.
/// Borrowed when `raw` is already in that form (the common case costs no allocation).
///
/// The upstream then receives exactly the path that was judged: `/admin/..;/public/x` is judged
/// and forwarded as `/public/x`, never judged as one path and served as another.
pub fn forward_path(raw: &str) -> std::borrow::Cow<'_, str> {
    if is_plain(raw) {
        return std::borrow::Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len() + 1);
    let mut segments: Vec<Vec<u8>> = Vec::new();
    let mut trailing = false;
    for raw_seg in raw.split(['/', '\\']) {
        let decoded = percent_decode_bytes(raw_seg);
        let seg = decoded.split(|&b| b == b';').next().unwrap_or(&[]);
        trailing = matches!(seg, b"" | b"." | b"..");
        match seg {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            s => segments.push(s.to_vec()),
        }
    }
    for s in &segments {
        out.push('/');
        for &b in s {
            if is_pchar(b) {
                out.push(b as char);
            } else {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
            }
        }
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    if out == raw {
        std::borrow::Cow::Borrowed(raw)
    } else {
        std::borrow::Cow::Owned(out)
    }
}

/// Whether `raw` names its segments plainly: a leading `/`, only unencoded path characters, no
/// empty, `.` or `..` segment, no `;` or `\`.
fn is_plain(raw: &str) -> bool {
    let b = raw.as_bytes();
    if b.first() != Some(&b'/') || !b.iter().all(|&c| is_pchar(c) || c == b'/') {
        return false;
    }
    // No empty segment (but a trailing `/`), no dot segment.
    let rest = &raw[1..];
    let body = rest.strip_suffix('/').unwrap_or(rest);
    rest.is_empty() || body.split('/').all(|s| !matches!(s, "" | "." | ".."))
}

/// RFC 3986 `pchar` without `%` and `;` (which the decision reads as a parameter separator).
fn is_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
        )
}

/// Whether a path has a segment that the decision resolves and a server behind may not: `.` or
/// `..` (also encoded as `%2e`, or followed by `;params`). In forward-auth mode Portcullis cannot
/// rewrite what the proxy forwards, so such a path is refused rather than judged one way and
/// served another.
pub fn has_dot_segment(raw: &str) -> bool {
    raw.split(['/', '\\']).any(|seg| {
        let decoded = percent_decode_bytes(seg);
        let seg = decoded.split(|&b| b == b';').next().unwrap_or(&[]);
        matches!(seg, b"." | b"..")
    })
}

/// Decodes `%XX` escapes to bytes (invalid escapes kept as written).
fn percent_decode_bytes(raw: &str) -> std::borrow::Cow<'_, [u8]> {
    if !raw.contains('%') {
        return std::borrow::Cow::Borrowed(raw.as_bytes());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

/// Like [`normalize_path`], lower-casing the result (for `auth.path_case = "insensitive"`).
pub fn normalize_path_lowercase(raw: &str) -> NormalizedPath {
    let mut p = normalize_path(raw);
    for s in &mut p.segments {
        *s = s.to_lowercase();
    }
    p
}

/// Decodes `%XX` escapes (invalid ones are kept as written; invalid UTF-8 becomes U+FFFD).
pub fn percent_decode(raw: &str) -> std::borrow::Cow<'_, str> {
    if !raw.contains('%') {
        return std::borrow::Cow::Borrowed(raw);
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`: any number of segments, including none.
    AnyDepth,
    /// A segment, possibly with `*` wildcards inside (`*` alone: any one segment).
    Glob(String),
}

/// A path pattern from the config: `/exact/path`, `*` for one segment (or part of one),
/// `**` for any depth. `/static/**` matches `/static` and everything below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    source: String,
    segments: Vec<Segment>,
}

/// Why a pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError(pub String);

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PatternError {}

impl PathPattern {
    /// Parses a pattern; it must start with `/`, and `**` must be a whole segment.
    pub fn parse(source: &str) -> Result<PathPattern, PatternError> {
        if !source.starts_with('/') {
            return Err(PatternError(format!(
                "path pattern \"{source}\" must start with '/'"
            )));
        }
        let mut segments = Vec::new();
        for seg in source.split('/').filter(|s| !s.is_empty()) {
            if seg == "**" {
                if segments.last() != Some(&Segment::AnyDepth) {
                    segments.push(Segment::AnyDepth);
                }
            } else if seg.contains("**") {
                return Err(PatternError(format!(
                    "in \"{source}\", '**' must be a whole segment (\"/a/**\"), not part of \"{seg}\""
                )));
            } else if seg == "." || seg == ".." {
                return Err(PatternError(format!(
                    "path pattern \"{source}\" contains '{seg}'"
                )));
            } else {
                segments.push(Segment::Glob(seg.to_owned()));
            }
        }
        Ok(PathPattern {
            source: source.to_owned(),
            segments,
        })
    }

    /// The pattern as written in the config.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// How specific the pattern is, for "most specific path wins": literal segments, then
    /// segments that are not `**`, then whether it has no `**` at all. Larger is more specific.
    pub fn specificity(&self) -> (u32, u32, bool) {
        let literal = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Glob(g) if !g.contains('*')))
            .count();
        let fixed = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Glob(_)))
            .count();
        let deep = self.segments.contains(&Segment::AnyDepth);
        (literal as u32, fixed as u32, !deep)
    }

    /// A path this pattern matches: each `*` read as `_`, each `**` as one `_` segment
    /// (`/a/*.key/**` → `/a/_.key/_`), for asking the rules about what lies below a folder.
    pub fn example(&self) -> NormalizedPath {
        NormalizedPath {
            segments: self
                .segments
                .iter()
                .map(|s| match s {
                    Segment::Glob(g) => g.replace('*', "_"),
                    Segment::AnyDepth => "_".to_owned(),
                })
                .collect(),
        }
    }

    /// The first segment when it is a literal (no wildcard), for indexing rules.
    pub fn first_literal(&self) -> Option<&str> {
        match self.segments.first() {
            Some(Segment::Glob(g)) if !g.contains('*') => Some(g),
            _ => None,
        }
    }

    /// The same pattern, lower-cased, for case-insensitive matching.
    pub fn to_lowercase(&self) -> PathPattern {
        PathPattern {
            source: self.source.clone(),
            segments: self
                .segments
                .iter()
                .map(|s| match s {
                    Segment::Glob(g) => Segment::Glob(g.to_lowercase()),
                    Segment::AnyDepth => Segment::AnyDepth,
                })
                .collect(),
        }
    }

    /// Whether the normalised path matches.
    pub fn matches(&self, path: &NormalizedPath) -> bool {
        // With at most one `**` plain backtracking is linear and allocates nothing; only
        // patterns with several `**` need the dynamic programme.
        if self
            .segments
            .iter()
            .filter(|s| **s == Segment::AnyDepth)
            .count()
            <= 1
        {
            match_simple(&self.segments, &path.segments)
        } else {
            match_segments(&self.segments, &path.segments)
        }
    }
}

/// Backtracking match, linear for patterns with at most one `**`.
fn match_simple(pattern: &[Segment], path: &[String]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((Segment::AnyDepth, rest)) => {
            (0..=path.len()).any(|skip| match_simple(rest, &path[skip..]))
        }
        Some((Segment::Glob(g), rest)) => {
            !path.is_empty()
                && glob_match(g.as_bytes(), path[0].as_bytes())
                && match_simple(rest, &path[1..])
        }
    }
}

/// Matches by dynamic programming over (pattern position, path position): O(pattern × path),
/// never the exponential backtracking a client could trigger with many segments and `**`.
fn match_segments(pattern: &[Segment], path: &[String]) -> bool {
    // reachable[j]: the pattern prefix seen so far matches path[..j].
    let mut reachable = vec![false; path.len() + 1];
    reachable[0] = true;
    for seg in pattern {
        let mut next = vec![false; path.len() + 1];
        match seg {
            Segment::AnyDepth => {
                let mut any = false;
                for j in 0..=path.len() {
                    any |= reachable[j];
                    next[j] = any;
                }
            }
            Segment::Glob(g) => {
                for j in 0..path.len() {
                    if reachable[j] && glob_match(g.as_bytes(), path[j].as_bytes()) {
                        next[j + 1] = true;
                    }
                }
            }
        }
        if !next.iter().any(|&r| r) {
            return false;
        }
        reachable = next;
    }
    reachable[path.len()]
}

/// `*` matches any run of bytes within one segment.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && pattern[p] != b'*' && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod forward_tests {
    use super::*;

    #[test]
    fn forwarded_path_is_the_judged_path() {
        for (raw, want) in [
            ("/", "/"),
            ("/app/x", "/app/x"),
            ("/app/dir/", "/app/dir/"),
            ("/admin/..;/public/x", "/public/x"),
            ("/admin/x\\..\\..\\public/y", "/public/y"),
            ("/admin/%2e%2e/public/x", "/public/x"),
            ("/admin/%2E%2e/public/x", "/public/x"),
            ("/../static/x", "/static/x"),
            ("/a/./b//c", "/a/b/c"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/app;jsessionid=1/x", "/app/x"),
            ("/files/%E2%9C%93%20a.txt", "/files/%E2%9C%93%20a.txt"),
            ("/files/%e9.txt", "/files/%E9.txt"),
            ("/a%3Fb", "/a%3Fb"),
            ("/%61dmin", "/admin"),
            ("/a%25b", "/a%25b"),
        ] {
            assert_eq!(forward_path(raw), want, "{raw}");
            let judged = normalize_path(raw).to_string();
            let forwarded = normalize_path(&forward_path(raw)).to_string();
            assert_eq!(judged, forwarded, "{raw}: judged and forwarded differ");
        }
        assert!(matches!(
            forward_path("/app/x/"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn dot_segments_are_found_however_written() {
        for raw in [
            "/a/../b",
            "/a/..;/b",
            "/a/%2e%2E/b",
            "/a\\..\\b",
            "/a/.",
            "/./a",
            "/a/.;x/b",
        ] {
            assert!(has_dot_segment(raw), "{raw}");
        }
        for raw in ["/a/b", "/a/..b", "/a/.well-known/x", "/a/%2e%2ex"] {
            assert!(!has_dot_segment(raw), "{raw}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, path: &str) -> bool {
        PathPattern::parse(pattern)
            .unwrap()
            .matches(&normalize_path(path))
    }

    #[test]
    fn normalisation_resolves_tricks() {
        assert_eq!(normalize_path("/admin/../admin/x").to_string(), "/admin/x");
        assert_eq!(normalize_path("/%61dmin/x").to_string(), "/admin/x");
        assert_eq!(normalize_path("//admin///x/").to_string(), "/admin/x");
        assert_eq!(
            normalize_path("/../../etc/passwd").to_string(),
            "/etc/passwd"
        );
        assert_eq!(normalize_path("/a\\..\\b").to_string(), "/b");
        assert_eq!(normalize_path("/a/%2e%2e/b").to_string(), "/b");
        assert_eq!(
            normalize_path("/bad%zzescape%").to_string(),
            "/bad%zzescape%"
        );
        assert_eq!(normalize_path("").to_string(), "/");
        assert_eq!(normalize_path("/static/..;/admin").to_string(), "/admin");
        assert_eq!(
            normalize_path("/admin;jsessionid=1/x").to_string(),
            "/admin/x"
        );
        assert_eq!(
            normalize_path("/api/x%2Fy/admin").segments().len(),
            3,
            "an encoded slash is data"
        );
    }

    #[test]
    fn patterns_match_as_documented() {
        assert!(m("/static/**", "/static"));
        assert!(m("/static/**", "/static/css/app.css"));
        assert!(!m("/static/**", "/staticky"));
        assert!(m("/health", "/health"));
        assert!(m("/health", "/health/"));
        assert!(!m("/health", "/health/x"));
        assert!(m("/api/*/items", "/api/v1/items"));
        assert!(!m("/api/*/items", "/api/v1/v2/items"));
        assert!(m("/**/*.css", "/a/b/c.css"));
        assert!(m("/**", "/"));
        assert!(m("/files/*.pdf", "/files/report.pdf"));
        assert!(!m("/files/*.pdf", "/files/report.pdf.exe"));
    }

    #[test]
    fn many_segments_and_double_stars_stay_cheap() {
        let p = PathPattern::parse("/**/admin/**/admin/**/x").unwrap();
        let long = format!("/{}y", "admin/".repeat(5000));
        assert!(!p.matches(&normalize_path(&long)));
        assert!(p.matches(&normalize_path("/a/admin/b/admin/c/x")));
        // Both algorithms agree.
        for pat in ["/**", "/a/**", "/**/x", "/a/*/b/**", "/**/a/**", "/*/**/*"] {
            let pp = PathPattern::parse(pat).unwrap();
            for path in ["/", "/a", "/a/x", "/a/b/x", "/x", "/a/c/b/d", "/q/a/r"] {
                let np = normalize_path(path);
                assert_eq!(
                    match_simple(&pp.segments, np.segments()),
                    match_segments(&pp.segments, np.segments()),
                    "{pat} {path}"
                );
            }
        }
    }

    #[test]
    fn bad_patterns_are_rejected() {
        assert!(PathPattern::parse("static/**").is_err());
        assert!(PathPattern::parse("/a**").is_err());
        assert!(PathPattern::parse("/a/../b").is_err());
    }
}
