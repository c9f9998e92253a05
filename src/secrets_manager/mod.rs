//! Database credentials from an AWS Secrets Manager secret (feature `secrets-manager`).
//!
//! The secret's `SecretString` is a JSON object holding the user name and the password
//! (keys `username` and `password` by default, other keys are ignored): the format of the
//! secrets RDS creates and rotates. [`SecretsManagerAuth`] fetches it with `GetSecretValue`,
//! caches it for `secrets_manager_expiration_ms` (870 s by default) and fetches it again
//! when a login with cached credentials is refused, which is how a rotation reaches new
//! connections. Concurrent connects share one fetch.
//!
//! A rotation has a window (about a minute with RDS-managed rotation) in which the secret
//! already holds the new password and the database does not accept it yet. Set
//! `secrets_manager_connect_retry_timeout_ms` to keep re-fetching and retrying a refused
//! login for that long, with a backoff starting at `secrets_manager_connect_retry_interval_ms`
//! and doubling up to 30 s.
//!
//! Secret values never appear in `Debug` output, errors or logs.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::Region;
use aws_sdk_secretsmanager::Client;
use tokio::time::Instant;

use crate::auth::{ConnectTarget, CredentialProvider, Credentials, LoginFailure};
use crate::connector::BoxFuture;
use crate::error::{Error, Result};

/// The [`CredentialProvider`] behind `auth=secrets_manager`: the user name and password of
/// one secret, cached for [`SecretsManagerSettings::expiration`].
///
/// * A fresh cached secret is handed out marked [`Credentials::is_from_cache`]; an expired
///   or missing one is fetched with `GetSecretValue`. Concurrent connects that find no
///   fresh secret wait for a single fetch.
/// * A login refused with cached credentials fetches the secret again and retries (the
///   secret was rotated). A login refused with freshly fetched credentials is retried only
///   within [`SecretsManagerSettings::connect_retry_timeout`], pausing between fetches;
///   after that it is reported.
///
/// `Debug` shows the settings and the number of fetches, never the secret.
pub struct SecretsManagerAuth {
    settings: SecretsManagerSettings,
    /// The region the client talks to (for logs and error messages).
    region: String,
    client: Client,
    cache: Mutex<Cache>,
    /// Held while fetching: one fetch at a time, the others wait and reuse its result.
    refresh: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
}

/// The cached secret of the provider's (secret id, region).
#[derive(Default)]
struct Cache {
    secret: Option<CachedSecret>,
    /// Counts stored fetches, so that a waiter can tell that a fetch finished meanwhile.
    generation: u64,
    /// Secrets Manager could not be reached: the secret fetched before is served without
    /// asking again until then.
    stale_until: Option<Instant>,
}

/// How soon a secret served past its expiration (Secrets Manager unreachable) is asked for
/// again.
const STALE_SECRET_RECHECK: Duration = Duration::from_secs(30);

/// How long after its fetch a secret is still served while Secrets Manager cannot be
/// reached: past a day, a rotation has most likely happened.
const STALE_SECRET_CEILING: Duration = Duration::from_secs(24 * 3600);

/// How long one `GetSecretValue` call may take before the secret fetched before is served
/// instead: a black-holed endpoint must not hold a new connection for its whole
/// `connect_timeout` (a call normally takes tens of milliseconds).
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

struct CachedSecret {
    user: String,
    password: String,
    fetched_at: Instant,
}

impl SecretsManagerAuth {
    /// A provider with a Secrets Manager client built from the AWS configuration chain
    /// (`aws_config::defaults(BehaviorVersion::latest())`: environment, profile, SSO, web
    /// identity, container and instance roles), with [`SecretsManagerSettings::region`] (or
    /// the ARN's region) and [`SecretsManagerSettings::endpoint`] applied when set.
    ///
    /// Fails with a configuration error naming `secrets_manager_region` when no region can
    /// be found. Nothing is fetched yet.
    pub async fn new(settings: SecretsManagerSettings) -> Result<SecretsManagerAuth> {
        settings.validate()?;
        let region = settings
            .region
            .clone()
            .or_else(|| settings.arn_region().map(str::to_owned));
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = region {
            loader = loader.region(Region::new(region));
        }
        SecretsManagerAuth::from_sdk_config(settings, &loader.load().await)
    }

