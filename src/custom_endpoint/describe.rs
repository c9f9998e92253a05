//! `DescribeDBClusterEndpoints`: the type and the members of one Aurora custom endpoint.

use std::collections::BTreeSet;
use std::error::Error as StdError;
use std::fmt;

use aws_sdk_rds::Client;
use aws_sdk_rds::config::retry::RetryConfig;
use aws_sdk_rds::config::{Credentials, ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_rds::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_rds::operation::describe_db_cluster_endpoints::DescribeDBClusterEndpointsError;
use aws_sdk_rds::types::{DbClusterEndpoint, Filter};

use crate::error::Error;

/// The instances a custom endpoint may route to (its `CustomEndpointType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CustomEndpointType {
    /// `READER`: only reader instances.
    Reader,
    /// `ANY`: readers and the writer.
    Any,
}

impl fmt::Display for CustomEndpointType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CustomEndpointType::Reader => "READER",
            CustomEndpointType::Any => "ANY",
        })
    }
}

/// Which instances belong to a custom endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Members {
    /// `StaticMembers` was not empty: exactly these instances (an allowed list).
    Static(BTreeSet<String>),
    /// `StaticMembers` was empty: every instance except these (a blocked list; empty means
    /// every instance of the cluster).
    Excluded(BTreeSet<String>),
}

impl fmt::Display for Members {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, ids) = match self {
            Members::Static(ids) => ("static", ids),
            Members::Excluded(ids) => ("all except", ids),
        };
        write!(f, "{what} [")?;
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(id)?;
        }
        f.write_str("]")
    }
}

/// What `DescribeDBClusterEndpoints` says about one custom endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CustomEndpointInfo {
    /// `DBClusterEndpointIdentifier`: the first DNS label of the endpoint.
    pub(crate) identifier: String,
    /// `DBClusterIdentifier`: the cluster the endpoint belongs to.
    pub(crate) cluster_identifier: String,
    /// `CustomEndpointType`.
    pub(crate) endpoint_type: CustomEndpointType,
    /// `StaticMembers` or `ExcludedMembers`.
    pub(crate) members: Members,
}

impl CustomEndpointInfo {
    /// Whether the instance `instance_id` (a `DBInstanceIdentifier`, compared without regard
    /// to ASCII case as RDS stores identifiers in lower case) is a member of the endpoint.
    ///
    /// The endpoint type is not checked here: for a `READER` endpoint with an exclusion list
    /// the caller must also require the reader role.
    pub(crate) fn allows(&self, instance_id: &str) -> bool {
        let listed = |ids: &BTreeSet<String>| {
            ids.contains(instance_id) || ids.iter().any(|id| id.eq_ignore_ascii_case(instance_id))
        };
        match &self.members {
            Members::Static(ids) => listed(ids),
            Members::Excluded(ids) => !listed(ids),
        }
    }

    /// Reads one `DBClusterEndpoint` of a `DescribeDBClusterEndpoints` answer.
    fn from_endpoint(requested: &str, endpoint: &DbClusterEndpoint) -> Result<Self, DescribeError> {
        let identifier = endpoint
            .db_cluster_endpoint_identifier()
            .unwrap_or(requested)
            .to_owned();
        let endpoint_type = match endpoint.custom_endpoint_type() {
            Some(t) if t.eq_ignore_ascii_case("READER") => CustomEndpointType::Reader,
            Some(t) if t.eq_ignore_ascii_case("ANY") => CustomEndpointType::Any,
            other => {
                return Err(DescribeError::Other(Error::topology(format!(
                    "custom endpoint `{identifier}` has the CustomEndpointType `{}`, which is \
                     not supported (READER or ANY expected)",
                    other.unwrap_or("<none>")
                ))));
            }
        };
        let set = |ids: &[String]| ids.iter().cloned().collect::<BTreeSet<_>>();
        let members = if endpoint.static_members().is_empty() {
            Members::Excluded(set(endpoint.excluded_members()))
        } else {
            Members::Static(set(endpoint.static_members()))
        };
        Ok(CustomEndpointInfo {
            identifier,
            cluster_identifier: endpoint
                .db_cluster_identifier()
                .unwrap_or_default()
                .to_owned(),
            endpoint_type,
            members,
        })
    }
}

