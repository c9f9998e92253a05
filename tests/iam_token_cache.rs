//! The IAM provider's token cache, driven by a clock the test controls: tokens are reused
//! per (region, host, port, user) for `iam_expiration_s`, renewed after it, capped by the
//! signing credentials' own expiry, and a refused cached token is regenerated once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aurora_pool::auth::{ConnectTarget, CredentialProvider, LoginFailure};
use aurora_pool::iam::{IamAuth, IamSettings, generate_auth_token};
use aws_credential_types::Credentials;
use aws_smithy_async::time::{SharedTimeSource, TimeSource};

const HOST: &str = "orders.cluster-abc123.us-east-1.rds.amazonaws.com";
const START: u64 = 1_795_317_600;

/// A clock that moves only when told.
#[derive(Debug, Clone)]
struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    fn new() -> ManualClock {
        ManualClock(Arc::new(AtomicU64::new(START)))
    }
    fn advance(&self, seconds: u64) {
        self.0.fetch_add(seconds, Ordering::SeqCst);
    }
    fn at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.0.load(Ordering::SeqCst))
    }
}

impl TimeSource for ManualClock {
    fn now(&self) -> SystemTime {
        self.at()
    }
}

fn aws() -> Credentials {
    Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", None, None, "test")
}

fn provider(clock: &ManualClock, configure: impl FnOnce(&mut IamSettings)) -> IamAuth {
    let mut settings = IamSettings::new().credentials(aws());
    settings.time_source = SharedTimeSource::new(clock.clone());
    configure(&mut settings);
    IamAuth::new(settings, HOST).expect("provider")
}

fn instance(n: u16) -> ConnectTarget {
    ConnectTarget::new(
        format!("instance-{n}.abc123.us-east-1.rds.amazonaws.com"),
        5432,
        "app_iam",
    )
}

#[tokio::test]
async fn tokens_are_reused_until_iam_expiration_then_renewed() {
    let clock = ManualClock::new();
    let iam = provider(&clock, |_| {});
    let target = instance(1);

    let first = iam.credentials(&target).await.expect("token");
    let expected = generate_auth_token(
        &target.host,
        5432,
        "app_iam",
        "us-east-1",
        &aws(),
        clock.at(),
    )
    .expect("expected token");
    assert_eq!(
        first.password(),
        Some(expected.as_str()),
        "signed for the instance host"
    );
    assert!(!first.is_from_cache());
    assert_eq!(first.lifetime(), Some(Duration::from_secs(870)));

    clock.advance(869);
    let cached = iam.credentials(&target).await.expect("token");
    assert_eq!(cached.password(), first.password());
    assert!(cached.is_from_cache());
    assert_eq!(
        cached.lifetime(),
        Some(Duration::from_secs(1)),
        "what is left of 870 s"
    );
    assert_eq!(iam.tokens_generated(), 1);

    clock.advance(1);
    let renewed = iam.credentials(&target).await.expect("token");
    assert_ne!(
        renewed.password(),
        first.password(),
        "a token past 870 s is not reused"
    );
    assert!(!renewed.is_from_cache());
    assert_eq!(iam.tokens_generated(), 2);
}

#[tokio::test]
async fn one_token_per_host_unless_iam_host_overrides() {
    let clock = ManualClock::new();
    let per_host = provider(&clock, |_| {});
    let a = per_host.credentials(&instance(1)).await.expect("a");
    let b = per_host.credentials(&instance(2)).await.expect("b");
    assert_ne!(a.password(), b.password());
    assert!(a.password().unwrap().starts_with("instance-1."));
    assert_eq!(per_host.tokens_generated(), 2);

    let overridden = provider(&clock, |s| {
        s.host = Some("db.example.internal".into());
        s.default_port = Some(6543);
        s.region = Some("eu-west-1".into());
    });
    let a = overridden.credentials(&instance(1)).await.expect("a");
    let b = overridden.credentials(&instance(2)).await.expect("b");
    assert_eq!(a.password(), b.password(), "one token for the iam_host");
    let token = a.password().unwrap();
    assert!(
        token.starts_with("db.example.internal:6543/?Action=connect&DBUser=app_iam&"),
        "{token}"
    );
    assert!(token.contains("%2Feu-west-1%2Frds-db%2F"), "{token}");
    assert_eq!(overridden.tokens_generated(), 1);
}

