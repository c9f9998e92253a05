//! Credentials for new connections: the URL's password, an RDS IAM token (feature `iam`), a
//! Secrets Manager secret (feature `secrets-manager`), or a [`CredentialProvider`] of your own.
//!
//! A provider is asked when the pool needs credentials for an instance: before the first
//! connection to it, again before the credentials it returned expire
//! ([`Credentials::valid_for`]), and after a login with them is refused. The crate's own
//! connections (discovery, monitor, health probes) ask it on every connect. It is never
//! asked per query. Every pool of a `cluster_id` shares the monitor, which uses the provider
//! of the first pool still alive, so rotated credentials reach the monitor too.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::connector::BoxFuture;
use crate::error::Result;

/// A user name and password for one login, with how long they may be used.
///
/// `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    user: Option<String>,
    password: Option<String>,
    valid_for: Option<Duration>,
    from_cache: bool,
}

impl Credentials {
    /// A password for the URL's user.
    pub fn new(password: impl Into<String>) -> Credentials {
        Credentials {
            user: None,
            password: Some(password.into()),
            valid_for: None,
            from_cache: false,
        }
    }

    /// No password at all (`trust` logins, a `.pgpass` file read by the driver).
    pub(crate) fn none() -> Credentials {
        Credentials {
            user: None,
            password: None,
            valid_for: None,
            from_cache: false,
        }
    }

    /// Logs in as `user` instead of the URL's user (a Secrets Manager secret names its user).
    pub fn with_user(mut self, user: impl Into<String>) -> Credentials {
        self.user = Some(user.into());
        self
    }

    /// New logins may use these credentials for `lifetime` from now; the pool asks for new
    /// ones before then. Without it they are used until a login is refused.
    pub fn valid_for(mut self, lifetime: Duration) -> Credentials {
        self.valid_for = Some(lifetime);
        self
    }

    /// Marks credentials served from a provider's cache: a login refused with them is worth
    /// one retry with freshly fetched ones, a login refused with fresh ones is not.
    pub fn from_cache(mut self, cached: bool) -> Credentials {
        self.from_cache = cached;
        self
    }

    /// The user to log in as, when it is not the URL's.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The password. Keep it out of logs.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// How long new logins may use these credentials, from when they were handed out.
    pub fn lifetime(&self) -> Option<Duration> {
        self.valid_for
    }

    /// Whether they came from a provider's cache.
    pub fn is_from_cache(&self) -> bool {
        self.from_cache
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("valid_for", &self.valid_for)
            .field("from_cache", &self.from_cache)
            .finish()
    }
}

/// The instance a connection is about to be opened to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ConnectTarget {
    /// The host actually connected to: an instance endpoint, not the cluster endpoint.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The URL's user.
    pub user: String,
    /// The AWS region the catalog places the instance in (an Aurora Global Database's
    /// instances); `None` elsewhere. IAM tokens are signed for it.
    pub region: Option<String>,
}

impl ConnectTarget {
    /// A target; providers receive them from the pool, tests and wrappers build their own.
    pub fn new(host: impl Into<String>, port: u16, user: impl Into<String>) -> ConnectTarget {
        ConnectTarget {
            host: host.into(),
            port,
            user: user.into(),
            region: None,
        }
    }

    /// The same target in `region` (see [`region`](ConnectTarget::region)).
    pub fn in_region(mut self, region: Option<&str>) -> ConnectTarget {
        self.region = region.map(str::to_owned);
        self
    }
}

/// A login refused with credentials a provider returned.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct LoginFailure<'a> {
    /// Where the login was refused.
    pub target: &'a ConnectTarget,
    /// The credentials the server refused.
    pub rejected: &'a Credentials,
    /// 1 for the first refusal of this connect, 2 after one retry, ...
    pub attempt: u32,
    /// Time since the first login attempt of this connect.
    pub elapsed: Duration,
}

impl<'a> LoginFailure<'a> {
    /// A refusal of `rejected` at `target`, the `attempt`-th of one connect, `elapsed` after
    /// its first login.
    pub fn new(
        target: &'a ConnectTarget,
        rejected: &'a Credentials,
        attempt: u32,
        elapsed: Duration,
    ) -> LoginFailure<'a> {
        LoginFailure {
            target,
            rejected,
            attempt,
            elapsed,
        }
    }
}

