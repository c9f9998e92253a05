//! The settings of custom endpoint awareness.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};

/// How the pool follows the members of an Aurora custom endpoint (feature `custom-endpoint`),
/// when the URL's host is one (`<name>.cluster-custom-<id>.<region>.rds.amazonaws.com`).
#[derive(Clone)]
#[non_exhaustive]
pub struct CustomEndpointSettings {
    /// How often the members are read with `DescribeDBClusterEndpoints`
    /// (`custom_endpoint_info_refresh_rate_ms`, default 30000).
    pub refresh_rate: Duration,
    /// A monitor no pool has used for this long stops
    /// (`custom_endpoint_idle_monitor_expiration_ms`, default 900000).
    pub idle_monitor_expiration: Duration,
    /// Whether checkouts wait for the first member list (`wait_for_custom_endpoint_info`,
    /// default true). Without it they may use any instance until the list arrives.
    pub wait_for_info: bool,
    /// How long checkouts wait for it (`wait_for_custom_endpoint_info_timeout_ms`, default
    /// 5000); then they fail with an error that says so.
    pub wait_for_info_timeout: Duration,
    /// The region of the RDS API (`custom_endpoint_region`); by default read from the host.
    pub region: Option<String>,
    /// The RDS API client to use instead of one built from the AWS configuration chain
    /// (which honours `AWS_ENDPOINT_URL_RDS`).
    pub client: Option<aws_sdk_rds::Client>,
    /// The application's AWS configuration the RDS API client is built from, when no
    /// [`client`](Self::client) is given (see `Builder::sdk_config`).
    pub(crate) sdk_config: Option<aws_config::SdkConfig>,
}

impl Default for CustomEndpointSettings {
    fn default() -> Self {
        CustomEndpointSettings {
            refresh_rate: Duration::from_millis(30_000),
            idle_monitor_expiration: Duration::from_millis(900_000),
            wait_for_info: true,
            wait_for_info_timeout: Duration::from_millis(5_000),
            region: None,
            client: None,
            sdk_config: None,
        }
    }
}

impl CustomEndpointSettings {
    /// The defaults above.
    pub fn new() -> CustomEndpointSettings {
        CustomEndpointSettings::default()
    }

    /// Uses `client` for `DescribeDBClusterEndpoints`.
    pub fn client(mut self, client: aws_sdk_rds::Client) -> CustomEndpointSettings {
        self.client = Some(client);
        self
    }

    /// Applies one `custom_endpoint_*` (or `wait_for_custom_endpoint_info*`) URL parameter;
    /// `false` when the name is not one of them.
    pub(crate) fn apply_parameter(&mut self, key: &str, value: &str) -> Result<bool> {
        let millis = || -> Result<Duration> {
            value
                .trim()
                .parse()
                .map(Duration::from_millis)
                .map_err(|_| {
                    Error::config(key, format!("`{value}` is not a number of milliseconds"))
                })
        };
        match key {
            "custom_endpoint_info_refresh_rate_ms" => self.refresh_rate = millis()?,
            "custom_endpoint_idle_monitor_expiration_ms" => {
                self.idle_monitor_expiration = millis()?
            }
            "wait_for_custom_endpoint_info" => {
                self.wait_for_info = match value {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(Error::config(
                            key,
                            format!("`{value}` is not `true` or `false`"),
                        ));
                    }
                }
            }
            "wait_for_custom_endpoint_info_timeout_ms" => self.wait_for_info_timeout = millis()?,
            "custom_endpoint_region" => self.region = Some(value.to_owned()),
            _ => return Ok(false),
        }
        Ok(true)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        for (parameter, value) in [
            ("custom_endpoint_info_refresh_rate_ms", self.refresh_rate),
            (
                "custom_endpoint_idle_monitor_expiration_ms",
                self.idle_monitor_expiration,
            ),
        ] {
            if value.is_zero() {
                return Err(Error::config(parameter, "must be greater than 0"));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CustomEndpointSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomEndpointSettings")
            .field("refresh_rate", &self.refresh_rate)
            .field("idle_monitor_expiration", &self.idle_monitor_expiration)
            .field("wait_for_info", &self.wait_for_info)
            .field("wait_for_info_timeout", &self.wait_for_info_timeout)
            .field("region", &self.region)
            .field("client", &self.client.as_ref().map(|_| "explicit"))
            .finish()
    }
}
