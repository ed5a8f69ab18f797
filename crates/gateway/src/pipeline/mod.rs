//! The request pipeline: one [`Exchange`] per request, passed `&mut` through the phases of
//! DESIGN.md's table, each in its own file, in order:
//!
//! | phase | file | reads | writes |
//! |---|---|---|---|
//! | 1 framing | `framing.rs` | the head | — |
//! | 2 client address | `client.rs` | peer, `Forwarded`/`X-Forwarded-For` of a trusted proxy | `client` |
//! | 3 IP and host rules | `ip.rs` | `client.ip` | `client.host_name` |
//! | 4 dynamic limits | `limits.rs` | `client.ip` | `guard`, `record.would_refuse` |
//! | 5 authentication | `authenticate/` (one file per scheme, `logon.rs` for passwords) | `Authorization`, the session cookie | `user` |
//! | 6 URL authorization | `authorize.rs` | path, method, `Destination`, `user` | — |
//! | 7 external filter | `filter.rs` | `user` | — |
//! | 8 proxy | `forward.rs` (proxy mode), `forward_auth.rs` (the answer to a front proxy) | everything | — |
//! | 9 response and log | `crate::respond` | the [`respond::Answer`] | status, headers, log record, metrics |
//!
//! [`Gateway::route`] chooses who answers (forward-auth, a problem page, the portal, the
//! upstream); every answer leaves through [`Gateway::respond`].

use super::*;

pub(crate) mod authenticate;
mod authorize;
mod client;
mod filter;
mod forward;
mod forward_auth;
mod framing;
mod ip;
mod limits;

pub(crate) use framing::check_framing;

use crate::respond::{Answer, Front};

/// The request as the policy judges it: the real one in proxy mode, the original one (as the
/// trusted proxy describes it) in forward-auth mode. Borrowed from the request's head.
#[derive(Clone, Copy)]
pub(crate) struct Received<'a> {
    /// The connection is TLS.
    pub(crate) tls: bool,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) path_and_query: &'a str,
    pub(crate) headers: &'a http::HeaderMap,
    /// The authority of an absolute request-target (an HTTP/2 request's `:authority`).
    pub(crate) authority: Option<&'a str>,
    /// The verdict on the connection's client certificate (`server.tls.client_ca`; proxy mode:
    /// in forward-auth mode the connection is the front proxy's).
    pub(crate) client_cert: Option<&'a crate::client_cert::ClientCert>,
}

impl<'a> Received<'a> {
    /// The request as received from the client.
    pub(crate) fn of(parts: &'a http::request::Parts, tls: bool) -> Received<'a> {
        Received {
            tls,
            method: parts.method.as_str(),
            path: parts.uri.path(),
            path_and_query: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            headers: &parts.headers,
            authority: parts.uri.authority().map(http::uri::Authority::as_str),
            client_cert: parts.extensions.get(),
        }
    }
}

/// The client as phases 2–3 saw it.
pub(crate) struct Client {
    /// The socket peer.
    pub(crate) peer: IpAddr,
    /// The client address (the peer, or what a trusted proxy says).
    pub(crate) ip: IpAddr,
    /// The peer is a trusted proxy.
    pub(crate) forwarded_by_proxy: bool,
    /// The browser reached the site over HTTPS (TLS, or the trusted proxy's
    /// `X-Forwarded-Proto`): for cookie attributes and absolute URLs.
    pub(crate) secure: bool,
    /// The verified host name (when host-name rules need it).
    pub(crate) host_name: Option<Arc<str>>,
}

/// Who the user is, as phase 5 found.
#[derive(Default)]
pub(crate) struct User {
    pub(crate) identity: Option<Identity>,
    /// The identity came from a sign-in session (form), not from `Authorization`.
    pub(crate) from_session: bool,
    /// The identity came from a bearer token (a rule's refusal is then 403 with
    /// `error="insufficient_scope"`, RFC 6750 §3.1).
    pub(crate) from_token: bool,
    /// The request's session cookie names no live session: the response clears it.
    pub(crate) clear_session: bool,
}

/// One request on its way through the phases: what was received, what the phases found out
/// about the client and the user, what the request holds (its in-flight slot), and its log
/// record. The owned parts outlive the borrowed head when the request is forwarded.
pub(crate) struct Exchange<'a> {
    pub(crate) request: Received<'a>,
    pub(crate) request_id: String,
    /// When the request's head was read.
    pub(crate) started: Instant,
    pub(crate) client: Client,
    pub(crate) user: User,
    /// Who the answer goes to (a front proxy's forward-auth question is answered its way).
    pub(crate) front: Front,
    /// Phase 4's in-flight slot, held until the response has gone.
    pub(crate) guard: Option<InFlightGuard>,
    /// The access-log line (`None` when the log is off).
    pub(crate) record: Option<LogRecord>,
}

