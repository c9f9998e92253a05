//! Configuration: parsed from a PostgreSQL URL, adjusted with a [`Builder`].
//!
//! Every parameter this crate understands is listed in the README. Unknown parameters are an
//! error, never silently ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use url::Url;

use crate::endpoint::{Endpoint, HostPattern, HostPort};
use crate::error::{Error, Result};
use crate::select::ReaderSelection;
use crate::topology::{Addressing, Dialect};

/// The longest duration any setting accepts: far beyond any sensible wait, and far enough
/// from `Duration::MAX` that no deadline computed from it can overflow.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// A password: kept out of `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Password(pub(crate) String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What reader checkouts may use when no reader instance is available (`failover_mode`),
/// named after the AWS drivers' failover modes.
///
/// Writer checkouts always need the writer; during a failover they wait for the new one
/// (up to `failover_timeout_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailoverMode {
    /// `strict_writer` (default for every URL but a reader cluster endpoint): the pool is
    /// writer-first; reads with no reader available go to the writer.
    StrictWriter,
    /// `reader_or_writer` (default for `cluster-ro-` URLs): reads go to a reader, else to the
    /// writer.
    ReaderOrWriter,
    /// `strict_reader`: reads never reach the writer; with no reader available a reader
    /// checkout waits for one up to `failover_timeout_ms`, then fails with
    /// [`Error::is_failover_failed`].
    StrictReader,
}

impl FailoverMode {
    /// The default for a URL whose host is of `kind`.
    pub fn for_endpoint(kind: crate::endpoint::EndpointKind) -> FailoverMode {
        match kind {
            crate::endpoint::EndpointKind::ClusterReader => FailoverMode::ReaderOrWriter,
            _ => FailoverMode::StrictWriter,
        }
    }

    /// Whether reads may go to the writer when no reader is available.
    pub fn reads_may_use_writer(self) -> bool {
        self != FailoverMode::StrictReader
    }

    fn parse(parameter: &str, text: &str) -> Result<FailoverMode> {
        match text {
            "strict_writer" | "strict-writer" => Ok(FailoverMode::StrictWriter),
            "reader_or_writer" | "reader-or-writer" => Ok(FailoverMode::ReaderOrWriter),
            "strict_reader" | "strict-reader" => Ok(FailoverMode::StrictReader),
            other => Err(Error::config(
                parameter,
                format!(
                    "unknown mode `{other}`; expected strict_writer, reader_or_writer or strict_reader"
                ),
            )),
        }
    }
}

/// Sizes of the connection pools of one role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSizing {
    /// Most connections open at once (per instance for readers). Default 10.
    pub max_connections: u32,
    /// Connections kept open even when idle (per instance for readers). Default 0.
    pub min_connections: u32,
}

impl Default for PoolSizing {
    fn default() -> Self {
        PoolSizing {
            max_connections: 10,
            min_connections: 0,
        }
    }
}

