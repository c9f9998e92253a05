//! The error type of the testing module.

use std::fmt;

/// An error from [`LocalCluster`](super::LocalCluster): says what failed, and
/// where available the command line, its exit status, its stderr and the tail
/// of the instance's server log.
#[derive(Clone, PartialEq, Eq)]
pub struct TestingError {
    message: String,
}

impl TestingError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// Adds context in front of the message (`"<context>: <message>"`).
    pub(crate) fn context(self, context: impl fmt::Display) -> Self {
        Self {
            message: format!("{context}: {}", self.message),
        }
    }

    /// The full, human readable message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for TestingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for TestingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Multi-line messages (log tails) read better unescaped in test failures.
        write!(f, "TestingError: {}", self.message)
    }
}

impl std::error::Error for TestingError {}

/// Converts a failed `spawn_blocking` join into a [`TestingError`].
pub(crate) fn join_error(what: &str, e: tokio::task::JoinError) -> TestingError {
    TestingError::new(format!("{what}: background task failed: {e}"))
}
