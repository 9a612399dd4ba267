//! Established TCP connections by remote country, computed at scrape time.
//!
//! The kernel's socket tables are read over `NETLINK_SOCK_DIAG` (what `ss`
//! uses): one dump per address family, filtered by state in the kernel, 72
//! bytes per socket, so 50,000 connections cost a few milliseconds rather
//! than the text formatting of `/proc/net/tcp`. The host's own addresses
//! come from an `RTM_GETADDR` dump. Remote addresses that are IPv4-mapped
//! (`::ffff:a.b.c.d` in the IPv6 table) are counted as the IPv4 address.
//! The work per scrape is bounded by `max_sockets`: past it, counting
//! stops and the snapshot says it was cut short.
//!
//! Receives the `geoip.tcp_connections` settings and the database; sends
//! back an [`TcpSnapshot`] (the shared vocabulary), which the metrics
//! module renders as `rebuff_tcp_connections{country[,state]}`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;

use rebuff_engine::Country;
use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

use super::Geo;
use crate::config::TcpConnectionsConfig;
use crate::events::TcpSnapshot;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const RTM_GETADDR: u16 = 22;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
const TCP_ESTABLISHED: u8 = 1;
const TCP_LISTEN: u8 = 10;

/// The label of connections whose remote address has no country.
pub const UNKNOWN: &str = "unknown";

/// `ss`'s names of TCP states, by kernel number.
fn state_name(state: u8) -> &'static str {
    match state {
        1 => "established",
        2 => "syn-sent",
        3 => "syn-recv",
        4 => "fin-wait-1",
        5 => "fin-wait-2",
        6 => "time-wait",
        7 => "close",
        8 => "close-wait",
        9 => "last-ack",
        10 => "listen",
        11 => "closing",
        12 => "new-syn-recv",
        _ => "unknown",
    }
}

