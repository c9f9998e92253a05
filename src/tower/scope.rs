//! The pool serving the request, while the layer's service polls the handler: errors turned
//! into responses are classified by it.

use std::future::Future;

use tokio::task::futures::TaskLocalFuture;

use crate::AuroraPool;

tokio::task_local! {
    static REQUEST_POOL: AuroraPool;
}

/// `future` with `pool` as the request's pool while it is polled.
pub(crate) fn serve<F: Future>(pool: AuroraPool, future: F) -> TaskLocalFuture<AuroraPool, F> {
    REQUEST_POOL.scope(pool, future)
}

/// `with(pool, value)` with the request's pool, when the layer serves the request; `value`
/// unchanged otherwise.
#[cfg_attr(not(feature = "axum"), allow(dead_code))]
pub(crate) fn with_request_pool<T>(value: T, with: impl FnOnce(&AuroraPool, T) -> T) -> T {
    match REQUEST_POOL.try_with(AuroraPool::clone) {
        Ok(pool) => with(&pool, value),
        Err(_) => value,
    }
}
