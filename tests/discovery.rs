//! Topology discovery: from the cluster endpoint, from an instance endpoint, through stale
//! DNS, and per dialect.

mod support;

use aurora_pool::testing::{Flavour as ClusterKind, LocalCluster};
use aurora_pool::{Config, Dialect, Role};
use support::flavour::{Flavour, flavour_tests};
use support::{unique_cluster_id, url_with};

async fn connect<F: Flavour>(url: &str) -> aurora_pool::Result<F> {
    F::connect_with(Config::from_url(url)?).await
}

const IN_RECOVERY: &str = "SELECT pg_catalog.pg_is_in_recovery()::text";

fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

async fn discovers_the_cluster_from_the_cluster_endpoint_and_from_an_instance<F: Flavour>(
    test: &str,
) {
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let id = unique_cluster_id(test);
    let pool: F = connect(&url_with(&cluster, &format!("cluster_id={id}")))
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
    assert_eq!(F::served_by(&pool.handle(Role::Writer)).await, "instance-1");

    // The driver's own URL parameters reach every instance connection.
    let url = url_with(
        &cluster,
        &format!(
            "cluster_id={}&sslmode=disable&application_name=discovery-test&options=-c%20statement_timeout%3D1234",
            unique_cluster_id(&format!("{test}-parameters"))
        ),
    );
    let with_parameters: F = connect(&url).await.expect("connect with parameters");
    for role in [Role::Writer, Role::Reader] {
        let settings = F::handle_text(
            &with_parameters.handle(role),
            "SELECT current_setting('statement_timeout') || ' ' || current_setting('application_name')",
        )
        .await
        .expect("settings");
        assert_eq!(settings, "1234ms discovery-test");
    }
    with_parameters.close().await;

    // The same cluster discovered through a reader's instance endpoint.
    let other_id = unique_cluster_id(&format!("{test}-instance"));
    let url = format!(
        "{}?cluster_id={other_id}&instance_endpoints={}",
        cluster.instance_url("instance-3").expect("known instance"),
        encode(&cluster.instance_endpoints_param())
    );
    let from_reader: F = connect(&url).await.expect("connect through instance-3");
    assert_eq!(from_reader.topology().writer().id(), "instance-1");
    assert_eq!(
        F::served_by(&from_reader.handle(Role::Writer)).await,
        "instance-1"
    );
    let in_recovery = from_reader.query_text(Role::Writer, IN_RECOVERY).await;
    assert_eq!(
        in_recovery.expect("writer checkout"),
        "false",
        "the writer checkout reached a standby"
    );
    from_reader.close().await;
    pool.close().await;
}

async fn stale_cluster_dns_does_not_misroute_writes<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    // The "cluster endpoint" now resolves to the replica, as DNS does for a while after a
    // failover.
    cluster.point_cluster_endpoint("instance-2");
    let pool: F = connect(&url_with(
        &cluster,
        &format!("cluster_id={}", unique_cluster_id(test)),
    ))
    .await
    .expect("connect");
    assert_eq!(pool.topology().writer().id(), "instance-1");
    for _ in 0..5 {
        assert_eq!(F::served_by(&pool.handle(Role::Writer)).await, "instance-1");
    }
    pool.close().await;
}

