//! The error types that the work of the deadpool flavour's `transaction` may return.

use crate::error::Error;

/// An error type the work of [`AuroraPool::transaction`](super::AuroraPool::transaction)
/// may return, and what the call then returns.
///
/// Two kinds are accepted:
/// - any `E` that [`aurora_pool::Error`](crate::Error) converts into (the crate's error
///   itself, or an application's own error type): the call returns `E`, the work's own
///   errors unchanged;
/// - `tokio_postgres::Error`, the error of the client's own methods, so that work written
///   the way tokio-postgres users write it (`client.execute(..).await` as the last
///   expression, `?` on the client's calls) needs no annotation: the call returns
///   [`aurora_pool::Error`](crate::Error), which classifies it and keeps it as its
///   [`source`](std::error::Error::source) (tokio-postgres's error has no public
///   constructor, so it cannot carry the crate's verdicts the way `sqlx::Error` does).
///
/// Work whose error type nothing names (it ends in `Ok(..)` and only uses `?`) matches both
/// and needs its type spelled out: `Ok::<_, aurora_pool::Error>(..)`, or
/// `Ok::<_, tokio_postgres::Error>(..)`.
///
/// ```no_run
/// # async fn f(pool: aurora_pool::deadpool::AuroraPool) -> aurora_pool::Result<()> {
/// let inserted: u64 = pool
///     .transaction(|client| {
///         Box::pin(async move {
///             client
///                 .execute("INSERT INTO audit (event) VALUES ('login')", &[])
///                 .await
///         })
///     })
///     .await?;
/// # let _ = inserted; Ok(()) }
/// ```
pub trait WorkError: Send + Sized + 'static {
    /// What `transaction` returns when the work returns this error type.
    type Returned;

    /// The crate's own error (no writer, an unknown outcome, a closed pool) as the returned
    /// type.
    fn from_pool(err: Error) -> Self::Returned;

    /// The work's own error (one the crate did not recognise as a database error) as the
    /// returned type.
    fn into_returned(self) -> Self::Returned;
}

impl<E: From<Error> + Send + 'static> WorkError for E {
    type Returned = E;

    fn from_pool(err: Error) -> E {
        E::from(err)
    }

    fn into_returned(self) -> E {
        self
    }
}

impl WorkError for tokio_postgres::Error {
    type Returned = Error;

    fn from_pool(err: Error) -> Error {
        err
    }

    fn into_returned(self) -> Error {
        // Never reached in practice: the work's driver errors are recognised and classified
        // before they could be kept aside.
        super::error::from_pg(self, "the statement")
    }
}
