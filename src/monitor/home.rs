//! Where cluster monitors run: a runtime of the crate's own, with two worker threads, for
//! the life of the process.
//!
//! A monitor serves every pool of its cluster, whatever runtime each pool was opened on.
//! Spawned on the first pool's runtime, it would end with that runtime (a `#[tokio::test]`'s
//! runtime ends with its test, a worker's with its job) and leave every other pool of the
//! cluster without a monitor: no failover followed, no probe, no forced refresh. Its work is
//! light (a few queries a second per instance) and waits on I/O; two workers rather than
//! one, because a probe that waits for a CPU-starved thread misses its answer window and
//! counts as a silent instance (one thread for every monitor of a loaded test process gave
//! false verdicts). Its connections and timers belong to it; the pools see the monitor only
//! through channels, which work across runtimes.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Handle;

/// Spawns `future` on the monitors' runtime (on the caller's runtime when the process
/// could not start one: a thread or runtime refused by the OS, logged once).
pub(crate) fn spawn<F>(future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match home() {
        Some(home) => drop(home.spawn(future)),
        None => drop(tokio::spawn(future)),
    }
}

fn home() -> Option<&'static Handle> {
    static HOME: OnceLock<Option<Handle>> = OnceLock::new();
    HOME.get_or_init(start).as_ref()
}

fn start() -> Option<Handle> {
    // The runtime is built and kept on a thread of its own: one dropped inside the caller's
    // async context would panic.
    let (sender, answer) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("aurora-pool-monitor".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("aurora-pool-monitor")
                .enable_all()
                .build()
            {
                Ok(runtime) => {
                    let _ = sender.send(Some(runtime.handle().clone()));
                    runtime.block_on(std::future::pending::<()>());
                }
                Err(err) => {
                    tracing::warn!(target: "aurora_pool", error = %err, "no runtime of its own for the cluster monitors: they run on the first pool's runtime and end with it");
                    let _ = sender.send(None);
                }
            }
        });
    if let Err(err) = thread {
        tracing::warn!(target: "aurora_pool", error = %err, "no thread for the cluster monitors: they run on the first pool's runtime and end with it");
        return None;
    }
    // Once per process, for as long as building a current-thread runtime takes.
    answer.recv().ok().flatten()
}
