//! The layer and its settings.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue};
use tower_layer::Layer;

use super::policy::{RolePolicy, SafeMethodsRead, SharedPolicy};
use super::pool::{Classifier, DefaultPool, LayerPool};
use super::service::AuroraService;

/// Where the layer keeps the read-your-writes mark of a client session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionMarker {
    /// A cookie (`Secure` unless [`ReadYourWrites::secure`] is off, `HttpOnly`,
    /// `SameSite=Lax`, `Path=/`) with this name, for browsers.
    Cookie(String),
    /// A response header with this name; API clients echo it back on their next requests.
    Header(HeaderName),
}

/// Read-your-writes: after a request that wrote, the same session reads from the writer for
/// `window`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadYourWrites {
    /// Where the mark lives (default: the cookie `aurora_pool_rw`).
    pub marker: SessionMarker,
    /// How long reads stick to the writer after a write (default 1 s).
    pub window: Duration,
    /// Whether the cookie is `Secure` (default: yes), so that browsers send it over HTTPS
    /// only. Turn it off for plain-HTTP development, where a `Secure` cookie is never sent
    /// back (reads then do not stick to the writer). The header marker ignores it.
    pub secure: bool,
}

impl Default for ReadYourWrites {
    fn default() -> Self {
        ReadYourWrites {
            marker: SessionMarker::Cookie("aurora_pool_rw".to_owned()),
            window: Duration::from_secs(1),
            secure: true,
        }
    }
}

impl ReadYourWrites {
    /// Whether the request's session wrote within the window. The mark holds the expiry
    /// (Unix milliseconds); one further in the future than `window` is ignored, so a client
    /// cannot pin itself to the writer.
    pub(crate) fn is_sticky(&self, headers: &HeaderMap, now_ms: u64) -> bool {
        let expiry = match &self.marker {
            SessionMarker::Header(name) => headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok()),
            SessionMarker::Cookie(name) => headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(cookie::Cookie::split_parse)
                .filter_map(Result::ok)
                .find(|cookie| cookie.name() == name)
                .and_then(|cookie| cookie.value().parse::<u64>().ok()),
        };
        expiry.is_some_and(|expiry| now_ms < expiry && expiry <= now_ms + window_ms(self.window))
    }

    /// Marks the response's session as having written now.
    pub(crate) fn mark(&self, headers: &mut HeaderMap, now_ms: u64) {
        let expiry = now_ms + window_ms(self.window);
        let (name, value) = match &self.marker {
            SessionMarker::Header(name) => (name.clone(), expiry.to_string()),
            SessionMarker::Cookie(name) => {
                let max_age = i64::try_from(self.window.as_secs().max(1)).unwrap_or(i64::MAX);
                let cookie = cookie::Cookie::build((name.clone(), expiry.to_string()))
                    .path("/")
                    .max_age(cookie::time::Duration::seconds(max_age))
                    .http_only(true)
                    .same_site(cookie::SameSite::Lax)
                    .secure(self.secure)
                    .build();
                (SET_COOKIE, cookie.to_string())
            }
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.append(name, value);
        }
    }
}

fn window_ms(window: Duration) -> u64 {
    u64::try_from(window.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Gives every request a [`Db`](super::Db) with the pool and a role; see the
/// [module docs](super). `P` is the pool: either flavour's `AuroraPool` ([`LayerPool`]).
#[derive(Clone)]
pub struct AuroraLayer<P = DefaultPool> {
    pub(crate) pool: P,
    pub(crate) classifier: Classifier,
    pub(crate) policy: SharedPolicy,
    pub(crate) read_your_writes: Option<ReadYourWrites>,
    pub(crate) retry_after: Option<Duration>,
}

impl<P: LayerPool> AuroraLayer<P> {
    /// A layer with the default policy ([`SafeMethodsRead`]), read-your-writes on (a 1 s
    /// cookie) and no failover mapping.
    pub fn new(pool: P) -> AuroraLayer<P> {
        AuroraLayer {
            classifier: pool.classifier(),
            pool,
            policy: SharedPolicy(Arc::new(SafeMethodsRead)),
            read_your_writes: Some(ReadYourWrites::default()),
            retry_after: None,
        }
    }

    /// Chooses roles with `policy`: a [`Role`](crate::Role) for a fixed role (one route),
    /// or a closure over method, URI and headers.
    pub fn role_policy(mut self, policy: impl RolePolicy) -> AuroraLayer<P> {
        self.policy = SharedPolicy(Arc::new(policy));
        self
    }

    /// Read-your-writes settings; `None` turns it off.
    pub fn read_your_writes(mut self, setting: Option<ReadYourWrites>) -> AuroraLayer<P> {
        self.read_your_writes = setting;
        self
    }

    /// Turns responses that carry a [`FailoverResponse`](super::FailoverResponse) extension
    /// into `503 Service Unavailable` with `Retry-After` (whole seconds, at least 1).
    pub fn failover_to_503(mut self, retry_after: Duration) -> AuroraLayer<P> {
        self.retry_after = Some(retry_after);
        self
    }
}

impl<P: fmt::Debug> fmt::Debug for AuroraLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuroraLayer")
            .field("pool", &self.pool)
            .field("policy", &self.policy)
            .field("read_your_writes", &self.read_your_writes)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

impl<S, P: LayerPool> Layer<S> for AuroraLayer<P> {
    type Service = AuroraService<S, P>;

    fn layer(&self, inner: S) -> AuroraService<S, P> {
        AuroraService::new(inner, self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_mark_round_trips_and_expires() {
        let ryw = ReadYourWrites::default();
        let mut response = HeaderMap::new();
        ryw.mark(&mut response, 10_000);
        let set_cookie = response.get(SET_COOKIE).unwrap().to_str().unwrap();
        assert_eq!(
            set_cookie,
            "aurora_pool_rw=11000; HttpOnly; SameSite=Lax; Secure; Path=/; Max-Age=1"
        );

        let mut request = HeaderMap::new();
        request.insert(
            COOKIE,
            HeaderValue::from_static("theme=dark; aurora_pool_rw=11000"),
        );
        assert!(ryw.is_sticky(&request, 10_500));
        assert!(!ryw.is_sticky(&request, 11_000), "expired");
        assert!(
            !ryw.is_sticky(&request, 5_000),
            "a mark beyond the window is ignored"
        );
        assert!(!ryw.is_sticky(&HeaderMap::new(), 10_500));
    }

    #[test]
    fn the_header_mark_round_trips() {
        let name = HeaderName::from_static("x-read-your-writes");
        let ryw = ReadYourWrites {
            marker: SessionMarker::Header(name.clone()),
            window: Duration::from_millis(2500),
            secure: true,
        };
        let mut response = HeaderMap::new();
        ryw.mark(&mut response, 1_000);
        assert_eq!(response.get(&name).unwrap(), "3500");
        let mut request = HeaderMap::new();
        request.insert(name, HeaderValue::from_static("3500"));
        assert!(ryw.is_sticky(&request, 3_000));
        assert!(!ryw.is_sticky(&request, 3_500));
    }
}
