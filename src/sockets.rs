//! The process's own TCP connections to one instance, reached from outside the driver: ended
//! at once when the instance is declared dead, and given keepalives and a user timeout right
//! after they connect.
//!
//! # Why from outside the driver
//! sqlx 0.9 opens its sockets itself, sets nothing but `TCP_NODELAY` and offers no hook to
//! reach them. A query waiting for a reply from a black-holed host then waits for ever, and
//! every such connection keeps a permit of the `PgPool` the user's handles share: ten of
//! them wedge a writer pool that the routing already moved to the new writer. tokio-postgres
//! sets keepalives itself, but a connect in flight to a silent host still waits out its
//! timeout. So the crate finds the sockets whose peer is the instance's address among the
//! process's descriptors (`/proc/self/fd`, and `/proc/self/net/tcp{,6}` for sockets still
//! connecting, whose peer `getpeername` does not tell) and acts on the socket itself:
//! `shutdown(SHUT_RDWR)` wakes every task waiting on it with end-of-file or a reset at once,
//! and the driver closes the connection as broken; `setsockopt` sets the keepalive options.
//!
//! # Why it is safe
//! - The crate never closes or reads a descriptor it does not own. It duplicates the
//!   descriptor (`F_DUPFD_CLOEXEC`), checks on the duplicate that it is still the socket found
//!   (same inode), acts through the duplicate and closes only the duplicate. `shutdown` and
//!   `setsockopt` act on the socket, not the descriptor, so the owner's descriptor sees the
//!   effect, and a descriptor closed and reused meanwhile is never touched (the inode check).
//! - Only TCP sockets whose peer is the instance's address and port are touched. Another
//!   library's connection to that very instance endpoint is ended too when the instance is
//!   declared dead (it is as dead for it), and gets the keepalive settings when it has none.
//! - A scan reads the process's descriptor table once: about half a millisecond for a small
//!   process. It runs on the blocking pool, once per new connection (keepalives) and once or
//!   twice per instance declared dead.
//!
//! # Where it works
//! Linux. Elsewhere both calls do nothing: tokio-postgres's own keepalives
//! still hold in the deadpool flavour, the sqlx flavour's connections have none, and a query
//! in flight on a silent instance ends when the operating system gives up (README, *Silent
//! failures*).

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::TcpSettings;
use crate::endpoint::HostPort;

/// How long resolving an instance's host name may take before the sockets are looked up.
const RESOLVE_LIMIT: Duration = Duration::from_secs(1);

/// What to do to the sockets found.
#[derive(Debug, Clone, Copy)]
enum Act {
    /// `shutdown(SHUT_RDWR)`, for sockets that heard nothing from their peer for this long.
    End(Duration),
    /// Set the keepalive options and user timeout where keepalives are off.
    KeepAlive(TcpSettings),
}

/// Ends every TCP connection of this process to `address` that is still connecting, or
/// heard nothing from its peer (no data, no acknowledgement) for `quiet_for`: queries and
/// connects in flight on a silent host fail with a broken connection. Returns how many it
/// ended. `quiet_for` is the probes' timeout: an instance is declared dead only after two
/// or more unanswered probes, so a socket to a silent host has been quiet at least that
/// long, while one whose peer's kernel answered more recently is alive whatever the verdict
/// said (a false verdict, this process too busy to read its probes' answers in time, must
/// not cut work that is going well).
pub(crate) async fn end_connections_to(address: &HostPort, quiet_for: Duration) -> usize {
    let ended = act_on(std::slice::from_ref(address), Act::End(quiet_for)).await;
    if ended > 0 {
        tracing::info!(
            target: "aurora_pool",
            %address,
            connections = ended,
            "connections to an instance declared dead ended"
        );
    }
    ended
}

/// Sets `settings` on this process's TCP connections to any of `addresses` that have no
/// keepalives yet (the ones just opened). Returns how many it set.
pub(crate) async fn keep_alive_connections_to(
    addresses: &[HostPort],
    settings: TcpSettings,
) -> usize {
    if !settings.keepalives && settings.tcp_user_timeout.is_none() {
        return 0;
    }
    act_on(addresses, Act::KeepAlive(settings)).await
}

