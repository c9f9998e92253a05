//! The checks of a configuration's values against each other.

use std::time::Duration;

use super::{Auth, Config, MAX_DURATION};
use crate::error::{Error, Result};

impl Config {
    /// Every duration setting with its parameter name.
    fn durations(&self) -> [(&'static str, Duration); 11] {
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
            (self.connect_timeout_parameter, self.connect_timeout),
            (
                "monitor_idle_pause_ms",
                self.monitor_idle_pause.unwrap_or_default(),
            ),
            (
                "max_replica_lag_ms",
                self.max_replica_lag.unwrap_or_default(),
            ),
        ]
    }

    /// Checks the values against each other. Called by [`Config::from_url`], [`Builder`](super::Builder) and
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
            return Err(Error::config(
                self.connect_timeout_parameter,
                "must be greater than 0",
            ));
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
}
