//! One monitor per custom endpoint host in the process, shared by every pool using it.
//!
//! The [registry](join) hands out [`CustomEndpointHandle`]s. The monitor calls
//! `DescribeDBClusterEndpoints` every `refresh_rate` and publishes the endpoint's type and
//! members as an [`InfoState`]. When no handle has existed for `idle_monitor_expiration`
//! it stops; a pool joining before that reuses it, one joining after starts a new one.
//! The task runs on the runtime of the pool that started it; when that runtime shuts down
//! while other pools use the monitor (one `#[tokio::test]` of many ending), the next of them
//! to look starts it again on its own runtime ([`CustomEndpointHandle::keep_running`]).
//!
//! * Throttled calls back off: the pause doubles from `refresh_rate` up to 5 minutes (or
//!   `refresh_rate` when it is longer) and halves again with every successful call. The last
//!   known members stay published.
//! * Credentials errors (expired or invalid credentials, a missing permission) are published
//!   as [`InfoState::Failed`], logged once, and retried only every 5 minutes.
//! * Other errors (an unknown endpoint, AWS unreachable) are published as
//!   [`InfoState::Failed`] and retried after `refresh_rate`, doubling up to 5 minutes.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_rds::Client;
use tokio::sync::watch;
use tokio::time::Instant;

use super::describe::{CustomEndpointInfo, DescribeError, describe};
use super::settings::CustomEndpointSettings;
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};

/// The longest pause between two calls after failures.
const MAX_PAUSE: Duration = Duration::from_secs(300);

/// How long one `DescribeDBClusterEndpoints` call may take.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(30);

/// What is known about a custom endpoint.
#[derive(Debug, Clone)]
pub(crate) enum InfoState {
    /// The first `DescribeDBClusterEndpoints` call has not answered yet.
    Waiting,
    /// The endpoint's type and members, from the last successful call.
    Known(Arc<CustomEndpointInfo>),
    /// The last call failed, and no successful one came after it, or the first ones were
    /// throttled. A throttled call does not replace [`InfoState::Known`].
    Failed {
        /// Why.
        error: Arc<Error>,
        /// The members an earlier call found, if any.
        last_known: Option<Arc<CustomEndpointInfo>>,
    },
}

impl InfoState {
    /// The most recent members known: those of [`InfoState::Known`] or the last known ones
    /// of [`InfoState::Failed`].
    pub(crate) fn info(&self) -> Option<&Arc<CustomEndpointInfo>> {
        match self {
            InfoState::Waiting => None,
            InfoState::Known(info) => Some(info),
            InfoState::Failed { last_known, .. } => last_known.as_ref(),
        }
    }
}

/// The state of one monitor, shared by its task and its handles.
struct Shared {
    /// What the monitor is shared by (see [`monitor_key`]).
    key: String,
    /// The custom endpoint's host name, normalized.
    host: String,
    /// Its first DNS label: the `DBClusterEndpointIdentifier`.
    identifier: String,
    /// The settings of the first pool that joined.
    refresh_rate: Duration,
    idle_expiration: Duration,
    state: watch::Sender<InfoState>,
    /// How many handles exist. Only changed under the registry lock when it grows.
    users: watch::Sender<usize>,
    /// True while a task runs the monitor.
    running: watch::Sender<bool>,
    /// Set when the monitor stopped for want of users: the registry no longer hands it out,
    /// and nothing starts it again.
    retired: AtomicBool,
    /// What the monitor calls `DescribeDBClusterEndpoints` with.
    client: Client,
}

