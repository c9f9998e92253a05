//! Integration tests of `testing::LocalCluster` (real PostgreSQL processes).
#![cfg(feature = "testing")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aurora_pool::testing::{Flavour, LocalCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOPOLOGY: &str = "SELECT SERVER_ID, CASE WHEN SESSION_ID OPERATOR(pg_catalog.=) 'MASTER_SESSION_ID' THEN TRUE ELSE FALSE END, \
       CPU, COALESCE(REPLICA_LAG_IN_MSEC, 0), LAST_UPDATE_TIMESTAMP \
FROM pg_catalog.aurora_replica_status() \
WHERE EXTRACT(EPOCH FROM(pg_catalog.NOW() OPERATOR(pg_catalog.-) LAST_UPDATE_TIMESTAMP)) OPERATOR(pg_catalog.<=) 300 \
   OR SESSION_ID OPERATOR(pg_catalog.=) 'MASTER_SESSION_ID' \
   OR LAST_UPDATE_TIMESTAMP IS NULL";
const IS_WRITER: &str = "SELECT SERVER_ID FROM pg_catalog.aurora_replica_status() WHERE SESSION_ID OPERATOR(pg_catalog.=) 'MASTER_SESSION_ID' AND SERVER_ID OPERATOR(pg_catalog.=) pg_catalog.aurora_db_instance_identifier()";
const AURORA_STAT_UTILS: &str = "SELECT (setting OPERATOR(pg_catalog.~~) '%aurora_stat_utils%') AS aurora_stat_utils FROM pg_catalog.pg_settings WHERE name OPERATOR(pg_catalog.=) 'rds.extensions'";

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Runs `sql` with the `psql` client over TCP at `addr` as the given user.
async fn client_psql(
    cluster: &LocalCluster,
    addr: SocketAddr,
    password: &str,
    sql: &str,
) -> Result<String, String> {
    let out = tokio::process::Command::new(cluster.bin_dir().join("psql"))
        .arg(format!(
            "host=127.0.0.1 port={} user={} dbname={} connect_timeout=10",
            addr.port(),
            cluster.user(),
            cluster.database()
        ))
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", password)
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Polls `sql` on `id` until it returns `expected` (10 s bound).
async fn eventually(cluster: &LocalCluster, id: &str, db: &str, sql: &str, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = cluster.psql(id, db, sql).await;
        if got.as_deref() == Ok(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: `{sql}` returned {got:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Topology rows as (server_id, is_writer).
async fn topology(cluster: &LocalCluster, id: &str) -> Vec<(String, bool)> {
    let out = cluster
        .psql(id, cluster.database(), TOPOLOGY)
        .await
        .unwrap();
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            assert_eq!(f.len(), 5, "topology row {l:?}");
            (f[0].to_owned(), f[1] == "t")
        })
        .collect()
}

fn writers(rows: &[(String, bool)]) -> Vec<&str> {
    rows.iter().filter(|r| r.1).map(|r| r.0.as_str()).collect()
}

/// Data dir and postmaster pid of every instance.
async fn postmasters(cluster: &LocalCluster) -> Vec<(PathBuf, u32)> {
    let mut v = Vec::new();
    for id in cluster.instance_ids() {
        let dir = cluster
            .psql(&id, "postgres", "SHOW data_directory")
            .await
            .unwrap();
        let dir = PathBuf::from(dir);
        let pid = std::fs::read_to_string(dir.join("postmaster.pid"))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        v.push((dir, pid));
    }
    v
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next());
            !matches!(state, Some(Some('Z' | 'X')))
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn aurora_cluster_basics_blackhole_and_drop() {
    init_tracing();
    let t = Instant::now();
    let cluster = LocalCluster::start(3).await.unwrap();
    eprintln!("3-instance cluster started in {:?}", t.elapsed());
    assert_eq!(
        cluster.instance_ids(),
        ["instance-1", "instance-2", "instance-3"]
    );
    assert_eq!(cluster.writer_id(), "instance-1");
    let password = cluster.password().to_owned();
    assert!(
        password.len() >= 24 && password.chars().all(|c| c.is_ascii_alphanumeric()),
        "a random password by default"
    );
    assert_ne!(password, "app-password", "no well-known default");
    assert!(!format!("{cluster:?}").contains(&password));
    assert!(cluster.instance_addr("nope").is_none());
    let param = cluster.instance_endpoints_param();
    assert!(param.starts_with("instance-1=127.0.0.1:"), "{param}");
    assert!(
        cluster
            .url()
            .starts_with(&format!("postgres://app:{password}@127.0.0.1:"))
    );
    assert!(
        cluster
            .url()
            .contains("/app?instance_endpoints=instance-1%3D127.0.0.1%3A")
    );

    let db = cluster.database().to_owned();
    for id in cluster.instance_ids() {
        let me = cluster
            .psql(&id, &db, "SELECT pg_catalog.aurora_db_instance_identifier(), pg_catalog.aurora_db_instance_identifier()")
            .await
            .unwrap();
        assert_eq!(me, format!("{id}|{id}"));
        for (sql, want) in [
            ("SELECT 1 FROM pg_catalog.pg_proc LIMIT 1", "1"),
            (AURORA_STAT_UTILS, "t"),
            (
                "SELECT 1 FROM pg_catalog.aurora_replica_status() LIMIT 1",
                "1",
            ),
        ] {
            assert_eq!(
                cluster.psql(&id, &db, sql).await.unwrap(),
                want,
                "{id}: {sql}"
            );
            assert_eq!(
                cluster.psql(&id, "postgres", sql).await.unwrap(),
                want,
                "{id}: {sql}"
            );
        }
        let writer = cluster.psql(&id, &db, IS_WRITER).await.unwrap();
        let recovery = cluster
            .psql(&id, &db, "SELECT pg_catalog.pg_is_in_recovery()")
            .await
            .unwrap();
        if id == "instance-1" {
            assert_eq!(writer, "instance-1");
            assert_eq!(recovery, "f");
        } else {
            assert_eq!(writer, "");
            assert_eq!(recovery, "t");
        }
    }
    let rows = topology(&cluster, "instance-3").await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(writers(&rows), ["instance-1"]);

    // Replication of a write.
    cluster
        .psql(
            "instance-1",
            &db,
            "CREATE TABLE t(x int); INSERT INTO t VALUES (42);",
        )
        .await
        .unwrap();
    for id in ["instance-2", "instance-3"] {
        eventually(&cluster, id, &db, "SELECT x FROM t", "42").await;
    }

    // The app user over TCP through the proxies.
    let pw = cluster.password().to_owned();
    for id in cluster.instance_ids() {
        let addr = cluster.instance_addr(&id).unwrap();
        let who = client_psql(
            &cluster,
            addr,
            &pw,
            "SELECT current_user || '@' || pg_catalog.aurora_db_instance_identifier()",
        )
        .await
        .unwrap();
        assert_eq!(who, format!("app@{id}"));
    }
    let err = client_psql(
        &cluster,
        cluster.instance_addr("instance-2").unwrap(),
        "wrong",
        "SELECT 1",
    )
    .await
    .unwrap_err();
    assert!(err.contains("password authentication failed"), "{err}");
    let via_cluster = client_psql(
        &cluster,
        cluster.cluster_endpoint(),
        &pw,
        "SELECT pg_catalog.aurora_db_instance_identifier()",
    )
    .await
    .unwrap();
    assert_eq!(via_cluster, "instance-1");

    // Black-holing an existing connection (raw protocol): the SSL request is
    // answered before, the startup message is never answered after, and the
    // socket is not closed.
    let mut raw = tokio::net::TcpStream::connect(cluster.instance_addr("instance-2").unwrap())
        .await
        .unwrap();
    raw.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await.unwrap();
    let mut byte = [0u8; 1];
    raw.read_exact(&mut byte).await.unwrap();
    assert_eq!(byte[0], b'N');
    assert!(cluster.blackhole("instance-2", true));
    let body = b"\0\x03\0\0user\0app\0database\0app\0\0";
    let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    startup.extend_from_slice(body);
    raw.write_all(&startup).await.unwrap();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(1), raw.read(&mut buf)).await;
    assert!(r.is_err(), "black-holed connection answered: {r:?}");

    // Black-holing: connects hang, the direct port still works.
    let t0 = Instant::now();
    let hung = tokio::time::timeout(
        Duration::from_secs(2),
        client_psql(
            &cluster,
            cluster.instance_addr("instance-2").unwrap(),
            &pw,
            "SELECT 1",
        ),
    )
    .await;
    assert!(
        hung.is_err(),
        "connect through a black-holed proxy completed: {hung:?}"
    );
    assert!(t0.elapsed() >= Duration::from_secs(2));
    assert_eq!(
        cluster.psql("instance-2", &db, "SELECT 1").await.unwrap(),
        "1"
    );
    assert!(cluster.blackhole("instance-2", false));
    assert_eq!(
        client_psql(
            &cluster,
            cluster.instance_addr("instance-2").unwrap(),
            &pw,
            "SELECT 2"
        )
        .await
        .unwrap(),
        "2"
    );
    assert!(!cluster.blackhole("instance-9", true));
    // A connection that was open while black-holed stays dead.
    let r = tokio::time::timeout(Duration::from_millis(500), raw.read(&mut buf)).await;
    assert!(r.is_err(), "old connection revived: {r:?}");
    drop(raw);

    // Crash / start an instance.
    cluster.crash("instance-3").await.unwrap();
    assert!(cluster.psql("instance-3", &db, "SELECT 1").await.is_err());
    cluster.start_instance("instance-3").await.unwrap();
    eventually(&cluster, "instance-3", &db, "SELECT x FROM t", "42").await;

    // Drop removes every process and the temp dir.
    let pms = postmasters(&cluster).await;
    let root = pms[0].0.parent().unwrap().to_owned();
    assert!(root.is_dir());
    assert!(pms.iter().all(|(_, pid)| alive(*pid)));
    drop(cluster);
    for (_, pid) in &pms {
        assert!(!alive(*pid), "postmaster {pid} still running after drop");
    }
    assert!(!root.exists(), "{} still exists", root.display());
}

#[tokio::test]
async fn aurora_failover_and_rejoin() {
    init_tracing();
    let cluster = LocalCluster::start(3).await.unwrap();
    let db = cluster.database().to_owned();
    let pw = cluster.password().to_owned();
    cluster
        .psql(
            "instance-1",
            &db,
            "CREATE TABLE f(x int); INSERT INTO f VALUES (1);",
        )
        .await
        .unwrap();
    let t = Instant::now();
    cluster
        .failover("instance-2", Some(Duration::from_millis(300)))
        .await
        .unwrap();
    eprintln!("failover took {:?}", t.elapsed());
    assert_eq!(cluster.writer_id(), "instance-2");
    for id in ["instance-2", "instance-3"] {
        let rows = topology(&cluster, id).await;
        assert_eq!(rows.len(), 3, "{id}: {rows:?}");
        assert_eq!(writers(&rows), ["instance-2"], "{id}: {rows:?}");
    }
    assert_eq!(
        cluster.psql("instance-2", &db, IS_WRITER).await.unwrap(),
        "instance-2"
    );
    assert_eq!(
        cluster.psql("instance-3", &db, IS_WRITER).await.unwrap(),
        ""
    );
    cluster
        .psql("instance-2", &db, "INSERT INTO f VALUES (2);")
        .await
        .unwrap();
    eventually(&cluster, "instance-3", &db, "SELECT sum(x) FROM f", "3").await;
    let via_cluster = client_psql(
        &cluster,
        cluster.cluster_endpoint(),
        &pw,
        "SELECT pg_catalog.aurora_db_instance_identifier()",
    )
    .await
    .unwrap();
    assert_eq!(via_cluster, "instance-2");

    // Stale DNS: the cluster endpoint can be aimed elsewhere.
    assert!(cluster.point_cluster_endpoint("instance-3"));
    let via_cluster = client_psql(
        &cluster,
        cluster.cluster_endpoint(),
        &pw,
        "SELECT pg_catalog.aurora_db_instance_identifier()",
    )
    .await
    .unwrap();
    assert_eq!(via_cluster, "instance-3");

    // The old writer comes back as a reader of the new primary.
    assert!(cluster.wait_rejoined("instance-3").await.is_err());
    cluster.wait_rejoined("instance-1").await.unwrap();
    assert_eq!(
        cluster
            .psql("instance-1", &db, "SELECT pg_catalog.pg_is_in_recovery()")
            .await
            .unwrap(),
        "t"
    );
    eventually(&cluster, "instance-1", &db, "SELECT sum(x) FROM f", "3").await;
    let rows = topology(&cluster, "instance-1").await;
    assert_eq!(writers(&rows), ["instance-2"], "{rows:?}");
    assert_eq!(
        cluster.psql("instance-1", &db, IS_WRITER).await.unwrap(),
        ""
    );
    cluster
        .psql("instance-2", &db, "INSERT INTO f VALUES (3);")
        .await
        .unwrap();
    eventually(&cluster, "instance-1", &db, "SELECT sum(x) FROM f", "6").await;
}

#[tokio::test]
async fn rds_multi_az_flavour() {
    init_tracing();
    let cluster = LocalCluster::builder()
        .instances(2)
        .flavour(Flavour::RdsMultiAz)
        .user("rds_user")
        .password("p@ss w'rd")
        .database("rdsdb")
        .start()
        .await
        .unwrap();
    let db = cluster.database().to_owned();
    let source = "SELECT multi_az_db_cluster_source_dbi_resource_id FROM rds_tools.multi_az_db_cluster_source_dbi_resource_id()";
    let not_writer = "SELECT multi_az_db_cluster_source_dbi_resource_id FROM rds_tools.multi_az_db_cluster_source_dbi_resource_id() WHERE multi_az_db_cluster_source_dbi_resource_id OPERATOR(pg_catalog.!=) (SELECT dbi_resource_id FROM rds_tools.dbi_resource_id())";
    let me = "SELECT id, SUBSTRING(endpoint FROM 0 FOR POSITION('.' IN endpoint)) FROM rds_tools.show_topology() WHERE id OPERATOR(pg_catalog.=) rds_tools.dbi_resource_id()";
    let p1 = cluster.instance_addr("instance-1").unwrap().port();
    let p2 = cluster.instance_addr("instance-2").unwrap().port();
    for id in ["instance-1", "instance-2"] {
        assert_eq!(cluster.psql(id, &db, source).await.unwrap(), "1000000001");
        let topo = cluster
            .psql(
                id,
                &db,
                "SELECT id, endpoint, port FROM rds_tools.show_topology('aws_jdbc_driver-1')",
            )
            .await
            .unwrap();
        assert_eq!(
            topo,
            format!(
                "1000000001|instance-1.local.us-east-1.rds.amazonaws.com|{p1}\n1000000002|instance-2.local.us-east-1.rds.amazonaws.com|{p2}"
            )
        );
        assert_eq!(cluster.psql(id, &db, AURORA_STAT_UTILS).await.unwrap(), "f");
        assert!(
            cluster
                .psql(id, &db, "SELECT pg_catalog.aurora_replica_status()")
                .await
                .is_err()
        );
    }
    assert_eq!(
        cluster.psql("instance-1", &db, not_writer).await.unwrap(),
        ""
    );
    assert_eq!(
        cluster.psql("instance-2", &db, not_writer).await.unwrap(),
        "1000000001"
    );
    assert_eq!(
        cluster.psql("instance-1", &db, me).await.unwrap(),
        "1000000001|instance-1"
    );
    assert_eq!(
        cluster.psql("instance-2", &db, me).await.unwrap(),
        "1000000002|instance-2"
    );
    // The custom login works, with URL encoding of the odd password.
    let who = client_psql(
        &cluster,
        cluster.instance_addr("instance-2").unwrap(),
        "p@ss w'rd",
        "SELECT current_user",
    )
    .await
    .unwrap();
    assert_eq!(who, "rds_user");
    assert!(
        cluster
            .url()
            .starts_with("postgres://rds_user:p%40ss%20w%27rd@127.0.0.1:")
    );
    // After failover the new writer is the source.
    cluster.failover("instance-2", None).await.unwrap();
    assert_eq!(
        cluster.psql("instance-2", &db, source).await.unwrap(),
        "1000000002"
    );
    assert_eq!(
        cluster.psql("instance-2", &db, not_writer).await.unwrap(),
        ""
    );
}

#[tokio::test]
async fn plain_flavour_single_instance() {
    init_tracing();
    let cluster = LocalCluster::builder()
        .instances(1)
        .flavour(Flavour::Plain)
        .start()
        .await
        .unwrap();
    let db = cluster.database().to_owned();
    assert!(cluster.ca_cert_path().is_none(), "TLS is off by default");
    assert_eq!(
        cluster
            .psql("instance-1", &db, "SELECT pg_catalog.pg_is_in_recovery()")
            .await
            .unwrap(),
        "f"
    );
    assert!(
        cluster
            .psql(
                "instance-1",
                &db,
                "SELECT pg_catalog.aurora_db_instance_identifier()"
            )
            .await
            .is_err()
    );
    assert_eq!(
        cluster
            .psql("instance-1", &db, AURORA_STAT_UTILS)
            .await
            .unwrap(),
        ""
    );
    let err = LocalCluster::builder()
        .instances(0)
        .start()
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("at least 1"), "{err}");
}

