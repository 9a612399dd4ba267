//! GeoIP end to end: databases the tests build themselves (v4 and v6, with
//! and without the IPv4-mapped alias, Country, City and flat shapes, and
//! broken ones), replay records and the top-countries table, per-country
//! rules, `<country>` and `show` in a running daemon, reload of a changed
//! database file.

use std::path::Path;

use serde_json::Value;

use super::daemon::{Site, failed_login, wait_until};
use super::mmdb_writer::{Value as Mmdb, Writer};
use super::{rebuff, stderr, stdout, test_config, write_config};

/// FR: 192.0.2.0/24 and 2001:db8:f::/48; DE: 198.51.100.0/24; JP
/// (City-shaped): 2001:db8:1::/48. 203.0.113.0/24 is in no network.
fn write_database(path: &Path, shape: &str, record_size: u16, alias: bool) {
    let record = |code: &str| match shape {
        "city" => Mmdb::city_record(code),
        "flat" => Mmdb::flat_record(code),
        _ => Mmdb::country_record(code),
    };
    let mut w = Writer::new(6, record_size);
    w.insert("192.0.2.0/24", record("FR"));
    w.insert("2001:db8:f::/48", record("FR"));
    w.insert("198.51.100.0/24", record("DE"));
    w.insert("2001:db8:1::/48", record("JP"));
    if alias {
        w.alias_ipv4_mapped();
    }
    std::fs::write(path, w.build()).expect("write the database");
}

fn config(db: &Path, field: &str, pattern_extra: &str) -> String {
    format!(
        "geoip:
  database: {db}
  field: {field}
patterns:
  ip:
    type: ip
{pattern_extra}
streams:
  ssh:
    cmd: ['cat']
    filters:
      failed:
        regex: ['Failed password for \\S+ from <ip> port']
        retry: 2
        retryperiod: 10m
        actions:
          ban:
            cmd: ['ban', '<ip>', '<country>']
",
        db = db.display()
    )
}

fn replay(config: &Path, log: &Path, format: &str) -> std::process::Output {
    rebuff()
        .args(["replay", "--format", format, "-c"])
        .arg(config)
        .arg(log)
        .output()
        .expect("runs")
}

fn attack_log(path: &Path, addrs: &[(&str, usize)]) {
    let mut text = String::new();
    for (addr, count) in addrs {
        for _ in 0..*count {
            text.push_str(&failed_login(addr));
            text.push('\n');
        }
    }
    std::fs::write(path, text).expect("write log");
}

const ATTACKERS: &[(&str, usize)] = &[
    ("192.0.2.1", 2),
    ("192.0.2.2", 2),
    ("::ffff:192.0.2.3", 2),
    ("198.51.100.9", 2),
    ("2001:db8:1::7", 2),
    ("2001:db8:f::1", 2),
    ("203.0.113.5", 2),
];

#[test]
fn replay_records_carry_the_country_in_every_database_shape() {
    for (shape, field, record_size, alias) in [
        ("country", "country.iso_code", 24, false),
        ("country", "country.iso_code", 28, true),
        ("city", "country.iso_code", 32, true),
        ("flat", "country_code", 24, false),
    ] {
        let site = write_config("c.yml", "");
        let db = site.dir.path().join("geo.mmdb");
        write_database(&db, shape, record_size, alias);
        std::fs::write(&site.path, config(&db, field, "")).expect("config");
        let log = site.dir.path().join("auth.log");
        attack_log(&log, ATTACKERS);
        let output = replay(&site.path, &log, "json");
        assert!(output.status.success(), "{}", stderr(&output));
        let out: Value = serde_json::from_str(&stdout(&output)).expect("json");
        let countries: Vec<(String, String, Value)> = out["triggers"]
            .as_array()
            .expect("triggers")
            .iter()
            .map(|t| {
                (
                    t["values"]["ip"].as_str().unwrap_or_default().to_owned(),
                    t["country"].as_str().unwrap_or("(none)").to_owned(),
                    t["actions"][0]["cmd"].clone(),
                )
            })
            .collect();
        let expected = [
            ("192.0.2.1", "FR"),
            ("192.0.2.2", "FR"),
            ("192.0.2.3", "FR"),
            ("198.51.100.9", "DE"),
            ("2001:db8:1::7", "JP"),
            ("2001:db8:f::1", "FR"),
            ("203.0.113.5", ""),
        ];
        assert_eq!(countries.len(), expected.len(), "{shape}: {out}");
        for ((ip, country, cmd), (want_ip, want)) in countries.iter().zip(expected) {
            assert_eq!((ip.as_str(), country.as_str()), (want_ip, want), "{shape}");
            assert_eq!(cmd, &serde_json::json!(["ban", want_ip, want]), "{shape}");
        }
        let top = &out["summary"]["top_countries"];
        assert_eq!(
            top,
            &serde_json::json!([
                {"country": "FR", "triggers": 4},
                {"country": "DE", "triggers": 1},
                {"country": "JP", "triggers": 1},
                {"country": "unknown", "triggers": 1},
            ]),
            "{shape}"
        );
    }
}

