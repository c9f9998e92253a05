//! The HTTP/1.1 side of [`RdsStub`](super::RdsStub): requests with `Content-Length`
//! bodies, several per connection (keep-alive), with bounded sizes.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest request line plus headers accepted.
const MAX_HEAD: usize = 16 * 1024;
/// The largest body accepted.
const MAX_BODY: usize = 64 * 1024;
/// A connection without a new request for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One parsed request.
#[derive(Debug)]
pub(super) struct Request {
    /// `POST`, `GET`, ...
    pub(super) method: String,
    /// The request target: path and query string.
    pub(super) target: String,
    /// Header names in lower case, values trimmed.
    headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes).
    pub(super) body: Vec<u8>,
    /// Whether the connection stays open after the response.
    keep_alive: bool,
}

impl Request {
    /// The first header named `name` (lower case).
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The query string of the target, if any.
    pub(super) fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, query)| query)
    }
}

/// A response to write.
#[derive(Debug)]
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) content_type: &'static str,
    /// Sent as `x-amzn-RequestId`.
    pub(super) request_id: Option<String>,
    pub(super) body: String,
}

impl Response {
    /// A plain-text response for HTTP-level errors.
    fn plain(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain",
            request_id: None,
            body: format!("{body}\n"),
        }
    }
}

/// Why no request could be read.
enum ReadError {
    /// The client closed the connection (or went idle) between requests.
    Closed,
    /// A malformed or oversized request: answer with this status and close.
    Bad(u16, &'static str),
}

/// Serves the requests of one connection with `handle`, until the client closes it, asks to
/// close it, goes idle, or sends a bad request.
pub(super) async fn serve<F, Fut>(mut stream: TcpStream, handle: F)
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let mut buf = Vec::with_capacity(4096);
    loop {
        let request = match read_request(&mut stream, &mut buf).await {
            Ok(request) => request,
            Err(ReadError::Closed) => return,
            Err(ReadError::Bad(status, why)) => {
                let _ = write_response(&mut stream, &Response::plain(status, why), false).await;
                return;
            }
        };
        let keep_alive = request.keep_alive;
        let response = handle(request).await;
        if write_response(&mut stream, &response, keep_alive)
            .await
            .is_err()
            || !keep_alive
        {
            return;
        }
    }
}

/// Reads more bytes into `buf`; `false` at the end of the stream or after the idle timeout.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

/// Reads one request; bytes after it stay in `buf` for the next one.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Request, ReadError> {
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::Bad(431, "request head too large"));
        }
        if !fill(stream, buf).await {
            return if buf.is_empty() {
                Err(ReadError::Closed)
            } else {
                Err(ReadError::Bad(400, "truncated request head"))
            };
        }
    };
    if head_end > MAX_HEAD {
        return Err(ReadError::Bad(431, "request head too large"));
    }
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| ReadError::Bad(400, "request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version), None) = (
        request_line.next(),
        request_line.next(),
        request_line.next(),
        request_line.next(),
    ) else {
        return Err(ReadError::Bad(400, "malformed request line"));
    };
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(ReadError::Bad(505, "HTTP version not supported")),
    };
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or(ReadError::Bad(400, "malformed header"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let mut request = Request {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
        body: Vec::new(),
        keep_alive: http11,
    };
    if let Some(connection) = request.header("connection") {
        let has = |token: &str| {
            connection
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        if has("close") {
            request.keep_alive = false;
        } else if has("keep-alive") {
            request.keep_alive = true;
        }
    }
    if request.header("transfer-encoding").is_some() {
        return Err(ReadError::Bad(
            501,
            "Transfer-Encoding is not supported; send Content-Length",
        ));
    }
    let mut length = None;
    for (name, value) in &request.headers {
        if name == "content-length" {
            let parsed = value
                .parse::<usize>()
                .map_err(|_| ReadError::Bad(400, "invalid Content-Length"))?;
            if length.is_some_and(|l| l != parsed) {
                return Err(ReadError::Bad(400, "conflicting Content-Length headers"));
            }
            length = Some(parsed);
        }
    }
    let length = length.unwrap_or(0);
    if length > MAX_BODY {
        return Err(ReadError::Bad(413, "request body too large"));
    }
    let body_start = head_end + 4;
    let body_end = body_start + length;
    if buf.len() < body_end
        && request
            .header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| ReadError::Closed)?;
    }
    while buf.len() < body_end {
        if !fill(stream, buf).await {
            return Err(ReadError::Closed);
        }
    }
    request.body = buf[body_start..body_end].to_vec();
    buf.drain(..body_end);
    Ok(request)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

async fn write_response(
    stream: &mut TcpStream,
    response: &Response,
    keep_alive: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len(),
        if keep_alive { "keep-alive" } else { "close" },
    );
    if let Some(id) = &response.request_id {
        out.push_str(&format!("x-amzn-RequestId: {id}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&response.body);
    stream.write_all(out.as_bytes()).await?;
    stream.flush().await
}
