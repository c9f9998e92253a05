//! `RdsStub`: a local stand-in for the RDS API's `DescribeDBClusterEndpoints`, which moto
//! does not implement.
//!
//! It speaks the AWS Query protocol the SDK uses: a form-urlencoded `POST /` with
//! `Action=DescribeDBClusterEndpoints&Version=2014-10-31`, the
//! `DBClusterEndpointIdentifier`, `DBClusterIdentifier` and `Filters.Filter.N.Name` /
//! `Filters.Filter.N.Values.Value.M` parameters, answered with the XML documents of the RDS
//! API reference.

mod http;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aws_sdk_rds::config::{BehaviorVersion, Credentials, Region};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use self::http::{Request, Response};
use super::error::TestingError;

const TARGET: &str = "aurora_pool::testing";

/// The XML namespace of the RDS API.
const XMLNS: &str = "http://rds.amazonaws.com/doc/2014-10-31/";

/// The type of a custom endpoint (`CustomEndpointType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CustomEndpointKind {
    /// `READER`: only reader instances.
    Reader,
    /// `ANY`: readers and the writer.
    Any,
}

impl CustomEndpointKind {
    fn api_name(self) -> &'static str {
        match self {
            CustomEndpointKind::Reader => "READER",
            CustomEndpointKind::Any => "ANY",
        }
    }
}

/// An error [`RdsStub::fail_next`] answers instead of the endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StubFailure {
    /// HTTP 400 `Throttling` ("Rate exceeded"), as when the account's API rate is exceeded.
    Throttling,
    /// HTTP 403 `ExpiredToken` ("The security token included in the request is expired").
    ExpiredToken,
}

/// A custom endpoint the stub knows.
#[derive(Debug, Clone)]
struct StubEndpoint {
    identifier: String,
    cluster: String,
    host: String,
    kind: CustomEndpointKind,
    static_members: Vec<String>,
    excluded_members: Vec<String>,
}

