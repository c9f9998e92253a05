//! Configuration: parsed from a PostgreSQL URL, adjusted with a [`Builder`].
//!
//! Every parameter this crate understands is listed in the README. Unknown parameters are an
//! error, never silently ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use url::Url;

use crate::endpoint::{Endpoint, HostPattern, HostPort};
use crate::error::{Error, Result};
use crate::select::ReaderSelection;
use crate::topology::{Addressing, Dialect};

/// The URL parameters the PostgreSQL drivers understand; they pass through to each
/// connection.
const DRIVER_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

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
    /// How `.reader()` picks an instance (`reader_host_selector_strategy`, default `random`).
    pub reader_host_selector_strategy: ReaderSelection,
    /// What reader checkouts may fall back to (`failover_mode`); the default depends on the
    /// URL: `reader_or_writer` for a reader cluster endpoint (`cluster-ro-`), else
    /// `strict_writer`. See [`FailoverMode`].
    pub failover_mode: FailoverMode,
    /// How long a checkout waits for an instance of its role during a failover
    /// (`failover_timeout_ms`, default 300000).
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
}

impl Config {
    /// Parses a `postgres://` (or `postgresql://`) URL.
    ///
    /// ```
    /// let config = aurora_pool::Config::from_url(
    ///     "postgres://app:secret@db.cluster-abc123.us-east-1.rds.amazonaws.com/app?cluster_id=orders",
    /// )?;
    /// assert_eq!(config.cluster_id, "orders");
    /// assert!(!format!("{config:?}").contains("secret"));
    /// # Ok::<(), aurora_pool::Error>(())
    /// ```
    pub fn from_url(url: &str) -> Result<Config> {
        let mut parsed =
            Url::parse(url).map_err(|e| Error::config("url", format!("not a valid URL: {e}")))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(Error::config(
                "url",
                format!(
                    "scheme `{}` is not supported; use postgres://",
                    parsed.scheme()
                ),
            ));
        }
        let host = match parsed.host() {
            Some(url::Host::Ipv6(addr)) => addr.to_string(),
            Some(host) => host.to_string(),
            None => {
                return Err(Error::config(
                    "url",
                    "the URL has no host; aurora-pool needs a TCP host (unix sockets are not supported)",
                ));
            }
        };
        if host.is_empty() || host.starts_with('%') {
            return Err(Error::config(
                "url",
                "the URL has no TCP host (unix sockets are not supported)",
            ));
        }
        let port = parsed.port().unwrap_or(5432);
        let password = parsed
            .password()
            .map(|p| percent_decode(p).map(Password))
            .transpose()?;

        let failover_mode = FailoverMode::for_endpoint(Endpoint::classify(&host).kind());
        let mut config = Config {
            host,
            port,
            cluster_id: "1".to_owned(),
            cluster_instance_host_pattern: None,
            allow_unqualified_host_pattern: false,
            instance_endpoints: BTreeMap::new(),
            cluster_topology_refresh_rate: Duration::from_millis(30_000),
            dialect: None,
            reader_host_selector_strategy: ReaderSelection::Random,
            failover_mode,
            failover_timeout: Duration::from_millis(300_000),
            cluster_topology_high_refresh_rate: Duration::from_millis(100),
            failure_detection_enabled: true,
            failure_detection_time: Duration::ZERO,
            failure_detection_interval: Duration::from_millis(500),
            failure_detection_count: 2,
            writer: PoolSizing::default(),
            reader: PoolSizing::default(),
            acquire_timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            connect_timeout: Duration::from_secs(10),
            auth: Auth::Password,
            hostaddr: None,
            allow_unverified_server: false,
            #[cfg(feature = "custom-endpoint")]
            custom_endpoint: crate::custom_endpoint::CustomEndpointSettings::default(),
            driver_url: parsed.clone(),
            user: decode_user(parsed.username())?,
            password,
            failover_mode_chosen: false,
        };

