//! `AuroraLayer` with `oneshot`: the role policy, the read-your-writes window and the
//! failover-to-503 mapping.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use aurora_pool::Role;
use aurora_pool::testing::LocalCluster;
use aurora_pool::tower::{AuroraLayer, Db, FailoverResponse, ReadYourWrites, SessionMarker};
use axum::http::header::{COOKIE, RETRY_AFTER, SET_COOKIE};
use axum::http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode, Uri};
use support::served_by;
use tower::{Layer, ServiceExt, service_fn};

/// Reports the role and the instance its reads reach; `POST /write` writes first, and
/// `/failover` answers like a handler that hit a failover.
async fn handler(request: Request<String>) -> Result<Response<String>, Infallible> {
    let db = request
        .extensions()
        .get::<Db>()
        .cloned()
        .expect("the layer adds Db");
    if request.uri().path() == "/failover" {
        let mut response = Response::new("failover".to_owned());
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        response.extensions_mut().insert(FailoverResponse);
        return Ok(response);
    }
    if request.uri().path() == "/boom" {
        let mut response = Response::new("boom".to_owned());
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return Ok(response);
    }
    if request.uri().path() == "/write" {
        sqlx::query("SELECT 1")
            .execute(&db.writer())
            .await
            .expect("write");
    }
    let served = served_by(&db.reader()).await;
    let role = match db.role() {
        Role::Writer => "writer",
        Role::Reader => "reader",
    };
    Ok(Response::builder()
        .header("x-role", role)
        .header("x-served-by", served)
        .header("x-sticky", db.is_sticky().to_string())
        .body(String::new())
        .expect("response"))
}

fn request(method: Method, path: &str, headers: &[(HeaderName, &str)]) -> Request<String> {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(name, *value);
    }
    builder.body(String::new()).expect("request")
}