/// A spare instance's port stays held until it is added, so that nothing else (another
/// cluster, an outgoing connection's local port) takes it in between; then its server
/// listens there.
#[tokio::test]
async fn a_spare_keeps_its_port_until_added() {
    init_tracing();
    let cluster = LocalCluster::builder()
        .instances(1)
        .spare_instances(1)
        .start()
        .await
        .expect("cluster");
    let port = cluster.direct_addr("instance-2").expect("spare");
    assert!(
        std::net::TcpListener::bind(port).is_err(),
        "the spare's port {port} was free for anyone to take"
    );
    cluster.add_instance("instance-2").await.expect("add");
    tokio::net::TcpStream::connect(port)
        .await
        .expect("the added instance listens on its port");
}

/// The superuser (trusted by the cluster's tooling) is reachable only through the unix
/// socket in the cluster's private directory: over TCP, directly or through an instance
/// endpoint, `postgres` without a password is refused.
#[tokio::test]
async fn the_superuser_is_not_reachable_over_tcp() {
    use sqlx::Connection;
    init_tracing();
    let cluster = LocalCluster::start(1).await.expect("cluster");
    let addresses = [
        cluster.direct_addr("instance-1").expect("direct"),
        cluster.instance_addr("instance-1").expect("proxy"),
    ];
    for address in addresses {
        let url = format!("postgres://postgres@{address}/postgres?sslmode=disable");
        let refused =
            tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(&url))
                .await
                .expect("an answer")
                .map(|_| ())
                .expect_err("the superuser logged in over TCP");
        let code = refused
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        // No pg_hba entry trusts it, and it has no password to give.
        assert!(
            matches!(code.as_deref(), Some("28000" | "28P01")),
            "{address}: {refused}"
        );
    }
    // The cluster's own tooling still works (through the socket).
    cluster
        .psql("instance-1", "postgres", "SELECT 1")
        .await
        .expect("psql through the socket");
}