#[derive(Debug, Default)]
struct Data {
    /// By identifier (lower case, as RDS stores it).
    endpoints: BTreeMap<String, StubEndpoint>,
    failures: VecDeque<StubFailure>,
    delay: Duration,
    /// The parameters of the last `DescribeDBClusterEndpoints` call.
    last_describe: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct State {
    data: Mutex<Data>,
    requests: AtomicUsize,
    request_ids: AtomicU64,
}

impl State {
    fn data(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_request_id(&self) -> String {
        let n = self.request_ids.fetch_add(1, Ordering::Relaxed) + 1;
        format!("5f1c0e2a-7b3d-4c11-9e8f-{n:012x}")
    }
}

/// A local HTTP server on 127.0.0.1 that answers `DescribeDBClusterEndpoints` like the RDS
/// API, for the custom endpoints set with [`RdsStub::set_endpoint`].
///
/// Point a real `aws_sdk_rds::Client` at it with [`RdsStub::client`]. Other actions are
/// answered with an `InvalidAction` error. The server stops when the stub is dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), aurora_pool::testing::TestingError> {
/// use aurora_pool::testing::{CustomEndpointKind, RdsStub};
/// let stub = RdsStub::start().await?;
/// stub.set_endpoint(
///     "analytics",
///     "orders",
///     "analytics.cluster-custom-abc123.us-east-1.rds.amazonaws.com",
///     CustomEndpointKind::Reader,
///     &["instance-2", "instance-3"],
///     &[],
/// );
/// let client = stub.client().await;
/// # drop(client); Ok(()) }
/// ```
pub struct RdsStub {
    addr: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

impl RdsStub {
    /// Starts the server on a free port of 127.0.0.1.
    pub async fn start() -> Result<RdsStub, TestingError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| TestingError::new(format!("RDS stub: binding 127.0.0.1:0: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| TestingError::new(format!("RDS stub: local address: {e}")))?;
        let state = Arc::new(State::default());
        let server = tokio::spawn(accept(listener, state.clone()));
        tracing::debug!(target: TARGET, %addr, "RDS stub started");
        Ok(RdsStub {
            addr,
            state,
            server,
        })
    }

    /// The server's URL: `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates or replaces the custom endpoint `identifier` of cluster `cluster`, reachable
    /// at `host`. Non-empty `static_members` make it a static list (and `excluded_members`
    /// is then ignored, as RDS does), else `excluded_members` lists the instances left out.
    pub fn set_endpoint(
        &self,
        identifier: &str,
        cluster: &str,
        host: &str,
        kind: CustomEndpointKind,
        static_members: &[&str],
        excluded_members: &[&str],
    ) {
        let owned = |ids: &[&str]| ids.iter().map(|id| id.to_ascii_lowercase()).collect();
        let endpoint = StubEndpoint {
            identifier: identifier.to_ascii_lowercase(),
            cluster: cluster.to_ascii_lowercase(),
            host: host.to_owned(),
            kind,
            static_members: owned(static_members),
            excluded_members: if static_members.is_empty() {
                owned(excluded_members)
            } else {
                Vec::new()
            },
        };
        self.state
            .data()
            .endpoints
            .insert(endpoint.identifier.clone(), endpoint);
    }

    /// Deletes the custom endpoint `identifier`: it is then answered with
    /// `DBClusterEndpointNotFoundFault`.
    pub fn remove_endpoint(&self, identifier: &str) {
        self.state
            .data()
            .endpoints
            .remove(&identifier.to_ascii_lowercase());
    }

    /// Answers the next `n` `DescribeDBClusterEndpoints` calls with `failure`, after any
    /// failures still pending.
    pub fn fail_next(&self, n: usize, failure: StubFailure) {
        self.state
            .data()
            .failures
            .extend(std::iter::repeat_n(failure, n));
    }

    /// Waits `delay` before answering each `DescribeDBClusterEndpoints` call
    /// (`Duration::ZERO` to answer at once again).
    pub fn set_delay(&self, delay: Duration) {
        self.state.data().delay = delay;
    }

    /// How many `DescribeDBClusterEndpoints` calls were received, failed ones included.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// The parameters of the last `DescribeDBClusterEndpoints` call, in the order sent.
    #[cfg(test)]
    pub(crate) fn last_describe_parameters(&self) -> Vec<(String, String)> {
        self.state.data().last_describe.clone()
    }

    /// A real RDS client talking to the stub: region `us-east-1`, static test credentials.
    pub async fn client(&self) -> aws_sdk_rds::Client {
        let config = aws_sdk_rds::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(self.endpoint())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(
                "AKIDRDSSTUBEXAMPLE",
                "rds-stub-secret",
                None,
                None,
                "rds-stub",
            ))
            .build();
        aws_sdk_rds::Client::from_conf(config)
    }
}

impl fmt::Debug for RdsStub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RdsStub")
            .field("endpoint", &self.endpoint())
            .field("requests", &self.requests())
            .finish_non_exhaustive()
    }
}

impl Drop for RdsStub {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every connection.
        self.server.abort();
    }
}