/// Why [`describe`] failed, sorted by what the caller should do about it.
#[derive(Debug)]
pub(crate) enum DescribeError {
    /// AWS throttled the call (`Throttling`, `ThrottlingException`, `RequestLimitExceeded`,
    /// `TooManyRequestsException`): call less often. A topology error.
    Throttled(Error),
    /// The AWS credentials are missing, expired or lack the permission
    /// `rds:DescribeDBClusterEndpoints`: retrying soon will not help. A credentials error.
    Credentials(Error),
    /// Anything else: the endpoint does not exist, the answer made no sense, AWS could not
    /// be reached. A topology error.
    Other(Error),
}

impl DescribeError {
    /// The error to report.
    #[cfg(test)]
    pub(crate) fn into_error(self) -> Error {
        match self {
            DescribeError::Throttled(err)
            | DescribeError::Credentials(err)
            | DescribeError::Other(err) => err,
        }
    }

    /// The error to report, borrowed.
    #[cfg(test)]
    pub(crate) fn error(&self) -> &Error {
        match self {
            DescribeError::Throttled(err)
            | DescribeError::Credentials(err)
            | DescribeError::Other(err) => err,
        }
    }

    /// Sorts a failed SDK call for the custom endpoint `identifier`.
    fn from_sdk<R>(identifier: &str, err: SdkError<DescribeDBClusterEndpointsError, R>) -> Self
    where
        R: fmt::Debug + 'static,
    {
        let code = err.code().map(str::to_owned);
        let credentials_provider_failed = is_credentials_provider_failure(&err);
        let source = SdkFailure::new(err);
        match code.as_deref() {
            Some(code) if THROTTLING_CODES.contains(&code) => {
                DescribeError::Throttled(Error::topology(format!(
                    "DescribeDBClusterEndpoints for custom endpoint `{identifier}` was throttled \
                     by AWS ({code})"
                )))
            }
            Some(code) if CREDENTIALS_CODES.contains(&code) => {
                DescribeError::Credentials(Error::credentials(format!(
                    "DescribeDBClusterEndpoints for custom endpoint `{identifier}` was refused \
                     ({code}): check the AWS credentials and the permission \
                     rds:DescribeDBClusterEndpoints"
                )))
            }
            Some(code) => DescribeError::Other(Error::topology(format!(
                "DescribeDBClusterEndpoints for custom endpoint `{identifier}` failed ({code})"
            ))),
            None if credentials_provider_failed => {
                DescribeError::Credentials(Error::credentials(format!(
                    "no AWS credentials for DescribeDBClusterEndpoints of custom endpoint \
                     `{identifier}` (the credentials provider failed)"
                )))
            }
            None => DescribeError::Other(Error::topology(format!(
                "DescribeDBClusterEndpoints for custom endpoint `{identifier}` failed ({})",
                source.kind
            ))),
        }
        .with_source(source)
    }

    fn with_source(self, source: SdkFailure) -> Self {
        match self {
            DescribeError::Throttled(err) => DescribeError::Throttled(err.with_source(source)),
            DescribeError::Credentials(err) => DescribeError::Credentials(err.with_source(source)),
            DescribeError::Other(err) => DescribeError::Other(err.with_source(source)),
        }
    }
}

/// AWS error codes that mean "slow down".
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
];

/// AWS error codes that mean the credentials are bad or lack a permission.
const CREDENTIALS_CODES: &[&str] = &[
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "AccessDenied",
    "AccessDeniedException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
];

