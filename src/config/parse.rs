//! Reading a `postgres://` URL: the crate's own parameters, the driver's, and the
//! credentials' (`auth`, `iam_*`, `secrets_manager_*`).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use url::Url;

use super::{Auth, Config, FailoverMode, Password, PoolSizing, SslMode, TcpSettings};
use crate::endpoint::{Endpoint, HostPattern, HostPort};
use crate::error::{Error, Result};
use crate::select::ReaderSelection;
use crate::topology::Dialect;

/// The URL parameters the PostgreSQL drivers understand; they pass through to each
/// connection.
/// Every parameter the URL accepts: a misspelt one is refused with the closest of these.
pub(super) const KNOWN_PARAMETERS: &[&str] = &[
    "acquire_timeout_ms",
    "allow_unqualified_host_pattern",
    "allow_unverified_server",
    "auth",
    "cluster_id",
    "cluster_instance_host_pattern",
    "cluster_topology_high_refresh_rate_ms",
    "cluster_topology_refresh_rate_ms",
    "connect_timeout",
    "connect_timeout_ms",
    "dialect",
    "failover_home_region",
    "failover_mode",
    "failover_timeout_ms",
    "failure_detection_count",
    "failure_detection_enabled",
    "failure_detection_interval_ms",
    "failure_detection_time_ms",
    "global_cluster_instance_host_patterns",
    "global_read_mode",
    "iam_default_port",
    "iam_expiration_ms",
    "iam_host",
    "iam_region",
    "idle_timeout_ms",
    "instance_endpoints",
    "keepalives",
    "keepalives_count",
    "keepalives_idle",
    "keepalives_interval",
    "max_lifetime_ms",
    "max_replica_lag_ms",
    "monitor_idle_pause_ms",
    "reader_host_selector_strategy",
    "reader_max_connections",
    "reader_min_connections",
    "secrets_manager_connect_retry_interval_ms",
    "secrets_manager_connect_retry_timeout_ms",
    "secrets_manager_endpoint",
    "secrets_manager_expiration_ms",
    "secrets_manager_region",
    "secrets_manager_secret_id",
    "secrets_manager_secret_password_key",
    "secrets_manager_secret_username_key",
    "tcp_user_timeout",
    "writer_max_connections",
    "writer_min_connections",
];

/// The known parameter closest to `key` (a few edits away at most), to name in the error.
fn closest_known(key: &str) -> Option<&'static str> {
    KNOWN_PARAMETERS
        .iter()
        .chain(DRIVER_PARAMETERS)
        .map(|known| (edit_distance(key, known), *known))
        .filter(|(distance, known)| *distance <= (known.len() / 4).max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, known)| known)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substituted = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substituted.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

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
            max_replica_lag: None,
            global: Default::default(),
            failover_timeout: Duration::from_millis(30_000),
            cluster_topology_high_refresh_rate: Duration::from_millis(100),
            failure_detection_enabled: true,
            failure_detection_time: Duration::ZERO,
            failure_detection_interval: Duration::from_millis(500),
            failure_detection_count: 2,
            monitor_idle_pause: Some(Duration::from_secs(60)),
            writer: PoolSizing::default(),
            reader: PoolSizing::default(),
            acquire_timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            connect_timeout: Duration::from_secs(10),
            tcp: TcpSettings::default(),
            auth: Auth::Password,
            hostaddr: None,
            allow_unverified_server: false,
            #[cfg(feature = "custom-endpoint")]
            custom_endpoint: crate::custom_endpoint::CustomEndpointSettings::default(),
            driver_url: parsed.clone(),
            user: decode_user(parsed.username())?,
            password,
            failover_mode_chosen: false,
            #[cfg(any(
                feature = "iam",
                feature = "secrets-manager",
                feature = "custom-endpoint"
            ))]
            sdk_config: None,
            connect_timeout_parameter: "connect_timeout_ms",
        };

        let mut driver_pairs = Vec::new();
        let mut auth_pairs = Vec::new();
        let given = |key: &str| parsed.query_pairs().any(|(k, _)| k == key);
        if given("connect_timeout") && given("connect_timeout_ms") {
            return Err(Error::config(
                "connect_timeout_ms",
                "give either connect_timeout_ms or libpq's connect_timeout (in seconds), not both",
            ));
        }
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
                    match closest_known(&key) {
                        Some(known) => format!(
                            "unknown parameter; did you mean `{known}`? (the README's Configuration lists the supported ones)"
                        ),
                        None => "unknown parameter (the README's Configuration lists the supported ones)"
                            .to_owned(),
                    },
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
            "max_replica_lag_ms" => {
                self.max_replica_lag = Some(Duration::from_millis(parse_number(key, value)?));
            }
            _ if self.global.apply_parameter(key, value)? => {}
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
            "monitor_idle_pause_ms" => {
                self.monitor_idle_pause = optional_ms(parse_number(key, value)?)
            }
            "writer_max_connections" => self.writer.max_connections = parse_number(key, value)?,
            "writer_min_connections" => self.writer.min_connections = parse_number(key, value)?,
            "reader_max_connections" => self.reader.max_connections = parse_number(key, value)?,
            "reader_min_connections" => self.reader.min_connections = parse_number(key, value)?,
            "acquire_timeout_ms" => {
                self.acquire_timeout = Duration::from_millis(parse_number(key, value)?)
            }
            "idle_timeout_ms" => self.idle_timeout = optional_ms(parse_number(key, value)?),
            "max_lifetime_ms" => self.max_lifetime = optional_ms(parse_number(key, value)?),
            // libpq's own, in seconds; the crate's durations are all in milliseconds.
            "connect_timeout" => {
                self.connect_timeout = Duration::from_secs(parse_number(key, value)?);
                self.connect_timeout_parameter = "connect_timeout";
            }
            "connect_timeout_ms" => {
                self.connect_timeout = Duration::from_millis(parse_number(key, value)?)
            }
            _ if self.tcp.apply_parameter(key, value)? => {}
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

/// A duration parameter under its former name, in seconds (`old`): accepted, with a warning
/// naming the one to use (`new`, in milliseconds, as every duration of the crate's own), and
/// its value in milliseconds.
#[cfg(any(feature = "iam", feature = "secrets-manager"))]
pub(crate) fn renamed_seconds(old: &str, new: &str, value: &str) -> Result<u64> {
    let seconds: u64 = value
        .trim()
        .parse()
        .map_err(|_| Error::config(old, format!("`{value}` is not a number of seconds")))?;
    tracing::warn!(
        target: "aurora_pool",
        parameter = old,
        use_instead = new,
        "a URL parameter under its former name (in seconds): use {new} (in milliseconds)"
    );
    seconds
        .checked_mul(1000)
        .ok_or_else(|| Error::config(old, format!("`{value}` is too long")))
}
