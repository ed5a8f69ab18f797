//! Phase 8: forwarding an allowed request to the upstream and its response back.
//!
//! Bodies stream in both directions (hyper's `Incoming` is handed through, never collected), so
//! a 1 GiB upload costs a few buffers of memory. Hop-by-hop headers are removed in both
//! directions (RFC 9110 §7.6.1), identity headers are replaced by ours, and WebSocket (and any
//! other HTTP/1.1) upgrades are joined into a byte pipe once the upstream answers 101.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use policy::{Identity, Reason, Refusal};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::base_path;
use crate::body::RequestBody;

/// `Remote-User`.
pub const REMOTE_USER: HeaderName = HeaderName::from_static("remote-user");
/// `Remote-Groups`.
pub const REMOTE_GROUPS: HeaderName = HeaderName::from_static("remote-groups");
/// `Remote-Email`.
pub const REMOTE_EMAIL: HeaderName = HeaderName::from_static("remote-email");
/// `Remote-Name`: the display name (a directory's), else the user name.
pub const REMOTE_NAME: HeaderName = HeaderName::from_static("remote-name");

/// A header value for an identity attribute (a directory's display name may be UTF-8: sent as
/// its bytes, as Authelia does); `None` for one with control characters.
pub fn identity_value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_bytes(text.as_bytes()).ok()
}
/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The upstream and the pooled client that reaches it.
pub struct Upstream {
    client: Client<HttpConnector, RequestBody>,
    authority: Authority,
    base_path: String,
    timeout: Duration,
    /// One permit per request in flight to the upstream (`server.upstream_max_connections`):
    /// each holds a connection, and a client connection each, so unbounded they would run the
    /// process out of file descriptors under many clients.
    slots: Arc<Semaphore>,
    max_slots: usize,
}

/// What the proxy needs to know about the request beyond its head.
pub struct ForwardContext<'a> {
    /// The client address (for `X-Forwarded-For`).
    pub client_ip: IpAddr,
    /// The socket peer.
    pub peer: IpAddr,
    /// Whether the peer is a trusted proxy (its `X-Forwarded-For` chain is kept and extended).
    pub from_trusted_proxy: bool,
    /// Whether to pass `Forwarded` on (a trusted proxy maintains it: `forwarded_header`).
    pub keep_forwarded: bool,
    /// Whether the client connected over TLS (for `X-Forwarded-Proto`).
    pub tls: bool,
    /// Who the request is from.
    pub identity: &'a Identity,
    /// Whether to pass the client's `Authorization` on.
    pub forward_authorization: bool,
    /// The request id, passed on as `X-Request-Id`.
    pub request_id: &'a str,
    /// Remove Portcullis's session and CSRF cookies (a site with form sign-in).
    pub strip_own_cookies: bool,
}

