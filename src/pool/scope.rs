//! Which instances reads may use: every instance, or the members of the custom endpoint the
//! URL names (feature `custom-endpoint`), with the failover mode that goes with them.

use std::sync::Arc;

use crate::config::{Config, FailoverMode};
use crate::error::Result;
use crate::topology::Topology;

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
}

impl ReadScope {
    fn everything(config: &Config) -> ReadScope {
        ReadScope {
            members: None,
            writer_may_read: true,
            failover_mode: config.failover_mode,
        }
    }

    /// Whether reads may use the instance `id`.
    pub(crate) fn allows(&self, id: &str) -> bool {
        self.members.as_ref().is_none_or(|allows| allows(id))
    }

    /// Whether reads with no reader available may go to `topology`'s writer.
    pub(crate) fn reads_may_use_writer(&self, topology: &Topology) -> bool {
        self.failover_mode.reads_may_use_writer()
            && self.writer_may_read
            && self.allows(topology.writer().id())
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
        _handle: Arc<CustomEndpointHandle>,
        info: watch::Receiver<InfoState>,
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
                _handle: handle,
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

        pub(super) async fn changed(&mut self) {
            if self.info.changed().await.is_err() {
                std::future::pending::<()>().await;
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
