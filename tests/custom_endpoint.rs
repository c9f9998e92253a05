//! Pools on a custom endpoint URL, with the endpoint's members served by a local stub of the
//! RDS API through the real AWS SDK client: reads stay inside the members while they change
//! and through a failover, and a missing member list is a clear error.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use aurora_pool::testing::{CustomEndpointKind, LocalCluster, RdsStub};
use aurora_pool::{AuroraPool, Builder, Role};
use support::flavour::{Flavour, INSTANCE_ID, flavour_tests};
use support::{eventually, unique_cluster_id};

/// The custom endpoint `name`'s host. Monitors are per host and process-wide, so each test
/// uses its own name (and stub).
fn host(name: &str) -> String {
    format!("{name}.cluster-custom-abc123.us-east-1.rds.amazonaws.com")
}

/// The name of the custom endpoint `base` in the scenario `test`: one per flavour, since the
/// flavours' tests share the process.
fn endpoint(test: &str, base: &str) -> String {
    let flavour = test.split('-').next().unwrap_or(test);
    format!("{base}-{flavour}")
}

/// A pool whose URL host is the custom endpoint `name`, reached through the cluster
/// endpoint's address (`hostaddr`).
async fn pool_on<F: Flavour>(
    cluster: &LocalCluster,
    stub: &RdsStub,
    name: &str,
    test: &str,
    extra: &str,
) -> aurora_pool::Result<F> {
    let config = Builder::new()
        .url(url_on(cluster, name, test, extra))
        .custom_endpoint_client(stub.client().await)
        .build()?;
    F::connect_with(config).await
}

/// As [`pool_on`], with the RDS client built from the application's `SdkConfig` pointed
/// at the stub (`Builder::sdk_config`) instead of given.
async fn pool_on_sdk_config<F: Flavour>(
    cluster: &LocalCluster,
    stub: &RdsStub,
    name: &str,
    test: &str,
) -> aurora_pool::Result<F> {
    let sdk_config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(stub.endpoint())
        .credentials_provider(aws_credential_types::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .load()
        .await;
    let config = Builder::new()
        .url(url_on(cluster, name, test, ""))
        .sdk_config(sdk_config)
        .build()?;
    F::connect_with(config).await
}

/// The URL of a pool on the custom endpoint `name` (see [`pool_on`]).
fn url_on(cluster: &LocalCluster, name: &str, test: &str, extra: &str) -> String {
    format!(
        "postgres://{}:{}@{}:{}/{}?hostaddr=127.0.0.1&instance_endpoints={}&cluster_id={}\
         &application_name=ce-app&custom_endpoint_info_refresh_rate_ms=200\
         &failure_detection_time_ms=0&failure_detection_interval_ms=300&failure_detection_count=2\
         &connect_timeout=2{extra}",
        cluster.user(),
        cluster.password(),
        host(name),
        cluster.cluster_endpoint().port(),
        cluster.database(),
        cluster.instance_endpoints_param(),
        unique_cluster_id(test),
    )
}

/// The instances 40 reads landed on.
async fn readers_used<F: Flavour>(pool: &F) -> BTreeSet<String> {
    // A member declared dead by a false verdict on a loaded machine is back within a probe.
    let mut handle = pool.try_reader();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while handle.is_err() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        handle = pool.try_reader();
    }
    F::spread_of(&handle.expect("a reader"), 40).await
}