        let mut driver_pairs = Vec::new();
        let mut auth_pairs = Vec::new();
        for (key, value) in parsed.query_pairs() {
            let (key, value) = (key.into_owned(), value.into_owned());
            if config.apply_parameter(&key, &value)? {
                continue;
            }
            if key == "auth" || key.starts_with("iam_") || key.starts_with("secrets_manager_") {
                auth_pairs.push((key, value));
                continue;
            }
            // A password given as a parameter travels like the URL's own: never in the URL
            // that is kept (and shown by `Debug`).
            if key == "password" {
                config.password = Some(Password(value));
                continue;
            }
            if DRIVER_PARAMETERS.contains(&key.as_str())
                || (key.starts_with("options[") && key.ends_with(']'))
            {
                check_driver_parameter(&key, &value)?;
                driver_pairs.push((key, value));
                continue;
            }
            return Err(match key.as_str() {
                "host" | "port" => Error::config(
                    &key,
                    "put the host and port in the URL itself (postgres://user@host:port/db)",
                ),
                _ => Error::config(
                    &key,
                    "unknown parameter (see the README for the supported ones)",
                ),
            });
        }
        // The password travels separately so that the URL can be rebuilt per instance.
        let _ = parsed.set_password(None);
        if driver_pairs.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(driver_pairs);
        }
        config.driver_url = parsed;
        config.auth = Auth::from_parameters(&auth_pairs)?;
        config.validate()?;
        Ok(config)
    }

    /// Applies one of this crate's own parameters; `Ok(false)` when `key` is not one of them.
    fn apply_parameter(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "cluster_id" => self.cluster_id = value.to_owned(),
            "cluster_instance_host_pattern" => {
                self.cluster_instance_host_pattern = Some(HostPattern::parse(value)?);
            }
            "allow_unqualified_host_pattern" => {
                self.allow_unqualified_host_pattern = parse_bool(key, value)?;
            }
            "allow_unverified_server" => self.allow_unverified_server = parse_bool(key, value)?,
            "instance_endpoints" => {
                for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                    let (id, address) = entry.split_once('=').ok_or_else(|| {
                        Error::config(key, format!("`{entry}` is not `instance-id=host:port`"))
                    })?;
                    self.instance_endpoints
                        .insert(id.trim().to_owned(), HostPort::parse(key, address)?);
                }
            }
            "cluster_topology_refresh_rate_ms" => {
                self.cluster_topology_refresh_rate =
                    Duration::from_millis(parse_number(key, value)?);
            }
            "dialect" => self.dialect = Some(Dialect::parse(key, value)?),
            "reader_host_selector_strategy" => {
                self.reader_host_selector_strategy = ReaderSelection::parse(key, value)?;
            }
            "failover_mode" => {
                self.failover_mode = FailoverMode::parse(key, value)?;
                self.failover_mode_chosen = true;
            }
            "hostaddr" => {
                let address: std::net::IpAddr = value
                    .trim()
                    .parse()
                    .map_err(|_| Error::config(key, format!("`{value}` is not an IP address")))?;
                self.hostaddr = Some(address.to_string());
            }
            "failover_timeout_ms" => {
                self.failover_timeout = Duration::from_millis(parse_number(key, value)?)
            }
            "cluster_topology_high_refresh_rate_ms" => {
                self.cluster_topology_high_refresh_rate =
                    Duration::from_millis(parse_number(key, value)?);
            }
            "failure_detection_enabled" => self.failure_detection_enabled = parse_bool(key, value)?,
            "failure_detection_time_ms" => {
                self.failure_detection_time = Duration::from_millis(parse_number(key, value)?);
            }
            "failure_detection_interval_ms" => {
                self.failure_detection_interval = Duration::from_millis(parse_number(key, value)?);
            }
            "failure_detection_count" => self.failure_detection_count = parse_number(key, value)?,
            "writer_max_connections" => self.writer.max_connections = parse_number(key, value)?,
            "writer_min_connections" => self.writer.min_connections = parse_number(key, value)?,
            "reader_max_connections" => self.reader.max_connections = parse_number(key, value)?,
            "reader_min_connections" => self.reader.min_connections = parse_number(key, value)?,
            "acquire_timeout_ms" => {
                self.acquire_timeout = Duration::from_millis(parse_number(key, value)?)
            }
            "idle_timeout_ms" => self.idle_timeout = optional_ms(parse_number(key, value)?),
            "max_lifetime_ms" => self.max_lifetime = optional_ms(parse_number(key, value)?),
            "connect_timeout" => {
                self.connect_timeout = Duration::from_secs(parse_number(key, value)?)
            }
            #[cfg(feature = "custom-endpoint")]
            _ if self.custom_endpoint.apply_parameter(key, value)? => {}
            #[cfg(not(feature = "custom-endpoint"))]
            _ if key.starts_with("custom_endpoint_")
                || key.starts_with("wait_for_custom_endpoint_info") =>
            {
                return Err(Error::config(
                    key,
                    "needs the crate feature `custom-endpoint`",
                ));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Every duration setting with its parameter name.
    fn durations(&self) -> [(&'static str, Duration); 9] {
        [
            (
                "cluster_topology_refresh_rate_ms",
                self.cluster_topology_refresh_rate,
            ),
            (
                "cluster_topology_high_refresh_rate_ms",
                self.cluster_topology_high_refresh_rate,
            ),
            ("failover_timeout_ms", self.failover_timeout),
            ("failure_detection_time_ms", self.failure_detection_time),
            (
                "failure_detection_interval_ms",
                self.failure_detection_interval,
            ),
            ("acquire_timeout_ms", self.acquire_timeout),
            ("idle_timeout_ms", self.idle_timeout.unwrap_or_default()),
            ("max_lifetime_ms", self.max_lifetime.unwrap_or_default()),
            ("connect_timeout", self.connect_timeout),
        ]
    }

    /// Checks the values against each other. Called by [`Config::from_url`], [`Builder`] and
    /// when a pool is created.
    pub fn validate(&self) -> Result<()> {
        if self.cluster_id.trim().is_empty() {
            return Err(Error::config("cluster_id", "must not be empty"));
        }
        if let Some(pattern) = &self.cluster_instance_host_pattern
            && !pattern.is_qualified()
            && !self.allow_unqualified_host_pattern
        {
            return Err(Error::config(
                "cluster_instance_host_pattern",
                format!(
                    "`{pattern}` does not put the instance id inside a dotted domain (`?.db.example.com`): \
                     ids from the catalog would become bare host names. \
                     Set allow_unqualified_host_pattern=true if that is meant"
                ),
            ));
        }
        if self.cluster_topology_refresh_rate.is_zero() {
            return Err(Error::config(
                "cluster_topology_refresh_rate_ms",
                "must be greater than 0",
            ));
        }
        for (role, sizing) in [("writer", &self.writer), ("reader", &self.reader)] {
            if sizing.max_connections == 0 {
                return Err(Error::config(
                    &format!("{role}_max_connections"),
                    "must be at least 1",
                ));
            }
            if sizing.min_connections > sizing.max_connections {
                return Err(Error::config(
                    &format!("{role}_min_connections"),
                    format!(
                        "{} is more than {role}_max_connections ({})",
                        sizing.min_connections, sizing.max_connections
                    ),
                ));
            }
        }
        for (parameter, value) in [
            (
                "cluster_topology_high_refresh_rate_ms",
                self.cluster_topology_high_refresh_rate,
            ),
            ("failover_timeout_ms", self.failover_timeout),
            (
                "failure_detection_interval_ms",
                self.failure_detection_interval,
            ),
        ] {
            if value.is_zero() {
                return Err(Error::config(parameter, "must be greater than 0"));
            }
        }
        if self.failure_detection_count == 0 {
            return Err(Error::config(
                "failure_detection_count",
                "must be at least 1",
            ));
        }
        for (parameter, value) in self.durations() {
            if value > MAX_DURATION {
                return Err(Error::config(
                    parameter,
                    format!(
                        "{value:?} is longer than the longest wait the pool accepts ({} ms, 24 h)",
                        MAX_DURATION.as_millis()
                    ),
                ));
            }
        }
        if self.acquire_timeout.is_zero() {
            return Err(Error::config(
                "acquire_timeout_ms",
                "must be greater than 0",
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::config("connect_timeout", "must be greater than 0"));
        }
        self.check_tls()?;
        #[cfg(feature = "iam")]
        if let Auth::Iam(settings) = &self.auth {
            settings.validate(&self.host)?;
        }
        if self.password.is_some() && !matches!(self.auth, Auth::Password) {
            return Err(Error::config(
                "password",
                "a password is given but `auth` takes credentials from elsewhere; remove the password",
            ));
        }
        #[cfg(feature = "custom-endpoint")]
        self.custom_endpoint.validate()?;
        if let Some((id, _)) = self.instance_endpoints.iter().find(|(id, _)| id.is_empty()) {
            return Err(Error::config(
                "instance_endpoints",
                format!("empty instance id in `{id}=...`"),
            ));
        }
        Ok(())
    }

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
        }
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
            .field("writer", &self.writer)
            .field("reader", &self.reader)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_lifetime", &self.max_lifetime)
            .field("connect_timeout", &self.connect_timeout)
            .field("auth", &self.auth)
            .field("hostaddr", &self.hostaddr)
            .field("allow_unverified_server", &self.allow_unverified_server);
        #[cfg(feature = "custom-endpoint")]
        d.field("custom_endpoint", &self.custom_endpoint);
        d.finish()
    }
}

