//! Which instances reads may use: every instance, or the members of the custom endpoint the
//! URL names (feature `custom-endpoint`), with the failover mode that goes with them; in an
//! Aurora Global Database the readers of the regions the read mode allows; never a reader
//! lagging more than `max_replica_lag_ms`.

use std::sync::Arc;

use crate::config::{Config, FailoverMode, GlobalReadMode};
use crate::error::Result;
use crate::topology::{Instance, Topology};

/// Whether an instance (by id) is a member.
type Membership = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The read side of one routing table.
#[derive(Clone)]
pub(crate) struct ReadScope {
    /// `None`: every instance.
    members: Option<Membership>,
    /// Whether the writer may serve reads at all (a READER custom endpoint excludes it).
    writer_may_read: bool,
    failover_mode: FailoverMode,
    regions: Regions,
}

/// The read rules that come from the configuration alone: regions and lag.
#[derive(Clone)]
struct Regions {
    /// The home region of a global database (`None`: not known; connecting to a global
    /// database then fails, see `require_home_region`).
    home: Option<String>,
    mode: GlobalReadMode,
    max_lag_ms: Option<f64>,
}

impl Regions {
    fn of(config: &Config) -> Regions {
        Regions {
            home: config.home_region(),
            mode: config.global.read_mode,
            max_lag_ms: config.max_replica_lag.map(|d| d.as_secs_f64() * 1000.0),
        }
    }

    fn allows(&self, instance: &Instance) -> bool {
        let lag_ok = match (self.max_lag_ms, instance.replica_lag_ms()) {
            (Some(max), Some(lag)) => lag <= max,
            _ => true,
        };
        let region_ok = match (instance.region(), &self.home) {
            (Some(region), Some(home)) => self.mode.allows_region(region, home),
            _ => true,
        };
        lag_ok && region_ok
    }
}

impl ReadScope {
    fn everything(config: &Config) -> ReadScope {
        ReadScope {
            members: None,
            writer_may_read: true,
            failover_mode: config.failover_mode,
            regions: Regions::of(config),
        }
    }

    /// Whether reads may use the reader `instance`: a member, in a region the read mode
    /// allows, not lagging more than `max_replica_lag_ms`.
    pub(crate) fn allows(&self, instance: &Instance) -> bool {
        self.is_member(instance.id()) && self.regions.allows(instance)
    }

    fn is_member(&self, id: &str) -> bool {
        self.members.as_ref().is_none_or(|allows| allows(id))
    }

    /// Whether reads with no reader available may go to `topology`'s writer: the failover
    /// mode decides, and in a global database the read mode.
    pub(crate) fn reads_may_use_writer(&self, topology: &Topology) -> bool {
        let mode_allows = match topology.writer().region() {
            Some(_) => self.regions.mode.may_use_writer(),
            None => self.failover_mode.reads_may_use_writer(),
        };
        mode_allows && self.writer_may_read && self.is_member(topology.writer().id())
    }
}

/// A global database needs a home region: the URL's host names none (the global writer
/// endpoint, an address, a custom domain) and `failover_home_region` is not set.
pub(crate) fn require_home_region(config: &Config, topology: &Topology) -> Result<()> {
    if topology.writer().region().is_some() && config.home_region().is_none() {
        return Err(crate::error::Error::config(
            "failover_home_region",
            format!(
                "the cluster is an Aurora Global Database (regions {}) and the URL's host `{}` \
                 names no region: set `failover_home_region` to the region whose readers serve \
                 reads",
                regions_of(topology),
                config.host
            ),
        ));
    }
    Ok(())
}

fn regions_of(topology: &Topology) -> String {
    let mut regions: Vec<&str> = topology
        .instances()
        .iter()
        .filter_map(Instance::region)
        .collect();
    regions.sort_unstable();
    regions.dedup();
    regions.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::HostPort;
    use crate::topology::Role;

    fn reader(id: &str, region: &str, lag_ms: f64) -> Instance {
        let address = HostPort {
            host: format!("{id}.example.com"),
            port: 5432,
        };
        Instance::for_test(id, address, Role::Reader).in_region(region, Some(lag_ms))
    }

    fn scope(params: &str) -> ReadScope {
        let config =
            Config::from_url(&format!("postgres://app@127.0.0.1/app?{params}")).expect("config");
        ReadScope::everything(&config)
    }

    #[test]
    fn reads_stay_in_the_home_region_and_off_lagging_readers() {
        let home = scope("failover_home_region=us-west-2&max_replica_lag_ms=100");
        assert!(home.allows(&reader("a", "us-west-2", 10.0)));
        assert!(
            !home.allows(&reader("b", "us-east-1", 10.0)),
            "another region"
        );
        assert!(!home.allows(&reader("c", "us-west-2", 500.0)), "lagging");
        let away =
            scope("failover_home_region=us-west-2&global_read_mode=strict-out-of-home-reader");
        assert!(away.allows(&reader("b", "us-east-1", 10.0)));
        assert!(!away.allows(&reader("a", "us-west-2", 10.0)));
        // A regional cluster's readers have no region: only the lag counts.
        let regional = scope("max_replica_lag_ms=100");
        let plain = Instance::for_test(
            "d",
            HostPort {
                host: "d.example.com".into(),
                port: 5432,
            },
            Role::Reader,
        );
        assert!(regional.allows(&plain));
    }
}

/// Where the read scope comes from, and how to wait for it to change.
#[derive(Clone)]
pub(crate) struct ScopeSource {
    config_scope: ReadScope,
    #[cfg(feature = "custom-endpoint")]
    endpoint: Option<endpoint::Followed>,
}