impl Shared {
    /// Publishes `info` when it differs from what is published.
    fn publish_known(&self, info: CustomEndpointInfo) {
        let mut changed = None;
        let mut recovered = false;
        self.state.send_if_modified(|state| {
            if let InfoState::Known(current) = state
                && **current == info
            {
                return false;
            }
            if state.info().is_none_or(|known| **known != info) {
                changed = Some(info.clone());
            }
            recovered = matches!(state, InfoState::Failed { .. });
            *state = InfoState::Known(Arc::new(info));
            true
        });
        crate::metrics::custom_endpoint_refreshed(&self.host, changed.is_some());
        if let Some(info) = changed {
            tracing::info!(
                target: "aurora_pool",
                host = %self.host,
                endpoint = %info.identifier,
                cluster = %info.cluster_identifier,
                endpoint_type = %info.endpoint_type,
                members = %info.members,
                "custom endpoint members changed"
            );
        } else if recovered {
            tracing::info!(
                target: "aurora_pool",
                host = %self.host,
                endpoint = %self.identifier,
                "DescribeDBClusterEndpoints answers again; custom endpoint members unchanged"
            );
        }
    }

    /// Publishes a failure, keeping the members known so far. With `keep_known`, a
    /// [`InfoState::Known`] stays published as it is.
    fn publish_failure(&self, error: Error, keep_known: bool) {
        self.state.send_if_modified(|state| {
            let last_known = match state {
                InfoState::Known(_) if keep_known => return false,
                InfoState::Known(info) => Some(info.clone()),
                InfoState::Failed {
                    error: previous,
                    last_known,
                } => {
                    if previous.to_string() == error.to_string() {
                        return false;
                    }
                    last_known.clone()
                }
                InfoState::Waiting => None,
            };
            *state = InfoState::Failed {
                error: Arc::new(error),
                last_known,
            };
            true
        });
    }
}

/// A pool's share of a custom endpoint's monitor. Cheap to hold; the monitor stops
/// `idle_monitor_expiration` after the last handle is dropped.
pub(crate) struct CustomEndpointHandle {
    shared: Arc<Shared>,
}

impl CustomEndpointHandle {
    /// A receiver of every published state; it starts with the current one.
    pub(crate) fn subscribe(&self) -> watch::Receiver<InfoState> {
        self.shared.state.subscribe()
    }

    /// The current state.
    pub(crate) fn state(&self) -> InfoState {
        self.shared.state.borrow().clone()
    }

    /// The custom endpoint's host name (lower case, without a trailing dot).
    pub(crate) fn host(&self) -> &str {
        &self.shared.host
    }

    /// The custom endpoint's identifier (the host's first DNS label).
    pub(crate) fn identifier(&self) -> &str {
        &self.shared.identifier
    }

    /// A receiver that is true while a task runs the monitor.
    pub(crate) fn running(&self) -> watch::Receiver<bool> {
        self.shared.running.subscribe()
    }

    /// Starts the monitor's task on the current runtime when none runs (the runtime that
    /// ran it shut down) and it was not retired. Returns whether it started one.
    pub(crate) fn keep_running(&self) -> bool {
        let started = start(&self.shared);
        if started {
            tracing::info!(
                target: "aurora_pool",
                host = %self.shared.host,
                "custom endpoint monitor restarted on this pool's runtime: the runtime that ran it shut down"
            );
        }
        started
    }
}

impl fmt::Debug for CustomEndpointHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomEndpointHandle")
            .field("host", &self.host())
            .field("identifier", &self.identifier())
            .field("refresh_rate", &self.shared.refresh_rate)
            .field("idle_expiration", &self.shared.idle_expiration)
            .field("state", &self.state())
            .finish()
    }
}

impl Drop for CustomEndpointHandle {
    fn drop(&mut self) {
        self.shared.users.send_modify(|n| *n = n.saturating_sub(1));
    }
}

static REGISTRY: LazyLock<Mutex<BTreeMap<String, Weak<Shared>>>> = LazyLock::new(Default::default);

