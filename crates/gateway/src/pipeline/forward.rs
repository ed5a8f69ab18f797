//! Phase 8 in proxy mode: the decided request goes to the upstream (`crate::proxy` is the
//! client), and the upstream's answer, or the refusal for a failed upstream, comes back through
//! phase 9.

use super::*;

impl Gateway {
    /// Forwards the request whose head is `parts` (the one phases 2–7 judged: `carried` is what
    /// they found).
    pub(crate) async fn forward(
        &self,
        upstream: &proxy::Upstream,
        carried: Carried,
        parts: http::request::Parts,
        body: RequestBody,
        conn: ConnInfo,
    ) -> Result<Response<Body>, Abort> {
        let anonymous = Identity::anonymous();
        let ctx = ForwardContext {
            client_ip: carried.client.ip,
            peer: carried.client.peer,
            from_trusted_proxy: carried.client.forwarded_by_proxy,
            keep_forwarded: carried.client.forwarded_by_proxy
                && self.config.server.forwarded_header == ForwardedHeader::Forwarded,
            tls: conn.tls,
            identity: carried.user.identity.as_ref().unwrap_or(&anonymous),
            forward_authorization: self.config.auth.forward_authorization,
            request_id: &carried.request_id,
            strip_own_cookies: self.form_enabled(),
        };
        // Kept for an answer after forwarding (cheap: reference-counted, no copy of the path).
        let mut kept = http::HeaderMap::new();
        if let Some(accept) = parts.headers.get(ACCEPT) {
            kept.insert(ACCEPT, accept.clone());
        }
        let (method, uri) = (parts.method.clone(), parts.uri.clone());
        let forwarded = self.metrics.forwarding(carried.started);
        let result = upstream
            .forward(Request::from_parts(parts, body), &ctx)
            .await;
        let ex = Exchange::attach(
            carried,
            Received {
                tls: conn.tls,
                method: method.as_str(),
                path: uri.path(),
                path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()),
                headers: &kept,
                authority: None,
                client_cert: None,
            },
        );
        match result {
            Ok(response) => {
                self.metrics.upstream_answered(forwarded);
                self.respond(ex, Answer::Upstream(response))
            }
            Err(refusal) => {
                tracing::warn!(reason = refusal.reason.slug(), detail = %refusal.detail, request_id = ex.request_id, "upstream failed");
                self.respond(ex, Answer::UpstreamFailed(refusal))
            }
        }
    }
}
