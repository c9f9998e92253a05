//! The crate's error type.
//!
//! [`Error`] is opaque (a boxed private kind, like `tokio_postgres::Error`) so that it can grow
//! new cases without breaking users. Ask it what happened with [`Error::kind`] or the
//! predicates ([`Error::is_config`], [`Error::is_connect`], ...); reach the driver's own error
//! with [`Error::as_sqlx`] / [`Error::as_tokio_postgres`] or through
//! [`std::error::Error::source`]. `Display` prints this error's own message only; the
//! alternate form (`{:#}`) adds its causes, as `anyhow` does.

use std::error::Error as StdError;
use std::fmt;

mod class;
mod context;
mod kind;

pub use class::ErrorClass;
pub use context::{ErrorContext, InstanceState, RecentEvent};
pub use kind::ErrorKind;

/// A boxed error from a driver or from the operating system.
pub(crate) type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The error type of every fallible operation in this crate.
///
/// Messages never contain passwords or tokens: they name parameters, instances and addresses.
///
/// `{}` prints this error's message alone; its cause is [`source()`](StdError::source), as
/// error reporters that walk the chain expect. `{:#}` prints the message and every cause
/// after it, for a log line:
///
/// ```
/// # fn show(err: &aurora_pool::Error) {
/// tracing::warn!(kind = %err.kind(), error = %format_args!("{err:#}"), "query failed");
/// # }
/// ```
pub struct Error(Box<Inner>);

struct Inner {
    kind: Kind,
    message: String,
    sqlstate: Option<String>,
    source: Option<BoxError>,
    /// The server answered but the session could not start (a TLS handshake it broke off).
    busy: bool,
    /// The cluster's kind means this SQLSTATE as a network failure (see
    /// `Dialect::read_error`).
    network: bool,
    /// What the pool knew when a failover-class error happened.
    context: Option<Box<ErrorContext>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// A configuration value is missing, malformed or contradicts another one.
    Config { parameter: String },
    /// A physical connection could not be opened or broke.
    Connect,
    /// The TLS handshake refused the server's certificate.
    Certificate,
    /// The cluster's topology could not be read or made no sense.
    Topology,
    /// Two different clusters were registered under one `cluster_id`.
    ClusterIdMismatch { cluster_id: String },
    /// A reader was demanded, none is available and falling back to the writer is disabled.
    NoReader,
    /// The pool was closed.
    Closed,
    /// A wait ran out of time.
    Timeout,
    /// The connection was lost or its instance stopped being the writer; the cluster is
    /// being (or has been) failed over. The statement may be retried on a fresh checkout.
    Failover,
    /// The connection was lost inside a transaction: it was rolled back or it may have
    /// committed. Restart the whole transaction if it is safe to repeat.
    TransactionStateUnknown,
    /// The connection was lost (or given up) after the work's statements were sent outside a
    /// transaction: they may have been applied, or not.
    OutcomeUnknown,
    /// No usable instance for the role was found within `failover_timeout_ms`.
    FailoverFailed,
    /// Any other error reported by the database driver.
    Driver,
    /// A credential provider could not supply credentials (AWS unreachable, a secret
    /// without the expected keys, ...).
    Credentials,
    /// The members of the URL's custom endpoint could not be read in time.
    CustomEndpoint,
    /// The caller's work (in `run` or `transaction`) failed with an error of its own type,
    /// which is handed back unchanged; this kind never reaches the caller.
    Work,
}

/// SQLSTATEs of an instance that is alive but refuses new sessions for now: too many
/// connections (53300), out of resources (53000, 53200), starting up (57P03).
const BUSY_SQLSTATES: [&str; 4] = ["53300", "53000", "53200", "57P03"];