    /// A provider with a Secrets Manager client built from the application's AWS
    /// configuration, with [`SecretsManagerSettings::region`] (or the ARN's region) and
    /// [`SecretsManagerSettings::endpoint`] applied over it when set. Fails as
    /// [`new`](Self::new) when no region can be found. Nothing is fetched yet.
    pub fn from_sdk_config(
        settings: SecretsManagerSettings,
        sdk_config: &aws_config::SdkConfig,
    ) -> Result<SecretsManagerAuth> {
        settings.validate()?;
        let region = settings
            .region
            .clone()
            .or_else(|| settings.arn_region().map(str::to_owned))
            .map(Region::new)
            .or_else(|| sdk_config.region().cloned());
        if region.is_none() {
            return Err(Error::config(
                "secrets_manager_region",
                format!(
                    "no region for secret `{}`: set secrets_manager_region, use the secret's ARN or set AWS_REGION",
                    settings.secret_id
                ),
            ));
        }
        // The endpoint is set for Secrets Manager only: the credential providers (STS, SSO)
        // keep theirs.
        let mut config = aws_sdk_secretsmanager::config::Builder::from(sdk_config).region(region);
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        Ok(SecretsManagerAuth::with_client(
            settings,
            Client::from_conf(config.build()),
        ))
    }

    /// A provider using `client` as it is, for custom AWS credentials, HTTP clients or
    /// tests: [`SecretsManagerSettings::region`] and [`SecretsManagerSettings::endpoint`]
    /// are not applied to it.
    pub fn with_client(settings: SecretsManagerSettings, client: Client) -> SecretsManagerAuth {
        let region = client
            .config()
            .region()
            .map(|r| r.as_ref().to_owned())
            .or_else(|| settings.region.clone())
            .or_else(|| settings.arn_region().map(str::to_owned))
            .unwrap_or_default();
        SecretsManagerAuth {
            settings,
            region,
            client,
            cache: Mutex::new(Cache::default()),
            refresh: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
        }
    }

    /// How many `GetSecretValue` calls were made, failed ones included.
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached secret while it is fresh, marked as coming from the cache.
    fn cached(&self) -> Option<Credentials> {
        let cache = self.lock_cache();
        let secret = cache.secret.as_ref()?;
        let remaining = self
            .settings
            .expiration
            .checked_sub(secret.fetched_at.elapsed())
            .filter(|remaining| !remaining.is_zero())?;
        Some(
            Credentials::new(secret.password.clone())
                .with_user(secret.user.clone())
                .valid_for(remaining)
                .from_cache(true),
        )
    }

    /// The cached secret past its expiration, for when Secrets Manager cannot be reached
    /// (counted as served):
    /// the database is not down because the control plane is. Valid for a short while, so
    /// that the service is asked again soon.
    fn stale(&self) -> Option<(Credentials, Duration)> {
        let cache = self.lock_cache();
        let secret = cache
            .secret
            .as_ref()
            .filter(|secret| secret.fetched_at.elapsed() < STALE_SECRET_CEILING)?;
        // Every caller serves what this returns.
        crate::metrics::stale_secret_served();
        Some((
            Credentials::new(secret.password.clone())
                .with_user(secret.user.clone())
                .valid_for(STALE_SECRET_RECHECK)
                .from_cache(true),
            secret.fetched_at.elapsed(),
        ))
    }