impl Upstream {
    /// A pooled HTTP/1.1 client for `authority`.
    pub fn new(
        upstream: &config::Upstream,
        connect_timeout: Duration,
        timeout: Duration,
        max_connections: usize,
    ) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(max_connections)
            .build(connector);
        Upstream {
            client,
            authority: upstream.authority.clone(),
            base_path: upstream.base_path.trim_end_matches('/').to_owned(),
            timeout,
            slots: Arc::new(Semaphore::new(max_connections)),
            max_slots: max_connections,
        }
    }

    /// Forwards `req` and returns the upstream's response, or the refusal for a failed upstream.
    pub async fn forward(
        &self,
        mut req: Request<RequestBody>,
        ctx: &ForwardContext<'_>,
    ) -> Result<Response<UpstreamBody>, Refusal> {
        let client_upgrade =
            upgrade_protocol(req.headers()).map(|proto| (proto, ClientUpgrade::of(&mut req)));
        let client_version = req.version();
        let (mut parts, body) = req.into_parts();

        // Keep the Host the client asked for (an HTTP/2 request carries it in :authority).
        if !parts.headers.contains_key(header::HOST)
            && let Some(v) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(header::HOST, v);
        }
        let forwarded_host = parts.headers.get(header::HOST).cloned();
        let client_host = if self.base_path.is_empty() {
            None
        } else {
            forwarded_host
                .as_ref()
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        };
        strip_hop_by_hop(&mut parts.headers);
        let headers = &mut parts.headers;
        strip_identity_headers(headers, ctx.from_trusted_proxy);
        if !ctx.forward_authorization {
            headers.remove(header::AUTHORIZATION);
        }
        // Portcullis's own cookies (session, CSRF) are not the application's to see.
        if ctx.strip_own_cookies {
            crate::portal::strip_own_cookies(headers);
        }
        if let Some(user) = ctx
            .identity
            .user
            .as_deref()
            .and_then(|u| HeaderValue::from_str(u).ok())
        {
            headers.insert(REMOTE_USER, user);
            if !ctx.identity.groups.is_empty()
                && let Some(v) = identity_value(&ctx.identity.groups.join(","))
            {
                headers.insert(REMOTE_GROUPS, v);
            }
            if let Some(v) = ctx.identity.email.as_deref().and_then(identity_value) {
                headers.insert(REMOTE_EMAIL, v);
            }
            if let Some(v) = ctx.identity.name.as_deref().and_then(identity_value) {
                headers.insert(REMOTE_NAME, v);
            }
        }
        // A trusted proxy's chain is extended with the proxy itself (as nginx's
        // $proxy_add_x_forwarded_for does); anyone else's is replaced by the address we saw.
        let chain: Vec<String> = if ctx.from_trusted_proxy {
            headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_owned)
                .collect()
        } else {
            Vec::new()
        };
        let xff = if !chain.is_empty() {
            format!("{}, {}", chain.join(", "), ctx.peer)
        } else if ctx.from_trusted_proxy && ctx.client_ip != ctx.peer {
            format!("{}, {}", ctx.client_ip, ctx.peer)
        } else {
            ctx.client_ip.to_string()
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert(X_FORWARDED_FOR, v);
        }
        // `Forwarded` and `X-Forwarded-Proto` are believed only from a trusted proxy (it may have
        // terminated TLS); from anyone else they are dropped or replaced, so a client cannot
        // spoof them to the application.
        if !ctx.keep_forwarded {
            headers.remove(header::FORWARDED);
        }
        if !(ctx.from_trusted_proxy && headers.contains_key(X_FORWARDED_PROTO)) {
            headers.insert(
                X_FORWARDED_PROTO,
                HeaderValue::from_static(if ctx.tls { "https" } else { "http" }),
            );
        }
        match forwarded_host {
            Some(h) => headers.insert(X_FORWARDED_HOST, h),
            None => headers.remove(X_FORWARDED_HOST),
        };
        if let Ok(v) = HeaderValue::from_str(ctx.request_id) {
            headers.insert(crate::request_id::X_REQUEST_ID, v);
        }
        if let Some((proto, _)) = &client_upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, proto.clone());
        }

        // A WebDAV MOVE/COPY's Destination is rebuilt from what was judged (see `identify`):
        // the client's origin, then the base path and the normalised path.
        if parts.method.as_str().eq_ignore_ascii_case("MOVE")
            || parts.method.as_str().eq_ignore_ascii_case("COPY")
        {
            let rebuilt = match base_path::destination(&parts.headers)? {
                Some(d) => Some(
                    base_path::map_in(&self.base_path, d.origin, &policy::forward_path(d.path))
                        .ok_or_else(|| {
                            Refusal::new(Reason::BadRequest)
                                .with_detail("the Destination header cannot be forwarded")
                        })?,
                ),
                None => None,
            };
            if let Some(v) = rebuilt {
                parts.headers.insert(base_path::DESTINATION, v);
            }
        }
        parts.uri = self.upstream_uri(&parts.uri)?;
        parts.version = Version::HTTP_11;
        let upstream_req = Request::from_parts(parts, body);

        // A free upstream connection first (at once, the common case); a wait for one counts
        // against upstream_timeout.
        let (permit, left) = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => (permit, self.timeout),
            Err(_) => {
                let started = tokio::time::Instant::now();
                match tokio::time::timeout(self.timeout, self.slots.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => (permit, self.timeout.saturating_sub(started.elapsed())),
                    _ => {
                        return Err(Refusal::new(Reason::UpstreamTimeout).with_detail(format!(
                            "all {} upstream connections (server.upstream_max_connections) stayed busy for {:?}",
                            self.max_slots, self.timeout
                        )));
                    }
                }
            }
        };
        let mut response = match tokio::time::timeout(left, self.client.request(upstream_req)).await
        {
            Err(_) => {
                return Err(Refusal::new(Reason::UpstreamTimeout).with_detail(format!(
                    "no response from {} within {:?}",
                    self.authority, self.timeout
                )));
            }
            Ok(Err(e)) if client_body_failed(&e) => {
                return Err(Refusal::new(Reason::BadRequest).with_detail(format!(
                    "the request body could not be read: {}",
                    error_chain(&e)
                )));
            }
            Ok(Err(e)) => {
                let what = if e.is_connect() {
                    "cannot connect to"
                } else {
                    "connection failed with"
                };
                return Err(
                    Refusal::new(Reason::UpstreamUnavailable).with_detail(format!(
                        "{what} {}: {}",
                        self.authority,
                        error_chain(&e)
                    )),
                );
            }
            Ok(Ok(r)) => r,
        };

        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some((_, client_upgrade)) = client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                let upstream_upgrade = async {
                    upstream_upgrade
                        .await
                        .map(TokioIo::new)
                        .map_err(|e| e.to_string())
                };
                match tokio::try_join!(client_upgrade.connection(), upstream_upgrade) {
                    Ok((mut c, mut u)) => {
                        if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                            tracing::debug!(error = %e, "upgraded connection ended");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
            // An upgraded connection leaves the pool: its permit is returned now (it is
            // bounded by server.max_connections, as its client connection is).
            drop(permit);
            return Ok(response.map(|b| UpstreamBody::new(Inner::Plain(b), None)));
        }
        strip_hop_by_hop(response.headers_mut());
        // The client is answered in its own protocol: an HTTP/1.0 upstream must not make an
        // HTTP/1.1 client's answer HTTP/1.0 (and its connection close).
        *response.version_mut() = client_version;
        if self.base_path.is_empty() {
            return Ok(response.map(|b| UpstreamBody::new(Inner::Plain(b), Some(permit))));
        }
        // Mapped back out of the base path: redirects, Content-Location, multistatus hrefs.
        // Absolute URLs are mapped when they name the upstream or the Host the client asked for.
        let mut hosts = vec![self.authority.as_str().to_owned()];
        hosts.extend(client_host);
        let headers = response.headers_mut();
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(v) = headers
                .get(&name)
                .and_then(|v| base_path::map_back_header(&self.base_path, &hosts, v))
            {
                headers.insert(name, v);
            }
        }
        if base_path::rewrites_body(response.status(), response.headers()) {
            response.headers_mut().remove(header::CONTENT_LENGTH);
            let base = &self.base_path;
            return Ok(response.map(|b| {
                UpstreamBody::new(
                    Inner::Hrefs(base_path::HrefBody::new(b, base, hosts)),
                    Some(permit),
                )
            }));
        }
        Ok(response.map(|b| UpstreamBody::new(Inner::Plain(b), Some(permit))))
    }

    /// The upstream's URI for `uri`: the path the decision read ([`policy::forward_path`]), under
    /// the upstream's base path, with the query as sent.
    fn upstream_uri(&self, uri: &Uri) -> Result<Uri, Refusal> {
        let path = policy::forward_path(uri.path());
        let pq = match (uri.query(), self.base_path.is_empty(), &path) {
            (None, true, std::borrow::Cow::Borrowed(_)) => {
                PathAndQuery::try_from(uri.path_and_query().map_or("/", PathAndQuery::as_str))
            }
            (query, _, _) => {
                let mut pq = String::with_capacity(self.base_path.len() + uri.path().len() + 32);
                pq.push_str(&self.base_path);
                pq.push_str(&path);
                if let Some(q) = query {
                    pq.push('?');
                    pq.push_str(q);
                }
                PathAndQuery::try_from(pq)
            }
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(pq.map_err(|_| {
            Refusal::new(Reason::BadRequest).with_detail("the request target cannot be forwarded")
        })?);
        Uri::from_parts(parts).map_err(|_| {
            Refusal::new(Reason::BadRequest).with_detail("the request target cannot be forwarded")
        })
    }
}

