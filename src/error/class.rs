//! What kind of failure a driver error reports, from its SQLSTATE or I/O error.

/// What kind of failure a driver error reports, from its SQLSTATE or I/O error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// The connection broke or the server is shutting down or unreachable (SQLSTATE classes
    /// 08, 58, 99, F0, codes 57P01-57P03, and I/O errors).
    Network,
    /// The login was refused (28P01, 28000, 08004).
    Login,
    /// A write reached a read-only instance (25006): the writer was demoted.
    ReadOnly,
    /// Anything else: constraint violations, syntax errors, the caller's own timeouts.
    Other,
}

impl ErrorClass {
    /// Classifies a SQLSTATE the way the AWS drivers do.
    pub fn from_sqlstate(sqlstate: &str) -> ErrorClass {
        match sqlstate {
            "28P01" | "28000" | "08004" => ErrorClass::Login,
            "25006" => ErrorClass::ReadOnly,
            "57P01" | "57P02" | "57P03" => ErrorClass::Network,
            s if ["08", "58", "99", "F0"].iter().any(|p| s.starts_with(p)) => ErrorClass::Network,
            _ => ErrorClass::Other,
        }
    }

    /// Whether this failure means the instance should be considered gone or demoted, so
    /// that the topology must be re-read.
    ///
    /// [`ReadOnly`](ErrorClass::ReadOnly) counts only on a connection to the writer: a write
    /// sent to a reader, or inside a `READ ONLY` transaction, is the caller's mistake, and
    /// the crate's own role-aware paths return it as the driver's error.
    pub fn triggers_failover(self) -> bool {
        matches!(self, ErrorClass::Network | ErrorClass::ReadOnly)
    }
}
