//! The connect options of every connection of the sqlx flavour: the driver part of the URL
//! parsed by sqlx itself, TLS as libpq means it, and credentials from the provider.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

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
    /// Under `allow`: the instances that refused a plain login.
    plain_refused: Option<Arc<Mutex<HashSet<HostPort>>>>,
}

impl BaseOptions {
    /// The options of `config` (the user's `map` applied to sqlx's reading of the URL),
    /// with the `sslmode` the pool applies.
    pub(super) fn new(config: &Config, map: Option<&MapConnectOptions>) -> Result<BaseOptions> {
        let options = PgConnectOptions::from_str(config.driver_url().as_str()).map_err(|err| {
            Error::config("url", "sqlx rejected the connection parameters").with_source(err)
        })?;
        let options = match map {
            Some(map) => map(options),
            None => options,
        };
        let mode = config.effective_ssl_mode();
        if mode == SslMode::VerifyFull && config.hostaddr.is_some() {
            // sqlx checks the certificate against the address it connects to.
            return Err(Error::config(
                "hostaddr",
                "with sslmode=verify-full the certificate must name the URL's host, and the sqlx flavour can only check the address it connects to: drop hostaddr, use verify-ca, or use the deadpool flavour",
            ));
        }
        let driver_mode = match mode {
            SslMode::Allow => PgSslMode::Disable,
            mode => PgSslMode::from_str(mode.as_str())
                .map_err(|err| Error::config("sslmode", format!("`{mode}`")).with_source(err))?,
        };
        Ok(BaseOptions {
            options: options.ssl_mode(driver_mode),
            plain_refused: (mode == SslMode::Allow).then(Default::default),
        })
    }

    /// The options of a connection to `address` logging in with `credentials`.
    pub(super) fn to(&self, address: &HostPort, credentials: &Credentials) -> PgConnectOptions {
        let mut options = self.options.clone().host(&address.host).port(address.port);
        if self.needs_tls(address) {
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

    /// A plain login to `address` was refused with `sqlstate`: under `allow`, returns
    /// whether the next one should go over TLS (the first refusal of that instance).
    pub(super) fn plain_login_refused(&self, address: &HostPort, sqlstate: Option<&str>) -> bool {
        let Some(refused) = &self.plain_refused else {
            return false;
        };
        if !sqlstate.is_some_and(SslMode::login_refusal_may_need_tls) {
            return false;
        }
        refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(address.clone())
    }

    fn needs_tls(&self, address: &HostPort) -> bool {
        self.plain_refused.as_ref().is_some_and(|refused| {
            refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(address)
        })
    }
}