/// Accepts connections until aborted.
async fn accept(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let state = state.clone();
                    connections.spawn(http::serve(stream, move |request| {
                        let state = state.clone();
                        async move { respond(&state, request).await }
                    }));
                }
                Err(e) => {
                    tracing::debug!(target: TARGET, error = %e, "RDS stub: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The parameters of a Query request: the query string, then a form-urlencoded body.
fn parameters(request: &Request) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = url::form_urlencoded::parse(request.query().as_bytes())
        .into_owned()
        .collect();
    let form = request
        .header("content-type")
        .is_none_or(|t| t.starts_with("application/x-www-form-urlencoded"));
    if form {
        params.extend(url::form_urlencoded::parse(&request.body).into_owned());
    }
    params
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Answers one request.
async fn respond(state: &State, request: Request) -> Response {
    let request_id = state.next_request_id();
    if !matches!(request.method.as_str(), "POST" | "GET")
        || request.target.split('?').next() != Some("/")
    {
        return error(
            405,
            "Sender",
            "MethodNotAllowed",
            &format!(
                "{} {} is not supported: send POST /",
                request.method, request.target
            ),
            request_id,
        );
    }
    let params = parameters(&request);
    if request.header("authorization").is_none() {
        return error(
            403,
            "Sender",
            "MissingAuthenticationToken",
            "Request is missing Authentication Token",
            request_id,
        );
    }
    match param(&params, "Action") {
        Some("DescribeDBClusterEndpoints") => describe(state, params, request_id).await,
        Some(action) => error(
            400,
            "Sender",
            "InvalidAction",
            &format!("The action {action} is not valid for this web service."),
            request_id,
        ),
        None => error(
            400,
            "Sender",
            "MissingAction",
            "The request must contain the parameter Action.",
            request_id,
        ),
    }
}

/// Answers `DescribeDBClusterEndpoints`.
async fn describe(state: &State, params: Vec<(String, String)>, request_id: String) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    tracing::debug!(target: TARGET, ?params, "RDS stub: DescribeDBClusterEndpoints");
    let delay = state.data().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut data = state.data();
    data.last_describe = params.clone();
    if let Some(failure) = data.failures.pop_front() {
        return match failure {
            StubFailure::Throttling => {
                error(400, "Sender", "Throttling", "Rate exceeded", request_id)
            }
            StubFailure::ExpiredToken => error(
                403,
                "Sender",
                "ExpiredToken",
                "The security token included in the request is expired",
                request_id,
            ),
        };
    }
    let filters = match filters(&params) {
        Ok(filters) => filters,
        Err(message) => return error(400, "Sender", "InvalidParameterValue", &message, request_id),
    };
    let wanted_id = param(&params, "DBClusterEndpointIdentifier").map(str::to_ascii_lowercase);
    let wanted_cluster = param(&params, "DBClusterIdentifier").map(str::to_ascii_lowercase);
    if let Some(id) = &wanted_id
        && !data.endpoints.contains_key(id)
    {
        return error(
            400,
            "Sender",
            "DBClusterEndpointNotFoundFault",
            &format!("DBClusterEndpoint {id} not found."),
            request_id,
        );
    }
    if let Some(cluster) = &wanted_cluster
        && !data.endpoints.values().any(|e| &e.cluster == cluster)
    {
        return error(
            404,
            "Sender",
            "DBClusterNotFoundFault",
            &format!("DBCluster {cluster} not found."),
            request_id,
        );
    }
    let matching: Vec<&StubEndpoint> = data
        .endpoints
        .values()
        .filter(|e| wanted_id.as_ref().is_none_or(|id| &e.identifier == id))
        .filter(|e| wanted_cluster.as_ref().is_none_or(|c| &e.cluster == c))
        .filter(|e| {
            filters
                .iter()
                .all(|(name, values)| filter_matches(e, name, values))
        })
        .collect();
    Response {
        status: 200,
        content_type: "text/xml",
        body: describe_document(&matching, &request_id),
        request_id: Some(request_id),
    }
}

/// `Filters.Filter.N.Name` and `Filters.Filter.N.Values.Value.M`, by N.
fn filters(params: &[(String, String)]) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut by_index: BTreeMap<u32, (Option<String>, Vec<String>)> = BTreeMap::new();
    for (name, value) in params {
        let Some(rest) = name.strip_prefix("Filters.Filter.") else {
            continue;
        };
        let (index, field) = rest
            .split_once('.')
            .ok_or_else(|| format!("Invalid filter parameter {name}"))?;
        let index: u32 = index
            .parse()
            .map_err(|_| format!("Invalid filter parameter {name}"))?;
        let entry = by_index.entry(index).or_default();
        if field == "Name" {
            entry.0 = Some(value.clone());
        } else if field.starts_with("Values.Value.") {
            entry.1.push(value.to_ascii_lowercase());
        } else {
            return Err(format!("Invalid filter parameter {name}"));
        }
    }
    by_index
        .into_values()
        .map(|(name, values)| match name {
            Some(name) => Ok((name, values)),
            None => Err("A filter has no Name".to_owned()),
        })
        .collect()
}

