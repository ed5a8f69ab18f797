//! Phase 1: request framing that HTTP/1.1 allows to be read two ways (RFC 9112 §6.1, §6.3).

use super::*;

/// A front proxy and Portcullis reading the body differently is how requests are smuggled, so
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