async fn detects_rds_multi_az_and_plain_postgres<F: Flavour>(test: &str) {
    let multi_az = LocalCluster::builder()
        .instances(2)
        .flavour(ClusterKind::RdsMultiAz)
        .start()
        .await
        .expect("multi-az cluster");
    let pool: F = connect(&url_with(
        &multi_az,
        &format!(
            "cluster_id={}",
            unique_cluster_id(&format!("{test}-multi-az"))
        ),
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
    let in_recovery = F::handle_text(&pool.handle(Role::Writer), IN_RECOVERY).await;
    assert_eq!(in_recovery.expect("writer"), "false");
    let reader_in_recovery = F::handle_text(&pool.handle(Role::Reader), IN_RECOVERY).await;
    assert_eq!(
        reader_in_recovery.expect("reader"),
        "true",
        "the reader pool must reach the standby"
    );
    pool.close().await;

    let plain = LocalCluster::builder()
        .instances(2)
        .flavour(ClusterKind::Plain)
        .start()
        .await
        .expect("plain cluster");
    let writer_addr = plain
        .instance_addr("instance-1")
        .expect("instance-1")
        .to_string();
    // The client role owns its database, so it may create a schema named `rds_tools` with
    // the functions the Multi-AZ dialect reads: they must not steer the pool to the hosts
    // they name (only a superuser's `rds_tools` counts, as `rdsadmin`'s on RDS).
    let fake = format!(
        "SET ROLE \"{}\";\
         CREATE SCHEMA rds_tools;\
         CREATE FUNCTION rds_tools.multi_az_db_cluster_source_dbi_resource_id() \
           RETURNS TABLE(multi_az_db_cluster_source_dbi_resource_id text) \
           LANGUAGE sql AS $$ SELECT 'db-fake' $$;\
         CREATE FUNCTION rds_tools.dbi_resource_id() RETURNS text \
           LANGUAGE sql AS $$ SELECT 'db-other' $$;\
         CREATE FUNCTION rds_tools.show_topology(text DEFAULT '') \
           RETURNS TABLE(id text, endpoint text, port integer) \
           LANGUAGE sql AS $$ SELECT 'db-fake', 'attacker.example', 5432 $$;",
        plain.user()
    );
    plain
        .psql("instance-1", plain.database(), &fake)
        .await
        .expect("the client role's own rds_tools");
    let url = format!(
        "{}?cluster_id={}",
        plain.instance_url("instance-1").expect("known instance"),
        unique_cluster_id(&format!("{test}-plain"))
    );
    let pool: F = connect(&url).await.expect("connect to plain pg");
    let topology = pool.topology();
    assert_eq!(topology.dialect(), Dialect::Pg);
    assert_eq!(topology.instances().len(), 1);
    assert_eq!(topology.writer().address().to_string(), writer_addr);
    // Without a reader, `.reader()` falls back to the writer.
    let one = F::handle_text(&pool.handle(Role::Reader), "SELECT '1'").await;
    assert_eq!(one.expect("read"), "1");
    pool.close().await;

    // Pointed at a standby, the pg dialect cannot find the primary and says so.
    let url = format!(
        "{}?cluster_id={}",
        plain.instance_url("instance-2").expect("known instance"),
        unique_cluster_id(&format!("{test}-plain-standby"))
    );
    let err = connect::<F>(&url)
        .await
        .expect_err("a standby is not a writer");
    assert!(err.is_topology(), "{err}");
    assert!(format!("{err:#}").contains("standby"), "{err}");
}

/// A catalog row whose instance id is not one DNS label (here `x.attacker.example`, which
/// the host pattern would turn into a host of that domain) is skipped, at discovery and at
/// every poll: no pool, no probe, no connection, and the rest of the topology is used.
async fn a_catalog_row_that_names_another_host_is_skipped<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    cluster
        .psql(
            "instance-1",
            cluster.database(),
            "INSERT INTO aurora_emul.instances VALUES ('x.attacker.example', false, '1000000099', 1, NULL)",
        )
        .await
        .expect("a hostile row");
    let id = unique_cluster_id(test);
    let pool: F = connect(&url_with(
        &cluster,
        &format!(
            "cluster_id={id}&cluster_instance_host_pattern={}&cluster_topology_refresh_rate_ms=200",
            encode("?.db.example.com")
        ),
    ))
    .await
    .expect("connect: the hostile row is skipped, not fatal");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let topology = pool.topology();
    let ids: Vec<_> = topology
        .instances()
        .iter()
        .map(|i| i.id().to_owned())
        .collect();
    assert_eq!(ids, ["instance-1", "instance-2"], "{topology}");
    assert!(
        pool.status()
            .instances
            .iter()
            .all(|i| !i.address.contains("attacker")),
        "{:?}",
        pool.status()
    );
    let served = pool
        .instance_id(Role::Writer)
        .await
        .expect("writes still work");
    assert_eq!(served, "instance-1");
    pool.close().await;
}

/// An Aurora detection query that fails for a reason that says nothing about the dialect (a
/// full server, 53300) fails the connect with that error, instead of settling for plain
/// `pg` (no readers, no failover) for the pool's whole life.
async fn a_transient_error_in_dialect_detection_is_not_a_dialect<F: Flavour>(test: &str) {
    let cluster = LocalCluster::start(2).await.expect("cluster");
    cluster
        .psql(
            "instance-1",
            cluster.database(),
            "CREATE OR REPLACE FUNCTION pg_catalog.aurora_replica_status() \
             RETURNS TABLE(server_id text, session_id text, cpu double precision, \
                           replica_lag_in_msec double precision, last_update_timestamp timestamp with time zone) \
             LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'busy' USING ERRCODE = '53300'; END $$",
        )
        .await
        .expect("a failing catalog function");
    let id = unique_cluster_id(test);
    let result: aurora_pool::Result<F> =
        connect(&url_with(&cluster, &format!("cluster_id={id}"))).await;
    match result {
        Ok(pool) => panic!(
            "connected with dialect {} and topology {}",
            pool.topology().dialect(),
            pool.topology()
        ),
        Err(err) => {
            assert!(err.is_topology(), "{err}");
            assert_eq!(err.sqlstate(), Some("53300"), "{err}");
        }
    }
}

/// An RDS Proxy endpoint (the host name says so; `hostaddr` reaches the emulated cluster's
/// endpoint, which follows the writer as a proxy does): the pool connects through it only,
/// with the default settings. No instance of the catalog is reached directly, no monitor or
/// probe connects, `status()` says so, and after a failover the proxy's new connections
/// reach the new writer.
async fn an_rds_proxy_endpoint_is_used_as_it_is<F: Flavour>(test: &str) {
    let cluster = std::sync::Arc::new(LocalCluster::start(3).await.expect("cluster"));
    let cluster_id = unique_cluster_id(test);
    let url = format!(
        "postgres://{}:{}@orders.proxy-abc123.us-east-1.rds.amazonaws.com:{}/{}?hostaddr=127.0.0.1&cluster_id={cluster_id}",
        cluster.user(),
        cluster.password(),
        cluster.cluster_endpoint().port(),
        cluster.database(),
    );
    let pool = F::connect_with(Config::from_url(&url).expect("config"))
        .await
        .expect("connect through the proxy");
    assert!(pool.config().is_rds_proxy());
    let status = pool.status();
    assert!(status.through_proxy, "{status:?}");
    assert_eq!(status.instances.len(), 1, "{status:?}");
    let topology = pool.topology();
    assert_eq!(topology.instances().len(), 1, "{topology}");
    assert_eq!(
        topology.writer().address().to_string(),
        format!("127.0.0.1:{}", cluster.cluster_endpoint().port())
    );
    assert_eq!(F::served_by(&pool.handle(Role::Writer)).await, "instance-1");
    assert_eq!(F::served_by(&pool.handle(Role::Reader)).await, "instance-1");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    for id in cluster.instance_ids() {
        for purpose in ["aurora-pool-monitor", "aurora-pool-probe"] {
            let open =
                support::connections_named(&cluster, &id, &format!("{purpose}:{cluster_id}")).await;
            assert_eq!(open, 0, "{purpose} connections on {id} through a proxy");
        }
    }
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    let moved = support::eventually(std::time::Duration::from_secs(15), || async {
        pool.run_text(
            Role::Writer,
            "SELECT pg_catalog.aurora_db_instance_identifier()",
        )
        .await
        .is_ok_and(|id| id == "instance-2")
    })
    .await;
    assert!(moved, "no write reached the new writer through the proxy");
    pool.close().await;
}

flavour_tests!(
    an_rds_proxy_endpoint_is_used_as_it_is,
    a_transient_error_in_dialect_detection_is_not_a_dialect,
    a_catalog_row_that_names_another_host_is_skipped,
    discovers_the_cluster_from_the_cluster_endpoint_and_from_an_instance,
    stale_cluster_dns_does_not_misroute_writes,
    detects_rds_multi_az_and_plain_postgres,
);