/// One netlink socket of a protocol, with a sequence number per request.
struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    fn open(protocol: Option<rustix::net::Protocol>) -> io::Result<Netlink> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            rustix::net::SocketFlags::CLOEXEC,
            protocol,
        )?;
        Ok(Netlink {
            fd,
            seq: 0,
            buf: vec![0; 256 * 1024],
        })
    }

    /// Sends a dump request (`payload` after the header) and calls `each`
    /// with every answer's payload until the dump ends; `each` returns
    /// false to stop reading early.
    fn dump(
        &mut self,
        kind: u16,
        payload: &[u8],
        mut each: impl FnMut(&[u8]) -> bool,
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut request = Vec::with_capacity(16 + payload.len());
        request.extend(((16 + payload.len()) as u32).to_ne_bytes());
        request.extend(kind.to_ne_bytes());
        request.extend((NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        request.extend(self.seq.to_ne_bytes());
        request.extend(0u32.to_ne_bytes());
        request.extend(payload);
        let kernel = SocketAddrNetlink::new(0, 0);
        rustix::net::sendto(&self.fd, &request, SendFlags::empty(), &kernel)?;
        loop {
            let (n, _) = rustix::net::recv(&self.fd, &mut self.buf[..], RecvFlags::empty())?;
            if n == 0 {
                return Ok(());
            }
            let mut at = 0;
            while at + 16 <= n {
                let header = &self.buf[at..at + 16];
                let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
                let kind = u16::from_ne_bytes([header[4], header[5]]);
                let seq = u32::from_ne_bytes([header[8], header[9], header[10], header[11]]);
                if len < 16 || at + len > n {
                    return Err(io::Error::other("malformed netlink message"));
                }
                let body = &self.buf[at + 16..at + len];
                at += (len + 3) & !3;
                if seq != self.seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = body
                            .get(..4)
                            .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        if code == 0 {
                            continue;
                        }
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    _ => {
                        if !each(body) {
                            // The rest of the dump is never read: the
                            // caller drops this socket.
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

/// The host's own addresses (every interface, every family).
pub fn own_addresses() -> io::Result<Vec<IpAddr>> {
    let mut nl = Netlink::open(None)?;
    let mut out = Vec::new();
    // struct ifaddrmsg: family, prefixlen, flags, scope, index (u32).
    let request = [0u8; 8];
    nl.dump(RTM_GETADDR, &request, |body| {
        let Some(&family) = body.first() else {
            return true;
        };
        let mut at = 8;
        while at + 4 <= body.len() {
            let len = usize::from(u16::from_ne_bytes([body[at], body[at + 1]]));
            let kind = u16::from_ne_bytes([body[at + 2], body[at + 3]]);
            if len < 4 || at + len > body.len() {
                break;
            }
            let data = &body[at + 4..at + len];
            if kind == IFA_ADDRESS || kind == IFA_LOCAL {
                match (family, data.len()) {
                    (AF_INET, 4) => out.push(IpAddr::V4(Ipv4Addr::new(
                        data[0], data[1], data[2], data[3],
                    ))),
                    (AF_INET6, 16) => {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(data);
                        out.push(IpAddr::V6(Ipv6Addr::from(b)));
                    }
                    _ => {}
                }
            }
            at += (len + 3) & !3;
        }
        true
    })?;
    out.sort();
    out.dedup();
    Ok(out)
}

/// One TCP socket as the kernel reports it: state and remote address
/// (IPv4-mapped addresses already turned into IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Socket {
    pub state: u8,
    pub remote: IpAddr,
}

/// Calls `each` with every TCP socket of the host's tables in `states`
/// (a bit mask, `1 << state`), IPv4 then IPv6, until it returns false.
pub fn sockets(states: u32, mut each: impl FnMut(Socket) -> bool) -> io::Result<()> {
    let mut nl = Netlink::open(Some(netlink::SOCK_DIAG))?;
    let mut going = true;
    for family in [AF_INET, AF_INET6] {
        if !going {
            break;
        }
        // struct inet_diag_req_v2: family, protocol, ext, pad, states,
        // then a zeroed inet_diag_sockid (48 bytes).
        let mut request = vec![family, IPPROTO_TCP, 0, 0];
        request.extend(states.to_ne_bytes());
        request.extend([0u8; 48]);
        nl.dump(SOCK_DIAG_BY_FAMILY, &request, |body| {
            // struct inet_diag_msg: family, state, timer, retrans, then the
            // sockid: sport, dport, src[16], dst[16], ...
            if body.len() < 40 {
                return true;
            }
            let state = body[1];
            let dst = &body[24..40];
            let remote = match body[0] {
                AF_INET => IpAddr::V4(Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3])),
                _ => {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(dst);
                    let v6 = Ipv6Addr::from(b);
                    match v6.to_ipv4_mapped() {
                        Some(v4) => IpAddr::V4(v4),
                        None => IpAddr::V6(v6),
                    }
                }
            };
            going = each(Socket { state, remote });
            going
        })?;
    }
    Ok(())
}

/// Counts the host's TCP connections by remote country.
pub fn collect(geo: &Geo, config: &TcpConnectionsConfig) -> TcpSnapshot {
    let mut snapshot = TcpSnapshot {
        state_label: config.state,
        ..TcpSnapshot::default()
    };
    let own = if config.include_local {
        Vec::new()
    } else {
        match own_addresses() {
            Ok(own) => own,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list the host's addresses");
                snapshot.failed = true;
                Vec::new()
            }
        }
    };
    let states = if config.state {
        // Every state but listening sockets, which have no remote.
        !(1u32 << TCP_LISTEN)
    } else {
        1 << TCP_ESTABLISHED
    };
    let db = geo.database();
    let mut counts: HashMap<(Option<Country>, u8), u64> = HashMap::new();
    let mut seen = 0usize;
    let result = sockets(states, |socket| {
        if seen >= config.max_sockets {
            snapshot.truncated = true;
            return false;
        }
        seen += 1;
        let remote = socket.remote;
        if !config.include_local && (remote.is_loopback() || own.binary_search(&remote).is_ok()) {
            return true;
        }
        if remote.is_unspecified() || config.exclude.iter().any(|net| net.contains(&remote)) {
            return true;
        }
        let country = db.country(remote);
        let state = if config.state { socket.state } else { 0 };
        *counts.entry((country, state)).or_default() += 1;
        true
    });
    if let Err(e) = result {
        tracing::debug!(error = %e, "cannot read the TCP socket tables");
        snapshot.failed = true;
    }
    snapshot.scanned = seen as u64;
    let mut rows: Vec<(String, &'static str, u64)> = counts
        .into_iter()
        .map(|((country, state), n)| {
            (
                country.map_or_else(|| UNKNOWN.to_owned(), |c| c.to_string()),
                if config.state { state_name(state) } else { "" },
                n,
            )
        })
        .collect();
    rows.sort();
    snapshot.rows = rows;
    snapshot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_connection_is_seen_in_the_socket_tables() {
        let listener = match std::net::TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => {
                println!("skipped: cannot listen on loopback: {e}");
                return;
            }
        };
        let addr = listener.local_addr().expect("addr");
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        let _server = listener.accept().expect("accept");
        let mut found = 0;
        match sockets(1 << TCP_ESTABLISHED, |s| {
            if s.remote == IpAddr::V4(Ipv4Addr::LOCALHOST) {
                found += 1;
            }
            true
        }) {
            Ok(()) => assert!(found >= 2, "both ends of the connection: {found}"),
            Err(e) => println!("skipped: no sock_diag netlink here: {e}"),
        }
        if let Ok(own) = own_addresses() {
            assert!(own.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{own:?}");
        }
    }

    #[test]
    fn collect_stops_at_max_sockets_and_labels_states_when_asked() {
        let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else {
            println!("skipped: cannot listen on loopback");
            return;
        };
        let addr = listener.local_addr().expect("addr");
        let _clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        let _accepted: Vec<_> = (0..3).map(|_| listener.accept().expect("accept")).collect();
        if sockets(1 << TCP_ESTABLISHED, |_| false).is_err() {
            println!("skipped: no sock_diag netlink here");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.mmdb");
        let mut w = super::super::mmdb::writer::Writer::new(6, 24);
        w.insert(
            "192.0.2.0/24",
            super::super::mmdb::writer::Value::country_record("FR"),
        );
        std::fs::write(&path, w.build()).expect("write");
        let geo = Geo::open(&path, "country.iso_code", 0).expect("open");
        let mut config = TcpConnectionsConfig {
            state: false,
            exclude: Vec::new(),
            include_local: true,
            max_sockets: 2,
        };
        let cut = collect(&geo, &config);
        assert!(cut.truncated && cut.scanned == 2 && !cut.failed, "{cut:?}");
        config.max_sockets = 1_000_000;
        config.state = true;
        let all = collect(&geo, &config);
        assert!(!all.truncated && all.scanned >= 6, "{all:?}");
        assert!(
            all.rows.iter().any(|(country, state, n)| country == UNKNOWN
                && *state == "established"
                && *n >= 6),
            "{all:?}"
        );
        // Loopback is left out unless asked for.
        config.include_local = false;
        config.state = false;
        let none = collect(&geo, &config);
        assert!(
            none.rows.iter().all(|(country, _, _)| country != UNKNOWN),
            "{none:?}"
        );
    }

    #[test]
    fn state_names_follow_ss() {
        assert_eq!(state_name(1), "established");
        assert_eq!(state_name(6), "time-wait");
        assert_eq!(state_name(99), "unknown");
    }
}