    /// The stale secret while Secrets Manager is known unreachable (see
    /// [`Cache::stale_until`]).
    fn stale_for_now(&self) -> Option<(Credentials, Duration)> {
        let until = self.lock_cache().stale_until?;
        if Instant::now() >= until {
            return None;
        }
        self.stale()
    }

    /// Whether the cached secret was fetched less than `gap` ago.
    fn fetched_within(&self, gap: Duration) -> bool {
        self.lock_cache()
            .secret
            .as_ref()
            .is_some_and(|secret| secret.fetched_at.elapsed() < gap)
    }

    fn generation(&self) -> u64 {
        self.lock_cache().generation
    }

    /// Fetches the secret, unless a fetch that started before this call (`seen` being the
    /// generation read then) finished while waiting for the lock: its result is used. Says
    /// whether this call fetched.
    async fn refresh(&self, seen: Option<u64>) -> Result<(Credentials, bool)> {
        let _single_flight = self.refresh.lock().await;
        // A caller that waited while the fetch before it found Secrets Manager unreachable
        // takes the secret it served instead of waiting out a fetch of its own.
        if seen.is_none()
            && let Some((stale, _)) = self.stale_for_now()
        {
            return Ok((stale, false));
        }
        let reuse = match seen {
            Some(seen) => self.generation() != seen,
            None => true,
        };
        if reuse && let Some(credentials) = self.cached() {
            // Another caller fetched while this one waited.
            return Ok((credentials.from_cache(seen.is_none()), false));
        }
        self.fetch().await.map(|credentials| (credentials, true))
    }

    /// One `GetSecretValue` call; the result replaces the cached secret.
    async fn fetch(&self) -> Result<Credentials> {
        let secret_id = &self.settings.secret_id;
        let started = Instant::now();
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let call = self.client.get_secret_value().secret_id(secret_id).send();
        let output = tokio::time::timeout(FETCH_TIMEOUT, call)
            .await
            .map_err(|_| {
                Error::credentials(format!(
                    "fetching secret `{secret_id}` (region `{}`) from Secrets Manager took longer than {FETCH_TIMEOUT:?}",
                    self.region
                ))
            })?
            .map_err(|err| {
                tracing::debug!(
                    target: "aurora_pool",
                    secret_id = %secret_id,
                    region = %self.region,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "fetching the secret from Secrets Manager failed"
                );
                Error::credentials(format!(
                    "fetching secret `{secret_id}` (region `{}`) from Secrets Manager failed",
                    self.region
                ))
                .with_source(FetchError::new(err))
            })?;
        let (user, password) = parse_secret(
            secret_id,
            output.secret_string(),
            output.secret_binary().is_some(),
            &self.settings.username_key,
            &self.settings.password_key,
        )?;
        tracing::debug!(
            target: "aurora_pool",
            secret_id = %secret_id,
            region = %self.region,
            version_id = output.version_id().unwrap_or_default(),
            user = %user,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "secret fetched from Secrets Manager"
        );
        let credentials = Credentials::new(password.clone())
            .with_user(user.clone())
            .valid_for(self.settings.expiration);
        let mut cache = self.lock_cache();
        cache.secret = Some(CachedSecret {
            user,
            password,
            fetched_at: started,
        });
        cache.generation += 1;
        cache.stale_until = None;
        Ok(credentials)
    }
}

/// Refused logins fetch the secret again at most this often when it did not change.
const MIN_REFETCH_GAP: Duration = Duration::from_secs(1);

/// The pause before re-fetching after the `attempt`-th refused login:
/// `interval * 2^(attempt - 1)`, at most 30 s.
fn backoff(interval: Duration, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(20);
    interval
        .saturating_mul(1 << doublings)
        .min(MAX_RETRY_INTERVAL)
}

impl fmt::Debug for SecretsManagerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretsManagerAuth")
            .field("settings", &self.settings)
            .field("region", &self.region)
            .field("fetch_count", &self.fetch_count())
            .finish_non_exhaustive()
    }
}

