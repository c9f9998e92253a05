//! Settings made in code on top of a URL.

use std::fmt;
use std::sync::Arc;

use super::{Auth, Config};
use crate::auth::CredentialProvider;
use crate::endpoint::{HostPattern, HostPort};
use crate::error::{Error, Result};

/// Builds a [`Config`] (or, with the `sqlx` feature, an [`AuroraPool`](crate::AuroraPool))
/// from a URL plus settings made in code.
///
/// Settings made here win over the URL's parameters.
///
/// ```
/// use std::time::Duration;
/// use aurora_pool::{AuroraPool, ReaderSelection};
///
/// let config = AuroraPool::builder()
///     .url("postgres://app@db.cluster-abc123.us-east-1.rds.amazonaws.com/app")
///     .cluster_id("orders")
///     .reader_host_selector_strategy(ReaderSelection::RoundRobin)
///     .writer_max_connections(20)
///     .acquire_timeout(Duration::from_secs(5))
///     .build()?;
/// assert_eq!(config.writer.max_connections, 20);
/// # Ok::<(), aurora_pool::Error>(())
/// ```
#[must_use]
#[derive(Default, Clone)]
pub struct Builder {
    url: Option<String>,
    settings: Vec<Setting>,
}

/// One setting, applied to the `Config` the URL gave (cloned with the builder, applied
/// once per build).
type Setting = Arc<dyn Fn(&mut Config) -> Result<()> + Send + Sync>;

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("url", &self.url.as_ref().map(|_| "<set>"))
            .field("settings", &self.settings.len())
            .finish()
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty => |$config:ident, $value:ident| $body:expr;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(self, $value: $ty) -> Self {
                self.with(move |$config| {
                    let $value = $value.clone();
                    $body;
                    Ok(())
                })
            }
        )*
    };
}

/// Calls `$then!` with every setting of [`Builder`] that takes one value it can keep (each
/// with its docs, name, type and how it changes a [`Config`]): the builder's own setters,
/// and the sqlx flavour's `AuroraPoolOptions`, which delegates them.
macro_rules! each_setting {
    ($then:ident) => {
        $then! {
            /// See [`crate::Config::cluster_topology_refresh_rate`].
            cluster_topology_refresh_rate: std::time::Duration => |c, v| c.cluster_topology_refresh_rate = v;
            /// See [`crate::Config::dialect`].
            dialect: crate::topology::Dialect => |c, v| c.dialect = Some(v);
            /// See [`crate::Config::reader_host_selector_strategy`].
            reader_host_selector_strategy: crate::select::ReaderSelection => |c, v| c.reader_host_selector_strategy = v;
            /// See [`crate::Config::failover_mode`].
            failover_mode: crate::config::FailoverMode => |c, v| { c.failover_mode = v; c.failover_mode_chosen = true };
            /// See [`crate::Config::failover_timeout`].
            failover_timeout: std::time::Duration => |c, v| c.failover_timeout = v;
            /// See [`crate::Config::cluster_topology_high_refresh_rate`].
            cluster_topology_high_refresh_rate: std::time::Duration => |c, v| c.cluster_topology_high_refresh_rate = v;
            /// See [`crate::Config::failure_detection_enabled`].
            failure_detection_enabled: bool => |c, v| c.failure_detection_enabled = v;
            /// See [`crate::Config::allow_unverified_server`].
            allow_unverified_server: bool => |c, v| c.allow_unverified_server = v;
            /// See [`crate::Config::allow_unqualified_host_pattern`].
            allow_unqualified_host_pattern: bool => |c, v| c.allow_unqualified_host_pattern = v;
            /// See [`crate::Config::failure_detection_time`].
            failure_detection_time: std::time::Duration => |c, v| c.failure_detection_time = v;
            /// See [`crate::Config::failure_detection_interval`].
            failure_detection_interval: std::time::Duration => |c, v| c.failure_detection_interval = v;
            /// See [`crate::Config::failure_detection_count`].
            failure_detection_count: u32 => |c, v| c.failure_detection_count = v;
            /// See [`crate::Config::monitor_idle_pause`] (`None`: never).
            monitor_idle_pause: Option<std::time::Duration> => |c, v| c.monitor_idle_pause = v;
            /// See [`PoolSizing::max_connections`](crate::config::PoolSizing::max_connections) of [`crate::Config::writer`].
            writer_max_connections: u32 => |c, v| c.writer.max_connections = v;
            /// See [`PoolSizing::min_connections`](crate::config::PoolSizing::min_connections) of [`crate::Config::writer`].
            writer_min_connections: u32 => |c, v| c.writer.min_connections = v;
            /// See [`PoolSizing::max_connections`](crate::config::PoolSizing::max_connections) of [`crate::Config::reader`].
            reader_max_connections: u32 => |c, v| c.reader.max_connections = v;
            /// See [`PoolSizing::min_connections`](crate::config::PoolSizing::min_connections) of [`crate::Config::reader`].
            reader_min_connections: u32 => |c, v| c.reader.min_connections = v;
            /// See [`crate::Config::acquire_timeout`].
            acquire_timeout: std::time::Duration => |c, v| c.acquire_timeout = v;
            /// See [`crate::Config::idle_timeout`]; `None` keeps idle connections forever.
            idle_timeout: Option<std::time::Duration> => |c, v| c.idle_timeout = v;
            /// See [`crate::Config::max_lifetime`]; `None` lets connections live forever.
            max_lifetime: Option<std::time::Duration> => |c, v| c.max_lifetime = v;
            /// See [`crate::Config::connect_timeout`].
            connect_timeout: std::time::Duration => |c, v| c.connect_timeout = v;
            /// See [`crate::Config::auth`].
            auth: crate::config::Auth => |c, v| c.auth = v;
            /// See [`crate::Config::max_replica_lag`].
            max_replica_lag: std::time::Duration => |c, v| c.max_replica_lag = Some(v);
            /// See [`GlobalSettings::read_mode`](crate::config::GlobalSettings::read_mode).
            global_read_mode: crate::config::GlobalReadMode => |c, v| c.global.read_mode = v;
        }
    };
}
#[cfg(any(feature = "sqlx", feature = "deadpool"))]
pub(crate) use each_setting;