fn header<'a>(response: &'a Response<String>, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii"))
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_follow_the_method_or_the_policy() {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let pool = support::connect(&cluster, "tower-roles", "").await;
    let service = AuroraLayer::new(pool.clone()).layer(service_fn(handler));

    for (method, role, served) in [
        (Method::GET, "reader", "instance-2"),
        (Method::HEAD, "reader", "instance-2"),
        (Method::OPTIONS, "reader", "instance-2"),
        (Method::POST, "writer", "instance-1"),
        (Method::PUT, "writer", "instance-1"),
        (Method::DELETE, "writer", "instance-1"),
    ] {
        let response = service
            .clone()
            .oneshot(request(method.clone(), "/", &[]))
            .await
            .unwrap();
        assert_eq!(header(&response, "x-role"), role, "{method}");
        assert_eq!(header(&response, "x-served-by"), served, "{method}");
    }

    // A fixed role for one route, and a predicate over the request.
    let pinned = AuroraLayer::new(pool.clone())
        .role_policy(Role::Writer)
        .layer(service_fn(handler));
    let response = pinned
        .oneshot(request(Method::GET, "/", &[]))
        .await
        .unwrap();
    assert_eq!(header(&response, "x-served-by"), "instance-1");
    let by_path = AuroraLayer::new(pool)
        .role_policy(|_: &Method, uri: &Uri, _: &HeaderMap| {
            if uri.path().starts_with("/reports") {
                Role::Reader
            } else {
                Role::Writer
            }
        })
        .layer(service_fn(handler));
    let response = by_path
        .clone()
        .oneshot(request(Method::POST, "/reports/monthly", &[]))
        .await
        .unwrap();
    assert_eq!(header(&response, "x-role"), "reader");
    let response = by_path
        .oneshot(request(Method::GET, "/orders", &[]))
        .await
        .unwrap();
    assert_eq!(header(&response, "x-role"), "writer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stick_to_the_writer_for_the_window_after_a_write() {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    let pool = support::connect(&cluster, "tower-sticky", "").await;
    let window = Duration::from_millis(600);
    let service = AuroraLayer::new(pool.clone())
        .read_your_writes(Some(ReadYourWrites {
            window,
            ..ReadYourWrites::default()
        }))
        .layer(service_fn(handler));

    // A read marks nothing.
    let response = service
        .clone()
        .oneshot(request(Method::GET, "/", &[]))
        .await
        .unwrap();
    assert!(response.headers().get(SET_COOKIE).is_none());

    let response = service
        .clone()
        .oneshot(request(Method::POST, "/write", &[]))
        .await
        .unwrap();
    let set_cookie = header(&response, SET_COOKIE.as_str()).to_owned();
    for attribute in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(
            set_cookie.split("; ").any(|a| a == attribute),
            "{attribute} missing: {set_cookie}"
        );
    }
    let cookie = set_cookie.split(';').next().expect("cookie").to_owned();
    assert!(cookie.starts_with("aurora_pool_rw="), "{cookie}");
    // Among other cookies, in any order.
    let among = format!("theme=dark; {cookie}; session=abc");

    let response = service
        .clone()
        .oneshot(request(Method::GET, "/", &[(COOKIE, &among)]))
        .await
        .unwrap();
    assert_eq!(header(&response, "x-role"), "writer");
    assert_eq!(header(&response, "x-sticky"), "true");
    assert_eq!(header(&response, "x-served-by"), "instance-1");
    // Another session is not affected.
    let response = service
        .clone()
        .oneshot(request(Method::GET, "/", &[]))
        .await
        .unwrap();
    assert_eq!(header(&response, "x-served-by"), "instance-2");

    tokio::time::sleep(window + Duration::from_millis(100)).await;
    let response = service
        .clone()
        .oneshot(request(Method::GET, "/", &[(COOKIE, &cookie)]))
        .await
        .unwrap();
    assert_eq!(header(&response, "x-role"), "reader", "the window is over");

    // Plain-HTTP development: the cookie without Secure, on request.
    let plain = AuroraLayer::new(pool.clone())
        .read_your_writes(Some(ReadYourWrites {
            secure: false,
            ..ReadYourWrites::default()
        }))
        .layer(service_fn(handler));
    let response = plain
        .oneshot(request(Method::POST, "/write", &[]))
        .await
        .unwrap();
    let set_cookie = header(&response, SET_COOKIE.as_str());
    assert!(!set_cookie.contains("Secure"), "{set_cookie}");
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");

    // The same with a header instead of a cookie, and with read-your-writes off.
    let marker = HeaderName::from_static("x-read-your-writes");
    let by_header = AuroraLayer::new(pool.clone())
        .read_your_writes(Some(ReadYourWrites {
            marker: SessionMarker::Header(marker.clone()),
            window,
            secure: true,
        }))
        .layer(service_fn(handler));
    let response = by_header
        .clone()
        .oneshot(request(Method::POST, "/write", &[]))
        .await
        .unwrap();
    let mark = header(&response, marker.as_str()).to_owned();
    assert!(!mark.is_empty());
    let response = by_header
        .oneshot(request(Method::GET, "/", &[(marker, &mark)]))
        .await
        .unwrap();
    assert_eq!(header(&response, "x-role"), "writer");
    let off = AuroraLayer::new(pool)
        .read_your_writes(None)
        .layer(service_fn(handler));
    let response = off
        .oneshot(request(Method::POST, "/write", &[]))
        .await
        .unwrap();
    assert!(response.headers().get(SET_COOKIE).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_responses_become_503_only_when_asked() {
    let cluster = LocalCluster::start(1).await.expect("cluster");
    let pool = support::connect(&cluster, "tower-503", "").await;
    let mapped = AuroraLayer::new(pool.clone())
        .failover_to_503(Duration::from_millis(1500))
        .layer(service_fn(handler));
    let response = mapped
        .clone()
        .oneshot(request(Method::GET, "/failover", &[]))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&response, RETRY_AFTER.as_str()), "2");
    assert_eq!(response.body(), "failover");
    // Other errors pass through untouched.
    let response = mapped
        .oneshot(request(Method::GET, "/boom", &[]))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(response.headers().get(RETRY_AFTER).is_none());
    // Without the mapping, nothing changes.
    let plain = AuroraLayer::new(pool).layer(service_fn(handler));
    let response = plain
        .oneshot(request(Method::GET, "/failover", &[]))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
}
