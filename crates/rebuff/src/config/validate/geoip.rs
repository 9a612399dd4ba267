//! Validation of rebuff's `geoip` section and of the country keys it
//! enables elsewhere: `ignorecountry`/`onlycountry` on ip-typed patterns
//! and `<country>` in action commands.
//!
//! The database is opened and checked here, so a missing, empty,
//! truncated or malformed file is a configuration error naming the file
//! (and the key path), and a running daemon never meets one at its first
//! lookup. Country codes are checked against ISO 3166-1 alpha-2.

use std::sync::Arc;

use rebuff_engine::{Country, CountryLookup, CountryRule, Pattern, PatternKind};

use super::super::{GeoipConfig, TcpConnectionsConfig};
use super::{Checker, Entries, Node, Value, get, join, key_loc};
use crate::geo::Geo;

const GEOIP_KEYS: &[&str] = &[
    "database",
    "field",
    "check_interval",
    "label",
    "tcp_connections",
];
const TCP_KEYS: &[&str] = &["state", "exclude", "include_local", "max_sockets"];

pub const DEFAULT_FIELD: &str = "country.iso_code";
const DEFAULT_CHECK_INTERVAL_MS: u64 = 60_000;
const DEFAULT_MAX_SOCKETS: usize = 200_000;

impl Checker {
    pub(super) fn geoip(&mut self, node: &Node) -> Option<GeoipConfig> {
        const PATH: &str = "geoip";
        let entries = self.map(node, PATH, "a map (database, field, ...)")?;
        self.known_keys(entries, PATH, GEOIP_KEYS);
        let Some(db_node) = get(entries, "database") else {
            self.error(
                &node.loc,
                PATH,
                "a 'database' is needed: the path of an MMDB file (GeoLite2/GeoIP2 Country or City, DB-IP, ip-location-db)",
            );
            return None;
        };
        let database = self.string(db_node, "geoip.database")?;
        let field = match get(entries, "field") {
            Some(n) => {
                let field = self.string(n, "geoip.field")?;
                if field.is_empty()
                    || field.split('.').any(str::is_empty)
                    || field.split('.').count() > 8
                {
                    self.error(
                        &n.loc,
                        "geoip.field",
                        format!("'{field}' is not a dotted path of at most 8 keys (e.g. country.iso_code, country_code)"),
                    );
                    return None;
                }
                field
            }
            None => DEFAULT_FIELD.to_owned(),
        };
        let interval = match get(entries, "check_interval") {
            Some(n) => self.duration(n, "geoip.check_interval")?,
            None => DEFAULT_CHECK_INTERVAL_MS,
        };
        let label = match get(entries, "label") {
            Some(n) => self.bool(n, "geoip.label")?,
            None => false,
        };
        let tcp = match get(entries, "tcp_connections") {
            None => Some(TcpConnectionsConfig {
                state: false,
                exclude: Vec::new(),
                include_local: false,
                max_sockets: DEFAULT_MAX_SOCKETS,
            }),
            Some(n) => self.tcp_connections(n)?,
        };
        let path = std::path::PathBuf::from(&database);
        let geo = match Geo::open(&path, &field, interval) {
            Ok(geo) => geo,
            Err(e) => {
                self.error(&db_node.loc, "geoip.database", e.to_string());
                return None;
            }
        };
        Some(GeoipConfig {
            database: path,
            field,
            geo,
            label,
            tcp,
        })
    }

