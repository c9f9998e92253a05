//! Topology discovery: from the cluster endpoint, from an instance endpoint, through stale
//! DNS, and per dialect.

mod support;

use aurora_pool::testing::{Flavour, LocalCluster};
use aurora_pool::{AuroraPool, Dialect, Role};
use support::{served_by, unique_cluster_id, url_with};

fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovers_the_cluster_from_the_cluster_endpoint_and_from_an_instance() {
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let id = unique_cluster_id("discover-cluster-endpoint");
    let pool = AuroraPool::connect(&url_with(&cluster, &format!("cluster_id={id}")))
        .await
        .expect("connect through the cluster endpoint");

    let topology = pool.topology();
    assert_eq!(topology.dialect(), Dialect::AuroraPg);
    assert_eq!(topology.writer().id(), "instance-1");
    let readers: Vec<_> = topology.readers().map(|r| r.id().to_owned()).collect();
    assert_eq!(readers, ["instance-2", "instance-3"]);
    for instance in topology.instances() {
        assert_eq!(
            instance.address().to_string(),
            cluster
                .instance_addr(instance.id())
                .expect("known instance")
                .to_string(),
            "{} must be reached at its instance endpoint",
            instance.id()
        );
    }
    // No pool points at the cluster endpoint once the topology is known.
    let cluster_endpoint = cluster.cluster_endpoint().to_string();
    let status = pool.status();
    assert_eq!(status.instances.len(), 3);
    assert!(
        status
            .instances
            .iter()
            .all(|i| i.address != cluster_endpoint),
        "{status:?}"
    );
    assert_eq!(served_by(&pool.writer()).await, "instance-1");

    // The driver's own URL parameters reach every instance connection.
    let url = url_with(
        &cluster,
        &format!(
            "cluster_id={}&sslmode=disable&application_name=discovery-test&options=-c%20statement_timeout%3D1234",
            unique_cluster_id("discover-driver-parameters")
        ),
    );
    let with_parameters = AuroraPool::connect(&url)
        .await
        .expect("connect with parameters");
    for pool in [with_parameters.writer(), with_parameters.reader()] {
        let (timeout, name): (String, String) = sqlx::query_as(
            "SELECT current_setting('statement_timeout'), current_setting('application_name')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            (timeout.as_str(), name.as_str()),
            ("1234ms", "discovery-test")
        );
    }

    // The same cluster discovered through a reader's instance endpoint.
    let other_id = unique_cluster_id("discover-instance-endpoint");
    let url = format!(
        "{}?cluster_id={other_id}&instance_endpoints={}",
        cluster.instance_url("instance-3").expect("known instance"),
        encode(&cluster.instance_endpoints_param())
    );
    let from_reader = AuroraPool::connect(&url)
        .await
        .expect("connect through instance-3");
    assert_eq!(from_reader.topology().writer().id(), "instance-1");
    assert_eq!(served_by(&from_reader.writer()).await, "instance-1");
    let mut conn = from_reader
        .acquire(Role::Writer)
        .await
        .expect("writer checkout");
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert!(!in_recovery, "the writer checkout reached a standby");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_cluster_dns_does_not_misroute_writes() {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    // The "cluster endpoint" now resolves to the replica, as DNS does for a while after a
    // failover.
    cluster.point_cluster_endpoint("instance-2");
    let pool = AuroraPool::connect(&url_with(
        &cluster,
        &format!("cluster_id={}", unique_cluster_id("stale-dns")),
    ))
    .await
    .expect("connect");
    assert_eq!(pool.topology().writer().id(), "instance-1");
    for _ in 0..5 {
        assert_eq!(served_by(&pool.writer()).await, "instance-1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detects_rds_multi_az_and_plain_postgres() {
    let multi_az = LocalCluster::builder()
        .instances(2)
        .flavour(Flavour::RdsMultiAz)
        .start()
        .await
        .expect("multi-az cluster");
    let pool = AuroraPool::connect(&url_with(
        &multi_az,
        &format!("cluster_id={}", unique_cluster_id("multi-az")),
    ))
    .await
    .expect("connect to multi-az");
    let topology = pool.topology();
    assert_eq!(topology.dialect(), Dialect::RdsMultiAzPg);
    assert_eq!(topology.instances().len(), 2);
    assert_eq!(topology.writer().name(), "instance-1");
    assert_ne!(
        topology.writer().id(),
        "instance-1",
        "Multi-AZ ids are DBI resource ids"
    );
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&pool.writer())
        .await
        .unwrap();
    assert!(!in_recovery);
    let reader_in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&pool.reader())
        .await
        .unwrap();
    assert!(reader_in_recovery, "the reader pool must reach the standby");

    let plain = LocalCluster::builder()
        .instances(2)
        .flavour(Flavour::Plain)
        .start()
        .await
        .expect("plain cluster");
    let writer_addr = plain
        .instance_addr("instance-1")
        .expect("instance-1")
        .to_string();
    let url = format!(
        "{}?cluster_id={}",
        plain.instance_url("instance-1").expect("known instance"),
        unique_cluster_id("plain")
    );
    let pool = AuroraPool::connect(&url)
        .await
        .expect("connect to plain pg");
    let topology = pool.topology();
    assert_eq!(topology.dialect(), Dialect::Pg);
    assert_eq!(topology.instances().len(), 1);
    assert_eq!(topology.writer().address().to_string(), writer_addr);
    // Without a reader, `.reader()` falls back to the writer.
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&pool.reader())
        .await
        .unwrap();
    assert_eq!(one, 1);

    // Pointed at a standby, the pg dialect cannot find the primary and says so.
    let url = format!(
        "{}?cluster_id={}",
        plain.instance_url("instance-2").expect("known instance"),
        unique_cluster_id("plain-standby")
    );
    let err = AuroraPool::connect(&url)
        .await
        .expect_err("a standby is not a writer");
    assert!(err.is_topology(), "{err}");
    assert!(err.to_string().contains("standby"), "{err}");
}
