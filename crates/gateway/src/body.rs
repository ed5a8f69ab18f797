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
