//! Database credentials from an AWS Secrets Manager secret (feature `secrets-manager`).
//!
//! The secret's `SecretString` is a JSON object holding the user name and the password
//! (keys `username` and `password` by default, other keys are ignored): the format of the
//! secrets RDS creates and rotates. [`SecretsManagerAuth`] fetches it with `GetSecretValue`,
//! caches it for `secrets_manager_expiration_s` (870 s by default) and fetches it again
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
use aws_sdk_secretsmanager::error::SdkError;
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
use tokio::time::Instant;

use crate::auth::{ConnectTarget, CredentialProvider, Credentials, LoginFailure};
use crate::connector::BoxFuture;
use crate::error::{Error, Result};

/// `secrets_manager_expiration_s`'s default, as in the AWS JDBC wrapper.
const DEFAULT_EXPIRATION: Duration = Duration::from_secs(870);
/// `secrets_manager_connect_retry_interval_ms`'s default.
const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_millis(1000);
/// The longest pause between two retries of a refused login.
const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(30);

/// The settings of Secrets Manager authentication (`auth=secrets_manager`, implied by
/// `secrets_manager_secret_id`).
///
/// None of them is secret: `Debug` shows them all.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SecretsManagerSettings {
    /// The secret's name or ARN (`secrets_manager_secret_id`, required).
    pub secret_id: String,
    /// The region of the secret (`secrets_manager_region`). By default the region of the
    /// secret's ARN, else the AWS configuration's (`AWS_REGION`, the profile, ...).
    pub region: Option<String>,
    /// The Secrets Manager endpoint (`secrets_manager_endpoint`, for example a VPC endpoint
    /// or `http://127.0.0.1:5000` for a local emulator). By default the
    /// `AWS_ENDPOINT_URL_SECRETS_MANAGER` and `AWS_ENDPOINT_URL` environment variables
    /// apply, else the region's public endpoint.
    pub endpoint: Option<String>,
    /// How long a fetched secret is used for new logins before it is fetched again
    /// (`secrets_manager_expiration_s`, default 870).
    pub expiration: Duration,
    /// The JSON key of the user name (`secrets_manager_secret_username_key`, default
    /// `username`).
    pub username_key: String,
    /// The JSON key of the password (`secrets_manager_secret_password_key`, default
    /// `password`).
    pub password_key: String,
    /// How long to keep re-fetching the secret and retrying after a login with freshly
    /// fetched credentials is refused, measured from the first login attempt of a connect
    /// (`secrets_manager_connect_retry_timeout_ms`, default 0: a refused fresh secret is
    /// reported at once). Set it to about a minute to ride out a rotation.
    pub connect_retry_timeout: Duration,
    /// The first pause between those retries; it doubles with every retry, up to 30 s
    /// (`secrets_manager_connect_retry_interval_ms`, default 1000).
    pub connect_retry_interval: Duration,
}

impl SecretsManagerSettings {
    /// Settings for the secret `secret_id` (a name or an ARN), with the defaults above.
    pub fn new(secret_id: impl Into<String>) -> SecretsManagerSettings {
        SecretsManagerSettings {
            secret_id: secret_id.into(),
            region: None,
            endpoint: None,
            expiration: DEFAULT_EXPIRATION,
            username_key: "username".to_owned(),
            password_key: "password".to_owned(),
            connect_retry_timeout: Duration::ZERO,
            connect_retry_interval: DEFAULT_RETRY_INTERVAL,
        }
    }

