//! The pool: routing by role over the pools of a driver backend.

pub(crate) mod attempts;
pub(crate) mod backend;
pub(crate) mod core;
#[cfg(any(feature = "sqlx", feature = "deadpool"))]
pub(crate) mod facade;
pub(crate) mod login;
pub(crate) mod outcome;
pub(crate) mod rerun;
pub(crate) mod routing;
pub(crate) mod scope;
#[cfg(feature = "sqlx")]
mod sqlx;
mod status;
pub(crate) mod targets;
pub(crate) mod tasks;
pub(crate) mod transaction;
pub(crate) mod work;

#[cfg(feature = "sqlx")]
pub use self::sqlx::{AuroraPool, AuroraPoolOptions};
pub use status::{Health, InstanceStatus, PoolStatus, ReadsStatus};
pub use transaction::{IsolationLevel, TransactionOptions};