/// The setters of [`Builder`] on a flavour's options type, delegated through its
/// `fn set(self, impl FnOnce(Builder) -> Builder) -> Self`: every flavour takes the same
/// settings in code.
#[cfg(any(feature = "sqlx", feature = "deadpool"))]
macro_rules! delegate_settings {
    () => {
        crate::config::each_setting!(delegated_setting);

        /// See [`Builder::cluster_id`](crate::Builder::cluster_id).
        pub fn cluster_id(self, cluster_id: impl Into<String>) -> Self {
            self.set(|b| b.cluster_id(cluster_id))
        }

        /// See [`Builder::password`](crate::Builder::password).
        pub fn password(self, password: impl Into<String>) -> Self {
            self.set(|b| b.password(password))
        }

        /// See [`Builder::failover_home_region`](crate::Builder::failover_home_region).
        pub fn failover_home_region(self, region: &str) -> Self {
            self.set(|b| b.failover_home_region(region))
        }

        /// See [`Builder::global_cluster_instance_host_patterns`](crate::Builder::global_cluster_instance_host_patterns).
        pub fn global_cluster_instance_host_patterns(self, patterns: &str) -> Self {
            self.set(|b| b.global_cluster_instance_host_patterns(patterns))
        }

        /// See [`Builder::custom_endpoint_client`](crate::Builder::custom_endpoint_client).
        #[cfg(feature = "custom-endpoint")]
        pub fn custom_endpoint_client(self, client: aws_sdk_rds::Client) -> Self {
            self.set(|b| b.custom_endpoint_client(client))
        }

        /// See [`Builder::sdk_config`](crate::Builder::sdk_config).
        #[cfg(any(
            feature = "iam",
            feature = "secrets-manager",
            feature = "custom-endpoint"
        ))]
        pub fn sdk_config(self, sdk_config: aws_config::SdkConfig) -> Self {
            self.set(|b| b.sdk_config(sdk_config))
        }

        /// See [`Builder::hostaddr`](crate::Builder::hostaddr).
        pub fn hostaddr(self, address: std::net::IpAddr) -> Self {
            self.set(|b| b.hostaddr(address))
        }

        /// See [`Builder::credential_provider`](crate::Builder::credential_provider).
        pub fn credential_provider(self, provider: impl crate::auth::CredentialProvider) -> Self {
            self.set(|b| b.credential_provider(provider))
        }

        /// See [`Builder::cluster_instance_host_pattern`](crate::Builder::cluster_instance_host_pattern).
        pub fn cluster_instance_host_pattern(self, pattern: impl Into<String>) -> Self {
            self.set(|b| b.cluster_instance_host_pattern(pattern))
        }

        /// See [`Builder::instance_endpoint`](crate::Builder::instance_endpoint).
        pub fn instance_endpoint(
            self,
            instance: impl Into<String>,
            address: impl Into<String>,
        ) -> Self {
            self.set(|b| b.instance_endpoint(instance, address))
        }

        fn set(mut self, setting: impl FnOnce(crate::Builder) -> crate::Builder) -> Self {
            self.settings = setting(std::mem::take(&mut self.settings));
            self
        }
    };
}
#[cfg(any(feature = "sqlx", feature = "deadpool"))]
pub(crate) use delegate_settings;

/// One [`Builder`] setter of `each_setting!`, delegated (see `delegate_settings!`).
#[cfg(any(feature = "sqlx", feature = "deadpool"))]
macro_rules! delegated_setting {
    ($($(#[$doc:meta])* $name:ident: $ty:ty => |$config:ident, $value:ident| $body:expr;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(self, $value: $ty) -> Self {
                self.set(|b| b.$name($value))
            }
        )*
    };
}
#[cfg(any(feature = "sqlx", feature = "deadpool"))]
pub(crate) use delegated_setting;

