//! SQL for the emulated Aurora / RDS catalogs and for cluster setup.

use super::Flavour;

/// One member of the emulated cluster, as stored in `aurora_emul.instances`.
pub(crate) struct Member<'a> {
    pub(crate) server_id: &'a str,
    pub(crate) is_writer: bool,
    pub(crate) resource_id: &'a str,
    pub(crate) proxy_port: u16,
    /// The AWS region of an emulated Aurora Global Database's instance.
    pub(crate) region: Option<&'a str>,
}

/// `'text'` as a SQL string literal.
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `"name"` as a SQL identifier.
pub(crate) fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'text'` as a postgresql.conf / conninfo value.
pub(crate) fn conf_value(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Makes `rds.extensions` (a placeholder GUC set in postgresql.conf) visible in
/// `pg_catalog.pg_settings`. PostgreSQL hides placeholder (unregistered custom)
/// settings from `pg_show_all_settings()`, so the view gets one extra row when
/// the setting exists and no loaded module registered it.
const PG_SETTINGS_VIEW: &str = r#"
SET allow_system_table_mods = on;
CREATE OR REPLACE VIEW pg_catalog.pg_settings AS
  SELECT * FROM pg_catalog.pg_show_all_settings() s
  UNION ALL
  SELECT 'rds.extensions'::text, pg_catalog.current_setting('rds.extensions', true),
         NULL::text, 'Customized Options'::text, 'Emulated RDS setting (aurora-pool LocalCluster)'::text,
         NULL::text, 'sighup'::text, 'string'::text, 'configuration file'::text, NULL::text, NULL::text,
         NULL::text[], NULL::text, pg_catalog.current_setting('rds.extensions', true), NULL::text,
         NULL::integer, false
  WHERE pg_catalog.current_setting('rds.extensions', true) IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_show_all_settings() x
                    WHERE x.name OPERATOR(pg_catalog.=) 'rds.extensions');
RESET allow_system_table_mods;
"#;

const MEMBER_TABLE: &str = r#"
CREATE SCHEMA aurora_emul;
CREATE TABLE aurora_emul.instances (
  server_id text PRIMARY KEY,
  is_writer boolean NOT NULL,
  resource_id text NOT NULL,
  proxy_port integer NOT NULL,
  -- When the instance became the writer (set on promotion): the writer row's
  -- LAST_UPDATE_TIMESTAMP, so that of two instances claiming the writer role the one
  -- promoted last has the newer row, as on Aurora.
  writer_since timestamp with time zone,
  -- The region of a global database's instance (NULL in a regional cluster).
  region text,
  -- The replica lag the catalog reports for the instance (`set_replica_lag`).
  lag_ms double precision NOT NULL DEFAULT 0
);
GRANT USAGE ON SCHEMA aurora_emul TO PUBLIC;
GRANT SELECT ON aurora_emul.instances TO PUBLIC;
CREATE FUNCTION aurora_emul.instance_id() RETURNS text LANGUAGE sql STABLE
  AS $$ SELECT pg_catalog.current_setting('aurora_emul.instance_id') $$;
"#;

const AURORA_FUNCTIONS: &str = r#"
CREATE FUNCTION pg_catalog.aurora_db_instance_identifier() RETURNS text
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog
  AS $$ SELECT pg_catalog.current_setting('aurora_emul.instance_id') $$;
CREATE FUNCTION pg_catalog.aurora_replica_status()
  RETURNS TABLE(server_id text, session_id text, cpu double precision,
                replica_lag_in_msec double precision, last_update_timestamp timestamp with time zone)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog
  AS $$
    SELECT i.server_id,
           CASE WHEN (CASE WHEN i.server_id = me.id THEN NOT pg_is_in_recovery() ELSE i.is_writer END)
                THEN 'MASTER_SESSION_ID' ELSE 'aurora-emul-session-' || i.server_id END,
           0::double precision,
           i.lag_ms,
           CASE WHEN (CASE WHEN i.server_id = me.id THEN NOT pg_is_in_recovery() ELSE i.is_writer END)
                THEN COALESCE(i.writer_since, now())
                WHEN i.server_id = me.id THEN now()
                ELSE now() - interval '10 milliseconds' END
    FROM aurora_emul.instances i,
         (SELECT current_setting('aurora_emul.instance_id') AS id) me
    ORDER BY i.server_id
  $$;
REVOKE ALL ON FUNCTION pg_catalog.aurora_db_instance_identifier() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg_catalog.aurora_replica_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pg_catalog.aurora_db_instance_identifier() TO PUBLIC;
GRANT EXECUTE ON FUNCTION pg_catalog.aurora_replica_status() TO PUBLIC;
"#;

// `dbi_resource_id()` returns a scalar rather than a one-column table: the
// drivers compare it in a WHERE clause (`id = rds_tools.dbi_resource_id()`),
// where set-returning functions are not allowed. Used in FROM, a scalar
// function yields a column named like the function, so
// `SELECT dbi_resource_id FROM rds_tools.dbi_resource_id()` works too.
/// An Aurora Global Database's two catalog functions, over the member table's regions.
const GLOBAL_FUNCTIONS: &str = r#"
CREATE FUNCTION pg_catalog.aurora_global_db_instance_status()
  RETURNS TABLE(server_id text, session_id text, aws_region text, durable_lsn bigint,
                highest_lsn_rcvd bigint, feedback_epoch integer, feedback_xmin integer,
                oldest_read_view_lsn bigint, visibility_lag_in_msec double precision)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog
  AS $$
    SELECT i.server_id,
           CASE WHEN w.is_writer THEN 'MASTER_SESSION_ID' ELSE 'aurora-emul-session-' || i.server_id END,
           i.region, 0::bigint, 0::bigint, 0, 0, 0::bigint,
           CASE WHEN w.is_writer THEN NULL ELSE i.lag_ms END
    FROM aurora_emul.instances i,
         (SELECT current_setting('aurora_emul.instance_id') AS id) me,
         LATERAL (SELECT CASE WHEN i.server_id = me.id THEN NOT pg_is_in_recovery()
                              -- A primary knows it is the only one: no other row is.
                              WHEN NOT pg_is_in_recovery() THEN false
                              ELSE i.is_writer END AS is_writer) w
    ORDER BY i.server_id
  $$;
CREATE FUNCTION pg_catalog.aurora_global_db_status()
  RETURNS TABLE(aws_region text, highest_lsn_written bigint, durability_lag_in_msec double precision,
                rpo_lag_in_msec double precision, last_lag_calculation_time timestamp with time zone,
                feedback_epoch integer, feedback_xmin integer)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog
  AS $$
    SELECT r.region, 0::bigint,
           CASE WHEN r.is_primary THEN -1 ELSE 0 END::double precision,
           CASE WHEN r.is_primary THEN -1 ELSE 0 END::double precision,
           CASE WHEN r.is_primary THEN '1970-01-01 00:00:00+00'::timestamptz ELSE now() END,
           0, 0
    FROM (SELECT i.region, bool_or(i.is_writer) AS is_primary
          FROM aurora_emul.instances i GROUP BY i.region) r
    ORDER BY r.region
  $$;
REVOKE ALL ON FUNCTION pg_catalog.aurora_global_db_instance_status() FROM PUBLIC;
REVOKE ALL ON FUNCTION pg_catalog.aurora_global_db_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pg_catalog.aurora_global_db_instance_status() TO PUBLIC;
GRANT EXECUTE ON FUNCTION pg_catalog.aurora_global_db_status() TO PUBLIC;
"#;

const RDS_FUNCTIONS: &str = r#"
CREATE SCHEMA rds_tools;
GRANT USAGE ON SCHEMA rds_tools TO PUBLIC;
CREATE FUNCTION rds_tools.show_topology(text DEFAULT '')
  RETURNS TABLE(id text, endpoint text, port integer)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog
  AS $$
    SELECT i.resource_id, i.server_id || '.local.us-east-1.rds.amazonaws.com', i.proxy_port
    FROM aurora_emul.instances i ORDER BY i.server_id
  $$;
CREATE FUNCTION rds_tools.dbi_resource_id() RETURNS text
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog
  AS $$
    SELECT i.resource_id FROM aurora_emul.instances i
    WHERE i.server_id = current_setting('aurora_emul.instance_id')
  $$;
CREATE FUNCTION rds_tools.multi_az_db_cluster_source_dbi_resource_id()
  RETURNS TABLE(multi_az_db_cluster_source_dbi_resource_id text)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog
  AS $$
    SELECT CASE WHEN NOT pg_is_in_recovery()
                THEN (SELECT i.resource_id FROM aurora_emul.instances i
                      WHERE i.server_id = current_setting('aurora_emul.instance_id'))
                ELSE (SELECT i.resource_id FROM aurora_emul.instances i
                      WHERE i.is_writer ORDER BY i.server_id LIMIT 1)
           END
  $$;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA rds_tools FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA rds_tools TO PUBLIC;
"#;

/// The emulation catalog for one database (run as superuser, in template1 and
/// `postgres`; databases created later inherit it from template1).
pub(crate) fn catalog(flavour: Flavour, members: &[Member<'_>]) -> String {
    let mut sql = String::new();
    let functions = match flavour {
        Flavour::Aurora => AURORA_FUNCTIONS,
        Flavour::RdsMultiAz => RDS_FUNCTIONS,
        Flavour::Plain => return sql,
    };
    sql.push_str(PG_SETTINGS_VIEW);
    sql.push_str(MEMBER_TABLE);
    sql.push_str("INSERT INTO aurora_emul.instances (server_id, is_writer, resource_id, proxy_port, writer_since, region) VALUES\n");
    let rows: Vec<String> = members
        .iter()
        .map(|m| {
            format!(
                "  ({}, {}, {}, {}, {}, {})",
                literal(m.server_id),
                m.is_writer,
                literal(m.resource_id),
                m.proxy_port,
                if m.is_writer { "now()" } else { "NULL" },
                m.region.map_or_else(|| "NULL".to_owned(), literal)
            )
        })
        .collect();
    sql.push_str(&rows.join(",\n"));
    sql.push_str(";\n");
    sql.push_str(functions);
    if flavour == Flavour::Aurora && members.iter().any(|m| m.region.is_some()) {
        sql.push_str(GLOBAL_FUNCTIONS);
    }
    sql
}

/// Creates the login role and the application database (owned by it).
/// `CREATE DATABASE` must not run inside a transaction block, so this is a
/// script of separate statements (psql sends them one by one).
pub(crate) fn create_role_and_database(user: &str, password: &str, database: &str) -> String {
    let mut sql = if user == "postgres" {
        format!("ALTER ROLE postgres PASSWORD {};\n", literal(password))
    } else {
        format!(
            "CREATE ROLE {} LOGIN PASSWORD {};\n",
            ident(user),
            literal(password)
        )
    };
    if !matches!(database, "postgres" | "template1") {
        sql.push_str(&format!(
            "CREATE DATABASE {} OWNER {} TEMPLATE template1;\n",
            ident(database),
            ident(user)
        ));
    }
    sql
}

/// Adds a reader's row to the member table.
pub(crate) fn add_member(member: &Member<'_>) -> String {
    format!(
        "INSERT INTO aurora_emul.instances (server_id, is_writer, resource_id, proxy_port, writer_since, region) \
         VALUES ({}, false, {}, {}, NULL, {});\n",
        literal(member.server_id),
        literal(member.resource_id),
        member.proxy_port,
        member.region.map_or_else(|| "NULL".to_owned(), literal)
    )
}

/// Sets the replica lag the catalog reports for `id`.
pub(crate) fn set_lag(id: &str, lag_ms: f64) -> String {
    format!(
        "UPDATE aurora_emul.instances SET lag_ms = {lag_ms} WHERE server_id = {};\n",
        literal(id)
    )
}

/// Marks `writer` as the only writer in the member table.
pub(crate) fn set_writer(writer: &str) -> String {
    format!(
        "UPDATE aurora_emul.instances SET is_writer = (server_id = {0}), \
         writer_since = CASE WHEN server_id = {0} THEN now() ELSE writer_since END;\n",
        literal(writer)
    )
}
