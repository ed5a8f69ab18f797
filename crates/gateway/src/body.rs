//! Response bodies: one boxed type for proxied and generated bodies, and a wrapper that writes
//! the access-log line when the body is finished (or the client goes away), so `time-taken`
//! covers the whole transfer.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;

use store::state::InFlightGuard;

use crate::access_log::{AccessLog, LogRecord};

/// The body type of every response the gateway sends.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The body of a request the gateway handles: the connection's (hyper's `Incoming`), or bytes
/// already in memory (a request made in process, as the tests do). An enum, not a box: the
/// proxy path pays one branch per frame, no allocation.
pub enum RequestBody {
    /// Read from the client's connection.
    Incoming(hyper::body::Incoming),
    /// Complete bytes (taken by the first poll).
    Full(Option<Bytes>),
}

impl From<hyper::body::Incoming> for RequestBody {
    fn from(body: hyper::body::Incoming) -> RequestBody {
        RequestBody::Incoming(body)
    }
}

impl From<Bytes> for RequestBody {
    fn from(bytes: Bytes) -> RequestBody {
        RequestBody::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl From<&'static str> for RequestBody {
    fn from(s: &'static str) -> RequestBody {
        Bytes::from_static(s.as_bytes()).into()
    }
}

impl From<String> for RequestBody {
    fn from(s: String) -> RequestBody {
        Bytes::from(s).into()
    }
}

impl From<()> for RequestBody {
    fn from((): ()) -> RequestBody {
        RequestBody::Full(None)
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Incoming(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Incoming(b) => b.is_end_stream(),
            RequestBody::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Incoming(b) => b.size_hint(),
            RequestBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// A record waiting for its response to end.
pub struct PendingLog {
    log: Arc<AccessLog>,
    record: LogRecord,
}

impl PendingLog {
    /// Wraps a record for `log`.
    pub fn new(log: Arc<AccessLog>, record: LogRecord) -> PendingLog {
        PendingLog { log, record }
    }
}

impl Drop for PendingLog {
    fn drop(&mut self) {
        self.log.write(std::mem::take(&mut self.record));
    }
}

pin_project_lite::pin_project! {
    /// A body that writes its access-log line when dropped.
    pub struct LoggedBody<B> {
        #[pin]
        inner: B,
        pending: Option<PendingLog>,
        guard: Option<InFlightGuard>,
    }
}

impl<B> LoggedBody<B> {
    /// Wraps `inner`; `pending` is written when the body is dropped.
    pub fn new(inner: B, pending: Option<PendingLog>) -> LoggedBody<B> {
        LoggedBody {
            inner,
            pending,
            guard: None,
        }
    }

    /// Keeps `guard` (an in-flight slot) until the body is finished or dropped.
    pub fn holding(mut self, guard: Option<InFlightGuard>) -> LoggedBody<B> {
        self.guard = guard;
        self
    }
}

impl<B: HttpBody<Data = Bytes>> HttpBody for LoggedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight on its connection until the
    /// body is finished or dropped (the connection's idle timer waits for it).
    pub struct ActiveBody<B> {
        #[pin]
        inner: B,
        active: crate::connection::ActiveRequest,
    }
}

/// Wraps `inner` so that `active` ends with it.
pub(crate) fn holding_active<B>(
    inner: B,
    active: crate::connection::ActiveRequest,
) -> ActiveBody<B> {
    ActiveBody { inner, active }
}

impl<B: HttpBody<Data = Bytes>> HttpBody for ActiveBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
