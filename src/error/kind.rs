//! What went wrong, as one value: [`ErrorKind`], beside the predicates.

use std::fmt;

/// What went wrong, as one value to `match` on (the predicates such as
/// [`Error::is_failover`](crate::Error::is_failover) say the same). New kinds may be added:
/// keep a `_` arm.
///
/// Its `Display` is a short `snake_case` name, stable across releases, for logs and metrics
/// labels (`failover`, `outcome_unknown`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A configuration value is missing, malformed or contradicts another one
    /// ([`Error::parameter`](crate::Error::parameter) names it).
    Config,
    /// A physical connection could not be opened, or broke, outside a checkout the pool
    /// classified.
    Connect,
    /// The TLS handshake refused the server's certificate.
    CertificateRefused,
    /// The cluster's topology could not be read or made no sense.
    Topology,
    /// Pools of two different clusters share one `cluster_id`.
    ClusterIdMismatch,
    /// A reader was required, none is reachable and falling back to the writer is disabled.
    NoReader,
    /// The pool was closed.
    Closed,
    /// A wait (connect, acquire, discovery) ran out of time.
    Timeout,
    /// The connection was lost or its instance was demoted; nothing was applied by `run` or
    /// `transaction`, and a new checkout reaches the new writer.
    Failover,
    /// The work may or may not have been applied: its connection was lost after it was sent.
    OutcomeUnknown,
    /// A transaction's `COMMIT` may or may not have been applied.
    TransactionStateUnknown,
    /// No instance for the role could be reached within `failover_timeout_ms`.
    FailoverFailed,
    /// Any other error reported by the database driver: see
    /// [`Error::sqlstate`](crate::Error::sqlstate) and the driver's own error.
    Driver,
    /// A credential provider could not supply credentials.
    Credentials,
    /// The members of the URL's custom endpoint were not known in time.
    CustomEndpointUnavailable,
}

impl ErrorKind {
    /// The kind's stable `snake_case` name, as its `Display` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Connect => "connect",
            ErrorKind::CertificateRefused => "certificate_refused",
            ErrorKind::Topology => "topology",
            ErrorKind::ClusterIdMismatch => "cluster_id_mismatch",
            ErrorKind::NoReader => "no_reader",
            ErrorKind::Closed => "closed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Failover => "failover",
            ErrorKind::OutcomeUnknown => "outcome_unknown",
            ErrorKind::TransactionStateUnknown => "transaction_state_unknown",
            ErrorKind::FailoverFailed => "failover_failed",
            ErrorKind::Driver => "driver",
            ErrorKind::Credentials => "credentials",
            ErrorKind::CustomEndpointUnavailable => "custom_endpoint_unavailable",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
