//! Bad URLs, parameters and credentials fail early with errors that say what is wrong.

mod support;

use aurora_pool::AuroraPool;
use aurora_pool::testing::LocalCluster;
use support::unique_cluster_id;

#[tokio::test]
async fn malformed_urls_and_parameters_fail_before_connecting() {
    let cases = [
        ("postgres://app@127.0.0.1:1/app?cluster_id=", "cluster_id"),
        ("postgres://app@127.0.0.1:1/app?clusterid=x", "clusterid"),
        ("postgres://app@127.0.0.1:1/app?sslmode=maybe", "sslmode"),
        (
            "postgres://app@127.0.0.1:1/app?reader_host_selector_strategy=fastest",
            "reader_host_selector_strategy",
        ),
        (
            "postgres://app@127.0.0.1:1/app?writer_max_connections=0",
            "writer_max_connections",
        ),
        (
            "postgres://app@127.0.0.1:1/app?cluster_instance_host_pattern=no-placeholder.example.com",
            "cluster_instance_host_pattern",
        ),
        ("mysql://app@127.0.0.1/app", "url"),
        ("postgres:///app", "url"),
        // Durations that would overflow a deadline are refused, naming the parameter.
        (
            "postgres://app@127.0.0.1:1/app?connect_timeout=18446744073709551615",
            "connect_timeout",
        ),
        (
            "postgres://app@127.0.0.1:1/app?failover_timeout_ms=18446744073709551615",
            "failover_timeout_ms",
        ),
        (
            "postgres://app@127.0.0.1:1/app?failure_detection_interval_ms=86400001",
            "failure_detection_interval_ms",
        ),
        (
            "postgres://app@127.0.0.1:1/app?max_lifetime_ms=18446744073709551615",
            "max_lifetime_ms",
        ),
    ];
    for (url, parameter) in cases {
        let err = AuroraPool::connect(url).await.expect_err(url);
        assert!(err.is_config(), "{url}: {err}");
        assert_eq!(err.parameter(), Some(parameter), "{url}: {err}");
        assert!(format!("{err:#}").contains(parameter), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_problems_are_reported_clearly() {
    let cluster = LocalCluster::start(2).await.expect("cluster");

    // Nothing listens on port 1.
    let err = AuroraPool::connect(&format!(
        "postgres://app:pw@127.0.0.1:1/app?cluster_id={}",
        unique_cluster_id("refused")
    ))
    .await
    .expect_err("refused");
    assert!(err.is_connect(), "{err}");
    assert!(format!("{err:#}").contains("127.0.0.1:1"), "{err}");

    // A wrong password: a login error with its SQLSTATE, and the password nowhere.
    let wrong = format!(
        "postgres://{}:not-the-password@{}/{}?cluster_id={}",
        cluster.user(),
        cluster.cluster_endpoint(),
        cluster.database(),
        unique_cluster_id("wrong-password")
    );
    let err = AuroraPool::connect(&wrong)
        .await
        .expect_err("wrong password");
    assert!(err.is_connect(), "{err}");
    assert_eq!(err.sqlstate(), Some("28P01"), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("not-the-password"));

    // An IP address with an Aurora topology behind it, but no way to address the instances.
    let url = format!(
        "{}?cluster_id={}",
        cluster.instance_url("instance-1").expect("known instance"),
        unique_cluster_id("no-pattern")
    );
    let err = AuroraPool::connect(&url)
        .await
        .expect_err("no instance addressing");
    assert_eq!(
        err.parameter(),
        Some("cluster_instance_host_pattern"),
        "{err}"
    );
    assert!(format!("{err:#}").contains("instance_endpoints"), "{err}");
    assert!(!format!("{err:#}").contains(cluster.password()), "{err}");
}

/// Driver parameters the deadpool flavour cannot honour are refused by name before any
/// connection is made, not ignored.
#[cfg(feature = "deadpool")]
#[tokio::test]
async fn the_deadpool_flavour_refuses_what_it_cannot_honour() {
    let base = "postgres://app:pw@127.0.0.1:1/app?cluster_id=deadpool-refusals";
    for (parameter, value) in [
        ("sslcert", "/etc/client.pem"),
        ("sslkey", "/etc/client.key"),
        ("statement-cache-capacity", "100"),
    ] {
        let err =
            aurora_pool::deadpool::AuroraPool::connect(&format!("{base}&{parameter}={value}"))
                .await
                .expect_err(parameter);
        assert!(err.is_config(), "{err}");
        assert_eq!(err.parameter(), Some(parameter), "{err}");
        assert!(format!("{err:#}").contains("deadpool flavour"), "{err}");
    }
}
