//! The HTTP side of Portcullis: listeners, the request pipeline, the reverse proxy, refusal
//! responses and the access log.
//!
//! [`Gateway::handle`] runs the phases of the pipeline in order for one request. Each phase
//! either lets the request continue or produces a [`policy::Refusal`]; every refusal goes through
//! [`respond::refusal_response`], the single place where a refusal becomes a response.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod body;
pub mod pages;
pub mod proxy;
pub mod request_id;
pub mod respond;
pub mod server;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use config::{Config, ErrorMode, Upstream401};
use http::header::{ACCEPT, AUTHORIZATION, REFERER, USER_AGENT, WWW_AUTHENTICATE};
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use policy::{AuthPolicy, AuthStep, Credentials, Identity, Reason, Refusal, normalize_path};
use store::verifier::{Verification, Verifier};

use crate::access_log::{AccessLog, LogRecord};
use crate::body::{Body, LoggedBody, PendingLog};
use crate::pages::Pages;
use crate::proxy::{ForwardContext, Upstream};
use crate::respond::RefusalContext;

pub use server::{Bound, ServeError, bind, serve};

/// What the handler knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The socket peer.
    pub peer: SocketAddr,
    /// The local address.
    pub local: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// The request must be answered by closing the connection (`deny_action = "abort"`).
#[derive(Debug, thiserror::Error)]
#[error("connection aborted by policy ({0})")]
pub struct Abort(pub Reason);

/// Everything needed to answer requests under one configuration.
pub struct Gateway {
    config: Config,
    auth: AuthPolicy,
    challenges: Vec<HeaderValue>,
    verifier: Arc<Verifier>,
    upstream: Upstream,
    pages: Pages,
    log: Arc<AccessLog>,
}

/// Why a gateway could not be built from a valid config (files that vanished, etc.).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The user store could not be loaded.
    #[error("user store: {0}")]
    Users(String),
    /// The error page templates could not be loaded.
    #[error("error pages: {0}")]
    Pages(String),
    /// The access log could not be opened.
    #[error("{0}")]
    AccessLog(std::io::Error),
}

