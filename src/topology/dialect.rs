//! Database dialects: how to recognise each kind of cluster and how to read its topology.
//!
//! The SQL is the exact text the AWS Advanced drivers run, so that anything that satisfies them
//! (real Aurora, `testing::LocalCluster`) satisfies this crate too.

use std::fmt;

use super::rows::{aurora_rows, parse_bool};
use super::{Addressing, Instance, Role, Topology};
use crate::connector::{AdminConnection, TextRow};
use crate::endpoint::{Endpoint, EndpointKind, HostPort};
use crate::error::{Error, Result};

/// The kind of database behind the URL; it decides how the topology is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dialect {
    /// Aurora PostgreSQL: topology from `aurora_replica_status()`.
    AuroraPg,
    /// An Aurora PostgreSQL Global Database (clusters in more than one region): topology
    /// from `aurora_global_db_instance_status()`, every region's instances with their region
    /// and visibility lag.
    GlobalAuroraPg,
    /// RDS Multi-AZ DB cluster (PostgreSQL): topology from `rds_tools.show_topology()`.
    RdsMultiAzPg,
    /// A single RDS PostgreSQL instance: a topology of one writer.
    RdsPg,
    /// Any other PostgreSQL server: a topology of one writer.
    Pg,
}

impl Dialect {
    /// The name used in the `dialect` parameter and in logs.
    pub fn code(self) -> &'static str {
        match self {
            Dialect::AuroraPg => "aurora-pg",
            Dialect::GlobalAuroraPg => "global-aurora-pg",
            Dialect::RdsMultiAzPg => "rds-multi-az-pg",
            Dialect::RdsPg => "rds-pg",
            Dialect::Pg => "pg",
        }
    }

    /// Parses a dialect name (`aurora-pg`, `global-aurora-pg`, `rds-multi-az-pg` or
    /// `rds-multi-az-pg-cluster`, `rds-pg`, `pg`).
    pub(crate) fn parse(parameter: &str, text: &str) -> Result<Dialect> {
        match text {
            "aurora-pg" => Ok(Dialect::AuroraPg),
            "global-aurora-pg" => Ok(Dialect::GlobalAuroraPg),
            "rds-multi-az-pg" | "rds-multi-az-pg-cluster" => Ok(Dialect::RdsMultiAzPg),
            "rds-pg" => Ok(Dialect::RdsPg),
            "pg" => Ok(Dialect::Pg),
            other => Err(Error::config(
                parameter,
                format!(
                    "unknown dialect `{other}`; expected aurora-pg, global-aurora-pg, rds-multi-az-pg, rds-pg or pg"
                ),
            )),
        }
    }

    /// The first guess from the host name, confirmed or replaced once connected.
    fn guess(kind: EndpointKind) -> Dialect {
        match kind {
            EndpointKind::ClusterWriter
            | EndpointKind::ClusterReader
            | EndpointKind::ClusterCustom
            | EndpointKind::ShardGroup => Dialect::AuroraPg,
            EndpointKind::Global => Dialect::GlobalAuroraPg,
            EndpointKind::Proxy | EndpointKind::Instance => Dialect::RdsPg,
            _ => Dialect::Pg,
        }
    }

    /// The order in which dialects are tried after a guess (the guess itself last).
    fn candidates(self) -> &'static [Dialect] {
        match self {
            // Any Aurora cluster may be one region of a global database: that is asked first
            // (one statement that fails at once on a regional cluster).
            Dialect::AuroraPg | Dialect::GlobalAuroraPg => &[
                Dialect::GlobalAuroraPg,
                Dialect::AuroraPg,
                Dialect::RdsMultiAzPg,
                Dialect::RdsPg,
                Dialect::Pg,
            ],
            Dialect::RdsPg => &[
                Dialect::RdsMultiAzPg,
                Dialect::GlobalAuroraPg,
                Dialect::AuroraPg,
                Dialect::RdsPg,
                Dialect::Pg,
            ],
            Dialect::RdsMultiAzPg | Dialect::Pg => &[
                Dialect::GlobalAuroraPg,
                Dialect::AuroraPg,
                Dialect::RdsMultiAzPg,
                Dialect::RdsPg,
                Dialect::Pg,
            ],
        }
    }
}

