//! Forward-auth (nginx `auth_request`, Caddy `forward_auth`, Traefik `ForwardAuth`): the
//! question "may this request pass?" asked by a trusted proxy, answered 200 with the identity
//! headers or with the refusal proxy mode would send.

use super::*;

const X_ORIGINAL_URI: http::HeaderName = http::HeaderName::from_static("x-original-uri");
const X_ORIGINAL_METHOD: http::HeaderName = http::HeaderName::from_static("x-original-method");
const X_FORWARDED_URI: http::HeaderName = http::HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_METHOD: http::HeaderName = http::HeaderName::from_static("x-forwarded-method");
const REMOTE_NAME: http::HeaderName = http::HeaderName::from_static("remote-name");
const X_PORTCULLIS_COOKIE: http::HeaderName = http::HeaderName::from_static("x-portcullis-cookie");
const X_PORTCULLIS_AUTHORIZATION: http::HeaderName =
    http::HeaderName::from_static("x-portcullis-authorization");
const X_PORTCULLIS_PROBLEM: http::HeaderName =
    http::HeaderName::from_static("x-portcullis-problem");

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
    /// 200 with the identity headers, or the refusal exactly as proxy mode would send it.
    pub(crate) async fn forward_auth(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<Response<Body>, Abort> {
        let started = Instant::now();
        let request_id = request_id::for_request(req.headers());
        let peer = policy::canonical(conn.peer.ip());
        let trusted = self.policy.trusted_proxies.contains(peer);
        let original = trusted.then(|| {
            OriginalRequest::from_headers(req.headers(), self.config.forward_auth.headers)
        });
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
        let view = match &original {
            Some(Ok(o)) => RequestView {
                tls: conn.tls,
                method: &o.method,
                path: o.path(),
                path_and_query: &o.uri,
                headers: req.headers(),
            },
            _ => RequestView {
                tls: conn.tls,
                method: req.method().as_str(),
                path: req.uri().path(),
                path_and_query: req.uri().path_and_query().map_or("/", |p| p.as_str()),
                headers: req.headers(),
            },
        };
        // A trusted proxy's question without a usable original request is answered 400, never
        // decided on `/.portcullis/auth` itself.
        if let Some(Err(refusal)) = &original {
            let record = self.new_record(&view, &conn, &request_id, started);
            let seen = Seen::new(peer);
            tracing::warn!(%peer, detail = %refusal.detail, request_id, "forward-auth question refused");
            return self.refuse(refusal, &view, &seen, &request_id, record, &[]);
        }
        let mut record = self.new_record(&view, &conn, &request_id, started);
        let mut seen = Seen::new(peer);
        match self
            .decide(&view, &mut seen, &request_id, &mut record)
            .await
        {
            Ok(Decided { identity, .. }) => {
                let mut response = Response::new(body::full(bytes::Bytes::new()));
                let headers = response.headers_mut();
                // Always all four, empty for an anonymous answer on a public path: a proxy that
                // copies them (Caddy's copy_headers) then sets them empty instead of passing the
                // client's own, or its placeholder text.
                let empty = HeaderValue::from_static("");
                let user = identity
                    .user
                    .as_deref()
                    .and_then(|u| HeaderValue::from_str(u).ok())
                    .unwrap_or_else(|| empty.clone());
                let groups = (identity.user.is_some() && !identity.groups.is_empty())
                    .then(|| HeaderValue::from_str(&identity.groups.join(",")).ok())
                    .flatten()
                    .unwrap_or_else(|| empty.clone());
                headers.insert(proxy::REMOTE_USER, user.clone());
                headers.insert(REMOTE_NAME, user);
                headers.insert(proxy::REMOTE_GROUPS, groups);
                headers.insert(proxy::REMOTE_EMAIL, empty.clone());
                // What the proxy should pass on to the application instead of the client's own
                // `Cookie` and `Authorization` (the recipes set them from these): the cookies
                // without Portcullis's session and CSRF cookies, and the credentials only with
                // auth.forward_authorization. Always sent, empty when there is nothing.
                let mut cookies = http::HeaderMap::new();
                for v in req.headers().get_all(http::header::COOKIE) {
                    cookies.append(http::header::COOKIE, v.clone());
                }
                portal::strip_own_cookies(&mut cookies);
                let cookie = match cookies.get_all(http::header::COOKIE).iter().count() {
                    0 => empty.clone(),
                    1 => cookies[http::header::COOKIE].clone(),
                    _ => HeaderValue::from_str(
                        &cookies
                            .get_all(http::header::COOKIE)
                            .iter()
                            .filter_map(|v| v.to_str().ok())
                            .collect::<Vec<_>>()
                            .join("; "),
                    )
                    .unwrap_or_else(|_| empty.clone()),
                };
                headers.insert(X_PORTCULLIS_COOKIE, cookie);
                let authorization = req
                    .headers()
                    .get(AUTHORIZATION)
                    .filter(|_| self.config.auth.forward_authorization)
                    .cloned()
                    .unwrap_or(empty);
                headers.insert(X_PORTCULLIS_AUTHORIZATION, authorization);
                headers.insert(
                    http::header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                );
                if let Ok(v) = HeaderValue::from_str(&request_id) {
                    headers.insert(request_id::X_REQUEST_ID, v);
                }
                self.metrics.request(response.status().as_u16(), None);
                Ok(self.logged(response, record))
            }
            Err(refusal) => {
                let mut response = self.refuse(&refusal, &view, &seen, &request_id, record, &[])?;
                // The sign-in redirect names the site as the browser reached it: Traefik resolves
                // a relative Location against the forward-auth address, not the site's.
                if response.status() == http::StatusCode::FOUND
                    && trusted
                    && let Some(absolute) =
                        absolute_location(&response, req.headers(), req.uri(), seen.secure)
                {
                    response
                        .headers_mut()
                        .insert(http::header::LOCATION, absolute);
                }
                // nginx's auth_request discards the body of the answer and, with a body to
                // skip, closes the connection to us: answer it with headers only.
                if trusted && self.config.forward_auth.headers == config::ForwardAuthHeaders::Nginx
                {
                    let (mut parts, body) = response.into_parts();
                    parts.headers.remove(http::header::CONTENT_TYPE);
                    drop(body);
                    // The reason, for the recipe's error page (`/.portcullis/problems/<slug>`).
                    parts.headers.insert(
                        X_PORTCULLIS_PROBLEM,
                        HeaderValue::from_static(refusal.reason.slug()),
                    );
                    // auth_request passes on only 401 and 403: the sign-in redirect becomes a
                    // 401 whose Location the recipe's `error_page 401` turns into the redirect.
                    if parts.status == http::StatusCode::FOUND {
                        parts.status = http::StatusCode::UNAUTHORIZED;
                        for c in &self.challenges {
                            parts.headers.append(WWW_AUTHENTICATE, c.clone());
                        }
                    } else if parts.status == http::StatusCode::UNAUTHORIZED {
                        // auth_request passes on only the first WWW-Authenticate: a client
                        // that is not sent to the sign-in page needs a challenge it can answer
                        // (Basic) first, not the form's `Cookie` one (cadaver, curl --anyauth).
                        let mut challenges: Vec<HeaderValue> = parts
                            .headers
                            .get_all(WWW_AUTHENTICATE)
                            .iter()
                            .cloned()
                            .collect();
                        challenges.sort_by_key(|c| c.as_bytes().starts_with(b"Cookie"));
                        parts.headers.remove(WWW_AUTHENTICATE);
                        for c in challenges {
                            parts.headers.append(WWW_AUTHENTICATE, c);
                        }
                    }
                    return Ok(Response::from_parts(parts, body::full(bytes::Bytes::new())));
                }
                Ok(response)
            }
        }
    }
}
