//! RDS IAM database authentication tokens (feature `iam`).
//!
//! A token is a SigV4-presigned `rds-db:connect` URL without its scheme, valid for 15
//! minutes and checked only when a connection logs in. It is signed locally (no network
//! call): generating one costs microseconds.
//!
//! The token is signed directly with `aws-sigv4` rather than with `aws-sdk-rds`'s generator,
//! which mis-encodes user names containing `+` or spaces. `tests/iam_tokens.rs` checks the
//! output against tokens made by botocore (`scripts/iam_fixtures.py`).

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

use crate::error::{Error, Result};

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
    credentials: &Credentials,
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