impl Dialect {
    /// What a new pool connection asks its server: whether it is a replica, and which
    /// instance it is, where the dialect can tell (Aurora, Multi-AZ: the ids the topology
    /// uses); `NULL` for the id elsewhere.
    pub(crate) fn instance_check(self) -> &'static str {
        match self {
            Dialect::AuroraPg | Dialect::GlobalAuroraPg => {
                "SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.aurora_db_instance_identifier()"
            }
            Dialect::RdsMultiAzPg => {
                "SELECT pg_catalog.pg_is_in_recovery(), (SELECT dbi_resource_id FROM rds_tools.dbi_resource_id())"
            }
            Dialect::RdsPg | Dialect::Pg => {
                "SELECT pg_catalog.pg_is_in_recovery(), NULL::pg_catalog.text"
            }
        }
    }

    /// Reads `err` as a cluster of this dialect means it. An RDS Multi-AZ DB cluster
    /// answers `28000` ("access denied") while an instance reboots, and internal errors
    /// (class `XX`) while it fails over: there both are network failures, as in the AWS
    /// drivers, not a refused login. (The drivers also count class `53` there; this crate
    /// keeps `53300` and the other resource errors as "busy", alive: a full instance is
    /// never declared dead.)
    pub(crate) fn read_error(self, err: Error) -> Error {
        let reboot = self == Dialect::RdsMultiAzPg
            && err
                .sqlstate()
                .is_some_and(|s| s == "28000" || s.starts_with("XX"));
        if reboot { err.count_as_network() } else { err }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

const IS_PG: &str = "SELECT 1 FROM pg_catalog.pg_proc LIMIT 1";
const AURORA_EXTENSION: &str = "SELECT (setting OPERATOR(pg_catalog.~~) '%aurora_stat_utils%') AS aurora_stat_utils FROM pg_catalog.pg_settings WHERE name OPERATOR(pg_catalog.=) 'rds.extensions'";
const AURORA_REPLICA_STATUS: &str = "SELECT 1 FROM pg_catalog.aurora_replica_status() LIMIT 1";
const AURORA_TOPOLOGY: &str = "SELECT SERVER_ID, CASE WHEN SESSION_ID OPERATOR(pg_catalog.=) 'MASTER_SESSION_ID' THEN TRUE ELSE FALSE END, CPU, COALESCE(REPLICA_LAG_IN_MSEC, 0), LAST_UPDATE_TIMESTAMP FROM pg_catalog.aurora_replica_status() WHERE EXTRACT(EPOCH FROM(pg_catalog.NOW() OPERATOR(pg_catalog.-) LAST_UPDATE_TIMESTAMP)) OPERATOR(pg_catalog.<=) 300 OR SESSION_ID OPERATOR(pg_catalog.=) 'MASTER_SESSION_ID' OR LAST_UPDATE_TIMESTAMP IS NULL";
/// Both global-database functions exist (`regproc` casts fail with 42883 otherwise).
const GLOBAL_FUNCTIONS: &str = "SELECT 'pg_catalog.aurora_global_db_status'::pg_catalog.regproc, 'pg_catalog.aurora_global_db_instance_status'::pg_catalog.regproc";
/// The regions of the global database: more than one makes it one.
const GLOBAL_REGION_COUNT: &str =
    "SELECT pg_catalog.count(1) FROM pg_catalog.aurora_global_db_status()";
/// Every region's instances, in the regional query's shape (id, writer flag, CPU, lag,
/// last update) plus the region: the global view has no CPU and no update time (of two
/// writers, the lower id wins, as arbitrary as the AWS drivers' choice there).
const GLOBAL_TOPOLOGY: &str = "SELECT SERVER_ID, CASE WHEN SESSION_ID OPERATOR(pg_catalog.=) 'MASTER_SESSION_ID' THEN TRUE ELSE FALSE END, NULL::pg_catalog.float8, VISIBILITY_LAG_IN_MSEC, NULL::pg_catalog.timestamptz, AWS_REGION FROM pg_catalog.aurora_global_db_instance_status()";
const AURORA_INSTANCE_ID: &str =
    "SELECT pg_catalog.aurora_db_instance_identifier(), pg_catalog.aurora_db_instance_identifier()";
/// Whether `rds_tools` and every function of it the crate calls (each overload) belong to a
/// superuser (`rdsadmin` on RDS): on a plain PostgreSQL, any role with `CREATE` on the
/// database could make a schema of that name and run code as whoever connects, or steer
/// the pool to the hosts its `show_topology()` names. All three must be there.
const MULTI_AZ_OWNED_BY_SUPERUSER: &str = "SELECT pg_catalog.bool_and(r.rolsuper) AND pg_catalog.count(DISTINCT p.proname) OPERATOR(pg_catalog.=) 3 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) p.proowner OR r.oid OPERATOR(pg_catalog.=) n.nspowner WHERE n.nspname OPERATOR(pg_catalog.=) 'rds_tools' AND p.proname OPERATOR(pg_catalog.=) ANY (ARRAY['multi_az_db_cluster_source_dbi_resource_id', 'show_topology', 'dbi_resource_id']::pg_catalog.name[])";
const MULTI_AZ_IS_DIALECT: &str = "SELECT multi_az_db_cluster_source_dbi_resource_id FROM rds_tools.multi_az_db_cluster_source_dbi_resource_id()";
const MULTI_AZ_TOPOLOGY: &str = concat!(
    "SELECT id, endpoint, port FROM rds_tools.show_topology('aurora-pool-",
    env!("CARGO_PKG_VERSION"),
    "')"
);
const MULTI_AZ_WRITER_ID: &str = "SELECT multi_az_db_cluster_source_dbi_resource_id FROM rds_tools.multi_az_db_cluster_source_dbi_resource_id() WHERE multi_az_db_cluster_source_dbi_resource_id OPERATOR(pg_catalog.!=) (SELECT dbi_resource_id FROM rds_tools.dbi_resource_id())";
const MULTI_AZ_INSTANCE_ID: &str = "SELECT dbi_resource_id FROM rds_tools.dbi_resource_id()";
const RDS_EXTENSIONS: &str = "SELECT (setting OPERATOR(pg_catalog.~~) '%rds_tools%') AS rds_tools, (setting OPERATOR(pg_catalog.~~) '%aurora_stat_utils%') AS aurora_stat_utils FROM pg_catalog.pg_settings WHERE name OPERATOR(pg_catalog.=) 'rds.extensions'";
pub(crate) const IS_READER: &str = "SELECT pg_catalog.pg_is_in_recovery()";
const AURORA_AM_I_WRITER: &str = "SELECT SERVER_ID FROM pg_catalog.aurora_replica_status() WHERE SESSION_ID OPERATOR(pg_catalog.=) 'MASTER_SESSION_ID' AND SERVER_ID OPERATOR(pg_catalog.=) pg_catalog.aurora_db_instance_identifier()";

/// The SQLSTATEs that mean "this server has no such function, table or schema": the answer
/// "not this dialect". Any other error (a full server, a cancelled statement, a broken
/// connection) says nothing about the dialect: discovery fails with it rather than settling
/// on a lesser dialect for the pool's whole life.
const NOT_THIS_DIALECT: [&str; 5] = [
    "42883", // undefined_function
    "42P01", // undefined_table
    "3F000", // invalid_schema_name
    "42704", // undefined_object
    "42501", // insufficient_privilege: the catalog is not this user's to read
];

/// Runs a probe query; a statement the server rejects because what it names does not exist
/// means "not this dialect", any other error is an error.
async fn probe(conn: &mut dyn AdminConnection, sql: &str) -> Result<Option<Vec<TextRow>>> {
    match conn.query(sql).await {
        Ok(rows) => Ok(Some(rows)),
        Err(err)
            if err
                .sqlstate()
                .is_some_and(|s| NOT_THIS_DIALECT.contains(&s)) =>
        {
            Ok(None)
        }
        Err(err) => {
            let sqlstate = err.sqlstate().map(str::to_owned);
            Err(Error::topology(format!(
                "detecting the database dialect failed (`{sql}`); the pool does not settle for a lesser dialect"
            ))
            .with_sqlstate(sqlstate)
            .with_source(err))
        }
    }
}

fn first(rows: &[TextRow]) -> Option<&str> {
    rows.first()?.first()?.as_deref()
}

async fn is_dialect(conn: &mut dyn AdminConnection, dialect: Dialect) -> Result<bool> {
    Ok(match dialect {
        Dialect::AuroraPg => {
            matches!(probe(conn, AURORA_EXTENSION).await?, Some(rows) if parse_bool(first(&rows)) == Some(true))
                && matches!(probe(conn, AURORA_REPLICA_STATUS).await?, Some(rows) if !rows.is_empty())
        }
        Dialect::GlobalAuroraPg => {
            matches!(probe(conn, GLOBAL_FUNCTIONS).await?, Some(rows) if !rows.is_empty())
                && matches!(probe(conn, GLOBAL_REGION_COUNT).await?,
                    Some(rows) if first(&rows).and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n > 1))
                && Box::pin(is_dialect(conn, Dialect::AuroraPg)).await?
        }
        Dialect::RdsMultiAzPg => {
            matches!(probe(conn, MULTI_AZ_OWNED_BY_SUPERUSER).await?, Some(rows) if parse_bool(first(&rows)) == Some(true))
                && matches!(probe(conn, MULTI_AZ_IS_DIALECT).await?, Some(rows) if first(&rows).is_some())
        }
        Dialect::RdsPg => match probe(conn, RDS_EXTENSIONS).await? {
            Some(rows) => {
                let row = rows.first();
                let flag =
                    |i: usize| parse_bool(row.and_then(|r| r.get(i)).and_then(|v| v.as_deref()));
                flag(0) == Some(true) && flag(1) != Some(true)
            }
            None => false,
        },
        Dialect::Pg => matches!(probe(conn, IS_PG).await?, Some(rows) if !rows.is_empty()),
    })
}

