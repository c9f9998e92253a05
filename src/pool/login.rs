//! Credentials per instance pool: fetched before a pool opens, renewed before they expire and
//! after a refused login, by one supervised task per pool.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::Instrument;

use crate::auth::{
    ConnectTarget, CredentialProvider, Credentials, LoginFailure, MAX_LOGIN_ATTEMPTS,
    StaticPassword,
};
use crate::config::{Auth, Config};
use crate::connector::{AdminTarget, BoxFuture};
use crate::error::{Error, Result};
use crate::metrics::CredentialEvent;
use crate::topology::Instance;

/// Credentials that cannot be fetched are asked for again after this long.
pub(crate) const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);

/// Renewals never follow each other closer than this, whatever lifetime a provider reports.
const MIN_LIFETIME: Duration = Duration::from_millis(100);

/// `renew_at` of credentials that never expire.
const NEVER: u64 = u64::MAX;

/// The moment `renew_at` counts from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_millis()).unwrap_or(NEVER - 1)
}

/// The credentials an instance pool connects with.
pub(crate) struct SlotLogin {
    current: ArcSwap<Credentials>,
    /// Milliseconds since [`epoch`] at which to renew; [`NEVER`] for lasting credentials.
    renew_at: AtomicU64,
    /// Renewals replace the credentials one at a time (see [`SlotLogin::replace`]).
    replacing: Mutex<()>,
    /// A renewal started by a checkout is running: the next checkouts do not start another.
    renewing: std::sync::atomic::AtomicBool,
}

impl SlotLogin {
    /// Credentials just fetched (or `None` when fetching failed: renew soon).
    pub(crate) fn new(fetched: Option<Credentials>) -> SlotLogin {
        let login = SlotLogin {
            current: ArcSwap::from_pointee(Credentials::none()),
            renew_at: AtomicU64::new(0),
            replacing: Mutex::new(()),
            renewing: std::sync::atomic::AtomicBool::new(false),
        };
        match fetched {
            Some(credentials) => login.store(credentials),
            None => login.retry_soon(),
        }
        login
    }

    pub(crate) fn current(&self) -> Arc<Credentials> {
        self.current.load_full()
    }

    /// Keeps credentials that later connects of this pool reuse, so a refusal of them is a
    /// refusal of cached credentials.
    pub(crate) fn store(&self, credentials: Credentials) {
        let renew_at = match credentials.lifetime() {
            // A provider may claim any lifetime; a day bounds it (and the sum below).
            Some(lifetime) => millis_since_epoch(
                Instant::now() + lifetime.clamp(MIN_LIFETIME, crate::config::MAX_DURATION),
            ),
            None => NEVER,
        };
        self.current.store(Arc::new(credentials.from_cache(true)));
        self.renew_at.store(renew_at, Ordering::Release);
    }

    /// Replaces the credentials read as `seen` with `renewed`, then `apply`s them (points
    /// the pools at them), unless they were replaced meanwhile: a renewal whose fetch began
    /// earlier must not undo a newer one. Returns whether it replaced them.
    pub(crate) fn replace(
        &self,
        seen: &Arc<Credentials>,
        renewed: Credentials,
        apply: impl FnOnce(),
    ) -> bool {
        let _one_at_a_time = self
            .replacing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&self.current.load(), seen) {
            return false;
        }
        self.store(renewed);
        apply();
        true
    }

    pub(crate) fn retry_soon(&self) {
        self.renew_at.store(
            millis_since_epoch(Instant::now() + RETRY_AFTER_FAILURE),
            Ordering::Release,
        );
    }

    /// When the credentials must be renewed; `None` for never.
    pub(crate) fn renew_at(&self) -> Option<Instant> {
        match self.renew_at.load(Ordering::Acquire) {
            NEVER => None,
            ms => Some(epoch() + Duration::from_millis(ms)),
        }
    }

    /// Claims the renewal a checkout found due; `false` when one is running already.
    pub(crate) fn start_renewal(&self) -> bool {
        self.renewing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The renewal claimed by [`start_renewal`](SlotLogin::start_renewal) ended.
    pub(crate) fn renewal_done(&self) {
        self.renewing.store(false, Ordering::Release);
    }

    pub(crate) fn is_due(&self, now: Instant) -> bool {
        self.renew_at().is_some_and(|at| at <= now)
    }
}

/// The provider `config.auth` asks for.
pub(crate) async fn provider_for(config: &Config) -> Result<Arc<dyn CredentialProvider>> {
    Ok(match &config.auth {
        Auth::Password => Arc::new(StaticPassword::from_config(config.password())),
        #[cfg(feature = "iam")]
        Auth::Iam(settings) => {
            let mut settings = settings.clone();
            if settings.credentials.is_none() {
                settings.credentials = config
                    .sdk_config
                    .as_ref()
                    .and_then(|sdk| sdk.credentials_provider());
            }
            Arc::new(crate::iam::IamAuth::new(settings, config.host.clone())?)
        }
        #[cfg(feature = "secrets-manager")]
        Auth::SecretsManager(settings) => Arc::new(match &config.sdk_config {
            Some(sdk) => {
                crate::secrets_manager::SecretsManagerAuth::from_sdk_config(settings.clone(), sdk)?
            }
            None => crate::secrets_manager::SecretsManagerAuth::new(settings.clone()).await?,
        }),
        Auth::Provider(provider) => provider.clone(),
    })
}

