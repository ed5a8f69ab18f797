//! The admin listener (`[admin] listen`): operator endpoints, never on a public listener.
//!
//! * `GET /healthz` — 200 `{"status":"serving"}`, or 503 with a JSON reason when a required
//!   backend is down (Redis with `on_backend_error = "closed"`).
//! * `GET /bans` — active bans as JSON (who, why, until when).
//! * `DELETE /bans` — lift every ban; `DELETE /bans/<address or user>` — lift one subject's.
//! * `GET /metrics` — Prometheus metrics ([`crate::metrics`]): the classic text format, or
//!   OpenMetrics when the scraper's `Accept` asks for `application/openmetrics-text`.
//!
//! `portcullis bans list|clear` talks to these endpoints when the state lives in memory.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use store::state::{Ban, BanSubject, StateStore};

use crate::metrics::{self, Metrics};

/// Serves the admin endpoints on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    current: Arc<arc_swap::ArcSwap<crate::Gateway>>,
    metrics: Arc<Metrics>,
) {
    loop {
        let (stream, local) = match listener.accept().await {
            Ok((stream, _)) => {
                let local = stream.local_addr().ok();
                (stream, local)
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let current = current.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let gateway = current.load_full();
                let metrics = metrics.clone();
                async move {
                    let state = gateway.state();
                    let fail_closed =
                        gateway.config().state.on_backend_error == config::FailMode::Closed;
                    let mut response = if host_allowed(&req, local) {
                        route(req, state, fail_closed, &metrics).await
                    } else {
                        json(
                            StatusCode::MISDIRECTED_REQUEST,
                            serde_json::json!({"error": "the admin listener answers only requests addressed to a loopback name or to its own address (Host header); this protects it from DNS rebinding"}),
                        )
                    };
                    crate::respond::secure_own_response(response.headers_mut());
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Whether the request names the admin listener itself: a loopback name or address, or the
/// address it was accepted on. A page in an operator's browser that rebinds its own DNS name to
/// 127.0.0.1 still sends its own name as `Host`, so it cannot reach `DELETE /bans`.
fn host_allowed<B>(req: &Request<B>, local: Option<SocketAddr>) -> bool {
    let host = match req.headers().get(http::header::HOST) {
        Some(h) => h.to_str().ok().map(str::to_owned),
        None => req.uri().authority().map(|a| a.as_str().to_owned()),
    };
    let Some(host) = host else { return false };
    let Ok(authority) = host.parse::<http::uri::Authority>() else {
        return false;
    };
    let name = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if name.eq_ignore_ascii_case("localhost") || name.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || local.is_some_and(|l| l.ip() == ip),
        Err(_) => false,
    }
}

/// Binds the admin address (before anything starts serving).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{value}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

/// JSON for one ban.
pub fn ban_json(ban: &Ban) -> serde_json::Value {
    let (kind, who) = match &ban.subject {
        BanSubject::Address(ip) => ("address", ip.to_string()),
        BanSubject::User(u) => ("user", u.clone()),
    };
    serde_json::json!({
        "kind": kind,
        "who": who,
        "reason": ban.reason,
        "until": humantime::format_rfc3339_seconds(ban.until).to_string(),
        "remaining_seconds": ban.remaining.as_secs(),
    })
}

async fn route(
    req: Request<Incoming>,
    state: &StateStore,
    fail_closed: bool,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => match state {
            _ if crate::server::draining() => json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"status": "draining", "reason": "shutting down: finishing requests in flight, accepting no new connections"}),
            ),
            StateStore::Redis(r) if !r.is_available() && fail_closed => json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"status": "degraded", "reason": "state backend (Redis) unreachable and on_backend_error = \"closed\""}),
            ),
            StateStore::Redis(r) => json(
                StatusCode::OK,
                serde_json::json!({"status": "serving", "state": {
                    "backend": "redis",
                    "node": r.node(),
                    "sentinel_master": r.sentinel_master(),
                    "failovers": r.failovers(),
                    "available": r.is_available(),
                }}),
            ),
            _ => json(StatusCode::OK, serde_json::json!({"status": "serving"})),
        },
        (&Method::GET, "/metrics") => {
            let openmetrics = req
                .headers()
                .get_all(http::header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/openmetrics-text"));
            let (text, content_type) = if openmetrics {
                (
                    metrics.render(state, true).await,
                    metrics::OPENMETRICS_CONTENT_TYPE,
                )
            } else {
                (
                    metrics.render(state, false).await,
                    metrics::TEXT_CONTENT_TYPE,
                )
            };
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(content_type),
            );
            r.headers_mut().insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
            r
        }
        (&Method::GET, "/bans") => match state.list_bans().await {
            Ok(bans) => json(
                StatusCode::OK,
                serde_json::json!({"bans": bans.iter().map(ban_json).collect::<Vec<_>>()}),
            ),
            Err(e) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": e.to_string()}),
            ),
        },
        (&Method::DELETE, p) if p == "/bans" || p.starts_with("/bans/") => {
            let who = p
                .strip_prefix("/bans/")
                .map(|w| policy::percent_decode(w).into_owned())
                .filter(|w| !w.is_empty());
            match state.clear_bans(who.as_deref()).await {
                Ok(n) => {
                    tracing::info!(
                        who = who.as_deref().unwrap_or("everyone"),
                        lifted = n,
                        "bans cleared through the admin listener"
                    );
                    json(StatusCode::OK, serde_json::json!({"cleared": n}))
                }
                Err(e) => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"error": e.to_string()}),
                ),
            }
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found", "endpoints": ["GET /healthz", "GET /metrics", "GET /bans", "DELETE /bans", "DELETE /bans/<who>"]}),
        ),
    }
}