/// Finds the dialect of the server behind `conn`, starting from the guess the host name gives.
async fn detect(conn: &mut dyn AdminConnection, kind: EndpointKind) -> Result<Dialect> {
    let guess = Dialect::guess(kind);
    for &candidate in guess.candidates() {
        if is_dialect(conn, candidate).await? {
            tracing::debug!(target: "aurora_pool", guess = %guess, dialect = %candidate, "dialect detected");
            return Ok(candidate);
        }
    }
    Err(Error::topology(
        "the server answers none of the dialect checks (is it PostgreSQL?)",
    ))
}

/// What discovery learns through its first connection.
#[derive(Debug)]
pub(crate) struct Discovered {
    pub(crate) topology: Topology,
    /// The instance the discovery connection landed on.
    pub(crate) connected_to: String,
}

/// Where a topology query runs and how its names become addresses.
#[derive(Debug, Clone)]
pub(crate) struct TopologySource {
    pub(crate) dialect: Dialect,
    pub(crate) addressing: Addressing,
    /// The URL's own address: the single instance of the `pg` and `rds-pg` dialects.
    pub(crate) seed: HostPort,
}

/// Detects the dialect (unless forced), reads the topology and identifies the instance the
/// connection is on.
pub(crate) async fn discover(
    conn: &mut dyn AdminConnection,
    forced: Option<Dialect>,
    seed: &HostPort,
    addressing: &Addressing,
) -> Result<(Discovered, TopologySource)> {
    let kind = Endpoint::classify(&seed.host).kind();
    let dialect = match forced {
        Some(dialect) => dialect,
        None => detect(conn, kind).await?,
    };
    let source = TopologySource {
        dialect,
        addressing: addressing.clone(),
        seed: seed.clone(),
    };
    let topology = query_topology(conn, &source).await?;
    let connected_to = match dialect {
        Dialect::AuroraPg | Dialect::GlobalAuroraPg => {
            first(&conn.query(AURORA_INSTANCE_ID).await?)
                .map(str::to_owned)
                .ok_or_else(|| {
                    Error::topology("aurora_db_instance_identifier() returned nothing")
                })?
        }
        Dialect::RdsMultiAzPg => first(&conn.query(MULTI_AZ_INSTANCE_ID).await?)
            .map(str::to_owned)
            .ok_or_else(|| Error::topology("rds_tools.dbi_resource_id() returned nothing"))?,
        Dialect::RdsPg | Dialect::Pg => topology.writer().id().to_owned(),
    };
    Ok((
        Discovered {
            topology,
            connected_to,
        },
        source,
    ))
}

