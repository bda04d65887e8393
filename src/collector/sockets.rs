//! gravity's own connections: how many ESTABLISHED TCP connections the gravity process
//! holds to each endpoint of its config.
//!
//! A probe from the exporter can succeed while gravity itself has lost its connection (a
//! half-open connection after a failover, a pool that gave up), so the exporter also looks
//! at gravity's sockets:
//!
//! 1. `/proc/<pid>/fd/*` links of the form `socket:[INODE]` give the socket inodes gravity
//!    holds;
//! 2. the kernel's sock_diag netlink interface lists the ESTABLISHED TCP sockets of the
//!    exporter's network namespace, when gravity shares it (`/proc/<pid>/ns/net` is the
//!    exporter's own: a sidecar in gravity's pod, or both on one host): one dump per address
//!    family, filtered in the kernel, about 1.5 ms on a host with a 262,144-bucket TCP hash
//!    table. Otherwise (or when that fails), `/proc/<pid>/net/tcp` and `tcp6` list the TCP
//!    sockets of gravity's network namespace, one per line (the kernel walks the whole hash
//!    table twice per file to write them: about 9 ms for both on the same host):
//!    `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...`.
//!    Addresses are hex: the IPv4 address is the 32-bit word as the kernel stores it
//!    (network byte order) printed as a host-order integer, so on little-endian machines
//!    `0100007F` is 127.0.0.1; IPv6 is four such words. Ports are plain big-endian hex
//!    (`0CEA` = 3306). State `01` is ESTABLISHED;
//! 3. an entry counts for an endpoint when it is ESTABLISHED, its inode is gravity's, and
//!    its remote address is one of the endpoint host's addresses (resolved with a timeout
//!    and cached) and its port. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) match the
//!    IPv4 address.
//!
//! The fd links are read on every collection; the tables (step 2) only when one of gravity's
//! connections to an endpoint port is gone from its fds, when the endpoint ports changed, or
//! when the last read is [`TABLE_REUSE`] (60 s) old: either way the kernel walks the host's
//! whole TCP hash table, which costs milliseconds even on an idle host. So a lost
//! connection shows at the next collection; a new one, or one the peer closed
//! (`CLOSE_WAIT`) while gravity keeps the fd, within 60 s.
//!
//! Endpoints that share an address (gravity's source and probe DB are often the same
//! server) each count every connection to that address. Reading another user's
//! `/proc/<pid>/fd` needs the same user or `CAP_SYS_PTRACE`.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::connections::probe_targets;
use super::{BoxFuture, CollectError, Collector, Context};
use crate::base::lock;
use crate::metrics::Families;

/// Largest `net/tcp` or `net/tcp6` file read.
pub const MAX_NET_TCP_BYTES: u64 = 64 * 1024 * 1024;
/// Most fd entries looked at.
pub const MAX_FDS: usize = 1 << 20;
/// TCP state ESTABLISHED in `/proc/net/tcp`.
pub const TCP_ESTABLISHED: u8 = 0x01;
/// How long a resolved address list is trusted.
const DNS_TTL: Duration = Duration::from_secs(60);
/// How long a failed resolution is remembered.
const DNS_NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// Most addresses kept per host.
const MAX_ADDRS: usize = 16;

/// One line of `/proc/<pid>/net/tcp{,6}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpEntry {
    /// Local address.
    pub local: SocketAddr,
    /// Remote address.
    pub remote: SocketAddr,
    /// TCP state (`01` ESTABLISHED, `0A` LISTEN, ...).
    pub state: u8,
    /// Socket inode.
    pub inode: u64,
}

/// Parses a hex `ADDR:PORT` of `/proc/net/tcp` (8 hex digits) or `tcp6` (32 hex digits).
/// The address words are in host byte order, as the kernel prints them.
pub fn parse_hex_addr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                let w = word(i)?;
                b.get_mut(i * 4..i * 4 + 4)?.copy_from_slice(&w);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Parses the text of `/proc/<pid>/net/tcp` or `tcp6`; the header and malformed lines are skipped.
pub fn parse_net_tcp(text: &str) -> Vec<TcpEntry> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let sl = f.next()?;
            if !sl.ends_with(':') {
                return None; // header
            }
            let local = parse_hex_addr(f.next()?)?;
            let remote = parse_hex_addr(f.next()?)?;
            let state = u8::from_str_radix(f.next()?, 16).ok()?;
            // tx_queue:rx_queue, tr:tm->when, retrnsmt, uid, timeout, then the inode
            let inode = f.nth(5)?.parse().ok()?;
            Some(TcpEntry {
                local,
                remote,
                state,
                inode,
            })
        })
        .collect()
}

