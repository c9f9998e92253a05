//! The custom endpoint monitor against [`RdsStub`] with the real SDK client.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout};

use super::describe::{CustomEndpointInfo, CustomEndpointType, DescribeError, Members, describe};
use super::monitor::{CustomEndpointHandle, InfoState, join};
use super::settings::CustomEndpointSettings;
use crate::testing::{CustomEndpointKind, RdsStub, StubFailure};

const REFRESH: Duration = Duration::from_millis(100);

/// The host of the custom endpoint `name` (each test uses its own: the registry is
/// process-wide).
fn host(name: &str) -> String {
    format!("{name}.cluster-custom-abc123.us-east-1.rds.amazonaws.com")
}

fn ids(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|id| (*id).to_owned()).collect()
}

async fn settings(stub: &RdsStub) -> CustomEndpointSettings {
    CustomEndpointSettings {
        refresh_rate: REFRESH,
        idle_monitor_expiration: Duration::from_secs(60),
        client: Some(stub.client().await),
        ..CustomEndpointSettings::default()
    }
}

/// Waits (at most 5 s) for a state `accept` takes.
async fn wait_for(
    rx: &mut watch::Receiver<InfoState>,
    accept: impl Fn(&InfoState) -> bool,
) -> InfoState {
    let reached = timeout(Duration::from_secs(5), rx.wait_for(|s| accept(s)))
        .await
        .map(|result| result.map(|state| state.clone()));
    match reached {
        Ok(Ok(state)) => state,
        Ok(Err(_)) => panic!("the monitor's state channel closed"),
        Err(_) => panic!("state not reached in 5 s; last: {:?}", *rx.borrow()),
    }
}

fn known(state: &InfoState) -> Option<&Arc<CustomEndpointInfo>> {
    match state {
        InfoState::Known(info) => Some(info),
        _ => None,
    }
}

/// The requests the stub receives during `window`.
async fn requests_during(stub: &RdsStub, window: Duration) -> usize {
    let before = stub.requests();
    sleep(window).await;
    stub.requests() - before
}

#[tokio::test]
async fn describes_a_reader_endpoint_with_static_members() {
    let stub = RdsStub::start().await.unwrap();
    let host = host("static-reader");
    stub.set_endpoint(
        "static-reader",
        "orders",
        &host,
        CustomEndpointKind::Reader,
        &["instance-2", "instance-3"],
        &[],
    );
    let client = stub.client().await;
    let info = describe(&client, "static-reader").await.unwrap();
    assert_eq!(
        info,
        CustomEndpointInfo {
            identifier: "static-reader".into(),
            cluster_identifier: "orders".into(),
            endpoint_type: CustomEndpointType::Reader,
            members: Members::Static(ids(&["instance-2", "instance-3"])),
        }
    );
    assert!(info.allows("instance-3") && !info.allows("instance-1"));
    // What the SDK sends: the Query protocol form, one filter.
    let sent = stub.last_describe_parameters();
    let expected = [
        ("Action", "DescribeDBClusterEndpoints"),
        ("Version", "2014-10-31"),
        ("DBClusterEndpointIdentifier", "static-reader"),
        ("Filters.Filter.1.Name", "db-cluster-endpoint-type"),
        ("Filters.Filter.1.Values.Value.1", "custom"),
    ];
    let sent: Vec<(&str, &str)> = sent.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(sent, expected);
    assert_eq!(stub.requests(), 1);
}

#[tokio::test]
async fn describe_sorts_the_failures() {
    let stub = RdsStub::start().await.unwrap();
    stub.set_endpoint(
        "sorts",
        "orders",
        &host("sorts"),
        CustomEndpointKind::Any,
        &[],
        &[],
    );
    let client = stub.client().await;
    let info = describe(&client, "sorts").await.unwrap();
    assert_eq!(info.members, Members::Excluded(BTreeSet::new()));
    assert!(info.allows("any-instance"));

    stub.fail_next(1, StubFailure::Throttling);
    let err = describe(&client, "sorts").await.unwrap_err();
    assert!(matches!(err, DescribeError::Throttled(_)), "{err:?}");
    assert!(
        err.error().to_string().contains("Throttling"),
        "{}",
        err.error()
    );

    stub.fail_next(1, StubFailure::ExpiredToken);
    let err = describe(&client, "sorts").await.unwrap_err();
    assert!(matches!(err, DescribeError::Credentials(_)), "{err:?}");
    let text = format!("{:#}", err.error());
    assert!(err.error().is_credentials());
    assert!(
        text.contains("`sorts`") && text.contains("ExpiredToken") && text.contains("expired"),
        "{text}"
    );
    // No raw response in the error's Debug either.
    assert!(!format!("{err:?}").contains("<ErrorResponse"), "{err:?}");

    let err = describe(&client, "missing").await.unwrap_err();
    assert!(matches!(err, DescribeError::Other(_)), "{err:?}");
    assert!(err.error().is_topology());
    let text = format!("{:#}", err.error());
    assert!(
        text.contains("`missing`") && text.contains("DBClusterEndpointNotFoundFault"),
        "{text}"
    );
    // One call each: the SDK's own retries are off for this call.
    assert_eq!(stub.requests(), 4);
}

