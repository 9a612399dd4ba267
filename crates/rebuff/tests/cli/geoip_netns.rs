//! `rebuff_tcp_connections` against real TCP connections: the daemon runs
//! in a network namespace of its own, clients connect from their own
//! namespaces over veth pairs (IPv4, IPv6, and IPv4 to a dual-stack
//! listener, which the kernel lists in its IPv6 table as a mapped
//! address), and the gauge is checked against `ss` in the daemon's
//! namespace. Needs root and `ip`; skips with a printed reason otherwise.
//!
//! Listeners, clients and the scrape are threads of this test moved into
//! the namespaces with `setns` (only the calling thread moves).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};

use super::daemon::{Site, wait_until};
use super::geoip::{free_port, sample, try_scrape};
use super::mmdb_writer::{Value as Mmdb, Writer};

/// Runs `ip ARGS…`; the error says what failed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Namespaces created by this test, deleted on drop (their veths go with
/// them).
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Runs `f` on a thread moved into namespace `ns`.
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open the namespace");
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns");
        f()
    })
}

/// A server namespace and three client namespaces, each client on its own
/// veth pair: `c4` (IPv4: 192.0.2.2 FR, 203.0.113.2 no country,
/// 192.0.2.99 excluded), `c6` (IPv6: 2001:db8:1::2 JP), `cds` (IPv4
/// 198.51.100.2 DE, to the dual-stack listener).
fn network(tag: &str) -> Result<Namespaces, String> {
    let srv = format!("{tag}s");
    let mut spaces = Namespaces(Vec::new());
    for ns in [
        &srv,
        &format!("{tag}4"),
        &format!("{tag}6"),
        &format!("{tag}d"),
    ] {
        ip(&["netns", "add", ns])?;
        spaces.0.push(ns.clone());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    let links: [(&str, &[&str], &[&str]); 3] = [
        (
            "4",
            &["192.0.2.1/24", "203.0.113.1/24"],
            &["192.0.2.2/24", "203.0.113.2/24", "192.0.2.99/24"],
        ),
        ("6", &["2001:db8:1::1/64"], &["2001:db8:1::2/64"]),
        ("d", &["198.51.100.1/24"], &["198.51.100.2/24"]),
    ];
    for (suffix, server_addrs, client_addrs) in links {
        let client = format!("{tag}{suffix}");
        let (a, b) = (format!("{tag}s{suffix}"), format!("{tag}c{suffix}"));
        ip(&[
            "link", "add", &a, "netns", &srv, "type", "veth", "peer", "name", &b, "netns", &client,
        ])?;
        for addr in server_addrs {
            let mut args = vec!["-n", &srv, "addr", "add", addr, "dev", &a];
            if addr.contains(':') {
                args.push("nodad");
            }
            ip(&args)?;
        }
        for addr in client_addrs {
            let mut args = vec!["-n", &client, "addr", "add", addr, "dev", &b];
            if addr.contains(':') {
                args.push("nodad");
            }
            ip(&args)?;
        }
        ip(&["-n", &srv, "link", "set", &a, "up"])?;
        ip(&["-n", &client, "link", "set", &b, "up"])?;
    }
    Ok(spaces)
}

/// Opens `count` connections from `source` to `target`, from namespace
/// `ns`; they stay open as long as the returned streams live.
fn connect(ns: &str, source: &str, target: SocketAddr, count: usize) -> Vec<TcpStream> {
    let source: IpAddr = source.parse().expect("source");
    in_ns(ns, move || {
        (0..count)
            .map(|_| {
                let socket = match source {
                    IpAddr::V4(_) => rustix::net::socket(
                        rustix::net::AddressFamily::INET,
                        rustix::net::SocketType::STREAM,
                        None,
                    ),
                    IpAddr::V6(_) => rustix::net::socket(
                        rustix::net::AddressFamily::INET6,
                        rustix::net::SocketType::STREAM,
                        None,
                    ),
                }
                .expect("socket");
                rustix::net::bind(&socket, &SocketAddr::new(source, 0)).expect("bind source");
                rustix::net::connect(&socket, &target).expect("connect");
                TcpStream::from(socket)
            })
            .collect()
    })
    .join()
    .expect("client thread")
}

/// Remote addresses of the established connections `ss` lists in `ns`.
fn ss_remotes(ns: &str) -> Vec<IpAddr> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ss", "-Htn", "state", "established"])
        .output()
        .expect("run ss");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // Recv-Q Send-Q Local Peer (state omitted by the filter).
            let peer = line.split_whitespace().nth(3)?;
            let (addr, _) = peer.rsplit_once(':')?;
            let addr = addr.trim_start_matches('[').trim_end_matches(']');
            let addr = addr.split('%').next()?;
            let parsed: IpAddr = addr.parse().ok()?;
            Some(match parsed {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(parsed, IpAddr::V4),
                v4 => v4,
            })
        })
        .collect()
}