fn filter_matches(endpoint: &StubEndpoint, name: &str, values: &[String]) -> bool {
    let has = |v: &str| values.iter().any(|value| value == v);
    match name {
        // The stub holds custom endpoints only.
        "db-cluster-endpoint-type" => has("custom"),
        "db-cluster-endpoint-custom-type" => has(&endpoint.kind.api_name().to_ascii_lowercase()),
        "db-cluster-endpoint-id" => has(&endpoint.identifier),
        "db-cluster-endpoint-status" => has("available"),
        // Rejected by `describe` before.
        _ => false,
    }
}

/// The `DescribeDBClusterEndpointsResponse` document.
fn describe_document(endpoints: &[&StubEndpoint], request_id: &str) -> String {
    let mut xml = format!(
        "<DescribeDBClusterEndpointsResponse xmlns=\"{XMLNS}\">\n  \
         <DescribeDBClusterEndpointsResult>\n    <DBClusterEndpoints>\n"
    );
    for e in endpoints {
        let members = |ids: &[String]| {
            if ids.is_empty() {
                return String::new();
            }
            let mut out = String::from("\n");
            for id in ids {
                let _ = writeln!(out, "          <member>{}</member>", escape(id));
            }
            out.push_str("        ");
            out
        };
        let _ = write!(
            xml,
            "      <DBClusterEndpointList>\n        \
             <DBClusterEndpointIdentifier>{id}</DBClusterEndpointIdentifier>\n        \
             <DBClusterIdentifier>{cluster}</DBClusterIdentifier>\n        \
             <DBClusterEndpointResourceIdentifier>{resource}</DBClusterEndpointResourceIdentifier>\n        \
             <Endpoint>{host}</Endpoint>\n        \
             <Status>available</Status>\n        \
             <EndpointType>CUSTOM</EndpointType>\n        \
             <CustomEndpointType>{kind}</CustomEndpointType>\n        \
             <StaticMembers>{static_members}</StaticMembers>\n        \
             <ExcludedMembers>{excluded_members}</ExcludedMembers>\n        \
             <DBClusterEndpointArn>arn:aws:rds:us-east-1:123456789012:cluster-endpoint:{id}</DBClusterEndpointArn>\n      \
             </DBClusterEndpointList>\n",
            id = escape(&e.identifier),
            cluster = escape(&e.cluster),
            resource = resource_identifier(&e.identifier),
            host = escape(&e.host),
            kind = e.kind.api_name(),
            static_members = members(&e.static_members),
            excluded_members = members(&e.excluded_members),
        );
    }
    let _ = write!(
        xml,
        "    </DBClusterEndpoints>\n  </DescribeDBClusterEndpointsResult>\n  \
         <ResponseMetadata>\n    <RequestId>{request_id}</RequestId>\n  </ResponseMetadata>\n\
         </DescribeDBClusterEndpointsResponse>\n"
    );
    xml
}

/// An AWS Query error document.
fn error(status: u16, kind: &str, code: &str, message: &str, request_id: String) -> Response {
    let body = format!(
        "<ErrorResponse xmlns=\"{XMLNS}\">\n  <Error>\n    <Type>{kind}</Type>\n    \
         <Code>{code}</Code>\n    <Message>{}</Message>\n  </Error>\n  \
         <RequestId>{request_id}</RequestId>\n</ErrorResponse>\n",
        escape(message)
    );
    Response {
        status,
        content_type: "text/xml",
        request_id: Some(request_id),
        body,
    }
}

/// A stable `cluster-endpoint-<26 characters>` for an identifier, like RDS's.
fn resource_identifier(identifier: &str) -> String {
    // FNV-1a, spelled in RDS's alphabet (A-Z, 2-7).
    let mut hash: u128 = 0x6c62272e07bb014262b821756295c58d;
    for byte in identifier.bytes() {
        hash ^= u128::from(byte);
        hash = hash.wrapping_mul(0x0000000001000000000000000000013b);
    }
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let id: String = (0..26)
        .map(|i| char::from(ALPHABET[((hash >> (i * 5)) & 31) as usize]))
        .collect();
    format!("cluster-endpoint-{id}")
}