    /// `tcp_connections: false` turns the gauge off; a map tunes it.
    fn tcp_connections(&mut self, node: &Node) -> Option<Option<TcpConnectionsConfig>> {
        const PATH: &str = "geoip.tcp_connections";
        let mut config = TcpConnectionsConfig {
            state: false,
            exclude: Vec::new(),
            include_local: false,
            max_sockets: DEFAULT_MAX_SOCKETS,
        };
        let entries: &Entries = match &node.value {
            Value::Bool(false) => return Some(None),
            Value::Bool(true) | Value::Null => return Some(Some(config)),
            _ => self.map(
                node,
                PATH,
                "true, false, or a map (state, exclude, include_local, max_sockets)",
            )?,
        };
        self.known_keys(entries, PATH, TCP_KEYS);
        let mut ok = true;
        if let Some(n) = get(entries, "state") {
            config.state = self
                .bool(n, "geoip.tcp_connections.state")
                .unwrap_or_else(|| {
                    ok = false;
                    false
                });
        }
        if let Some(n) = get(entries, "include_local") {
            config.include_local = self
                .bool(n, "geoip.tcp_connections.include_local")
                .unwrap_or_else(|| {
                    ok = false;
                    false
                });
        }
        if let Some(n) = get(entries, "max_sockets") {
            match self.int(n, "geoip.tcp_connections.max_sockets") {
                Some(v) if v >= 1 => config.max_sockets = usize::try_from(v).unwrap_or(usize::MAX),
                Some(v) => {
                    self.error(
                        &n.loc,
                        "geoip.tcp_connections.max_sockets",
                        format!("must be at least 1, found {v}"),
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        if let Some(n) = get(entries, "exclude") {
            let path = "geoip.tcp_connections.exclude";
            match self.strings(n, path) {
                Some(items) => {
                    for (i, (text, item)) in items.into_iter().enumerate() {
                        let parsed = text.parse::<ipnet::IpNet>().ok().or_else(|| {
                            text.parse::<std::net::IpAddr>()
                                .ok()
                                .map(ipnet::IpNet::from)
                        });
                        match parsed {
                            Some(net) => config.exclude.push(net),
                            None => {
                                self.error(
                                    &item.loc,
                                    &format!("{path}[{i}]"),
                                    format!("'{text}' is not a network in CIDR notation (e.g. 192.168.1.0/24, 2001:db8::/64)"),
                                );
                                ok = false;
                            }
                        }
                    }
                }
                None => ok = false,
            }
        }
        ok.then_some(Some(config))
    }

    /// Adds a compiled pattern's `ignorecountry`/`onlycountry` rule.
    pub(super) fn pattern_countries(
        &mut self,
        entries: &Entries,
        path: &str,
        kind: PatternKind,
        pattern: Pattern,
    ) -> Option<Pattern> {
        let ignore = get(entries, "ignorecountry");
        let only = get(entries, "onlycountry");
        if ignore.is_none() && only.is_none() {
            return Some(pattern);
        }
        let key = if only.is_some() {
            "onlycountry"
        } else {
            "ignorecountry"
        };
        let key_path = join(path, key);
        let loc = key_loc(entries, key)
            .or_else(|| only.or(ignore).map(|n| &n.loc))?
            .clone();
        if ignore.is_some() && only.is_some() {
            self.error(
                &loc,
                &key_path,
                "ignorecountry and onlycountry cannot both be set on one pattern",
            );
            return None;
        }
        if !kind.is_ip() {
            self.error(
                &loc,
                &key_path,
                format!(
                    "{key} is only allowed on patterns of type ip, ipv4 or ipv6, not on type {}",
                    kind.name()
                ),
            );
            return None;
        }
        let node = only.or(ignore)?;
        let items = self.strings(node, &key_path)?;
        let mut codes = Vec::new();
        let mut ok = true;
        for (i, (text, item)) in items.into_iter().enumerate() {
            match Country::parse_iso(&text) {
                Some(code) => codes.push(code),
                None => {
                    self.error(
                        &item.loc,
                        &format!("{key_path}[{i}]"),
                        format!("'{text}' is not an ISO 3166-1 alpha-2 country code (two letters, e.g. FR, DE, US, GB)"),
                    );
                    ok = false;
                }
            }
        }
        let Some(geoip) = &self.geoip else {
            self.error(
                &loc,
                &key_path,
                format!("{key} needs a top-level 'geoip' section with the database to look countries up in"),
            );
            return None;
        };
        if !ok {
            return None;
        }
        codes.sort();
        codes.dedup();
        let lookup: Arc<dyn CountryLookup> = Arc::new(geoip.geo.clone());
        let rule = CountryRule {
            codes,
            only: only.is_some(),
            lookup,
        };
        match pattern.with_country_rule(rule) {
            Ok(pattern) => Some(pattern),
            Err(e) => {
                self.error(&loc, &key_path, e.to_string());
                None
            }
        }
    }
}

impl Checker {
    /// The hole `<country>` becomes: the country of the first ip-typed
    /// value the filter captures. Without a `geoip` section it stays
    /// literal text, as any `<...>` that names no pattern (warned); a
    /// filter without an ip value is an error.
    pub(super) fn country_part(
        &mut self,
        loc: &super::Loc,
        path: &str,
        filter_patterns: &[String],
        patterns: &rebuff_engine::Patterns,
    ) -> Option<super::ArgPart> {
        let Some(geoip) = &self.geoip else {
            self.warn(
                loc,
                path,
                "<country> is left as it is: there is no top-level 'geoip' section to look countries up in",
            );
            return None;
        };
        let lookup = super::super::CountryOf(Arc::new(geoip.geo.clone()));
        let slot = filter_patterns
            .iter()
            .position(|name| patterns.get(name).is_some_and(|(_, p)| p.kind().is_ip()));
        match slot {
            Some(slot) => Some(super::ArgPart::Country(slot, lookup)),
            None => {
                if !filter_patterns.is_empty() || !self.patterns_unreadable {
                    self.error(
                        loc,
                        path,
                        "<country> needs the filter to capture a pattern of type ip, ipv4 or ipv6",
                    );
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigErrors, yaml};
    use crate::geo::mmdb::writer::{Value, Writer};

    fn load(text: &str) -> Result<Config, ConfigErrors> {
        let node = yaml::parse_yaml(Path::new("c.yml"), text)?;
        super::super::compile(&node)
    }

    fn database(dir: &Path) -> String {
        let mut w = Writer::new(6, 28);
        w.insert("192.0.2.0/24", Value::country_record("FR"));
        w.insert("198.51.100.0/24", Value::country_record("DE"));
        let path = dir.join("c.mmdb");
        std::fs::write(&path, w.build()).expect("write");
        path.display().to_string()
    }

    fn config(geoip: &str, pattern: &str, cmd: &str) -> String {
        format!(
            "{geoip}\npatterns:\n  ip:\n    type: ip\n{pattern}\n  user:\n    regex: '\\w+'\n\
             streams:\n  s:\n    cmd: [cat]\n    filters:\n      f:\n        regex: ['fail <user> from <ip>']\n\
             \x20       actions:\n          a:\n            cmd: {cmd}\n"
        )
    }

    fn errors(text: &str) -> String {
        load(text).expect_err("invalid").to_string()
    }

    #[test]
    fn country_codes_are_checked_against_iso_3166() {
        let dir = tempfile::tempdir().expect("tempdir");
        let geoip = format!("geoip:\n  database: {}", database(dir.path()));
        let text = config(
            &geoip,
            "    ignorecountry: [FR, FRA, EN, de]",
            "[echo, '<ip>']",
        );
        let e = errors(&text);
        assert!(
            e.contains("patterns.ip.ignorecountry[1]") && e.contains("'FRA'"),
            "{e}"
        );
        assert!(
            e.contains("patterns.ip.ignorecountry[2]") && e.contains("'EN'"),
            "{e}"
        );
        assert!(!e.contains("[3]") && !e.contains("[0]"), "{e}");
        let text = config(&geoip, "    onlycountry: [fr, DE]", "[echo, '<ip>']");
        load(&text).expect("valid");
    }

    #[test]
    fn country_keys_need_an_ip_pattern_a_geoip_section_and_one_of_the_two() {
        let dir = tempfile::tempdir().expect("tempdir");
        let geoip = format!("geoip:\n  database: {}", database(dir.path()));
        let e = errors(&config("", "    ignorecountry: [FR]", "[echo]"));
        assert!(e.contains("needs a top-level 'geoip' section"), "{e}");
        let text = config(
            &geoip,
            "    ignorecountry: [FR]\n    onlycountry: [DE]",
            "[echo]",
        );
        assert!(errors(&text).contains("cannot both be set"));
        let text = format!(
            "{geoip}\npatterns:\n  user:\n    regex: '\\w+'\n    onlycountry: [FR]\n\
             streams:\n  s:\n    cmd: [cat]\n    filters:\n      f:\n        regex: ['<user>']\n\
             \x20       actions:\n          a:\n            cmd: [echo]\n"
        );
        let e = errors(&text);
        assert!(
            e.contains("patterns.user.onlycountry") && e.contains("type ip"),
            "{e}"
        );
    }

    #[test]
    fn bad_databases_are_load_errors_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = dir.path().join("bad.mmdb");
        std::fs::write(&bad, b"not a database at all").expect("write");
        let text = config(
            &format!("geoip:\n  database: {}", bad.display()),
            "",
            "[echo]",
        );
        let e = errors(&text);
        assert!(e.contains("c.yml:") && e.contains("geoip.database"), "{e}");
        assert!(e.contains("bad.mmdb") && e.contains("not an MMDB"), "{e}");
        let e = errors("geoip:\n  field: country_code\n");
        assert!(e.contains("'database' is needed"), "{e}");
    }

    #[test]
    fn tcp_connections_are_on_by_default_and_can_be_turned_off_or_tuned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = database(dir.path());
        let with = |tcp: &str| config(&format!("geoip:\n  database: {db}\n{tcp}"), "", "[echo]");
        let on = load(&with("")).expect("valid");
        let tcp = on
            .geoip
            .as_ref()
            .and_then(|g| g.tcp.clone())
            .expect("on by default");
        assert!(!tcp.state && !tcp.include_local && tcp.exclude.is_empty());
        let off = load(&with("  tcp_connections: false\n")).expect("valid");
        assert!(off.geoip.as_ref().is_some_and(|g| g.tcp.is_none()));
        let tuned = load(&with(
            "  tcp_connections:\n    state: true\n    exclude: [10.0.0.0/8, '2001:db8::1']\n    max_sockets: 10\n",
        ))
        .expect("valid");
        let tcp = tuned
            .geoip
            .as_ref()
            .and_then(|g| g.tcp.clone())
            .expect("on");
        assert!(tcp.state && tcp.max_sockets == 10 && tcp.exclude.len() == 2);
        let e = errors(&with(
            "  tcp_connections:\n    exclude: [nope]\n    max_sockets: 0\n",
        ));
        assert!(
            e.contains("geoip.tcp_connections.exclude[0]") && e.contains("'nope'"),
            "{e}"
        );
        assert!(
            e.contains("geoip.tcp_connections.max_sockets: must be at least 1"),
            "{e}"
        );
    }

    #[test]
    fn country_in_an_action_is_the_iso_code_or_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let geoip = format!("geoip:\n  database: {}", database(dir.path()));
        let config =
            load(&config(&geoip, "", "[echo, '<country>', 'x<country>y']")).expect("valid");
        let action = &config.streams[0].filters[0].actions[0];
        // Values follow the filter's pattern order: ip, user.
        let values = |ip: &str| [ip.to_owned(), "bob".to_owned()];
        assert_eq!(action.render(&values("192.0.2.7")), ["echo", "FR", "xFRy"]);
        assert_eq!(action.render(&values("203.0.113.7")), ["echo", "", "xy"]);
        // Without a geoip section, <country> is literal, with a warning.
        let config = load(&super::tests::config("", "", "[echo, '<country>']")).expect("valid");
        let action = &config.streams[0].filters[0].actions[0];
        assert_eq!(action.render(&values("192.0.2.7")), ["echo", "<country>"]);
        assert!(
            config
                .warnings
                .iter()
                .any(|w| w.message.contains("<country>"))
        );
    }

    #[test]
    fn ignored_and_only_countries_drop_matches_in_the_matcher() {
        let dir = tempfile::tempdir().expect("tempdir");
        let geoip = format!("geoip:\n  database: {}", database(dir.path()));
        for (rule, passes) in [
            ("    ignorecountry: [FR]", [false, true, true]),
            ("    onlycountry: [FR]", [true, false, false]),
        ] {
            let config = load(&config(&geoip, rule, "[echo]")).expect("valid");
            let matcher = &config.streams[0].matcher;
            let mut scratch = matcher.scratch();
            for (ip, pass) in ["192.0.2.1", "198.51.100.1", "203.0.113.1"]
                .iter()
                .zip(passes)
            {
                let mut out = Vec::new();
                assert!(matcher.find(&format!("fail bob from {ip}"), &mut scratch, &mut out));
                assert_eq!(out[0].outcome.is_ok(), pass, "{rule} {ip}");
                if let Err(ignored) = &out[0].outcome {
                    assert_eq!(ignored.reason, rebuff_engine::IgnoreReason::Country);
                }
            }
        }
    }
}