/// Where new connections get their credentials from.
///
/// Implement it to take passwords from a vault of your own; the crate's providers are
/// [`StaticPassword`], `iam::IamAuth` (feature `iam`) and
/// `secrets_manager::SecretsManagerAuth` (feature `secrets-manager`). Errors must not
/// contain secret values.
///
/// ```
/// use std::time::Duration;
/// use aurora_pool::BoxFuture;
/// use aurora_pool::auth::{ConnectTarget, CredentialProvider, Credentials};
///
/// /// Reads the password from a file that a sidecar keeps current.
/// #[derive(Debug)]
/// struct PasswordFile(std::path::PathBuf);
///
/// impl CredentialProvider for PasswordFile {
///     fn credentials<'a>(
///         &'a self,
///         _target: &'a ConnectTarget,
///     ) -> BoxFuture<'a, aurora_pool::Result<Credentials>> {
///         Box::pin(async move {
///             let password = tokio::fs::read_to_string(&self.0).await.map_err(|err| {
///                 aurora_pool::Error::credentials(format!("reading {}: {err}", self.0.display()))
///             })?;
///             // Read it again every minute.
///             Ok(Credentials::new(password.trim()).valid_for(Duration::from_secs(60)))
///         })
///     }
/// }
/// ```
pub trait CredentialProvider: fmt::Debug + Send + Sync + 'static {
    /// Credentials for a new connection to `target`.
    fn credentials<'a>(&'a self, target: &'a ConnectTarget) -> BoxFuture<'a, Result<Credentials>>;

    /// A login with credentials from this provider was refused: return new credentials to
    /// retry with, or `None` to give up and report the refusal. The default gives up.
    ///
    /// The caller stops after a few attempts whatever this returns; a provider that waits
    /// out a rotation window sleeps here before answering.
    fn login_rejected<'a>(
        &'a self,
        failure: LoginFailure<'a>,
    ) -> BoxFuture<'a, Result<Option<Credentials>>> {
        let _ = failure;
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Whether these credentials may only go to a server the TLS handshake verified
    /// (`sslmode=verify-full`), as IAM tokens and Secrets Manager passwords
    /// do: a pool using this provider then defaults to `verify-full` and refuses weaker
    /// modes unless `allow_unverified_server` is set. The default is `false`: the
    /// credentials follow `sslmode` as a URL's password does.
    fn needs_verified_server(&self) -> bool {
        false
    }
}

impl<P: CredentialProvider + ?Sized> CredentialProvider for Arc<P> {
    fn credentials<'a>(&'a self, target: &'a ConnectTarget) -> BoxFuture<'a, Result<Credentials>> {
        (**self).credentials(target)
    }

    fn login_rejected<'a>(
        &'a self,
        failure: LoginFailure<'a>,
    ) -> BoxFuture<'a, Result<Option<Credentials>>> {
        (**self).login_rejected(failure)
    }

    fn needs_verified_server(&self) -> bool {
        (**self).needs_verified_server()
    }
}

/// The same password for every connection: what the pool uses for a URL with a password (or
/// none), unless another provider is configured.
#[derive(Clone)]
pub struct StaticPassword {
    credentials: Credentials,
}

impl StaticPassword {
    /// Logs in with `password` as the URL's user.
    pub fn new(password: impl Into<String>) -> StaticPassword {
        StaticPassword {
            credentials: Credentials::new(password),
        }
    }

    pub(crate) fn from_config(password: Option<&str>) -> StaticPassword {
        StaticPassword {
            credentials: password.map_or_else(Credentials::none, Credentials::new),
        }
    }
}

impl fmt::Debug for StaticPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticPassword")
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl CredentialProvider for StaticPassword {
    fn credentials<'a>(&'a self, _: &'a ConnectTarget) -> BoxFuture<'a, Result<Credentials>> {
        Box::pin(std::future::ready(Ok(self.credentials.clone())))
    }
}

/// Most logins one connect makes: the first, then retries with renewed credentials.
pub(crate) const MAX_LOGIN_ATTEMPTS: u32 = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let shown = format!(
            "{:?} {:?}",
            Credentials::new("hunter2").with_user("app"),
            StaticPassword::new("hunter2")
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("app"), "{shown}");
    }
}