/// An upstream's answer body: as it came, or with a multistatus's `href`s mapped back out of
/// the upstream's base path. It holds the request's upstream slot until it is done (read to
/// the end, or dropped when the client goes), when its connection is back in the pool.
pub struct UpstreamBody {
    inner: Inner,
    _slot: Option<OwnedSemaphorePermit>,
}

enum Inner {
    /// Passed through.
    Plain(Incoming),
    /// Rewritten as it streams ([`base_path::HrefBody`]).
    Hrefs(base_path::HrefBody<Incoming>),
}

impl UpstreamBody {
    fn new(inner: Inner, slot: Option<OwnedSemaphorePermit>) -> UpstreamBody {
        UpstreamBody { inner, _slot: slot }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        match &mut self.get_mut().inner {
            Inner::Plain(b) => std::pin::Pin::new(b).poll_frame(cx),
            Inner::Hrefs(b) => std::pin::Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Plain(b) => b.is_end_stream(),
            Inner::Hrefs(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.inner {
            Inner::Plain(b) => b.size_hint(),
            Inner::Hrefs(b) => b.size_hint(),
        }
    }
}

/// Where the client's connection comes from once its upgrade is answered `101`: hyper (TLS and
/// HTTP/2 connections) or the parked-connection server, which hands the socket over by hand
/// ([`crate::server::ManualUpgrade`]).
enum ClientUpgrade {
    Hyper(hyper::upgrade::OnUpgrade),
    Manual(Option<tokio::sync::oneshot::Receiver<Box<dyn crate::server::UpgradedStream>>>),
}

impl ClientUpgrade {
    fn of(req: &mut Request<RequestBody>) -> ClientUpgrade {
        match req
            .extensions_mut()
            .remove::<crate::server::ManualUpgrade>()
        {
            Some(manual) => ClientUpgrade::Manual(manual.take()),
            None => ClientUpgrade::Hyper(hyper::upgrade::on(req)),
        }
    }

    async fn connection(self) -> Result<Box<dyn crate::server::UpgradedStream>, String> {
        match self {
            ClientUpgrade::Hyper(on) => on
                .await
                .map(|u| Box::new(TokioIo::new(u)) as Box<dyn crate::server::UpgradedStream>)
                .map_err(|e| e.to_string()),
            ClientUpgrade::Manual(Some(rx)) => rx
                .await
                .map_err(|_| "the client connection was not handed over".to_owned()),
            ClientUpgrade::Manual(None) => {
                Err("the client connection was taken already".to_owned())
            }
        }
    }
}

/// The protocol a client asks to upgrade to (`Connection: upgrade` + `Upgrade: x`).
pub(crate) fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if wants {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Removes the identity headers a client may have sent, by their normalised name (lower case,
/// `_` read as `-`: WSGI, Rack and CGI fold both into one variable, so `Remote_User` is
/// `Remote-User` to the application): `remote-user`, `-groups`, `-email`, `-name`, and the
/// `x-forwarded-*` set. A trusted proxy's own `X-Forwarded-For`, `-Proto` and `-Host`
/// (hyphenated, as proxies write them) are kept for the caller to extend or replace.
pub fn strip_identity_headers(headers: &mut HeaderMap, from_trusted_proxy: bool) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let n = name.as_str().as_bytes();
            let underscore = n.contains(&b'_');
            let normalised = |prefix: &[u8]| {
                n.len() >= prefix.len()
                    && n[..prefix.len()]
                        .iter()
                        .zip(prefix)
                        .all(|(&a, &b)| a == b || (a == b'_' && b == b'-'))
            };
            if normalised(b"remote-") {
                let rest = &n[7..];
                return matches!(rest, b"user" | b"groups" | b"email" | b"name");
            }
            // Of the x-forwarded-* set only a trusted proxy's -For, -Proto and -Host stay (each
            // is extended or replaced below); -User, -Email, -Groups, -Prefix… never reach the
            // application, whoever sent them: a front proxy passes on what its client wrote.
            normalised(b"x-forwarded-")
                && (underscore
                    || !from_trusted_proxy
                    || !matches!(&n[12..], b"for" | b"proto" | b"host"))
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Removes hop-by-hop headers: the fixed list and any named in `Connection`, except the ones
/// that frame or route the message (`Host`, `Content-Length`): a client's `Connection: Host`
/// must not change where or how much is forwarded.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|h| *h != header::HOST && *h != header::CONTENT_LENGTH)
        .collect();
    for h in named {
        headers.remove(h);
    }
    for h in [
        header::CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(h);
    }
}

/// Whether forwarding failed because the client's own body could not be read (a malformed
/// chunk, a body cut short): the client's fault, 400, not the upstream's.
fn client_body_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && h.is_user()
        {
            return true;
        }
        source = err.source();
    }
    false
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_including_connection_listed_ones() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "close, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-app", "kept".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-app"));
    }