/// The parts of an [`Exchange`] that do not borrow the request.
pub(crate) struct Carried {
    request_id: String,
    started: Instant,
    client: Client,
    user: User,
    front: Front,
    guard: Option<InFlightGuard>,
    record: Option<LogRecord>,
}

impl<'a> Exchange<'a> {
    /// Lets go of the request's head (to forward it), keeping everything else.
    pub(crate) fn detach(self) -> Carried {
        Carried {
            request_id: self.request_id,
            started: self.started,
            client: self.client,
            user: self.user,
            front: self.front,
            guard: self.guard,
            record: self.record,
        }
    }

    /// The exchange again, over `request`.
    pub(crate) fn attach(carried: Carried, request: Received<'a>) -> Exchange<'a> {
        Exchange {
            request,
            request_id: carried.request_id,
            started: carried.started,
            client: carried.client,
            user: carried.user,
            front: carried.front,
            guard: carried.guard,
            record: carried.record,
        }
    }

    /// The identity phase 5 established (anonymous before it).
    pub(crate) fn identity(&self) -> &Identity {
        static ANONYMOUS: std::sync::LazyLock<Identity> =
            std::sync::LazyLock::new(Identity::anonymous);
        self.user.identity.as_ref().unwrap_or(&ANONYMOUS)
    }
}

impl Gateway {
    /// A new exchange for `request` on `conn`, with its log record started.
    pub(crate) fn exchange<'a>(
        &self,
        request: Received<'a>,
        conn: &ConnInfo,
        started: Instant,
    ) -> Exchange<'a> {
        let request_id = request_id::for_request(request.headers);
        let record = self.log.enabled().then(|| {
            let (stem, query) = request
                .path_and_query
                .split_once('?')
                .map_or((request.path_and_query, None), |(s, q)| (s, Some(q)));
            LogRecord {
                time: SystemTime::now(),
                s_ip: policy::canonical(conn.local.ip()),
                s_port: conn.local.port(),
                method: http::Method::from_bytes(request.method.as_bytes())
                    .unwrap_or(http::Method::GET),
                uri_stem: stem.to_owned(),
                uri_query: query.map(str::to_owned),
                c_ip: policy::canonical(conn.peer.ip()),
                user_agent: request.headers.get(USER_AGENT).cloned(),
                referer: request.headers.get(REFERER).cloned(),
                request_id: request_id.clone(),
                started: Some(started),
                ..LogRecord::default()
            }
        });
        let peer = policy::canonical(conn.peer.ip());
        Exchange {
            request,
            request_id,
            started,
            client: Client {
                peer,
                ip: peer,
                forwarded_by_proxy: false,
                secure: request.tls,
                host_name: None,
            },
            user: User::default(),
            front: Front::Client,
            guard: None,
            record,
        }
    }

    /// Chooses who answers the request: phase 1 (framing), then forward-auth questions, the
    /// problem pages and the portal under `portal.prefix`, and everything else through phases
    /// 2–8 to the upstream.
    pub(crate) async fn route(
        &self,
        req: Request<RequestBody>,
        conn: ConnInfo,
    ) -> Result<Response<Body>, Abort> {
        let started = Instant::now();
        if let Err(refusal) = check_framing(&req) {
            return self.refuse_framing(refusal, &req, conn, started);
        }
        if let Some(rest) = req.uri().path().strip_prefix(self.paths.prefix.as_str())
            && rest.starts_with('/')
        {
            if rest == "/auth" {
                return self.forward_auth(req, conn, started).await;
            }
            if let Some(slug) = rest.strip_prefix("/problems/") {
                return self.respond_plain(self.problem_page(
                    slug,
                    req.headers().get(ACCEPT),
                    req.uri().query(),
                ));
            }
            match portal::Page::from_rest(rest) {
                Some(page @ (portal::Page::Login | portal::Page::Logout))
                    if self.form_enabled() =>
                {
                    return self.portal(req, conn, page, started).await;
                }
                Some(page @ (portal::Page::Password | portal::Page::Forgot))
                    if self.user_db().is_some() =>
                {
                    return self.portal(req, conn, page, started).await;
                }
                Some(page @ (portal::Page::OidcLogin | portal::Page::OidcCallback))
                    if self.oidc.is_some() =>
                {
                    return self.portal(req, conn, page, started).await;
                }
                _ => {}
            }
        }
        let Some(upstream) = &self.upstream else {
            return self.respond_plain(crate::respond::text(
                http::StatusCode::NOT_FOUND,
                format!(
                    "404 Not Found: this Portcullis has no upstream (server.upstream); it only answers forward-auth questions at {}\n",
                    self.paths.auth
                ),
            ));
        };
        let (parts, body) = req.into_parts();
        let mut ex = self.exchange(Received::of(&parts, conn.tls), &conn, started);
        if let Err(refusal) = self.decide(&mut ex).await {
            return self.respond(ex, Answer::Refuse(refusal));
        }
        self.forward(upstream, ex.detach(), parts, body, conn).await
    }

    /// Phase 1's answer to a request whose framing is refused: logged like any refusal, and the
    /// connection is closed after it (what follows on it cannot be trusted to start a request).
    fn refuse_framing(
        &self,
        refusal: Refusal,
        req: &Request<RequestBody>,
        conn: ConnInfo,
        started: Instant,
    ) -> Result<Response<Body>, Abort> {
        let received = Received {
            tls: conn.tls,
            method: req.method().as_str(),
            path: req.uri().path(),
            path_and_query: req.uri().path_and_query().map_or("/", |p| p.as_str()),
            headers: req.headers(),
            authority: req.uri().authority().map(http::uri::Authority::as_str),
            client_cert: None,
        };
        let ex = self.exchange(received, &conn, started);
        tracing::info!(peer = %conn.peer, detail = %refusal.detail, request_id = ex.request_id, "request framing refused");
        self.respond(ex, Answer::RefuseAndClose(refusal))
    }

    /// Phases 2–7 for the request, in order.
    pub(crate) async fn decide(&self, ex: &mut Exchange<'_>) -> Result<(), Refusal> {
        self.admit(ex).await?;
        self.identify(ex).await
    }

    /// Phases 2–4: who the client is, whether its address may come in, and its limits (the
    /// portal's pages go through these too).
    pub(crate) async fn admit(&self, ex: &mut Exchange<'_>) -> Result<(), Refusal> {
        self.client_address(ex)?;
        self.address_rules(ex).await?;
        self.dynamic_limits(ex).await
    }

    /// Phases 5–7: who the user is, whether the rules let them in, and the external filter.
    async fn identify(&self, ex: &mut Exchange<'_>) -> Result<(), Refusal> {
        // Every later phase judges the path every server reads the same way.
        policy::check_raw_path(ex.request.path)?;
        let path = self.policy.normalize(ex.request.path);
        self.authenticate(ex, &path).await?;
        self.authorize(ex, &path)?;
        self.external_filter(ex).await
    }
}

#[cfg(test)]
mod tests;
