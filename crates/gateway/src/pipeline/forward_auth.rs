//! Phase 8 in forward-auth mode (nginx `auth_request`, Caddy `forward_auth`, Traefik
//! `ForwardAuth`): the question "may this request pass?" asked by a trusted proxy, answered 200 with the identity
//! headers or with the refusal proxy mode would send.

use super::*;

const X_ORIGINAL_URI: http::HeaderName = http::HeaderName::from_static("x-original-uri");
const X_ORIGINAL_METHOD: http::HeaderName = http::HeaderName::from_static("x-original-method");
const X_FORWARDED_URI: http::HeaderName = http::HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_METHOD: http::HeaderName = http::HeaderName::from_static("x-forwarded-method");

/// The request a forward-auth question is about, from the trusted proxy's headers: exactly one
/// set, the one `forward_auth.headers` names — `X-Original-Method` / `X-Original-URI` (nginx) or
/// `X-Forwarded-Method` / `X-Forwarded-Uri` (Caddy, Traefik). Caddy and Traefik copy every
/// client header into the auth request and overwrite only their own set, so reading the other
/// set too would let a client describe the request it wants judged.
struct OriginalRequest {
    method: String,
    uri: String,
}

impl OriginalRequest {
    fn from_headers(
        h: &http::HeaderMap,
        set: config::ForwardAuthHeaders,
    ) -> Result<OriginalRequest, Refusal> {
        let (uri_name, method_name) = match set {
            config::ForwardAuthHeaders::Nginx => (X_ORIGINAL_URI, X_ORIGINAL_METHOD),
            config::ForwardAuthHeaders::Forwarded => (X_FORWARDED_URI, X_FORWARDED_METHOD),
        };
        let bad = |detail: String| Refusal::new(Reason::BadForwardedHeader).with_detail(detail);
        let single = |name: &http::HeaderName| -> Result<Option<String>, Refusal> {
            let mut values = h.get_all(name).iter();
            match (values.next(), values.next()) {
                (None, _) => Ok(None),
                (Some(v), None) => v
                    .to_str()
                    .map(|v| Some(v.trim().to_owned()))
                    .map_err(|_| bad(format!("{name} is not visible ASCII"))),
                (Some(_), Some(_)) => Err(bad(format!("{name} is sent more than once"))),
            }
        };
        let Some(uri) = single(&uri_name)? else {
            return Err(bad(format!(
                "the trusted proxy sent no {uri_name} (forward_auth.headers = \"{}\"): the original request is unknown",
                match set {
                    config::ForwardAuthHeaders::Nginx => "nginx",
                    config::ForwardAuthHeaders::Forwarded => "forwarded",
                }
            )));
        };
        // An absolute URI (some proxies send one) is reduced to its path and query.
        let uri = match uri.parse::<http::Uri>() {
            Ok(u) if u.scheme().is_some() => u
                .path_and_query()
                .map_or("/".to_owned(), |p| p.as_str().to_owned()),
            Ok(_) if uri.starts_with('/') && !uri.starts_with("//") => uri,
            _ => return Err(bad(format!("{uri_name} is not a request target: {uri:?}"))),
        };
        let method = match single(&method_name)? {
            None => "GET".to_owned(),
            Some(m) if http::Method::from_bytes(m.as_bytes()).is_ok() && !m.is_empty() => {
                m.to_ascii_uppercase()
            }
            Some(m) => return Err(bad(format!("{method_name} is not a method: {m:?}"))),
        };
        let original = OriginalRequest { method, uri };
        // The proxy forwards the path as the client sent it, and Portcullis cannot rewrite it:
        // a dot segment would be judged as one path and served as another.
        if policy::has_dot_segment(original.path()) {
            return Err(Refusal::new(Reason::BadRequest).with_detail(format!(
                "the original path {} has a '.' or '..' segment, which the application may read differently; it is refused",
                original.path()
            )));
        }
        Ok(original)
    }

    fn path(&self) -> &str {
        self.uri.split_once('?').map_or(&self.uri, |(p, _)| p)
    }
}

impl Gateway {
    /// Forward-auth (nginx `auth_request`, Caddy `forward_auth`, Traefik `ForwardAuth`): the
    /// original request is described by headers that only a trusted proxy may set; the answer is
    /// 200 with the identity headers, or the refusal exactly as proxy mode would send it,
    /// rendered the way the front proxy passes it on.
    pub(crate) async fn forward_auth(
        &self,
        req: Request<RequestBody>,
        conn: ConnInfo,
        started: Instant,
    ) -> Result<Response<Body>, Abort> {
        let peer = policy::canonical(conn.peer.ip());
        let trusted = self.policy.trusted_proxies.contains(peer);
        let set = self.config.forward_auth.headers;
        let original = trusted.then(|| OriginalRequest::from_headers(req.headers(), set));
        if !trusted
            && (req.headers().contains_key(X_ORIGINAL_URI)
                || req.headers().contains_key(X_FORWARDED_URI))
        {
            // Once a minute at most: a client could otherwise fill the log.
            static WARNED: std::sync::LazyLock<store::Throttle> =
                std::sync::LazyLock::new(|| store::Throttle::new(Duration::from_secs(60)));
            if WARNED.due() {
                tracing::warn!(%peer, "forward-auth request from a peer not in server.trusted_proxies: its X-Original-*/X-Forwarded-* headers are ignored (said once a minute)");
            }
        }
        let (parts, _body) = req.into_parts();
        let mut received = Received::of(&parts, conn.tls);
        // The connection is the front proxy's: its certificate is not the client's.
        received.client_cert = None;
        if let Some(Ok(o)) = &original {
            received.method = &o.method;
            received.path = o.path();
            received.path_and_query = &o.uri;
        }
        let mut ex = self.exchange(received, &conn, started);
        // A trusted proxy's question without a usable original request is answered 400 with
        // its explanation (for whoever sets the proxy up), never decided on
        // `/.portcullis/auth` itself.
        if let Some(Err(refusal)) = &original {
            tracing::warn!(%peer, detail = %refusal.detail, request_id = ex.request_id, "forward-auth question refused");
            return self.respond(ex, Answer::Refuse(refusal.clone()));
        }
        if trusted {
            ex.front = Front::Proxy(set);
        }
        match self.decide(&mut ex).await {
            Ok(()) => self.respond(ex, Answer::Allow),
            Err(refusal) => self.respond(ex, Answer::Refuse(refusal)),
        }
    }
}
