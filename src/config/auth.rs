//! How connections log in: the `auth` parameter and its settings.

use std::fmt;
use std::sync::Arc;

use crate::auth::CredentialProvider;
use crate::error::{Error, Result};

/// How connections log in (`auth`).
///
/// Chosen in the URL with `auth=password` (the default), `auth=iam` or
/// `auth=secrets_manager` (implied by `secrets_manager_secret_id`), with the settings named
/// in the README; or in code with [`Builder::auth`](super::Builder::auth) and
/// [`Builder::credential_provider`](super::Builder::credential_provider).
#[derive(Clone)]
#[non_exhaustive]
pub enum Auth {
    /// The URL's password (or none, for `trust` logins).
    Password,
    /// RDS IAM database authentication tokens, signed locally per instance (feature `iam`).
    /// Tokens go only to a verified server: `sslmode` defaults to `verify-full`, and other
    /// modes are refused unless [`Config::allow_unverified_server`](super::Config::allow_unverified_server)
    /// is set (then `require` is the default, and `disable`, `allow` or `prefer` are still
    /// refused: RDS takes IAM logins only over TLS).
    #[cfg(feature = "iam")]
    Iam(crate::iam::IamSettings),
    /// User name and password from an AWS Secrets Manager secret (feature
    /// `secrets-manager`). Like IAM tokens, they go only to a verified server
    /// (`sslmode=verify-full` by default) unless
    /// [`Config::allow_unverified_server`](super::Config::allow_unverified_server) is set.
    #[cfg(feature = "secrets-manager")]
    SecretsManager(crate::secrets_manager::SecretsManagerSettings),
    /// A provider of your own.
    Provider(Arc<dyn CredentialProvider>),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Password => f.write_str("Password"),
            #[cfg(feature = "iam")]
            Auth::Iam(settings) => f.debug_tuple("Iam").field(settings).finish(),
            #[cfg(feature = "secrets-manager")]
            Auth::SecretsManager(settings) => {
                f.debug_tuple("SecretsManager").field(settings).finish()
            }
            Auth::Provider(provider) => f.debug_tuple("Provider").field(provider).finish(),
        }
    }
}

impl Auth {
    /// Reads `auth` and the `iam_*` and `secrets_manager_*` parameters.
    pub(super) fn from_parameters(params: &[(String, String)]) -> Result<Auth> {
        let mode = params
            .iter()
            .rev()
            .find(|(k, _)| k == "auth")
            .map(|(_, v)| v.as_str());
        let has = |prefix: &str| params.iter().find(|(k, _)| k.starts_with(prefix));
        let mode = match mode {
            Some(mode) => mode,
            None if has("secrets_manager_").is_some() => "secrets_manager",
            None => "password",
        };
        let foreign = match mode {
            "password" => has("iam_").or_else(|| has("secrets_manager_")),
            "iam" => has("secrets_manager_"),
            "secrets_manager" | "secrets-manager" => has("iam_"),
            other => {
                return Err(Error::config(
                    "auth",
                    format!("unknown mode `{other}`; expected password, iam or secrets_manager"),
                ));
            }
        };
        if let Some((key, _)) = foreign {
            return Err(Error::config(
                key,
                format!("is set but `auth` is `{mode}`; set auth to the mode it belongs to"),
            ));
        }
        let own: Vec<(String, String)> = params
            .iter()
            .filter(|(k, _)| k != "auth")
            .cloned()
            .collect();
        match mode {
            "password" => Ok(Auth::Password),
            #[cfg(feature = "iam")]
            "iam" => Ok(Auth::Iam(crate::iam::IamSettings::from_parameters(&own)?)),
            #[cfg(feature = "secrets-manager")]
            "secrets_manager" | "secrets-manager" => Ok(Auth::SecretsManager(
                crate::secrets_manager::SecretsManagerSettings::from_parameters(&own)?,
            )),
            other => {
                let _ = own;
                Err(Error::config(
                    "auth",
                    format!(
                        "`{other}` needs the crate feature `{}`",
                        if other == "iam" {
                            "iam"
                        } else {
                            "secrets-manager"
                        }
                    ),
                ))
            }
        }
    }

    /// Whether logins need TLS.
    pub(super) fn requires_tls(&self) -> bool {
        #[cfg(feature = "iam")]
        if matches!(self, Auth::Iam(_)) {
            return true;
        }
        false
    }

    /// Whether the credentials may only go to a server the TLS handshake verified: IAM
    /// tokens and Secrets Manager passwords, and those of a provider that says so
    /// ([`CredentialProvider::needs_verified_server`]).
    pub(super) fn needs_verified_server(&self) -> bool {
        match self {
            Auth::Password => false,
            #[cfg(feature = "iam")]
            Auth::Iam(_) => true,
            #[cfg(feature = "secrets-manager")]
            Auth::SecretsManager(_) => true,
            Auth::Provider(provider) => provider.needs_verified_server(),
        }
    }

    /// What the credentials are, for an error message.
    pub(super) fn credentials_name(&self) -> &'static str {
        match self {
            #[cfg(feature = "iam")]
            Auth::Iam(_) => "IAM tokens",
            #[cfg(feature = "secrets-manager")]
            Auth::SecretsManager(_) => "Secrets Manager passwords",
            _ => "the credential provider's credentials",
        }
    }
}
