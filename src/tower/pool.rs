//! The pools the layer serves requests with: either flavour's `AuroraPool`.

use std::sync::Arc;

mod sealed {
    use std::sync::Arc;

    use crate::error::Error;

    /// Classifies a driver's error that reached a response unclassified, as the request's pool
    /// does (a lost connection makes its monitor re-read the topology at once).
    #[derive(Clone)]
    pub struct Classifier(pub(super) Arc<dyn Fn(Error) -> Error + Send + Sync>);

    impl Classifier {
        pub fn classify(&self, err: Error) -> Error {
            (self.0)(err)
        }
    }

    impl std::fmt::Debug for Classifier {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Classifier")
        }
    }

    /// What the layer needs of a pool and users need not see.
    pub trait Sealed {
        fn classifier(&self) -> Classifier;
    }
}

pub(crate) use sealed::Classifier;

/// A pool [`AuroraLayer`](super::AuroraLayer) can serve requests with: the sqlx flavour's
/// [`AuroraPool`](crate::AuroraPool) (feature `sqlx`) or the deadpool flavour's
/// [`deadpool::AuroraPool`](crate::deadpool::AuroraPool) (feature `deadpool`). Sealed.
pub trait LayerPool: sealed::Sealed + Clone + Send + Sync + 'static {
    /// What [`Db::writer`](super::Db::writer) and [`Db::reader`](super::Db::reader) hand
    /// out: a `sqlx::PgPool`, or a [`deadpool::Pool`](crate::deadpool::Pool).
    type Handle;

    /// The writer's pool ([`AuroraPool::writer`](crate::AuroraPool::writer)).
    fn writer_handle(&self) -> Self::Handle;

    /// The readers' pool ([`AuroraPool::reader`](crate::AuroraPool::reader)).
    fn reader_handle(&self) -> Self::Handle;
}

/// The pool of [`AuroraLayer`](super::AuroraLayer) and [`Db`](super::Db) when none is named:
/// the sqlx flavour's. The deadpool flavour's is always named:
/// `Db<aurora_pool::deadpool::AuroraPool>`.
#[cfg(feature = "sqlx")]
pub type DefaultPool = crate::AuroraPool;

/// Without the `sqlx` feature there is no default pool: name it,
/// `Db<aurora_pool::deadpool::AuroraPool>`. (A default that changed with the features would
/// change the meaning of a bare `Db` when another crate of the build turns `sqlx` on.)
#[cfg(not(feature = "sqlx"))]
#[derive(Debug, Clone, Copy)]
pub enum DefaultPool {}

#[cfg(feature = "sqlx")]
impl sealed::Sealed for crate::AuroraPool {
    fn classifier(&self) -> Classifier {
        let pool = self.clone();
        Classifier(Arc::new(move |err| pool.classify_error(err)))
    }
}

#[cfg(feature = "sqlx")]
impl LayerPool for crate::AuroraPool {
    type Handle = sqlx::PgPool;

    fn writer_handle(&self) -> sqlx::PgPool {
        self.writer()
    }

    fn reader_handle(&self) -> sqlx::PgPool {
        self.reader()
    }
}

#[cfg(feature = "deadpool")]
impl sealed::Sealed for crate::deadpool::AuroraPool {
    fn classifier(&self) -> Classifier {
        let pool = self.clone();
        Classifier(Arc::new(move |err| pool.classify_error(err)))
    }
}

#[cfg(feature = "deadpool")]
impl LayerPool for crate::deadpool::AuroraPool {
    type Handle = crate::deadpool::Pool;

    fn writer_handle(&self) -> crate::deadpool::Pool {
        self.writer()
    }

    fn reader_handle(&self) -> crate::deadpool::Pool {
        self.reader()
    }
}
