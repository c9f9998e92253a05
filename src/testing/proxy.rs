//! Per-instance TCP proxies ("instance endpoints") and the "cluster endpoint"
//! proxy, running on a dedicated thread with its own tokio runtime.
//!
//! Black-holing: while an instance is black-holed, its proxy accepts new
//! connections but never connects them upstream, and stops forwarding on every
//! existing connection; all bytes read in either direction are discarded and
//! no socket is closed by the proxy, so clients hang instead of seeing an
//! error. Connections that were open when black-holing was switched on stay
//! dead for good (like a TCP connection through a failed network path); only
//! connections accepted after `blackhole(id, false)` are forwarded again.
//!
//! Holding connects: while an instance's new connections are held, its proxy accepts them
//! and waits before it connects them upstream; released, they go on as if the network had
//! only been slow (a connect in flight across a routing change).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::error::TestingError;

/// Where a connection is cut when it sends an armed statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutAt {
    /// The statement never reaches the server: the proxy swallows it and closes both sides,
    /// so the server sees its client vanish (and rolls back an open transaction).
    Request,
    /// The statement reaches the server and runs; its answer never reaches the client, whose
    /// connection is closed once the server answered (a reply lost on the network).
    Reply,
}

/// A one-shot fault: the next connection through the proxy that sends `statement` as a
/// simple query is cut `at`.
#[derive(Debug, Clone)]
struct Cut {
    message: Vec<u8>,
    at: CutAt,
}

impl Cut {
    fn new(statement: &str, at: CutAt) -> Cut {
        // A simple Query message: 'Q', its length (itself included), the text, a NUL.
        let len = u32::try_from(statement.len() + 5).unwrap_or(u32::MAX);
        let mut message = vec![b'Q'];
        message.extend_from_slice(&len.to_be_bytes());
        message.extend_from_slice(statement.as_bytes());
        message.push(0);
        Cut { message, at }
    }

    fn matches(&self, chunk: &[u8]) -> bool {
        chunk.windows(self.message.len()).any(|w| w == self.message)
    }
}

/// Where one instance's proxy forwards to, and whether it is black-holed.
#[derive(Debug)]
struct Target {
    upstream: SocketAddr,
    /// The armed fault, taken by the first connection that sends its statement.
    cut: Mutex<Option<Cut>>,
    blackholed: AtomicBool,
    /// Bumped each time black-holing is switched on; connections remember the
    /// epoch they started in and stay dead once it changes.
    epoch: AtomicU64,
    /// While true, new connections wait before they are connected upstream.
    held: tokio::sync::watch::Sender<bool>,
}

impl Target {
    fn is_dead(&self, start_epoch: u64) -> bool {
        self.blackholed.load(Ordering::SeqCst) || self.epoch.load(Ordering::SeqCst) != start_epoch
    }
}