/// Set in the child process of [`a_cluster_left_by_a_killed_run_is_removed_at_the_next_start`].
const ORPHAN_CHILD: &str = "AURORA_POOL_TEST_ORPHAN_CHILD";

/// A test run killed by a signal never drops its clusters: the next `start` in any process
/// stops their servers and removes their directories. The test runs itself as a child that
/// starts a cluster, prints its data directory and aborts (no destructor runs).
#[tokio::test]
async fn a_cluster_left_by_a_killed_run_is_removed_at_the_next_start() {
    init_tracing();
    if std::env::var_os(ORPHAN_CHILD).is_some() {
        let cluster = LocalCluster::start(1).await.unwrap();
        let data = cluster
            .psql("instance-1", "postgres", "SHOW data_directory")
            .await
            .unwrap();
        println!("DATA_DIRECTORY={data}");
        std::process::abort();
    }
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_cluster_left_by_a_killed_run_is_removed_at_the_next_start",
            "--nocapture",
        ])
        .env(ORPHAN_CHILD, "1")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .expect("the child ends")
        .expect("the child runs");
    assert!(!out.status.success(), "the child aborts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let data = PathBuf::from(
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("DATA_DIRECTORY="))
            .unwrap_or_else(|| panic!("no data directory in {stdout}")),
    );
    let pid: i32 = std::fs::read_to_string(data.join("postmaster.pid"))
        .expect("the orphan's postmaster.pid")
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("a pid");
    let alive = |pid: i32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    assert!(alive(pid), "the orphan's server outlived its owner");

    let cluster = LocalCluster::start(1).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!alive(pid), "the orphan's server was stopped");
    assert!(!data.exists(), "the orphan's directory was removed");
    drop(cluster);
}

