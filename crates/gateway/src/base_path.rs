//! An upstream with a base path (`upstream = "http://127.0.0.1:8000/dav"`): the client sees the
//! site at `/`, the application at `/dav`. Requests are mapped in (the path, and WebDAV's
//! `Destination`), answers are mapped back: `Location` and `Content-Location` (as nginx's
//! `proxy_redirect default` and Apache's `ProxyPassReverse` do), and the `href` elements of a
//! WebDAV `207 Multi-Status` body, rewritten as the body streams through. Nothing else in a body
//! is rewritten (links in HTML pages, JSON): an application that writes its own absolute links
//! must be told its public base path, or mounted at the same path.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};

/// WebDAV's `Destination` (RFC 4918 §10.3): where a `MOVE` or `COPY` writes.
pub const DESTINATION: http::HeaderName = http::HeaderName::from_static("destination");

/// A `Destination` read strictly: an absolute path (`/x`, not `//x`), or an `http`/`https` URI
/// with a host and an absolute path; never a query, a fragment or user information (which
/// parsers split differently: the path Portcullis judges must be the one every server reads).
pub struct Destination<'a> {
    /// `scheme://authority`, or empty for an absolute path.
    pub origin: &'a str,
    /// The path, as sent.
    pub path: &'a str,
}

/// Reads a request's `Destination`: `None` without one, 400 for more than one or for anything
/// [`Destination`] does not accept.
pub fn destination(headers: &http::HeaderMap) -> Result<Option<Destination<'_>>, policy::Refusal> {
    let bad = |why: &str| {
        policy::Refusal::new(policy::Reason::BadRequest)
            .with_detail(format!("the Destination header {why}"))
    };
    let mut all = headers.get_all(DESTINATION).iter();
    let Some(value) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(bad("is sent more than once"));
    }
    let s = value.to_str().map_err(|_| bad("is not ASCII"))?;
    if s.contains(['?', '#']) {
        return Err(bad("has a query or fragment"));
    }
    if s.starts_with('/') && !s.starts_with("//") {
        return Ok(Some(Destination {
            origin: "",
            path: s,
        }));
    }
    let rest = ["http://", "https://"]
        .iter()
        .find_map(|scheme| {
            s.get(..scheme.len())
                .filter(|p| p.eq_ignore_ascii_case(scheme))
                .map(|_| scheme.len())
        })
        .ok_or_else(|| bad("is neither an absolute path nor an http(s) URI"))?;
    let slash = s[rest..]
        .find('/')
        .map(|i| rest + i)
        .ok_or_else(|| bad("has no path"))?;
    let authority = &s[rest..slash];
    if authority.is_empty() || authority.contains(['@', '\\']) {
        return Err(bad("has no host, or user information"));
    }
    Ok(Some(Destination {
        origin: &s[..slash],
        path: &s[slash..],
    }))
}

/// The part of `path` under `base` (`/dav/a` → `/a`, `/dav` → `/`), or `None` when `path` is
/// not under it (`/davx`, `/other`). `base` has no trailing slash and is not empty.
pub fn strip(base: &str, path: &str) -> Option<String> {
    let rest = path.strip_prefix(base)?;
    match rest.bytes().next() {
        None => Some("/".to_owned()),
        Some(b'/') => Some(rest.to_owned()),
        Some(b'?' | b'#') => Some(format!("/{rest}")),
        Some(_) => None,
    }
}

/// A reference the application wrote (an absolute URL naming one of `hosts`, or an absolute
/// path), mapped back to the client's view: the base path removed from its path. `None` when it
/// is not under the base path or names another host (left as the application wrote it).
pub fn map_back(base: &str, hosts: &[String], reference: &str) -> Option<String> {
    if reference.starts_with('/') && !reference.starts_with("//") {
        return strip(base, reference);
    }
    // scheme://authority/path…: the scheme and authority are kept (the application built them
    // from the Host it was sent, which is the client's).
    let scheme_end = reference.find("://")?;
    let scheme = &reference[..scheme_end];
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return None;
    }
    let after = scheme_end + 3;
    let path_start = reference[after..]
        .find('/')
        .map_or(reference.len(), |i| after + i);
    let authority = &reference[after..path_start];
    if !hosts.iter().any(|h| h.eq_ignore_ascii_case(authority)) {
        return None;
    }
    let mapped = strip(base, &reference[path_start..])?;
    Some(format!("{}{}", &reference[..path_start], mapped))
}

/// [`map_back`] for a header value; the value unchanged when it is not under the base path.
pub fn map_back_header(base: &str, hosts: &[String], value: &HeaderValue) -> Option<HeaderValue> {
    let s = value.to_str().ok()?;
    HeaderValue::from_str(&map_back(base, hosts, s)?).ok()
}