/// Whether, within 20 s, the pool has a reader and its reads reach exactly `ids` (a
/// liveness bound: on a loaded machine a false verdict can hold a member out for a few
/// probes).
async fn reads_settle_on<F: Flavour>(pool: &F, ids: &[&str]) -> bool {
    eventually(Duration::from_secs(20), || async {
        pool.try_reader().is_ok() && readers_used(pool).await == set(ids)
    })
    .await
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

/// The pool's own connections (not the crate's monitor and probes) on instance `id`.
async fn pool_connections_on(cluster: &LocalCluster, id: &str) -> usize {
    support::connections_named(cluster, id, "ce-app").await
}

async fn reads_follow_the_static_members_as_they_change<F: Flavour>(test: &str) {
    let _slot = support::cluster_slot().await;
    let (cluster, stub) = tokio::join!(LocalCluster::start(4), RdsStub::start());
    let (cluster, stub) = (cluster.expect("cluster"), stub.expect("stub"));
    let name = endpoint(test, "static");
    stub.set_endpoint(
        &name,
        "orders",
        &host(&name),
        CustomEndpointKind::Reader,
        &["instance-3", "instance-4"],
        &[],
    );
    #[cfg(feature = "metrics")]
    support::recorder::snapshotter();
    let pool: F = pool_on(&cluster, &stub, &name, test, "")
        .await
        .expect("connect");

    assert_eq!(
        readers_used(&pool).await,
        set(&["instance-3", "instance-4"])
    );
    let status = pool.status();
    let pooled: BTreeSet<String> = status
        .instances
        .iter()
        .map(|i| i.instance_id.clone())
        .collect();
    assert!(!pooled.contains("instance-2"), "{status:?}");
    assert!(pool_connections_on(&cluster, "instance-3").await > 0);

    // Membership changes in AWS: instance-2 only.
    stub.set_endpoint(
        &name,
        "orders",
        &host(&name),
        CustomEndpointKind::Reader,
        &["instance-2"],
        &[],
    );
    let moved = reads_settle_on(&pool, &["instance-2"]).await;
    assert!(
        moved,
        "reads did not move to instance-2: {:?}",
        pool.status()
    );
    for dropped in ["instance-3", "instance-4"] {
        let closed = eventually(Duration::from_secs(10), || async {
            pool_connections_on(&cluster, dropped).await == 0
        })
        .await;
        assert!(closed, "connections to {dropped} stayed open");
    }
    // A READER endpoint never sends reads to the writer.
    assert!(!readers_used(&pool).await.contains("instance-1"));
    // The monitor's reads of the members are counted, the one that saw the change apart.
    #[cfg(feature = "metrics")]
    {
        let endpoint = host(&name);
        let refreshes = |changed| {
            support::recorder::counter_with(
                "aurora_pool.custom_endpoint.refreshes",
                &[("endpoint", &endpoint), ("changed", changed)],
            )
        };
        assert!(refreshes("true") >= 1, "the change was not counted");
        assert!(refreshes("false") >= 1, "no unchanged refresh was counted");
    }
    pool.close().await;
}

async fn an_exclusion_list_blocks_its_members<F: Flavour>(test: &str) {
    let _slot = support::cluster_slot().await;
    let (cluster, stub) = tokio::join!(LocalCluster::start(4), RdsStub::start());
    let (cluster, stub) = (cluster.expect("cluster"), stub.expect("stub"));
    let name = endpoint(test, "excluded");
    stub.set_endpoint(
        &name,
        "orders",
        &host(&name),
        CustomEndpointKind::Any,
        &[],
        &["instance-2", "instance-3"],
    );
    let pool: F = pool_on_sdk_config(&cluster, &stub, &name, test)
        .await
        .expect("connect");
    assert_eq!(readers_used(&pool).await, set(&["instance-4"]));

    // With its last member reader down, an ANY endpoint reads from the writer (a member).
    cluster.crash("instance-4").await.expect("crash");
    let on_writer = eventually(Duration::from_secs(10), || async {
        pool.instance_id(Role::Reader)
            .await
            .is_ok_and(|id| id == "instance-1")
    })
    .await;
    assert!(on_writer, "{:?}", pool.status());
    assert!(
        !readers_used(&pool)
            .await
            .iter()
            .any(|id| id == "instance-2" || id == "instance-3")
    );
    pool.close().await;
}

async fn a_failover_keeps_reads_inside_the_members<F: Flavour>(test: &str) {
    let _slot = support::cluster_slot().await;
    let (cluster, stub) = tokio::join!(LocalCluster::start(4), RdsStub::start());
    let (cluster, stub) = (cluster.expect("cluster"), stub.expect("stub"));
    let name = endpoint(test, "failover");
    stub.set_endpoint(
        &name,
        "orders",
        &host(&name),
        CustomEndpointKind::Reader,
        &["instance-3", "instance-4"],
        &[],
    );
    let pool: F = pool_on(&cluster, &stub, &name, test, "")
        .await
        .expect("connect");
    assert_eq!(
        readers_used(&pool).await,
        set(&["instance-3", "instance-4"])
    );

    // instance-3 becomes the writer; the old writer rejoins as a reader, outside the members.
    cluster
        .failover("instance-3", Some(Duration::from_millis(200)))
        .await
        .expect("failover");
    let promoted = eventually(Duration::from_secs(15), || async {
        pool.topology().writer().id() == "instance-3"
    })
    .await;
    assert!(promoted, "{}", pool.topology());
    cluster.wait_rejoined("instance-1").await.expect("rejoined");
    let settled = eventually(Duration::from_secs(10), || async {
        pool.topology()
            .instance("instance-1")
            .is_some_and(|i| i.role() == Role::Reader)
    })
    .await;
    assert!(settled, "{}", pool.topology());
    // The writer is not read from (READER endpoint), and neither are non-members.
    assert_eq!(readers_used(&pool).await, set(&["instance-4"]));
    let id = pool.query_text(Role::Reader, INSTANCE_ID).await;
    assert_eq!(id.expect("reader checkout"), "instance-4");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_member_lists_are_clear_errors() {
    let _slot = support::cluster_slot().await;
    let (cluster, stub) = tokio::join!(LocalCluster::start(2), RdsStub::start());
    let (cluster, stub) = (cluster.expect("cluster"), stub.expect("stub"));

    // The RDS API answers too slowly for the wait.
    stub.set_endpoint(
        "slow",
        "orders",
        &host("slow"),
        CustomEndpointKind::Reader,
        &["instance-2"],
        &[],
    );
    stub.set_delay(Duration::from_secs(3));
    let err = pool_on::<AuroraPool>(
        &cluster,
        &stub,
        "slow",
        "ce-slow",
        "&wait_for_custom_endpoint_info_timeout_ms=500",
    )
    .await
    .expect_err("the members are not known in time");
    assert!(err.is_custom_endpoint_unavailable(), "{err:?}");
    assert!(
        err.to_string()
            .contains("wait_for_custom_endpoint_info_timeout_ms"),
        "{err}"
    );

    // Without waiting, the pool starts at once and narrows its reads when the list arrives.
    let pool: AuroraPool = pool_on(
        &cluster,
        &stub,
        "slow",
        "ce-nowait",
        "&wait_for_custom_endpoint_info=false",
    )
    .await
    .expect("connect without waiting");
    let narrowed = eventually(Duration::from_secs(10), || async {
        readers_used(&pool).await == set(&["instance-2"])
    })
    .await;
    assert!(narrowed);
    pool.close().await;
    stub.set_delay(Duration::ZERO);

    // An endpoint AWS does not know.
    let err = pool_on::<AuroraPool>(
        &cluster,
        &stub,
        "ghost",
        "ce-ghost",
        "&wait_for_custom_endpoint_info_timeout_ms=1000",
    )
    .await
    .expect_err("no such endpoint");
    assert!(err.is_custom_endpoint_unavailable(), "{err:?}");
    assert!(
        format!("{err:?}").contains("DBClusterEndpointNotFound"),
        "{err:?}"
    );
}

/// Two pools on one custom endpoint host, each with an RDS client of its own (another
/// account, other credentials) that answers with other members: neither takes the other's
/// answer. A monitor is shared only by pools the same account and region answer for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_with_their_own_clients_do_not_share_a_monitor() {
    let _slot = support::cluster_slot().await;
    let (cluster, first, second) =
        tokio::join!(LocalCluster::start(3), RdsStub::start(), RdsStub::start());
    let (cluster, first, second) = (
        cluster.expect("cluster"),
        first.expect("stub"),
        second.expect("stub"),
    );
    for (stub, member) in [(&first, "instance-2"), (&second, "instance-3")] {
        stub.set_endpoint(
            "accounts",
            "orders",
            &host("accounts"),
            CustomEndpointKind::Reader,
            &[member],
            &[],
        );
    }
    let a: AuroraPool = pool_on(&cluster, &first, "accounts", "ce-own-a", "")
        .await
        .expect("first pool");
    let b: AuroraPool = pool_on(&cluster, &second, "accounts", "ce-own-b", "")
        .await
        .expect("second pool");
    assert_eq!(readers_used(&a).await, set(&["instance-2"]));
    assert_eq!(readers_used(&b).await, set(&["instance-3"]));
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_urls_of_one_cluster_share_one_monitor() {
    let _slot = support::cluster_slot().await;
    let (cluster, stub) = tokio::join!(LocalCluster::start(3), RdsStub::start());
    let (cluster, stub) = (cluster.expect("cluster"), stub.expect("stub"));
    stub.set_endpoint(
        "shared",
        "orders",
        &host("shared"),
        CustomEndpointKind::Reader,
        &["instance-3"],
        &[],
    );
    let id = unique_cluster_id("ce-shared");
    // The cluster endpoint, an instance's IP address, and the custom endpoint.
    let by_cluster_endpoint = AuroraPool::connect(&format!("{}&cluster_id={id}", cluster.url()))
        .await
        .expect("cluster endpoint");
    let by_ip = AuroraPool::connect(&format!(
        "{}?instance_endpoints={}&cluster_id={id}",
        cluster.instance_url("instance-2").expect("instance"),
        cluster.instance_endpoints_param()
    ))
    .await
    .expect("IP address");
    let by_custom_endpoint: AuroraPool = pool_on(&cluster, &stub, "shared", "ce-shared", "")
        .await
        .expect("custom endpoint");

    // The writer's probe reads the topology once it starts (a random point of its first
    // interval); three monitors would hold three.
    let one = support::eventually(Duration::from_secs(5), || async {
        support::monitor_connections(&cluster, &id).await == 1
    })
    .await;
    assert!(
        one,
        "one monitor for the three URLs: {} connections",
        support::monitor_connections(&cluster, &id).await
    );
    let a = by_cluster_endpoint.topology();
    assert_eq!(
        a.version(),
        by_ip.topology().version(),
        "one shared topology"
    );
    // Only the custom endpoint's pool is narrowed to its members.
    assert_eq!(
        readers_used(&by_custom_endpoint).await,
        set(&["instance-3"])
    );
    assert_eq!(
        readers_used(&by_ip).await,
        set(&["instance-2", "instance-3"])
    );
    for pool in [by_cluster_endpoint, by_ip, by_custom_endpoint] {
        pool.close().await;
    }
}

flavour_tests!(
    reads_follow_the_static_members_as_they_change,
    an_exclusion_list_blocks_its_members,
    a_failover_keeps_reads_inside_the_members,
);

/// The way parallel `#[tokio::test]`s meet the custom endpoint's shared monitor: pool A, on
/// a runtime of its own, starts it; pool B, on another runtime, joins it; A's test ends (its
/// pool dropped, its runtime shut down, the monitor's task with it). B still follows the
/// endpoint's members as they change: the monitor runs again on B's runtime.
fn the_members_are_followed_after_the_runtime_that_started_the_monitor_ends<F: Flavour>(
    test: &str,
) {
    let new_runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    };
    // The cluster and the stub live on a runtime of their own for the whole test.
    let base = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (cluster, stub) = base.block_on(async {
        let (cluster, stub) = tokio::join!(LocalCluster::start(3), RdsStub::start());
        (cluster.expect("cluster"), stub.expect("stub"))
    });
    let name = endpoint(test, "runtime");
    stub.set_endpoint(
        &name,
        "orders",
        &host(&name),
        CustomEndpointKind::Reader,
        &["instance-2"],
        &[],
    );
    // One RDS client for both pools, as one application passes: what makes them share the
    // monitor.
    let client = base.block_on(stub.client());
    let config = Builder::new()
        .url(url_on(&cluster, &name, test, ""))
        .custom_endpoint_client(client)
        .build()
        .expect("config");
    let first = new_runtime();
    let pool_a: F = first
        .block_on(F::connect_with(config.clone()))
        .expect("pool A");
    let second = new_runtime();
    let pool_b: F = second.block_on(F::connect_with(config)).expect("pool B");
    second.block_on(async {
        assert_eq!(readers_used(&pool_b).await, set(&["instance-2"]));
    });
    // Test A ends.
    drop(pool_a);
    drop(first);

    stub.set_endpoint(
        &name,
        "orders",
        &host(&name),
        CustomEndpointKind::Reader,
        &["instance-3"],
        &[],
    );
    second.block_on(async {
        let moved = reads_settle_on(&pool_b, &["instance-3"]).await;
        assert!(
            moved,
            "pool B's reads did not follow the members once pool A's runtime ended: {:?}",
            pool_b.status()
        );
    });
    drop(pool_b);
    drop(second);
    let _entered = base.enter();
    drop((cluster, stub));
}

#[test]
fn sqlx_the_members_are_followed_after_the_runtime_that_started_the_monitor_ends() {
    the_members_are_followed_after_the_runtime_that_started_the_monitor_ends::<AuroraPool>(
        "sqlx-ce-runtime",
    );
}

#[cfg(feature = "deadpool")]
#[test]
fn deadpool_the_members_are_followed_after_the_runtime_that_started_the_monitor_ends() {
    the_members_are_followed_after_the_runtime_that_started_the_monitor_ends::<
        aurora_pool::deadpool::AuroraPool,
    >("deadpool-ce-runtime");
}
