//! The settings of Secrets Manager authentication and how the URL spells them.

use std::time::Duration;

use crate::error::{Error, Result};

/// `secrets_manager_expiration_ms`'s default, as in the AWS JDBC wrapper.
const DEFAULT_EXPIRATION: Duration = Duration::from_secs(870);
/// `secrets_manager_connect_retry_interval_ms`'s default.
const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_millis(1000);
/// The longest pause between two retries of a refused login.
pub(super) const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(30);

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
    /// (`secrets_manager_expiration_ms`, default 870000).
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
                "secrets_manager_expiration_ms" => {
                    settings.expiration =
                        Duration::from_millis(number(key, value, "milliseconds")?);
                }
                "secrets_manager_expiration_s" => {
                    settings.expiration = Duration::from_millis(crate::config::renamed_seconds(
                        key,
                        "secrets_manager_expiration_ms",
                        value,
                    )?);
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
                         secrets_manager_expiration_ms, secrets_manager_secret_username_key, \
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
    pub(super) fn validate(&self) -> Result<()> {
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
                "secrets_manager_expiration_ms",
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
    pub(super) fn arn_region(&self) -> Option<&str> {
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
pub(super) fn region_from_arn(secret_id: &str) -> Option<&str> {
    let mut parts = secret_id.splitn(5, ':');
    let (arn, partition, service, region) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    parts.next()?;
    let aws_partition = partition == "aws" || partition.starts_with("aws-");
    (arn == "arn" && aws_partition && service == "secretsmanager" && !region.is_empty())
        .then_some(region)
}
