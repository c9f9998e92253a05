//! What a request gets from the layer.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::pool::{DefaultPool, LayerPool};
use crate::topology::Role;

/// The pool and the role the layer chose for a request; a request extension (and, with the
/// `axum` feature, an extractor).
///
/// Use [`writer`](Db::writer) for writes, so that the layer can mark the session for
/// read-your-writes, and [`reader`](Db::reader) for reads.
#[derive(Clone)]
pub struct Db<P = DefaultPool> {
    pool: P,
    role: Role,
    sticky: bool,
    wrote: Arc<AtomicBool>,
}

impl<P: LayerPool> Db<P> {
    pub(crate) fn new(pool: P, role: Role, sticky: bool, wrote: Arc<AtomicBool>) -> Db<P> {
        Db {
            pool,
            role,
            sticky,
            wrote,
        }
    }

    /// The pool.
    pub fn pool(&self) -> &P {
        &self.pool
    }

    /// The role chosen for this request.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the role is the writer because the session wrote within the read-your-writes
    /// window.
    pub fn is_sticky(&self) -> bool {
        self.sticky
    }

    /// The writer's pool; marks the session as having written.
    pub fn writer(&self) -> P::Handle {
        self.mark_written();
        self.pool.writer_handle()
    }

    /// The pool for reads in this request: a reader, or the writer when the request's role
    /// is the writer (a write request, or a session within its read-your-writes window).
    pub fn reader(&self) -> P::Handle {
        match self.role {
            Role::Writer => self.pool.writer_handle(),
            Role::Reader => self.pool.reader_handle(),
        }
    }

    /// Marks the session as having written, for writes made without [`Db::writer`] (for
    /// example through [`AuroraPool::run`](crate::AuroraPool::run)).
    pub fn mark_written(&self) {
        self.wrote.store(true, Ordering::Release);
    }
}

impl<P> fmt::Debug for Db<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("role", &self.role)
            .field("sticky", &self.sticky)
            .field("wrote", &self.wrote.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A response extension saying "this failed because of a database failover": with
/// [`AuroraLayer::failover_to_503`](super::AuroraLayer::failover_to_503) the layer turns
/// such a response into `503` with `Retry-After`. Insert it in your own error responses, or
/// let [`Error`](crate::Error)'s `IntoResponse` (feature `axum`) do it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverResponse;

#[cfg(feature = "axum")]
mod axum_impls {
    use axum::extract::FromRequestParts;
    use http::StatusCode;
    use http::request::Parts;

    use super::Db;
    use crate::tower::LayerPool;

    impl<S: Send + Sync, P: LayerPool> FromRequestParts<S> for Db<P> {
        type Rejection = (StatusCode, String);

        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Db<P>, Self::Rejection> {
            parts.extensions.get::<Db<P>>().cloned().ok_or_else(|| {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "no aurora_pool::tower::AuroraLayer for {} is installed on this route",
                        std::any::type_name::<P>()
                    ),
                )
            })
        }
    }
}