impl Builder {
    /// A builder with no URL yet.
    pub fn new() -> Builder {
        Builder::default()
    }

    fn with(mut self, setting: impl Fn(&mut Config) -> Result<()> + Send + Sync + 'static) -> Self {
        self.settings.push(Arc::new(setting));
        self
    }

    /// The connection URL (required).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    each_setting!(setters);

    /// See [`Config::cluster_id`].
    pub fn cluster_id(self, cluster_id: impl Into<String>) -> Self {
        let cluster_id = cluster_id.into();
        self.with(move |c| {
            c.cluster_id = cluster_id.clone();
            Ok(())
        })
    }

    /// The password, instead of the one in the URL.
    pub fn password(self, password: impl Into<String>) -> Self {
        let password: String = password.into();
        self.with(move |c| {
            c.set_password(password.clone());
            Ok(())
        })
    }

    /// See [`GlobalSettings::home_region`](super::GlobalSettings::home_region).
    pub fn failover_home_region(self, region: &str) -> Self {
        let region = region.to_owned();
        self.with(move |c| {
            c.global
                .apply_parameter("failover_home_region", &region)
                .map(|_| ())
        })
    }

    /// See [`GlobalSettings::host_patterns`](super::GlobalSettings::host_patterns): the
    /// same text as the URL parameter.
    pub fn global_cluster_instance_host_patterns(self, patterns: &str) -> Self {
        let patterns = patterns.to_owned();
        self.with(move |c| {
            c.global
                .apply_parameter("global_cluster_instance_host_patterns", &patterns)
                .map(|_| ())
        })
    }

    /// The RDS API client that reads a custom endpoint's members, instead of one built from
    /// the AWS configuration chain (see [`Config::custom_endpoint`]).
    #[cfg(feature = "custom-endpoint")]
    pub fn custom_endpoint_client(self, client: aws_sdk_rds::Client) -> Self {
        self.with(move |c| {
            c.custom_endpoint.client = Some(client.clone());
            Ok(())
        })
    }

    /// The application's AWS configuration (`aws_config::load_defaults(..)`, or one built
    /// by hand): IAM tokens are signed with its credentials, and the Secrets Manager and RDS
    /// API clients are built from it (with the secret's or the endpoint's region, and
    /// `secrets_manager_endpoint`, where given), instead of from the AWS configuration
    /// chain loaded anew by each. A client or credentials given for one of them
    /// ([`custom_endpoint_client`](Self::custom_endpoint_client),
    /// `IamSettings::credentials`, `SecretsManagerAuth::with_client`) win over it.
    #[cfg(any(
        feature = "iam",
        feature = "secrets-manager",
        feature = "custom-endpoint"
    ))]
    pub fn sdk_config(self, sdk_config: aws_config::SdkConfig) -> Self {
        self.with(move |c| {
            #[cfg(feature = "custom-endpoint")]
            {
                c.custom_endpoint.sdk_config = Some(sdk_config.clone());
            }
            c.sdk_config = Some(sdk_config.clone());
            Ok(())
        })
    }

    /// See [`Config::hostaddr`].
    pub fn hostaddr(self, address: std::net::IpAddr) -> Self {
        self.with(move |c| {
            c.hostaddr = Some(address.to_string());
            Ok(())
        })
    }

    /// Takes credentials for every new connection from `provider` ([`Auth::Provider`]).
    pub fn credential_provider(self, provider: impl CredentialProvider) -> Self {
        let provider: Arc<dyn CredentialProvider> = Arc::new(provider);
        self.with(move |c| {
            c.auth = Auth::Provider(provider.clone());
            Ok(())
        })
    }

    /// See [`Config::cluster_instance_host_pattern`]; checked when the builder is built.
    pub fn cluster_instance_host_pattern(self, pattern: impl Into<String>) -> Self {
        let pattern = pattern.into();
        self.with(move |c| {
            c.cluster_instance_host_pattern = Some(HostPattern::parse(&pattern)?);
            Ok(())
        })
    }

    /// Adds one entry to [`Config::instance_endpoints`]: `address` is `host:port`.
    pub fn instance_endpoint(
        self,
        instance: impl Into<String>,
        address: impl Into<String>,
    ) -> Self {
        let (instance, address) = (instance.into(), address.into());
        self.with(move |c| {
            let address = HostPort::parse("instance_endpoints", &address)?;
            c.instance_endpoints.insert(instance.clone(), address);
            Ok(())
        })
    }

    /// Parses the URL, applies the settings in order and validates the result.
    pub fn build(self) -> Result<Config> {
        let url = self
            .url
            .as_deref()
            .ok_or_else(|| Error::config("url", "no URL given; call `.url(\"postgres://...\")`"))?;
        self.apply_to(Config::from_url(url)?)
    }

    /// Applies the settings (not the URL) to `config`, in order, and validates the result.
    pub(crate) fn apply_to(&self, mut config: Config) -> Result<Config> {
        for setting in &self.settings {
            setting(&mut config)?;
        }
        config.validate()?;
        Ok(config)
    }
}
