//! The portal's forms: reading a bounded `application/x-www-form-urlencoded` body in time, and
//! rendering a form page with its CSRF token (or the page that says a form could not be read).

use super::*;

/// Largest form body accepted (a sign-in form is a few hundred bytes).
pub const MAX_FORM_BYTES: usize = 16 * 1024;

/// The fields of an `application/x-www-form-urlencoded` body.
pub struct Form(Vec<(String, String)>);

impl Form {
    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a form body could not be read.
pub enum FormError {
    /// Larger than [`MAX_FORM_BYTES`].
    TooLarge,
    /// The connection failed mid-body.
    Broken,
    /// The body did not arrive within `server.header_timeout`.
    TimedOut,
}

/// Reads a form body of at most [`MAX_FORM_BYTES`], which must arrive within `timeout` (a body
/// that declares 100 bytes and sends 4 does not hold the connection).
pub async fn read_form(body: RequestBody, timeout: std::time::Duration) -> Result<Form, FormError> {
    let collected =
        match tokio::time::timeout(timeout, Limited::new(body, MAX_FORM_BYTES).collect()).await {
            Ok(c) => c,
            Err(_) => return Err(FormError::TimedOut),
        };
    match collected {
        Ok(collected) => {
            let bytes: Bytes = collected.to_bytes();
            Ok(Form(
                form_urlencoded::parse(&bytes)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect(),
            ))
        }
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(FormError::TooLarge)
        }
        Err(_) => Err(FormError::Broken),
    }
}

/// The query parameter `name` of `query`.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

impl Portal<'_> {
    /// A portal form page: its CSRF token (and the pre-session cookie when the browser has
    /// none), 400 when it shows an error about the last submission, else 200.
    pub(crate) fn form_response(
        &self,
        visit: &Visit<'_>,
        ctx: PortalContext<'_>,
    ) -> Response<Body> {
        let (csrf, set_csrf) = self.csrf().for_request(&visit.cookies, visit.headers);
        let ctx = PortalContext { csrf: &csrf, ..ctx };
        let status = if ctx.error.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        };
        let mut r = html(status, self.pages.render_portal(&ctx));
        if let Some(c) = set_csrf {
            r.headers_mut().append(SET_COOKIE, c);
        }
        r
    }

    /// An unreadable or oversized form: a page saying so (413 or 400).
    pub(crate) fn form_problem(&self, visit: &Visit<'_>, e: FormError) -> Outcome {
        let (status, message) = match e {
            FormError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "The form sent was far larger than any sign-in form; nothing was saved. Go back and try again.",
            ),
            FormError::TimedOut => (
                StatusCode::REQUEST_TIMEOUT,
                "The form took too long to arrive; nothing was saved. Go back and try again.",
            ),
            FormError::Broken => (
                StatusCode::BAD_REQUEST,
                "The form did not arrive completely; nothing was saved. Go back and try again.",
            ),
        };
        let mut ctx = self.portal_context(visit, "message", "The form could not be read");
        ctx.error = Some(message);
        Outcome {
            response: html(status, self.pages.render_portal(&ctx)),
            reason: Some(Reason::BadRequest),
            user: None,
        }
    }
}
