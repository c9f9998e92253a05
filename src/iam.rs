//! RDS IAM database authentication tokens (feature `iam`).
//!
//! A token is a SigV4-presigned `rds-db:connect` URL without its scheme, valid for 15
//! minutes and checked only when a connection logs in. It is signed locally: generating one
//! costs microseconds. The AWS credentials that sign it come from `aws-config`'s provider
//! chain (STS, IMDS, a credential process...), asked once per credential lifetime and kept
//! while a refresh fails.
//!
//! The token is signed directly with `aws-sigv4` rather than with `aws-sdk-rds`'s generator,
//! which mis-encodes user names containing `+` or spaces. `tests/iam_tokens.rs` checks the
//! output against tokens made by botocore (`scripts/iam_fixtures.py`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_async::time::SharedTimeSource;
use aws_smithy_runtime_api::client::identity::Identity;
use tokio::sync::OnceCell;

use crate::auth::{ConnectTarget, CredentialProvider, Credentials, LoginFailure};
use crate::connector::BoxFuture;
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};

mod signing;

use signing::SigningCredentials;

/// How long a token is valid, as AWS fixes it.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// Generates the IAM authentication token for `user` on `host:port` in `region`, signed with
/// `credentials` as of `at`: use it as the password of a TLS connection to that host.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use aws_credential_types::Credentials;
///
/// let credentials = Credentials::new("AKIDEXAMPLE", "secret", None, None, "example");
/// let token = aurora_pool::iam::generate_auth_token(
///     "db.cluster-abc123.us-east-1.rds.amazonaws.com",
///     5432,
///     "app_iam",
///     "us-east-1",
///     &credentials,
///     UNIX_EPOCH + Duration::from_secs(1_795_317_600),
/// )?;
/// assert!(token.starts_with("db.cluster-abc123.us-east-1.rds.amazonaws.com:5432/?Action=connect&DBUser=app_iam&"));
/// assert!(token.contains("X-Amz-Expires=900"));
/// # Ok::<(), aurora_pool::Error>(())
/// ```
pub fn generate_auth_token(
    host: &str,
    port: u16,
    user: &str,
    region: &str,
    credentials: &aws_credential_types::Credentials,
    at: SystemTime,
) -> Result<String> {
    for (parameter, value) in [("iam_host", host), ("user", user), ("iam_region", region)] {
        if value.trim().is_empty() {
            return Err(Error::config(
                parameter,
                "must not be empty to sign an IAM token",
            ));
        }
    }
    let identity: Identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.expires_in = Some(TOKEN_LIFETIME);
    settings.signature_location = SignatureLocation::QueryParams;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("rds-db")
        .time(at)
        .settings(settings)
        .build()
        .map_err(|err| Error::config("iam_region", "cannot sign an IAM token").with_source(err))?;
    let mut url = url::Url::parse(&format!("https://{host}:{port}/")).map_err(|err| {
        Error::config("iam_host", format!("`{host}` is not a valid host name")).with_source(err)
    })?;
    url.query_pairs_mut()
        .append_pair("Action", "connect")
        .append_pair("DBUser", user);
    let request = SignableRequest::new(
        "GET",
        url.as_str(),
        std::iter::empty(),
        SignableBody::Bytes(&[]),
    )
    .map_err(|err| {
        Error::config("user", "cannot sign an IAM token for this user name").with_source(err)
    })?;
    let (instructions, _signature) = sign(request, &params.into())
        .map_err(|err| {
            Error::config("iam_region", "signing the IAM token failed").with_source(err)
        })?
        .into_parts();
    for (name, value) in instructions.params() {
        url.query_pairs_mut().append_pair(name, value);
    }
    Ok(url.as_str().trim_start_matches("https://").to_owned())
}

/// The settings of IAM authentication (`auth=iam`).
#[derive(Clone)]
#[non_exhaustive]
pub struct IamSettings {
    /// The host name signed into tokens (`iam_host`); by default the instance host actually
    /// connected to. Set it when connecting through a custom DNS name, a tunnel or a proxy.
    pub host: Option<String>,
    /// The region (`iam_region`); by default parsed from the instance or URL host. An
    /// instance the catalog places in a region (an Aurora Global Database) is signed for
    /// that region whatever this says.
    pub region: Option<String>,
    /// The port signed into tokens (`iam_default_port`); by default the instance's port.
    pub default_port: Option<u16>,
    /// How long a token is reused for new connections (`iam_expiration_ms`, default 870000: 30 s
    /// less than the 15 minutes AWS accepts it, so a connect never races its expiry).
    pub expiration: Duration,
    /// The AWS credentials that sign tokens; by default the standard provider chain of
    /// `aws-config` (environment, profile, SSO, web identity, ECS, EC2 instance role).
    pub credentials: Option<SharedCredentialsProvider>,
    /// The clock tokens are signed and aged with (default the system clock).
    pub time_source: SharedTimeSource,
}

