//! Which pool serves which role: the routing table the checkouts read without locks, and
//! how a new topology turns into one (pools kept, opened, retired).

use std::collections::HashMap;
use std::sync::Arc;

use super::backend::Backend;
use super::login::SlotLogin;
use super::scope::ReadScope;
use super::tasks::{close_bounded, prefill};
use crate::auth::Credentials;
use crate::config::{Config, PoolSizing};
use crate::error::Result;
use crate::topology::{Instance, Topology};

/// A pool to one instance in one role.
#[derive(Clone)]
pub(crate) struct Slot<P> {
    pub(crate) instance: Arc<Instance>,
    pub(crate) pool: P,
    pub(crate) login: Arc<SlotLogin>,
}

/// Pools a routing change no longer uses, with the instance each served.
pub(crate) type Retired<P> = Vec<(Arc<Instance>, P)>;

/// Which pool serves which role; swapped atomically, read without locks at checkout.
pub(crate) struct RoutingTable<P> {
    pub(crate) topology: Arc<Topology>,
    pub(crate) writer: Slot<P>,
    pub(crate) readers: Vec<Slot<P>>,
    /// Whether reads with no reader available may use the writer.
    pub(crate) reads_may_use_writer: bool,
}

impl<P: Clone + Send + Sync + 'static> RoutingTable<P> {
    /// The instances of `topology` that need a new pool: those not already in `previous`
    /// with the same role and address.
    pub(crate) fn new_placements<'t>(
        previous: Option<&RoutingTable<P>>,
        topology: &'t Topology,
        scope: &ReadScope,
    ) -> Vec<&'t Instance> {
        let routed = std::iter::once(topology.writer()).chain(Self::readers_in(topology, scope));
        routed
            .filter(|instance| {
                previous.is_none_or(|t| !t.slots().any(|s| s.instance.same_placement(instance)))
            })
            .collect()
    }

    /// Builds the table for `topology`, reusing the pools of `previous` whose instance keeps
    /// its role and address; new pools log in with the `fresh` credentials fetched for their
    /// instance id. Returns the pools no longer used.
    /// The readers that get a pool: reachable ones inside the read scope.
    fn readers_in<'t>(
        topology: &'t Topology,
        scope: &ReadScope,
    ) -> impl Iterator<Item = &'t Instance> {
        topology
            .readers()
            .filter(move |r| r.is_available() && scope.allows(r.id()))
    }

    pub(crate) fn build<B: Backend<Pool = P>>(
        previous: Option<&RoutingTable<P>>,
        topology: &Arc<Topology>,
        scope: &ReadScope,
        backend: &B,
        config: &Config,
        mut fresh: HashMap<String, Credentials>,
    ) -> Result<(RoutingTable<P>, Retired<P>)> {
        let mut old: Vec<&Slot<P>> = previous
            .map(|t| std::iter::once(&t.writer).chain(&t.readers).collect())
            .unwrap_or_default();
        let mut opened: Vec<P> = Vec::new();
        let mut take = |instance: &Instance, sizing: PoolSizing| -> Result<Slot<P>> {
            let (pool, login) = match old.iter().position(|s| s.instance.same_placement(instance)) {
                Some(i) => {
                    let slot = old.swap_remove(i);
                    (slot.pool.clone(), slot.login.clone())
                }
                None => {
                    let login = SlotLogin::new(fresh.remove(instance.id()));
                    tracing::debug!(
                        target: "aurora_pool",
                        instance = instance.id(),
                        role = %instance.role(),
                        address = %instance.address(),
                        "opening instance pool"
                    );
                    let pool = backend.open(instance, sizing, &login.current())?;
                    opened.push(pool.clone());
                    if sizing.min_connections > 0 {
                        tokio::spawn(prefill::<B>(
                            pool.clone(),
                            sizing.min_connections,
                            instance.id().to_owned(),
                        ));
                    }
                    (pool, Arc::new(login))
                }
            };
            Ok(Slot {
                instance: Arc::new(instance.clone()),
                pool,
                login,
            })
        };
        // Unreachable readers, and those outside the scope, get no pool: their connections
        // are closed.
        let slots = take(topology.writer(), config.writer).and_then(|writer| {
            let readers = Self::readers_in(topology, scope)
                .map(|r| take(r, config.reader))
                .collect::<Result<Vec<_>>>()?;
            Ok((writer, readers))
        });
        let (writer, readers) = match slots {
            Ok(slots) => slots,
            Err(err) => {
                for pool in opened {
                    tokio::spawn(close_bounded::<B>(pool));
                }
                return Err(err);
            }
        };
        let retired = old
            .into_iter()
            .map(|s| (s.instance.clone(), s.pool.clone()))
            .collect();
        Ok((
            RoutingTable {
                topology: topology.clone(),
                writer,
                readers,
                reads_may_use_writer: scope.reads_may_use_writer(topology),
            },
            retired,
        ))
    }

    /// The same table with `pool` serving `instance` (the very `Arc` of a slot) instead of
    /// the pool it had.
    pub(crate) fn with_pool(&self, instance: &Arc<Instance>, pool: P) -> RoutingTable<P> {
        let replace = |slot: &Slot<P>| {
            if Arc::ptr_eq(&slot.instance, instance) {
                Slot {
                    instance: slot.instance.clone(),
                    pool: pool.clone(),
                    login: slot.login.clone(),
                }
            } else {
                slot.clone()
            }
        };
        RoutingTable {
            topology: self.topology.clone(),
            writer: replace(&self.writer),
            readers: self.readers.iter().map(replace).collect(),
            reads_may_use_writer: self.reads_may_use_writer,
        }
    }

    pub(crate) fn slots(&self) -> impl Iterator<Item = &Slot<P>> {
        std::iter::once(&self.writer).chain(&self.readers)
    }
}
