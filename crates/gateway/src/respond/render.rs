//! How a [`Refusal`] looks on the wire, and the builders of Portcullis's own responses.
//!
//! Status from the refusal (reason and action), a challenge on every 401, `Cache-Control:
//! no-store`, the request id, `Retry-After` when known, and a body in the format the client asked
//! for. No other module decides what a refusal looks like on the wire.

use std::net::IpAddr;

use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use policy::{Refusal, TraceEntry};

use crate::body::{Body, full};
use crate::pages::{Offer, PageContext, Pages, Reader, SwitchForm, advice};
use crate::request_id::X_REQUEST_ID;

/// The `Content-Security-Policy` of Portcullis's HTML pages: nothing from elsewhere, no
/// framing; the built-in pages' inline style, and their one inline script by its hash.
fn page_policy() -> &'static HeaderValue {
    static POLICY: std::sync::LazyLock<HeaderValue> = std::sync::LazyLock::new(|| {
        use base64::Engine as _;
        use sha2::Digest as _;
        let scripts: Vec<String> = crate::pages::inline_scripts()
            .map(|s| {
                let hash = sha2::Sha256::digest(s.as_bytes());
                format!(
                    " 'sha256-{}'",
                    base64::engine::general_purpose::STANDARD.encode(hash)
                )
            })
            .collect();
        HeaderValue::from_str(&format!(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self'{}; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
            scripts.concat()
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"))
    });
    &POLICY
}

/// Sets the headers every response Portcullis writes itself carries: `nosniff`, no framing
/// (`X-Frame-Options: DENY`, CSP `frame-ancestors 'none'`, so the "sign in as someone else"
/// form cannot be clickjacked), and for HTML pages a CSP that loads nothing from elsewhere.
pub fn secure_own_response(headers: &mut http::HeaderMap) {
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        http::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    );
    let html = headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if html {
        headers.insert(http::header::CONTENT_SECURITY_POLICY, page_policy().clone());
    } else {
        headers
            .entry(http::header::CONTENT_SECURITY_POLICY)
            .or_insert(HeaderValue::from_static("frame-ancestors 'none'"));
    }
}