/// The `Destination` forwarded for a WebDAV `MOVE`/`COPY`: its origin as the client wrote it,
/// then the base path and `path` (the normalised path that was judged).
pub fn map_in(base: &str, origin: &str, path: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("{origin}{base}{path}")).ok()
}

/// Whether an answer's body is a WebDAV multistatus whose `href`s need mapping back: status 207,
/// an XML media type, and no content coding (a compressed body is passed through untouched).
pub fn rewrites_body(status: http::StatusCode, headers: &http::HeaderMap) -> bool {
    status.as_u16() == 207
        && headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.to_ascii_lowercase().contains("xml"))
        && headers
            .get(http::header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|e| e.trim().eq_ignore_ascii_case("identity"))
}

/// The longest tag or `href` text kept back while waiting for its end; past it the rest of the
/// body passes unchanged (bounded memory whatever the application sends).
const MAX_PENDING: usize = 64 * 1024;

/// Streams a multistatus body, mapping the text of every `href` element (any namespace prefix)
/// back with [`map_back`]. Memory is bounded by [`MAX_PENDING`].
pub struct HrefBody<B> {
    inner: B,
    base: String,
    hosts: Vec<String>,
    pending: BytesMut,
    in_href: bool,
    /// Gave up (a tag or href longer than `MAX_PENDING`): everything passes unchanged.
    passthrough: bool,
    done: bool,
}

impl<B> HrefBody<B> {
    /// Wraps `inner`, mapping `href`s out of `base` (absolute ones only when they name one of
    /// `hosts`).
    pub fn new(inner: B, base: &str, hosts: Vec<String>) -> HrefBody<B> {
        HrefBody {
            inner,
            base: base.to_owned(),
            hosts,
            pending: BytesMut::new(),
            in_href: false,
            passthrough: false,
            done: false,
        }
    }

    /// Processes `pending`, returning what can be sent now and keeping what cannot.
    fn process(&mut self, at_end: bool) -> Bytes {
        if self.passthrough || at_end {
            return self.pending.split().freeze();
        }
        let buf = &self.pending[..];
        let mut out = Vec::with_capacity(buf.len() + 16);
        let mut i = 0;
        loop {
            if self.in_href {
                let Some(lt) = buf[i..].iter().position(|&b| b == b'<') else {
                    break;
                };
                let text = &buf[i..i + lt];
                match std::str::from_utf8(text)
                    .ok()
                    .and_then(|t| map_back(&self.base, &self.hosts, t.trim()))
                {
                    Some(mapped) => out.extend_from_slice(mapped.as_bytes()),
                    None => out.extend_from_slice(text),
                }
                self.in_href = false;
                i += lt;
            } else {
                let Some(lt) = buf[i..].iter().position(|&b| b == b'<') else {
                    out.extend_from_slice(&buf[i..]);
                    i = buf.len();
                    break;
                };
                out.extend_from_slice(&buf[i..i + lt]);
                i += lt;
                let Some(gt) = buf[i..].iter().position(|&b| b == b'>') else {
                    break;
                };
                let tag = &buf[i..=i + gt];
                out.extend_from_slice(tag);
                self.in_href = opens_href(tag);
                i += gt + 1;
            }
        }
        let _ = self.pending.split_to(i);
        if self.pending.len() > MAX_PENDING {
            self.passthrough = true;
            out.extend_from_slice(&self.pending.split());
        }
        Bytes::from(out)
    }
}

/// Whether `tag` (`<…>`) is a start tag named `href` in any namespace (`<D:href>`, `<href>`),
/// not self-closing.
fn opens_href(tag: &[u8]) -> bool {
    let inner = &tag[1..tag.len() - 1];
    if inner.ends_with(b"/") {
        return false;
    }
    let name_end = inner
        .iter()
        .position(|b| b.is_ascii_whitespace() || *b == b'/')
        .unwrap_or(inner.len());
    let name = &inner[..name_end];
    let local = name
        .iter()
        .rposition(|&b| b == b':')
        .map_or(name, |c| &name[c + 1..]);
    local.eq_ignore_ascii_case(b"href")
}