/// The inode of an fd link target `socket:[INODE]`.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// An IPv4-mapped IPv6 address as IPv4; anything else unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// ESTABLISHED entries held by one of `inodes` whose remote end is one of `ips` at `port`.
pub fn count_established(
    entries: &[TcpEntry],
    inodes: &HashSet<u64>,
    ips: &[IpAddr],
    port: u16,
) -> u64 {
    let ips: Vec<IpAddr> = ips.iter().copied().map(canonical).collect();
    entries
        .iter()
        .filter(|e| {
            e.state == TCP_ESTABLISHED
                && e.inode != 0
                && inodes.contains(&e.inode)
                && e.remote.port() == port
                && ips.contains(&canonical(e.remote.ip()))
        })
        .count() as u64
}

fn read_capped(path: &Path, cap: u64) -> std::io::Result<String> {
    // One large buffer: procfs hands out `net/tcp` a page per read, and every read that
    // starts mid-file makes the kernel find its place in the hash table again.
    let mut buf = Vec::with_capacity(256 * 1024);
    std::fs::File::open(path)?.take(cap).read_to_end(&mut buf)?;
    String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The socket inodes gravity holds, from its `/proc/<pid>/fd` links (blocking).
pub fn read_socket_inodes(proc_root: &Path, pid: i32) -> Result<HashSet<u64>, CollectError> {
    let fd_dir = proc_root.join(pid.to_string()).join("fd");
    let rd = std::fs::read_dir(&fd_dir)
        .map_err(|e| CollectError::Unavailable(format!("cannot read {}: {e}", fd_dir.display())))?;
    let mut inodes = HashSet::new();
    for entry in rd.take(MAX_FDS).flatten() {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            if let Some(i) = target.to_str().and_then(socket_inode) {
                inodes.insert(i);
            }
        }
    }
    Ok(inodes)
}

/// Most sockets taken from one sock_diag dump.
const MAX_DIAG_SOCKETS: usize = 1 << 20;
/// The receive buffer of a sock_diag dump (the kernel's dump messages are at most 32 KiB).
const DIAG_RECV_BYTES: usize = 64 * 1024;

/// Whether gravity's process shares the exporter's network namespace (then the exporter's
/// own sock_diag socket sees gravity's sockets); false when either link cannot be read.
fn same_netns(proc_root: &Path, pid: i32) -> bool {
    if proc_root != Path::new("/proc") {
        return false;
    }
    let theirs = std::fs::read_link(proc_root.join(pid.to_string()).join("ns/net"));
    let ours = std::fs::read_link(proc_root.join("self/ns/net"));
    matches!((theirs, ours), (Ok(a), Ok(b)) if a == b)
}

/// The ESTABLISHED TCP sockets (IPv4 and IPv6) of the exporter's network namespace held by
/// one of `inodes`, from the kernel's sock_diag netlink interface: one dump per address
/// family, filtered to ESTABLISHED in the kernel (blocking, but never waits: the socket is
/// non-blocking and the kernel writes a dump while it is read; a dump cut short is an error).
pub fn diag_established(inodes: &HashSet<u64>) -> std::io::Result<Vec<TcpEntry>> {
    use netlink_packet_core::{
        NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
    };
    use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
    use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
    use netlink_packet_sock_diag::SockDiagMessage;
    use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NlAddr};

    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NlAddr::new(0, 0))?;
    socket.set_non_blocking(true)?;
    let mut out = Vec::new();
    let mut seen = 0usize;
    let mut buf = vec![0u8; DIAG_RECV_BYTES];
    for (seq, family) in [(1u32, AF_INET), (2, AF_INET6)] {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = seq;
        let socket_id = if family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        };
        let mut packet = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::ESTABLISHED,
                socket_id,
            })
            .into(),
        );
        packet.finalize();
        let mut req = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut req[..]);
        socket.send(&req, 0)?;
        'dump: loop {
            let size = socket.recv(&mut &mut buf[..], 0)?;
            let data = buf.get(..size).unwrap_or_default();
            if data.is_empty() {
                return Err(bad("sock_diag dump ended without its end message".into()));
            }
            let mut offset = 0usize;
            while offset < data.len() {
                let rest = data.get(offset..).unwrap_or_default();
                let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(rest)
                    .map_err(|e| bad(format!("sock_diag answer: {e}")))?;
                let len = msg.header.length as usize;
                match msg.payload {
                    NetlinkPayload::Done(_) => break 'dump,
                    NetlinkPayload::Error(e) => {
                        return Err(bad(format!("sock_diag error: {e:?}")));
                    }
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        seen = seen.saturating_add(1);
                        if seen > MAX_DIAG_SOCKETS {
                            return Err(bad("more sockets than the exporter looks at".into()));
                        }
                        let h = &r.header;
                        let inode = u64::from(h.inode);
                        if inodes.contains(&inode) {
                            out.push(TcpEntry {
                                local: SocketAddr::new(
                                    h.socket_id.source_address,
                                    h.socket_id.source_port,
                                ),
                                remote: SocketAddr::new(
                                    h.socket_id.destination_address,
                                    h.socket_id.destination_port,
                                ),
                                state: h.state,
                                inode,
                            });
                        }
                    }
                    _ => {}
                }
                // messages are 4-byte aligned
                let step = len.checked_add(3).map(|l| l & !3).unwrap_or(0);
                if step == 0 {
                    return Err(bad("sock_diag message of length 0".into()));
                }
                offset = offset.saturating_add(step);
            }
        }
    }
    Ok(out)
}