/// A 303 to `location`.
pub(crate) fn see_other(location: &str) -> Response<Body> {
    let mut r = Response::new(full(bytes::Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// An HTML page (the portal's).
pub(crate) fn html(status: StatusCode, page: String) -> Response<Body> {
    let mut r = Response::new(full(page));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(
        http::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    );
    r.headers_mut().insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    r
}

/// A plain-text answer that is not a refusal of the pipeline (a 404 of a gateway without
/// upstream, a 405 at a portal page).
pub(crate) fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut r = Response::new(full(message));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The body formats a refusal can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/html`: the page for people.
    Html,
    /// `application/problem+json` (RFC 9457).
    Problem,
    /// `text/plain`.
    Text,
}

/// Chooses the format from `Accept`: the highest q-value wins; a missing header or a bare `*/*`
/// (curl, scripts) gets plain text; ties prefer HTML, then problem+json.
pub fn negotiate(accept: Option<&HeaderValue>) -> Format {
    let Some(accept) = accept.and_then(|a| a.to_str().ok()) else {
        return Format::Text;
    };
    let ranges: Vec<(&str, f32)> = accept
        .split(',')
        .filter_map(|item| {
            let mut parts = item.split(';');
            let media = parts.next()?.trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (!media.is_empty()).then_some((media, q))
        })
        .collect();
    if ranges.iter().all(|(m, _)| *m == "*/*") {
        return Format::Text;
    }
    let quality = |candidate: &str| -> f32 {
        let (ty, _) = candidate.split_once('/').unwrap_or((candidate, ""));
        let mut best: Option<(u8, f32)> = None;
        for (media, q) in &ranges {
            let specificity = if media.eq_ignore_ascii_case(candidate) {
                3
            } else if media
                .strip_suffix("/*")
                .is_some_and(|t| t.eq_ignore_ascii_case(ty))
            {
                2
            } else if *media == "*/*" {
                1
            } else {
                continue;
            };
            if best.is_none_or(|(s, _)| specificity > s) {
                best = Some((specificity, *q));
            }
        }
        best.map_or(0.0, |(_, q)| q)
    };
    let html = quality("text/html");
    let problem = quality("application/problem+json").max(quality("application/json"));
    let text = quality("text/plain");
    if html > 0.0 && html >= problem && html >= text {
        Format::Html
    } else if problem > 0.0 && problem >= text {
        Format::Problem
    } else {
        Format::Text
    }
}

/// What the response needs to know about the request beyond the refusal itself.
pub struct RefusalContext<'a> {
    /// The request id (from the client when well-formed, otherwise ours).
    pub request_id: &'a str,
    /// The request's `Accept`.
    pub accept: Option<&'a HeaderValue>,
    /// Our challenges, one per enabled scheme.
    pub challenges: &'a [HeaderValue],
    /// Challenges to add (the application's own, when its 401 is replaced).
    pub extra_challenges: &'a [HeaderValue],
    /// Whether to show administrator details.
    pub detailed: bool,
    /// The `errors.mode` in force, named for the page footer.
    pub mode: &'a str,
    /// The client address as seen.
    pub client_ip: IpAddr,
    /// The request path as received.
    pub path: &'a str,
    /// The realm.
    pub realm: &'a str,
    /// Each phase's verdict up to the refusal (detailed responses only).
    pub trace: &'a [TraceEntry],
    /// What a form-login site can offer the person (sign-in link, switch account).
    pub account: Option<&'a Account>,
    /// Whether HTTP Basic is enabled (what a program refused can be told to send).
    pub basic: bool,
    /// Where the explanation pages are served (`{portal.prefix}/problems/`).
    pub problems: &'a str,
}

/// The account side of a refusal page on a site with form sign-in.
#[derive(Debug, Default)]
pub struct Account {
    /// The signed-in user, when the request came with a session.
    pub user: Option<String>,
    /// The sign-in page (with the return target).
    pub sign_in_url: Option<String>,
    /// The "forgot password" page.
    pub forgot_url: Option<String>,
    /// Sign-out URL and CSRF token for the "sign in as someone else" button.
    pub switch: Option<(String, String)>,
    /// Where to return after signing in again.
    pub rd: String,
}