    #[test]
    fn connection_tokens_never_remove_host_or_content_length() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "Host, content-length, x-hop".parse().unwrap(),
        );
        h.insert(header::HOST, "app.example".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "4".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h[header::HOST], "app.example");
        assert_eq!(h[header::CONTENT_LENGTH], "4");
        assert!(!h.contains_key("x-hop"));
    }

    #[test]
    fn identity_headers_are_stripped_by_normalised_name() {
        let mut h = HeaderMap::new();
        for name in [
            "remote_user",
            "remote-user",
            "remote_groups",
            "remote-name",
            "remote_email",
            "x-forwarded_for",
            "x_forwarded_proto",
            "x-forwarded-uri",
        ] {
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "x".parse().unwrap(),
            );
        }
        h.insert("remote-addr", "kept".parse().unwrap());
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        let mut trusted = h.clone();
        strip_identity_headers(&mut h, false);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["remote-addr"]
        );
        // From a trusted proxy its hyphenated X-Forwarded-For/-Proto/-Host stay (to be extended
        // or replaced); the rest of the set and underscore variants never do.
        strip_identity_headers(&mut trusted, true);
        let mut left: Vec<_> = trusted.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["remote-addr", "x-forwarded-for"]);
    }

    #[test]
    fn upgrade_needs_connection_token() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(upgrade_protocol(&h).is_none());
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert_eq!(upgrade_protocol(&h).unwrap(), "websocket");
    }
}
