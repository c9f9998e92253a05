//! `connect_lazy`: a pool that exists before its cluster is discovered, so that a service
//! can build its state while the database is still starting (or unreachable).
//!
//! The pool routes by an undiscovered topology (the URL's host as an unavailable writer):
//! its role pools exist and can be handed out, and their checkouts wait, as they wait
//! for a new writer during a failover, each within its own timeout. Discovery runs in the
//! reconciler's task, again after each failure (backing off to [`MAX_PAUSE`]); once it
//! succeeds the pool joins the cluster monitor and follows it as a pool from `connect`
//! does.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{Followed, PoolCore, discover, follow_cluster};
use crate::config::Config;
use crate::error::Error;
use crate::pool::backend::Backend;
use crate::pool::scope::ScopeSource;
use crate::pool::tasks::reconcile_on_updates;
use crate::topology::Topology;

/// The pause after the first failed discovery; it doubles after each one.
const FIRST_PAUSE: Duration = Duration::from_millis(100);

/// The longest pause between two discoveries.
const MAX_PAUSE: Duration = Duration::from_secs(5);

impl Followed {
    /// What a pool from `connect_lazy` follows until its first discovery: the URL's host as
    /// an unavailable writer, and no monitor.
    pub(super) fn undiscovered(config: &Config) -> Followed {
        Followed {
            registration: None,
            cluster: None,
            topology: Arc::new(Topology::undiscovered(&config.seed())),
            updates: None,
        }
    }
}

impl<B: Backend> PoolCore<B> {
    /// Makes the role pools' checkouts wait for the first discovery (see the module docs).
    pub(super) fn await_discovery(&self) {
        let table = self.routing.load();
        for targets in [&table.writer.targets, &table.reads.targets] {
            targets.await_discovery();
        }
    }

    /// Whether the pool was opened with `connect_lazy` and has not discovered its cluster
    /// yet.
    pub(crate) fn is_undiscovered(&self) -> bool {
        self.registration.get().is_none()
    }

    /// Why the last discovery failed, while none has succeeded.
    pub(crate) fn discovery_failure(&self) -> Option<Error> {
        let failure = self.discovery_failure.load_full()?;
        self.is_undiscovered().then(|| {
            Error::topology(format!(
                "the cluster has not been discovered yet (the pool was opened with connect_lazy); the last attempt failed: {failure}"
            ))
        })
    }
}

/// Discovers the cluster until it succeeds (or the pool closes or is dropped), then follows
/// it as a pool from `connect` does: the reconciler's task of a pool from `connect_lazy`.
pub(super) async fn discover_then_follow<B: Backend>(core: Weak<PoolCore<B>>, scope: ScopeSource) {
    let mut pause = FIRST_PAUSE;
    let updates = loop {
        let Some(strong) = core.upgrade() else { return };
        if strong.is_closed() {
            return;
        }
        let connector = strong.connector.clone();
        let found = discover(&strong.config, &connector)
            .await
            .and_then(|discovered| follow_cluster(&strong.config, &connector, discovered));
        match found {
            Ok(followed) => {
                if let Some(registration) = followed.registration {
                    let _ = strong.registration.set(registration);
                }
                strong.cluster.store(followed.cluster.clone());
                // `close` sets the flag before it takes the monitor: whichever of the two
                // runs second lets it go.
                if strong.is_closed() {
                    strong.cluster.store(None);
                    return;
                }
                strong.discovery_failure.store(None);
                strong.reconcile(&followed.topology, false).await;
                strong.routing.load().writer.targets.forget_recovery();
                match followed.updates {
                    Some(updates) => break updates,
                    // Through an RDS Proxy: nothing more to follow.
                    None => return,
                }
            }
            Err(err) => {
                tracing::warn!(
                    target: "aurora_pool",
                    cluster_id = %strong.config.cluster_id,
                    retry_in_ms = pause.as_millis() as u64,
                    error = %format!("{err:#}"),
                    "discovery of a pool opened with connect_lazy failed; trying again"
                );
                strong
                    .discovery_failure
                    .store(Some(Arc::new(format!("{err:#}"))));
            }
        }
        drop(strong);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    };
    reconcile_on_updates(core, updates, scope).await;
}
