//! Phases 2–8 of one request, in order: the client as seen (trusted proxies), the IP and host
//! rules, the dynamic limits (admit); authentication, URL authorization (the path and a WebDAV
//! `Destination`), the external filter (identify). See docs/pipeline.md.

use super::*;

/// What is known about the request when it is refused, for the response and its trace.
pub(crate) struct Seen {
    pub(crate) peer: IpAddr,
    pub(crate) client_ip: IpAddr,
    pub(crate) identity: Option<Identity>,
    pub(crate) host_name: Option<Arc<str>>,
    /// The browser reached the site over HTTPS (for cookie attributes).
    pub(crate) secure: bool,
    /// The identity came from a sign-in session (form), not from `Authorization`.
    pub(crate) session_user: bool,
    /// The request's session cookie names no live session: the response clears it.
    pub(crate) clear_session: bool,
}

impl Seen {
    pub(crate) fn new(peer: IpAddr) -> Seen {
        Seen {
            peer,
            client_ip: peer,
            identity: None,
            host_name: None,
            secure: false,
            session_user: false,
            clear_session: false,
        }
    }
}

/// The request as the policy judges it: the real one in proxy mode, the original one in
/// forward-auth mode.
pub(crate) struct RequestView<'a> {
    /// The connection is TLS.
    pub(crate) tls: bool,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) path_and_query: &'a str,
    pub(crate) headers: &'a http::HeaderMap,
}

/// What phases 2–7 hand to phase 8 (or to the forward-auth answer).
pub(crate) struct Decided {
    pub(crate) identity: Identity,
    pub(crate) forwarded_by_proxy: bool,
    pub(crate) guard: Option<InFlightGuard>,
}

/// What phases 2–4 hand to phase 5 (or to a portal page).
pub(crate) struct Admitted {
    pub(crate) forwarded_by_proxy: bool,
    pub(crate) guard: Option<InFlightGuard>,
}

/// Phase 1: request framing that HTTP/1.1 allows to be read two ways (RFC 9112 §6.1, §6.3). A
/// front proxy and Portcullis reading the body differently is how requests are smuggled, so
/// anything but one plain `Transfer-Encoding: chunked` or one `Content-Length` is refused:
/// both headers together or `Transfer-Encoding` twice is 400; a coding other than chunked is
/// 501.
pub(crate) fn check_framing<B>(req: &Request<B>) -> Result<(), Refusal> {
    if req.version() >= http::Version::HTTP_2 {
        return Ok(());
    }
    let bad = |detail: &str| Err(Refusal::new(Reason::BadRequest).with_detail(detail.to_owned()));
    if req.extensions().get::<AmbiguousFraming>().is_some() {
        return bad("both Content-Length and Transfer-Encoding are sent (RFC 9112 §6.3)");
    }
    let mut te = req
        .headers()
        .get_all(http::header::TRANSFER_ENCODING)
        .iter();
    let Some(first) = te.next() else {
        return Ok(());
    };
    if te.next().is_some() {
        return bad("Transfer-Encoding is sent more than once");
    }
    if req.headers().contains_key(http::header::CONTENT_LENGTH) {
        return bad("both Content-Length and Transfer-Encoding are sent (RFC 9112 §6.3)");
    }
    let value = first.to_str().unwrap_or("").trim();
    if value.eq_ignore_ascii_case("chunked") {
        return Ok(());
    }
    let last = value.rsplit(',').next().unwrap_or("").trim();
    if last.eq_ignore_ascii_case("chunked") {
        return Err(Refusal::new(Reason::NotImplemented).with_detail(format!(
            "Transfer-Encoding: {value}: only chunked is accepted"
        )));
    }
    bad("Transfer-Encoding does not end with chunked, so the body has no length")
}

