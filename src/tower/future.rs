//! The response future: marks the session after a write and maps failover responses.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{HeaderValue, Response, StatusCode};
use pin_project_lite::pin_project;

use super::db::FailoverResponse;
use super::layer::{ReadYourWrites, now_ms};
use super::pool::Classifier;
use tokio::task::futures::TaskLocalFuture;

pin_project! {
    /// The response future of [`AuroraService`](super::AuroraService).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: TaskLocalFuture<Classifier, F>,
        wrote: Arc<AtomicBool>,
        read_your_writes: Option<ReadYourWrites>,
        retry_after: Option<Duration>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: TaskLocalFuture<Classifier, F>,
        wrote: Arc<AtomicBool>,
        read_your_writes: Option<ReadYourWrites>,
        retry_after: Option<Duration>,
    ) -> ResponseFuture<F> {
        ResponseFuture {
            inner,
            wrote,
            read_your_writes,
            retry_after,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(read_your_writes) = this.read_your_writes.as_ref()
            && this.wrote.load(Ordering::Acquire)
        {
            read_your_writes.mark(response.headers_mut(), now_ms());
        }
        if let Some(retry_after) = *this.retry_after
            && response.extensions().get::<FailoverResponse>().is_some()
        {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        Poll::Ready(Ok(response))
    }
}
