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
//! Linux (and Android). Elsewhere both calls do nothing: tokio-postgres's own keepalives
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
    /// `shutdown(SHUT_RDWR)`.
    End,
    /// Set the keepalive options and user timeout where keepalives are off.
    KeepAlive(TcpSettings),
}

/// Ends every TCP connection of this process to `address` at once (queries and connects in
/// flight fail with a broken connection). Returns how many it ended.
pub(crate) async fn end_connections_to(address: &HostPort) -> usize {
    act_on(std::slice::from_ref(address), Act::End).await
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

/// [`keep_alive_connections_to`] in the background: a new connection is handed out without
/// waiting for the scan.
pub(crate) fn keep_alive_behind(addresses: Vec<HostPort>, settings: TcpSettings) {
    if cfg!(any(target_os = "linux", target_os = "android"))
        && (settings.keepalives || settings.tcp_user_timeout.is_some())
        && let Ok(runtime) = tokio::runtime::Handle::try_current()
    {
        runtime.spawn(async move { keep_alive_connections_to(&addresses, settings).await });
    }
}

async fn act_on(addresses: &[HostPort], act: Act) -> usize {
    if !cfg!(any(target_os = "linux", target_os = "android")) {
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

#[cfg(any(target_os = "linux", target_os = "android"))]
mod scan {
    use std::collections::HashSet;
    use std::fs::File;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};
    use std::os::unix::fs::MetadataExt;

    use socket2::{SockRef, TcpKeepalive};

    use super::Act;

    /// Acts on every TCP socket of the process whose peer is one of `peers`.
    pub(super) fn act_on(peers: &[SocketAddr], act: Act) -> usize {
        let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
            return 0;
        };
        // Sockets still connecting have no peer for getpeername; the kernel's table of TCP
        // sockets names it, by inode.
        let wanted = tcp_table_inodes(peers);
        let mut done = 0;
        for entry in entries.flatten() {
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<RawFd>().ok())
            else {
                continue;
            };
            let Some(inode) = std::fs::read_link(entry.path())
                .ok()
                .and_then(|target| socket_inode(target.to_str()?))
            else {
                continue;
            };
            if !wanted.contains(&inode) {
                continue;
            }
            let Some(socket) = duplicate(fd) else {
                continue;
            };
            // The descriptor may have been closed and reused since it was read: act only on
            // the very socket the table named.
            let file = File::from(socket);
            if file.metadata().ok().map(|m| m.ino()) != Some(inode) {
                continue;
            }
            let socket = OwnedFd::from(file);
            if apply(&SockRef::from(&socket), peers, act) {
                done += 1;
            }
        }
        done
    }

    fn apply(socket: &SockRef<'_>, peers: &[SocketAddr], act: Act) -> bool {
        // An established socket's peer is checked again on the socket itself.
        if let Some(peer) = socket.peer_addr().ok().and_then(|a| a.as_socket())
            && !peers.iter().any(|p| same_peer(p, &peer))
        {
            return false;
        }
        match act {
            Act::End => socket.shutdown(std::net::Shutdown::Both).is_ok(),
            Act::KeepAlive(settings) => {
                if socket.keepalive().unwrap_or(true) {
                    return false;
                }
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
        }
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
        /// thread) is found by its peer and ended: the read returns at once; a connection to
        /// another port is left alone.
        #[test]
        fn a_blocked_read_ends_and_others_are_left_alone() {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let target = listener.local_addr().unwrap();
            let mut stream = std::net::TcpStream::connect(target).unwrap();
            let kept = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
            let (_server_side, _) = listener.accept().unwrap();
            let reader = std::thread::spawn(move || {
                let mut buf = [0u8; 8];
                stream.read(&mut buf)
            });
            std::thread::sleep(Duration::from_millis(50));
            let set = act_on(
                &[target],
                Act::KeepAlive(crate::config::TcpSettings::default()),
            );
            assert_eq!(set, 1, "the keepalive settings reach the socket");
            assert_eq!(act_on(&[target], Act::End), 1);
            let read = reader.join().unwrap();
            assert!(matches!(read, Ok(0)), "{read:?}");
            assert!(SockRef::from(&kept).peer_addr().is_ok());
            assert!(!SockRef::from(&kept).keepalive().unwrap());
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod scan {
    use std::net::SocketAddr;

    pub(super) fn act_on(_: &[SocketAddr], _: super::Act) -> usize {
        0
    }
}