impl Default for IamSettings {
    fn default() -> Self {
        IamSettings {
            host: None,
            region: None,
            default_port: None,
            expiration: DEFAULT_EXPIRATION,
            credentials: None,
            time_source: SharedTimeSource::default(),
        }
    }
}

/// `iam_expiration_ms`'s default.
const DEFAULT_EXPIRATION: Duration = Duration::from_secs(870);

impl IamSettings {
    /// Settings with the defaults above.
    pub fn new() -> IamSettings {
        IamSettings::default()
    }

    /// Signs with these AWS credentials instead of the default provider chain.
    pub fn credentials(mut self, provider: impl ProvideCredentials + 'static) -> IamSettings {
        self.credentials = Some(SharedCredentialsProvider::new(provider));
        self
    }

    /// Reads the `iam_*` URL parameters.
    pub(crate) fn from_parameters(params: &[(String, String)]) -> Result<IamSettings> {
        let mut settings = IamSettings::default();
        for (key, value) in params {
            match key.as_str() {
                "iam_host" => settings.host = Some(value.clone()),
                "iam_region" => settings.region = Some(value.clone()),
                "iam_default_port" => {
                    settings.default_port = Some(value.trim().parse().map_err(|_| {
                        Error::config(key, format!("`{value}` is not a port number"))
                    })?);
                }
                "iam_expiration_ms" => {
                    let ms: u64 = value.trim().parse().map_err(|_| {
                        Error::config(key, format!("`{value}` is not a number of milliseconds"))
                    })?;
                    settings.expiration = Duration::from_millis(ms);
                }
                "iam_expiration_s" => {
                    let ms = crate::config::renamed_seconds(key, "iam_expiration_ms", value)?;
                    settings.expiration = Duration::from_millis(ms);
                }
                _ => {
                    return Err(Error::config(
                        key,
                        "unknown IAM parameter (iam_host, iam_region, iam_default_port, iam_expiration_ms)",
                    ));
                }
            }
        }
        Ok(settings)
    }