/// Reads the topology through `conn`.
pub(crate) async fn query_topology(
    conn: &mut dyn AdminConnection,
    source: &TopologySource,
) -> Result<Topology> {
    let dialect = source.dialect;
    let mut writer_since = None;
    let instances = match dialect {
        Dialect::AuroraPg | Dialect::GlobalAuroraPg => {
            let sql = match dialect {
                Dialect::GlobalAuroraPg => GLOBAL_TOPOLOGY,
                _ => AURORA_TOPOLOGY,
            };
            let rows = aurora_rows(&conn.query(sql).await?)?;
            writer_since = rows
                .iter()
                .find(|r| r.is_writer)
                .and_then(|r| r.last_update);
            let mut instances = Vec::with_capacity(rows.len());
            for row in rows {
                let Some(address) = routable(
                    &source.addressing,
                    &row.id,
                    row.region.as_deref(),
                    row.is_writer,
                )?
                else {
                    continue;
                };
                instances.push(Instance {
                    address,
                    name: row.id.clone(),
                    id: row.id,
                    role: if row.is_writer {
                        Role::Writer
                    } else {
                        Role::Reader
                    },
                    replica_lag_ms: row.lag_ms,
                    cpu: row.cpu,
                    region: row.region,
                    available: true,
                });
            }
            instances
        }
        Dialect::RdsMultiAzPg => multi_az_instances(conn, source).await?,
        Dialect::RdsPg | Dialect::Pg => {
            let in_recovery = parse_bool(first(&conn.query(IS_READER).await?));
            if in_recovery != Some(false) {
                return Err(Error::topology(format!(
                    "{} is a standby; with the {dialect} dialect the URL must point at the primary",
                    source.seed
                )));
            }
            let endpoint = Endpoint::classify(&source.seed.host);
            let id = match endpoint.kind() {
                EndpointKind::Instance => source
                    .seed
                    .host
                    .split('.')
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
                _ => source.seed.to_string(),
            };
            vec![Instance {
                name: id.clone(),
                id,
                address: source.seed.clone(),
                role: Role::Writer,
                replica_lag_ms: None,
                cpu: None,
                region: None,
                available: true,
            }]
        }
    };
    Ok(Topology::new(dialect, instances)?.with_writer_since(writer_since))
}

