//! Which pool serves which role: the routing table the checkouts read without locks, and
//! how a new topology turns into one (pools kept, opened, retired).

use std::collections::HashMap;
use std::sync::Arc;

use super::backend::{Backend, Follows};
use super::login::SlotLogin;
use super::scope::ReadScope;
use super::targets::{Route, Targets};
use super::tasks::{close_bounded, prefill};
use crate::auth::Credentials;
use crate::config::{Config, PoolSizing};
use crate::error::Result;
use crate::topology::{Instance, Role, Topology};

/// A pool to one instance in one role. The writer's slot keeps its pool across writer
/// changes: the pool is pointed at the new writer.
#[derive(Clone)]
pub(crate) struct Slot<P> {
    pub(crate) instance: Arc<Instance>,
    pub(crate) pool: P,
    pub(crate) login: Arc<SlotLogin>,
    pub(crate) targets: Arc<Targets>,
}

impl<P> Slot<P> {
    pub(crate) fn route(&self) -> Route {
        Route {
            instance: self.instance.clone(),
            login: self.login.clone(),
        }
    }
}

/// The pool `reader()` hands out: it lives as long as the `AuroraPool` and spreads its
/// connections over the routed readers in turn (over the writer when reads may use it and
/// no reader can).
#[derive(Clone)]
pub(crate) struct Shared<P> {
    pub(crate) pool: P,
    pub(crate) targets: Arc<Targets>,
}

/// Pools a routing change no longer uses, with the instance each served.
pub(crate) type Retired<P> = Vec<(Arc<Instance>, P, Arc<Targets>)>;

/// Which pool serves which role; swapped atomically, read without locks at checkout.
pub(crate) struct RoutingTable<P> {
    pub(crate) topology: Arc<Topology>,
    pub(crate) writer: Slot<P>,
    pub(crate) readers: Vec<Slot<P>>,
    pub(crate) reads: Shared<P>,
    /// Whether reads with no reader available may use the writer.
    pub(crate) reads_may_use_writer: bool,
}

/// A routing table built for a topology, and what building it changed.
pub(crate) struct Built<P> {
    pub(crate) table: RoutingTable<P>,
    /// Pools of the previous table the new one does not use.
    pub(crate) retired: Retired<P>,
    /// Pools this build opened.
    pub(crate) opened: Vec<P>,
    /// The writer the writer's pool left, when it was pointed at another instance.
    pub(crate) writer_left: Option<Arc<Instance>>,
    /// The writer the writer's pool was just parked away from (it became unavailable).
    pub(crate) writer_parked: Option<Arc<Instance>>,
}

/// Whether two route lists name the same instances, in order, with the same logins.
fn same_routes(now: &[Route], next: &[Route]) -> bool {
    now.len() == next.len()
        && now
            .iter()
            .zip(next)
            .all(|(a, b)| a.instance.same_placement(&b.instance) && Arc::ptr_eq(&a.login, &b.login))
}

