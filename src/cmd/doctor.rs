//! `portcullis doctor URL`: the client side of "why can't I open this page?", for any site.
//!
//! Walks the checklist a person would, with real requests: does the name resolve and the server
//! answer (and its TLS certificate hold), does the page exist or a near variant of it, is a
//! sign-in required and by which scheme and realm, are the given credentials refused, does a
//! stored cookie make things worse than no cookie, is the client blocked or rate-limited, does
//! the site redirect in a loop. It prints one verdict with what to do (`--json` for scripts).
//! When the site is a Portcullis, its problem+json answers name the exact reason.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

/// Arguments of `doctor`.
#[derive(clap::Args)]
pub struct Args {
    /// The address that does not work, e.g. https://app.example.com/reports.
    url: String,
    /// Credentials to try, USER:PASSWORD (USER alone prompts for the password).
    #[arg(short = 'u', long = "user", conflicts_with = "token")]
    user: Option<String>,
    /// An API token to try (sent as `Authorization: Bearer TOKEN`).
    #[arg(long)]
    token: Option<String>,
    /// A Cookie header value the browser sends (e.g. "portcullis_session=…").
    #[arg(long)]
    cookie: Option<String>,
    /// Print {"verdict", "status", "findings", "advice"} as JSON.
    #[arg(long)]
    json: bool,
    /// Longest wait for each request.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// What doctor signs in with.
enum Credentials {
    /// `-u USER:PASSWORD`: HTTP Basic.
    Basic(String, String),
    /// `--token T`: `Authorization: Bearer T`.
    Bearer(String),
    /// `-u USER:PASSWORD` answering a Digest challenge (RFC 7616): user, password, and the
    /// challenge's realm, nonce, opaque and algorithm.
    Digest {
        user: String,
        password: String,
        realm: String,
        nonce: String,
        opaque: Option<String>,
        algorithm: policy::DigestAlgorithm,
    },
}

impl Credentials {
    /// How the findings name them (never the password or the token).
    fn named(&self) -> String {
        match self {
            Credentials::Basic(user, _) | Credentials::Digest { user, .. } => {
                format!("the credentials of {user}")
            }
            Credentials::Bearer(token) => {
                format!("the token {}…", token.chars().take(8).collect::<String>())
            }
        }
    }
}

/// The report.
#[derive(Debug, Serialize)]
struct Report {
    verdict: &'static str,
    /// The status of the request as given (0 when nothing answered).
    status: u16,
    findings: Vec<String>,
    advice: Vec<String>,
}

/// One request's outcome, redirects followed.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    /// Locations followed, in order.
    hops: Vec<String>,
    /// A redirect came back to an address already visited.
    looped: bool,
    /// `reason` of a problem+json body (a Portcullis answer).
    reason: Option<String>,
    final_url: reqwest::Url,
    /// An HTML page with a password field: a sign-in form.
    sign_in_form: bool,
    /// The links of an HTML page (`href` values, as written).
    links: Vec<String>,
}

/// The most of an HTML page read for its form and links.
const MAX_PAGE_BYTES: usize = 256 * 1024;

/// Whether an HTML page has a password field, and its links.
fn read_page(html: &str) -> (bool, Vec<String>) {
    let lower = html.to_ascii_lowercase();
    let form = ["type=\"password\"", "type='password'", "type=password"]
        .iter()
        .any(|p| lower.contains(p));
    let mut links = Vec::new();
    // (ASCII lower-casing keeps every byte offset, so `lower`'s positions index `html`.)
    let mut pos = 0;
    while let Some(i) = lower[pos..].find("href=") {
        let rest = &html[pos + i + 5..];
        let (quote, body) = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => (Some(q), &rest[1..]),
            _ => (None, rest),
        };
        let end = match quote {
            Some(q) => body.find(q),
            None => body.find(|c: char| c.is_whitespace() || c == '>'),
        }
        .unwrap_or(body.len());
        links.push(body[..end].to_owned());
        pos = html.len() - body.len() + end;
        if links.len() >= 1000 {
            break;
        }
    }
    (form, links)
}