impl Gateway {
    /// Builds the gateway: loads users and pages, opens the access log.
    pub fn new(config: Config) -> Result<Gateway, BuildError> {
        let source = match &config.auth.users {
            config::UserSource::Htpasswd(p) => store::verifier::UserSource::File(p.clone()),
            config::UserSource::Inline(users) => store::verifier::UserSource::Inline(users.clone()),
        };
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        let verifier = Verifier::new(source, config.auth.cache_ttl, parallel)
            .map_err(|e| BuildError::Users(e.to_string()))?;
        let pages = Pages::load(config.errors.pages.as_deref()).map_err(BuildError::Pages)?;
        let log = AccessLog::open(&config.log.access, config.log.format)
            .map_err(BuildError::AccessLog)?;
        let auth = config.auth.policy();
        let challenges = auth
            .challenges()
            .iter()
            .filter_map(|c| HeaderValue::from_str(c).ok())
            .collect();
        let upstream = Upstream::new(
            &config.server.upstream,
            config.server.connect_timeout,
            config.server.upstream_timeout,
        );
        Ok(Gateway {
            config,
            auth,
            challenges,
            verifier: Arc::new(verifier),
            upstream,
            pages,
            log: Arc::new(log),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The access log (for flushing at shutdown).
    pub fn access_log(&self) -> &AccessLog {
        &self.log
    }

    /// Runs the pipeline for one request.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<Response<Body>, Abort> {
        let started = Instant::now();
        let request_id = request_id::for_request(req.headers());
        let client_ip = canonical_ip(conn.peer.ip());
        let mut record = self.log.enabled().then(|| LogRecord {
            time: SystemTime::now(),
            s_ip: canonical_ip(conn.local.ip()),
            s_port: conn.local.port(),
            method: req.method().clone(),
            uri_stem: req.uri().path().to_owned(),
            uri_query: req.uri().query().map(str::to_owned),
            c_ip: client_ip,
            user_agent: req.headers().get(USER_AGENT).cloned(),
            referer: req.headers().get(REFERER).cloned(),
            request_id: request_id.clone(),
            started: Some(started),
            ..LogRecord::default()
        });

        // Phase 5: authenticate.
        let path = normalize_path(req.uri().path());
        let step = self.auth.authenticate(
            &path,
            req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes),
        );
        let identity = match step {
            AuthStep::Public(_) => Identity::anonymous(),
            AuthStep::VerifyBasic(Credentials::Basic { user, password }) => {
                let accepted =
                    self.verifier.verify(&user, &password).await == Verification::Accepted;
                drop(password);
                if let Some(r) = record.as_mut() {
                    r.username = Some(user.clone());
                }
                match self.auth.after_verification(&user, accepted) {
                    Ok(identity) => identity,
                    Err(refusal) => {
                        return self.refuse(&refusal, &req, client_ip, &request_id, record, &[]);
                    }
                }
            }
            AuthStep::VerifyBasic(Credentials::Other { .. }) => {
                let refusal =
                    Refusal::new(Reason::InternalError).with_detail("unexpected credentials kind");
                return self.refuse(&refusal, &req, client_ip, &request_id, record, &[]);
            }
            AuthStep::Refuse(refusal) => {
                return self.refuse(&refusal, &req, client_ip, &request_id, record, &[]);
            }
        };

        // Phase 8: proxy.
        let ctx = ForwardContext {
            client_ip,
            tls: conn.tls,
            identity: &identity,
            forward_authorization: self.config.auth.forward_authorization,
            request_id: &request_id,
        };
        let accept = req.headers().get(ACCEPT).cloned();
        let path_raw = req.uri().path().to_owned();
        match self.upstream.forward(req, &ctx).await {
            Ok(response) => {
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
                        let response = self.refusal_response(
                            &refusal,
                            accept.as_ref(),
                            &path_raw,
                            client_ip,
                            &request_id,
                            &theirs,
                        );
                        return Ok(self.logged(response, record));
                    }
                }
                if let Ok(v) = HeaderValue::from_str(&request_id) {
                    parts.headers.entry(request_id::X_REQUEST_ID).or_insert(v);
                }
                let pending = record.map(|r| PendingLog::new(self.log.clone(), r));
                Ok(Response::from_parts(
                    parts,
                    LoggedBody::new(body, pending).boxed(),
                ))
            }
            Err(refusal) => {
                tracing::warn!(reason = refusal.reason.slug(), detail = %refusal.detail, request_id, "upstream failed");
                let response = self.refusal_response(
                    &refusal,
                    accept.as_ref(),
                    &path_raw,
                    client_ip,
                    &request_id,
                    &[],
                );
                if let Some(r) = record.as_mut() {
                    r.status = refusal.status();
                    r.substatus = refusal.reason.substatus();
                    r.reason = Some(refusal.reason);
                }
                Ok(self.logged(response, record))
            }
        }
    }

    fn refuse(
        &self,
        refusal: &Refusal,
        req: &Request<Incoming>,
        client_ip: IpAddr,
        request_id: &str,
        mut record: Option<LogRecord>,
        extra_challenges: &[HeaderValue],
    ) -> Result<Response<Body>, Abort> {
        if let Some(r) = record.as_mut() {
            r.status = refusal.status();
            r.substatus = refusal.reason.substatus();
            r.reason = Some(refusal.reason);
        }
        if refusal.status() == 0 {
            if let Some(r) = record {
                self.log.write(r);
            }
            return Err(Abort(refusal.reason));
        }
        let response = self.refusal_response(
            refusal,
            req.headers().get(ACCEPT),
            req.uri().path(),
            client_ip,
            request_id,
            extra_challenges,
        );
        Ok(self.logged(response, record))
    }

    fn refusal_response(
        &self,
        refusal: &Refusal,
        accept: Option<&HeaderValue>,
        path: &str,
        client_ip: IpAddr,
        request_id: &str,
        extra_challenges: &[HeaderValue],
    ) -> Response<Body> {
        let mode = self.config.errors.mode;
        let detailed = match mode {
            ErrorMode::Custom => false,
            ErrorMode::Detailed => true,
            ErrorMode::DetailedLocalOnly => client_ip.is_loopback(),
        };
        let ctx = RefusalContext {
            request_id,
            accept,
            challenges: &self.challenges,
            extra_challenges,
            detailed,
            mode: match mode {
                ErrorMode::Custom => "custom",
                ErrorMode::Detailed => "detailed",
                ErrorMode::DetailedLocalOnly => "detailed_local_only",
            },
            client_ip,
            path,
            realm: &self.auth.realm,
        };
        respond::refusal_response(refusal, &ctx, &self.pages)
    }

    fn logged(&self, response: Response<Body>, record: Option<LogRecord>) -> Response<Body> {
        match record {
            None => response,
            Some(mut r) => {
                r.status = response.status().as_u16();
                let pending = Some(PendingLog::new(self.log.clone(), r));
                response.map(|b| LoggedBody::new(b, pending).boxed())
            }
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are IPv4 addresses.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
