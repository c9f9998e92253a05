//! A minimal HTTP/1.1 client and server for the tests of axum services on loopback.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer of the service.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 client: one request per connection.
pub async fn send(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    cookie: Option<&str>,
) -> Reply {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the service");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(cookie) = cookie {
        request.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("the service answers")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a full response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// One answer a client got, and when.
pub struct Answered {
    pub status: u16,
    pub retry_after: bool,
    pub at: Instant,
}

/// `clients` tasks sending `POST path` to `addr` in a loop until `stop` says so; no timeout
/// of their own beyond `send`'s hang detector.
pub fn post_in_a_loop(
    addr: std::net::SocketAddr,
    path: &'static str,
    clients: usize,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<Vec<Answered>>> {
    (0..clients)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !*stop.borrow() {
                    let reply = send(addr, "POST", path, None, None).await;
                    answers.push(Answered {
                        status: reply.status,
                        retry_after: reply.header("retry-after").is_some(),
                        at: Instant::now(),
                    });
                    if reply.status != 200 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                answers
            })
        })
        .collect()
}

/// Serves `app` on a loopback port of its own.
pub async fn serve(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(axum::serve(listener, app).into_future());
    addr
}

/// Callers started by a scenario: each returns the answers it got.
pub type Callers = Vec<tokio::task::JoinHandle<Vec<Answered>>>;

/// What both flavours' axum services must show across a writer crash: `start` starts the
/// callers of a pool with default settings and of one tuned to wait 1 s (`impatient`), in a
/// loop until the receiver says stop; instance-1 crashes a second later and instance-2 is
/// promoted 3 s after that. Every answer is `200` or `503` with `Retry-After`, requests in
/// flight on the crashed writer failed, the impatient pool timed out (a `503` too), every
/// client wrote after the promotion, and the `503`s were logged with their kinds and no
/// secret (with [`super::capture_logs`] on).
pub async fn writes_through_a_crash(
    cluster: &aurora_pool::testing::LocalCluster,
    start: impl FnOnce(tokio::sync::watch::Receiver<bool>) -> (Callers, Callers),
) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (clients, impatient_clients) = start(stopped);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.crash("instance-1").await.expect("crash");
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    let promoted = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.send(true).expect("stop");

    let mut answers = Vec::new();
    for client in clients {
        answers.push(client.await.expect("client"));
    }
    let mut impatient_answers = Vec::new();
    for client in impatient_clients {
        impatient_answers.extend(client.await.expect("client"));
    }
    let unavailable = answers.iter().flatten().filter(|a| a.status == 503).count();
    eprintln!(
        "{} answers, {unavailable} answered 503; impatient pool: {} answers, {} answered 503",
        answers.iter().flatten().count(),
        impatient_answers.len(),
        impatient_answers.iter().filter(|a| a.status == 503).count()
    );
    for answer in answers.iter().flatten().chain(&impatient_answers) {
        assert!(
            answer.status == 200 || (answer.status == 503 && answer.retry_after),
            "answered {} (Retry-After: {}) during the failover",
            answer.status,
            answer.retry_after
        );
    }
    assert!(
        unavailable > 0,
        "no request in flight on the crashed writer failed: the test saw no failover"
    );
    assert!(
        impatient_answers.iter().any(|a| a.status == 503),
        "no pool timeout during the failover"
    );
    for (i, client) in answers.iter().enumerate() {
        assert!(
            client.iter().any(|a| a.status == 200 && a.at > promoted),
            "client {i} never wrote after the promotion"
        );
    }
    let logs = super::captured_logs();
    assert!(
        logs.contains("answered 503") && logs.contains("kind=failover"),
        "the 503s were not logged as failovers"
    );
    assert!(
        logs.contains("kind=timeout"),
        "the pool timeouts were not logged"
    );
    assert!(
        !logs.contains(cluster.password()),
        "a secret reached the logs"
    );
}

/// `POST /fail` on `addr`, a route failing with an error that is no failover, answers `500`
/// without `Retry-After`, logged with its kind (with [`super::capture_logs`] on).
pub async fn no_failover_is_a_500(addr: std::net::SocketAddr) {
    let failed = send(addr, "POST", "/fail", None, None).await;
    assert_eq!(failed.status, 500, "{}", failed.body);
    assert!(failed.header("retry-after").is_none());
    assert!(
        super::captured_logs().contains("kind=driver"),
        "the 500 was not logged with its kind"
    );
}