/// Levenshtein distance (case-insensitive), for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (
        a.to_lowercase().chars().collect(),
        b.to_lowercase().chars().collect(),
    );
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

enum Failure {
    Resolve(String),
    Connect(String),
    Tls(String),
    Timeout,
}

const ACCEPT: &str = "application/problem+json, application/json;q=0.9, text/html;q=0.8, */*;q=0.5";

/// Runs `doctor`.
pub fn run(args: Args) -> ExitCode {
    let url = match reqwest::Url::parse(&args.url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
        _ => {
            eprintln!(
                "portcullis doctor: {:?} is not an http:// or https:// address",
                args.url
            );
            return ExitCode::from(super::EXIT_CONFIG);
        }
    };
    let credentials = match args.user.as_deref() {
        None => args.token.map(Credentials::Bearer),
        Some(u) => match u.split_once(':') {
            Some((user, pass)) => Some(Credentials::Basic(user.to_owned(), pass.to_owned())),
            None => match super::hash::read_password() {
                Ok(p) => Some(Credentials::Basic(u.to_owned(), p)),
                Err(e) => {
                    eprintln!("portcullis doctor: {e}");
                    return ExitCode::from(super::EXIT_CONFIG);
                }
            },
        },
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portcullis doctor: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(diagnose(
        url,
        credentials,
        args.cookie.as_deref(),
        args.timeout,
    ));
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).unwrap_or_else(|_| "{}".into())
        );
    } else {
        println!("Verdict: {} (HTTP {})", report.verdict, report.status);
        println!("Findings:");
        for f in &report.findings {
            println!("  - {f}");
        }
        println!("What to do:");
        for a in &report.advice {
            println!("  - {a}");
        }
    }
    if report.verdict == "ok" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn diagnose(
    url: reqwest::Url,
    credentials: Option<Credentials>,
    cookie: Option<&str>,
    timeout: Duration,
) -> Report {
    let mut findings = Vec::new();
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .user_agent(concat!("portcullis-doctor/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => return report("server_error", 0, vec![e.to_string()], vec![]),
    };
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    // 1. Does the name resolve?
    match tokio::time::timeout(timeout, tokio::net::lookup_host((host.as_str(), port))).await {
        Ok(Ok(addrs)) => {
            let addrs: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
            findings.push(format!("{host} resolves to {}", addrs.join(", ")));
        }
        Ok(Err(e)) => {
            return failed(Failure::Resolve(e.to_string()), &host, findings);
        }
        Err(_) => return failed(Failure::Timeout, &host, findings),
    }
    // 2. The page without credentials or cookies.
    let plain = match fetch(&client, &url, None, None).await {
        Ok(a) => a,
        Err(f) => return failed(f, &host, findings),
    };
    findings.push(describe("without credentials", &url, &plain));
    if plain.looped {
        return report(
            "redirect_loop",
            plain.status,
            findings,
            vec![
                format!("The site sends the browser round in circles: {}.", plain.hops.join(" → ")),
                "Delete this site's cookies and try again; if it persists, the site's administrator must fix the redirects (a sign-in page that redirects to itself, or HTTP ↔ HTTPS).".into(),
            ],
        );
    }
    // 3. With the cookie the browser holds: worse than without?
    if let Some(cookie) = cookie {
        match fetch(&client, &url, None, Some(cookie)).await {
            Ok(with) => {
                findings.push(describe("with the cookie", &url, &with));
                let ended = with.reason.as_deref() == Some("session_expired")
                    || with.hops.iter().any(|h| h.contains("ended=1"));
                let worse = with.looped
                    || (with.status >= 400 && plain.status < 400)
                    || matches!(with.status, 400 | 431)
                    || (with.status >= 500 && plain.status < 500);
                if ended || worse {
                    let mut advice = vec![
                        "The cookie your browser holds for this site makes it worse: delete this site's cookies (or use a private window), then sign in again.".to_owned(),
                    ];
                    if ended {
                        advice.push("The site says the session it names has ended (expired, signed out, or the server forgot it).".into());
                    }
                    return report("stale_cookie", with.status, findings, advice);
                }
            }
            Err(f) => return failed(f, &host, findings),
        }
    }
    let status = plain.status;
    // 4. What the answer means.
    match status {
        200..=299 if !plain.hops.is_empty() && plain.sign_in_form => {
            findings.push(format!(
                "the request was sent on to {}, a page with a password field: a sign-in form",
                plain.final_url
            ));
            report(
                "login_required",
                status,
                findings,
                vec![
                    format!(
                        "Sign in on the site's sign-in page ({}), then open the address again.",
                        plain.final_url
                    ),
                    "A browser is sent there by itself; a script needs the site's API credentials instead.".into(),
                ],
            )
        }
        200..=299 => report(
            "ok",
            status,
            findings,
            vec!["The page opens for this client without signing in. If a browser still fails, delete this site's cookies or try a private window.".into()],
        ),
        401 => login(&client, &url, &plain, credentials, findings).await,
        404 | 410 => {
            let (near, parent) = near_paths(&client, &url).await;
            let mut advice = vec!["Check the address for typing mistakes (letter case, a missing or extra '/').".to_owned()];
            if let Some(p) = parent {
                findings.push(p);
            }
            if near.is_empty() {
                findings.push("no near variant of the path exists either".into());
            } else {
                advice.insert(0, format!("Did you mean: {}?", near.join("; ")));
                findings.extend(near);
            }
            report("not_found", status, findings, advice)
        }
        403 | 429 => refused(&plain, findings),
        500..=599 => report(
            "server_error",
            status,
            findings,
            vec![
                "The server (or the application behind it) failed. Try again in a few minutes.".into(),
                format!(
                    "If it persists, tell the administrator{}.",
                    request_id(&plain).map_or(String::new(), |id| format!(", quoting request id {id}"))
                ),
            ],
        ),
        _ => report(
            "server_error",
            status,
            findings,
            vec![format!("The server answered {status}, which a browser cannot use as a page.")],
        ),
    }
}

/// A 401: which scheme and realm; the given credentials tried.
async fn login(
    client: &reqwest::Client,
    url: &reqwest::Url,
    plain: &Answer,
    credentials: Option<Credentials>,
    mut findings: Vec<String>,
) -> Report {
    let challenges: Vec<String> = plain
        .headers
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    let schemes: Vec<String> = challenges
        .iter()
        .filter_map(|c| c.split_whitespace().next())
        .map(|s| s.trim_end_matches(',').to_owned())
        .collect();
    let realm = challenges.iter().find_map(|c| param(c, "realm"));
    let form = challenges
        .iter()
        .find(|c| c.starts_with("Cookie "))
        .and_then(|c| param(c, "form-action"));
    if challenges.is_empty() {
        findings
            .push("the 401 carries no WWW-Authenticate challenge (RFC 9110 requires one)".into());
    } else {
        findings.push(format!("a sign-in is required: {}", challenges.join(" | ")));
    }
    let basic = schemes.iter().any(|s| s.eq_ignore_ascii_case("basic"));
    let sign_in_page = form
        .as_ref()
        .map(|f| url.join(f).map_or_else(|_| f.clone(), |u| u.to_string()));
    let bearer = schemes.iter().any(|s| s.eq_ignore_ascii_case("bearer"));
    let Some(credentials) = credentials else {
        let mut advice = vec![match (&sign_in_page, basic) {
            (Some(page), _) => {
                format!("Sign in on the sign-in page ({page}); a browser is sent there by itself.")
            }
            (None, true) => format!(
                "Sign in with a user name and password{} (curl: -u USER).",
                realm
                    .as_ref()
                    .map_or(String::new(), |r| format!(" for \"{r}\""))
            ),
            (None, false) if bearer => {
                "Send a token: Authorization: Bearer TOKEN (an API token from the site's administrator).".to_owned()
            }
            (None, false) => format!(
                "Sign in with the scheme the site asks for ({}).",
                schemes.join(", ")
            ),
        }];
        advice.push(if bearer && !basic {
            "Run doctor again with --token TOKEN to check the token.".into()
        } else {
            "Run doctor again with -u USER:PASSWORD to check the credentials.".into()
        });
        return report("login_required", plain.status, findings, advice);
    };
    // A site that asks for Digest and not Basic: answer its first challenge doctor can
    // (SHA-256 or MD5), as curl --digest does.
    let digests: Vec<_> = challenges
        .iter()
        .filter_map(|c| {
            if !c.starts_with("Digest ") {
                return None;
            }
            let algorithm = policy::DigestAlgorithm::parse(
                &param(c, "algorithm").unwrap_or_else(|| "MD5".into()),
            )?;
            Some((
                param(c, "realm")?,
                param(c, "nonce")?,
                param(c, "opaque"),
                algorithm,
            ))
        })
        .collect();
    let digest = digests.first().cloned();
    let credentials = match (credentials, digest) {
        (Credentials::Basic(user, password), Some((realm, nonce, opaque, algorithm))) if !basic => {
            findings.push(format!(
                "the site asks for Digest: answering its {} challenge",
                algorithm.name()
            ));
            Credentials::Digest {
                user,
                password,
                realm,
                nonce,
                opaque,
                algorithm,
            }
        }
        (c, _) => c,
    };
    let offered = match &credentials {
        Credentials::Basic(..) => basic,
        Credentials::Bearer(_) => bearer,
        Credentials::Digest { .. } => true,
    };
    if !offered {
        let mut advice = vec![match &credentials {
            Credentials::Basic(..) | Credentials::Digest { .. } => format!(
                "The site does not take a user name and password directly (it asks for {}).",
                schemes.join(", ")
            ),
            Credentials::Bearer(_) => format!(
                "The site does not take a bearer token (it asks for {}).",
                schemes.join(", ")
            ),
        }];
        if let Some(page) = sign_in_page {
            advice.push(format!("Sign in on the sign-in page ({page}) in a browser, then pass its session cookie with --cookie."));
        }
        return report("scheme_unsupported", plain.status, findings, advice);
    }
    let with = match fetch(client, url, Some(&credentials), None).await {
        Ok(a) => a,
        Err(_) => {
            return report(
                "server_error",
                plain.status,
                findings,
                vec!["The server stopped answering when credentials were sent.".into()],
            );
        }
    };
    let named = credentials.named();
    findings.push(describe(&format!("with {named}"), url, &with));
    match (with.status, &credentials) {
        (200..=299, Credentials::Basic(..) | Credentials::Digest { .. }) => report(
            "ok",
            with.status,
            findings,
            vec![format!("{} work. In a browser, close all its windows (browsers remember a refused password) and sign in again.", capitalise(&named))],
        ),
        (200..=299, Credentials::Bearer(_)) => report(
            "ok",
            with.status,
            findings,
            vec![format!("{} works: send it exactly as Authorization: Bearer TOKEN.", capitalise(&named))],
        ),
        (
            401,
            Credentials::Digest {
                user,
                password,
                algorithm,
                ..
            },
        ) if digests.iter().any(|d| d.3 != *algorithm) => {
            // Refused with the first algorithm: does another work? (An account with only an MD5
            // line — what Apache's htdigest writes — fails every client that picks SHA-256.)
            let first = *algorithm;
            let (realm, nonce, opaque, other) = digests
                .iter()
                .find(|d| d.3 != first)
                .cloned()
                .expect("checked above");
            let retry = Credentials::Digest {
                user: user.clone(),
                password: password.clone(),
                realm,
                nonce,
                opaque,
                algorithm: other,
            };
            let again = fetch(client, url, Some(&retry), None).await.ok();
            let works = again.as_ref().is_some_and(|a| (200..300).contains(&a.status));
            if let Some(a) = &again {
                findings.push(describe(&format!("with {} instead", other.name()), url, a));
            }
            let mut advice = Vec::new();
            if works {
                advice.push(format!(
                    "The password of {user} is right, but the site knows it only for {} and offers {} first, which clients such as curl and Chrome choose: they cannot sign in.",
                    other.name(),
                    first.name()
                ));
                advice.push(format!(
                    "Ask the administrator to add the account's {} line (portcullis hash --digest prints it) or to offer only {}.",
                    first.name(),
                    other.name()
                ));
            } else {
                advice.push(format!("The user name or password of {user} was not accepted: check both (and Caps Lock)."));
            }
            report("credentials_refused", with.status, findings, advice)
        }
        (401, Credentials::Basic(user, _) | Credentials::Digest { user, .. }) => report(
            "credentials_refused",
            with.status,
            findings,
            vec![
                format!("The user name or password of {user} was not accepted: check both (and Caps Lock)."),
                "If you forgot the password, use the site's \"forgot password\" link or ask the administrator to reset it.".into(),
            ],
        ),
        (401, Credentials::Bearer(_)) => {
            let expired = with.reason.as_deref() == Some("token_expired")
                || challenge_error(&with).is_some_and(|e| e.contains("expired"));
            report(
                "credentials_refused",
                with.status,
                findings,
                vec![if expired {
                    format!("{} has expired: ask the administrator for a new one.", capitalise(&named))
                } else {
                    format!("{} was not accepted: it may be mistyped, revoked, or its user disabled. Ask the administrator for a new one.", capitalise(&named))
                }],
            )
        }
        (403 | 429, _) => refused(&with, findings),
        (s, _) => report(
            if s >= 500 { "server_error" } else { "forbidden" },
            s,
            findings,
            vec![format!("With credentials the site answers {s}.")],
        ),
    }
}

/// The `Authorization: Digest …` answering `d`'s challenge for a GET of `url` (qop=auth, nc 1).
fn digest_authorization(d: &Credentials, url: &reqwest::Url) -> String {
    let Credentials::Digest {
        user,
        password,
        realm,
        nonce,
        opaque,
        algorithm,
    } = d
    else {
        return String::new();
    };
    let uri = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let cnonce = store::hex(&rand::random::<[u8; 12]>());
    let ha1 =
        store::htdigest::digest_hex(*algorithm, format!("{user}:{realm}:{password}").as_bytes());
    let response = store::htdigest::expected_response(
        *algorithm, &ha1, "GET", &uri, nonce, "00000001", &cnonce, "auth",
    );
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut header = format!(
        "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", algorithm={}, qop=auth, nc=00000001, cnonce=\"{cnonce}\", response=\"{response}\"",
        quote(user),
        quote(realm),
        quote(nonce),
        quote(&uri),
        algorithm.name()
    );
    if let Some(o) = opaque {
        header.push_str(&format!(", opaque=\"{}\"", quote(o)));
    }
    header
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map_or_else(String::new, |f| f.to_uppercase().chain(c).collect())
}

/// The `error_description` (or `error`) of a Bearer challenge (RFC 6750 §3).
fn challenge_error(answer: &Answer) -> Option<String> {
    answer
        .headers
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|c| c.starts_with("Bearer"))
        .find_map(|c| param(c, "error_description").or_else(|| param(c, "error")))
}