impl<P: Clone + Send + Sync + 'static> RoutingTable<P> {
    /// The instances of `topology` that need credentials: those not already in `previous`
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

    /// The readers that get a pool: reachable ones inside the read scope.
    fn readers_in<'t>(
        topology: &'t Topology,
        scope: &ReadScope,
    ) -> impl Iterator<Item = &'t Instance> {
        topology
            .readers()
            .filter(move |r| r.is_available() && scope.allows(r))
    }

    /// Builds the table for `topology`, reusing the pools of `previous` whose instance keeps
    /// its role and address, and pointing the writer's pool and the shared reader pool at
    /// their new instances; new pools log in with the `fresh` credentials fetched for their
    /// instance id.
    pub(crate) fn build<B: Backend<Pool = P>>(
        previous: Option<&RoutingTable<P>>,
        topology: &Arc<Topology>,
        scope: &ReadScope,
        backend: &B,
        config: &Config,
        mut fresh: HashMap<String, Credentials>,
    ) -> Result<Built<P>> {
        let mut old: Vec<&Slot<P>> = previous
            .map(|t| t.readers.iter().collect())
            .unwrap_or_default();
        let mut opened: Vec<P> = Vec::new();
        let mut login_for = |instance: &Instance, previous: Option<&RoutingTable<P>>| {
            // The same host takes the same credentials (an IAM token is signed per host):
            // a promoted reader's writer pool logs in with what its reader pool had.
            previous
                .and_then(|t| {
                    t.slots()
                        .find(|s| s.instance.address() == instance.address())
                        .filter(|_| !fresh.contains_key(instance.id()))
                        .map(|s| s.login.clone())
                })
                .unwrap_or_else(|| Arc::new(SlotLogin::new(fresh.remove(instance.id()))))
        };
        let mut readers = Vec::new();
        let mut failure = None;
        for reader in Self::readers_in(topology, scope) {
            if let Some(i) = old.iter().position(|s| s.instance.same_placement(reader)) {
                readers.push(old.swap_remove(i).clone());
                continue;
            }
            let instance = Arc::new(reader.clone());
            let login = login_for(reader, previous);
            match open::<B>(backend, &instance, &login, Follows::Instance, config.reader) {
                Ok((pool, targets)) => {
                    opened.push(pool.clone());
                    readers.push(Slot {
                        instance,
                        pool,
                        login,
                        targets,
                    });
                }
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        let writer_instance = Arc::new(topology.writer().clone());
        let mut writer_left = None;
        let writer = match (failure, previous) {
            (Some(err), _) => Err(err),
            (None, Some(previous)) if previous.writer.instance.same_placement(&writer_instance) => {
                Ok(previous.writer.clone())
            }
            (None, Some(previous)) => {
                // The writer moved: the same pool follows it, so every handle taken from
                // `writer()` moves with it.
                let login = login_for(&writer_instance, Some(previous));
                let slot = Slot {
                    instance: writer_instance.clone(),
                    pool: previous.writer.pool.clone(),
                    login,
                    targets: previous.writer.targets.clone(),
                };
                writer_left = Some(previous.writer.instance.clone());
                Ok(slot)
            }
            (None, None) => {
                let login = login_for(&writer_instance, None);
                open::<B>(
                    backend,
                    &writer_instance,
                    &login,
                    Follows::Role,
                    config.writer,
                )
                .map(|(pool, targets)| {
                    opened.push(pool.clone());
                    Slot {
                        instance: writer_instance.clone(),
                        pool,
                        login,
                        targets,
                    }
                })
            }
        };
        // Before a lazy pool's discovery the writer is only the URL's host: no reads there.
        let reads_may_use_writer =
            scope.reads_may_use_writer(topology) && !topology.is_undiscovered();
        let built = writer.and_then(|writer| {
            let reads = match previous {
                Some(previous) => previous.reads.clone(),
                None => {
                    let targets = Targets::new(Vec::new());
                    targets.pace_rebalancing(config.reader.max_connections);
                    let pool = backend.open(
                        Role::Reader,
                        Follows::Role,
                        config.reader,
                        targets.clone(),
                    )?;
                    opened.push(pool.clone());
                    Shared { pool, targets }
                }
            };
            Ok((writer, reads))
        });
        let (writer, reads) = match built {
            Ok(built) => built,
            Err(err) => {
                for pool in opened {
                    tokio::spawn(close_bounded::<B>(pool));
                }
                return Err(err);
            }
        };
        // Nothing below can fail: the shared pools are pointed at their new instances only
        // once the table is certain to be built.
        //
        // While the writer is unavailable (declared dead, a failover under way) the writer's
        // pool has no route: it is parked on a reader that answers (the writer itself when
        // none does), where its connect check holds new connections until the routes
        // change, instead of dialing a dead host and backing off past the promotion.
        let writer_available = topology.writer().is_available();
        writer.targets.set_dialect(topology.dialect());
        // A parked pool whose parking place changed (that reader went silent too, or a
        // new one answers) is pointed at the new one: its driver would otherwise keep
        // dialing the old place while the routes stay empty.
        let parked_moved = writer
            .targets
            .set_parked(readers.first().map_or_else(|| writer.route(), Slot::route));
        let writer_routes = match writer_available {
            true => vec![writer.route()],
            false => Vec::new(),
        };
        let was_routed = !writer.targets.is_unrouted();
        let writer_parked = (was_routed && !writer_available && writer_left.is_none())
            .then(|| writer.instance.clone());
        let writer_routes_change =
            writer_left.is_some() || !same_routes(&writer.targets.routes(), &writer_routes);
        if writer_routes_change {
            if writer_routes.is_empty() {
                writer.targets.park();
            } else {
                writer.targets.set(writer_routes);
            }
        }
        if writer_routes_change || parked_moved {
            backend.retarget(&writer.pool, &writer.targets);
        }
        if writer_left.is_some() && writer_available {
            // Its idle connections are stale now: open the minimum on the new writer.
            fill_to_minimum::<B>(&writer.pool, config.writer, &writer.instance);
        }
        let read_routes: Vec<Route> = if !readers.is_empty() {
            readers.iter().map(Slot::route).collect()
        } else if reads_may_use_writer {
            vec![writer.route()]
        } else {
            Vec::new()
        };
        let unchanged = same_routes(&reads.targets.routes(), &read_routes);
        reads.targets.set_dialect(topology.dialect());
        let reads_parked_moved = reads.targets.set_parked(writer.route());
        if !unchanged {
            reads.targets.set(read_routes);
        }
        if !unchanged || reads_parked_moved {
            backend.retarget(&reads.pool, &reads.targets);
        }
        let retired = old
            .into_iter()
            .map(|s| (s.instance.clone(), s.pool.clone(), s.targets.clone()))
            .collect();
        Ok(Built {
            table: RoutingTable {
                topology: topology.clone(),
                writer,
                readers,
                reads,
                reads_may_use_writer,
            },
            retired,
            opened,
            writer_left,
            writer_parked,
        })
    }

    /// The same table with `pool` serving `instance` (the very `Arc` of a slot) instead of
    /// the pool it had.
    pub(crate) fn with_pool(&self, instance: &Arc<Instance>, pool: P) -> RoutingTable<P> {
        let replace = |slot: &Slot<P>| {
            if Arc::ptr_eq(&slot.instance, instance) {
                Slot {
                    pool: pool.clone(),
                    ..slot.clone()
                }
            } else {
                slot.clone()
            }
        };
        RoutingTable {
            topology: self.topology.clone(),
            writer: replace(&self.writer),
            readers: self.readers.iter().map(replace).collect(),
            reads: self.reads.clone(),
            reads_may_use_writer: self.reads_may_use_writer,
        }
    }

    /// The same table with `pool` as the shared reader pool.
    pub(crate) fn with_reads(&self, pool: P) -> RoutingTable<P> {
        RoutingTable {
            topology: self.topology.clone(),
            writer: self.writer.clone(),
            readers: self.readers.clone(),
            reads: Shared {
                pool,
                targets: self.reads.targets.clone(),
            },
            reads_may_use_writer: self.reads_may_use_writer,
        }
    }

    pub(crate) fn slots(&self) -> impl Iterator<Item = &Slot<P>> {
        std::iter::once(&self.writer).chain(&self.readers)
    }
}

/// Opens the pool of one instance (or, for the writer, of its role), prefilled to the
/// role's minimum.
fn open<B: Backend>(
    backend: &B,
    instance: &Arc<Instance>,
    login: &Arc<SlotLogin>,
    follows: Follows,
    sizing: PoolSizing,
) -> Result<(B::Pool, Arc<Targets>)> {
    tracing::debug!(
        target: "aurora_pool",
        instance = instance.id(),
        role = %instance.role(),
        address = %instance.address(),
        "opening instance pool"
    );
    let targets = Targets::single(Route {
        instance: instance.clone(),
        login: login.clone(),
    });
    let pool = backend.open(instance.role(), follows, sizing, targets.clone())?;
    fill_to_minimum::<B>(&pool, sizing, instance);
    Ok((pool, targets))
}

/// Opens `sizing`'s minimum of connections on `pool` in the background, if it has one.
fn fill_to_minimum<B: Backend>(pool: &B::Pool, sizing: PoolSizing, instance: &Instance) {
    if sizing.min_connections > 0 {
        tokio::spawn(prefill::<B>(
            pool.clone(),
            sizing.min_connections,
            instance.id().to_owned(),
        ));
    }
}