    /// Reads the `secrets_manager_*` URL parameters (others are ignored; the last of
    /// repeated ones wins).
    pub(crate) fn from_parameters(params: &[(String, String)]) -> Result<SecretsManagerSettings> {
        let mut settings = SecretsManagerSettings::new("");
        let mut secret_id = None;
        for (key, value) in params {
            if !key.starts_with("secrets_manager_") {
                continue;
            }
            match key.as_str() {
                "secrets_manager_secret_id" => secret_id = Some(value.trim().to_owned()),
                "secrets_manager_region" => settings.region = Some(value.trim().to_owned()),
                "secrets_manager_endpoint" => settings.endpoint = Some(value.trim().to_owned()),
                "secrets_manager_expiration_s" => {
                    settings.expiration = Duration::from_secs(number(key, value, "seconds")?);
                }
                "secrets_manager_secret_username_key" => settings.username_key = value.clone(),
                "secrets_manager_secret_password_key" => settings.password_key = value.clone(),
                "secrets_manager_connect_retry_timeout_ms" => {
                    settings.connect_retry_timeout =
                        Duration::from_millis(number(key, value, "milliseconds")?);
                }
                "secrets_manager_connect_retry_interval_ms" => {
                    settings.connect_retry_interval =
                        Duration::from_millis(number(key, value, "milliseconds")?);
                }
                _ => {
                    return Err(Error::config(
                        key,
                        "unknown Secrets Manager parameter (secrets_manager_secret_id, \
                         secrets_manager_region, secrets_manager_endpoint, \
                         secrets_manager_expiration_s, secrets_manager_secret_username_key, \
                         secrets_manager_secret_password_key, \
                         secrets_manager_connect_retry_timeout_ms, \
                         secrets_manager_connect_retry_interval_ms)",
                    ));
                }
            }
        }
        settings.secret_id = secret_id.ok_or_else(|| {
            Error::config(
                "secrets_manager_secret_id",
                "is required with auth=secrets_manager (the secret's name or ARN)",
            )
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks values that would make the provider fail on every connect.
    fn validate(&self) -> Result<()> {
        if self.secret_id.trim().is_empty() {
            return Err(Error::config(
                "secrets_manager_secret_id",
                "must not be empty (the secret's name or ARN)",
            ));
        }
        if self.region.as_deref().is_some_and(|r| r.trim().is_empty()) {
            return Err(Error::config("secrets_manager_region", "must not be empty"));
        }
        if let Some(endpoint) = &self.endpoint {
            let valid = url::Url::parse(endpoint)
                .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.has_host());
            if !valid {
                return Err(Error::config(
                    "secrets_manager_endpoint",
                    format!("`{endpoint}` is not an http:// or https:// URL"),
                ));
            }
        }
        if self.expiration.is_zero() {
            return Err(Error::config(
                "secrets_manager_expiration_s",
                "must be greater than 0",
            ));
        }
        for (parameter, key) in [
            ("secrets_manager_secret_username_key", &self.username_key),
            ("secrets_manager_secret_password_key", &self.password_key),
        ] {
            if key.is_empty() {
                return Err(Error::config(parameter, "must not be empty"));
            }
        }
        if self.connect_retry_interval.is_zero() {
            return Err(Error::config(
                "secrets_manager_connect_retry_interval_ms",
                "must be greater than 0",
            ));
        }
        Ok(())
    }

    /// The region to use when none is configured: the secret ARN's.
    fn arn_region(&self) -> Option<&str> {
        region_from_arn(&self.secret_id)
    }
}

fn number(key: &str, value: &str, unit: &str) -> Result<u64> {
    value
        .trim()
        .parse()
        .map_err(|_| Error::config(key, format!("`{value}` is not a number of {unit}")))
}

/// The region of a Secrets Manager ARN:
/// `arn:<partition>:secretsmanager:<region>:<account>:secret:<name>`.
fn region_from_arn(secret_id: &str) -> Option<&str> {
    let mut parts = secret_id.splitn(5, ':');
    let (arn, partition, service, region) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    parts.next()?;
    let aws_partition = partition == "aws" || partition.starts_with("aws-");
    (arn == "arn" && aws_partition && service == "secretsmanager" && !region.is_empty())
        .then_some(region)
}

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
        let sdk_config = loader.load().await;
        if sdk_config.region().is_none() {
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
        let mut config = aws_sdk_secretsmanager::config::Builder::from(&sdk_config);
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

    /// The cached secret past its expiration, for when Secrets Manager cannot be reached:
    /// the database is not down because the control plane is. Valid for a short while, so
    /// that the service is asked again soon.
    fn stale(&self) -> Option<(Credentials, Duration)> {
        let cache = self.lock_cache();
        let secret = cache
            .secret
            .as_ref()
            .filter(|secret| secret.fetched_at.elapsed() < STALE_SECRET_CEILING)?;
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

/// Reads the user name and password out of a secret's `SecretString`. Errors name the
/// secret and the keys, never a value.
fn parse_secret(
    secret_id: &str,
    secret_string: Option<&str>,
    has_binary: bool,
    username_key: &str,
    password_key: &str,
) -> Result<(String, String)> {
    let expected =
        format!("a JSON object with the keys `{username_key}` and `{password_key}` is expected");
    let Some(text) = secret_string else {
        let what = if has_binary {
            "has only a binary value (SecretBinary)"
        } else {
            "has no SecretString"
        };
        return Err(Error::credentials(format!(
            "secret `{secret_id}` {what}: {expected}"
        )));
    };
    // serde_json's messages quote no input, but only the position is kept anyway.
    let object = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(object)) => object,
        Ok(_) => {
            return Err(Error::credentials(format!(
                "secret `{secret_id}` is not a JSON object: {expected}"
            )));
        }
        Err(err) => {
            return Err(Error::credentials(format!(
                "secret `{secret_id}` is not valid JSON (line {}, column {}): {expected}",
                err.line(),
                err.column()
            )));
        }
    };
    let field = |key: &str, parameter: &str| match object.get(key) {
        Some(serde_json::Value::String(value)) => Ok(value.clone()),
        Some(_) => Err(Error::credentials(format!(
            "the key `{key}` of secret `{secret_id}` is not a string"
        ))),
        None => Err(Error::credentials(format!(
            "secret `{secret_id}` has no key `{key}` (set {parameter} if it uses another name)"
        ))),
    };
    Ok((
        field(username_key, "secrets_manager_secret_username_key")?,
        field(password_key, "secrets_manager_secret_password_key")?,
    ))
}

/// The pause before re-fetching after the `attempt`-th refused login:
/// `interval * 2^(attempt - 1)`, at most 30 s.
fn backoff(interval: Duration, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(20);
    interval
        .saturating_mul(1 << doublings)
        .min(MAX_RETRY_INTERVAL)
}

/// Why a `GetSecretValue` call failed.
///
/// The SDK's error is not kept whole: for a response that could not be parsed it holds the
/// raw HTTP response, whose body (shown by `Debug`) may be the secret. A service error
/// (`ResourceNotFoundException`, `AccessDeniedException`, ...) is kept as the source, so
/// that callers can downcast it to [`GetSecretValueError`]; any other failure is kept as
/// the text of its error chain.
#[derive(Debug)]
enum FetchError {
    Service(GetSecretValueError),
    Other(String),
}

impl FetchError {
    fn new<R>(err: SdkError<GetSecretValueError, R>) -> FetchError
    where
        R: fmt::Debug,
    {
        match err {
            SdkError::ServiceError(service) => FetchError::Service(service.into_err()),
            other => {
                let mut text = other.to_string();
                let mut source = std::error::Error::source(&other);
                while let Some(err) = source {
                    text.push_str(": ");
                    text.push_str(&err.to_string());
                    source = err.source();
                }
                FetchError::Other(text)
            }
        }
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The modelled errors print `<code>: <message>`, an unmodelled one
            // (`AccessDeniedException`) only "unhandled error (<code>)": add its message.
            FetchError::Service(err) => {
                use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
                let shown = err.to_string();
                f.write_str(&shown)?;
                match err.message() {
                    Some(message) if !shown.contains(message) => write!(f, ": {message}"),
                    _ => Ok(()),
                }
            }
            FetchError::Other(text) => f.write_str(text),
        }
    }
}

impl std::error::Error for FetchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FetchError::Service(err) => Some(err),
            FetchError::Other(_) => None,
        }
    }
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
                            error = %err,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parameters_have_the_wrappers_defaults() {
        let settings = SecretsManagerSettings::from_parameters(&params(&[(
            "secrets_manager_secret_id",
            "aur/app",
        )]))
        .unwrap();
        assert_eq!(settings.secret_id, "aur/app");
        assert_eq!(settings.region, None);
        assert_eq!(settings.endpoint, None);
        assert_eq!(settings.expiration, Duration::from_secs(870));
        assert_eq!(settings.username_key, "username");
        assert_eq!(settings.password_key, "password");
        assert_eq!(settings.connect_retry_timeout, Duration::ZERO);
        assert_eq!(settings.connect_retry_interval, Duration::from_secs(1));
    }

    #[test]
    fn parameters_are_read() {
        let settings = SecretsManagerSettings::from_parameters(&params(&[
            ("sslmode", "require"),
            ("secrets_manager_secret_id", "first"),
            ("secrets_manager_secret_id", "aur/app"),
            ("secrets_manager_region", "eu-west-1"),
            ("secrets_manager_endpoint", "http://127.0.0.1:5000"),
            ("secrets_manager_expiration_s", "60"),
            ("secrets_manager_secret_username_key", "user"),
            ("secrets_manager_secret_password_key", "pass"),
            ("secrets_manager_connect_retry_timeout_ms", "60000"),
            ("secrets_manager_connect_retry_interval_ms", "250"),
        ]))
        .unwrap();
        assert_eq!(settings.secret_id, "aur/app");
        assert_eq!(settings.region.as_deref(), Some("eu-west-1"));
        assert_eq!(settings.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(settings.expiration, Duration::from_secs(60));
        assert_eq!(settings.username_key, "user");
        assert_eq!(settings.password_key, "pass");
        assert_eq!(settings.connect_retry_timeout, Duration::from_secs(60));
        assert_eq!(settings.connect_retry_interval, Duration::from_millis(250));
        let shown = format!("{settings:?}");
        assert!(
            shown.contains("aur/app") && shown.contains("eu-west-1"),
            "{shown}"
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "secrets_manager_secret_id"),
            (
                &[("secrets_manager_region", "us-east-1")],
                "secrets_manager_secret_id",
            ),
            (
                &[("secrets_manager_secret_id", " ")],
                "secrets_manager_secret_id",
            ),
            (
                &[
                    ("secrets_manager_secret_id", "s"),
                    ("secrets_manager_expiration", "5"),
                ],
                "secrets_manager_expiration",
            ),
            (
                &[
                    ("secrets_manager_secret_id", "s"),
                    ("secrets_manager_expiration_s", "soon"),
                ],
                "secrets_manager_expiration_s",
            ),
            (
                &[
                    ("secrets_manager_secret_id", "s"),
                    ("secrets_manager_expiration_s", "0"),
                ],
                "secrets_manager_expiration_s",
            ),
            (
                &[
                    ("secrets_manager_secret_id", "s"),
                    ("secrets_manager_connect_retry_timeout_ms", "-1"),
                ],
                "secrets_manager_connect_retry_timeout_ms",
            ),
            (
                &[
                    ("secrets_manager_secret_id", "s"),
                    ("secrets_manager_connect_retry_interval_ms", "0"),
                ],
                "secrets_manager_connect_retry_interval_ms",
            ),
            (
                &[
                    ("secrets_manager_secret_id", "s"),
                    ("secrets_manager_endpoint", "localhost:5000"),
                ],
                "secrets_manager_endpoint",
            ),
            (
                &[
                    ("secrets_manager_secret_id", "s"),
                    ("secrets_manager_region", ""),
                ],
                "secrets_manager_region",
            ),
            (
                &[
                    ("secrets_manager_secret_id", "s"),
                    ("secrets_manager_secret_password_key", ""),
                ],
                "secrets_manager_secret_password_key",
            ),
        ];
        for (pairs, parameter) in cases {
            let err = SecretsManagerSettings::from_parameters(&params(pairs))
                .expect_err(&format!("{pairs:?} must be refused"));
            assert!(err.is_config(), "{err}");
            assert_eq!(err.parameter(), Some(*parameter), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn regions_are_read_from_arns() {
        for (id, region) in [
            (
                "arn:aws:secretsmanager:eu-west-1:123456789012:secret:aur/app-AbCdEf",
                Some("eu-west-1"),
            ),
            (
                "arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:app-AbCdEf",
                Some("cn-north-1"),
            ),
            (
                "arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:a:b",
                Some("us-gov-west-1"),
            ),
            ("aur/app", None),
            ("arn:aws:secretsmanager::123456789012:secret:app", None),
            ("arn:aws:rds:us-east-1:123456789012:db:app", None),
            (
                "arn:other:secretsmanager:us-east-1:123456789012:secret:app",
                None,
            ),
            ("arn:aws:secretsmanager:us-east-1", None),
        ] {
            assert_eq!(region_from_arn(id), region, "{id}");
        }
        let settings = SecretsManagerSettings::new(
            "arn:aws:secretsmanager:ap-south-1:123456789012:secret:x-AbCdEf",
        );
        assert_eq!(settings.arn_region(), Some("ap-south-1"));
    }

    #[test]
    fn secrets_are_parsed_without_leaking_values() {
        let parse = |text: Option<&str>, binary: bool| {
            parse_secret("aur/app", text, binary, "username", "password")
        };
        assert_eq!(
            parse(
                Some(r#"{"username":"app","password":"hunter2","host":"db","port":5432}"#),
                false
            )
            .unwrap(),
            ("app".to_owned(), "hunter2".to_owned())
        );
        let cases: &[(Option<&str>, bool, &str)] = &[
            (
                Some(r#"{"username":"app","passwd":"hunter2"}"#),
                false,
                "no key `password`",
            ),
            (
                Some(r#"{"password":"hunter2"}"#),
                false,
                "no key `username`",
            ),
            (
                Some(r#"{"username":"app","password":12345678}"#),
                false,
                "`password`",
            ),
            (Some("hunter2"), false, "not valid JSON"),
            (
                Some(r#"{"username":"app","password":"hunter2""#),
                false,
                "not valid JSON",
            ),
            (Some(r#"["hunter2"]"#), false, "not a JSON object"),
            (None, true, "binary"),
            (None, false, "no SecretString"),
        ];
        for (text, binary, expected) in cases {
            let err = parse(*text, *binary).expect_err(&format!("{text:?}"));
            assert!(err.is_credentials(), "{err}");
            let shown = format!("{err} {err:?}");
            assert!(shown.contains(expected), "{shown}");
            assert!(shown.contains("aur/app"), "{shown}");
            for secret in ["hunter2", "12345678"] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
        let custom = parse_secret("s", Some(r#"{"u":"app","p":"x"}"#), false, "u", "pw")
            .expect_err("missing custom key");
        assert!(custom.to_string().contains("`pw`"), "{custom}");
        assert!(
            custom
                .to_string()
                .contains("secrets_manager_secret_password_key"),
            "{custom}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any `SecretString` is read or rejected naming the secret, never showing a value.
        #[test]
        fn any_secret_is_read_or_rejected_without_its_values(
            text in "\\PC{0,80}|\\{\"username\": ?(\"[a-z]{0,8}\"|1|null), ?\"password\": ?(\"s3cr3t-[a-z]{0,8}\"|[0-9]{1,3}|null|\\[\\])\\}",
            binary in proptest::prelude::any::<bool>(),
        ) {
            if let Err(err) = parse_secret("orders/app", Some(&text), binary, "username", "password") {
                let shown = format!("{err} {err:?}");
                proptest::prop_assert!(err.is_credentials(), "{}", shown);
                proptest::prop_assert!(shown.contains("orders/app"), "{}", shown);
                proptest::prop_assert!(!shown.contains("s3cr3t"), "{}", shown);
            }
        }
    }

    #[test]
    fn backoff_doubles_up_to_30_seconds() {
        let second = Duration::from_secs(1);
        assert_eq!(backoff(second, 1), second);
        assert_eq!(backoff(second, 2), 2 * second);
        assert_eq!(backoff(second, 5), 16 * second);
        assert_eq!(backoff(second, 6), 30 * second);
        assert_eq!(backoff(second, u32::MAX), 30 * second);
        assert_eq!(
            backoff(Duration::from_millis(100), 0),
            Duration::from_millis(100)
        );
    }
}