/// The ESTABLISHED TCP sockets of gravity's network namespace held by one of `inodes`
/// (blocking): through sock_diag when gravity shares the exporter's namespace
/// ([`diag_established`]), else (or if that fails) from `/proc/<pid>/net/tcp{,6}`.
pub fn read_tcp_tables(
    proc_root: &Path,
    pid: i32,
    inodes: &HashSet<u64>,
) -> Result<Vec<TcpEntry>, CollectError> {
    if same_netns(proc_root, pid) {
        match diag_established(inodes) {
            Ok(entries) => return Ok(entries),
            Err(e) => {
                tracing::debug!(error = %e, "sock_diag failed; reading /proc/<pid>/net/tcp instead");
            }
        }
    }
    read_tcp_files(proc_root, pid, inodes)
}

/// The ESTABLISHED entries of `/proc/<pid>/net/tcp{,6}` held by one of `inodes` (blocking).
pub fn read_tcp_files(
    proc_root: &Path,
    pid: i32,
    inodes: &HashSet<u64>,
) -> Result<Vec<TcpEntry>, CollectError> {
    let dir = proc_root.join(pid.to_string());
    let mut entries = Vec::new();
    let mut read_any = false;
    for name in ["tcp", "tcp6"] {
        let p = dir.join("net").join(name);
        match read_capped(&p, MAX_NET_TCP_BYTES) {
            Ok(text) => {
                read_any = true;
                entries.extend(
                    parse_net_tcp(&text)
                        .into_iter()
                        .filter(|e| e.state == TCP_ESTABLISHED && inodes.contains(&e.inode)),
                );
            }
            // tcp6 is missing when IPv6 is off
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(CollectError::Unavailable(format!(
                    "cannot read {}: {e}",
                    p.display()
                )))
            }
        }
    }
    if !read_any {
        return Err(CollectError::Unavailable(format!(
            "no {}/net/tcp",
            dir.display()
        )));
    }
    Ok(entries)
}

/// Reads gravity's ESTABLISHED TCP sockets and its socket inodes (blocking).
#[cfg(test)]
pub fn read_sockets(
    proc_root: &Path,
    pid: i32,
) -> Result<(Vec<TcpEntry>, HashSet<u64>), CollectError> {
    let inodes = read_socket_inodes(proc_root, pid)?;
    let entries = read_tcp_tables(proc_root, pid, &inodes)?;
    Ok((entries, inodes))
}

/// The longest time the entries of one `net/tcp{,6}` read are reused.
pub const TABLE_REUSE: Duration = Duration::from_secs(60);

/// The last table read: for which pid and endpoint ports, when, and gravity's entries then.
#[derive(Debug, Default)]
pub struct TableCache {
    key: Option<(i32, HashSet<u16>)>,
    at: Option<Instant>,
    entries: Vec<TcpEntry>,
}

