//! TLS as libpq means it: `sslmode`, `sslrootcert`, and which modes credentials may use.

use std::fmt;

use super::Config;
use crate::error::{Error, Result};

/// libpq's `sslmode`, as both flavours apply it (the README's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// Plain only.
    Disable,
    /// Plain first; TLS when the server refuses the plain login.
    Allow,
    /// TLS when the server offers it, else plain; the certificate is not checked.
    Prefer,
    /// TLS only; the certificate is not checked.
    Require,
    /// TLS only; the certificate must chain to a trusted CA.
    VerifyCa,
    /// TLS only; the certificate must chain to a trusted CA and name the host.
    VerifyFull,
}

impl SslMode {
    const ALL: [SslMode; 6] = [
        SslMode::Disable,
        SslMode::Allow,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    /// The stricter of two modes (the order of `ALL`: `disable` to `verify-full`).
    pub(crate) fn strictest(self, other: SslMode) -> SslMode {
        let rank = |mode: SslMode| SslMode::ALL.iter().position(|m| *m == mode);
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }

    /// `PGSSLMODE` from the environment, which libpq and sqlx read: a source of the mode
    /// like the URL (the strictest of them applies). An invalid value is refused by name.
    pub(crate) fn from_environment() -> Result<Option<SslMode>> {
        match std::env::var("PGSSLMODE") {
            Ok(text) if !text.is_empty() => SslMode::parse("PGSSLMODE", &text).map(Some),
            _ => Ok(None),
        }
    }

    /// The mode's name in a URL.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Reads `text` as the value of `parameter`.
    pub(crate) fn parse(parameter: &str, text: &str) -> Result<SslMode> {
        SslMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == text)
            .ok_or_else(|| {
                let names: Vec<_> = SslMode::ALL.iter().map(|m| m.as_str()).collect();
                Error::config(
                    parameter,
                    format!("`{text}` is not one of {}", names.join(", ")),
                )
            })
    }

    /// Whether a server's refusal of a plain login (`sqlstate`) is one that `allow` answers
    /// by logging in again over TLS: class 28, the login itself refused (pg_hba's "no
    /// encryption", `rds.force_ssl`).
    pub(crate) fn login_refusal_may_need_tls(sqlstate: &str) -> bool {
        sqlstate.starts_with("28")
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Config {
    /// The `sslmode` given in the URL, if any (checked when the URL was read).
    pub(crate) fn ssl_mode(&self) -> Option<SslMode> {
        // The last one wins, as in libpq and sqlx.
        let (key, mode) = self
            .driver_url
            .query_pairs()
            .filter(|(k, _)| k == "sslmode" || k == "ssl-mode")
            .last()?;
        SslMode::parse(&key, &mode).ok()
    }

    /// The CA file the URL names (`sslrootcert`, or sqlx's `ssl-root-cert` / `ssl-ca`), else
    /// `PGSSLROOTCERT` from the environment (as libpq and sqlx read it).
    pub(crate) fn ssl_root_cert(&self) -> Option<String> {
        self.driver_url
            .query_pairs()
            .filter(|(k, _)| matches!(k.as_ref(), "sslrootcert" | "ssl-root-cert" | "ssl-ca"))
            .last()
            .map(|(_, v)| v.into_owned())
            .or_else(|| {
                std::env::var("PGSSLROOTCERT")
                    .ok()
                    .filter(|v| !v.is_empty())
            })
    }

    /// `sslmode` as the connections apply it:
    /// - none given: `verify-full` when the credentials go only to a verified server (IAM,
    ///   Secrets Manager; see [`Config::allow_unverified_server`]), else `require` when
    ///   they need TLS (IAM with the opt-out), else libpq's `prefer`;
    /// - `PGSSLMODE` in the environment is a source too: the strictest of it and the above
    ///   applies, so a deployment that relies on `PGSSLMODE=verify-full` is never weakened
    ///   by a URL that says less;
    /// - `require` with a CA file verifies the chain like `verify-ca` (libpq: "if a root CA
    ///   file exists, sslmode=require behaves like verify-ca").
    pub(crate) fn effective_ssl_mode(&self) -> SslMode {
        let mode = match self.ssl_mode() {
            Some(mode) => mode,
            None if self.credentials_need_verified_server() => SslMode::VerifyFull,
            None if self.auth.requires_tls() => SslMode::Require,
            None => SslMode::Prefer,
        };
        let mode = match SslMode::from_environment() {
            Ok(Some(environment)) => mode.strictest(environment),
            _ => mode,
        };
        match mode {
            SslMode::Require if self.ssl_root_cert().is_some() => SslMode::VerifyCa,
            mode => mode,
        }
    }

    /// A certificate refused while no `sslrootcert` is set: says that only the default
    /// roots were trusted, which never hold the RDS CAs (the first thing a new user of
    /// `verify-full`, or of IAM and Secrets Manager, runs into).
    pub(crate) fn explain_certificate_refusal(&self, err: Error) -> Error {
        if err.is_certificate_refused() && self.ssl_root_cert().is_none() {
            err.with_hint(
                "no sslrootcert is set, so only the default trust store is used (the Mozilla roots, or the system's with native-tls), which holds no RDS CA: set sslrootcert to the RDS CA bundle (README, \"Security\")",
            )
        } else {
            err
        }
    }

    /// Whether the credentials may only go to a server the handshake verified.
    fn credentials_need_verified_server(&self) -> bool {
        self.auth.needs_verified_server() && !self.allow_unverified_server
    }

    /// Refuses a mode that would send the credentials where they must not go: IAM tokens
    /// without TLS (RDS refuses them anyway), and IAM tokens or Secrets Manager passwords
    /// to a server nobody verified (any TLS peer could take them and log in as the user
    /// for as long as they are valid). Only `verify-full` counts: `verify-ca` checks no
    /// name, and sqlx adds `sslrootcert` to the public roots rather than replacing them,
    /// so any publicly trusted certificate for any domain would pass it.
    pub(super) fn check_tls(&self) -> Result<()> {
        SslMode::from_environment()?;
        let mode = self.effective_ssl_mode();
        if self.auth.requires_tls()
            && matches!(mode, SslMode::Disable | SslMode::Allow | SslMode::Prefer)
        {
            return Err(Error::config(
                "sslmode",
                format!(
                    "`{mode}` may send the IAM token without TLS, and RDS accepts IAM logins only over TLS; use verify-full with sslrootcert set to the RDS CA bundle"
                ),
            ));
        }
        if self.credentials_need_verified_server() && mode != SslMode::VerifyFull {
            return Err(Error::config(
                "sslmode",
                format!(
                    "`{mode}` does not verify that the server is the host named, and {} go only to a verified server: use sslmode=verify-full with sslrootcert set to the RDS CA bundle (README, \"Security\"), or set allow_unverified_server=true to send them anyway",
                    self.auth.credentials_name()
                ),
            ));
        }
        Ok(())
    }
}