/// The complete configuration of an [`AuroraPool`](crate::AuroraPool).
///
/// Build one with [`Config::from_url`] or [`Builder`]; the fields can be changed before the
/// pool is created. [`Config::validate`] runs again when the pool is created.
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// The URL's host: a cluster endpoint, an instance endpoint, an IP address, ...
    pub host: String,
    /// The URL's port (default 5432).
    pub port: u16,
    /// Key of the shared topology cache and monitor (`cluster_id`, default `"1"`). Pools
    /// with the same id share one monitor; every physical cluster needs its own id.
    pub cluster_id: String,
    /// How instance endpoints are spelled (`cluster_instance_host_pattern`). Derived from the
    /// URL for RDS host names.
    pub cluster_instance_host_pattern: Option<HostPattern>,
    /// Allows a host pattern whose `?` is not followed by a dotted domain (`?`, `db-?`):
    /// instance ids from the catalog then become bare host names, resolved through the
    /// search domains (`allow_unqualified_host_pattern`, default false).
    pub allow_unqualified_host_pattern: bool,
    /// Explicit addresses per instance id or name (`instance_endpoints=id=host:port,...`),
    /// for SSH/SSM tunnels and tests. They win over the host pattern.
    pub instance_endpoints: BTreeMap<String, HostPort>,
    /// How often the monitor reads the topology (`cluster_topology_refresh_rate_ms`, default
    /// 30000).
    pub cluster_topology_refresh_rate: Duration,
    /// Skip detection and use this dialect (`dialect`).
    pub dialect: Option<Dialect>,
    /// How `acquire(Role::Reader)` and `run(Role::Reader, ..)` pick a reader per checkout
    /// (`reader_host_selector_strategy`, default `random`). The `.reader()` pool does not use
    /// it: it spreads its connections over the readers in turn.
    pub reader_host_selector_strategy: ReaderSelection,
    /// What reader checkouts may fall back to (`failover_mode`); the default depends on the
    /// URL: `reader_or_writer` for a reader cluster endpoint (`cluster-ro-`), else
    /// `strict_writer`. See [`FailoverMode`].
    pub failover_mode: FailoverMode,
    /// Readers lagging more than this behind the writer serve no reads
    /// (`max_replica_lag_ms`, default none), as the catalog reports the lag at each topology
    /// read (Aurora: `REPLICA_LAG_IN_MSEC`; a global database: `VISIBILITY_LAG_IN_MSEC`).
    pub max_replica_lag: Option<Duration>,
    /// Aurora Global Database settings (`global_cluster_instance_host_patterns`,
    /// `failover_home_region`, `global_read_mode`). See [`GlobalSettings`].
    pub global: GlobalSettings,
    /// How long a checkout waits for an instance of its role during a failover
    /// (`failover_timeout_ms`, default 30000: as long as `acquire_timeout_ms`, fit for a
    /// request handler; batch jobs that would rather wait out a long failover set more).
    pub failover_timeout: Duration,
    /// How often the monitor reads the topology during and for 30 s after a failover
    /// (`cluster_topology_high_refresh_rate_ms`, default 100).
    pub cluster_topology_high_refresh_rate: Duration,
    /// Whether every instance is health-probed to catch silent failures
    /// (`failure_detection_enabled`, default true).
    pub failure_detection_enabled: bool,
    /// Grace period before an instance's first health probe (`failure_detection_time_ms`,
    /// default 0).
    pub failure_detection_time: Duration,
    /// Time between health probes of one instance (`failure_detection_interval_ms`, default
    /// 500). A probe gets twice this (at least 500 ms, at most `connect_timeout`) to answer.
    pub failure_detection_interval: Duration,
    /// Probes in a row without an answer that declare an instance dead
    /// (`failure_detection_count`, default 2). A refused connection declares it dead at once.
    pub failure_detection_count: u32,
    /// How long every pool of the cluster in this process must have had no connection open
    /// before the monitor pauses: its probes and its own connection close, so that an
    /// Aurora Serverless v2 instance can pause too; the next connection wakes it
    /// (`monitor_idle_pause_ms`, default 60000; `0` = never).
    pub monitor_idle_pause: Option<Duration>,
    /// Writer pool size (`writer_max_connections`, `writer_min_connections`).
    pub writer: PoolSizing,
    /// Per-reader-instance pool size (`reader_max_connections`, `reader_min_connections`).
    pub reader: PoolSizing,
    /// Longest wait for a connection from a pool (`acquire_timeout_ms`, default 30000).
    pub acquire_timeout: Duration,
    /// Idle connections are closed after this (`idle_timeout_ms`, default 600000; 0 = never).
    pub idle_timeout: Option<Duration>,
    /// Connections are closed at this age (`max_lifetime_ms`, default 1800000; 0 = never).
    pub max_lifetime: Option<Duration>,
    /// Bound on opening one connection for discovery and monitoring (`connect_timeout`, in
    /// seconds as in libpq, default 10).
    pub connect_timeout: Duration,
    /// TCP keepalives and user timeout of every connection (`keepalives`,
    /// `keepalives_idle`, `keepalives_interval`, `keepalives_count`, `tcp_user_timeout`, as
    /// in libpq). See [`TcpSettings`].
    pub tcp: TcpSettings,
    /// How connections log in (`auth`, default the URL's password). See [`Auth`].
    pub auth: Auth,
    /// The address to connect to instead of resolving the URL's host (`hostaddr`, an IP
    /// address as in libpq): the host name still decides what kind of endpoint the URL is
    /// and how instance endpoints are spelled. For SSH/SSM tunnels and tests.
    pub hostaddr: Option<String>,
    /// Lets IAM tokens and Secrets Manager passwords go to a server the TLS handshake did
    /// not verify (`allow_unverified_server`, default false): with `sslmode=require` any
    /// TLS peer on the path, and with `prefer` or less anyone on the path, receives
    /// credentials it can log in with. Without it such credentials need `verify-full` (the
    /// default then), and the RDS CA bundle in `sslrootcert`.
    pub allow_unverified_server: bool,
    /// How the pool follows the members of a custom endpoint URL (the
    /// `custom_endpoint_*` parameters; feature `custom-endpoint`).
    #[cfg(feature = "custom-endpoint")]
    pub custom_endpoint: crate::custom_endpoint::CustomEndpointSettings,
    /// The URL with only the driver's own parameters left (it holds the password).
    driver_url: Url,
    /// The URL's user, percent-decoded (`alice%40corp` is `alice@corp`).
    user: String,
    password: Option<Password>,
    /// Whether `failover_mode` was chosen (else a custom endpoint's type decides it).
    failover_mode_chosen: bool,
    /// The application's AWS configuration ([`Builder::sdk_config`]): credentials, region
    /// and HTTP settings for IAM signing, Secrets Manager and the RDS API.
    #[cfg(any(
        feature = "iam",
        feature = "secrets-manager",
        feature = "custom-endpoint"
    ))]
    pub(crate) sdk_config: Option<aws_config::SdkConfig>,
    /// The URL parameter `connect_timeout` was given by: libpq's `connect_timeout` (in
    /// seconds) or `connect_timeout_ms`, for errors that name it.
    connect_timeout_parameter: &'static str,
}