/// Escapes text for XML content.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const HOST: &str = "analytics.cluster-custom-abc123.us-east-1.rds.amazonaws.com";

    /// A raw client connection; bytes after one response stay for the next.
    struct Conn {
        stream: TcpStream,
        buf: Vec<u8>,
    }

    impl Conn {
        async fn open(stub: &RdsStub) -> Conn {
            Conn {
                stream: TcpStream::connect(stub.addr).await.unwrap(),
                buf: Vec::new(),
            }
        }

        /// Sends `request` (may be empty) and reads one response: status and body.
        async fn exchange(&mut self, request: &str) -> (u16, String) {
            self.stream.write_all(request.as_bytes()).await.unwrap();
            let mut chunk = [0u8; 4096];
            loop {
                if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|l| l.trim().parse().ok())
                        .unwrap_or(0);
                    if self.buf.len() >= end + 4 + length {
                        let status = head[9..12].parse().unwrap();
                        let body = String::from_utf8_lossy(&self.buf[end + 4..end + 4 + length])
                            .into_owned();
                        self.buf.drain(..end + 4 + length);
                        return (status, body);
                    }
                }
                let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk))
                    .await
                    .expect("answer in time")
                    .unwrap();
                assert!(n > 0, "connection closed early");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }
    }

    fn post(body: &str) -> String {
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nAuthorization: AWS4-HMAC-SHA256 test\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn keep_alive_pipelining_and_errors() {
        let stub = RdsStub::start().await.unwrap();
        stub.set_endpoint(
            "Analytics",
            "orders",
            HOST,
            CustomEndpointKind::Reader,
            &["instance-2"],
            &["ignored"],
        );
        let mut conn = Conn::open(&stub).await;
        let describe = "Action=DescribeDBClusterEndpoints&Version=2014-10-31&DBClusterEndpointIdentifier=analytics";
        // Two requests written at once, answered in order on one connection.
        let both = format!(
            "{}{}",
            post(describe),
            post("Action=DescribeDBClusters&Version=2014-10-31")
        );
        let (status, body) = conn.exchange(&both).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("<StaticMembers>\n          <member>instance-2</member>"),
            "{body}"
        );
        assert!(
            body.contains("<ExcludedMembers></ExcludedMembers>"),
            "{body}"
        );
        assert!(
            body.contains("<CustomEndpointType>READER</CustomEndpointType>"),
            "{body}"
        );
        let (status, body) = conn.exchange("").await;
        assert_eq!(status, 400);
        assert!(body.contains("<Code>InvalidAction</Code>"), "{body}");
        let (status, body) = conn
            .exchange(&post(
                "Action=DescribeDBClusterEndpoints&DBClusterEndpointIdentifier=nope",
            ))
            .await;
        assert_eq!(status, 400);
        assert!(
            body.contains("<Code>DBClusterEndpointNotFoundFault</Code>"),
            "{body}"
        );
        assert_eq!(stub.requests(), 2);
        // Unsigned requests are refused.
        let (status, body) = conn
            .exchange("POST / HTTP/1.1\r\nContent-Length: 6\r\n\r\nAction")
            .await;
        assert_eq!(status, 403, "{body}");
        // A body over the limit is refused and the connection closed.
        let (status, _) = conn
            .exchange("POST / HTTP/1.1\r\nAuthorization: x\r\nContent-Length: 10000000\r\n\r\n")
            .await;
        assert_eq!(status, 413);
        let mut rest = Vec::new();
        let n =
            tokio::time::timeout(Duration::from_secs(5), conn.stream.read_to_end(&mut rest)).await;
        assert!(matches!(n, Ok(Ok(0))), "{n:?}");
    }

    #[tokio::test]
    async fn dropping_the_stub_stops_the_server() {
        let stub = RdsStub::start().await.unwrap();
        let addr = stub.addr;
        let mut open = TcpStream::connect(addr).await.unwrap();
        drop(stub);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), open.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "connection closed: {read:?}"
        );
    }

    #[test]
    fn resource_identifiers_look_like_rds_ones() {
        let id = resource_identifier("analytics");
        assert_eq!(id.len(), "cluster-endpoint-".len() + 26);
        assert_eq!(id, resource_identifier("analytics"));
        assert_ne!(id, resource_identifier("analytics2"));
        assert_eq!(escape("a<b&\"c\""), "a&lt;b&amp;&quot;c&quot;");
    }
}