/// The address of the instance a catalog row names (in `region`, for a global database). A
/// row that cannot be routed (a name that is not one DNS label) is logged and skipped, never
/// connected to; the writer's row, and a region no pattern names (a configuration error),
/// reject the whole read (the previous topology stays).
fn routable(
    addressing: &Addressing,
    name: &str,
    region: Option<&str>,
    is_writer: bool,
) -> Result<Option<HostPort>> {
    match addressing.address_in(name, region) {
        Ok(address) => Ok(Some(address)),
        Err(err) if is_writer || (region.is_some() && err.is_config()) => Err(err),
        Err(err) => {
            tracing::warn!(target: "aurora_pool", error = %format_args!("{err:#}"), "topology row skipped");
            Ok(None)
        }
    }
}

async fn multi_az_instances(
    conn: &mut dyn AdminConnection,
    source: &TopologySource,
) -> Result<Vec<Instance>> {
    let rows = conn.query(MULTI_AZ_TOPOLOGY).await?;
    let writer_id = match first(&conn.query(MULTI_AZ_WRITER_ID).await?) {
        Some(id) => id.to_owned(),
        // Connected to the writer: the source id filtered out is our own.
        None => first(&conn.query(MULTI_AZ_INSTANCE_ID).await?)
            .map(str::to_owned)
            .ok_or_else(|| Error::topology("rds_tools.dbi_resource_id() returned nothing"))?,
    };
    multi_az_rows(&rows, &writer_id, &source.addressing)
}