impl Config {
    /// The user name of the URL, percent-decoded (`postgres://alice%40corp@host` logs in as
    /// `alice@corp`, and IAM signs for `alice@corp`).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Sets the password used for every connection.
    pub fn set_password(&mut self, password: impl Into<String>) {
        self.password = Some(Password(password.into()));
    }

    pub(crate) fn password(&self) -> Option<&str> {
        self.password.as_ref().map(|p| p.0.as_str())
    }

    /// The URL holding only the driver's own parameters, without password.
    pub(crate) fn driver_url(&self) -> &Url {
        &self.driver_url
    }

    /// The URL's own address.
    /// Where discovery connects: the URL's host, or `hostaddr`.
    /// Whether the URL's host is an RDS Proxy endpoint (`<name>.proxy-<id>...` or a proxy's
    /// own endpoint `<name>.endpoint.proxy-<id>...`): the proxy fails over by itself, and the
    /// pool connects through it only.
    pub fn is_rds_proxy(&self) -> bool {
        crate::endpoint::Endpoint::classify(&self.host).kind()
            == crate::endpoint::EndpointKind::Proxy
    }

    pub(crate) fn seed(&self) -> HostPort {
        HostPort {
            host: self.hostaddr.clone().unwrap_or_else(|| self.host.clone()),
            port: self.port,
        }
    }

    /// The failover mode for a custom endpoint of `reader_only` type, unless one was chosen:
    /// `strict_reader` for READER endpoints, `reader_or_writer` for ANY.
    #[cfg_attr(not(feature = "custom-endpoint"), allow(dead_code))]
    pub(crate) fn failover_mode_for_custom_endpoint(&self, reader_only: bool) -> FailoverMode {
        match (self.failover_mode_chosen, reader_only) {
            (true, _) => self.failover_mode,
            (false, true) => FailoverMode::StrictReader,
            (false, false) => FailoverMode::ReaderOrWriter,
        }
    }

    /// How instance names turn into addresses: overrides, then the explicit pattern, then the
    /// pattern derived from an RDS host name.
    pub(crate) fn addressing(&self) -> Addressing {
        Addressing {
            overrides: self.instance_endpoints.clone(),
            pattern: self
                .cluster_instance_host_pattern
                .clone()
                .or_else(|| Endpoint::classify(&self.host).instance_host_pattern()),
            default_port: self.port,
            regions: self.global.host_patterns.clone(),
            url_region: Endpoint::classify(&self.host).region().map(str::to_owned),
        }
    }

    /// The home region of a global database: `failover_home_region`, else the region of
    /// the URL's host.
    pub fn home_region(&self) -> Option<String> {
        self.global.home_region.clone().or_else(|| {
            Endpoint::classify(&self.host)
                .region()
                .map(str::to_ascii_lowercase)
        })
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Config");
        d.field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user())
            .field("password", &self.password)
            .field("database", &self.driver_url.path().trim_start_matches('/'))
            .field("driver_parameters", &self.driver_url.query())
            .field("cluster_id", &self.cluster_id)
            .field(
                "cluster_instance_host_pattern",
                &self.cluster_instance_host_pattern,
            )
            .field(
                "allow_unqualified_host_pattern",
                &self.allow_unqualified_host_pattern,
            )
            .field("instance_endpoints", &self.instance_endpoints)
            .field(
                "cluster_topology_refresh_rate",
                &self.cluster_topology_refresh_rate,
            )
            .field("dialect", &self.dialect)
            .field(
                "reader_host_selector_strategy",
                &self.reader_host_selector_strategy,
            )
            .field("failover_mode", &self.failover_mode)
            .field("failover_timeout", &self.failover_timeout)
            .field(
                "cluster_topology_high_refresh_rate",
                &self.cluster_topology_high_refresh_rate,
            )
            .field("failure_detection_enabled", &self.failure_detection_enabled)
            .field("failure_detection_time", &self.failure_detection_time)
            .field(
                "failure_detection_interval",
                &self.failure_detection_interval,
            )
            .field("failure_detection_count", &self.failure_detection_count)
            .field("monitor_idle_pause", &self.monitor_idle_pause)
            .field("writer", &self.writer)
            .field("reader", &self.reader)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_lifetime", &self.max_lifetime)
            .field("connect_timeout", &self.connect_timeout)
            .field("tcp", &self.tcp)
            .field("auth", &self.auth)
            .field("hostaddr", &self.hostaddr)
            .field("allow_unverified_server", &self.allow_unverified_server);
        #[cfg(feature = "custom-endpoint")]
        d.field("custom_endpoint", &self.custom_endpoint);
        d.finish()
    }
}

mod auth;
mod builder;
mod global;
mod parse;
mod tcp;
#[cfg(test)]
mod tests;
mod tls;
mod validate;

pub use auth::Auth;
pub use builder::Builder;
#[cfg(any(feature = "sqlx", feature = "deadpool"))]
pub(crate) use builder::{delegate_settings, delegated_setting, each_setting};
pub use global::{GlobalReadMode, GlobalSettings};
#[cfg(any(feature = "iam", feature = "secrets-manager"))]
pub(crate) use parse::renamed_seconds;
pub use tcp::TcpSettings;
pub(crate) use tls::SslMode;
