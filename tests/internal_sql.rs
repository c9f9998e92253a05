//! The crate's own SQL cannot be hijacked through `search_path` (#24, item 1), both
//! flavours, default settings: with the application role's `search_path` set to
//! `public, pg_catalog` and functions, operators and a `text` domain planted in `public`
//! under the names the crate's queries use, discovery, probes, transactions (the id read, a
//! lost COMMIT's resolution) and a failover run on an Aurora and an RDS Multi-AZ cluster
//! (the statements of the other dialects are checked by a unit test in `topology::dialect`),
//! and nothing planted is ever called.

mod support;

use std::time::Duration;

use aurora_pool::testing::{CutAt, Flavour as ClusterKind, LocalCluster};
use aurora_pool::{Role, TransactionOptions};
use support::flavour::{Flavour, connect, flavour_tests};

/// Shadows in `public`, each recording its call (on the writer) or failing loudly (on a
/// replica, where nothing can be recorded): the functions the crate calls, the operators
/// it compares with, and a `text` domain whose check runs on every cast to `text`.
const PLANT: &str = r#"
CREATE TABLE public.hijacked (what text);
GRANT ALL ON public.hijacked TO PUBLIC;
CREATE FUNCTION public.hijack(what text) RETURNS boolean LANGUAGE plpgsql
  SET search_path = pg_catalog AS $$
BEGIN
  IF pg_catalog.pg_is_in_recovery() THEN
    RAISE EXCEPTION 'hijacked on a replica: %', what;
  END IF;
  INSERT INTO public.hijacked VALUES (what);
  RETURN true;
END $$;
CREATE FUNCTION public.pg_is_in_recovery() RETURNS boolean LANGUAGE sql
  AS $$ SELECT public.hijack('pg_is_in_recovery') AND pg_catalog.pg_is_in_recovery() $$;
CREATE FUNCTION public.txid_current_if_assigned() RETURNS bigint LANGUAGE sql
  AS $$ SELECT CASE WHEN public.hijack('txid_current_if_assigned') THEN pg_catalog.txid_current_if_assigned() END $$;
CREATE FUNCTION public.txid_status(bigint) RETURNS text LANGUAGE sql
  AS $$ SELECT CASE WHEN public.hijack('txid_status') THEN pg_catalog.txid_status($1) END $$;
CREATE FUNCTION public.pg_postmaster_start_time() RETURNS timestamptz LANGUAGE sql
  AS $$ SELECT CASE WHEN public.hijack('pg_postmaster_start_time') THEN pg_catalog.pg_postmaster_start_time() END $$;
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql
  AS $$ SELECT CASE WHEN public.hijack('now') THEN pg_catalog.now() END $$;
CREATE FUNCTION public.text_eq(a text, b text) RETURNS boolean LANGUAGE sql
  AS $$ SELECT public.hijack('=') AND pg_catalog.texteq(a, b) $$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.text_eq);
CREATE FUNCTION public.text_like(a text, b text) RETURNS boolean LANGUAGE sql
  AS $$ SELECT public.hijack('~~') AND pg_catalog.textlike(a, b) $$;
CREATE OPERATOR public.~~ (LEFTARG = text, RIGHTARG = text, FUNCTION = public.text_like);
CREATE DOMAIN public.text AS pg_catalog.text CHECK (public.hijack('::text'));
"#;

/// The shadows of Aurora's own functions, on an Aurora cluster.
const AURORA_PLANT: &str = r#"
CREATE FUNCTION public.aurora_replica_status()
  RETURNS TABLE(server_id text, session_id text, cpu double precision,
                replica_lag_in_msec double precision, last_update_timestamp timestamptz)
  LANGUAGE sql AS $$ SELECT * FROM pg_catalog.aurora_replica_status() WHERE public.hijack('aurora_replica_status') $$;
CREATE FUNCTION public.aurora_db_instance_identifier() RETURNS text LANGUAGE sql
  AS $$ SELECT CASE WHEN public.hijack('aurora_db_instance_identifier') THEN pg_catalog.aurora_db_instance_identifier() END $$;