/// A 403 or 429: blocked, rate-limited, locked out or simply not allowed.
fn refused(answer: &Answer, findings: Vec<String>) -> Report {
    let id = request_id(answer).map_or(String::new(), |id| format!(" (request id {id})"));
    let wait = answer
        .headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match answer.reason.as_deref() {
        Some("rate_limit" | "concurrent_limit") | None
            if answer.status == 429
                || answer
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.ends_with("limit")) =>
        {
            report(
                "rate_limited",
                answer.status,
                findings,
                vec![
                    format!(
                        "Too many requests from this address: wait{} and try again.",
                        wait.map_or(String::new(), |w| format!(" {w} seconds"))
                    ),
                    "Scripts and tools should slow down and honour Retry-After.".into(),
                ],
            )
        }
        Some("ip_denied" | "host_denied") => report(
            "blocked",
            answer.status,
            findings,
            vec![
                format!(
                    "This network address is blocked by the site: send the administrator this request id{id}."
                ),
                "A different network (mobile data instead of office Wi-Fi) may not be blocked."
                    .into(),
            ],
        ),
        Some("locked_out") => report(
            "blocked",
            answer.status,
            findings,
            vec![format!(
                "Too many failed sign-ins: signing in is blocked for a while{}. Wait, then use the right password.",
                wait.map_or(String::new(), |w| format!(" ({w} more seconds)"))
            )],
        ),
        _ => report(
            "forbidden",
            answer.status,
            findings,
            vec![format!(
                "The site refuses this page to this client or account: ask the administrator for access{id}."
            )],
        ),
    }
}