impl TableCache {
    /// gravity's sockets (blocking): its fd links every time; the tables only when the pid
    /// or the endpoint `ports` changed, when a socket that was ESTABLISHED to one of the
    /// ports is no longer among gravity's fds, or when the last read is [`TABLE_REUSE`] old.
    /// The bool says whether the tables were read.
    pub fn read(
        &mut self,
        proc_root: &Path,
        pid: i32,
        ports: &HashSet<u16>,
        now: Instant,
    ) -> Result<(Vec<TcpEntry>, HashSet<u64>, bool), CollectError> {
        let inodes = read_socket_inodes(proc_root, pid)?;
        let fresh = self
            .at
            .is_some_and(|at| now.saturating_duration_since(at) < TABLE_REUSE);
        let same = self
            .key
            .as_ref()
            .is_some_and(|(p, ports_then)| *p == pid && ports_then == ports);
        let none_lost = self
            .entries
            .iter()
            .filter(|e| ports.contains(&e.remote.port()))
            .all(|e| inodes.contains(&e.inode));
        if fresh && same && none_lost {
            return Ok((self.entries.clone(), inodes, false));
        }
        // Forget the old read first: a failed read must not leave it to be reused.
        self.key = None;
        self.at = None;
        self.entries.clear();
        let entries = read_tcp_tables(proc_root, pid, &inodes)?;
        self.key = Some((pid, ports.clone()));
        self.at = Some(now);
        self.entries = entries.clone();
        Ok((entries, inodes, true))
    }
}

/// One endpoint's count, for [`sockets_families`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointCount {
    /// `component` label.
    pub component: &'static str,
    /// `endpoint` label (host:port).
    pub endpoint: String,
    /// gravity's ESTABLISHED connections to it.
    pub established: u64,
}

/// Builds the families (pure).
pub fn sockets_families(counts: &[EndpointCount], pipeline: &str) -> Families {
    let mut f = Families::new();
    for c in counts {
        f.gauge(
            "gravity_connections_established",
            "gravity's own ESTABLISHED TCP connections to the endpoint (from its socket fds and its network namespace's TCP table: sock_diag, or /proc/<pid>/net/tcp{,6}).",
            &[
                ("pipeline", pipeline),
                ("component", c.component),
                ("endpoint", c.endpoint.as_str()),
            ],
            c.established as f64,
        );
    }
    f
}

/// A cached answer: when it was looked up, and the addresses (`None`: did not resolve).
type CacheEntry = (Instant, Option<Vec<IpAddr>>);

/// Resolves endpoint hosts with a timeout, caching answers.
#[derive(Debug, Default)]
pub struct Resolver {
    cache: Mutex<HashMap<(String, u16), CacheEntry>>,
}

impl Resolver {
    /// The addresses of `host` (an IP literal needs no lookup); `None` if it cannot be resolved.
    pub async fn resolve(&self, host: &str, port: u16, timeout: Duration) -> Option<Vec<IpAddr>> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Some(vec![ip]);
        }
        let key = (bare.to_string(), port);
        if let Some((at, v)) = lock(&self.cache).get(&key) {
            let ttl = if v.is_some() {
                DNS_TTL
            } else {
                DNS_NEGATIVE_TTL
            };
            if at.elapsed() < ttl {
                return v.clone();
            }
        }
        let found = match tokio::time::timeout(timeout, tokio::net::lookup_host((bare, port))).await
        {
            Ok(Ok(addrs)) => {
                let mut v: Vec<IpAddr> = addrs.take(MAX_ADDRS).map(|a| a.ip()).collect();
                v.sort();
                v.dedup();
                (!v.is_empty()).then_some(v)
            }
            _ => None,
        };
        let mut cache = lock(&self.cache);
        if cache.len() > 4 * super::connections::MAX_ENDPOINTS {
            cache.clear();
        }
        cache.insert(key, (Instant::now(), found.clone()));
        found
    }
}

/// The collector.
#[derive(Debug, Default)]
pub struct SocketsCollector {
    resolver: Resolver,
    tables: Arc<Mutex<TableCache>>,
}

