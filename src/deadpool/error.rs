//! tokio-postgres errors in the crate's error model.

use crate::error::Error;

/// Wraps a tokio-postgres error: server errors keep their SQLSTATE; a closed connection, an
/// I/O failure or a refused connect is a connect error (network class).
pub(crate) fn from_pg(err: tokio_postgres::Error, context: &str) -> Error {
    let sqlstate = err.code().map(|code| code.code().to_owned());
    let wrapped = if let Some(db) = err.as_db_error() {
        // tokio-postgres shows a server error as "db error": the server's message is what
        // tells (as sqlx shows it).
        Error::driver(format!("{context} failed ({})", db.message()))
    } else if err.is_closed()
        || std::error::Error::source(&err).is_some_and(|s| s.is::<std::io::Error>())
    {
        Error::connect(format!("{context} failed"))
    } else {
        Error::driver(format!("{context} failed"))
    };
    wrapped.with_sqlstate(sqlstate).with_source(err)
}

/// For `?` on tokio-postgres calls inside [`transaction`](super::AuroraPool::transaction)'s
/// work: the error keeps its SQLSTATE and the driver's error as `source()`; the transaction
/// classifies it with the role it knows.
impl From<tokio_postgres::Error> for Error {
    fn from(err: tokio_postgres::Error) -> Error {
        from_pg(err, "the statement")
    }
}

/// Wraps an error from opening a connection: anything but an answer of the server (TLS
/// refused or failed, I/O, a broken handshake) is a connect error, as in the sqlx flavour.
pub(crate) fn from_connect(err: tokio_postgres::Error, context: &str) -> Error {
    if err.code().is_some() {
        return from_pg(err, context);
    }
    if let Some(reason) = super::tls::certificate_refusal(&err) {
        return Error::certificate(format!(
            "{context} failed: the server's certificate was refused ({reason})"
        ))
        .with_source(err);
    }
    // tokio-postgres keeps its error kinds private; its TLS failures say so.
    let handshake = err.to_string().contains("TLS");
    // Its Display stops at "error performing TLS handshake": the reason (an unknown issuer,
    // a name mismatch, an expired certificate) is in the errors below it.
    let mut causes = Vec::new();
    let mut cause = std::error::Error::source(&err);
    while let Some(inner) = cause {
        causes.push(inner.to_string());
        cause = inner.source();
    }
    let message = match causes.last() {
        Some(reason) => format!("{context} failed ({reason})"),
        None => format!("{context} failed"),
    };
    let wrapped = Error::connect(message).with_source(err);
    if handshake {
        wrapped.handshake_failed()
    } else {
        wrapped
    }
}

/// For `?` on a checkout of a handed-out [`Pool`](super::Pool) (`pool.writer().get().await?`)
/// in a function returning the crate's error: an axum handler, or `transaction`'s work.
impl From<::deadpool::managed::PoolError<Error>> for Error {
    fn from(err: ::deadpool::managed::PoolError<Error>) -> Error {
        from_pool(err, "checking out a connection")
    }
}

/// Wraps a pool error.
pub(crate) fn from_pool(err: ::deadpool::managed::PoolError<Error>, context: &str) -> Error {
    use ::deadpool::managed::{HookError, PoolError, TimeoutType};
    match err {
        PoolError::Backend(err) | PoolError::PostCreateHook(HookError::Backend(err)) => err,
        PoolError::PostCreateHook(HookError::Message(message)) => Error::driver(format!(
            "{context} failed: a post_create hook refused the new connection ({message})"
        )),
        PoolError::Closed => Error::closed(),
        // No connection could be opened in time: the instance is unreachable.
        PoolError::Timeout(TimeoutType::Create) => {
            Error::connect(format!("{context} failed: connecting timed out"))
        }
        PoolError::Timeout(kind) => Error::timeout(format!("{context} timed out ({kind:?})")),
        other => Error::driver(format!("{context} failed")).with_source(other.to_string()),
    }
}