/// Reads the rows of `rds_tools.show_topology()` (`id, endpoint, port`) into instances, the
/// one whose id is `writer_id` as the writer. A row whose endpoint does not start with one
/// DNS label is skipped (the writer's rejects the read).
pub(crate) fn multi_az_rows(
    rows: &[TextRow],
    writer_id: &str,
    addressing: &Addressing,
) -> Result<Vec<Instance>> {
    let mut instances = Vec::with_capacity(rows.len());
    for row in rows {
        let cell = |i: usize| row.get(i).and_then(|v| v.as_deref());
        let (Some(id), Some(endpoint)) = (cell(0), cell(1)) else {
            return Err(Error::topology(
                "rds_tools.show_topology() returned a row without id or endpoint",
            ));
        };
        let name = endpoint.split('.').next().unwrap_or(endpoint);
        let Some(address) = routable(addressing, name, None, id == writer_id)? else {
            continue;
        };
        instances.push(Instance {
            id: id.to_owned(),
            name: name.to_owned(),
            address,
            role: if id == writer_id {
                Role::Writer
            } else {
                Role::Reader
            },
            replica_lag_ms: None,
            cpu: None,
            region: None,
            available: true,
        });
    }
    Ok(instances)
}

/// Whether the instance behind `conn` is the writer: the dialect's own writer check (the
/// am-I-writer query on Aurora, the source id on Multi-AZ) and then
/// `pg_is_in_recovery() = false`, because the first connection after a failover may see a
/// stale catalog.
pub(crate) async fn confirm_writer(
    conn: &mut dyn AdminConnection,
    dialect: Dialect,
) -> Result<bool> {
    let catalog_says_writer = match dialect {
        Dialect::AuroraPg | Dialect::GlobalAuroraPg => {
            !conn.query(AURORA_AM_I_WRITER).await?.is_empty()
        }
        Dialect::RdsMultiAzPg => conn.query(MULTI_AZ_WRITER_ID).await?.is_empty(),
        Dialect::RdsPg | Dialect::Pg => true,
    };
    Ok(catalog_says_writer && parse_bool(first(&conn.query(IS_READER).await?)) == Some(false))
}

#[cfg(test)]
mod tests {
    use super::Dialect;
    use crate::error::{Error, ErrorClass};

