//! The classifier of the pool serving the request, while the layer's service polls the
//! handler: errors turned into responses are classified by it.

use std::future::Future;

use tokio::task::futures::TaskLocalFuture;

use super::pool::Classifier;
use crate::error::Error;

tokio::task_local! {
    static REQUEST_POOL: Classifier;
}

/// `future` with `classifier` as the request's pool's while it is polled.
pub(crate) fn serve<F: Future>(
    classifier: Classifier,
    future: F,
) -> TaskLocalFuture<Classifier, F> {
    REQUEST_POOL.scope(classifier, future)
}

/// `err` classified by the request's pool, when the layer serves the request; unchanged
/// otherwise.
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
pub(crate) fn classify_by_request_pool(err: Error) -> Error {
    match REQUEST_POOL.try_with(Classifier::clone) {
        Ok(classifier) => classifier.classify(err),
        Err(_) => err,
    }
}
