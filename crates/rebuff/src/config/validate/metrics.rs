//! Validation of rebuff's `metrics` section.
//!
//! The section mirrors reaction-metrics-exporter's configuration (`all`,
//! `for.<stream>.<filter>`, `export.<family>` with `extra`) plus what only
//! an endpoint inside the daemon needs (`listen`, `web_config`, series
//! bounds). Templates are compiled here, so a broken one is a config error
//! with its path rather than a label that silently disappears at run time.
//! Unlike the exporter, a rule naming a stream, filter or pattern that does
//! not exist is an error: it would otherwise do nothing, unseen.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::super::{FamilySwitch, LabelRule, MetricsConfig, MetricsExport, Stream};
use super::{Checker, Entries, Node, Value, get, join};
use crate::metrics::labels;

const METRICS_KEYS: &[&str] = &[
    "listen",
    "web_config",
    "max_series",
    "series_idle",
    "all",
    "for",
    "export",
];
const EXPORT_KEYS: &[&str] = &[
    "matches",
    "actions",
    "pending",
    "commands",
    "streams",
    "internals",
    "pattern_matches",
];
const FAMILY_KEYS: &[&str] = &["extra"];

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9411";
const DEFAULT_MAX_SERIES: usize = 50_000;
const DEFAULT_SERIES_IDLE_MS: u64 = 3_600_000;

/// Labels every pattern-labelled family already has.
const FIXED_LABELS: &[&str] = &["stream", "filter", "action"];

impl Checker {
    pub(super) fn metrics(&mut self, node: &Node, streams: &[Stream]) -> Option<MetricsConfig> {
        const PATH: &str = "metrics";
        let empty = Vec::new();
        let entries: &Entries = match &node.value {
            // A bare `metrics:` turns the endpoint on with every default.
            Value::Null => &empty,
            _ => self.map(node, PATH, "a map (listen, all, for, export, ...)")?,
        };
        self.known_keys(entries, PATH, METRICS_KEYS);
        let listen = match get(entries, "listen") {
            Some(n) => self.listen(n),
            None => DEFAULT_LISTEN.parse().ok(),
        };
        let web_config = get(entries, "web_config")
            .and_then(|n| self.string(n, "metrics.web_config"))
            .map(PathBuf::from);
        let max_series = match get(entries, "max_series") {
            Some(n) => self.max_series(n),
            None => Some(DEFAULT_MAX_SERIES),
        };
        let series_idle_ms = match get(entries, "series_idle") {
            Some(n) => self.duration(n, "metrics.series_idle"),
            None => Some(DEFAULT_SERIES_IDLE_MS),
        };
        let export = self.export(get(entries, "export"));
        let all = match get(entries, "all") {
            Some(n) => self.label_rules(n, "metrics.all"),
            None => BTreeMap::new(),
        };
        let per_filter = match get(entries, "for") {
            Some(n) => self.per_filter_rules(n),
            None => BTreeMap::new(),
        };
        self.check_rule_targets(&all, &per_filter, streams);
        let labels = self.filter_labels(node, &all, &per_filter, streams, export);
        Some(MetricsConfig {
            listen: listen?,
            web_config,
            max_series: max_series?,
            series_idle_ms: series_idle_ms?,
            labels,
            export,
        })
    }