fn failed(failure: Failure, host: &str, mut findings: Vec<String>) -> Report {
    let (verdict, finding, advice) = match failure {
        Failure::Resolve(e) => (
            "unreachable",
            format!("{host} does not resolve: {e}"),
            "Check the host name for typing mistakes; if it is right, the DNS (or VPN) is the problem.".to_owned(),
        ),
        Failure::Connect(e) => (
            "unreachable",
            format!("{host} does not answer: {e}"),
            "Check the port and that the server is running; a firewall may drop the connection.".to_owned(),
        ),
        Failure::Tls(e) => (
            "tls_error",
            format!("the TLS connection to {host} failed: {e}"),
            "The certificate is not valid for this name, expired or self-signed: tell the administrator; do not click through the warning.".to_owned(),
        ),
        Failure::Timeout => (
            "unreachable",
            format!("{host} did not answer in time"),
            "The server or the network is overloaded or filtered; try again later.".to_owned(),
        ),
    };
    findings.push(finding);
    report(verdict, 0, findings, vec![advice])
}

fn report(
    verdict: &'static str,
    status: u16,
    findings: Vec<String>,
    advice: Vec<String>,
) -> Report {
    Report {
        verdict,
        status,
        findings,
        advice,
    }
}

/// GET `url` following redirects (at most 10, stopping at a repeat), with optional Basic
/// credentials (sent only to the same host) and cookie.
async fn fetch(
    client: &reqwest::Client,
    url: &reqwest::Url,
    credentials: Option<&Credentials>,
    cookie: Option<&str>,
) -> Result<Answer, Failure> {
    let mut current = url.clone();
    let mut hops = Vec::new();
    let mut visited = HashSet::new();
    let mut cookies: Vec<String> = cookie.map(|c| vec![c.to_owned()]).unwrap_or_default();
    visited.insert(current.to_string());
    loop {
        let mut req = client
            .get(current.clone())
            .header(reqwest::header::ACCEPT, ACCEPT);
        // Credentials and cookies go only where they were given for: the same scheme, host and
        // port (a redirect elsewhere, or to plain HTTP, gets neither).
        let same_origin = current.origin() == url.origin();
        match credentials {
            Some(Credentials::Basic(u, p)) if same_origin => req = req.basic_auth(u, Some(p)),
            Some(Credentials::Bearer(t)) if same_origin => req = req.bearer_auth(t),
            Some(d @ Credentials::Digest { .. }) if same_origin => {
                req = req.header(
                    reqwest::header::AUTHORIZATION,
                    digest_authorization(d, &current),
                );
            }
            _ => {}
        }
        if !cookies.is_empty() && same_origin {
            req = req.header(reqwest::header::COOKIE, cookies.join("; "));
        }
        let response = req.send().await.map_err(classify)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        for set in headers.get_all(reqwest::header::SET_COOKIE) {
            if let Some(pair) = set.to_str().ok().and_then(|s| s.split(';').next()) {
                let name = pair.split('=').next().unwrap_or_default().to_owned();
                cookies.retain(|c| !c.starts_with(&format!("{name}=")));
                if !set.to_str().unwrap_or_default().contains("Max-Age=0") {
                    cookies.push(pair.to_owned());
                }
            }
        }
        let location = headers
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| current.join(l).ok());
        if (300..400).contains(&status)
            && let Some(next) = location
        {
            hops.push(next.to_string());
            if !visited.insert(next.to_string()) || hops.len() > 10 {
                return Ok(Answer {
                    status,
                    headers,
                    hops,
                    looped: true,
                    reason: None,
                    final_url: next,
                    sign_in_form: false,
                    links: Vec::new(),
                });
            }
            current = next;
            continue;
        }
        let is_problem = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.contains("json"));
        let is_html = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.contains("html"));
        let (mut reason, mut sign_in_form, mut links) = (None, false, Vec::new());
        if is_problem {
            reason = response
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_owned));
        } else if is_html && (200..300).contains(&status) {
            // At most MAX_PAGE_BYTES of the page: its password field and its links.
            let mut body = Vec::new();
            let mut response = response;
            while body.len() < MAX_PAGE_BYTES {
                match response.chunk().await {
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                    _ => break,
                }
            }
            (sign_in_form, links) = read_page(&String::from_utf8_lossy(&body));
        }
        return Ok(Answer {
            status,
            headers,
            hops,
            looped: false,
            reason,
            final_url: current,
            sign_in_form,
            links,
        });
    }
}