#[test]
fn the_text_replay_shows_countries_and_the_top_countries_table() {
    let site = write_config("c.yml", "");
    let db = site.dir.path().join("geo.mmdb");
    write_database(&db, "country", 24, false);
    std::fs::write(&site.path, config(&db, "country.iso_code", "")).expect("config");
    let log = site.dir.path().join("auth.log");
    attack_log(&log, &[("192.0.2.1", 2), ("203.0.113.5", 2)]);
    let output = replay(&site.path, &log, "text");
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("ssh.failed 192.0.2.1 new [FR] -> ban now"),
        "{text}"
    );
    assert!(
        text.contains("ssh.failed 203.0.113.5 new [-] -> ban now"),
        "{text}"
    );
    assert!(
        text.contains("country   triggers\nFR               1\nunknown          1\n"),
        "{text}"
    );
}

#[test]
fn ignorecountry_and_onlycountry_drop_matches_in_replay_and_unknown_fails_only() {
    let site = write_config("c.yml", "");
    let db = site.dir.path().join("geo.mmdb");
    write_database(&db, "country", 28, false);
    let log = site.dir.path().join("auth.log");
    attack_log(&log, ATTACKERS);
    for (rule, want) in [
        (
            "    ignorecountry: [FR]",
            vec!["198.51.100.9", "2001:db8:1::7", "203.0.113.5"],
        ),
        (
            "    onlycountry: [fr, JP]",
            vec![
                "192.0.2.1",
                "192.0.2.2",
                "192.0.2.3",
                "2001:db8:1::7",
                "2001:db8:f::1",
            ],
        ),
    ] {
        std::fs::write(&site.path, config(&db, "country.iso_code", rule)).expect("config");
        let output = replay(&site.path, &log, "json");
        assert!(output.status.success(), "{}", stderr(&output));
        let out: Value = serde_json::from_str(&stdout(&output)).expect("json");
        let got: Vec<&str> = out["triggers"]
            .as_array()
            .expect("triggers")
            .iter()
            .map(|t| t["values"]["ip"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(got, want, "{rule}");
        let dropped = 14 - 2 * want.len() as u64;
        assert_eq!(
            out["summary"]["ignored_by_reason"]["country"], dropped,
            "{rule}: {out}"
        );
    }
}

#[test]
fn broken_databases_are_configuration_errors_naming_the_file() {
    let site = write_config("c.yml", "");
    let good = {
        let mut w = Writer::new(6, 24);
        w.insert("192.0.2.0/24", Mmdb::country_record("FR"));
        w.build()
    };
    let mut past = Writer::new(6, 24);
    past.insert("192.0.2.0/24", Mmdb::country_record("FR"));
    past.point_past_data = true;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.mmdb", Vec::new(), "empty"),
        (
            "garbage.mmdb",
            b"\x00\x01garbage\xff".repeat(100),
            "not an MMDB",
        ),
        (
            "truncated.mmdb",
            good[..good.len() / 3].to_vec(),
            "not an MMDB",
        ),
        ("past.mmdb", past.build(), "points past the data section"),
    ];
    for (name, bytes, why) in cases {
        let db = site.dir.path().join(name);
        std::fs::write(&db, bytes).expect("write");
        std::fs::write(&site.path, config(&db, "country.iso_code", "")).expect("config");
        let output = test_config(&site.path);
        assert!(!output.status.success(), "{name}");
        let err = stderr(&output);
        assert!(err.contains(name) && err.contains(why), "{name}: {err}");
        assert!(
            err.contains("geoip.database") && err.contains("c.yml:2:"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let missing = site.dir.path().join("missing.mmdb");
    std::fs::write(&site.path, config(&missing, "country.iso_code", "")).expect("config");
    let err = stderr(&test_config(&site.path));
    assert!(
        err.contains("missing.mmdb") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn unknown_country_codes_are_errors_naming_them() {
    let site = write_config("c.yml", "");
    let db = site.dir.path().join("geo.mmdb");
    write_database(&db, "country", 24, false);
    std::fs::write(
        &site.path,
        config(&db, "country.iso_code", "    ignorecountry: [FR, FRA, EN]"),
    )
    .expect("config");
    let err = stderr(&test_config(&site.path));
    assert!(err.contains("patterns.ip.ignorecountry[1]: 'FRA'"), "{err}");
    assert!(err.contains("patterns.ip.ignorecountry[2]: 'EN'"), "{err}");
}

const DAEMON: &str = r"
state_directory: {dir}/state
geoip:
  database: {dir}/geo.mmdb
  check_interval: 1s
patterns:
  ip:
    type: ip
    onlycountry: [FR, DE]
streams:
  ssh:
    cmd: ['tail', '-n', '+1', '-F', '{dir}/input.log']
    filters:
      failed:
        regex:
          - 'Failed password for \S+ from <ip> port'
        retry: 2
        retryperiod: 10m
        actions:
          ban:
            cmd: ['sh', '-c', 'echo ban $1 $2 >> {dir}/actions.log', 'sh', '<ip>', '<country>']
          unban:
            cmd: ['true']
            after: 1h
";

#[test]
fn a_running_daemon_fills_country_applies_onlycountry_shows_it_and_reloads_the_database() {
    let site = Site::new();
    write_database(&site.path("geo.mmdb"), "country", 24, true);
    site.config(DAEMON);
    let daemon = site.start();
    site.log_lines(&[
        failed_login("192.0.2.8"),
        failed_login("203.0.113.8"),
        failed_login("192.0.2.8"),
        failed_login("203.0.113.8"),
        failed_login("::ffff:198.51.100.8"),
        failed_login("::ffff:198.51.100.8"),
    ]);
    wait_until("the bans", || site.actions().len() >= 2);
    let mut actions = site.actions();
    actions.sort();
    // The unknown address's lines came before the German ones: by the
    // German ban they were matched, and dropped.
    assert_eq!(
        actions,
        ["ban 192.0.2.8 FR", "ban 198.51.100.8 DE"],
        "an address of unknown country fails onlycountry"
    );
    let tree = daemon.show(&[]);
    assert_eq!(
        tree["ssh"]["failed"]["192.0.2.8"]["country"], "FR",
        "{tree}"
    );
    // A new database (written beside and renamed in, as updaters do): now
    // 203.0.113.0/24 is French.
    let next = site.path("next.mmdb");
    let mut w = Writer::new(6, 24);
    w.insert("203.0.113.0/24", Mmdb::country_record("FR"));
    std::fs::write(&next, w.build()).expect("write");
    std::fs::rename(&next, site.path("geo.mmdb")).expect("rename");
    let mut n = 0;
    wait_until("the new database in force", || {
        // Each probe is a new address; lookups notice the file.
        n += 1;
        let addr = format!("203.0.113.{}", 100 + n);
        site.log_lines(&[failed_login(&addr), failed_login(&addr)]);
        site.actions()
            .iter()
            .any(|a| a.ends_with(" FR") && a.contains("203.0.113."))
    });
    // An invalid file keeps the database in force.
    std::fs::write(&next, b"garbage").expect("write");
    std::fs::rename(&next, site.path("geo.mmdb")).expect("rename");
    wait_until("the invalid database reported", || {
        n += 1;
        let addr = format!("203.0.113.{}", 100 + n);
        site.log_lines(&[failed_login(&addr)]);
        daemon
            .output()
            .contains("the new GeoIP database is invalid")
    });
    site.log_lines(&[failed_login("203.0.113.250"), failed_login("203.0.113.250")]);
    wait_until("a ban under the kept database", || {
        site.count_action("ban 203.0.113.250 FR") == 1
    });
    let out = daemon.stop();
    assert!(out.contains("GeoIP database reloaded"), "{out}");
}

/// `GET /metrics` over plain HTTP/1.0; the body.
pub fn scrape(port: u16) -> String {
    try_scrape(port).expect("the metrics endpoint answers")
}

/// The body of `GET /metrics`, or `None` when the endpoint is not there.
pub fn try_scrape(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// The value of the sample `series` (name and labels as written).
pub fn sample(body: &str, series: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn the_country_label_is_opt_in_and_tcp_connections_are_served_with_metrics() {
    let site = Site::new();
    write_database(&site.path("geo.mmdb"), "country", 24, false);
    let port = free_port();
    let base = DAEMON.replace("    onlycountry: [FR, DE]\n", "");
    site.config(&format!(
        "{base}metrics:\n  listen: 127.0.0.1:{port}\n  export:\n    pattern_matches: {{extra: true}}\n"
    ));
    let daemon = site.start();
    site.log_lines(&[failed_login("192.0.2.8"), failed_login("192.0.2.8")]);
    wait_until("the ban", || site.actions().len() == 1);
    let body = scrape(port);
    assert_eq!(
        sample(
            &body,
            "rebuff_triggers_total{stream=\"ssh\",filter=\"failed\"}"
        ),
        Some(1),
        "no country label unless asked:\n{body}"
    );
    assert!(!body.contains("country=\"FR\""), "{body}");
    // Loopback (the scrape itself) is left out by default.
    assert!(
        body.contains("# TYPE rebuff_tcp_connections gauge"),
        "{body}"
    );
    assert!(!body.contains("rebuff_tcp_connections{"), "{body}");
    drop(daemon);

    site.config(&format!(
        "{}metrics:\n  listen: 127.0.0.1:{port}\n  export:\n    pattern_matches: {{extra: true}}\n",
        base.replace(
            "  check_interval: 1s\n",
            "  check_interval: 1s\n  label: true\n  tcp_connections:\n    include_local: true\n"
        )
    ));
    let _ = std::fs::remove_dir_all(site.path("state"));
    let _ = std::fs::remove_file(site.path("actions.log"));
    let daemon = site.start();
    site.log_lines(&[failed_login("198.51.100.3"), failed_login("198.51.100.3")]);
    wait_until("the bans", || site.actions().len() == 2);
    let body = scrape(port);
    let triggers = |country: &str| {
        sample(
            &body,
            &format!(
                "rebuff_triggers_total{{stream=\"ssh\",filter=\"failed\",country=\"{country}\"}}"
            ),
        )
    };
    // The log is read again from its start: 192.0.2.8 triggers again.
    assert_eq!(
        (triggers("FR"), triggers("DE")),
        (Some(1), Some(1)),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "rebuff_pattern_matches_total{stream=\"ssh\",filter=\"failed\",ip=\"198.51.100.3\",country=\"DE\"}"
        ),
        Some(2),
        "{body}"
    );
    // Loopback counted when asked, in the bucket of addresses without a
    // country: at least this scrape's own connection.
    let unknown = sample(&body, "rebuff_tcp_connections{country=\"unknown\"}");
    assert!(unknown.is_some_and(|n| n >= 1), "{body}");
    drop(daemon);
}