fn registry() -> MutexGuard<'static, BTreeMap<String, Weak<Shared>>> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What decides a monitor's answer, and so which pools may share it: the endpoint, and the
/// account, region and API endpoint it is asked through. Pools on the AWS configuration
/// chain share one per host and region. A pool with a client of its own shares only with
/// pools that pass that same client (a clone of it): the key hashes the client's
/// configuration as `Debug` shows it (region, endpoint, credentials provider; never a
/// secret), which differs between separately built clients, so another account or
/// endpoint never shares a monitor by accident.
fn monitor_key(host: &str, settings: &CustomEndpointSettings) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let region = settings.region.as_deref().unwrap_or("(from the host)");
    match &settings.client {
        Some(client) => {
            let mut hasher = DefaultHasher::new();
            format!("{:?}", client.config()).hash(&mut hasher);
            format!("{host} region={region} client={:016x}", hasher.finish())
        }
        None => format!("{host} region={region}"),
    }
}

/// A new handle on the running monitor under `key`, if there is one.
fn attach(
    registry: &BTreeMap<String, Weak<Shared>>,
    key: &str,
) -> Option<Arc<CustomEndpointHandle>> {
    let shared = registry
        .get(key)
        .and_then(Weak::upgrade)
        .filter(|shared| !shared.retired.load(Ordering::Acquire))?;
    shared.users.send_modify(|n| *n += 1);
    Some(Arc::new(CustomEndpointHandle { shared }))
}

/// Joins (or starts) the monitor of the custom endpoint `host` (its first DNS label is the
/// endpoint identifier).
///
/// The client: `settings.client`, else one built from the AWS configuration chain
/// (`aws_config::defaults(BehaviorVersion::latest())`) with the region `settings.region`,
/// else the region of the host name; without either, a configuration error naming
/// `custom_endpoint_region`. Pools share a monitor only when the same account and region
/// answer for them (see [`monitor_key`]); a shared monitor keeps the settings of the pool
/// that started it.
pub(crate) async fn join(
    host: &str,
    settings: &CustomEndpointSettings,
) -> Result<Arc<CustomEndpointHandle>> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let key = monitor_key(&host, settings);
    let joined = attach(&registry(), &key);
    if let Some(handle) = joined {
        tracing::debug!(target: "aurora_pool", host = %host, "pool joined the running custom endpoint monitor");
        // Stranded by the runtime that ran it: this pool runs it from now on.
        handle.keep_running();
        return Ok(handle);
    }
    settings.validate()?;
    let identifier = match host.split('.').next() {
        Some(label) if !label.is_empty() => label.to_owned(),
        _ => {
            return Err(Error::config(
                "host",
                format!("`{host}` is not a custom endpoint host name"),
            ));
        }
    };
    // Built before taking the lock (loading the AWS configuration awaits).
    let client = client_for(&host, settings).await?;
    let mut registry = registry();
    if let Some(handle) = attach(&registry, &key) {
        // Another pool started it meanwhile.
        drop(registry);
        handle.keep_running();
        return Ok(handle);
    }
    let shared = Arc::new(Shared {
        key: key.clone(),
        host: host.clone(),
        identifier,
        refresh_rate: settings.refresh_rate,
        idle_expiration: settings.idle_monitor_expiration,
        state: watch::channel(InfoState::Waiting).0,
        users: watch::channel(1).0,
        running: watch::channel(false).0,
        retired: AtomicBool::new(false),
        client,
    });
    registry.insert(key, Arc::downgrade(&shared));
    drop(registry);
    tracing::info!(
        target: "aurora_pool",
        host = %shared.host,
        endpoint = %shared.identifier,
        refresh_rate_ms = shared.refresh_rate.as_millis() as u64,
        idle_expiration_ms = shared.idle_expiration.as_millis() as u64,
        "custom endpoint monitor started"
    );
    start(&shared);
    Ok(Arc::new(CustomEndpointHandle { shared }))
}