    /// `"127.0.0.1:9411"`, `"[::1]:9411"`, or the exporter's
    /// `{address: 127.0.0.1, port: 9411}`.
    fn listen(&mut self, node: &Node) -> Option<SocketAddr> {
        const PATH: &str = "metrics.listen";
        const ACCEPTED: &str = "accepted: \"ADDRESS:PORT\" such as \"127.0.0.1:9411\" or \"[::1]:9411\", or {address: 127.0.0.1, port: 9411}";
        let text = match &node.value {
            Value::Str(s) => s.clone(),
            Value::Map(entries) => {
                self.known_keys(entries, PATH, &["address", "port"]);
                let address = get(entries, "address")
                    .and_then(|n| self.string(n, "metrics.listen.address"))
                    .unwrap_or_else(|| "127.0.0.1".into());
                let port = get(entries, "port")
                    .and_then(|n| self.int(n, "metrics.listen.port"))
                    .unwrap_or(9411);
                if address.contains(':') && !address.starts_with('[') {
                    format!("[{address}]:{port}")
                } else {
                    format!("{address}:{port}")
                }
            }
            other => {
                self.error(
                    &node.loc,
                    PATH,
                    format!(
                        "expected an address, found {}; {ACCEPTED}",
                        other.kind_name()
                    ),
                );
                return None;
            }
        };
        let resolved = text.replacen("localhost:", "127.0.0.1:", 1);
        match resolved.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.error(
                    &node.loc,
                    PATH,
                    format!("'{text}' is not an address and port; {ACCEPTED}"),
                );
                None
            }
        }
    }

    fn max_series(&mut self, node: &Node) -> Option<usize> {
        let n = self.int(node, "metrics.max_series")?;
        match usize::try_from(n) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                self.error(
                    &node.loc,
                    "metrics.max_series",
                    format!("expected a positive number of series, found {n}"),
                );
                None
            }
        }
    }

    fn export(&mut self, node: Option<&Node>) -> MetricsExport {
        let mut export = MetricsExport {
            matches: FamilySwitch::On { extra: true },
            actions: FamilySwitch::On { extra: true },
            pending: FamilySwitch::On { extra: true },
            commands: true,
            streams: true,
            internals: true,
            pattern_matches: FamilySwitch::Off,
        };
        let Some(node) = node else {
            return export;
        };
        let Some(entries) = self.map(node, "metrics.export", "a map of family switches") else {
            return export;
        };
        self.known_keys(entries, "metrics.export", EXPORT_KEYS);
        for (key, value) in entries {
            let path = join("metrics.export", &key.name);
            match key.name.as_str() {
                "matches" => export.matches = self.family(value, &path),
                "actions" => export.actions = self.family(value, &path),
                "pending" => export.pending = self.family(value, &path),
                "pattern_matches" => export.pattern_matches = self.family(value, &path),
                "commands" => export.commands = self.switch(value, &path),
                "streams" => export.streams = self.switch(value, &path),
                "internals" => export.internals = self.switch(value, &path),
                _ => {}
            }
        }
        export
    }

    /// `null`/`true` on, `false` off (the exporter's `commands:`).
    fn switch(&mut self, node: &Node, path: &str) -> bool {
        match node.value {
            Value::Null => true,
            _ => self.bool(node, path).unwrap_or(true),
        }
    }

    /// A switch, or `{extra: BOOL}` (the exporter's `matches: {extra: false}`).
    fn family(&mut self, node: &Node, path: &str) -> FamilySwitch {
        match &node.value {
            Value::Null => FamilySwitch::On { extra: true },
            Value::Bool(false) => FamilySwitch::Off,
            Value::Bool(true) => FamilySwitch::On { extra: true },
            Value::Map(entries) => {
                self.known_keys(entries, path, FAMILY_KEYS);
                let extra = get(entries, "extra")
                    .map(|n| self.switch(n, &join(path, "extra")))
                    .unwrap_or(true);
                FamilySwitch::On { extra }
            }
            other => {
                self.error(
                    &node.loc,
                    path,
                    format!(
                        "expected true, false, null or {{extra: true|false}}, found {}",
                        other.kind_name()
                    ),
                );
                FamilySwitch::On { extra: true }
            }
        }
    }

    /// `{pattern: template | false | true | null}`; templates are compiled.
    fn label_rules(&mut self, node: &Node, path: &str) -> BTreeMap<String, (LabelRule, Node)> {
        let mut rules = BTreeMap::new();
        let Some(entries) = self.map(
            node,
            path,
            "a map of pattern names to a template, false (drop the label) or true/null (raw value)",
        ) else {
            return rules;
        };
        for (key, value) in entries {
            let rule_path = join(path, &key.name);
            let rule = match &value.value {
                Value::Null | Value::Bool(true) => LabelRule::Raw,
                Value::Bool(false) => LabelRule::Drop,
                Value::Str(source) => match labels::compile_check(&key.name, source) {
                    Ok(()) => LabelRule::Template(source.clone()),
                    Err(e) => {
                        self.error(
                            &value.loc,
                            &rule_path,
                            format!("the label template does not compile: {e}"),
                        );
                        continue;
                    }
                },
                other => {
                    self.error(
                        &value.loc,
                        &rule_path,
                        format!(
                            "expected a Jinja2 template string, false (drop the label) or true/null (raw value), found {}",
                            other.kind_name()
                        ),
                    );
                    continue;
                }
            };
            let mut located = value.clone();
            located.loc = key.loc.clone();
            rules.insert(key.name.clone(), (rule, located));
        }
        rules
    }

    /// `for.<stream>.<filter>.<pattern>`.
    fn per_filter_rules(&mut self, node: &Node) -> PerFilterRules {
        let mut out = BTreeMap::new();
        let Some(streams) = self.map(node, "metrics.for", "a map of stream names") else {
            return out;
        };
        for (stream, filters_node) in streams {
            let stream_path = join("metrics.for", &stream.name);
            let Some(filters) = self.map(filters_node, &stream_path, "a map of filter names")
            else {
                continue;
            };
            for (filter, rules_node) in filters {
                let path = join(&stream_path, &filter.name);
                let rules = self.label_rules(rules_node, &path);
                let locs = RuleLocs {
                    stream: stream.loc.clone(),
                    filter: filter.loc.clone(),
                };
                out.insert((stream.name.clone(), filter.name.clone()), (rules, locs));
            }
        }
        out
    }

    /// Every rule must name a pattern, stream and filter that exist.
    fn check_rule_targets(
        &mut self,
        all: &BTreeMap<String, (LabelRule, Node)>,
        per_filter: &PerFilterRules,
        streams: &[Stream],
    ) {
        if !self.errors.is_empty() {
            // Streams that failed to compile are missing: no false blame.
            return;
        }
        let mut used: Vec<&str> = streams
            .iter()
            .flat_map(|s| &s.filters)
            .flat_map(|f| f.pattern_names.iter().map(String::as_str))
            .collect();
        used.sort_unstable();
        used.dedup();
        for (name, (_, node)) in all {
            if !used.contains(&name.as_str()) {
                self.error(
                    &node.loc,
                    &join("metrics.all", name),
                    format!(
                        "no filter uses a pattern named '{name}' (patterns in use: {})",
                        used.join(", ")
                    ),
                );
            }
        }
        let mut missing_streams = Vec::new();
        for ((stream_name, filter_name), (rules, locs)) in per_filter {
            let path = format!("metrics.for.{stream_name}.{filter_name}");
            let Some(stream) = streams.iter().find(|s| &s.name == stream_name) else {
                // Once per stream, however many of its filters have rules.
                if missing_streams.contains(&stream_name) {
                    continue;
                }
                missing_streams.push(stream_name);
                let names: Vec<&str> = streams.iter().map(|s| s.name.as_str()).collect();
                self.error(
                    &locs.stream,
                    &join("metrics.for", stream_name),
                    format!(
                        "there is no stream '{stream_name}' (streams: {})",
                        names.join(", ")
                    ),
                );
                continue;
            };
            let Some(filter) = stream.filters.iter().find(|f| &f.name == filter_name) else {
                let names: Vec<&str> = stream.filters.iter().map(|f| f.name.as_str()).collect();
                self.error(
                    &locs.filter,
                    &path,
                    format!(
                        "stream '{stream_name}' has no filter '{filter_name}' (filters: {})",
                        names.join(", ")
                    ),
                );
                continue;
            };
            for (name, (_, node)) in rules {
                if !filter.pattern_names.contains(name) {
                    self.error(
                        &node.loc,
                        &join(&path, name),
                        format!(
                            "filter {stream_name}.{filter_name} has no pattern '{name}' (its patterns: {})",
                            filter.pattern_names.join(", ")
                        ),
                    );
                }
            }
        }
    }

    /// The effective rule of every pattern of every filter, checking that
    /// the labels kept are valid Prometheus label names.
    fn filter_labels(
        &mut self,
        section: &Node,
        all: &BTreeMap<String, (LabelRule, Node)>,
        per_filter: &PerFilterRules,
        streams: &[Stream],
        export: MetricsExport,
    ) -> Vec<Vec<LabelRule>> {
        let labelled = [
            export.matches,
            export.actions,
            export.pending,
            export.pattern_matches,
        ]
        .iter()
        .any(|f| f.has_patterns());
        let mut out = Vec::new();
        let mut reported = Vec::new();
        for stream in streams {
            for filter in &stream.filters {
                let specific = per_filter.get(&(stream.name.clone(), filter.name.clone()));
                let mut rules = Vec::new();
                for name in &filter.pattern_names {
                    let rule = specific
                        .and_then(|(rules, _)| rules.get(name))
                        .or_else(|| all.get(name))
                        .map_or(LabelRule::Raw, |(rule, _)| rule.clone());
                    let problem = (labelled && rule != LabelRule::Drop && !reported.contains(name))
                        .then(|| label_name_problem(name))
                        .flatten();
                    if let Some(problem) = problem {
                        reported.push(name.clone());
                        self.error(
                            &section.loc,
                            &format!("metrics.all.{name}"),
                            format!(
                                "the pattern '{name}' cannot be a label: {problem}; drop it with `metrics.all.{name}: false` or rename the pattern"
                            ),
                        );
                    }
                    rules.push(rule);
                }
                out.push(rules);
            }
        }
        out
    }
}

