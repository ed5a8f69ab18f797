//! The explanation pages of each reason (`{portal.prefix}/problems/SLUG`, the `type` of every
//! problem+json refusal): what it means and what to do, in the format `Accept` asks for.

use super::*;

impl Gateway {
    /// `GET /.portcullis/problems/<slug>`: what the reason means and what to do, as a page (or
    /// problem+json / text by `Accept`), with status 200: it documents a refusal, it is not one.
    /// `?request_id=` names the refused request (a front proxy that shows this page for a
    /// refusal passes it on); only a well-formed request id is shown.
    pub(crate) fn problem_page(
        &self,
        slug: &str,
        accept: Option<&HeaderValue>,
        query: Option<&str>,
    ) -> Response<Body> {
        let Some(reason) = Reason::from_slug(slug) else {
            return text(
                http::StatusCode::NOT_FOUND,
                format!(
                    "404 Not Found: \"{slug}\" is not a Portcullis reason. Known reasons: {}\n",
                    Reason::ALL
                        .iter()
                        .map(|r| r.slug())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        };
        let refusal = Refusal::new(reason).with_detail("explanation page");
        let quoted = portal::query_param(query, "request_id")
            .filter(|id| request_id::well_formed(id.as_bytes()));
        let ctx = RefusalContext {
            request_id: quoted.as_deref().unwrap_or("-"),
            accept,
            challenges: &[],
            extra_challenges: &[],
            detailed: false,
            mode: "custom",
            client_ip: IpAddr::from([0, 0, 0, 0]),
            path: "",
            realm: &self.policy.auth.realm,
            trace: &[],
            account: None,
            basic: self.policy.auth.schemes.contains(&policy::Scheme::Basic),
            problems: &self.paths.problems,
        };
        let mut response = refusal_response(&refusal, &ctx, &self.pages);
        *response.status_mut() = http::StatusCode::OK;
        response.headers_mut().remove(http::header::RETRY_AFTER);
        response.headers_mut().insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        );
        response
    }
}