/// The RDS client of a new monitor.
async fn client_for(host: &str, settings: &CustomEndpointSettings) -> Result<Client> {
    if let Some(client) = &settings.client {
        return Ok(client.clone());
    }
    let region = settings
        .region
        .as_deref()
        .map(str::trim)
        .filter(|region| !region.is_empty())
        .map(str::to_owned)
        .or_else(|| Endpoint::classify(host).region().map(str::to_owned))
        .ok_or_else(|| {
            Error::config(
                "custom_endpoint_region",
                format!(
                    "no region for custom endpoint `{host}`: the host name is not an RDS \
                     custom endpoint name; set custom_endpoint_region"
                ),
            )
        })?;
    if let Some(sdk_config) = &settings.sdk_config {
        let config = aws_sdk_rds::config::Builder::from(sdk_config)
            .region(Region::new(region))
            .build();
        return Ok(Client::from_conf(config));
    }
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region))
        .load()
        .await;
    Ok(Client::new(&config))
}

/// Starts the monitor's task on the current runtime, supervised (a panic restarts it after a
/// pause), unless one runs, it was retired, or there is no runtime here. Returns whether it
/// started one.
fn start(shared: &Arc<Shared>) -> bool {
    if shared.retired.load(Ordering::Acquire) {
        return false;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    let claimed = shared.running.send_if_modified(|running| {
        let claimed = !*running;
        *running = true;
        claimed
    });
    if !claimed {
        return false;
    }
    let running = Running(shared.clone());
    runtime.spawn(async move {
        let shared = running.0.clone();
        crate::supervise::supervise(
            "custom endpoint monitor",
            shared.host.clone(),
            || Some(run(shared.clone())),
            std::future::pending(),
        )
        .await;
        drop(running);
    });
    true
}

/// Marks the monitor stopped when its task ends, however it ends: retired, or dropped with
/// its runtime. A retired monitor, or one no pool uses, leaves the registry; one stranded by
/// its runtime while pools use it stays, for one of them to start again.
struct Running(Arc<Shared>);

impl Drop for Running {
    fn drop(&mut self) {
        let shared = &self.0;
        let stranded = {
            let mut registry = registry();
            shared.running.send_replace(false);
            let stranded = !shared.retired.load(Ordering::Acquire) && *shared.users.borrow() > 0;
            if !stranded
                && registry
                    .get(&shared.key)
                    .is_some_and(|entry| std::ptr::eq(entry.as_ptr(), Arc::as_ptr(shared)))
            {
                registry.remove(&shared.key);
            }
            stranded
        };
        if stranded {
            tracing::info!(
                target: "aurora_pool",
                host = %shared.host,
                "custom endpoint monitor stopped with its runtime; a pool using it starts it again on its own"
            );
        } else {
            tracing::info!(target: "aurora_pool", host = %shared.host, "custom endpoint monitor stopped");
        }
    }
}

/// Retires the monitor when still no handle exists; under the registry lock, so that no
/// pool can join it meanwhile.
fn retire(shared: &Shared) -> bool {
    let registry = registry();
    if *shared.users.borrow() > 0 {
        return false;
    }
    shared.retired.store(true, Ordering::Release);
    drop(registry);
    true
}

/// The monitor task: polls until no handle has existed for the idle expiration.
async fn run(shared: Arc<Shared>) {
    let mut users = shared.users.subscribe();
    let client = shared.client.clone();
    let poll = poll(&shared, &client);
    tokio::pin!(poll);
    loop {
        // `wait_for`'s guard is dropped at once: holding it would block the handles' drop.
        let unused = async {
            let _ = users.wait_for(|n| *n == 0).await;
        };
        tokio::select! {
            () = &mut poll => return,
            () = unused => {}
        }
        tracing::debug!(
            target: "aurora_pool",
            host = %shared.host,
            idle_expiration_ms = shared.idle_expiration.as_millis() as u64,
            "no pool uses the custom endpoint monitor; it stops unless one joins in time"
        );
        let used_again = async {
            let _ = users.wait_for(|n| *n > 0).await;
        };
        tokio::select! {
            () = &mut poll => return,
            () = used_again => {}
            () = tokio::time::sleep(shared.idle_expiration) => {
                if retire(&shared) {
                    return;
                }
            }
        }
    }
}

/// Calls `DescribeDBClusterEndpoints` forever, publishing what it finds.
async fn poll(shared: &Shared, client: &Client) {
    let base = shared.refresh_rate;
    let max = MAX_PAUSE.max(base);
    let mut pause = base;
    let mut reported = Reported::default();
    loop {
        let started = Instant::now();
        let result = tokio::time::timeout(DESCRIBE_TIMEOUT, describe(client, &shared.identifier))
            .await
            .unwrap_or_else(|_| {
                Err(DescribeError::Other(Error::topology(format!(
                    "DescribeDBClusterEndpoints for custom endpoint `{}` did not answer within \
                     {} s",
                    shared.identifier,
                    DESCRIBE_TIMEOUT.as_secs()
                ))))
            });
        let next = match result {
            Ok(info) => {
                reported = Reported::default();
                shared.publish_known(info);
                pause = (pause / 2).max(base);
                pause
            }
            Err(DescribeError::Throttled(error)) => {
                pause = pause.saturating_mul(2).min(max);
                tracing::warn!(
                    target: "aurora_pool",
                    host = %shared.host,
                    error = %format_args!("{error:#}"),
                    next_call_ms = pause.as_millis() as u64,
                    "DescribeDBClusterEndpoints was throttled; calling it less often"
                );
                shared.publish_failure(error, true);
                pause
            }
            Err(DescribeError::Credentials(error)) => {
                report(shared, &mut reported, &error, max);
                shared.publish_failure(error, false);
                max
            }
            Err(DescribeError::Other(error)) => {
                let next = pause;
                pause = pause.saturating_mul(2).min(max);
                report(shared, &mut reported, &error, next);
                shared.publish_failure(error, false);
                next
            }
        };
        tokio::time::sleep_until(started + next).await;
    }
}

/// The last error logged at warn level, so that a repeated one is logged at debug level.
#[derive(Debug, Default)]
struct Reported(Option<String>);

impl Reported {
    /// Whether `text` differs from the error reported last; it is the last one from now on.
    fn is_new(&mut self, text: String) -> bool {
        if self.0.as_ref() == Some(&text) {
            return false;
        }
        self.0 = Some(text);
        true
    }
}

/// Logs a failed call at warn level the first time, at debug level while it repeats.
fn report(shared: &Shared, reported: &mut Reported, error: &Error, next: Duration) {
    let text = format!("{error:#}");
    if reported.is_new(text.clone()) {
        tracing::warn!(
            target: "aurora_pool",
            host = %shared.host,
            error = %text,
            next_call_ms = next.as_millis() as u64,
            "DescribeDBClusterEndpoints failed; the custom endpoint members are unknown or stale"
        );
    } else {
        tracing::debug!(
            target: "aurora_pool",
            host = %shared.host,
            error = %text,
            next_call_ms = next.as_millis() as u64,
            "DescribeDBClusterEndpoints still fails"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custom_endpoint::describe::{CustomEndpointType, Members};

    #[test]
    fn a_repeated_error_is_reported_once() {
        let mut reported = Reported::default();
        assert!(reported.is_new("expired".into()));
        assert!(!reported.is_new("expired".into()));
        assert!(!reported.is_new("expired".into()));
        assert!(reported.is_new("not found".into()));
        assert!(reported.is_new("expired".into()));
        // A success resets it: the next failure is reported again.
        reported = Reported::default();
        assert!(reported.is_new("expired".into()));
    }

    #[test]
    fn the_members_known_survive_a_failure() {
        let info = Arc::new(CustomEndpointInfo {
            identifier: "analytics".into(),
            cluster_identifier: "orders".into(),
            endpoint_type: CustomEndpointType::Reader,
            members: Members::Excluded(Default::default()),
        });
        assert!(InfoState::Waiting.info().is_none());
        assert!(InfoState::Known(info.clone()).info().is_some());
        let failed = InfoState::Failed {
            error: Arc::new(Error::topology("x")),
            last_known: Some(info),
        };
        assert!(failed.info().is_some_and(|i| i.allows("instance-1")));
    }
}