impl Error {
    fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error(Box::new(Inner {
            kind,
            message: message.into(),
            sqlstate: None,
            source: None,
            busy: false,
            network: false,
            context: None,
        }))
    }

    pub(crate) fn config(parameter: &str, message: impl Into<String>) -> Self {
        Self::new(
            Kind::Config {
                parameter: parameter.to_owned(),
            },
            message,
        )
    }

    pub(crate) fn connect(message: impl Into<String>) -> Self {
        Self::new(Kind::Connect, message)
    }

    /// The server's certificate was refused: `message` says for which host, the source why.
    pub(crate) fn certificate(message: impl Into<String>) -> Self {
        Self::new(Kind::Certificate, message)
    }

    pub(crate) fn topology(message: impl Into<String>) -> Self {
        Self::new(Kind::Topology, message)
    }

    pub(crate) fn cluster_id_mismatch(cluster_id: &str, message: impl Into<String>) -> Self {
        Self::new(
            Kind::ClusterIdMismatch {
                cluster_id: cluster_id.to_owned(),
            },
            message,
        )
    }

    pub(crate) fn no_reader(message: impl Into<String>) -> Self {
        Self::new(Kind::NoReader, message)
    }

    pub(crate) fn closed() -> Self {
        Self::new(Kind::Closed, "the pool is closed")
    }

    pub(crate) fn timeout(message: impl Into<String>) -> Self {
        Self::new(Kind::Timeout, message)
    }

    pub(crate) fn driver(message: impl Into<String>) -> Self {
        Self::new(Kind::Driver, message)
    }

    /// An error for a [`CredentialProvider`](crate::auth::CredentialProvider) of your own
    /// that cannot supply credentials; [`Error::is_credentials`] holds for it. The message
    /// must not contain secret values.
    pub fn credentials(message: impl Into<String>) -> Self {
        Self::new(Kind::Credentials, message)
    }

    #[cfg_attr(not(feature = "custom-endpoint"), allow(dead_code))]
    pub(crate) fn custom_endpoint_unavailable(message: impl Into<String>) -> Self {
        Self::new(Kind::CustomEndpoint, message)
    }

    /// Stands for an error of the caller's own type while the retry loop runs; see
    /// `pool::work`.
    pub(crate) fn work() -> Self {
        Self::new(Kind::Work, "the work failed with an error of its own")
    }

    /// Counts the error as a network failure whatever its SQLSTATE says (a dialect that
    /// means it so: see `Dialect::read_error`).
    pub(crate) fn count_as_network(mut self) -> Self {
        self.0.network = true;
        self
    }

    pub(crate) fn is_work(&self) -> bool {
        self.0.kind == Kind::Work
    }

    /// The work may have been applied: `message` says why it is not known.
    pub(crate) fn unknown_outcome(message: impl Into<String>) -> Self {
        Self::new(Kind::OutcomeUnknown, message)
    }

    /// `self` (a lost connection) happened after the work was sent: whether it was applied is
    /// not known. Keeps the message, SQLSTATE and source.
    pub(crate) fn outcome_unknown(mut self) -> Self {
        self.0.kind = Kind::OutcomeUnknown;
        self
    }

    pub(crate) fn failover(message: impl Into<String>) -> Self {
        Self::new(Kind::Failover, message)
    }

    pub(crate) fn failover_failed(message: impl Into<String>) -> Self {
        Self::new(Kind::FailoverFailed, message)
    }

    /// A read-only refusal taken for a demoted writer that turned out to be the writer
    /// still (read-only by configuration): the driver's error again.
    pub(crate) fn into_driver(mut self) -> Self {
        self.0.kind = Kind::Driver;
        self
    }

    /// The driver's own error of type `S` back, when this is a driver error passed on
    /// unchanged (no failover, unknown outcome or other verdict of the crate's); `self`
    /// otherwise.
    #[cfg(feature = "sqlx")]
    pub(crate) fn into_driver_source<S: StdError + 'static>(self) -> Result<S, Self> {
        if self.0.kind != Kind::Driver || !self.0.source.as_ref().is_some_and(|s| s.is::<S>()) {
            return Err(self);
        }
        let mut inner = self.0;
        match inner.source.take().map(|source| source.downcast::<S>()) {
            Some(Ok(original)) => Ok(*original),
            Some(Err(source)) => {
                inner.source = Some(source);
                Err(Error(inner))
            }
            None => Err(Error(inner)),
        }
    }

    /// The same error as a failover: the connection is gone or its instance was demoted.
    pub(crate) fn into_failover(mut self) -> Self {
        self.0.kind = Kind::Failover;
        self
    }

    /// Turns a failover error into a transaction-state-unknown one (same message, SQLSTATE
    /// and source): the failure happened inside a transaction.
    pub(crate) fn in_transaction(mut self) -> Self {
        if self.0.kind == Kind::Failover {
            self.0.kind = Kind::TransactionStateUnknown;
        }
        self
    }

    /// Attaches the underlying cause, reported by `source()`. Its `Display` is shown after
    /// the message, so it must not contain secret values either.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.0.source = Some(source.into());
        self
    }

    /// Adds what the user can do about the error to its message.
    pub(crate) fn with_hint(mut self, hint: &str) -> Self {
        self.0.message = format!("{}; {hint}", self.0.message);
        self
    }

    /// Marks a connect failure after the server answered (a broken-off TLS handshake): the
    /// instance is alive, only busy.
    pub(crate) fn handshake_failed(mut self) -> Self {
        self.0.busy = true;
        self
    }

    /// The instance answered but would not start a session now: full (53300), out of
    /// resources, starting up (57P03) or a broken-off TLS handshake. Alive, not dead: never
    /// a reason to fail over.
    pub(crate) fn is_busy(&self) -> bool {
        self.0.busy
            || self
                .0
                .sqlstate
                .as_deref()
                .is_some_and(|s| BUSY_SQLSTATES.contains(&s))
    }

    /// Whether the error is of a failover class (a lost connection, a failover, a wait for
    /// an instance that ran out, an unknown outcome) and has no [`ErrorContext`] yet.
    pub(crate) fn wants_context(&self) -> bool {
        self.0.context.is_none()
            && matches!(
                self.0.kind,
                Kind::Connect
                    | Kind::Failover
                    | Kind::FailoverFailed
                    | Kind::NoReader
                    | Kind::Timeout
                    | Kind::OutcomeUnknown
                    | Kind::TransactionStateUnknown
            )
    }

    /// Attaches what the pool knew when the error happened.
    pub(crate) fn with_context(mut self, context: ErrorContext) -> Self {
        self.0.context = Some(Box::new(context));
        self
    }

    /// What the pool knew when this failover-class error happened (the writer, each
    /// instance's role and state, the failover under way, the last cluster events), for
    /// errors from a pool's checkouts, `run`, `transaction` and `classify`. The alternate
    /// form (`{:#}`) prints it after the causes.
    pub fn context(&self) -> Option<&ErrorContext> {
        self.0.context.as_deref()
    }

    /// Attaches the SQLSTATE the server reported.
    pub(crate) fn with_sqlstate(mut self, sqlstate: Option<String>) -> Self {
        self.0.sqlstate = sqlstate;
        self
    }

    /// The configuration was invalid; [`Error::parameter`] names the culprit.
    pub fn is_config(&self) -> bool {
        matches!(self.0.kind, Kind::Config { .. })
    }

    /// The parameter a configuration error is about (its URL parameter name).
    pub fn parameter(&self) -> Option<&str> {
        match &self.0.kind {
            Kind::Config { parameter } => Some(parameter),
            _ => None,
        }
    }

    /// A connection could not be opened, or broke.
    pub fn is_connect(&self) -> bool {
        self.0.kind == Kind::Connect
    }

    /// Whether the instance's host itself answered by refusing or ending the connection (a
    /// TCP reset, a refused connect, an end of stream): proof that nothing serves there
    /// now. A name that did not resolve, a route that failed, a TLS or protocol error, a
    /// time-out prove nothing about the instance (DNS can fail on its own), nor does a
    /// `57P01` (one session ended by `pg_terminate_backend` gets it too): they count as
    /// ordinary missed probes.
    pub(crate) fn is_refused_or_closed(&self) -> bool {
        let mut source: Option<&(dyn StdError + 'static)> = StdError::source(self);
        while let Some(err) = source {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind::*;
                return matches!(
                    io.kind(),
                    ConnectionRefused
                        | ConnectionReset
                        | ConnectionAborted
                        | BrokenPipe
                        | UnexpectedEof
                        | NotConnected
                );
            }
            source = err.source();
        }
        false
    }

    /// The TLS handshake refused the server's certificate (`sslmode=verify-ca` or
    /// `verify-full`, or `require` with `sslrootcert`): no trusted CA signed it, it does not
    /// name the host, or it expired. The message names the host and the reason. Not a
    /// failover and not retried: fix `sslrootcert` (for RDS, the CA bundle) or the host.
    pub fn is_certificate_refused(&self) -> bool {
        self.0.kind == Kind::Certificate
    }

    /// The cluster topology could not be read, or the catalog answered something invalid
    /// (for example no writer).
    pub fn is_topology(&self) -> bool {
        self.0.kind == Kind::Topology
    }

    /// Pools of two different clusters share one `cluster_id`. Give each physical cluster its
    /// own `cluster_id`.
    pub fn is_cluster_id_mismatch(&self) -> bool {
        matches!(self.0.kind, Kind::ClusterIdMismatch { .. })
    }

    /// The `cluster_id` a mismatch error is about.
    pub fn cluster_id(&self) -> Option<&str> {
        match &self.0.kind {
            Kind::ClusterIdMismatch { cluster_id } => Some(cluster_id),
            _ => None,
        }
    }

    /// A reader was required, none is reachable and `failover_mode` is `strict_reader`.
    pub fn is_no_reader(&self) -> bool {
        self.0.kind == Kind::NoReader
    }

    /// The pool was closed with [`close`](crate::AuroraPool::close).
    pub fn is_closed(&self) -> bool {
        self.0.kind == Kind::Closed
    }

    /// A wait (connect, acquire, discovery) ran out of time.
    pub fn is_timeout(&self) -> bool {
        self.0.kind == Kind::Timeout
    }

    /// The connection was lost (or its instance was demoted): the cluster is failing over,
    /// and a new checkout reaches the new writer. From `run` and `transaction` it means that
    /// nothing was applied (they never leave work half-done under this kind); from a
    /// statement run on a connection of your own ([`classify`](crate::AuroraPool::classify)),
    /// a write may or may not have been applied before the connection went: send it again
    /// only if it is idempotent.
    pub fn is_failover(&self) -> bool {
        self.0.kind == Kind::Failover
    }

    /// The work may or may not have been applied: its connection was lost (a crash, a
    /// silent instance declared dead, a lost reply) after its statements were sent, outside
    /// a transaction (`run` on the writer), or while a transaction's `COMMIT` was on its way
    /// and its fate could not be found out
    /// ([`is_transaction_state_unknown`](Error::is_transaction_state_unknown) then holds
    /// too). It was not run again. Check whether it took effect before sending it again, or
    /// make it idempotent and say so with
    /// [`RetryPolicy::idempotent`](crate::RetryPolicy::idempotent).
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(
            self.0.kind,
            Kind::OutcomeUnknown | Kind::TransactionStateUnknown
        )
    }

    /// A transaction's outcome is unknown: its connection was lost while `COMMIT` was on its
    /// way and the writer could not tell what became of it (or, through
    /// [`classify`](crate::AuroraPool::classify), the connection was lost inside a
    /// transaction of your own). It may have committed: check before running it again.
    /// [`is_outcome_unknown`](Error::is_outcome_unknown) holds too.
    pub fn is_transaction_state_unknown(&self) -> bool {
        self.0.kind == Kind::TransactionStateUnknown
    }

    /// No instance for the role could be reached within `failover_timeout_ms`.
    pub fn is_failover_failed(&self) -> bool {
        self.0.kind == Kind::FailoverFailed
    }

    /// Whether running the work again on a fresh checkout can succeed: a failover
    /// ([`is_failover`](Error::is_failover)). An unknown outcome
    /// ([`is_outcome_unknown`](Error::is_outcome_unknown)) is never retryable: the work may
    /// have been applied.
    pub fn is_retryable(&self) -> bool {
        self.0.kind == Kind::Failover
    }

    /// The class of the underlying driver failure, from the SQLSTATE when there is one.
    pub fn class(&self) -> ErrorClass {
        if self.0.network {
            return ErrorClass::Network;
        }
        match (&self.0.kind, self.0.sqlstate.as_deref()) {
            (_, Some(sqlstate)) => ErrorClass::from_sqlstate(sqlstate),
            (
                Kind::Connect
                | Kind::Failover
                | Kind::TransactionStateUnknown
                | Kind::OutcomeUnknown,
                None,
            ) => ErrorClass::Network,
            _ => ErrorClass::Other,
        }
    }

    /// The members of the URL's custom endpoint were not known within
    /// `wait_for_custom_endpoint_info_timeout_ms`, or could not be read.
    pub fn is_custom_endpoint_unavailable(&self) -> bool {
        self.0.kind == Kind::CustomEndpoint
    }

    /// A credential provider failed to supply credentials (see [`Error::credentials`]).
    pub fn is_credentials(&self) -> bool {
        self.0.kind == Kind::Credentials
    }

    /// The server refused the login (SQLSTATE 28P01, 28000 or 08004): a wrong or expired
    /// password or token, or a user without the right to connect.
    pub fn is_login_rejected(&self) -> bool {
        self.class() == ErrorClass::Login
    }

    /// Any other error reported by the database driver; see [`Error::sqlstate`] and `source()`.
    pub fn is_driver(&self) -> bool {
        self.0.kind == Kind::Driver
    }

    /// The SQLSTATE reported by the server, when the error came from one.
    pub fn sqlstate(&self) -> Option<&str> {
        self.0.sqlstate.as_deref()
    }

    /// What went wrong, as one value to `match` on.
    pub fn kind(&self) -> ErrorKind {
        match self.0.kind {
            Kind::Config { .. } => ErrorKind::Config,
            Kind::Connect => ErrorKind::Connect,
            Kind::Certificate => ErrorKind::CertificateRefused,
            Kind::Topology => ErrorKind::Topology,
            Kind::ClusterIdMismatch { .. } => ErrorKind::ClusterIdMismatch,
            Kind::NoReader => ErrorKind::NoReader,
            Kind::Closed => ErrorKind::Closed,
            Kind::Timeout => ErrorKind::Timeout,
            Kind::Failover => ErrorKind::Failover,
            Kind::TransactionStateUnknown => ErrorKind::TransactionStateUnknown,
            Kind::OutcomeUnknown => ErrorKind::OutcomeUnknown,
            Kind::FailoverFailed => ErrorKind::FailoverFailed,
            // The caller's own error travels as `Work` inside the retry loop only.
            Kind::Driver | Kind::Work => ErrorKind::Driver,
            Kind::Credentials => ErrorKind::Credentials,
            Kind::CustomEndpoint => ErrorKind::CustomEndpointUnavailable,
        }
    }

    /// The first error of type `T` in the chain of causes.
    fn cause<T: StdError + 'static>(&self) -> Option<&T> {
        let mut source = StdError::source(self);
        while let Some(err) = source {
            if let Some(found) = err.downcast_ref::<T>() {
                return Some(found);
            }
            source = err.source();
        }
        None
    }

    /// The `sqlx::Error` behind this error, when sqlx reported it (a server's error, a broken
    /// connection, a pool timeout): `as_database_error()`, `is_unique_violation()` and the
    /// rest work on it as on an error from a plain `PgPool`.
    ///
    /// ```no_run
    /// # async fn f(pool: aurora_pool::AuroraPool) -> aurora_pool::Result<()> {
    /// let result = pool
    ///     .run(aurora_pool::Role::Writer, |conn| {
    ///         Box::pin(async move { sqlx::query("INSERT INTO users (email) VALUES ('a@b')").execute(conn).await })
    ///     })
    ///     .await;
    /// match result {
    ///     Err(err) if err.as_sqlx().and_then(|e| e.as_database_error()).is_some_and(|e| e.is_unique_violation()) => {
    ///         // already there
    ///     }
    ///     other => { other?; }
    /// }
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "sqlx")]
    pub fn as_sqlx(&self) -> Option<&sqlx::Error> {
        self.cause::<sqlx::Error>()
    }

    /// The `tokio_postgres::Error` behind this error, when the deadpool flavour's driver
    /// reported it: `code()` and `as_db_error()` work on it as with plain deadpool-postgres.
    #[cfg(feature = "deadpool")]
    pub fn as_tokio_postgres(&self) -> Option<&tokio_postgres::Error> {
        self.cause::<tokio_postgres::Error>()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.0.kind)
            .field("message", &self.0.message);
        if let Some(sqlstate) = &self.0.sqlstate {
            d.field("sqlstate", sqlstate);
        }
        if let Some(source) = &self.0.source {
            d.field("source", source);
        }
        if let Some(context) = &self.0.context {
            d.field("context", context);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.kind {
            Kind::Config { parameter } => write!(
                f,
                "invalid configuration: `{parameter}`: {}",
                self.0.message
            )?,
            Kind::ClusterIdMismatch { cluster_id } => write!(
                f,
                "cluster_id `{cluster_id}` is used for two different clusters: {}",
                self.0.message
            )?,
            _ => f.write_str(&self.0.message)?,
        }
        if f.alternate() {
            write_causes(f, StdError::source(self))?;
            if let Some(context) = &self.0.context {
                write!(f, " [{context}]")?;
            }
        }
        Ok(())
    }
}

/// Writes `: cause` for each error of the chain from `source`, skipping a cause whose text
/// the one before already printed (sqlx's and the OS's errors often repeat their source).
fn write_causes(
    f: &mut fmt::Formatter<'_>,
    source: Option<&(dyn StdError + 'static)>,
) -> fmt::Result {
    let mut last = String::new();
    let mut source = source;
    while let Some(err) = source {
        let text = err.to_string();
        if !last.contains(&text) {
            write!(f, ": {text}")?;
        }
        last = text;
        source = err.source();
    }
    Ok(())
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests;
