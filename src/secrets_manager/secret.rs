//! A secret's value read into credentials, and why fetching one failed, without ever
//! showing a value.

use std::fmt;

use aws_sdk_secretsmanager::error::SdkError;
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;

use crate::error::{Error, Result};

/// Reads the user name and password out of a secret's `SecretString`. Errors name the
/// secret and the keys, never a value.
pub(super) fn parse_secret(
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

/// Why a `GetSecretValue` call failed.
///
/// The SDK's error is not kept whole: for a response that could not be parsed it holds the
/// raw HTTP response, whose body (shown by `Debug`) may be the secret. A service error
/// (`ResourceNotFoundException`, `AccessDeniedException`, ...) is kept as the source, so
/// that callers can downcast it to [`GetSecretValueError`]; any other failure is kept as
/// the text of its error chain.
#[derive(Debug)]
pub(super) enum FetchError {
    Service(GetSecretValueError),
    Other(String),
}

impl FetchError {
    pub(super) fn new<R>(err: SdkError<GetSecretValueError, R>) -> FetchError
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