"#;

/// What the planted objects recorded, on the writer.
async fn hijacked(cluster: &LocalCluster) -> String {
    cluster
        .psql(
            &cluster.writer_id(),
            cluster.database(),
            "SELECT pg_catalog.string_agg(what, ', ') FROM public.hijacked",
        )
        .await
        .expect("hijacked")
}

async fn nothing_planted_is_called_on<F: Flavour>(test: &str, kind: ClusterKind) {
    let cluster = LocalCluster::builder()
        .instances(3)
        .flavour(kind)
        .start()
        .await
        .expect("cluster");
    let plant = match kind {
        ClusterKind::Aurora => format!("{PLANT}{AURORA_PLANT}"),
        _ => PLANT.to_owned(),
    };
    cluster
        .psql("instance-1", cluster.database(), &plant)
        .await
        .expect("plant");
    let path = format!(
        "CREATE TABLE sql_t (n int); GRANT ALL ON sql_t TO PUBLIC; \
         ALTER ROLE {} SET search_path = public, pg_catalog",
        cluster.user()
    );
    cluster
        .psql("instance-1", cluster.database(), &path)
        .await
        .expect("search_path");
    support::replicated(&cluster, "sql_t").await;
    let pool = connect::<F>(&cluster, test, "").await;
    // The plant works: an unqualified call from this role reaches it.
    pool.execute("SELECT pg_is_in_recovery()")
        .await
        .expect("unqualified");
    assert_eq!(
        hijacked(&cluster).await,
        "pg_is_in_recovery",
        "the plant is not in the way"
    );
    cluster
        .psql("instance-1", cluster.database(), "TRUNCATE public.hijacked")
        .await
        .expect("truncate");
    // Probes and topology reads on every instance for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let topology = pool.topology();
    assert!(
        topology.instances().len() == 3 && topology.instances().iter().all(|i| i.is_available()),
        "an instance looks down (its queries failed?): {topology}"
    );
    pool.execute("INSERT INTO sql_t VALUES (1)")
        .await
        .expect("write");
    pool.query_text(Role::Reader, "SELECT 'read'")
        .await
        .expect("read");
    // A writing transaction reads its id; a lost COMMIT reply is resolved.
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    pool.transaction_counted(
        TransactionOptions::new(),
        "INSERT INTO sql_t VALUES (2)",
        runs.clone(),
    )
    .await
    .expect("transaction");
    assert!(cluster.cut_at("instance-1", "COMMIT", CutAt::Reply));
    pool.transaction_counted(
        TransactionOptions::new(),
        "INSERT INTO sql_t VALUES (3)",
        runs.clone(),
    )
    .await
    .expect("a lost COMMIT reply, resolved");
    assert_eq!(
        hijacked(&cluster).await,
        "",
        "planted objects ran before the failover"
    );
    // A failover: panic mode, the new writer's confirmation, its topology.
    cluster
        .failover("instance-2", None)
        .await
        .expect("failover");
    let moved = support::eventually(Duration::from_secs(20), || async {
        pool.execute("INSERT INTO sql_t VALUES (5)").await.is_ok()
            && pool.topology().writer().name() == "instance-2"
    })
    .await;
    assert!(moved, "no write on the new writer: {}", pool.topology());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(hijacked(&cluster).await, "", "planted objects ran");
    pool.close().await;
}

async fn nothing_planted_is_called_on_aurora<F: Flavour>(test: &str) {
    nothing_planted_is_called_on::<F>(test, ClusterKind::Aurora).await;
}

async fn nothing_planted_is_called_on_multi_az<F: Flavour>(test: &str) {
    nothing_planted_is_called_on::<F>(test, ClusterKind::RdsMultiAz).await;
}

flavour_tests!(
    nothing_planted_is_called_on_aurora,
    nothing_planted_is_called_on_multi_az
);