type PerFilterRules = BTreeMap<(String, String), (BTreeMap<String, (LabelRule, Node)>, RuleLocs)>;

/// Where the stream and filter keys of a `for.<stream>.<filter>` rule are.
struct RuleLocs {
    stream: super::Loc,
    filter: super::Loc,
}

/// Why `name` is not usable as a Prometheus label, if it is not.
fn label_name_problem(name: &str) -> Option<&'static str> {
    if FIXED_LABELS.contains(&name) {
        return Some("every pattern-labelled family already has a label of that name");
    }
    if name.starts_with("__") {
        return Some("label names starting with '__' are reserved by Prometheus");
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Some("a label name is ASCII letters, digits and '_', not starting with a digit");
    }
    None
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::compile;
    use crate::config::{Config, ConfigErrors, FamilySwitch, LabelRule, yaml};

    const BASE: &str = r#"
patterns:
  ip: {type: ip}
  user: {regex: '\w+'}
streams:
  ssh:
    cmd: ['true']
    filters:
      failed:
        regex: ['fail <user> from <ip>']
        actions:
          ban: {cmd: ['true']}
"#;

    fn load(metrics: &str) -> Result<Config, ConfigErrors> {
        let text = format!("{BASE}{metrics}");
        let node = yaml::parse_yaml(Path::new("c.yml"), &text)?;
        compile(&node)
    }

    fn error(metrics: &str) -> String {
        match load(metrics) {
            Ok(_) => panic!("accepted: {metrics}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn no_section_means_no_endpoint_and_a_bare_one_takes_the_defaults() {
        assert_eq!(load("").expect("valid").metrics, None);
        let config = load("metrics:\n").expect("valid");
        let metrics = config.metrics.expect("section");
        assert_eq!(metrics.listen.to_string(), "127.0.0.1:9411");
        assert_eq!(metrics.export.matches, FamilySwitch::On { extra: true });
        assert_eq!(metrics.export.pattern_matches, FamilySwitch::Off);
        assert_eq!(metrics.labels, vec![vec![LabelRule::Raw, LabelRule::Raw]]);
    }

    #[test]
    fn the_exporters_own_listen_shape_and_rules_are_accepted() {
        let config = load(
            r#"metrics:
  listen: {address: "::1", port: 9500}
  all: {ip: false}
  for:
    ssh:
      failed:
        user: "{{ user | upper }}"
  export:
    matches: {extra: false}
    actions: false
    commands:
    internals: false
"#,
        )
        .expect("valid");
        let metrics = config.metrics.expect("section");
        assert_eq!(metrics.listen.to_string(), "[::1]:9500");
        // Pattern names in value order: user then ip.
        let rules = &metrics.labels[0];
        assert!(rules.contains(&LabelRule::Drop));
        assert!(rules.contains(&LabelRule::Template("{{ user | upper }}".into())));
        assert_eq!(metrics.export.matches, FamilySwitch::On { extra: false });
        assert_eq!(metrics.export.actions, FamilySwitch::Off);
        assert!(metrics.export.commands);
        assert!(!metrics.export.internals);
    }

    #[test]
    fn a_template_that_does_not_compile_is_an_error_with_its_path_and_position() {
        let e = error("metrics:\n  all:\n    ip: \"{{ ip \"\n");
        assert!(e.starts_with("c.yml:"), "{e}");
        assert!(
            e.contains("metrics.all.ip: the label template does not compile"),
            "{e}"
        );
    }

    #[test]
    fn rules_for_unknown_streams_filters_and_patterns_are_errors() {
        // Once, at the stream's key, however many filters it lists.
        let e = error("metrics:\n  for:\n    web:\n      failed: {ip: false}\n      b: {}\n");
        assert_eq!(
            e,
            "c.yml:15:5: metrics.for.web: there is no stream 'web' (streams: ssh)"
        );
        let e = error("metrics:\n  for:\n    ssh:\n      nope: {ip: false}\n");
        assert!(
            e.contains("c.yml:16:7: metrics.for.ssh.nope: stream 'ssh' has no filter 'nope'"),
            "{e}"
        );
        let e = error("metrics:\n  all: {email: false}\n");
        assert!(
            e.contains("metrics.all.email: no filter uses a pattern named 'email'"),
            "{e}"
        );
    }

    #[test]
    fn bad_addresses_switches_and_bounds_say_what_is_accepted() {
        let e = error("metrics:\n  listen: 'nowhere'\n");
        assert!(
            e.contains("metrics.listen: 'nowhere' is not an address and port; accepted:"),
            "{e}"
        );
        let e = error("metrics:\n  export: {matches: 3}\n");
        assert!(
            e.contains("metrics.export.matches: expected true, false, null or {extra: true|false}"),
            "{e}"
        );
        let e = error("metrics:\n  max_series: 0\n");
        assert!(
            e.contains("metrics.max_series: expected a positive number"),
            "{e}"
        );
        let e = error("metrics:\n  exprot: {}\n");
        assert!(e.contains("did you mean 'export'"), "{e}");
    }

    #[test]
    fn a_pattern_named_like_a_fixed_label_must_be_dropped() {
        let config = BASE
            .replace("<user>", "<stream>")
            .replace("  user:", "  stream:");
        let node =
            yaml::parse_yaml(Path::new("c.yml"), &format!("{config}metrics:\n")).expect("yaml");
        let e = compile(&node).expect_err("clash").to_string();
        assert!(e.contains("the pattern 'stream' cannot be a label"), "{e}");
        let node = yaml::parse_yaml(
            Path::new("c.yml"),
            &format!("{config}metrics:\n  all: {{stream: false}}\n"),
        )
        .expect("yaml");
        assert!(compile(&node).is_ok());
    }
}