impl ScopeSource {
    /// For `config`: with a custom endpoint URL, joins its monitor and (with
    /// `wait_for_custom_endpoint_info`) waits for its first member list.
    pub(crate) async fn new(config: &Config) -> Result<ScopeSource> {
        Ok(ScopeSource {
            config_scope: ReadScope::everything(config),
            #[cfg(feature = "custom-endpoint")]
            endpoint: endpoint::Followed::new(config).await?,
        })
    }

    /// The scope now.
    pub(crate) fn current(&self) -> ReadScope {
        #[cfg(feature = "custom-endpoint")]
        if let Some(endpoint) = &self.endpoint {
            return endpoint.scope(&self.config_scope);
        }
        self.config_scope.clone()
    }

    /// Resolves when the scope may have changed; never, without a custom endpoint.
    pub(crate) async fn changed(&mut self) {
        #[cfg(feature = "custom-endpoint")]
        if let Some(endpoint) = &mut self.endpoint {
            return endpoint.changed().await;
        }
        std::future::pending().await
    }
}

#[cfg(feature = "custom-endpoint")]
mod endpoint {
    use std::sync::Arc;

    use tokio::sync::watch;

    use super::ReadScope;
    use crate::config::Config;
    use crate::custom_endpoint::describe::{CustomEndpointInfo, CustomEndpointType};
    use crate::custom_endpoint::monitor::{self, CustomEndpointHandle, InfoState};
    use crate::endpoint::{Endpoint, EndpointKind};
    use crate::error::{Error, Result};

    /// A custom endpoint followed by a pool.
    #[derive(Clone)]
    pub(super) struct Followed {
        handle: Arc<CustomEndpointHandle>,
        info: watch::Receiver<InfoState>,
        /// Whether a task runs the monitor.
        running: watch::Receiver<bool>,
        config: Arc<Config>,
    }

    impl Followed {
        pub(super) async fn new(config: &Config) -> Result<Option<Followed>> {
            if Endpoint::classify(&config.host).kind() != EndpointKind::ClusterCustom {
                return Ok(None);
            }
            let settings = &config.custom_endpoint;
            let handle = monitor::join(&config.host, settings).await?;
            let mut info = handle.subscribe();
            if settings.wait_for_info {
                // Until the members are known, or AWS refuses the credentials (waiting would not
                // help); whatever it ends on, the state then tells what happened.
                let _ = tokio::time::timeout(
                    settings.wait_for_info_timeout,
                    info.wait_for(|state| match state {
                        InfoState::Known(_) => true,
                        InfoState::Failed { error, .. } => error.is_credentials(),
                        InfoState::Waiting => false,
                    }),
                )
                .await;
                let state = info.borrow_and_update().clone();
                match state {
                    InfoState::Known(_)
                    | InfoState::Failed {
                        last_known: Some(_),
                        ..
                    } => {}
                    InfoState::Failed {
                        error,
                        last_known: None,
                    } => {
                        let message = format!(
                            "the members of custom endpoint `{}` could not be read",
                            config.host
                        );
                        let err = if error.is_credentials() {
                            Error::credentials(message)
                        } else {
                            Error::custom_endpoint_unavailable(message)
                        };
                        return Err(err.with_source(SharedError(error)));
                    }
                    InfoState::Waiting => {
                        return Err(Error::custom_endpoint_unavailable(format!(
                            "the members of custom endpoint `{}` were not known within {:?} (wait_for_custom_endpoint_info_timeout_ms)",
                            config.host, settings.wait_for_info_timeout
                        )));
                    }
                }
            }
            Ok(Some(Followed {
                running: handle.running(),
                handle,
                info,
                config: Arc::new(config.clone()),
            }))
        }

        pub(super) fn scope(&self, everything: &ReadScope) -> ReadScope {
            let state = self.info.borrow().clone();
            let info = match state {
                InfoState::Known(info) => info,
                InfoState::Failed {
                    last_known: Some(info),
                    ..
                } => info,
                // Not known yet (and not waited for): any instance.
                _ => return everything.clone(),
            };
            scope_of(&info, &self.config)
        }

        /// Resolves when the members may have changed. Meanwhile, starts the monitor again
        /// on this runtime when the runtime that ran it shut down.
        pub(super) async fn changed(&mut self) {
            loop {
                tokio::select! {
                    changed = self.info.changed() => {
                        if changed.is_err() {
                            std::future::pending::<()>().await;
                        }
                        return;
                    }
                    watched = async { self.running.wait_for(|running| !running).await.is_ok() } => {
                        if !watched {
                            std::future::pending::<()>().await;
                        }
                    }
                }
                if self.handle.keep_running() {
                    // A runtime shutting down drops the new task at once: let it drop this
                    // one too, rather than starting the monitor again and again.
                    tokio::task::yield_now().await;
                } else {
                    // Retired, or started again by another pool meanwhile: watch it run.
                    let _ = self.running.wait_for(|running| *running).await;
                }
            }
        }
    }

    fn scope_of(info: &Arc<CustomEndpointInfo>, config: &Config) -> ReadScope {
        let reader_only = info.endpoint_type == CustomEndpointType::Reader;
        let members = info.clone();
        ReadScope {
            members: Some(Arc::new(move |id: &str| members.allows(id))),
            writer_may_read: !reader_only,
            failover_mode: config.failover_mode_for_custom_endpoint(reader_only),
            regions: super::Regions::of(config),
        }
    }

    /// An error shared by every pool waiting on one monitor.
    #[derive(Debug)]
    struct SharedError(Arc<Error>);

    impl std::fmt::Display for SharedError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.0.fmt(f)
        }
    }

    impl std::error::Error for SharedError {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(self.0.as_ref())
        }
    }
}