impl<B> Body for HrefBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.pending.extend_from_slice(&data);
                        let out = this.process(false);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    // Trailers end the body: what is kept back goes first, then them.
                    Err(trailers) => {
                        let out = this.process(true);
                        if out.is_empty() {
                            this.done = true;
                            return Poll::Ready(Some(Ok(trailers)));
                        }
                        // Rare (trailers on a multistatus): the trailers are dropped rather than
                        // held, which no WebDAV client relies on.
                        this.done = true;
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                },
                Poll::Ready(None) => {
                    this.done = true;
                    let out = this.process(true);
                    return if out.is_empty() {
                        Poll::Ready(None)
                    } else {
                        Poll::Ready(Some(Ok(Frame::data(out))))
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;

    /// A body that yields the given chunks one frame each.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    #[test]
    fn paths_under_the_base_are_mapped_back_and_others_left() {
        assert_eq!(strip("/dav", "/dav/sub/").as_deref(), Some("/sub/"));
        assert_eq!(strip("/dav", "/dav").as_deref(), Some("/"));
        assert_eq!(strip("/dav", "/dav?x=1").as_deref(), Some("/?x=1"));
        assert_eq!(strip("/dav", "/davx/a"), None);
        assert_eq!(strip("/dav", "/other"), None);
        let hosts = vec!["files.example".to_owned(), "127.0.0.1:8000".to_owned()];
        assert_eq!(
            map_back("/dav", &hosts, "http://files.example/dav/sub/").as_deref(),
            Some("http://files.example/sub/")
        );
        assert_eq!(
            map_back("/dav", &hosts, "http://127.0.0.1:8000/dav").as_deref(),
            Some("http://127.0.0.1:8000/")
        );
        assert_eq!(map_back("/dav", &hosts, "http://files.example/other"), None);
        assert_eq!(
            map_back("/dav", &hosts, "https://elsewhere.example/dav/x"),
            None
        );
        assert_eq!(map_back("/dav", &hosts, "//evil.example/dav/x"), None);
        assert_eq!(map_back("/dav", &hosts, "sub/x"), None);
        assert_eq!(
            map_in("/dav", "http://files.example", "/new%20name.txt"),
            Some(HeaderValue::from_static(
                "http://files.example/dav/new%20name.txt"
            ))
        );
        assert_eq!(
            map_in("/dav", "", "/a/b"),
            Some(HeaderValue::from_static("/dav/a/b"))
        );
    }

    #[test]
    fn a_destination_is_read_strictly() {
        let read = |values: &[&str]| {
            let mut h = http::HeaderMap::new();
            for v in values {
                h.append(DESTINATION, HeaderValue::from_str(v).unwrap());
            }
            destination(&h).map(|d| d.map(|d| (d.origin.to_owned(), d.path.to_owned())))
        };
        assert_eq!(read(&[]).unwrap(), None);
        assert_eq!(
            read(&["http://h.example/a/b"]).unwrap(),
            Some(("http://h.example".into(), "/a/b".into()))
        );
        assert_eq!(
            read(&["HTTPS://h.example:8443/"]).unwrap(),
            Some(("HTTPS://h.example:8443".into(), "/".into()))
        );
        assert_eq!(read(&["/a"]).unwrap(), Some((String::new(), "/a".into())));
        // Forms that parsers split differently, or that name no path.
        for bad in [
            "http:/admin/secret.txt?://files.example/public/b.txt",
            "a/../../admin/x#://h/public/b",
            "http://h.example/public/b?x",
            "http://h.example/public/b#x",
            "//h.example/a",
            "http:///a",
            "http://user@h.example/a",
            "http://h.example",
            "ftp://h.example/a",
            "public/b",
        ] {
            assert!(read(&[bad]).is_err(), "{bad}");
        }
        assert!(read(&["/public/b", "/admin/x"]).is_err());
    }

    async fn rewrite(chunks: &[&str]) -> String {
        let frames = chunks
            .iter()
            .map(|c| Bytes::copy_from_slice(c.as_bytes()))
            .collect();
        let body = HrefBody::new(Chunks(frames), "/dav", vec!["h.example".into()]);
        let bytes = body.collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn multistatus_hrefs_are_mapped_whatever_the_chunking() {
        let doc = "<?xml version=\"1.0\"?><D:multistatus xmlns:D=\"DAV:\"><D:response>\
                   <D:href>/dav/sub/</D:href><D:propstat><D:prop><D:displayname>/dav/x\
                   </D:displayname></D:prop></D:propstat></D:response><D:response>\
                   <D:href>http://h.example/dav/sub/f%C3%A9.txt</D:href><href/>\
                   <lp1:href xmlns:lp1=\"x\">/elsewhere</lp1:href></D:response></D:multistatus>";
        let want = doc
            .replace("<D:href>/dav/sub/<", "<D:href>/sub/<")
            .replace("http://h.example/dav/sub/", "http://h.example/sub/");
        assert_eq!(rewrite(&[doc]).await, want);
        // Every split point, including inside tags and inside an href.
        for cut in 1..doc.len() {
            if !doc.is_char_boundary(cut) {
                continue;
            }
            assert_eq!(
                rewrite(&[&doc[..cut], &doc[cut..]]).await,
                want,
                "cut at {cut}"
            );
        }
    }

    #[tokio::test]
    async fn an_endless_tag_passes_unchanged_in_bounded_memory() {
        let long = format!("<D:href>/dav/a</D:href><{}", "x".repeat(MAX_PENDING + 10));
        let chunks: Vec<&str> = long
            .as_bytes()
            .chunks(1000)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let out = rewrite(&chunks).await;
        assert!(out.starts_with("<D:href>/a</D:href><xxx"));
        assert_eq!(out.len(), long.len() - 4);
    }
}