impl Collector for SocketsCollector {
    fn name(&self) -> &'static str {
        "sockets"
    }

    fn collect(self: Arc<Self>, ctx: Arc<Context>) -> BoxFuture<Result<Families, CollectError>> {
        Box::pin(async move {
            let target = ctx.target();
            let Some(look) = target.process.filter(|l| l.is_alive()) else {
                // No gravity, no sockets of gravity's (gravity_up says why).
                ctx.state.established.set(None);
                return Ok(Families::new());
            };
            let Some(cfg) = target.config.as_ref() else {
                ctx.state.established.set(None);
                return Ok(Families::new());
            };
            let endpoints = probe_targets(cfg);
            if endpoints.is_empty() {
                ctx.state.established.set(None);
                return Ok(Families::new());
            }
            let s = ctx.settings();
            let dns_timeout = s.gravity_timeout.min(Duration::from_secs(2));
            let mut resolved = Vec::with_capacity(endpoints.len());
            for e in &endpoints {
                resolved.push(self.resolver.resolve(&e.host, e.port, dns_timeout).await);
            }
            let root = s.proc_root.clone();
            let pid = look.id.pid;
            let tables = self.tables.clone();
            let ports: HashSet<u16> = endpoints.iter().map(|e| e.port).collect();
            let read = tokio::task::spawn_blocking(move || {
                lock(&tables)
                    .read(&root, pid, &ports, Instant::now())
                    .map(|(e, i, _)| (e, i))
            })
            .await
            .map_err(|_| CollectError::Panicked)?;
            let (entries, inodes) = match read {
                Ok(x) => x,
                // It died between the watcher's look and ours: the watcher reports it.
                Err(_) if !ctx.up.process_alive() => {
                    ctx.state.established.set(None);
                    return Ok(Families::new());
                }
                Err(e) => return Err(e),
            };
            let counts: Vec<EndpointCount> = endpoints
                .iter()
                .zip(resolved)
                .filter_map(|(e, ips)| {
                    let Some(ips) = ips else {
                        tracing::debug!(endpoint = %e.address(), "cannot resolve endpoint host; its connections are not counted");
                        return None;
                    };
                    Some(EndpointCount {
                        component: e.role.as_str(),
                        endpoint: e.address(),
                        established: count_established(&entries, &inodes, &ips, e.port),
                    })
                })
                .collect();
            let mut established = crate::state::Established::new();
            for c in &counts {
                let n = established
                    .entry((c.component.to_string(), c.endpoint.clone()))
                    .or_default();
                *n = n.saturating_add(c.established);
            }
            ctx.state.established.set(Some(established));
            Ok(sockets_families(&counts, &target.pipeline))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture_root() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/proc"))
    }

    #[test]
    fn hex_addresses() {
        // The fixtures were written on a little-endian machine, as /proc prints there.
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_hex_addr("0100007F:0CEA"),
                Some("127.0.0.1:3306".parse().unwrap())
            );
            assert_eq!(
                parse_hex_addr("0A01A8C0:2384"),
                Some("192.168.1.10:9092".parse().unwrap())
            );
            assert_eq!(
                parse_hex_addr("00000000000000000000000001000000:0CEB"),
                Some("[::1]:3307".parse().unwrap())
            );
            assert_eq!(
                parse_hex_addr("0000000000000000FFFF00000100007F:0CEA"),
                Some("[::ffff:127.0.0.1]:3306".parse().unwrap())
            );
            assert_eq!(
                parse_hex_addr("B80D0120000000000000000001000000:0050"),
                Some("[2001:db8::1]:80".parse().unwrap())
            );
        }
        for bad in [
            "",
            "0100007F",
            "0100007F:",
            "0100007G:0CEA",
            "01007F:0CEA",
            ":0CEA",
            "0100007F:1FFFF",
        ] {
            assert_eq!(parse_hex_addr(bad), None, "{bad}");
        }
    }

    #[test]
    fn net_tcp_lines_and_inodes() {
        let text = std::fs::read_to_string(fixture_root().join("4242/net/tcp")).unwrap();
        let e = parse_net_tcp(&text);
        assert_eq!(e.len(), 5, "{e:?}");
        assert_eq!(e[0].state, 0x0A);
        assert_eq!(e[1].state, TCP_ESTABLISHED);
        assert_eq!(e[1].inode, 1_000_101);
        assert_eq!(parse_net_tcp("garbage\n  0: x y\n\u{0}\n"), vec![]);
        assert_eq!(socket_inode("socket:[123]"), Some(123));
        assert_eq!(socket_inode("pipe:[123]"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn fixture_gravity_counts() {
        // gravity 4242 holds sockets 1000101 (fd 3) and 1000102 (fd 4); 1000103, 1000104
        // and 1000199 belong to other processes of its network namespace.
        let (entries, inodes) = read_sockets(&fixture_root(), 4242).unwrap();
        assert_eq!(inodes, HashSet::from([1_000_101, 1_000_102]));
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        // source 127.0.0.1:3306: one; the foreign inode and the TIME_WAIT entry do not count
        assert_eq!(count_established(&entries, &inodes, &[v4], 3306), 1);
        // target 127.0.0.1:3307: one, over an IPv4-mapped tcp6 socket
        assert_eq!(count_established(&entries, &inodes, &[v4], 3307), 1);
        // [::1]:3307 is held by another process
        assert_eq!(count_established(&entries, &inodes, &[v6], 3307), 0);
        let lan: IpAddr = "192.168.1.10".parse().unwrap();
        assert_eq!(count_established(&entries, &inodes, &[lan], 9092), 0);
        // all established entries of the namespace, before the inode filter
        let all =
            parse_net_tcp(&std::fs::read_to_string(fixture_root().join("4242/net/tcp6")).unwrap());
        let inodes_all: HashSet<u64> = all.iter().map(|e| e.inode).collect();
        assert_eq!(count_established(&all, &inodes_all, &[v6], 3307), 1);
        assert!(read_sockets(&fixture_root(), 4343).is_err(), "no fd dir");
    }

    #[test]
    fn families() {
        let f = sockets_families(
            &[EndpointCount {
                component: "source",
                endpoint: "db:3306".into(),
                established: 4,
            }],
            "p",
        );
        assert_eq!(
            f.value(
                "gravity_connections_established",
                &[("component", "source"), ("endpoint", "db:3306")]
            ),
            Some(4.0)
        );
    }

    #[tokio::test]
    async fn resolver_literals_and_cache() {
        let r = Resolver::default();
        let t = Duration::from_secs(2);
        assert_eq!(
            r.resolve("127.0.0.1", 1, t).await,
            Some(vec!["127.0.0.1".parse().unwrap()])
        );
        assert_eq!(
            r.resolve("[::1]", 1, t).await,
            Some(vec!["::1".parse().unwrap()])
        );
        let lh = r.resolve("localhost", 1, t).await.unwrap_or_default();
        assert!(lh.iter().any(|ip| ip.is_loopback()), "{lh:?}");
        // `.invalid` never resolves (RFC 2606); the failure is cached
        assert_eq!(r.resolve("no-such-host.invalid", 1, t).await, None);
        assert!(lock(&r.cache).contains_key(&("no-such-host.invalid".to_string(), 1)));
    }

    #[test]
    fn real_process_sockets() {
        // This test process connects to its own listener: /proc/self shows the client
        // socket as ESTABLISHED to the listener's port, held by one of our fds.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let c1 = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let c2 = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (a1, _) = l.accept().unwrap();
        let (a2, _) = l.accept().unwrap();
        let pid = std::process::id() as i32;
        let ips = ["127.0.0.1".parse().unwrap()];
        let (entries, inodes) = read_sockets(Path::new("/proc"), pid).unwrap();
        // Other tests of this binary may open sockets of their own, but none to this port.
        assert_eq!(count_established(&entries, &inodes, &ips, port), 2);
        drop((c1, a1));
        let (entries, inodes) = read_sockets(Path::new("/proc"), pid).unwrap();
        assert_eq!(count_established(&entries, &inodes, &ips, port), 1);
        drop((c2, a2));
        let (entries, inodes) = read_sockets(Path::new("/proc"), pid).unwrap();
        assert_eq!(count_established(&entries, &inodes, &ips, port), 0);
    }

    #[test]
    fn sock_diag_and_proc_files_agree() {
        // IPv4 and (where the host has it) IPv6 connections of this process to itself
        let l4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c4 = std::net::TcpStream::connect(l4.local_addr().unwrap()).unwrap();
        let a4 = l4.accept().unwrap();
        let six = std::net::TcpListener::bind("[::1]:0").ok().and_then(|l6| {
            let c6 = std::net::TcpStream::connect(l6.local_addr().ok()?).ok()?;
            let a6 = l6.accept().ok()?;
            Some((l6, c6, a6))
        });
        let pid = std::process::id() as i32;
        assert!(same_netns(Path::new("/proc"), pid));
        assert!(!same_netns(&fixture_root(), 4242));
        let inodes = read_socket_inodes(Path::new("/proc"), pid).unwrap();
        let key = |mut v: Vec<TcpEntry>| {
            v.sort_by_key(|e| (e.inode, e.local, e.remote));
            v
        };
        let diag = key(diag_established(&inodes).unwrap());
        let files = key(read_tcp_files(Path::new("/proc"), pid, &inodes).unwrap());
        // other tests of this binary open and close sockets meanwhile: compare ours only
        let ours = |v: &[TcpEntry]| -> Vec<TcpEntry> {
            let mut ports = vec![l4.local_addr().unwrap().port()];
            if let Some((l6, _, _)) = &six {
                ports.push(l6.local_addr().unwrap().port());
            }
            v.iter()
                .filter(|e| ports.contains(&e.local.port()) || ports.contains(&e.remote.port()))
                .copied()
                .collect()
        };
        let want = if six.is_some() { 4 } else { 2 };
        assert_eq!(ours(&diag).len(), want, "{diag:?}");
        assert_eq!(ours(&diag), ours(&files));
        assert!(ours(&diag).iter().all(|e| e.state == TCP_ESTABLISHED));
        drop((c4, a4, six));
    }

    /// A fake `/proc/<pid>` with the given socket fds and one ESTABLISHED entry per inode.
    fn fake_proc(root: &Path, pid: i32, inodes: &[u64], port: u16) {
        let dir = root.join(pid.to_string());
        let fd = dir.join("fd");
        let _ = std::fs::remove_dir_all(&fd);
        std::fs::create_dir_all(&fd).unwrap();
        std::fs::create_dir_all(dir.join("net")).unwrap();
        let mut text = String::from(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n",
        );
        for (n, ino) in inodes.iter().enumerate() {
            std::os::unix::fs::symlink(format!("socket:[{ino}]"), fd.join((n + 3).to_string()))
                .unwrap();
            text.push_str(&format!(
                "   {n}: 0100007F:A000 0100007F:{port:04X} 01 00000000:00000000 00:00000000 00000000  1000        0 {ino} 1 0 20 4 30 10 -1\n"
            ));
        }
        std::fs::write(dir.join("net/tcp"), text).unwrap();
    }

    #[test]
    fn tables_are_reread_only_when_a_connection_is_lost_or_they_are_old() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let ips = ["127.0.0.1".parse().unwrap()];
        let ports: HashSet<u16> = [3306].into();
        let mut cache = TableCache::default();
        let t0 = Instant::now();
        fake_proc(root, 7, &[100, 101], 3306);
        let (e, i, read) = cache.read(root, 7, &ports, t0).unwrap();
        assert!(read);
        assert_eq!(count_established(&e, &i, &ips, 3306), 2);
        // gravity opened another socket (the exporter's own API request, say): the tables
        // are not read again (their changed content is not seen) ...
        fake_proc(root, 7, &[100, 101, 555], 3306);
        std::fs::write(root.join("7/net/tcp"), "garbage").unwrap();
        let (e, i, read) = cache
            .read(root, 7, &ports, t0 + Duration::from_secs(5))
            .unwrap();
        assert!(!read, "tables read again although no connection was lost");
        assert_eq!(count_established(&e, &i, &ips, 3306), 2);
        // ... until they are TABLE_REUSE old,
        fake_proc(root, 7, &[100, 101, 102], 3306);
        let (e, i, read) = cache.read(root, 7, &ports, t0 + TABLE_REUSE).unwrap();
        assert!(read);
        assert_eq!(count_established(&e, &i, &ips, 3306), 3);
        // or a connection to an endpoint is gone (seen at once),
        fake_proc(root, 7, &[100, 102], 3306);
        let (e, i, read) = cache.read(root, 7, &ports, t0 + TABLE_REUSE).unwrap();
        assert!(read);
        assert_eq!(count_established(&e, &i, &ips, 3306), 2);
        // or the endpoints changed,
        let (_, _, read) = cache
            .read(root, 7, &[5432].into(), t0 + TABLE_REUSE)
            .unwrap();
        assert!(read);
        // or it is another process.
        fake_proc(root, 8, &[100, 102], 3306);
        let (_, _, read) = cache.read(root, 8, &ports, t0 + TABLE_REUSE).unwrap();
        assert!(read);
        // A failed read is not reused.
        fake_proc(root, 9, &[1], 3306);
        std::fs::remove_file(root.join("9/net/tcp")).unwrap();
        assert!(cache.read(root, 9, &ports, t0 + TABLE_REUSE).is_err());
        assert!(cache.read(root, 9, &ports, t0 + TABLE_REUSE).is_err());
    }
}
