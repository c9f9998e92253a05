#![doc = include_str!("../README.md")]
// `unsafe` only in `sockets` (one descriptor duplicated; see its SAFETY comments).
#![deny(unsafe_code)]
#![forbid(non_ascii_idents)]
#![deny(nonstandard_style, rust_2018_idioms, rustdoc::broken_intra_doc_links)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// Without a backend feature the driver-independent core has no user yet, and the crate
// docs (the README) speak of the sqlx `AuroraPool`.
#![cfg_attr(
    not(feature = "sqlx"),
    allow(dead_code, rustdoc::broken_intra_doc_links)
)]

pub mod auth;
pub mod config;
mod connector;
#[cfg(feature = "custom-endpoint")]
mod custom_endpoint;
#[cfg(feature = "deadpool")]
pub mod deadpool;
pub use connector::BoxFuture;
pub mod endpoint;
mod error;
#[cfg(feature = "iam")]
pub mod iam;
mod metrics;
mod monitor;
mod pool;
mod retry;
#[cfg(feature = "secrets-manager")]
pub mod secrets_manager;
mod select;
mod sockets;
mod supervise;
mod throttle;
pub mod topology;

#[cfg(test)]
mod fuzz;

#[cfg(feature = "testing")]
pub mod testing;
#[cfg(all(feature = "tower", any(feature = "sqlx", feature = "deadpool")))]
pub mod tower;
#[cfg(all(feature = "tower", not(any(feature = "sqlx", feature = "deadpool"))))]
compile_error!(
    "the `tower` and `axum` features serve a flavour's pool: enable `sqlx` or `deadpool` with them"
);

pub use config::{Auth, Builder, Config, FailoverMode, GlobalReadMode, GlobalSettings, PoolSizing};
#[cfg(feature = "custom-endpoint")]
pub use custom_endpoint::settings::CustomEndpointSettings;
pub use error::{Error, ErrorClass, ErrorContext, ErrorKind, InstanceState, RecentEvent, Result};
pub use monitor::ClusterEvent;
#[cfg(feature = "sqlx")]
pub use pool::{AuroraPool, AuroraPoolOptions};
pub use pool::{
    Health, InstanceStatus, IsolationLevel, PoolStatus, ReadsStatus, TransactionOptions,
};
pub use retry::RetryPolicy;
pub use select::ReaderSelection;
pub use topology::{Dialect, Instance, Role, Topology};