impl Gateway {
    pub(crate) async fn route(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
        from_upstream: &mut bool,
    ) -> Result<Response<Body>, Abort> {
        if let Err(refusal) = check_framing(&req) {
            return self.refuse_framing(&refusal, &req, conn);
        }
        if let Some(rest) = req.uri().path().strip_prefix(self.paths.prefix.as_str())
            && rest.starts_with('/')
        {
            if rest == "/auth" {
                return self.forward_auth(req, conn).await;
            }
            if let Some(slug) = rest.strip_prefix("/problems/") {
                return Ok(self.problem_page(slug, req.headers().get(ACCEPT), req.uri().query()));
            }
            match portal::Page::from_rest(rest) {
                Some(page @ (portal::Page::Login | portal::Page::Logout))
                    if self.form_enabled() =>
                {
                    return self.portal(req, conn, page).await;
                }
                Some(page @ (portal::Page::Password | portal::Page::Forgot))
                    if self.user_db().is_some() =>
                {
                    return self.portal(req, conn, page).await;
                }
                _ => {}
            }
        }
        let Some(upstream) = &self.upstream else {
            let mut r = Response::new(body::full(format!(
                "404 Not Found: this Portcullis has no upstream (server.upstream); it only answers forward-auth questions at {}\n",
                self.paths.auth
            )));
            *r.status_mut() = http::StatusCode::NOT_FOUND;
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return Ok(r);
        };
        let started = Instant::now();
        let request_id = request_id::for_request(req.headers());
        let view = RequestView {
            tls: conn.tls,
            method: req.method().as_str(),
            path: req.uri().path(),
            path_and_query: req.uri().path_and_query().map_or("/", |p| p.as_str()),
            headers: req.headers(),
        };
        let mut record = self.new_record(&view, &conn, &request_id, started);
        let mut seen = Seen::new(policy::canonical(conn.peer.ip()));
        let decided = match self
            .decide(&view, &mut seen, &request_id, &mut record)
            .await
        {
            Ok(d) => d,
            Err(refusal) => return self.refuse(&refusal, &view, &seen, &request_id, record, &[]),
        };
        let Decided {
            identity,
            forwarded_by_proxy,
            guard,
        } = decided;

        // Phase 8: proxy.
        let ctx = ForwardContext {
            client_ip: seen.client_ip,
            peer: seen.peer,
            from_trusted_proxy: forwarded_by_proxy,
            keep_forwarded: forwarded_by_proxy
                && self.config.server.forwarded_header == ForwardedHeader::Forwarded,
            tls: conn.tls,
            identity: &identity,
            forward_authorization: self.config.auth.forward_authorization,
            request_id: &request_id,
            strip_own_cookies: self.form_enabled(),
        };
        let accept = req.headers().get(ACCEPT).cloned();
        // Kept for a refusal after forwarding (cheap: reference-counted, no copy of the path).
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let facts = RequestFacts {
            method: method.as_str(),
            path: uri.path(),
            accept: accept.as_ref(),
        };
        let forwarded = self.metrics.forwarding(started);
        match upstream.forward(req, &ctx).await {
            Ok(response) => {
                self.metrics.upstream_answered(forwarded);
                let (mut parts, body) = response.into_parts();
                if let Some(r) = record.as_mut() {
                    r.status = parts.status.as_u16();
                }
                if parts.status == http::StatusCode::UNAUTHORIZED {
                    if let Some(r) = record.as_mut() {
                        r.substatus = Reason::AppDenied.substatus();
                        r.reason = Some(Reason::AppDenied);
                    }
                    if self.config.errors.upstream_401 == Upstream401::Replace {
                        let theirs: Vec<HeaderValue> = parts
                            .headers
                            .get_all(WWW_AUTHENTICATE)
                            .iter()
                            .cloned()
                            .collect();
                        let refusal = Refusal::new(Reason::AppDenied)
                            .with_detail("the application answered 401");
                        seen.identity = Some(identity.clone());
                        let response = self.refusal_response(
                            &refusal,
                            &facts,
                            &seen,
                            &request_id,
                            &theirs,
                            None,
                        );
                        self.metrics
                            .request(response.status().as_u16(), Some(Reason::AppDenied));
                        return Ok(self.logged(response, record));
                    }
                    // Every 401 carries a challenge (RFC 9110 §15.5.2): when the application sent
                    // none, ours is added.
                    if !parts.headers.contains_key(WWW_AUTHENTICATE) {
                        for c in &self.challenges {
                            parts.headers.append(WWW_AUTHENTICATE, c.clone());
                        }
                    }
                }
                if let Ok(v) = HeaderValue::from_str(&request_id) {
                    parts.headers.entry(request_id::X_REQUEST_ID).or_insert(v);
                }
                self.metrics.request(
                    parts.status.as_u16(),
                    (parts.status == http::StatusCode::UNAUTHORIZED).then_some(Reason::AppDenied),
                );
                let pending = record.map(|r| PendingLog::new(self.log.clone(), r));
                *from_upstream = true;
                Ok(Response::from_parts(
                    parts,
                    LoggedBody::new(body, pending).holding(guard).boxed(),
                ))
            }
            Err(refusal) => {
                tracing::warn!(reason = refusal.reason.slug(), detail = %refusal.detail, request_id, "upstream failed");
                seen.identity = Some(identity.clone());
                let mut response =
                    self.refusal_response(&refusal, &facts, &seen, &request_id, &[], None);
                if refusal.reason == Reason::BadRequest {
                    // The client's body was malformed: nothing after it on this connection can be
                    // read reliably.
                    response
                        .headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                self.metrics
                    .request(response.status().as_u16(), Some(refusal.reason));
                if let Some(r) = record.as_mut() {
                    r.substatus = refusal.reason.substatus();
                    r.reason = Some(refusal.reason);
                }
                Ok(self.logged(response, record))
            }
        }
    }

    /// Phase 1's answer to a request whose framing is refused: logged like any refusal, and the
    /// connection is closed after it (what follows on it cannot be trusted to start a request).
    pub(crate) fn refuse_framing(
        &self,
        refusal: &Refusal,
        req: &Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<Response<Body>, Abort> {
        let request_id = request_id::for_request(req.headers());
        let view = RequestView {
            tls: conn.tls,
            method: req.method().as_str(),
            path: req.uri().path(),
            path_and_query: req.uri().path_and_query().map_or("/", |p| p.as_str()),
            headers: req.headers(),
        };
        let record = self.new_record(&view, &conn, &request_id, Instant::now());
        let seen = Seen::new(policy::canonical(conn.peer.ip()));
        tracing::info!(peer = %conn.peer, detail = %refusal.detail, request_id, "request framing refused");
        let mut response = self.refuse(refusal, &view, &seen, &request_id, record, &[])?;
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        Ok(response)
    }

    pub(crate) fn new_record(
        &self,
        view: &RequestView<'_>,
        conn: &ConnInfo,
        request_id: &str,
        started: Instant,
    ) -> Option<LogRecord> {
        self.log.enabled().then(|| {
            let (stem, query) = view
                .path_and_query
                .split_once('?')
                .map_or((view.path_and_query, None), |(s, q)| (s, Some(q)));
            LogRecord {
                time: SystemTime::now(),
                s_ip: policy::canonical(conn.local.ip()),
                s_port: conn.local.port(),
                method: http::Method::from_bytes(view.method.as_bytes())
                    .unwrap_or(http::Method::GET),
                uri_stem: stem.to_owned(),
                uri_query: query.map(str::to_owned),
                c_ip: policy::canonical(conn.peer.ip()),
                user_agent: view.headers.get(USER_AGENT).cloned(),
                referer: view.headers.get(REFERER).cloned(),
                request_id: request_id.to_owned(),
                started: Some(started),
                ..LogRecord::default()
            }
        })
    }

    /// Phases 2–7 for the request described by `view`.
    pub(crate) async fn decide(
        &self,
        view: &RequestView<'_>,
        seen: &mut Seen,
        request_id: &str,
        record: &mut Option<LogRecord>,
    ) -> Result<Decided, Refusal> {
        let Admitted {
            forwarded_by_proxy,
            guard,
        } = self.admit(view, seen, request_id, record).await?;
        let identity = self.identify(view, seen, request_id, record).await?;
        Ok(Decided {
            identity,
            forwarded_by_proxy,
            guard,
        })
    }

    /// Phases 2–4: who the client is, whether its address may come in, and its limits.
    pub(crate) async fn admit(
        &self,
        view: &RequestView<'_>,
        seen: &mut Seen,
        request_id: &str,
        record: &mut Option<LogRecord>,
    ) -> Result<Admitted, Refusal> {
        let peer = seen.peer;
        // Phase 2: the client address.
        let forwarded_by_proxy =
            !self.policy.trusted_proxies.is_empty() && self.policy.trusted_proxies.contains(peer);
        if forwarded_by_proxy {
            // Only the header the trusted proxy maintains is read (server.forwarded_header).
            let read = |name: http::HeaderName| -> Vec<&[u8]> {
                view.headers
                    .get_all(name)
                    .iter()
                    .map(HeaderValue::as_bytes)
                    .collect()
            };
            let (forwarded, xff) = match self.config.server.forwarded_header {
                ForwardedHeader::XForwardedFor => (Vec::new(), read(X_FORWARDED_FOR)),
                ForwardedHeader::Forwarded => (read(FORWARDED), Vec::new()),
            };
            seen.client_ip = client_addr(peer, &self.policy.trusted_proxies, &forwarded, &xff)?.ip;
        }
        let client_ip = seen.client_ip;
        if let Some(r) = record.as_mut() {
            r.c_ip = client_ip;
        }
        seen.secure = view.tls
            || (forwarded_by_proxy
                && view
                    .headers
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|p| p.trim().eq_ignore_ascii_case("https")));

        // Phase 3: static IP and host-name restrictions.
        self.policy.ip.check_address(client_ip)?;
        if let Some(resolver) = &self.hosts {
            seen.host_name = match resolver.lookup(client_ip).await {
                HostName::Verified(name) => Some(name),
                HostName::Unverified | HostName::Failed => None,
            };
            self.policy
                .ip
                .check_host(client_ip, seen.host_name.as_deref())?;
        }

        // Phase 4: dynamic limits. The guard holds the in-flight slot until the response ends.
        let mut guard = None;
        if self.limits.max_concurrent.is_some() || self.limits.rate.is_some() {
            let admission = self
                .state
                .admit(self.client_key(client_ip), &self.limits)
                .await;
            let answered = !matches!(admission, Admission::Unavailable);
            self.metrics.state_call(&self.state, answered);
            let refusal = match admission {
                Admission::Admitted(g) => {
                    guard = Some(g);
                    None
                }
                Admission::Refused(LimitRefusal::Concurrent { max }) => Some(
                    Refusal::new(Reason::ConcurrentLimit).with_detail(format!(
                        "{max} requests from {client_ip} already in flight (dynamic.deny_by_concurrent)"
                    )),
                ),
                Admission::Refused(LimitRefusal::Rate { retry_after }) => Some(
                    Refusal::new(Reason::RateLimit)
                        .with_retry_after(retry_after)
                        .with_detail(format!("{client_ip} exceeded dynamic.deny_by_rate")),
                ),
                Admission::Unavailable => {
                    return Err(Refusal::new(Reason::StateUnavailable).with_detail(
                        "the state backend is unreachable and on_backend_error = \"closed\"",
                    ));
                }
            };
            if let Some(refusal) = refusal.map(|r| r.with_action(self.config.dynamic.deny_action)) {
                if !self.config.dynamic.logging_only {
                    return Err(refusal);
                }
                // logging_only: serve it, but log what would have happened.
                tracing::info!(client = %client_ip, reason = refusal.reason.slug(), status = refusal.status(), substatus = refusal.reason.substatus(), request_id, "would refuse (dynamic.logging_only)");
                if let Some(r) = record.as_mut() {
                    r.would_refuse = Some(refusal.reason);
                }
            }
        }

        Ok(Admitted {
            forwarded_by_proxy,
            guard,
        })
    }

    /// Phases 5–7: who the user is, whether the rules let them in, and the external filter.
    pub(crate) async fn identify(
        &self,
        view: &RequestView<'_>,
        seen: &mut Seen,
        request_id: &str,
        record: &mut Option<LogRecord>,
    ) -> Result<Identity, Refusal> {
        let client_ip = seen.client_ip;
        // Phase 5: authenticate (on a path every server reads the same way).
        policy::check_raw_path(view.path)?;
        let path = self.policy.normalize(view.path);
        let authorization = view.headers.get(AUTHORIZATION);
        let step = self
            .policy
            .auth
            .authenticate(&path, authorization.map(HeaderValue::as_bytes));
        let identity = match step {
            AuthStep::Public(_) => Identity::anonymous(),
            AuthStep::VerifyBasic { user, password } => {
                if let Some(r) = record.as_mut() {
                    r.username = Some(user.clone());
                }
                // Basic cannot carry a second factor: such users sign in with the form (refused
                // before the password is looked at, so nothing is counted as a sign-in).
                if self.verifier.has_second_factor(&user).await {
                    return Err(self
                        .refuse_second_factor_basic(client_ip, &user, password)
                        .await);
                }
                self.authenticate_password(client_ip, &user, password, "basic")
                    .await?
            }
            // Without an Authorization header, a form-login site looks for its session cookie.
            AuthStep::Refuse(refusal)
                if refusal.reason == Reason::NoCredentials
                    && authorization.is_none()
                    && self.form_enabled() =>
            {
                match self.check_session(view.headers, seen.secure).await {
                    portal::SessionCheck::Valid(identity) => {
                        seen.session_user = true;
                        if let Some(r) = record.as_mut() {
                            r.username = identity.user.clone();
                        }
                        identity
                    }
                    portal::SessionCheck::Absent => {
                        return Err(refusal.with_detail(
                            "no Authorization header and no session cookie were sent",
                        ));
                    }
                    portal::SessionCheck::Ended(why) => {
                        seen.clear_session = true;
                        return Err(Refusal::new(Reason::SessionExpired).with_detail(why));
                    }
                    portal::SessionCheck::Unavailable(e) => {
                        return Err(Refusal::new(Reason::StateUnavailable)
                            .with_detail(format!("the session could not be read: {e}")));
                    }
                }
            }
            AuthStep::Refuse(refusal) => return Err(refusal),
        };
        // The identity goes into `seen` (for the trace of a detailed page) only on a refusal:
        // allowed requests do not pay for a copy.
        // Phase 6: URL authorization.
        if let Err(mut refusal) = self.policy.rules.authorize(&path, view.method, &identity) {
            // A browser signed in by form and refused by a rule gets 403 and a "sign in as
            // someone else" page: a 401 would send it back to the sign-in page, a loop.
            if seen.session_user && refusal.reason == Reason::AclDenied {
                refusal = refusal.with_action(policy::DenyAction::Forbidden);
            }
            seen.identity = Some(identity);
            return Err(refusal);
        }
        // A WebDAV MOVE or COPY writes to a second path, its Destination: the same rules judge
        // it (as Apache's mod_dav does), or a user could move a file into a place they may not
        // write.
        if let Err(mut refusal) = self.check_destination(view, &path, &identity) {
            if seen.session_user && refusal.reason == Reason::AclDenied {
                refusal = refusal.with_action(policy::DenyAction::Forbidden);
            }
            seen.identity = Some(identity);
            return Err(refusal);
        }

        // Phase 7: the external filter.
        if let Some(filter) = &self.filter {
            let ask = FilterRequest {
                method: view.method,
                uri: view.path_and_query,
                client_ip,
                identity: &identity,
                request_id,
            };
            let checked = filter.check(&ask).await;
            if let Err(refusal) = checked {
                seen.identity = Some(identity);
                return Err(refusal);
            }
        }
        Ok(identity)
    }

    /// Phase 6 for the `Destination` of a WebDAV `MOVE`/`COPY`: a path every server reads the
    /// same way (no encoded separator, no dot segment), public if the request is anonymous, and
    /// allowed by the rules for this method and identity.
    pub(crate) fn check_destination(
        &self,
        view: &RequestView<'_>,
        path: &policy::NormalizedPath,
        identity: &Identity,
    ) -> Result<(), Refusal> {
        let method = view.method;
        // A DELETE or MOVE of a collection reaches everything in it: a rule below the path that
        // refuses this user stands (as IIS and mod_dav check each member).
        if method.eq_ignore_ascii_case("DELETE") || method.eq_ignore_ascii_case("MOVE") {
            self.policy.rules.authorize_below(path, method, identity)?;
        }
        if !(method.eq_ignore_ascii_case("MOVE") || method.eq_ignore_ascii_case("COPY")) {
            return Ok(());
        }
        let Some(destination) = base_path::destination(view.headers)? else {
            return Ok(());
        };
        let path = destination.path;
        policy::check_raw_path(path)?;
        if policy::has_dot_segment(path) {
            return Err(Refusal::new(Reason::BadRequest)
                .with_detail("the Destination has a . or .. segment; it is refused"));
        }
        let normalized = self.policy.normalize(path);
        if identity.user.is_none()
            && !self
                .policy
                .auth
                .public
                .iter()
                .any(|p| p.matches(&normalized))
        {
            return Err(self.policy.rules.denial(format!(
                "anonymous may not {} to {path}, which is not public",
                view.method
            )));
        }
        // The destination, and (it may be a collection being overwritten: unless
        // `Overwrite: F`, the destination is deleted first) what is below it.
        let overwrite = view
            .headers
            .get("overwrite")
            .is_none_or(|v| !v.as_bytes().eq_ignore_ascii_case(b"F"));
        self.policy
            .rules
            .authorize(&normalized, view.method, identity)
            .map(|_| ())
            .and_then(|()| {
                self.policy
                    .rules
                    .authorize_below(&normalized, view.method, identity)
            })
            .and_then(|()| {
                if overwrite {
                    self.policy
                        .rules
                        .authorize_below(&normalized, "DELETE", identity)
                } else {
                    Ok(())
                }
            })
            .map_err(|mut r| {
                r.detail = format!("the Destination {path}: {}", r.detail);
                r
            })
    }
}
