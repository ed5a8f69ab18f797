//! Phase 7: the external authorization filter (`[filter]`), like Envoy's ext_authz or nginx's
//! `auth_request`: one HTTP GET per request with what the policy knows about it in headers.
//!
//! 2xx admits, 401/403 refuse (`filter_denied`, 401.4), anything else, a timeout or a connection
//! failure follows `on_error`: `closed` refuses with 503 `filter_unavailable`, `open` admits and
//! logs an error for each such request.

use std::net::IpAddr;

use bytes::Bytes;
use config::{FailMode, Filter};
use http::{HeaderValue, Request, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use policy::{Identity, Reason, Refusal};

/// A configured filter and its pooled client.
pub struct FilterClient {
    client: Client<HttpConnector, Empty<Bytes>>,
    config: Filter,
}

/// What the filter is told about a request.
pub struct FilterRequest<'a> {
    /// Method.
    pub method: &'a str,
    /// Path and query as received.
    pub uri: &'a str,
    /// Client address.
    pub client_ip: IpAddr,
    /// Who.
    pub identity: &'a Identity,
    /// Request id.
    pub request_id: &'a str,
}

impl FilterClient {
    /// A client for `config`.
    pub fn new(config: Filter) -> FilterClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeout));
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .build(connector);
        FilterClient { client, config }
    }

    /// Asks the filter; `Ok` text says why the request may continue.
    pub async fn check(&self, req: &FilterRequest<'_>) -> Result<String, Refusal> {
        let url = &self.config.url;
        let mut builder = Request::get(url.clone())
            .header("x-original-method", req.method)
            .header("x-original-uri", req.uri)
            .header("x-forwarded-for", req.client_ip.to_string())
            .header("x-request-id", req.request_id);
        if let Some(user) = req
            .identity
            .user
            .as_deref()
            .and_then(|u| HeaderValue::from_str(u).ok())
        {
            builder = builder.header("remote-user", user);
            if !req.identity.groups.is_empty()
                && let Ok(groups) = HeaderValue::from_str(&req.identity.groups.join(","))
            {
                builder = builder.header("remote-groups", groups);
            }
        }
        let request = match builder.body(Empty::new()) {
            Ok(r) => r,
            Err(e) => return self.failed(url, format!("cannot build the request: {e}")),
        };
        match tokio::time::timeout(self.config.timeout, self.client.request(request)).await {
            Err(_) => self.failed(url, format!("no answer within {:?}", self.config.timeout)),
            Ok(Err(e)) => self.failed(url, e.to_string()),
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                // Read the (small) body so the connection goes back to the pool.
                let drain = http_body_util::BodyExt::collect(resp.into_body());
                let _ = tokio::time::timeout(self.config.timeout, drain).await;
                match status {
                    200..=299 => Ok(format!("allowed: the filter {url} answered {status}")),
                    401 | 403 => Err(Refusal::new(Reason::FilterDenied)
                        .with_detail(format!("the filter {url} answered {status}"))),
                    _ => self.failed(url, format!("unexpected status {status}")),
                }
            }
        }
    }

    fn failed(&self, url: &Uri, why: String) -> Result<String, Refusal> {
        match self.config.on_error {
            FailMode::Closed => {
                tracing::warn!(filter = %url, why, "filter unavailable; refusing (on_error = \"closed\")");
                Err(Refusal::new(Reason::FilterUnavailable)
                    .with_detail(format!("the filter {url} failed: {why}")))
            }
            FailMode::Open => {
                tracing::error!(filter = %url, why, "FILTER UNAVAILABLE: letting the request through (on_error = \"open\")");
                Ok(format!(
                    "allowed without the filter ({why}; on_error = \"open\")"
                ))
            }
        }
    }
}
