//! Confirming a writer candidate: checking the instance is the writer (its catalog and
//! `pg_is_in_recovery()`) and reading the topology from its catalog, on the connection of
//! the probe that found it out of recovery, or on a connection of the monitor's own.

use std::time::Duration;

use tokio::sync::mpsc;

use super::MonitorState;
use super::probe::{self, TopologyRead};
use crate::connector::{AdminConnection, AdminTarget, Purpose};
use crate::error::Error;
use crate::topology::{Topology, confirm_writer, query_topology};

/// Connects to the candidate at `target`, confirms it is the writer and reads the
/// topology through it, within `limit`. `Err` says why it is not confirmed.
pub(super) async fn candidate(
    state: &MonitorState,
    target: &AdminTarget,
    limit: Duration,
) -> Result<(Box<dyn AdminConnection>, Topology), String> {
    let Some(registration) = state.registration() else {
        return Err("every pool is gone".to_owned());
    };
    let attempt = async {
        let mut connection = registration
            .connector
            .connect(target, Purpose::Monitor)
            .await?;
        let dialect = registration.source.dialect;
        if !confirm_writer(connection.as_mut(), dialect).await? {
            connection.close().await;
            return Ok(None);
        }
        let topology = query_topology(connection.as_mut(), &registration.source).await?;
        Ok::<_, Error>(Some((connection, topology)))
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(Ok(Some(found))) => Ok(found),
        Ok(Ok(None)) => Err("it is not the writer".to_owned()),
        Ok(Err(err)) => Err(format!("{err:#}")),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// Confirms the candidate through its probe's connection (no connect: the probe has just
/// heard it answer) and reads the topology there, within `limit`. `Err` says why it is not
/// confirmed.
pub(super) async fn through_probe(
    reads: mpsc::Sender<TopologyRead>,
    limit: Duration,
) -> Result<Topology, String> {
    probe::ask(&reads, true, limit)
        .await
        .map_err(|err| format!("{err:#}"))
}
