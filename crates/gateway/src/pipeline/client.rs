//! Phase 2: the client address — the socket peer, or, from a trusted proxy only, what its
//! `Forwarded` or `X-Forwarded-For` header says (`server.forwarded_header`), and whether the
//! browser reached the site over HTTPS.

use super::*;

impl Gateway {
    pub(crate) fn client_address(&self, ex: &mut Exchange<'_>) -> Result<(), Refusal> {
        let peer = ex.client.peer;
        let headers = ex.request.headers;
        let forwarded_by_proxy =
            !self.policy.trusted_proxies.is_empty() && self.policy.trusted_proxies.contains(peer);
        if forwarded_by_proxy {
            // Only the header the trusted proxy maintains is read (server.forwarded_header).
            let read = |name: http::HeaderName| -> Vec<&[u8]> {
                headers
                    .get_all(name)
                    .iter()
                    .map(HeaderValue::as_bytes)
                    .collect()
            };
            let (forwarded, xff) = match self.config.server.forwarded_header {
                ForwardedHeader::XForwardedFor => (Vec::new(), read(X_FORWARDED_FOR)),
                ForwardedHeader::Forwarded => (read(FORWARDED), Vec::new()),
            };
            ex.client.ip = client_addr(peer, &self.policy.trusted_proxies, &forwarded, &xff)?.ip;
        }
        ex.client.forwarded_by_proxy = forwarded_by_proxy;
        if let Some(r) = ex.record.as_mut() {
            r.c_ip = ex.client.ip;
        }
        ex.client.secure = ex.request.tls
            || (forwarded_by_proxy
                && headers
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|p| p.trim().eq_ignore_ascii_case("https")));
        Ok(())
    }
}