fn classify(e: reqwest::Error) -> Failure {
    if e.is_timeout() {
        return Failure::Timeout;
    }
    let mut source: Option<&dyn std::error::Error> = Some(&e);
    let mut chain = Vec::new();
    while let Some(s) = source {
        if s.downcast_ref::<rustls::Error>().is_some() {
            return Failure::Tls(s.to_string());
        }
        chain.push(s.to_string());
        source = s.source();
    }
    let text = chain.join(": ");
    if text.contains("certificate") || text.to_ascii_lowercase().contains("tls") {
        Failure::Tls(text)
    } else {
        Failure::Connect(chain.last().cloned().unwrap_or(text))
    }
}

/// "without credentials: GET /x → 401 …" for the findings.
fn describe(how: &str, url: &reqwest::Url, a: &Answer) -> String {
    let mut s = format!("{how}: GET {} → {}", url.path(), a.status);
    if !a.hops.is_empty() {
        s.push_str(&format!(
            " after {} redirect(s) ({})",
            a.hops.len(),
            a.hops.join(" → ")
        ));
    } else if a.final_url != *url {
        s.push_str(&format!(" at {}", a.final_url));
    }
    if let Some(r) = &a.reason {
        s.push_str(&format!(", reason {r}"));
    }
    s
}

fn request_id(a: &Answer) -> Option<String> {
    a.headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A `name="value"` (or `name=value`) parameter of a challenge.
fn param(challenge: &str, name: &str) -> Option<String> {
    let at = challenge.find(&format!("{name}="))? + name.len() + 1;
    let rest = &challenge[at..];
    if let Some(quoted) = rest.strip_prefix('"') {
        Some(quoted[..quoted.find('"')?].to_owned())
    } else {
        Some(rest.split([',', ' ']).next()?.to_owned())
    }
}

/// Addresses one typing mistake away: the other trailing slash, lower case, the parent folder.
/// Paths near a missing one that answer: the trailing-slash and lower-case variants, and the
/// links of the parent page whose path is a typo away (edit distance 2 at most). Returns them
/// ("PATH answers STATUS") and, apart, what the parent answers (a finding, not a suggestion).
async fn near_paths(client: &reqwest::Client, url: &reqwest::Url) -> (Vec<String>, Option<String>) {
    let path = url.path().trim_end_matches('/');
    let parent_path = match path.rsplit_once('/') {
        Some((p, _)) => format!("{p}/"),
        None => "/".to_owned(),
    };
    let mut candidates: Vec<reqwest::Url> = near_variants(url)
        .into_iter()
        .filter(|v| v.path() != parent_path)
        .collect();
    let mut parent_url = url.clone();
    parent_url.set_path(&parent_path);
    parent_url.set_query(None);
    let mut parent_finding = None;
    if let Ok(parent) = fetch(client, &parent_url, None, None).await {
        parent_finding = Some(format!(
            "the parent {parent_path} answers {}",
            parent.status
        ));
        let mut links: Vec<(usize, reqwest::Url)> = parent
            .links
            .iter()
            .filter_map(|l| parent.final_url.join(l).ok())
            .filter(|u| u.origin() == url.origin())
            .map(|mut u| {
                // Only the path is suggested (and fetched).
                u.set_query(None);
                u.set_fragment(None);
                u
            })
            .filter(|u| {
                // Cheap first: lengths two or more apart cannot be a typo away.
                u.path()
                    .trim_end_matches('/')
                    .chars()
                    .count()
                    .abs_diff(path.chars().count())
                    <= 2
            })
            .map(|u| (distance(u.path().trim_end_matches('/'), path), u))
            .filter(|(d, u)| *d <= 2 && u.path() != url.path() && u.path() != parent_path)
            .collect();
        links.sort_by_key(|(d, _)| *d);
        candidates.extend(links.into_iter().take(5).map(|(_, u)| u));
    }
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    for v in candidates {
        if !seen.insert(v.path().to_owned()) {
            continue;
        }
        if let Ok(a) = fetch(client, &v, None, None).await
            && !matches!(a.status, 404 | 410)
        {
            found.push(format!("{} answers {}", v.path(), a.status));
        }
    }
    (found, parent_finding)
}

fn near_variants(url: &reqwest::Url) -> Vec<reqwest::Url> {
    let path = url.path();
    let mut paths = Vec::new();
    if path.len() > 1 {
        paths.push(match path.strip_suffix('/') {
            Some(p) => p.to_owned(),
            None => format!("{path}/"),
        });
    }
    let lower = path.to_lowercase();
    if lower != path {
        paths.push(lower.clone());
        if !lower.ends_with('/') {
            paths.push(format!("{lower}/"));
        }
    }
    if let Some((parent, _)) = path.trim_end_matches('/').rsplit_once('/') {
        paths.push(format!("{parent}/"));
    }
    let mut seen = HashSet::new();
    paths
        .into_iter()
        .filter(|p| p != path && seen.insert(p.clone()))
        .map(|p| {
            let mut u = url.clone();
            u.set_path(&p);
            u
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parameters_and_near_variants() {
        assert_eq!(
            param(r#"Basic realm="Staff area", charset="UTF-8""#, "realm").as_deref(),
            Some("Staff area")
        );
        assert_eq!(
            param(
                r#"Cookie realm="x", form-action="/.portcullis/login""#,
                "form-action"
            )
            .as_deref(),
            Some("/.portcullis/login")
        );
        let u = reqwest::Url::parse("http://h/Docs/Guide").unwrap();
        let v: Vec<String> = near_variants(&u)
            .iter()
            .map(|u| u.path().to_owned())
            .collect();
        assert_eq!(v, ["/Docs/Guide/", "/docs/guide", "/docs/guide/", "/Docs/"]);
    }

    #[test]
    fn pages_forms_links_and_typos() {
        let (form, links) = read_page(
            r#"<a HREF="/private/">p</a> <a href='x y'>q</a> <a href=/z>z</a><INPUT TYPE="password"> <a href="#,
        );
        assert!(form);
        assert_eq!(links, ["/private/", "x y", "/z", ""]);
        assert!(!read_page("<input type=text>").0);
        assert_eq!(distance("/privte", "/private"), 1);
        assert_eq!(distance("/Reports", "/reports"), 0);
        assert_eq!(distance("/a", "/abc"), 2);
    }
}