impl FromStr for Config {
    type Err = Error;

    fn from_str(url: &str) -> Result<Config> {
        Config::from_url(url)
    }
}

fn percent_decode(text: &str) -> Result<String> {
    url::form_urlencoded::parse(format!("p={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| Error::config("url", "the password is not valid percent-encoding"))
}

fn parse_number<T: FromStr>(key: &str, value: &str) -> Result<T> {
    value.trim().parse().map_err(|_| {
        Error::config(
            key,
            format!("`{value}` is not a valid non-negative integer"),
        )
    })
}

/// The URL's user name, percent-decoded; refused when the decoded bytes are not UTF-8.
fn decode_user(raw: &str) -> Result<String> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|user| user.into_owned())
        .map_err(|_| {
            Error::config(
                "url",
                "the user name is not valid UTF-8 once percent-decoded",
            )
        })
}

fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Error::config(
            key,
            format!("`{value}` is not `true` or `false`"),
        )),
    }
}

fn optional_ms(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

fn check_driver_parameter(key: &str, value: &str) -> Result<()> {
    match key {
        "sslmode" | "ssl-mode" => SslMode::parse(key, value).map(|_| ()),
        "statement-cache-capacity" => parse_number::<usize>(key, value).map(|_| ()),
        _ => Ok(()),
    }
}

mod auth;
mod builder;
#[cfg(test)]
mod tests;
mod tls;

pub use auth::Auth;
pub use builder::Builder;
pub(crate) use tls::SslMode;