/// Where `instance` is connected to, as providers see it.
pub(crate) fn target(instance: &Instance, user: &str) -> ConnectTarget {
    admin_target(&AdminTarget::instance(instance), user)
}

/// Asks `provider` for credentials, bounded by `timeout`.
pub(crate) async fn fetch(
    provider: &dyn CredentialProvider,
    target: &ConnectTarget,
    timeout: Duration,
) -> Result<Credentials> {
    let span = tracing::info_span!(
        target: "aurora_pool",
        "aurora_pool.credentials",
        host = %target.host,
        port = target.port,
        region = target.region.as_deref(),
    );
    tokio::time::timeout(timeout, unwind_safe(provider.credentials(target)))
        .instrument(span)
        .await
        .unwrap_or_else(|_| {
            Err(Error::credentials(format!(
                "the credential provider gave no credentials for {}:{} within {timeout:?}",
                target.host, target.port
            )))
        })
}

/// Asks `provider` for the credentials of `address` and lets them go (providers cache them):
/// what [`Connector::prepare`](crate::connector::Connector::prepare) does for every backend.
pub(crate) async fn prepare(
    provider: &dyn CredentialProvider,
    target: &AdminTarget,
    user: &str,
    timeout: Duration,
) -> Result<()> {
    fetch(provider, &admin_target(target, user), timeout)
        .await
        .map(drop)
}

/// The provider's view of a connection the crate opens for itself.
pub(crate) fn admin_target(target: &AdminTarget, user: &str) -> ConnectTarget {
    ConnectTarget::new(target.address.host.clone(), target.address.port, user)
        .in_region(target.region.as_deref())
}

/// Opens a connection with credentials from `provider`, renewing them when the login is
/// refused for as long as the provider offers new ones (at most
/// [`MAX_LOGIN_ATTEMPTS`] logins). A pool's connection is `counted_as` its cluster and
/// instance ids in the credential metrics; the crate's own connections are not counted.
pub(crate) async fn connect_with_login<'c, C>(
    provider: &dyn CredentialProvider,
    target: &ConnectTarget,
    counted_as: Option<(&str, &str)>,
    timeout: Duration,
    mut connect: impl FnMut(Arc<Credentials>) -> BoxFuture<'c, Result<C>>,
) -> Result<C> {
    let started = Instant::now();
    let mut credentials = Arc::new(fetch(provider, target, timeout).await?);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let err = match connect(credentials.clone()).await {
            Ok(connection) => return Ok(connection),
            Err(err) if err.is_login_rejected() && attempt < MAX_LOGIN_ATTEMPTS => err,
            Err(err) => return Err(err),
        };
        if let Some((cluster_id, instance)) = counted_as {
            crate::metrics::credentials(cluster_id, instance, CredentialEvent::Refused);
        }
        let failure = LoginFailure {
            target,
            rejected: &credentials,
            attempt,
            elapsed: started.elapsed(),
        };
        match provider.login_rejected(failure).await? {
            Some(renewed) => {
                if let Some((cluster_id, instance)) = counted_as {
                    crate::metrics::credentials(cluster_id, instance, CredentialEvent::Renewed);
                }
                tracing::info!(
                    target: "aurora_pool",
                    host = %target.host,
                    port = target.port,
                    attempt,
                    "login refused; retrying with renewed credentials"
                );
                credentials = Arc::new(renewed);
            }
            None => return Err(err),
        }
    }
}

/// Runs a credential provider's future, turning a panic inside it into an error: a user's
/// provider must not take down the task that asked it (the monitor, the renewer).
pub(crate) async fn unwind_safe<T>(
    future: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                std::task::Poll::Ready(Err(Error::credentials("the credential provider panicked")))
            }
        }
    })
    .await
}

#[cfg(all(test, feature = "iam"))]
mod tests {
    use super::*;

    /// With the application's `SdkConfig` and no credentials of its own, IAM signs with the
    /// SdkConfig's credentials (not the environment's chain).
    #[tokio::test]
    async fn iam_signs_with_the_applications_sdk_config() {
        let sdk_config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("eu-west-1"))
            .credentials_provider(aws_credential_types::Credentials::new(
                "app-key-id",
                "app-secret",
                None,
                None,
                "the application's",
            ))
            .load()
            .await;
        let config = crate::Builder::new()
            .url(
                "postgres://app_iam@orders.cluster-abc123.eu-west-1.rds.amazonaws.com/app?auth=iam",
            )
            .sdk_config(sdk_config)
            .build()
            .expect("config");
        let provider = provider_for(&config).await.expect("provider");
        let token = provider
            .credentials(&ConnectTarget::new(
                "instance-1.abc123.eu-west-1.rds.amazonaws.com",
                5432,
                "app_iam",
            ))
            .await
            .expect("a token");
        let token = token.password().expect("the token");
        assert!(
            token.contains("X-Amz-Credential=app-key-id%2F"),
            "signed with the SdkConfig's credentials: {token}"
        );
    }
}