#[tokio::test]
async fn publishes_membership_changes_within_the_refresh_rate() {
    let stub = RdsStub::start().await.unwrap();
    let host = host("changes");
    stub.set_endpoint(
        "changes",
        "orders",
        &host,
        CustomEndpointKind::Reader,
        &["instance-2"],
        &[],
    );
    stub.set_delay(Duration::from_millis(300));
    let handle = join(&host, &settings(&stub).await).await.unwrap();
    assert_eq!(handle.host(), host);
    assert_eq!(handle.identifier(), "changes");
    let mut rx = handle.subscribe();
    // The first answer is slow: checkouts would wait.
    assert!(matches!(*rx.borrow_and_update(), InfoState::Waiting));
    let first = wait_for(&mut rx, |s| known(s).is_some()).await;
    assert_eq!(
        known(&first).unwrap().members,
        Members::Static(ids(&["instance-2"]))
    );
    stub.set_delay(Duration::ZERO);

    stub.set_endpoint(
        "changes",
        "orders",
        &host,
        CustomEndpointKind::Reader,
        &["instance-2", "instance-4"],
        &[],
    );
    let changed_at = Instant::now();
    let second = wait_for(&mut rx, |s| {
        known(s).is_some_and(|i| i.members == Members::Static(ids(&["instance-2", "instance-4"])))
    })
    .await;
    // The slow call in flight (300 ms) plus one refresh, with slack for a busy machine.
    assert!(
        changed_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        changed_at.elapsed()
    );
    assert!(known(&second).unwrap().allows("instance-4"));

    // Unchanged answers publish nothing.
    rx.borrow_and_update();
    sleep(REFRESH * 4).await;
    assert!(
        !rx.has_changed().unwrap(),
        "unchanged info was published again"
    );
}

#[tokio::test]
async fn follows_an_excluded_list() {
    let stub = RdsStub::start().await.unwrap();
    let host = host("excluded");
    stub.set_endpoint(
        "excluded",
        "orders",
        &host,
        CustomEndpointKind::Any,
        &[],
        &["instance-1"],
    );
    let handle = join(&host, &settings(&stub).await).await.unwrap();
    let mut rx = handle.subscribe();
    let state = wait_for(&mut rx, |s| known(s).is_some()).await;
    let info = known(&state).unwrap();
    assert_eq!(info.endpoint_type, CustomEndpointType::Any);
    assert_eq!(info.members, Members::Excluded(ids(&["instance-1"])));
    assert!(!info.allows("instance-1") && info.allows("instance-2"));

    stub.set_endpoint(
        "excluded",
        "orders",
        &host,
        CustomEndpointKind::Any,
        &[],
        &[],
    );
    let state = wait_for(&mut rx, |s| {
        known(s).is_some_and(|i| i.members == Members::Excluded(BTreeSet::new()))
    })
    .await;
    assert!(known(&state).unwrap().allows("instance-1"));
}

#[tokio::test]
async fn backs_off_when_throttled_and_keeps_the_members() {
    let stub = RdsStub::start().await.unwrap();
    let host = host("throttled");
    stub.set_endpoint(
        "throttled",
        "orders",
        &host,
        CustomEndpointKind::Reader,
        &["instance-2"],
        &[],
    );
    let handle = join(&host, &settings(&stub).await).await.unwrap();
    let mut rx = handle.subscribe();
    let before = wait_for(&mut rx, |s| known(s).is_some()).await;
    // Unthrottled: about one call per refresh.
    let normal = requests_during(&stub, Duration::from_millis(1000)).await;
    assert!(
        normal >= 5,
        "{normal} calls in 1 s at a 100 ms refresh rate"
    );

    stub.fail_next(1000, StubFailure::Throttling);
    rx.borrow_and_update();
    // Pauses of 200, 400, 800, 1600 ms: 4 or 5 calls in 1.6 s instead of 16.
    let throttled = requests_during(&stub, Duration::from_millis(1600)).await;
    assert!(
        (2..=6).contains(&throttled),
        "{throttled} calls in 1.6 s while throttled"
    );
    // The members stay published, untouched.
    assert!(!rx.has_changed().unwrap());
    assert_eq!(known(&handle.state()), known(&before));
}