/// A global database's instances are signed for their own region (#25 item 5), whatever
/// the URL's host or `iam_region` say: a token for another region is refused.
#[tokio::test]
async fn an_instance_in_another_region_gets_a_token_for_its_region() {
    let clock = ManualClock::new();
    let iam = provider(&clock, |s| s.region = Some("us-east-1".into()));
    let home = iam
        .credentials(&instance(1).in_region(Some("us-east-1")))
        .await
        .expect("home");
    let away = iam
        .credentials(&instance(2).in_region(Some("eu-west-1")))
        .await
        .expect("away");
    let (home, away) = (home.password().unwrap(), away.password().unwrap());
    assert!(home.contains("%2Fus-east-1%2Frds-db%2F"), "{home}");
    assert!(away.contains("%2Feu-west-1%2Frds-db%2F"), "{away}");
    // Without a catalog region, `iam_region` decides as before.
    let plain = iam.credentials(&instance(3)).await.expect("plain");
    assert!(
        plain
            .password()
            .unwrap()
            .contains("%2Fus-east-1%2Frds-db%2F"),
        "{plain:?}"
    );
}

#[tokio::test]
async fn tokens_die_with_the_credentials_that_signed_them() {
    let clock = ManualClock::new();
    let expiring = Credentials::new(
        "ASIAEXAMPLE",
        "secret",
        Some("session".into()),
        Some(clock.at() + Duration::from_secs(120)),
        "sts",
    );
    let iam = provider(&clock, |s| *s = s.clone().credentials(expiring));
    let token = iam.credentials(&instance(1)).await.expect("token");
    assert_eq!(token.lifetime(), Some(Duration::from_secs(120)));
    assert!(
        token
            .password()
            .unwrap()
            .contains("X-Amz-Security-Token=session")
    );
}

#[tokio::test]
async fn a_refused_cached_token_is_regenerated_once() {
    let clock = ManualClock::new();
    let iam = provider(&clock, |_| {});
    let target = instance(1);
    let fresh = iam.credentials(&target).await.expect("token");
    let elapsed = Duration::ZERO;

    // A fresh token that is refused: the policy or the grant is wrong; no retry.
    let failure = LoginFailure::new(&target, &fresh, 1, elapsed);
    assert!(iam.login_rejected(failure).await.expect("answer").is_none());

    clock.advance(5);
    let cached = iam.credentials(&target).await.expect("token");
    assert!(cached.is_from_cache());
    let failure = LoginFailure::new(&target, &cached, 1, elapsed);
    let renewed = iam
        .login_rejected(failure)
        .await
        .expect("answer")
        .expect("a new token");
    assert_ne!(renewed.password(), cached.password());
    assert!(!renewed.is_from_cache());
    // The renewed token is refused too: give up.
    let failure = LoginFailure::new(&target, &renewed, 2, elapsed);
    assert!(iam.login_rejected(failure).await.expect("answer").is_none());
    assert_eq!(iam.tokens_generated(), 2);
}

/// Instances that left the topology do not stay in the cache: expired tokens are dropped
/// when the next token is signed.
#[tokio::test]
async fn the_cache_keeps_only_recent_instances() {
    let clock = ManualClock::new();
    let iam = provider(&clock, |_| {});
    for n in 0..100 {
        iam.credentials(&instance(n)).await.expect("token");
    }
    assert_eq!(iam.tokens_cached(), 100);
    clock.advance(900);
    iam.credentials(&instance(1000)).await.expect("token");
    assert_eq!(iam.tokens_cached(), 1, "expired tokens are dropped");
}

#[tokio::test]
async fn debug_shows_no_secret() {
    let clock = ManualClock::new();
    let iam = provider(&clock, |_| {});
    let token = iam.credentials(&instance(1)).await.expect("token");
    let shown = format!("{iam:?} {token:?}");
    let signature = token
        .password()
        .unwrap()
        .rsplit("X-Amz-Signature=")
        .next()
        .unwrap()
        .to_owned();
    for secret in [
        "wJalrXUtnFEMI",
        signature.as_str(),
        token.password().unwrap(),
    ] {
        assert!(!shown.contains(secret), "{shown}");
    }
}