fn country_of(addr: IpAddr) -> &'static str {
    let text = addr.to_string();
    if text.starts_with("192.0.2.") {
        "FR"
    } else if text.starts_with("198.51.100.") {
        "DE"
    } else if text.starts_with("2001:db8:1:") {
        "JP"
    } else {
        "unknown"
    }
}

#[test]
fn tcp_connections_by_country_match_ss_in_a_network_namespace() {
    if !rustix::process::geteuid().is_root() {
        println!("skipped: network namespaces need root");
        return;
    }
    if Command::new("ss").arg("-V").output().is_err() {
        println!("skipped: ss (iproute2) is not installed");
        return;
    }
    let tag = format!("rg{}", std::process::id() % 100_000);
    let spaces = match network(&tag) {
        Ok(spaces) => spaces,
        Err(e) => {
            println!("skipped: cannot create network namespaces: {e}");
            return;
        }
    };
    let srv = spaces.0[0].clone();

    let site = Site::new();
    let mut w = Writer::new(6, 28);
    w.insert("192.0.2.0/24", Mmdb::country_record("FR"));
    w.insert("198.51.100.0/24", Mmdb::city_record("DE"));
    w.insert("2001:db8:1::/48", Mmdb::country_record("JP"));
    std::fs::write(site.path("geo.mmdb"), w.build()).expect("write db");
    let port = free_port();
    site.config(&format!(
        "state_directory: {{dir}}/state
geoip:
  database: {{dir}}/geo.mmdb
  tcp_connections:
    exclude: [192.0.2.99/32]
patterns:
  ip:
    type: ip
streams:
  s:
    cmd: ['tail', '-F', '{{dir}}/input.log']
    filters:
      f:
        regex: ['from <ip>']
        actions:
          a:
            cmd: ['true']
metrics:
  listen: 127.0.0.1:{port}
"
    ));

    // Listeners in the server namespace: IPv4 only, and dual stack.
    let (v4, dual) = in_ns(&srv, || {
        let v4 = TcpListener::bind("0.0.0.0:7004").expect("bind v4");
        let dual = TcpListener::bind("[::]:7006").expect("bind dual stack");
        (v4, dual)
    })
    .join()
    .expect("listener thread");
    let mut clients = Vec::new();
    clients.extend(connect(
        &spaces.0[1],
        "192.0.2.2",
        "192.0.2.1:7004".parse().expect("addr"),
        3,
    ));
    clients.extend(connect(
        &spaces.0[1],
        "203.0.113.2",
        "203.0.113.1:7004".parse().expect("addr"),
        2,
    ));
    clients.extend(connect(
        &spaces.0[1],
        "192.0.2.99",
        "192.0.2.1:7004".parse().expect("addr"),
        2,
    ));
    clients.extend(connect(
        &spaces.0[2],
        "2001:db8:1::2",
        "[2001:db8:1::1]:7006".parse().expect("addr"),
        4,
    ));
    clients.extend(connect(
        &spaces.0[3],
        "198.51.100.2",
        "198.51.100.1:7006".parse().expect("addr"),
        5,
    ));
    let mut accepted = Vec::new();
    for _ in 0..7 {
        accepted.push(v4.accept().expect("accept v4").0);
    }
    for _ in 0..9 {
        accepted.push(dual.accept().expect("accept dual").0);
    }

    let daemon = DaemonInNs::start(&srv, &site);
    let body = {
        let mut body = String::new();
        wait_until("the metrics endpoint", || {
            body = in_ns(&srv, move || try_scrape(port).unwrap_or_default())
                .join()
                .unwrap_or_default();
            body.contains("rebuff_tcp_connections")
        });
        body
    };

    // What ss sees, by country, less loopback (the scrape), the host's own
    // addresses and the excluded client.
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for remote in ss_remotes(&srv) {
        if remote.is_loopback() || remote.to_string() == "192.0.2.99" {
            continue;
        }
        *expected.entry(country_of(remote)).or_default() += 1;
    }
    assert_eq!(
        expected,
        BTreeMap::from([("DE", 5), ("FR", 3), ("JP", 4), ("unknown", 2)]),
        "ss disagrees with the connections this test opened"
    );
    for (country, n) in &expected {
        assert_eq!(
            sample(
                &body,
                &format!("rebuff_tcp_connections{{country=\"{country}\"}}")
            ),
            Some(*n),
            "{country}:\n{body}"
        );
    }
    assert_eq!(
        sample(&body, "rebuff_tcp_connections_failed"),
        Some(0),
        "{body}"
    );
    drop(daemon);
    drop(clients);
    drop(accepted);
}

/// `rebuff start` run by `ip netns exec`.
struct DaemonInNs {
    child: Child,
}

impl DaemonInNs {
    fn start(ns: &str, site: &Site) -> DaemonInNs {
        let out = std::fs::File::create(site.path("daemon.out")).expect("create");
        let err = out.try_clone().expect("clone");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                env!("CARGO_BIN_EXE_rebuff"),
                "start",
                "-c",
            ])
            .arg(site.path("config.yml"))
            .arg("-s")
            .arg(site.path("rebuff.sock"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn the daemon");
        DaemonInNs { child }
    }
}

impl Drop for DaemonInNs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