/// Whether the call failed because the credentials provider could not supply credentials
/// (no credentials configured, an SSO session or a web identity token expired, ...).
///
/// The provider's error type (aws-credential-types' `CredentialsError`) is found in the
/// error chain; the type is named through the `ProvideCredentials` trait the SDK
/// re-exports, so that it needs no dependency of its own.
fn is_credentials_provider_failure(err: &(dyn StdError + 'static)) -> bool {
    fn is_error_of<'a, P, F, T>(_provide: fn(&'a P) -> F, err: &(dyn StdError + 'static)) -> bool
    where
        P: 'a,
        F: Future<Output = Result<Credentials, T>>,
        T: StdError + 'static,
    {
        err.is::<T>()
    }
    let mut current = Some(err);
    while let Some(err) = current {
        if is_error_of(
            <SharedCredentialsProvider as ProvideCredentials>::provide_credentials,
            err,
        ) {
            return true;
        }
        current = err.source();
    }
    false
}

/// The SDK's error for a failed call, without the raw HTTP response.
///
/// For an answer that could not be parsed the SDK keeps the whole response, whose body
/// `Debug` would show. A service error (code and message) is kept as the source, so that
/// callers can downcast it to [`DescribeDBClusterEndpointsError`]; any other failure is
/// kept as the text of its error chain.
#[derive(Debug)]
struct SdkFailure {
    /// What kind of failure it was, for messages without an AWS error code.
    kind: &'static str,
    detail: Detail,
}

#[derive(Debug)]
enum Detail {
    Service(DescribeDBClusterEndpointsError),
    Other(String),
}

impl SdkFailure {
    fn new<R>(err: SdkError<DescribeDBClusterEndpointsError, R>) -> SdkFailure
    where
        R: fmt::Debug,
    {
        let kind = match &err {
            SdkError::ConstructionFailure(_) => "the request could not be built",
            SdkError::TimeoutError(_) => "timed out",
            SdkError::DispatchFailure(_) => "the request could not be sent",
            SdkError::ResponseError(_) => "the response could not be read",
            SdkError::ServiceError(_) => "error response",
            _ => "unknown failure",
        };
        let detail = match err {
            SdkError::ServiceError(service) => Detail::Service(service.into_err()),
            other => {
                let mut text = other.to_string();
                let mut source = StdError::source(&other);
                while let Some(err) = source {
                    text.push_str(": ");
                    text.push_str(&err.to_string());
                    source = err.source();
                }
                Detail::Other(text)
            }
        };
        SdkFailure { kind, detail }
    }
}

impl fmt::Display for SdkFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            // The code is in the message already: show AWS's explanation.
            Detail::Service(err) => match err.message() {
                Some(message) => f.write_str(message),
                None => fmt::Display::fmt(err, f),
            },
            Detail::Other(text) => f.write_str(text),
        }
    }
}

impl StdError for SdkFailure {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.detail {
            Detail::Service(err) => Some(err),
            Detail::Other(_) => None,
        }
    }
}