#[tokio::test]
async fn expired_credentials_fail_and_are_not_hammered() {
    let stub = RdsStub::start().await.unwrap();
    let host = host("expired");
    stub.set_endpoint(
        "expired",
        "orders",
        &host,
        CustomEndpointKind::Reader,
        &["instance-2"],
        &[],
    );
    stub.fail_next(1000, StubFailure::ExpiredToken);
    let handle = join(&host, &settings(&stub).await).await.unwrap();
    let mut rx = handle.subscribe();
    let state = wait_for(&mut rx, |s| matches!(s, InfoState::Failed { .. })).await;
    let InfoState::Failed { error, last_known } = state else {
        unreachable!()
    };
    assert!(error.is_credentials(), "{error}");
    assert!(format!("{error:#}").contains("ExpiredToken"), "{error}");
    assert!(last_known.is_none());
    let calls = requests_during(&stub, Duration::from_secs(2)).await;
    assert!(calls <= 1, "{calls} calls in 2 s with expired credentials");
    assert_eq!(stub.requests(), 1);
}

#[tokio::test]
async fn an_unknown_endpoint_fails_then_recovers() {
    let stub = RdsStub::start().await.unwrap();
    let host = host("unknown");
    let handle = join(&host, &settings(&stub).await).await.unwrap();
    let mut rx = handle.subscribe();
    let state = wait_for(&mut rx, |s| matches!(s, InfoState::Failed { .. })).await;
    let InfoState::Failed { error, .. } = state else {
        unreachable!()
    };
    assert!(error.is_topology(), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("`unknown`") && text.contains("DBClusterEndpointNotFoundFault"),
        "{text}"
    );
    // Created later: found at the next retry (pauses 100, 200, 400 ms, ...).
    stub.set_endpoint(
        "unknown",
        "orders",
        &host,
        CustomEndpointKind::Reader,
        &["instance-3"],
        &[],
    );
    let state = wait_for(&mut rx, |s| known(s).is_some()).await;
    assert!(known(&state).unwrap().allows("instance-3"));
    // Deleted: failed again, with the members last known.
    stub.remove_endpoint("unknown");
    let state = wait_for(&mut rx, |s| matches!(s, InfoState::Failed { .. })).await;
    assert!(state.info().is_some_and(|info| info.allows("instance-3")));
}

#[tokio::test]
async fn joins_of_one_host_share_one_monitor() {
    let stub = RdsStub::start().await.unwrap();
    let host = host("shared");
    stub.set_endpoint(
        "shared",
        "orders",
        &host,
        CustomEndpointKind::Reader,
        &["instance-2"],
        &[],
    );
    let first_settings = settings(&stub).await;
    let first = join(&host, &first_settings).await.unwrap();
    // The same client, other settings, upper case and a trailing dot: still the same
    // monitor (a client of another account would get its own).
    let mut other = first_settings.clone();
    other.refresh_rate = Duration::from_millis(10);
    let second = join(&format!("{}.", host.to_uppercase()), &other)
        .await
        .unwrap();
    let mut rx = second.subscribe();
    wait_for(&mut rx, |s| known(s).is_some()).await;
    assert!(known(&first.state()).is_some(), "{first:?}");
    // One monitor at 100 ms: about 10 calls a second (two would make 20, 10 ms would make 100).
    let calls = requests_during(&stub, Duration::from_secs(1)).await;
    assert!((5..=14).contains(&calls), "{calls} calls in 1 s");
}

#[tokio::test]
async fn stops_when_unused_for_the_idle_expiration() {
    let stub = RdsStub::start().await.unwrap();
    let host = host("idle");
    stub.set_endpoint(
        "idle",
        "orders",
        &host,
        CustomEndpointKind::Reader,
        &["instance-2"],
        &[],
    );
    let mut settings = settings(&stub).await;
    settings.idle_monitor_expiration = Duration::from_millis(300);
    let first = join(&host, &settings).await.unwrap();
    let second = join(&host, &settings).await.unwrap();
    wait_for(&mut first.subscribe(), |s| known(s).is_some()).await;

    // Unused for less than the expiration: a new pool reuses the monitor and its members.
    drop((first, second));
    sleep(Duration::from_millis(100)).await;
    let again = join(&host, &settings).await.unwrap();
    assert!(
        known(&again.state()).is_some(),
        "a new monitor starts without members"
    );
    let calls = requests_during(&stub, Duration::from_millis(500)).await;
    assert!(calls >= 2, "{calls} calls in 0.5 s while used");

    // Unused for longer: it stops.
    drop(again);
    sleep(Duration::from_millis(600)).await;
    let calls = requests_during(&stub, Duration::from_millis(500)).await;
    assert_eq!(calls, 0, "calls after the idle expiration");

    // A pool joining after that starts a new monitor.
    let fresh: Arc<CustomEndpointHandle> = join(&host, &settings).await.unwrap();
    assert!(matches!(fresh.state(), InfoState::Waiting));
    wait_for(&mut fresh.subscribe(), |s| known(s).is_some()).await;
}

#[tokio::test]
async fn a_host_without_region_needs_custom_endpoint_region() {
    let settings = CustomEndpointSettings::default();
    let err = join("reporting.db.example.internal", &settings)
        .await
        .unwrap_err();
    assert!(err.is_config(), "{err}");
    assert_eq!(err.parameter(), Some("custom_endpoint_region"));
    assert!(
        format!("{err:#}").contains("reporting.db.example.internal"),
        "{err}"
    );
}
