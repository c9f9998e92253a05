//! sqlx's errors and the crate's, both ways: a sqlx error classified as the crate's (its
//! SQLSTATE kept, the sqlx error as `source()`), and the crate's error as a `sqlx::Error`
//! for work written the way sqlx users write it (`?` on sqlx calls, a closure returning
//! `sqlx::Error`), from which the crate's classification stays reachable
//! ([`Error::inside`]).

use crate::error::Error;

/// Wraps a sqlx error: server errors keep their SQLSTATE, broken connections and I/O are
/// connect errors, pool timeouts are timeouts.
pub(crate) fn from_sqlx(err: sqlx::Error, context: &str) -> Error {
    if let Some(refused) = certificate_refused(&err, context) {
        return refused.with_source(err);
    }
    let sqlstate = sqlstate_of(&err);
    let wrapped = match &err {
        sqlx::Error::Database(_) => Error::driver(format!("{context} failed")),
        sqlx::Error::PoolTimedOut => Error::timeout(format!("{context} timed out")),
        sqlx::Error::PoolClosed => Error::closed(),
        sqlx::Error::Tls(_) => Error::connect(format!("{context} failed")).handshake_failed(),
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => {
            Error::connect(format!("{context} failed"))
        }
        _ => Error::driver(format!("{context} failed")),
    };
    wrapped.with_sqlstate(sqlstate).with_source(err)
}

/// A handshake that refused the server's certificate, as an error naming `context` (the
/// host); the reason is in the sqlx error, its source. sqlx hands the TLS library's error on
/// as text (rustls's inside an I/O error), so the text is what tells.
pub(crate) fn certificate_refused(err: &sqlx::Error, context: &str) -> Option<Error> {
    let text = match err {
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Tls(tls) => tls.to_string(),
        _ => return None,
    }
    .to_lowercase();
    // rustls; OpenSSL; Secure Transport (macOS); SChannel (Windows).
    let refused = [
        "invalid peer certificate",
        "certificate verify failed",
        "certificate was not trusted",
        "certificate is not trusted",
        "issued by an authority that is not trusted",
        "target principal name is incorrect",
        "certificate has expired",
    ]
    .iter()
    .any(|sign| text.contains(sign));
    refused.then(|| {
        Error::certificate(format!(
            "{context} failed: the server's certificate was refused"
        ))
    })
}

/// For `?` on sqlx calls inside [`transaction`](crate::AuroraPool::transaction)'s work: the
/// error keeps its SQLSTATE and the sqlx error as `source()`; the transaction classifies it
/// (a lost connection is a failover) with the role it knows.
impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Error {
        from_sqlx(err, "the statement")
    }
}

/// The SQLSTATE of a server error.
pub(crate) fn sqlstate_of(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|db| db.code())
        .map(|code| code.into_owned())
}

impl Error {
    /// The crate's error inside a `sqlx::Error` made from one (`From<Error> for sqlx::Error`),
    /// so that work written with `sqlx::Error` still reads the crate's classification:
    ///
    /// ```no_run
    /// # async fn f(pool: aurora_pool::AuroraPool) {
    /// let result = pool
    ///     .transaction(|conn| {
    ///         Box::pin(async move { sqlx::query("UPDATE stock SET n = n - 1").execute(conn).await })
    ///     })
    ///     .await;
    /// if let Err(err) = result {
    ///     match aurora_pool::Error::inside(&err) {
    ///         Some(pool_error) if pool_error.is_transaction_state_unknown() => { /* check, never resend */ }
    ///         Some(pool_error) => eprintln!("the pool: {pool_error}"),
    ///         None => eprintln!("the database: {err}"),
    ///     }
    /// }
    /// # }
    /// ```
    pub fn inside(err: &sqlx::Error) -> Option<&Error> {
        match err {
            sqlx::Error::Io(io) => io.get_ref()?.downcast_ref::<Error>(),
            _ => None,
        }
    }
}

/// For work that returns `sqlx::Error` (to `transaction`, or a caller's `?`): a server's
/// error that the crate passed on unchanged comes back as the original `sqlx::Error` (so
/// `as_database_error()`, `is_unique_violation()` work as before); a closed pool is
/// `PoolClosed`; everything else the crate decided (a failover, an unknown outcome, a
/// timeout) is an `Io` error whose inner error is the crate's ([`Error::inside`]), of kind
/// `ConnectionAborted` for a lost connection, `TimedOut` for a wait that ran out, `Other`
/// otherwise.
impl From<Error> for sqlx::Error {
    fn from(err: Error) -> sqlx::Error {
        if err.is_closed() {
            return sqlx::Error::PoolClosed;
        }
        let err = match err.into_driver_source::<sqlx::Error>() {
            Ok(original) => return original,
            Err(err) => err,
        };
        let kind = if err.is_failover() || err.is_outcome_unknown() {
            std::io::ErrorKind::ConnectionAborted
        } else if err.is_timeout() || err.is_failover_failed() {
            std::io::ErrorKind::TimedOut
        } else {
            std::io::ErrorKind::Other
        };
        sqlx::Error::Io(std::io::Error::new(kind, err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sqlx's rustls backends hand a refused certificate on as an I/O error around
    /// rustls's (the native-tls backend's is tested against a server in `tls_modes`).
    #[cfg(feature = "deadpool")]
    #[test]
    fn a_certificate_rustls_refused_is_told_from_other_io_errors() {
        use rustls::CertificateError;
        let refused = |reason: CertificateError| {
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(reason),
            ))
        };
        for reason in [CertificateError::UnknownIssuer, CertificateError::Expired] {
            let err = certificate_refused(&refused(reason), "connecting to db:5432")
                .expect("a refused certificate");
            assert!(err.is_certificate_refused(), "{err}");
            assert!(err.to_string().contains("db:5432"), "{err}");
        }
        let reset = sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into());
        assert!(certificate_refused(&reset, "connecting to db:5432").is_none());
        let protocol = sqlx::Error::Protocol("unexpected message".into());
        assert!(certificate_refused(&protocol, "connecting to db:5432").is_none());
    }
}