/// The running proxies. Dropping (or [`Proxies::shutdown`]) stops them and
/// closes every proxied connection.
#[derive(Debug)]
pub(crate) struct Proxies {
    targets: HashMap<String, Arc<Target>>,
    addrs: HashMap<String, SocketAddr>,
    cluster_addr: SocketAddr,
    cluster_target: Arc<Mutex<String>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Binds a proxy listener: on 127.0.0.1 and a free port, or with a shared port on the
/// loopback address `127.0.0.(10 + index)` (index 0 is the cluster endpoint).
fn bind_loopback(shared_port: Option<u16>, index: usize) -> Result<StdTcpListener, TestingError> {
    let addr = match shared_port {
        None => SocketAddr::from(([127, 0, 0, 1], 0)),
        Some(port) => {
            let last = u8::try_from(10 + index)
                .map_err(|_| TestingError::new("too many instances for one shared port"))?;
            SocketAddr::from(([127, 0, 0, last], port))
        }
    };
    let l = StdTcpListener::bind(addr)
        .map_err(|e| TestingError::new(format!("binding a proxy port on {addr}: {e}")))?;
    l.set_nonblocking(true)
        .map_err(|e| TestingError::new(format!("proxy listener set_nonblocking: {e}")))?;
    Ok(l)
}

impl Proxies {
    /// Binds one listener per `(instance id, upstream address)` plus the
    /// cluster endpoint (initially aimed at `cluster_target`), and starts
    /// serving them on a new thread. With `shared_port`, every listener takes that port on
    /// its own loopback address (see [`bind_loopback`]).
    pub(crate) fn start(
        upstreams: &[(String, SocketAddr)],
        cluster_target: &str,
        shared_port: Option<u16>,
    ) -> Result<Self, TestingError> {
        let mut targets = HashMap::new();
        let mut addrs = HashMap::new();
        let mut listeners = Vec::new();
        for (index, (id, upstream)) in upstreams.iter().enumerate() {
            let l = bind_loopback(shared_port, index + 1)?;
            let addr = l
                .local_addr()
                .map_err(|e| TestingError::new(format!("proxy local_addr: {e}")))?;
            let target = Arc::new(Target {
                upstream: *upstream,
                cut: Mutex::new(None),
                blackholed: AtomicBool::new(false),
                epoch: AtomicU64::new(0),
                held: tokio::sync::watch::channel(false).0,
            });
            targets.insert(id.clone(), target.clone());
            addrs.insert(id.clone(), addr);
            listeners.push((l, Some(target)));
        }
        let cl = bind_loopback(shared_port, 0)?;
        let cluster_addr = cl
            .local_addr()
            .map_err(|e| TestingError::new(format!("proxy local_addr: {e}")))?;
        listeners.push((cl, None));
        let cluster_target = Arc::new(Mutex::new(cluster_target.to_owned()));

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TestingError::new(format!("building the proxy runtime: {e}")))?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let all_targets = targets.clone();
        let ct = cluster_target.clone();
        let thread = std::thread::Builder::new()
            .name("aurora-pool-testing-proxy".into())
            .spawn(move || {
                runtime.block_on(async move {
                    for (listener, target) in listeners {
                        let listener = match TcpListener::from_std(listener) {
                            Ok(l) => l,
                            Err(e) => {
                                tracing::warn!(target: "aurora_pool::testing", error = %e, "proxy listener unusable");
                                continue;
                            }
                        };
                        let all = all_targets.clone();
                        let ct = ct.clone();
                        tokio::spawn(accept_loop(listener, target, all, ct));
                    }
                    let _ = stop_rx.await;
                });
                // Dropping the runtime cancels every connection task and closes its sockets.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| TestingError::new(format!("spawning the proxy thread: {e}")))?;
        tracing::debug!(target: "aurora_pool::testing", ?addrs, %cluster_addr, "proxies started");
        Ok(Self {
            targets,
            addrs,
            cluster_addr,
            cluster_target,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The proxy address of an instance.
    pub(crate) fn addr(&self, id: &str) -> Option<SocketAddr> {
        self.addrs.get(id).copied()
    }

    /// The cluster endpoint's address.
    pub(crate) fn cluster_addr(&self) -> SocketAddr {
        self.cluster_addr
    }

    /// Switches black-holing of an instance; false if the id is unknown.
    pub(crate) fn blackhole(&self, id: &str, on: bool) -> bool {
        let Some(t) = self.targets.get(id) else {
            return false;
        };
        if on {
            t.epoch.fetch_add(1, Ordering::SeqCst);
        }
        t.blackholed.store(on, Ordering::SeqCst);
        true
    }

    /// Holds (or releases) the new connections of an instance before they are connected
    /// upstream; false if the id is unknown.
    pub(crate) fn hold_connects(&self, id: &str, on: bool) -> bool {
        let Some(t) = self.targets.get(id) else {
            return false;
        };
        t.held.send_replace(on);
        true
    }

    /// Arms a one-shot cut of the next connection to `id` that sends `statement`; false if
    /// the id is unknown.
    pub(crate) fn cut_at(&self, id: &str, statement: &str, at: CutAt) -> bool {
        let Some(t) = self.targets.get(id) else {
            return false;
        };
        *t.cut.lock().unwrap_or_else(|e| e.into_inner()) = Some(Cut::new(statement, at));
        true
    }

    /// Aims the cluster endpoint at an instance; false if the id is unknown.
    pub(crate) fn point_cluster_endpoint(&self, id: &str) -> bool {
        if !self.targets.contains_key(id) {
            return false;
        }
        *self
            .cluster_target
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = id.to_owned();
        true
    }

    /// Stops the proxy thread and waits for it.
    pub(crate) fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(
    listener: TcpListener,
    fixed: Option<Arc<Target>>,
    all: HashMap<String, Arc<Target>>,
    cluster_target: Arc<Mutex<String>>,
) {
    loop {
        let client = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(target: "aurora_pool::testing", error = %e, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let target = match &fixed {
            Some(t) => t.clone(),
            None => {
                let id = cluster_target
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                match all.get(&id) {
                    Some(t) => t.clone(),
                    None => continue, // unreachable: ids are validated when set
                }
            }
        };
        tokio::spawn(serve(client, target));
    }
}

/// Reads and discards until the peer closes.
async fn discard(mut s: TcpStream) {
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

async fn serve(client: TcpStream, target: Arc<Target>) {
    let epoch = target.epoch.load(Ordering::SeqCst);
    let _ = client.set_nodelay(true);
    if target.is_dead(epoch) {
        return discard(client).await;
    }
    let mut held = target.held.subscribe();
    let _ = held.wait_for(|held| !*held).await;
    let upstream = match TcpStream::connect(target.upstream).await {
        Ok(s) => s,
        // Instance down: close the client connection, like a refused connect.
        Err(_) => return,
    };
    if target.is_dead(epoch) {
        // Keep the upstream socket open but unused while the client hangs.
        let _keep = upstream;
        return discard(client).await;
    }
    let _ = upstream.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();

    // Set when an armed `CutAt::Reply` statement went upstream: the server's next answer is
    // dropped and the client's connection closed.
    let (reply_cut, mut reply_cut_rx) = tokio::sync::watch::channel(false);
    let t = target.clone();
    let client_to_upstream = async move {
        let mut buf = vec![0u8; 16384];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return, // client gone: close everything
                Ok(n) => {
                    if t.is_dead(epoch) {
                        continue;
                    }
                    let cut = {
                        let mut armed = t.cut.lock().unwrap_or_else(|e| e.into_inner());
                        match armed.as_ref() {
                            Some(cut) if cut.matches(&buf[..n]) => armed.take(),
                            _ => None,
                        }
                    };
                    match cut.map(|c| c.at) {
                        // Swallowed: closing both sides ends the server's session.
                        Some(CutAt::Request) => return,
                        Some(CutAt::Reply) => {
                            let _ = reply_cut.send(true);
                        }
                        None => {}
                    }
                    if uw.write_all(&buf[..n]).await.is_err() && !t.is_dead(epoch) {
                        return;
                    }
                }
            }
        }
    };
    let t = target;
    let upstream_to_client = async move {
        let mut buf = vec![0u8; 16384];
        loop {
            let read = tokio::select! {
                read = ur.read(&mut buf) => read,
                _ = reply_cut_rx.changed() => continue,
            };
            if *reply_cut_rx.borrow() {
                // The server answered the cut statement (the flag is set before it is
                // forwarded): drop the answer and close the client's side only.
                let _ = cw.shutdown().await;
                return;
            }
            match read {
                Ok(0) | Err(_) => {
                    if !t.is_dead(epoch) {
                        // Propagate the server's close.
                        let _ = cw.shutdown().await;
                        return;
                    }
                    // Dead: never signal anything to the client; keep its socket
                    // open (the other direction keeps draining it).
                    std::future::pending::<()>().await;
                }
                Ok(n) => {
                    if t.is_dead(epoch) {
                        continue;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = client_to_upstream => {}
        _ = upstream_to_client => {}
    }
}