    /// Checks the settings against the URL's host.
    pub(crate) fn validate(&self, url_host: &str) -> Result<()> {
        if self.expiration.is_zero() || self.expiration > TOKEN_LIFETIME {
            return Err(Error::config(
                "iam_expiration_ms",
                format!(
                    "must be between 1 and {} (a token is accepted for 15 minutes)",
                    TOKEN_LIFETIME.as_millis()
                ),
            ));
        }
        if self.default_port == Some(0) {
            return Err(Error::config("iam_default_port", "must not be 0"));
        }
        let region_known = self.region.is_some()
            || [self.host.as_deref(), Some(url_host)]
                .into_iter()
                .flatten()
                .any(|host| Endpoint::classify(host).region().is_some());
        if !region_known {
            return Err(Error::config(
                "iam_region",
                format!(
                    "the region cannot be read from `{url_host}`; set iam_region (and iam_host when tokens must name another host)"
                ),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for IamSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IamSettings")
            .field("host", &self.host)
            .field("region", &self.region)
            .field("default_port", &self.default_port)
            .field("expiration", &self.expiration)
            .field(
                "credentials",
                &if self.credentials.is_some() {
                    "explicit"
                } else {
                    "default chain"
                },
            )
            .finish()
    }
}

/// The [`CredentialProvider`] behind `auth=iam`: one token per (region, host, port, user),
/// reused for `iam_expiration_ms`.
///
/// A login refused with a cached token regenerates the token and retries once; a refused
/// fresh token is reported (the IAM policy or the database grant is wrong, and retrying
/// cannot help).
pub struct IamAuth {
    settings: IamSettings,
    url_host: String,
    aws: OnceCell<SharedCredentialsProvider>,
    signing: SigningCredentials,
    tokens: Mutex<HashMap<TokenKey, CachedToken>>,
    generated: AtomicU64,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    region: String,
    host: String,
    port: u16,
    user: String,
}

struct CachedToken {
    token: String,
    reuse_until: SystemTime,
}

impl IamAuth {
    /// A provider for a cluster whose URL host is `url_host` (the region is read from it
    /// when the settings name none).
    pub fn new(settings: IamSettings, url_host: impl Into<String>) -> Result<IamAuth> {
        let url_host = url_host.into();
        settings.validate(&url_host)?;
        Ok(IamAuth {
            settings,
            url_host,
            aws: OnceCell::new(),
            signing: SigningCredentials::default(),
            tokens: Mutex::new(HashMap::new()),
            generated: AtomicU64::new(0),
        })
    }

    /// How many tokens were signed (cache misses and regenerations).
    pub fn tokens_generated(&self) -> u64 {
        self.generated.load(Ordering::Relaxed)
    }

    /// How many tokens the cache holds: those of the instances connected to within the last
    /// `iam_expiration_ms` (expired ones are dropped when a token is signed).
    pub fn tokens_cached(&self) -> usize {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// How many times the AWS credentials provider was asked for the credentials that sign
    /// the tokens: once per credential lifetime, plus failed attempts (at most one a second).
    pub async fn aws_credentials_fetched(&self) -> u64 {
        self.signing.fetches().await
    }

    fn key(&self, target: &ConnectTarget) -> Result<TokenKey> {
        let host = self
            .settings
            .host
            .clone()
            .unwrap_or_else(|| target.host.clone());
        // An instance's own region first: a global database's instances sit in several
        // regions, and a token signed for another region is refused.
        let region = target
            .region
            .clone()
            .or_else(|| self.settings.region.clone())
            .or_else(|| Endpoint::classify(&host).region().map(str::to_owned))
            .or_else(|| {
                Endpoint::classify(&self.url_host)
                    .region()
                    .map(str::to_owned)
            })
            .ok_or_else(|| {
                Error::config(
                    "iam_region",
                    format!("the region cannot be read from `{host}`; set iam_region"),
                )
            })?;
        Ok(TokenKey {
            region,
            host,
            port: self.settings.default_port.unwrap_or(target.port),
            user: target.user.clone(),
        })
    }

    fn cached(&self, key: &TokenKey, now: SystemTime) -> Option<Credentials> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let cached = tokens.get(key)?;
        let remaining = cached.reuse_until.duration_since(now).ok()?;
        (!remaining.is_zero()).then(|| {
            Credentials::new(cached.token.clone())
                .valid_for(remaining)
                .from_cache(true)
        })
    }

    async fn aws_credentials(&self) -> Result<aws_credential_types::Credentials> {
        let provider = self
            .aws
            .get_or_try_init(|| async {
                if let Some(explicit) = &self.settings.credentials {
                    return Ok(explicit.clone());
                }
                let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .load()
                    .await;
                config.credentials_provider().ok_or_else(|| {
                    Error::credentials(
                        "no AWS credentials provider found for IAM authentication (set AWS credentials in the environment, a profile or a role)",
                    )
                })
            })
            .await?;
        self.signing
            .get(provider, self.settings.time_source.now())
            .await
    }

    async fn generate(&self, key: &TokenKey) -> Result<Credentials> {
        let aws = self.aws_credentials().await?;
        let now = self.settings.time_source.now();
        let token = generate_auth_token(&key.host, key.port, &key.user, &key.region, &aws, now)?;
        // A token dies with the credentials that signed it.
        let mut reuse_until = now + self.settings.expiration;
        if let Some(expiry) = aws.expiry() {
            reuse_until = reuse_until.min(expiry);
        }
        self.generated.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            target: "aurora_pool",
            host = %key.host,
            port = key.port,
            user = %key.user,
            region = %key.region,
            "IAM token generated"
        );
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        // Expired tokens go: the cache holds the instances connected to within the last
        // `iam_expiration_ms`, not every host a topology ever named.
        tokens.retain(|_, cached| cached.reuse_until > now);
        tokens.insert(
            key.clone(),
            CachedToken {
                token: token.clone(),
                reuse_until,
            },
        );
        drop(tokens);
        let lifetime = reuse_until.duration_since(now).unwrap_or_default();
        Ok(Credentials::new(token).valid_for(lifetime))
    }
}

impl fmt::Debug for IamAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IamAuth")
            .field("settings", &self.settings)
            .field("url_host", &self.url_host)
            .field("tokens_generated", &self.tokens_generated())
            .finish()
    }
}

impl CredentialProvider for IamAuth {
    /// IAM tokens go only to a verified server (see `allow_unverified_server`).
    fn needs_verified_server(&self) -> bool {
        true
    }

    fn credentials<'a>(&'a self, target: &'a ConnectTarget) -> BoxFuture<'a, Result<Credentials>> {
        Box::pin(async move {
            let key = self.key(target)?;
            match self.cached(&key, self.settings.time_source.now()) {
                Some(credentials) => Ok(credentials),
                None => self.generate(&key).await,
            }
        })
    }

    fn login_rejected<'a>(
        &'a self,
        failure: LoginFailure<'a>,
    ) -> BoxFuture<'a, Result<Option<Credentials>>> {
        Box::pin(async move {
            if failure.attempt > 1 || !failure.rejected.is_from_cache() {
                return Ok(None);
            }
            let key = self.key(failure.target)?;
            if let Some(current) = self.cached(&key, self.settings.time_source.now())
                && current.password() != failure.rejected.password()
            {
                // Regenerated by a concurrent connect meanwhile.
                return Ok(Some(current));
            }
            self.generate(&key).await.map(Some)
        })
    }
}
