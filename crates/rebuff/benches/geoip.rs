//! GeoIP benchmarks (`cargo bench --bench geoip -- COMMAND`):
//!
//! - `db PATH`: writes a country database of GeoLite2-Country's size
//!   (about 300,000 IPv4 and 100,000 IPv6 networks over 250 countries,
//!   one shared record per country) to PATH, for `bench/geoip.sh`.
//! - `lookup [PATH]`: nanoseconds per lookup (IPv4, IPv6, IPv4-mapped) in
//!   that database (built in memory when no PATH), through
//!   `Geo::lookup` and through the engine's `CountryLookup` (which also
//!   checks whether the file changed); median of 7 rounds of 1,000,000.
//! - `scrape REBUFF_BIN [CONNECTIONS]` (root, iproute2): opens CONNECTIONS
//!   (default 50,000) established TCP connections into a network namespace
//!   from a client namespace, then times `geo::tcp::collect` and whole
//!   `GET /metrics` scrapes of a daemon running there; medians of 11.
//!
//! Plain `main`, no harness: the numbers go in bench/RESULTS.md.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rebuff::geo::Geo;
use rebuff_engine::CountryLookup;

#[path = "../tests/support/mmdb_writer.rs"]
mod mmdb_writer;

use mmdb_writer::{Value, Writer};

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn build_database() -> Vec<u8> {
    let codes = rebuff_engine::country::ISO_3166_ALPHA2;
    let mut w = Writer::new(6, 28);
    w.database_type = "rebuff-bench-Country".into();
    let records: Vec<usize> = codes
        .iter()
        .map(|c| w.shared(&Value::country_record(c)))
        .collect();
    let mut rng = Rng(20261204);
    for _ in 0..300_000 {
        let len = 16 + (rng.next() % 9) as u32;
        let addr = Ipv4Addr::from((rng.next() as u32) & (u32::MAX << (32 - len)));
        let record = records[(rng.next() % records.len() as u64) as usize];
        w.insert_at(&format!("{addr}/{len}"), record);
    }
    for _ in 0..100_000 {
        let len = 29 + (rng.next() % 20) as u32;
        let high = (0x2000u128 << 112) | (u128::from(rng.next()) << 64 >> 3);
        let addr = Ipv6Addr::from(high & (u128::MAX << (128 - len)));
        let record = records[(rng.next() % records.len() as u64) as usize];
        w.insert_at(&format!("{addr}/{len}"), record);
    }
    // Networks the scrape benchmark's clients come from.
    for (net, code) in [
        ("10.77.0.0/24", "FR"),
        ("10.77.1.0/24", "DE"),
        ("10.77.2.0/24", "US"),
        ("10.77.3.0/24", "JP"),
        ("fd77::/64", "BR"),
    ] {
        let record = w.shared(&Value::country_record(code));
        w.insert_at(net, record);
    }
    w.build()
}

/// CPU time of this thread: on a shared machine, wall time also counts
/// the time other processes ran.
fn thread_cpu_ns() -> i128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn lookup(path: Option<&str>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = match path {
        Some(p) => Path::new(p).to_owned(),
        None => {
            let p = dir.path().join("bench.mmdb");
            std::fs::write(&p, build_database()).expect("write");
            p
        }
    };
    let geo = Geo::open(&path, "country.iso_code", 60_000).expect("open");
    let db = geo.database();
    println!(
        "database: {} bytes, {} nodes, flat table: {}",
        std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
        db.mmdb.node_count(),
        db.build_table()
    );
    let mut rng = Rng(7);
    let n = 1_000_000;
    let v4: Vec<IpAddr> = (0..n)
        .map(|_| IpAddr::V4(Ipv4Addr::from(rng.next() as u32)))
        .collect();
    let v6: Vec<IpAddr> = (0..n)
        .map(|_| {
            IpAddr::V6(Ipv6Addr::from(
                (0x2000u128 << 112) | (u128::from(rng.next()) << 64 >> 3) | u128::from(rng.next()),
            ))
        })
        .collect();
    let mapped: Vec<IpAddr> = v4
        .iter()
        .map(|a| match a {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            other => *other,
        })
        .collect();
    for (name, addrs) in [("ipv4", &v4), ("ipv6", &v6), ("ipv4-mapped", &mapped)] {
        let found = addrs.iter().filter(|a| geo.lookup(**a).is_some()).count();
        for (how, f) in [
            (
                "Geo::lookup",
                &(|a: IpAddr| geo.lookup(a)) as &dyn Fn(IpAddr) -> _,
            ),
            ("CountryLookup::country", &|a: IpAddr| geo.country(a)),
        ] {
            let (wall, cpu): (Vec<f64>, Vec<f64>) = (0..7)
                .map(|_| {
                    let start = Instant::now();
                    let cpu_start = thread_cpu_ns();
                    let mut hits = 0usize;
                    for a in addrs.iter() {
                        hits += usize::from(std::hint::black_box(f(*a)).is_some());
                    }
                    std::hint::black_box(hits);
                    let n = addrs.len() as f64;
                    (
                        start.elapsed().as_nanos() as f64 / n,
                        (thread_cpu_ns() - cpu_start) as f64 / n,
                    )
                })
                .unzip();
            println!(
                "lookup {name:<12} {how:<23} {:>6.1} ns CPU, {:>6.1} ns wall (medians of 7 x {}; {:.0}% with a country)",
                median(cpu),
                median(wall),
                addrs.len(),
                100.0 * found as f64 / addrs.len() as f64
            );
        }
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {}", args.join(" "));
}

fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("namespace");
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns");
        f()
    })
    .join()
    .expect("thread")
}