/// How long requests for keepalive settings gather before one scan serves them all: a pool
/// filling up opens many connections at once, and each scan reads the descriptor table.
const KEEPALIVE_BATCH: Duration = Duration::from_millis(20);

/// Requests for keepalive settings waiting for the next scan, and whether one is scheduled.
static KEEPALIVE_REQUESTS: std::sync::Mutex<(Vec<(HostPort, TcpSettings)>, bool)> =
    std::sync::Mutex::new((Vec::new(), false));

/// [`keep_alive_connections_to`] in the background: a new connection is handed out without
/// waiting for the scan, and the requests of [`KEEPALIVE_BATCH`] share one scan.
pub(crate) fn keep_alive_behind(addresses: Vec<HostPort>, settings: TcpSettings) {
    if !cfg!(target_os = "linux") || !(settings.keepalives || settings.tcp_user_timeout.is_some()) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let schedule = {
        let mut requests = KEEPALIVE_REQUESTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        requests
            .0
            .extend(addresses.into_iter().map(|address| (address, settings)));
        !std::mem::replace(&mut requests.1, true)
    };
    if schedule {
        runtime.spawn(async {
            tokio::time::sleep(KEEPALIVE_BATCH).await;
            let batch = {
                let mut requests = KEEPALIVE_REQUESTS
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                requests.1 = false;
                std::mem::take(&mut requests.0)
            };
            // One scan per distinct settings (pools of one process normally share them).
            let mut groups: Vec<(TcpSettings, Vec<HostPort>)> = Vec::new();
            for (address, settings) in batch {
                match groups.iter_mut().find(|(s, _)| *s == settings) {
                    Some((_, addresses)) if !addresses.contains(&address) => {
                        addresses.push(address)
                    }
                    Some(_) => {}
                    None => groups.push((settings, vec![address])),
                }
            }
            for (settings, addresses) in groups {
                keep_alive_connections_to(&addresses, settings).await;
            }
        });
    }
}

async fn act_on(addresses: &[HostPort], act: Act) -> usize {
    if !cfg!(target_os = "linux") {
        return 0;
    }
    let mut peers = Vec::new();
    for address in addresses {
        peers.extend(resolve(address).await);
    }
    if peers.is_empty() {
        return 0;
    }
    tokio::task::spawn_blocking(move || scan::act_on(&peers, act))
        .await
        .unwrap_or(0)
}

/// The socket addresses of `address`: the IP itself, or the host name resolved (bounded).
async fn resolve(address: &HostPort) -> Vec<SocketAddr> {
    if let Ok(ip) = address
        .host
        .trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
    {
        return vec![SocketAddr::new(ip, address.port)];
    }
    let lookup = tokio::net::lookup_host((address.host.as_str(), address.port));
    match tokio::time::timeout(RESOLVE_LIMIT, lookup).await {
        Ok(Ok(found)) => found.collect(),
        _ => Vec::new(),
    }
}

