//! Phase 6: URL authorization (`[[rules]]`) — the path, and for WebDAV the paths a request
//! also reaches: what is below a collection it deletes or moves, and the `Destination` of a
//! `MOVE`/`COPY` (as Apache's mod_dav and IIS check each).

use super::*;

impl Gateway {
    pub(crate) fn authorize(
        &self,
        ex: &Exchange<'_>,
        path: &policy::NormalizedPath,
    ) -> Result<(), Refusal> {
        let identity = ex.identity();
        let method = ex.request.method;
        self.policy
            .rules
            .authorize(path, method, identity)
            .map(|_| ())
            .and_then(|()| self.check_destination(&ex.request, path, identity))
            .map_err(|mut refusal| {
                // A browser signed in by form and refused by a rule gets 403 and a "sign in as
                // someone else" page: a 401 would send it back to the sign-in page, a loop. A
                // bearer token refused by a rule is 403 too (RFC 6750 §3.1
                // `insufficient_scope`: another token, not a retry, is the answer).
                if (ex.user.from_session || ex.user.from_token)
                    && refusal.reason == Reason::AclDenied
                {
                    refusal = refusal.with_action(policy::DenyAction::Forbidden);
                }
                refusal
            })
    }

    /// What else a WebDAV request reaches: a `DELETE` or `MOVE` of a collection reaches
    /// everything in it, and a `MOVE`/`COPY` writes to its `Destination` — a path every server
    /// reads the same way (no encoded separator, no dot segment), public if the request is
    /// anonymous, and allowed by the rules for this method and identity.
    fn check_destination(
        &self,
        request: &Received<'_>,
        path: &policy::NormalizedPath,
        identity: &Identity,
    ) -> Result<(), Refusal> {
        let method = request.method;
        // A rule below the path that refuses this user stands (as IIS and mod_dav check each
        // member).
        if method.eq_ignore_ascii_case("DELETE") || method.eq_ignore_ascii_case("MOVE") {
            self.policy.rules.authorize_below(path, method, identity)?;
        }
        if !(method.eq_ignore_ascii_case("MOVE") || method.eq_ignore_ascii_case("COPY")) {
            return Ok(());
        }
        let Some(destination) = base_path::destination(request.headers)? else {
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
                "anonymous may not {method} to {path}, which is not public"
            )));
        }
        // The destination, and (it may be a collection being overwritten: unless
        // `Overwrite: F`, the destination is deleted first) what is below it.
        let overwrite = request
            .headers
            .get("overwrite")
            .is_none_or(|v| !v.as_bytes().eq_ignore_ascii_case(b"F"));
        self.policy
            .rules
            .authorize(&normalized, method, identity)
            .map(|_| ())
            .and_then(|()| {
                self.policy
                    .rules
                    .authorize_below(&normalized, method, identity)
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