    /// Why `sql` could resolve something through `search_path` (DESIGN: internal SQL names
    /// only `pg_catalog` objects, or `rds_tools` ones after checking their owner), or `None`.
    /// A static check of what the live test (`tests/internal_sql.rs`) cannot reach: every
    /// dialect's statements, not only those of the clusters it emulates.
    pub(crate) fn unqualified(sql: &str) -> Option<String> {
        // Literals say nothing: drop them.
        let mut text = String::new();
        let mut quoted = false;
        for c in sql.chars() {
            if c == '\'' {
                quoted = !quoted;
                text.push(' ');
            } else if !quoted {
                text.push(c);
            }
        }
        // Qualified operators are fine; any other operator character is not.
        while let Some(at) = text.find("OPERATOR(pg_catalog.") {
            let end = text[at..].find(')').map_or(text.len(), |e| at + e + 1);
            text.replace_range(at..end, " ");
        }
        if let Some(op) = text.chars().find(|c| "=<>~!+-*/%|&^#@".contains(*c)) {
            return Some(format!("operator `{op}` without OPERATOR(pg_catalog.)"));
        }
        let qualified =
            |name: &str| name.starts_with("pg_catalog.") || name.starts_with("rds_tools.");
        let tokens: Vec<&str> = text
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|t| !t.is_empty())
            .collect();
        for (i, token) in tokens.iter().enumerate() {
            if let Some((_, cast)) = token.split_once("::")
                && !cast.starts_with("pg_catalog.")
            {
                return Some(format!("cast `{token}`"));
            }
            if let Some((name, _)) = token.split_once('(') {
                let keyword = ["", "EXTRACT", "COALESCE", "FROM", "ANY", "ARRAY"]
                    .contains(&name.to_uppercase().as_str());
                if !keyword && !qualified(name.trim_start_matches('(')) {
                    return Some(format!("function `{name}`"));
                }
            }
            let relation = ["FROM", "JOIN"].contains(&token.to_uppercase().as_str());
            if relation
                && let Some(next) = tokens.get(i + 1)
                && !next.starts_with('(')
                && !qualified(next)
            {
                return Some(format!("relation `{next}`"));
            }
        }
        None
    }

    #[test]
    fn internal_sql_names_only_qualified_objects() {
        let statements = [
            super::IS_PG,
            super::AURORA_EXTENSION,
            super::AURORA_REPLICA_STATUS,
            super::AURORA_TOPOLOGY,
            super::AURORA_INSTANCE_ID,
            super::MULTI_AZ_OWNED_BY_SUPERUSER,
            super::MULTI_AZ_IS_DIALECT,
            super::MULTI_AZ_TOPOLOGY,
            super::MULTI_AZ_WRITER_ID,
            super::MULTI_AZ_INSTANCE_ID,
            super::RDS_EXTENSIONS,
            super::IS_READER,
            super::AURORA_AM_I_WRITER,
            super::GLOBAL_FUNCTIONS,
            super::GLOBAL_REGION_COUNT,
            super::GLOBAL_TOPOLOGY,
            Dialect::AuroraPg.instance_check(),
            Dialect::RdsMultiAzPg.instance_check(),
            Dialect::Pg.instance_check(),
        ];
        for sql in statements {
            assert_eq!(unqualified(sql), None, "{sql}");
        }
        for sql in crate::pool::outcome::internal_statements() {
            assert_eq!(unqualified(&sql), None, "{sql}");
        }
        // The check itself finds what the CVEs were about.
        for bad in [
            "SELECT (setting ~~ '%x%') FROM pg_catalog.pg_settings",
            "SELECT pg_catalog.now()::text",
            "SELECT 1 FROM pg_settings",
            "SELECT pg_is_in_recovery()",
            "SELECT a FROM pg_catalog.t WHERE a = 'x'",
        ] {
            assert!(unqualified(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn multi_az_reads_28000_and_internal_errors_as_network() {
        let denied = || Error::driver("login").with_sqlstate(Some("28000".into()));
        assert!(denied().is_login_rejected());
        assert!(Dialect::AuroraPg.read_error(denied()).is_login_rejected());
        let multi_az = Dialect::RdsMultiAzPg.read_error(denied());
        assert!(!multi_az.is_login_rejected());
        assert_eq!(multi_az.class(), ErrorClass::Network);
        let internal = Error::driver("x").with_sqlstate(Some("XX000".into()));
        assert_eq!(
            Dialect::RdsMultiAzPg.read_error(internal).class(),
            ErrorClass::Network
        );
        let wrong_password = Error::driver("login").with_sqlstate(Some("28P01".into()));
        assert!(
            Dialect::RdsMultiAzPg
                .read_error(wrong_password)
                .is_login_rejected()
        );
    }
}