impl CredentialProvider for SecretsManagerAuth {
    /// Secrets Manager passwords go only to a verified server (see `allow_unverified_server`).
    fn needs_verified_server(&self) -> bool {
        true
    }

    fn credentials<'a>(&'a self, _target: &'a ConnectTarget) -> BoxFuture<'a, Result<Credentials>> {
        Box::pin(async move {
            if let Some(credentials) = self.cached() {
                return Ok(credentials);
            }
            if let Some((stale, _)) = self.stale_for_now() {
                return Ok(stale);
            }
            match self.refresh(None).await {
                Ok((credentials, _)) => Ok(credentials),
                Err(err) => match self.stale() {
                    // The expiration is when to ask again, not when the secret stops working:
                    // a refused login still fetches anew.
                    Some((stale, age)) => {
                        tracing::warn!(
                            target: "aurora_pool",
                            secret_id = %self.settings.secret_id,
                            age_s = age.as_secs(),
                            error = %format_args!("{err:#}"),
                            "Secrets Manager unavailable: using the secret fetched before"
                        );
                        self.lock_cache().stale_until = Some(Instant::now() + STALE_SECRET_RECHECK);
                        Ok(stale)
                    }
                    None => Err(err),
                },
            }
        })
    }

    fn login_rejected<'a>(
        &'a self,
        failure: LoginFailure<'a>,
    ) -> BoxFuture<'a, Result<Option<Credentials>>> {
        Box::pin(async move {
            let rejected = failure.rejected;
            let differs = |current: &Credentials| {
                current.password() != rejected.password() || current.user() != rejected.user()
            };
            if let Some(current) = self.cached()
                && differs(&current)
            {
                // Fetched again by a concurrent connect meanwhile.
                return Ok(Some(current));
            }
            // Within `connect_retry_timeout` of the first refusal a rotation is being
            // bridged: the database may not have the rotated password yet, or the secret
            // not yet the database's.
            let budget = self
                .settings
                .connect_retry_timeout
                .saturating_sub(failure.elapsed);
            if !rejected.is_from_cache() {
                // The secret was fetched for this login and still refused: wait and fetch
                // again, within the budget.
                if budget.is_zero() {
                    return Ok(None);
                }
                let pause =
                    backoff(self.settings.connect_retry_interval, failure.attempt).min(budget);
                tracing::debug!(
                    target: "aurora_pool",
                    secret_id = %self.settings.secret_id,
                    host = %failure.target.host,
                    attempt = failure.attempt,
                    pause_ms = pause.as_millis() as u64,
                    "login refused with a freshly fetched secret; fetching it again after a pause"
                );
                tokio::time::sleep(pause).await;
                if let Some(current) = self.cached()
                    && differs(&current)
                {
                    return Ok(Some(current));
                }
            }
            let seen = self.generation();
            let (renewed, fetched) = self.refresh(Some(seen)).await?;
            if fetched || differs(&renewed) {
                return Ok(Some(renewed));
            }
            // A fetch that began before this refusal brought the refused secret back (the
            // secret changed after it started): fetch once more, unless the secret was
            // fetched within the last second. Concurrent refusals of an unchanged secret
            // (a wrong password, a grant missing) then cost one fetch, not one each; while
            // bridging a rotation the login is tried again with the secret in hand (its
            // next refusal pauses first).
            let _single_flight = self.refresh.lock().await;
            match self.cached() {
                Some(current) if differs(&current) => Ok(Some(current)),
                current if self.fetched_within(MIN_REFETCH_GAP) => {
                    Ok(current.filter(|_| !budget.is_zero()))
                }
                _ => self.fetch().await.map(Some),
            }
        })
    }
}

mod secret;
mod settings;
#[cfg(test)]
mod tests;

use secret::{FetchError, parse_secret};
use settings::MAX_RETRY_INTERVAL;
pub use settings::SecretsManagerSettings;