/// Calls `DescribeDBClusterEndpoints` for the custom endpoint `identifier` (filter
/// `db-cluster-endpoint-type = custom`) and reads its type and members.
///
/// The SDK's own retries are disabled for this call: the caller (the monitor) retries on
/// its own schedule, and backs off when throttled instead of multiplying the calls.
pub(crate) async fn describe(
    client: &Client,
    identifier: &str,
) -> Result<CustomEndpointInfo, DescribeError> {
    let output = client
        .describe_db_cluster_endpoints()
        .db_cluster_endpoint_identifier(identifier)
        .filters(
            Filter::builder()
                .name("db-cluster-endpoint-type")
                .values("custom")
                .build(),
        )
        .customize()
        .config_override(aws_sdk_rds::config::Builder::new().retry_config(RetryConfig::disabled()))
        .send()
        .await
        .map_err(|err| DescribeError::from_sdk(identifier, err))?;
    match output.db_cluster_endpoints() {
        [endpoint] => CustomEndpointInfo::from_endpoint(identifier, endpoint),
        [] => Err(DescribeError::Other(Error::topology(format!(
            "custom endpoint `{identifier}` not found: DescribeDBClusterEndpoints returned no \
             custom endpoint with this identifier"
        )))),
        several => Err(DescribeError::Other(Error::topology(format!(
            "DescribeDBClusterEndpoints returned {} endpoints for the custom endpoint \
             identifier `{identifier}` ({}), one was expected",
            several.len(),
            several
                .iter()
                .map(|e| e.endpoint().unwrap_or("<no address>"))
                .collect::<Vec<_>>()
                .join(", ")
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_rds::error::{ConnectorError, ErrorMetadata};

    fn info(members: Members) -> CustomEndpointInfo {
        CustomEndpointInfo {
            identifier: "analytics".into(),
            cluster_identifier: "orders".into(),
            endpoint_type: CustomEndpointType::Reader,
            members,
        }
    }

    fn ids(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|id| (*id).to_owned()).collect()
    }

    #[test]
    fn static_members_are_an_allowed_list() {
        let info = info(Members::Static(ids(&["instance-2", "instance-3"])));
        assert!(info.allows("instance-2"));
        assert!(info.allows("INSTANCE-3"));
        assert!(!info.allows("instance-1"));
        assert!(!info.allows(""));
    }

    #[test]
    fn excluded_members_are_a_blocked_list() {
        let info = info(Members::Excluded(ids(&["instance-1"])));
        assert!(!info.allows("instance-1"));
        assert!(!info.allows("Instance-1"));
        assert!(info.allows("instance-2"));
        let everyone = CustomEndpointInfo {
            members: Members::Excluded(BTreeSet::new()),
            ..info
        };
        assert!(everyone.allows("instance-1") && everyone.allows("anything"));
    }

    #[test]
    fn members_read_like_the_api() {
        let mut endpoint = DbClusterEndpoint::builder()
            .db_cluster_endpoint_identifier("analytics")
            .db_cluster_identifier("orders")
            .custom_endpoint_type("READER")
            .excluded_members("instance-1")
            .build();
        let read = CustomEndpointInfo::from_endpoint("analytics", &endpoint).unwrap();
        assert_eq!(read, info(Members::Excluded(ids(&["instance-1"]))));
        // Static members win over excluded ones.
        endpoint = DbClusterEndpoint::builder()
            .custom_endpoint_type("any")
            .static_members("instance-3")
            .excluded_members("instance-1")
            .build();
        let read = CustomEndpointInfo::from_endpoint("analytics", &endpoint).unwrap();
        assert_eq!(read.identifier, "analytics");
        assert_eq!(read.endpoint_type, CustomEndpointType::Any);
        assert_eq!(read.members, Members::Static(ids(&["instance-3"])));
        endpoint = DbClusterEndpoint::builder()
            .custom_endpoint_type("WRITER")
            .build();
        let err = CustomEndpointInfo::from_endpoint("analytics", &endpoint).unwrap_err();
        assert!(matches!(err, DescribeError::Other(_)), "{err:?}");
        assert!(err.error().is_topology());
        assert!(
            err.error().to_string().contains("WRITER"),
            "{}",
            err.error()
        );
    }

    fn service_error(code: &str, message: &str) -> DescribeError {
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        DescribeError::from_sdk(
            "analytics",
            SdkError::service_error(DescribeDBClusterEndpointsError::generic(meta), ()),
        )
    }

    #[test]
    fn classifies_aws_error_codes() {
        for code in THROTTLING_CODES {
            let err = service_error(code, "Rate exceeded");
            assert!(
                matches!(err, DescribeError::Throttled(_)),
                "{code}: {err:?}"
            );
            assert!(err.error().is_topology());
        }
        for code in CREDENTIALS_CODES {
            let err = service_error(
                code,
                "The security token included in the request is expired",
            );
            assert!(
                matches!(err, DescribeError::Credentials(_)),
                "{code}: {err:?}"
            );
            assert!(err.error().is_credentials());
        }
        let err = service_error(
            "DBClusterEndpointNotFoundFault",
            "Endpoint analytics not found",
        );
        assert!(matches!(err, DescribeError::Other(_)), "{err:?}");
        let err = err.into_error();
        assert!(err.is_topology());
        assert!(
            format!("{err:#}").starts_with(
                "DescribeDBClusterEndpoints for custom endpoint `analytics` failed \
                 (DBClusterEndpointNotFoundFault): Endpoint analytics not found"
            ),
            "{err:#}"
        );
        // The service error stays reachable for callers that want the details.
        let sdk = err
            .source()
            .and_then(StdError::source)
            .and_then(|e| e.downcast_ref::<DescribeDBClusterEndpointsError>())
            .expect("service error kept");
        assert_eq!(sdk.code(), Some("DBClusterEndpointNotFoundFault"));
    }

    #[test]
    fn names_the_endpoint_and_the_code() {
        let err = service_error(
            "ExpiredToken",
            "The security token included in the request is expired",
        );
        let text = format!("{:#}", err.error());
        assert!(
            text.contains("`analytics`") && text.contains("ExpiredToken"),
            "{text}"
        );
        assert!(
            text.contains("The security token included in the request is expired"),
            "{text}"
        );
    }

    #[test]
    fn a_failing_credentials_provider_is_a_credentials_error() {
        let provider = aws_credential_types::provider::error::CredentialsError::not_loaded(
            "no credentials in the environment",
        );
        let err = DescribeError::from_sdk(
            "analytics",
            SdkError::<DescribeDBClusterEndpointsError, ()>::dispatch_failure(
                ConnectorError::other(Box::new(provider), None),
            ),
        );
        assert!(matches!(err, DescribeError::Credentials(_)), "{err:?}");
        assert!(err.error().is_credentials());

        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = DescribeError::from_sdk(
            "analytics",
            SdkError::<DescribeDBClusterEndpointsError, ()>::dispatch_failure(ConnectorError::io(
                Box::new(io),
            )),
        );
        assert!(matches!(err, DescribeError::Other(_)), "{err:?}");
        let text = format!("{:#}", err.error());
        assert!(
            text.contains("could not be sent") && text.contains("refused"),
            "{text}"
        );
    }
}
