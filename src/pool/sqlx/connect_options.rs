//! The connect options of every connection of the sqlx flavour: the driver part of the URL
//! parsed by sqlx itself, TLS as libpq means it, and credentials from the provider.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use super::options::MapConnectOptions;
use crate::auth::Credentials;
use crate::config::{Config, SslMode};
use crate::endpoint::HostPort;
use crate::error::{Error, Result};
use crate::pool::targets::Route;

/// What every connection starts from, and what `sslmode=allow` learned.
///
/// sqlx 0.9 reads `allow` as `disable`, and its pools connect by themselves: the flavour
/// logs in plain and, once an instance refused a plain login (`28xxx`), connects to that
/// instance over TLS from then on (libpq decides per connection; the difference is the
/// one refused login per instance).
#[derive(Clone)]
pub(super) struct BaseOptions {
    options: PgConnectOptions,
    /// Under `allow`: what was learned, shared by every copy.
    allow: Option<Arc<AllowMemory>>,
}

/// The instances that refused a plain login, and who to tell when one more does.
#[derive(Default)]
struct AllowMemory {
    refused: Mutex<HashSet<HostPort>>,
    /// Points the pools that connect to an address at TLS (set once the pool core exists;
    /// before, the pools are built from what was learned).
    learned: OnceLock<Learned>,
}

/// What is told of an address found to want TLS.
type Learned = Box<dyn Fn(&HostPort) + Send + Sync>;

/// sqlx's mode as the crate names it.
fn mode_of(mode: PgSslMode) -> SslMode {
    match mode {
        PgSslMode::Disable => SslMode::Disable,
        PgSslMode::Allow => SslMode::Allow,
        PgSslMode::Prefer => SslMode::Prefer,
        PgSslMode::Require => SslMode::Require,
        PgSslMode::VerifyCa => SslMode::VerifyCa,
        PgSslMode::VerifyFull => SslMode::VerifyFull,
    }
}

/// Whether `options` would connect to one fixed address (`hostaddr`) whatever host the pool
/// gives it.
fn sets_hostaddr(options: &PgConnectOptions) -> bool {
    use sqlx::ConnectOptions;
    options
        .to_url_lossy()
        .query_pairs()
        .any(|(key, _)| key == "hostaddr")
}

impl BaseOptions {
    /// The options of `config` (the user's `map` applied to sqlx's reading of the URL),
    /// with the `sslmode` the pool applies.
    pub(super) fn new(config: &Config, map: Option<&MapConnectOptions>) -> Result<BaseOptions> {
        // sqlx starts from the environment (`PGHOST`, `PGSSLMODE`, `PGHOSTADDR`, ...), then
        // reads the URL.
        let options = PgConnectOptions::from_str(config.driver_url().as_str()).map_err(|err| {
            Error::config("url", "sqlx rejected the connection parameters").with_source(err)
        })?;
        if sets_hostaddr(&options) {
            return Err(Error::config(
                "PGHOSTADDR",
                "PGHOSTADDR is set in the environment, and sqlx would connect to that one address for every instance of the cluster: unset it (give the discovery address as the URL's hostaddr instead)",
            ));
        }
        let before = mode_of(options.get_ssl_mode());
        let options = match map {
            Some(map) => map(options),
            None => options,
        };
        if sets_hostaddr(&options) {
            return Err(Error::config(
                "connect_options",
                "the connect_options hook set hostaddr, which would send every instance's connections to one address: the pool sets each instance's address itself",
            ));
        }
        // The hook is one more source of the mode: the strictest applies, as for the URL
        // and `PGSSLMODE` (a hook asking for verify-full is never weakened).
        let after = mode_of(options.get_ssl_mode());
        let hook_mode = (after != before).then_some(after);
        let mode = config.effective_ssl_mode();
        let mode = hook_mode.map_or(mode, |hook| mode.strictest(hook));
        if mode == SslMode::VerifyFull && config.hostaddr.is_some() {
            // sqlx checks the certificate against the address it connects to.
            return Err(Error::config(
                "hostaddr",
                "with sslmode=verify-full the certificate must name the URL's host, and the sqlx flavour can only check the address it connects to: drop hostaddr, use the deadpool flavour, or settle for verify-ca (which checks no name)",
            ));
        }
        let driver_mode = match mode {
            // sqlx's own `Allow` never encrypts; the plain-then-TLS order is this type's.
            SslMode::Disable | SslMode::Allow => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        };
        Ok(BaseOptions {
            options: options.ssl_mode(driver_mode),
            allow: (mode == SslMode::Allow).then(Default::default),
        })
    }

    /// The options of a connection to `address` logging in with `credentials`.
    pub(super) fn to(&self, address: &HostPort, credentials: &Credentials) -> PgConnectOptions {
        let mut options = self.options.clone().host(&address.host).port(address.port);
        if self.learned_tls(address) {
            options = options.ssl_mode(PgSslMode::Require);
        }
        if let Some(user) = credentials.user() {
            options = options.username(user);
        }
        if let Some(password) = credentials.password() {
            options = options.password(password);
        }
        options
    }

    /// The options of a pool's connection to `route`, with its current credentials.
    pub(super) fn to_route(&self, route: &Route) -> PgConnectOptions {
        self.to(route.instance.address(), &route.login.current())
    }

    /// The options of a pool that has nowhere to connect.
    pub(super) fn unrouted(&self) -> PgConnectOptions {
        self.options.clone()
    }

    /// Under `allow`, `learned` is told each address found to want TLS from now on.
    pub(super) fn when_tls_learned(&self, learned: impl Fn(&HostPort) + Send + Sync + 'static) {
        if let Some(allow) = &self.allow {
            let _ = allow.learned.set(Box::new(learned));
        }
    }

    /// A login to `address` was refused with `sqlstate`: under `allow`, a refusal of the
    /// login itself means the instance wants TLS. Returns whether connections to
    /// `address` use TLS now (so that a plain attempt is worth making again over TLS; the
    /// caller makes it once). The first refusal of an address points every pool at TLS.
    pub(super) fn plain_login_refused(&self, address: &HostPort, sqlstate: Option<&str>) -> bool {
        let Some(allow) = &self.allow else {
            return false;
        };
        if !sqlstate.is_some_and(SslMode::login_refusal_may_need_tls) {
            return false;
        }
        let first = allow
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(address.clone());
        if first && let Some(learned) = allow.learned.get() {
            learned(address);
        }
        true
    }

    /// Whether connections to `address` use TLS because `allow` learned it.
    pub(super) fn learned_tls(&self, address: &HostPort) -> bool {
        self.allow.as_ref().is_some_and(|allow| {
            allow
                .refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(address)
        })
    }
}