/// The README's test pattern twice in one process, at once: `cluster.url()` carries a
/// cluster id of its own, so the two pools (default settings otherwise) do not meet in the
/// process-wide monitor registry, and each follows its own cluster.
#[cfg(feature = "sqlx")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_in_one_process_need_no_cluster_id() {
    let (a, b) = tokio::join!(LocalCluster::start(2), LocalCluster::start(2));
    let (a, b) = (a.expect("cluster a"), b.expect("cluster b"));
    assert_ne!(a.cluster_id(), b.cluster_id());
    let first = aurora_pool::AuroraPool::connect(&a.url())
        .await
        .expect("a pool on the first cluster");
    let second = aurora_pool::AuroraPool::connect(&b.url())
        .await
        .expect("a pool on the second cluster, while the first is open");
    for (pool, cluster) in [(&first, &a), (&second, &b)] {
        let port: String = sqlx::query_scalar("SELECT pg_catalog.current_setting('port')")
            .fetch_one(&pool.writer())
            .await
            .expect("a write");
        let writer = cluster.direct_addr("instance-1").expect("writer");
        assert_eq!(
            port,
            writer.port().to_string(),
            "a pool reached the other cluster"
        );
    }
    first.close().await;
    second.close().await;
}

/// A replica that received WAL the promoted one did not (written while the promoted one's
/// stream was down, as what a crashed writer logged last can reach some replicas only) is
/// not rebuilt: the promoted one streams it from that replica first, keeps it, and the other
/// replica follows the new writer without a restart (its connections intact).
#[tokio::test]
async fn a_promotion_first_takes_what_another_replica_received() {
    init_tracing();
    let cluster = LocalCluster::start(3).await.expect("cluster");
    let db = cluster.database().to_owned();
    cluster
        .psql("instance-1", &db, "CREATE TABLE ahead (n int)")
        .await
        .expect("table");
    for id in ["instance-2", "instance-3"] {
        eventually(
            &cluster,
            id,
            &db,
            "SELECT to_regclass('ahead') IS NOT NULL",
            "t",
        )
        .await;
    }
    cluster
        .psql(
            "instance-2",
            "postgres",
            "ALTER SYSTEM SET primary_conninfo = ''; SELECT pg_catalog.pg_reload_conf();",
        )
        .await
        .expect("stop instance-2's stream");
    eventually(
        &cluster,
        "instance-2",
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_stat_wal_receiver",
        "0",
    )
    .await;
    cluster
        .psql("instance-1", &db, "INSERT INTO ahead VALUES (1)")
        .await
        .expect("insert");
    eventually(
        &cluster,
        "instance-3",
        &db,
        "SELECT count(*) FROM ahead",
        "1",
    )
    .await;
    let started = "SELECT pg_catalog.pg_postmaster_start_time()";
    let instance_3_started = cluster
        .psql("instance-3", "postgres", started)
        .await
        .expect("start time");

    cluster.crash("instance-1").await.expect("crash");
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    assert_eq!(
        cluster
            .psql("instance-2", &db, "SELECT count(*) FROM ahead")
            .await
            .expect("count")
            .trim(),
        "1",
        "the promoted instance lacks what instance-3 had received"
    );
    assert_eq!(
        cluster
            .psql("instance-3", "postgres", started)
            .await
            .expect("start time"),
        instance_3_started,
        "instance-3 was rebuilt"
    );
    eventually(
        &cluster,
        "instance-3",
        "postgres",
        "SELECT count(*) FROM pg_catalog.pg_stat_wal_receiver WHERE status = 'streaming'",
        "1",
    )
    .await;
}