/// `Retry-After` in whole seconds, rounded up (a client told "1" for 1.9 s would come back too
/// early and be refused again), at least 1.
pub fn retry_after_secs(d: std::time::Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// Builds the response for a refusal whose status is not 0 (abort is the caller's to do).
pub fn refusal_response(
    refusal: &Refusal,
    ctx: &RefusalContext<'_>,
    pages: &Pages,
) -> Response<Body> {
    let status =
        StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reason = refusal.reason;
    let format = negotiate(ctx.accept);
    let offer = Offer {
        basic: ctx.basic,
        form: ctx.account.is_some(),
        reset: ctx.account.is_some_and(|a| a.forgot_url.is_some()),
    };
    let reader = if format == Format::Html {
        Reader::Browser
    } else {
        Reader::Program
    };
    let advice = advice(reason, offer, reader);
    let what = match &refusal.note {
        Some(note) => format!("{} {note}", advice.what),
        None => advice.what.to_owned(),
    };
    let problem_type = format!("{}{}", ctx.problems, reason.slug());
    let retry_after = refusal.retry_after.map(retry_after_secs);
    let (content_type, body) = match format {
        Format::Html => {
            let page = PageContext {
                status: status.as_u16(),
                status_text: status.canonical_reason().unwrap_or(""),
                substatus: reason.substatus(),
                reason: reason.slug(),
                title: reason.title(),
                what: &what,
                todo: advice.todo,
                request_id: ctx.request_id,
                retry_after,
                detailed: ctx.detailed,
                mode: ctx.mode,
                detail: if ctx.detailed { &refusal.detail } else { "" },
                phase: reason.phase().name(),
                client_ip: if ctx.detailed {
                    ctx.client_ip.to_string()
                } else {
                    String::new()
                },
                path: ctx.path,
                problem_type: &problem_type,
                realm: ctx.realm,
                trace: ctx
                    .trace
                    .iter()
                    .map(|e| (e.phase.name(), e.verdict.as_str()))
                    .collect(),
                user: ctx.account.and_then(|a| a.user.as_deref()),
                sign_in_url: ctx.account.and_then(|a| a.sign_in_url.as_deref()),
                forgot_url: ctx.account.and_then(|a| a.forgot_url.as_deref()),
                switch: ctx.account.and_then(|a| {
                    a.switch.as_ref().map(|(action, csrf)| SwitchForm {
                        action,
                        csrf,
                        rd: &a.rd,
                    })
                }),
            };
            (
                "text/html; charset=utf-8",
                pages.render(refusal, status.as_u16(), &page),
            )
        }
        Format::Problem => {
            let mut problem = serde_json::json!({
                "type": problem_type,
                "title": reason.title(),
                "status": status.as_u16(),
                "detail": what,
                "substatus": reason.substatus(),
                "reason": reason.slug(),
                "request_id": ctx.request_id,
            });
            if let Some(secs) = retry_after {
                problem["retry_after"] = secs.into();
            }
            if ctx.detailed {
                problem["decided_by"] = refusal.detail.clone().into();
                problem["client_ip"] = ctx.client_ip.to_string().into();
                problem["trace"] = ctx
                    .trace
                    .iter()
                    .map(|e| serde_json::json!({"phase": e.phase.name(), "verdict": e.verdict}))
                    .collect::<Vec<_>>()
                    .into();
            }
            ("application/problem+json", format!("{problem}\n"))
        }
        Format::Text => {
            let mut text = format!(
                "{} {}: {}\n{}\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                reason.title(),
                what
            );
            for step in advice.todo {
                text.push_str("- ");
                text.push_str(step);
                text.push('\n');
            }
            if let Some(secs) = retry_after {
                text.push_str(&format!("Retry after {secs} seconds.\n"));
            }
            if ctx.detailed {
                text.push_str(&format!(
                    "Reason: {} ({}.{}); decided by: {}; client address: {}\n",
                    reason.slug(),
                    status.as_u16(),
                    reason.substatus(),
                    refusal.detail,
                    ctx.client_ip
                ));
                for e in ctx.trace {
                    text.push_str(&format!("  {:<13} {}\n", e.phase.name(), e.verdict));
                }
            }
            text.push_str(&format!("Request id: {}\n", ctx.request_id));
            ("text/plain; charset=utf-8", text)
        }
    };
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(ctx.request_id) {
        headers.insert(X_REQUEST_ID, v);
    }
    if let Some(secs) = retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    if refusal.needs_challenge() {
        for c in ctx.extra_challenges.iter().chain(ctx.challenges) {
            headers.append(WWW_AUTHENTICATE, c.clone());
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(accept: &str) -> Format {
        negotiate(Some(&HeaderValue::from_str(accept).unwrap()))
    }

    #[test]
    fn browsers_get_html_scripts_get_text_apis_get_problems() {
        assert_eq!(
            fmt("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
            Format::Html
        );
        assert_eq!(fmt("*/*"), Format::Text);
        assert_eq!(negotiate(None), Format::Text);
        assert_eq!(fmt("application/json"), Format::Problem);
        assert_eq!(
            fmt("application/problem+json, text/html;q=0.5"),
            Format::Problem
        );
        assert_eq!(fmt("text/plain"), Format::Text);
        assert_eq!(fmt("text/*"), Format::Html);
        assert_eq!(fmt("image/png"), Format::Text);
    }
}