#[cfg(target_os = "linux")]
mod scan {
    use std::collections::HashSet;
    use std::fs::File;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};
    use std::os::unix::fs::MetadataExt;
    use std::time::Duration;

    use socket2::{SockRef, TcpKeepalive};

    use super::Act;
    use crate::config::TcpSettings;

    /// Acts on every TCP socket of the process whose peer is one of `peers`.
    pub(super) fn act_on(peers: &[SocketAddr], act: Act) -> usize {
        match act {
            Act::End(quiet_for) => end(peers, quiet_for),
            Act::KeepAlive(settings) => keep_alive(peers, settings),
        }
    }

    /// Sockets known to have keepalives on (set here or by their owner), by inode: skipped
    /// by later scans; pruned to the open ones at each scan.
    static LOOKED_AT: std::sync::Mutex<Option<HashSet<u64>>> = std::sync::Mutex::new(None);

    /// The keepalive scan: only established sockets matter (a new connection's), whose peer
    /// the socket itself tells, so the kernel's TCP table is not read, and a socket known to
    /// have keepalives is skipped after one `readlink`.
    fn keep_alive(peers: &[SocketAddr], settings: TcpSettings) -> usize {
        let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
            return 0;
        };
        let mut looked_at = LOOKED_AT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = looked_at.take().unwrap_or_default();
        let mut now = HashSet::with_capacity(before.len());
        let mut done = 0;
        for (fd, inode) in sockets(entries) {
            if before.contains(&inode) {
                now.insert(inode);
                continue;
            }
            let Some(socket) = duplicate_checked(fd, inode) else {
                continue;
            };
            let socket = SockRef::from(&socket);
            match socket.keepalive() {
                Ok(true) => {
                    now.insert(inode);
                    continue;
                }
                // Unreadable: left alone, looked at again next time.
                Err(_) => continue,
                Ok(false) => {}
            }
            // Still connecting (no peer yet), or to another peer (whose own request may
            // come in a later batch): looked at again next time.
            let Some(peer) = socket.peer_addr().ok().and_then(|a| a.as_socket()) else {
                continue;
            };
            if peers.iter().any(|p| same_peer(p, &peer)) && set_keepalive(&socket, settings) {
                if settings.keepalives {
                    now.insert(inode);
                }
                done += 1;
            }
        }
        *looked_at = Some(now);
        done
    }

    /// The descriptors of the process that are sockets, with their inodes.
    fn sockets(entries: std::fs::ReadDir) -> impl Iterator<Item = (RawFd, u64)> {
        entries.flatten().filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse::<RawFd>().ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            Some((fd, socket_inode(target.to_str()?)?))
        })
    }

    /// A duplicate of `fd` if it is still the socket `inode` (the descriptor may have been
    /// closed and reused since it was read).
    fn duplicate_checked(fd: RawFd, inode: u64) -> Option<OwnedFd> {
        let file = File::from(duplicate(fd)?);
        (file.metadata().ok()?.ino() == inode).then(|| OwnedFd::from(file))
    }

    /// Ends every socket to `peers`, those still connecting included.
    fn end(peers: &[SocketAddr], quiet_for: Duration) -> usize {
        let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
            return 0;
        };
        // Sockets still connecting have no peer for getpeername; the kernel's table of TCP
        // sockets names it, by inode.
        let wanted = tcp_table_inodes(peers);
        let mut done = 0;
        for (fd, inode) in sockets(entries) {
            if !wanted.contains(&inode) {
                continue;
            }
            // Act only on the very socket the table named.
            let Some(socket) = duplicate_checked(fd, inode) else {
                continue;
            };
            let socket = SockRef::from(&socket);
            if to_peers(&socket, peers)
                && faces_silence(&socket, quiet_for)
                && socket.shutdown(std::net::Shutdown::Both).is_ok()
            {
                done += 1;
            }
        }
        done
    }

    /// Whether `socket` is to one of `peers`: an established socket's peer is checked again
    /// on the socket itself; one still connecting has none yet (the TCP table named it).
    fn to_peers(socket: &SockRef<'_>, peers: &[SocketAddr]) -> bool {
        match socket.peer_addr().ok().and_then(|a| a.as_socket()) {
            Some(peer) => peers.iter().any(|p| same_peer(p, &peer)),
            None => true,
        }
    }

    /// Sets `settings` on a socket found without keepalives.
    fn set_keepalive(socket: &SockRef<'_>, settings: TcpSettings) -> bool {
        let mut ok = true;
        if settings.keepalives {
            let keepalive = TcpKeepalive::new()
                .with_time(settings.keepalives_idle)
                .with_interval(settings.keepalives_interval)
                .with_retries(settings.keepalives_count);
            ok &= socket.set_tcp_keepalive(&keepalive).is_ok();
        }
        if let Some(timeout) = settings.tcp_user_timeout {
            ok &= socket.set_tcp_user_timeout(Some(timeout)).is_ok();
        }
        ok
    }

    /// Whether the connection faces silence: still connecting, established but never
    /// answered (a login whose first reply has not come: a frozen server's kernel accepts
    /// the connection and acknowledges the startup message, so the quiet test below would
    /// spare a login begun just before the verdict, which then holds a pool's slot until
    /// the checkout's deadline), or heard nothing from its peer (no data, no
    /// acknowledgement) for `quiet_for`. (The kernel's send and receive times are too
    /// coarse, a few ms, to tell a connection waiting for an answer from an idle one; an
    /// idle one ended is dropped by its pool's test before the next checkout.)
    fn faces_silence(socket: &SockRef<'_>, quiet_for: Duration) -> bool {
        use std::os::fd::AsRawFd;
        let Some((info, len)) = tcp_info(socket.as_raw_fd()) else {
            return true;
        };
        if u32::from(info.tcpi_state) != ESTABLISHED {
            return true;
        }
        // Reported by kernels since 4.1; an older one writes less, and only the quiet test
        // applies.
        let reports_bytes_received = len
            >= std::mem::offset_of!(libc::tcp_info, tcpi_bytes_received)
                + std::mem::size_of::<u64>();
        if reports_bytes_received && info.tcpi_bytes_received == 0 {
            return true;
        }
        let quiet_ms = u128::from(info.tcpi_last_ack_recv.min(info.tcpi_last_data_recv));
        quiet_ms >= quiet_for.as_millis()
    }

    /// `TCP_ESTABLISHED` in `tcp_info.tcpi_state`.
    const ESTABLISHED: u32 = 1;

    /// The kernel's `tcp_info` of a TCP socket, with how many of its bytes the kernel wrote.
    #[allow(unsafe_code)]
    fn tcp_info(fd: RawFd) -> Option<(libc::tcp_info, usize)> {
        // SAFETY: `tcp_info` is plain old data (integers only), so all zeroes is a valid
        // value; the kernel writes at most `len` bytes into it and sets `len` to what it
        // wrote; `fd` is a descriptor this module owns (a duplicate) for the whole call.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let done = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut len,
            )
        };
        (done == 0).then_some((info, len as usize))
    }

    /// A descriptor of our own for the socket behind `fd`, which other code owns.
    #[allow(unsafe_code)]
    fn duplicate(fd: RawFd) -> Option<OwnedFd> {
        // SAFETY: `fcntl(F_DUPFD_CLOEXEC)` only reads `fd`; on a descriptor closed meanwhile
        // it fails with EBADF. It never closes or changes `fd`.
        let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if copy < 0 {
            return None;
        }
        // SAFETY: `copy` is a fresh descriptor this function just created and nothing else
        // knows: owning it (and closing it on drop) is ours alone.
        Some(unsafe { OwnedFd::from_raw_fd(copy) })
    }

    /// `socket:[12345]` → 12345.
    fn socket_inode(link: &str) -> Option<u64> {
        link.strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    }

    fn same_peer(a: &SocketAddr, b: &SocketAddr) -> bool {
        a.port() == b.port() && canonical(a.ip()) == canonical(b.ip())
    }

    fn canonical(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        }
    }

    /// The inodes of the TCP sockets (any state) whose remote address is one of `peers`.
    fn tcp_table_inodes(peers: &[SocketAddr]) -> HashSet<u64> {
        let mut inodes = HashSet::new();
        for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
            let Ok(text) = std::fs::read_to_string(table) else {
                continue;
            };
            for line in text.lines().skip(1) {
                if let Some((remote, inode)) = parse_tcp_line(line)
                    && inode != 0
                    && peers.iter().any(|p| same_peer(p, &remote))
                {
                    inodes.insert(inode);
                }
            }
        }
        inodes
    }

    /// One line of `/proc/net/tcp{,6}`: the remote address and the socket's inode.
    fn parse_tcp_line(line: &str) -> Option<(SocketAddr, u64)> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let remote = parse_hex_address(fields.get(2)?)?;
        let inode = fields.get(9)?.parse().ok()?;
        Some((remote, inode))
    }

    /// `0100007F:1F90` (IPv4) or 32 hex digits (IPv6), each 32-bit word in the kernel's
    /// byte order, then the port in hex.
    fn parse_hex_address(text: &str) -> Option<SocketAddr> {
        let (ip, port) = text.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        let word = |i: usize| -> Option<[u8; 4]> {
            let value = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
            Some(value.to_ne_bytes())
        };
        let ip = match ip.len() {
            8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
            32 => {
                let mut bytes = [0u8; 16];
                for i in 0..4 {
                    bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
                }
                IpAddr::V6(Ipv6Addr::from(bytes))
            }
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::io::Read;
        use std::time::Duration;

        #[test]
        fn kernel_addresses_are_read() {
            let v4 = parse_hex_address("0100007F:1F90").unwrap();
            assert_eq!(v4, "127.0.0.1:8080".parse().unwrap());
            let v6 = parse_hex_address("00000000000000000000000001000000:0050").unwrap();
            assert_eq!(v6, "[::1]:80".parse().unwrap());
            let mapped = parse_hex_address("0000000000000000FFFF00000100007F:0050").unwrap();
            assert!(same_peer(&mapped, &"127.0.0.1:80".parse().unwrap()));
            assert!(parse_hex_address("zz").is_none());
        }

        /// A socket owned by other code (here a std `TcpStream` blocked in `read` on another
        /// thread, waiting for the answer to a request its silent peer never gives) is found
        /// by its peer and ended: the read returns at once. A connection whose peer answered
        /// just now, and one to another port, are left alone.
        #[test]
        fn a_blocked_read_ends_and_others_are_left_alone() {
            use std::io::Write;
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let target = listener.local_addr().unwrap();
            let mut waiting = std::net::TcpStream::connect(target).unwrap();
            let (_silent_side, _) = listener.accept().unwrap();
            let mut answered = std::net::TcpStream::connect(target).unwrap();
            let (mut answering_side, _) = listener.accept().unwrap();
            let kept = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
            waiting.write_all(b"request").unwrap();
            let reader = std::thread::spawn(move || {
                let mut buf = [0u8; 8];
                waiting.read(&mut buf)
            });
            let set = act_on(&[target], Act::KeepAlive(TcpSettings::default()));
            assert_eq!(
                set, 2,
                "the keepalive settings reach every socket to the peer"
            );
            let quiet_for = Duration::from_millis(250);
            std::thread::sleep(quiet_for * 2);
            // A request answered a moment ago: its peer is alive.
            answered.write_all(b"request").unwrap();
            answering_side.write_all(b"answer").unwrap();
            // Well under `quiet_for`, and room for a loaded machine (124 unit tests at once)
            // to deliver the answer first.
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(
                act_on(&[target], Act::End(quiet_for)),
                1,
                "only the one facing silence"
            );
            let read = reader.join().unwrap();
            assert!(matches!(read, Ok(0)), "{read:?}");
            for alive in [&answered, &kept] {
                let mut probe = [0u8; 16];
                alive.set_nonblocking(true).unwrap();
                let still_open = match alive.peek(&mut probe) {
                    Ok(n) => n > 0,
                    Err(err) => err.kind() == std::io::ErrorKind::WouldBlock,
                };
                assert!(still_open, "a live connection was ended");
            }
            assert!(!SockRef::from(&kept).keepalive().unwrap());
        }

        /// A login whose first reply never came (a frozen server's kernel accepted the
        /// connection and acknowledged the request) is ended however recently it began; a
        /// connection to the same peer that has heard from it recently is not.
        #[test]
        fn a_login_never_answered_ends_however_recent() {
            use std::io::Write;
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let target = listener.local_addr().unwrap();
            let mut answered = std::net::TcpStream::connect(target).unwrap();
            let (mut answering_side, _) = listener.accept().unwrap();
            answered.write_all(b"startup").unwrap();
            answering_side.write_all(b"ready").unwrap();
            let mut probe = [0u8; 16];
            assert_eq!(answered.read(&mut probe).unwrap(), 5);
            let mut login = std::net::TcpStream::connect(target).unwrap();
            let (_frozen_side, _) = listener.accept().unwrap();
            login.write_all(b"startup").unwrap();
            let reader = std::thread::spawn(move || {
                let mut buf = [0u8; 8];
                login.read(&mut buf)
            });
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(
                act_on(&[target], Act::End(Duration::from_secs(60))),
                1,
                "the unanswered login, and only it"
            );
            let read = reader.join().unwrap();
            assert!(matches!(read, Ok(0)), "{read:?}");
            answered.set_nonblocking(true).unwrap();
            let open = answered.read(&mut probe);
            assert!(
                matches!(&open, Err(err) if err.kind() == std::io::ErrorKind::WouldBlock),
                "the answered connection was ended: {open:?}"
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod scan {
    use std::net::SocketAddr;

    pub(super) fn act_on(_: &[SocketAddr], _: super::Act) -> usize {
        0
    }
}