fn get_metrics(port: u16) -> Option<Vec<u8>> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    Some(out)
}

fn scrape(rebuff: &str, connections: usize) {
    let (srv, cli) = ("rbbench-s", "rbbench-c");
    let _ = Command::new("ip").args(["netns", "del", srv]).status();
    let _ = Command::new("ip").args(["netns", "del", cli]).status();
    ip(&["netns", "add", srv]);
    ip(&["netns", "add", cli]);
    ip(&["-n", srv, "link", "set", "lo", "up"]);
    ip(&["-n", cli, "link", "set", "lo", "up"]);
    ip(&[
        "link", "add", "rbbs", "netns", srv, "type", "veth", "peer", "name", "rbbc", "netns", cli,
    ]);
    ip(&["-n", srv, "addr", "add", "10.77.255.1/16", "dev", "rbbs"]);
    ip(&[
        "-n",
        srv,
        "addr",
        "add",
        "fd77::ffff/64",
        "dev",
        "rbbs",
        "nodad",
    ]);
    let sources = [
        "10.77.0.1",
        "10.77.1.1",
        "10.77.2.1",
        "10.77.3.1",
        "fd77::1",
    ];
    for s in sources {
        let len = if s.contains(':') { "64" } else { "16" };
        let mut args = vec!["-n", cli, "addr", "add"];
        let addr = format!("{s}/{len}");
        args.push(&addr);
        args.extend(["dev", "rbbc"]);
        if s.contains(':') {
            args.push("nodad");
        }
        ip(&args);
    }
    ip(&["-n", srv, "link", "set", "rbbs", "up"]);
    ip(&["-n", cli, "link", "set", "rbbc", "up"]);
    // Both ends of every connection stay open in helper processes (the
    // descriptor limit is per process), each on its own port.
    let per = 8_000;
    let mut holders = Vec::new();
    let mut left = connections;
    let mut port = 7100;
    while left > 0 {
        let n = left.min(per);
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .args(["hold", srv, cli, &n.to_string(), &port.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn a holder");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().expect("stdout")),
            &mut line,
        )
        .expect("holder ready");
        assert_eq!(line.trim(), "ready", "holder on port {port}");
        holders.push(child);
        left -= n;
        port += 1;
    }
    println!("{connections} connections established");

    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bench.mmdb");
    std::fs::write(&db, build_database()).expect("write db");
    let geo = Geo::open(&db, "country.iso_code", 0).expect("open");
    geo.database().build_table();
    let config = rebuff::config::TcpConnectionsConfig {
        state: false,
        exclude: Vec::new(),
        include_local: false,
        max_sockets: 200_000,
    };
    let times = in_ns(srv, move || {
        let mut times = Vec::new();
        let mut last = None;
        let mut cpu = Vec::new();
        for _ in 0..11 {
            let start = Instant::now();
            let cpu_start = thread_cpu_ns();
            let s = rebuff::geo::tcp::collect(&geo, &config);
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            cpu.push((thread_cpu_ns() - cpu_start) as f64 / 1e6);
            last = Some(s);
        }
        (times, cpu, last)
    });
    let (times, cpu, snapshot) = (times.0, times.1, times.2);
    println!(
        "geo::tcp::collect: {:.2} ms wall, {:.2} ms CPU (medians of 11); rows {:?}",
        median(times),
        median(cpu),
        snapshot.map(|s| s.rows).unwrap_or_default()
    );

    // The kernel's side alone: `ss` lists the same table.
    let ss: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let out = Command::new("ip")
                .args(["netns", "exec", srv, "ss", "-Htn", "state", "established"])
                .output()
                .expect("ss");
            std::hint::black_box(out.stdout.len());
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    println!(
        "ss -Htn state established (process included): {:.2} ms (median of 5)",
        median(ss)
    );

    let port = 19411;
    std::fs::write(
        dir.path().join("c.yml"),
        format!(
            "state_directory: {d}\ngeoip:\n  database: {db}\npatterns:\n  ip:\n    type: ip\n\
             streams:\n  s:\n    cmd: ['sleep', '3600']\n    filters:\n      f:\n        regex: ['x <ip>']\n\
             \x20       actions:\n          a:\n            cmd: ['true']\nmetrics:\n  listen: 127.0.0.1:{port}\n",
            d = dir.path().display(),
            db = db.display()
        ),
    )
    .expect("config");
    let mut daemon = Command::new("ip")
        .args(["netns", "exec", srv, rebuff, "start", "-c"])
        .arg(dir.path().join("c.yml"))
        .arg("-s")
        .arg(dir.path().join("s.sock"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("daemon");
    let times = in_ns(srv, move || {
        let start = Instant::now();
        while get_metrics(port).is_none() {
            assert!(start.elapsed() < Duration::from_secs(20), "no endpoint");
            std::thread::sleep(Duration::from_millis(50));
        }
        (0..11)
            .map(|_| {
                let start = Instant::now();
                let body = get_metrics(port).expect("scrape");
                std::hint::black_box(body);
                start.elapsed().as_secs_f64() * 1000.0
            })
            .collect::<Vec<_>>()
    });
    println!(
        "GET /metrics with the gauge: {:.2} ms (median of 11)",
        median(times)
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
    for mut holder in holders {
        let _ = holder.kill();
        let _ = holder.wait();
    }
    let _ = Command::new("ip").args(["netns", "del", srv]).status();
    let _ = Command::new("ip").args(["netns", "del", cli]).status();
}

/// `hold SRV CLI COUNT PORT`: opens COUNT connections from namespace CLI
/// to a listener on PORT in namespace SRV, says "ready" and keeps them
/// until killed.
fn hold(srv: &str, cli: &str, connections: usize, port: u16) {
    let sources = [
        "10.77.0.1",
        "10.77.1.1",
        "10.77.2.1",
        "10.77.3.1",
        "fd77::1",
    ];
    let limit = (connections as u64) * 2 + 256;
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(hard.map_or(limit, |h| h.min(limit))),
            maximum: hard,
        },
    )
    .expect("raise the descriptor limit");
    let listener = in_ns(srv, move || TcpListener::bind(("::", port)).expect("bind"));
    let accepter = std::thread::spawn(move || {
        let mut held = Vec::with_capacity(connections);
        while held.len() < connections {
            held.push(listener.accept().expect("accept").0);
        }
        held
    });
    let clients = in_ns(cli, move || {
        let mut held = Vec::with_capacity(connections);
        for i in 0..connections {
            let source: IpAddr = sources[i % sources.len()].parse().expect("addr");
            let target: SocketAddr = if source.is_ipv4() {
                SocketAddr::from(([10, 77, 255, 1], port))
            } else {
                SocketAddr::new("fd77::ffff".parse().expect("addr"), port)
            };
            let family = if source.is_ipv4() {
                rustix::net::AddressFamily::INET
            } else {
                rustix::net::AddressFamily::INET6
            };
            let socket =
                rustix::net::socket(family, rustix::net::SocketType::STREAM, None).expect("socket");
            rustix::net::bind(&socket, &SocketAddr::new(source, 0)).expect("bind");
            rustix::net::connect(&socket, &target).expect("connect");
            held.push(TcpStream::from(socket));
        }
        held
    });
    let accepted = accepter.join().expect("accepter");
    println!("ready");
    let mut buf = String::new();
    let _ = std::io::stdin().read_line(&mut buf);
    drop(clients);
    drop(accepted);
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("db") => {
            let path = args.get(1).expect("db PATH");
            std::fs::write(path, build_database()).expect("write");
        }
        Some("lookup") => lookup(args.get(1).map(String::as_str)),
        Some("hold") => hold(
            &args[1],
            &args[2],
            args[3].parse().expect("count"),
            args[4].parse().expect("port"),
        ),
        Some("scrape") => scrape(
            args.get(1).expect("scrape REBUFF_BIN [CONNECTIONS]"),
            args.get(2).map_or(50_000, |n| n.parse().expect("a number")),
        ),
        _ => {
            eprintln!("usage: geoip (db PATH | lookup [PATH] | scrape REBUFF_BIN [CONNECTIONS])");
        }
    }
}
