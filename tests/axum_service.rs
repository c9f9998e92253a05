//! The example service over real HTTP on loopback while the writer fails over: no 5xx but
//! the documented 503 with Retry-After, and every read right after a write sees it.

mod support;

#[path = "../examples/axum_service.rs"]
#[allow(dead_code)]
mod axum_service;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aurora_pool::testing::LocalCluster;
use support::AGGRESSIVE;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 client: one request per connection.
async fn send(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_rides_through_a_failover_over_http() {
    let cluster = Arc::new(LocalCluster::start(3).await.expect("cluster"));
    let pool = support::connect(
        &cluster,
        "axum-service",
        &format!("{AGGRESSIVE}&failover_timeout_ms=3000"),
    )
    .await;
    axum_service::prepare(&pool).await.expect("table");
    support::replicated(&cluster, "items").await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, axum_service::app(pool.clone()))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .into_future(),
    );

    let started = Instant::now();
    let mut failover = None;
    let (mut created, mut unavailable, mut read_back) = (0, 0, 0);
    let mut created_after_failover = 0;
    let mut slowest = Duration::ZERO;
    for i in 0.. {
        if created_after_failover >= 10 || started.elapsed() > Duration::from_secs(40) {
            break;
        }
        if i == 10 {
            let cluster = cluster.clone();
            failover = Some(tokio::spawn(async move {
                cluster.failover("instance-2", None).await
            }));
        }
        let name = format!("item-{i}");
        let sent = Instant::now();
        let reply = send(
            addr,
            "POST",
            "/items",
            Some(&format!(r#"{{"name":"{name}"}}"#)),
            None,
        )
        .await;
        // A liveness bound, far above the failover itself (0.3 s with these settings): the
        // request in flight when the writer crashed must not wait out sqlx's connect retries
        // against the dead writer.
        slowest = slowest.max(sent.elapsed());
        match reply.status {
            201 => created += 1,
            503 => {
                assert!(
                    reply.header("retry-after").is_some(),
                    "503 without Retry-After"
                );
                unavailable += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            other => panic!("POST answered {other}: {}", reply.body),
        }
        if failover.as_ref().is_some_and(|f| f.is_finished()) {
            created_after_failover += 1;
        }
        let cookie = reply
            .header("set-cookie")
            .and_then(|c| c.split(';').next())
            .expect("session cookie")
            .to_owned();
        let listing = send(addr, "GET", "/items", None, Some(&cookie)).await;
        match listing.status {
            200 => {
                let items: Vec<axum_service::Item> =
                    serde_json::from_str(&listing.body).expect("json");
                assert!(
                    items.iter().any(|item| item.name == name),
                    "{name} missing right after its write"
                );
                read_back += 1;
            }
            503 => {
                assert!(
                    listing.header("retry-after").is_some(),
                    "503 without Retry-After"
                );
                unavailable += 1;
            }
            other => panic!("GET answered {other}: {}", listing.body),
        }
    }
    failover
        .expect("failover started")
        .await
        .expect("task")
        .expect("failover");
    eprintln!(
        "{created} created, {unavailable} answered 503, {read_back} read back, slowest POST {slowest:?}"
    );
    assert!(
        slowest < Duration::from_secs(5),
        "a request hung for {slowest:?} across the failover"
    );
    assert!(
        created_after_failover >= 10,
        "writes did not resume: {created} created, {unavailable} unavailable"
    );
    assert!(
        read_back >= created - unavailable,
        "{read_back} of {created} writes read back"
    );
    assert_eq!(pool.topology().writer().id(), "instance-2");

    // The handler whose state kept the writer's pool from startup writes on the new writer.
    let mut recorded = 0;
    for _ in 0..50 {
        if send(addr, "POST", "/events", None, None).await.status == 200 {
            recorded += 1;
            if recorded == 5 {
                break;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(
        recorded, 5,
        "the pool kept in the app state did not survive the failover"
    );

    // Reads without a session go to the readers and see the items too (eventually: a
    // reader the local failover had to rebuild may still be coming back).
    let mut status = 0;
    for _ in 0..50 {
        status = send(addr, "GET", "/items", None, None).await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    let _ = stop.send(());
    server.await.expect("server task").expect("server");
}
