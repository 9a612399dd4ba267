//! The Grafana dashboards and the alert rules in `dashboards/`, checked
//! against real time-series databases: every panel query, variable query
//! and alert expression runs on a Prometheus (and the VictoriaMetrics
//! dashboard on a VictoriaMetrics) scraping two canned expositions that
//! hold every family rebuff serves. A query the server rejects fails the
//! test; a query that finds nothing on data that has every family most
//! likely names a metric or label rebuff does not serve.
//!
//! The servers come from the system; without them those tests print
//! "skipped: …" and pass. The checks that need no server always run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde_json::Value;

use crate::tsdb::{Prometheus, StaticExposition, VictoriaMetrics, has_samples, unix_now};

/// Every family of `metrics-spec.md`, with its type.
const FAMILIES: &[(&str, &str)] = &[
    ("rebuff_build_info", "gauge"),
    ("rebuff_lines_total", "counter"),
    ("rebuff_bad_lines_total", "counter"),
    ("rebuff_matches_total", "counter"),
    ("rebuff_ignored_total", "counter"),
    ("rebuff_triggers_total", "counter"),
    ("rebuff_actions_total", "counter"),
    ("rebuff_action_duration_seconds", "histogram"),
    ("rebuff_pending_actions", "gauge"),
    ("rebuff_jailed", "gauge"),
    ("rebuff_actions_queued", "gauge"),
    ("rebuff_actions_running", "gauge"),
    ("rebuff_stream_events_total", "counter"),
    ("rebuff_stream_up", "gauge"),
    ("rebuff_commands_total", "counter"),
    ("rebuff_store_size_bytes", "gauge"),
    ("rebuff_store_commit_duration_seconds", "histogram"),
    ("rebuff_store_errors_total", "counter"),
    ("rebuff_label_template_errors_total", "counter"),
    ("rebuff_metric_series", "gauge"),
    ("rebuff_metric_series_dropped_total", "counter"),
    ("rebuff_pattern_matches_total", "counter"),
    ("rebuff_tcp_connections", "gauge"),
    ("rebuff_tcp_connections_scanned", "gauge"),
    ("rebuff_tcp_connections_truncated", "gauge"),
    ("rebuff_tcp_connections_failed", "gauge"),
    ("process_cpu_seconds_total", "counter"),
    ("process_resident_memory_bytes", "gauge"),
    ("process_virtual_memory_bytes", "gauge"),
    ("process_open_fds", "gauge"),
    ("process_max_fds", "gauge"),
    ("process_start_time_seconds", "gauge"),
    ("process_threads", "gauge"),
    ("reaction_exporter_build_info", "gauge"),
    ("reaction_status_info", "gauge"),
    ("reaction_match_count", "gauge"),
    ("reaction_action_count", "gauge"),
    ("reaction_pending_count", "gauge"),
    ("reaction_commands_count", "gauge"),
    ("reaction_stream_event_count", "gauge"),
];

/// The range every query is run over, as Grafana's `$__range`.
const RANGE_SECONDS: f64 = 300.0;
/// `$__interval` and the range queries' step. Short, because the data is
/// only seconds old: VictoriaMetrics aligns range queries to the step and
/// shows nothing when no aligned point has data yet.
const STEP: &str = "2s";
/// `$__rate_interval`: several scrapes at 1s.
const RATE_INTERVAL: &str = "15s";
/// How long the servers may take to hold a few scrapes.
const DATA_DEADLINE: Duration = Duration::from_secs(30);

/// Share of panel queries that must find data on the canned expositions.
const MIN_NON_EMPTY: f64 = 0.8;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn read_dashboard(name: &str) -> Value {
    let path = repo_file(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn read_alerts() -> String {
    let path = repo_file("dashboards/rebuff-alerts.yml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every panel, rows included, and the panels nested in collapsed rows.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            if let Some(nested) = panel.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// One query of a panel.
#[derive(Debug)]
struct PanelQuery {
    origin: String,
    expr: String,
    instant: bool,
}

fn panel_queries(dashboard: &Value) -> Vec<PanelQuery> {
    let mut out = Vec::new();
    for panel in all_panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(PanelQuery {
                    origin: format!("{title} ({})", target["refId"].as_str().unwrap_or("?")),
                    expr: expr.to_owned(),
                    instant: target["instant"].as_bool() == Some(true),
                });
            }
        }
    }
    out
}

/// Template variables: name and, for query variables, the definition.
fn variables(dashboard: &Value) -> Vec<(String, Option<String>)> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            let name = v["name"].as_str().unwrap_or("?").to_owned();
            let query = match &v["query"] {
                Value::String(q) => Some(q.clone()),
                Value::Object(o) => o.get("query").and_then(Value::as_str).map(str::to_owned),
                _ => None,
            };
            let query = query.filter(|_| v["type"] == "query");
            (name, query)
        })
        .collect()
}

/// Grafana's substitutions for one evaluation at `to` (Unix seconds).
struct Grafana {
    values: BTreeMap<String, String>,
    pattern: Regex,
}

impl Grafana {
    fn new(dashboard: &Value, to: f64) -> Grafana {
        let from_ms = ((to - RANGE_SECONDS) * 1000.0).round();
        let to_ms = (to * 1000.0).round();
        let mut values: BTreeMap<String, String> = [
            ("__range", format!("{}s", RANGE_SECONDS)),
            ("__range_s", format!("{RANGE_SECONDS}")),
            ("__range_ms", format!("{}", RANGE_SECONDS * 1000.0)),
            ("__interval", STEP.to_owned()),
            ("__interval_ms", "2000".to_owned()),
            ("__rate_interval", RATE_INTERVAL.to_owned()),
            ("__from", format!("{from_ms}")),
            ("__to", format!("{to_ms}")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (name, query) in variables(dashboard) {
            // Query variables are multi-value with "All" = `.*`; the data
            // source variable only ever appears in `datasource` objects.
            if query.is_some() {
                values.insert(name, ".*".to_owned());
            }
        }
        Grafana {
            values,
            pattern: Regex::new(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")
                .expect("the variable pattern compiles"),
        }
    }

    /// `expr` with every variable replaced; `Err` names an unknown one.
    fn substitute(&self, expr: &str) -> Result<String, String> {
        let mut unknown = Vec::new();
        let out = self
            .pattern
            .replace_all(expr, |caps: &regex::Captures<'_>| {
                let name = caps
                    .get(1)
                    .or_else(|| caps.get(2))
                    .or_else(|| caps.get(3))
                    .map_or("", |m| m.as_str());
                match self.values.get(name) {
                    Some(value) => value.clone(),
                    None => {
                        unknown.push(name.to_owned());
                        String::new()
                    }
                }
            });
        if unknown.is_empty() {
            Ok(out.into_owned())
        } else {
            Err(format!("unknown variable(s) {unknown:?}"))
        }
    }
}

/// `label_values(selector, label)` split into its parts.
fn parse_label_values(definition: &str) -> Option<(String, String)> {
    let inner = definition
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some((selector.trim().to_owned(), label.trim().to_owned()))
}

/// The query API both servers share.
pub trait QueryApi {
    fn instant(&self, promql: &str) -> Result<Value, String>;
    fn range(&self, promql: &str, start: f64, end: f64, step: &str) -> Result<Value, String>;
    fn label_values(&self, selector: &str, label: &str) -> Result<Vec<String>, String>;
    /// `host:port` and the tail of the server's log, for failure messages.
    fn describe(&self) -> String;
}

/// The last lines of a server log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl QueryApi for Prometheus {
    fn instant(&self, promql: &str) -> Result<Value, String> {
        self.query(promql)
    }
    fn range(&self, promql: &str, start: f64, end: f64, step: &str) -> Result<Value, String> {
        self.query_range(promql, start, end, step)
    }
    fn label_values(&self, selector: &str, label: &str) -> Result<Vec<String>, String> {
        Prometheus::label_values(self, selector, label)
    }
    fn describe(&self) -> String {
        format!("server {}, log tail:\n{}", self.addr(), tail(&self.log()))
    }
}

impl QueryApi for VictoriaMetrics {
    fn instant(&self, promql: &str) -> Result<Value, String> {
        self.query(promql)
    }
    fn range(&self, promql: &str, start: f64, end: f64, step: &str) -> Result<Value, String> {
        self.query_range(promql, start, end, step)
    }
    fn label_values(&self, selector: &str, label: &str) -> Result<Vec<String>, String> {
        VictoriaMetrics::label_values(self, selector, label)
    }
    fn describe(&self) -> String {
        format!("server {}, log tail:\n{}", self.addr(), tail(&self.log()))
    }
}

/// Runs every variable and panel query of `name` as Grafana would, instant
/// and range; panics listing every rejected query, or when too few panel
/// queries find data.
pub fn check_dashboard(api: &dyn QueryApi, name: &str, min_non_empty: f64) {
    let dashboard = read_dashboard(name);
    let to = unix_now();
    let from = to - RANGE_SECONDS;
    let grafana = Grafana::new(&dashboard, to);
    let mut failures = Vec::new();
    let mut empty = Vec::new();

    for (variable, definition) in variables(&dashboard) {
        let Some(definition) = definition else {
            continue;
        };
        let Some((selector, label)) = parse_label_values(&definition) else {
            failures.push(format!(
                "variable {variable}: not label_values(…): {definition}"
            ));
            continue;
        };
        match grafana.substitute(&selector) {
            Err(e) => failures.push(format!("variable {variable}: {e}")),
            Ok(selector) => match api.label_values(&selector, &label) {
                Err(e) => failures.push(format!("variable {variable}: {selector}: {e}")),
                // The canned data has every family: an empty list is a typo.
                Ok(values) if values.is_empty() && min_non_empty > 0.0 => {
                    failures.push(format!("variable {variable}: no values for {selector}"));
                }
                Ok(_) => {}
            },
        }
    }

    let queries = panel_queries(&dashboard);
    let mut with_data = 0;
    for query in &queries {
        let expr = match grafana.substitute(&query.expr) {
            Ok(expr) => expr,
            Err(e) => {
                failures.push(format!("{}: {e}", query.origin));
                continue;
            }
        };
        let instant = api.instant(&expr);
        let range = api.range(&expr, from, to, STEP);
        for (kind, answer) in [("instant", &instant), ("range", &range)] {
            if let Err(e) = answer {
                failures.push(format!("{} [{kind}]: {e}\n    {expr}", query.origin));
            }
        }
        let own = if query.instant { &instant } else { &range };
        match own {
            Ok(data) if has_samples(data) => with_data += 1,
            Ok(_) => empty.push(query.origin.clone()),
            Err(_) => {}
        }
    }

    let mut report = String::new();
    for line in &empty {
        let _ = writeln!(report, "  no data: {line}");
    }
    eprintln!(
        "{name}: {} panel queries, {with_data} with data\n{report}",
        queries.len()
    );
    assert!(
        failures.is_empty(),
        "{name}: {} failures in {} panel queries (instant and range):\n{}\n{}",
        failures.len(),
        queries.len(),
        failures.join("\n"),
        api.describe()
    );
    assert!(!queries.is_empty(), "{name} has no panel queries");
    let share = f64::from(with_data) / queries.len() as f64;
    assert!(
        share >= min_non_empty,
        "{name}: only {with_data} of {} panel queries found data:\n{report}",
        queries.len()
    );
}

/// The instant answer of the panel titled `title` (its first query) at
/// the current time: each sample's labels and value.
fn panel_samples(
    api: &dyn QueryApi,
    name: &str,
    title: &str,
) -> Vec<(BTreeMap<String, String>, f64)> {
    let dashboard = read_dashboard(name);
    let query = panel_queries(&dashboard)
        .into_iter()
        .find(|q| q.origin == format!("{title} (A)"))
        .unwrap_or_else(|| panic!("{name} has no panel {title:?}"));
    let expr = Grafana::new(&dashboard, unix_now())
        .substitute(&query.expr)
        .expect("the panel's variables are known");
    let data = api
        .instant(&expr)
        .unwrap_or_else(|e| panic!("{title}: {e}"));
    data["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|sample| {
            let labels = sample["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let value = sample["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            (labels, value)
        })
        .collect()
}

/// Panels whose answer on the canned data is known, beyond "not empty".
fn check_known_answers(api: &dyn QueryApi, name: &str) {
    let ips = |title: &str| -> BTreeSet<String> {
        panel_samples(api, name, title)
            .into_iter()
            .filter_map(|(labels, _)| labels.get("ip").cloned())
            .collect()
    };
    let shared = BTreeSet::from(["203.0.113.7".to_owned()]);
    assert_eq!(ips("IPs matched in several filters"), shared);
    assert_eq!(ips("IPs matched on several instances"), shared);
    assert_eq!(ips("IPs in several filters (native)"), shared);
    assert_eq!(ips("Most matched IPs in the range").len(), 3);

    let status: BTreeSet<u64> = panel_samples(api, name, "reaction status")
        .into_iter()
        .map(|(_, v)| v as u64)
        .collect();
    assert_eq!(
        status,
        BTreeSet::from([0, 1]),
        "machine A is up, B reports down"
    );

    let failing: BTreeSet<String> = panel_samples(api, name, "Failing actions in the range")
        .into_iter()
        .filter_map(|(labels, _)| labels.get("result").cloned())
        .collect();
    assert_eq!(
        failing,
        BTreeSet::from(["failed".to_owned()]),
        "timeouts never grow"
    );

    // A lifetime needs samples on two subquery steps: more scrapes may be
    // needed on a loaded machine, so poll rather than ask once.
    let start = std::time::Instant::now();
    loop {
        let lifetimes = panel_samples(api, name, "Longest-lived label sets");
        if lifetimes.iter().any(|(_, seconds)| *seconds >= 1.0) {
            break;
        }
        assert!(
            start.elapsed() < DATA_DEADLINE,
            "label sets seen for seconds have a lifetime: {lifetimes:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Two canned rebuff endpoints, as two machines; their counters grow with
/// each scrape so rates, increases and quantiles have something to show.
fn two_machines() -> [StaticExposition; 2] {
    [
        StaticExposition::from_fn(|n| exposition(Machine::A, n)),
        StaticExposition::from_fn(|n| exposition(Machine::B, n)),
    ]
}

/// Waits until each of the two targets has been scraped a few times.
const SCRAPED: &str = r#"count(count_over_time(up{job="reaction"}[1m]) >= 4) >= 2"#;

#[test]
fn every_prometheus_dashboard_query_executes() {
    let machines = two_machines();
    let targets: Vec<String> = machines.iter().map(StaticExposition::addr).collect();
    let Some(prometheus) = Prometheus::start(&targets, "1s") else {
        return;
    };
    prometheus.wait_for(SCRAPED, DATA_DEADLINE);
    check_dashboard(
        &prometheus,
        "dashboards/rebuff-prometheus.json",
        MIN_NON_EMPTY,
    );
    check_known_answers(&prometheus, "dashboards/rebuff-prometheus.json");
}

#[test]
fn every_victoriametrics_dashboard_query_executes() {
    let machines = two_machines();
    let targets: Vec<String> = machines.iter().map(StaticExposition::addr).collect();
    let Some(victoria) = VictoriaMetrics::start(&targets, "1s") else {
        return;
    };
    victoria.wait_for(SCRAPED, DATA_DEADLINE);
    check_dashboard(
        &victoria,
        "dashboards/rebuff-victoriametrics.json",
        MIN_NON_EMPTY,
    );
    check_known_answers(&victoria, "dashboards/rebuff-victoriametrics.json");
}

/// The `expr` of every rule, block scalars (`|`, `>-`) joined by newlines,
/// which PromQL reads as spaces.
fn alert_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if !rest.starts_with(['|', '>']) {
            out.push(rest.to_owned());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let block: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            .map(|l| l.trim())
            .collect();
        out.push(block.join("\n").trim().to_owned());
    }
    out
}

/// Each rule's text, from its `- alert:` line to the next.
fn alert_blocks(text: &str) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("- alert:") {
            blocks.push(String::new());
        } else if line.trim_start().starts_with("- name:") {
            blocks.push(String::new()); // a group header ends the rule
            continue;
        }
        if let Some(block) = blocks.last_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    blocks.retain(|b| b.trim_start().starts_with("- alert:"));
    blocks
}

#[test]
fn every_alert_expression_executes() {
    let exprs = alert_exprs(&read_alerts());
    assert_eq!(
        exprs.len(),
        alert_blocks(&read_alerts()).len(),
        "one expr per alert"
    );
    let machines = two_machines();
    let targets: Vec<String> = machines.iter().map(StaticExposition::addr).collect();
    let Some(prometheus) = Prometheus::start(&targets, "1s") else {
        return;
    };
    prometheus.wait_for(SCRAPED, DATA_DEADLINE);
    let failures: Vec<String> = exprs
        .iter()
        .filter_map(|expr| prometheus.query(expr).err().map(|e| format!("{expr}: {e}")))
        .collect();
    assert!(failures.is_empty(), "rejected:\n{}", failures.join("\n"));
}

#[test]
fn the_alert_rules_pass_promtool_check() {
    let path = repo_file("dashboards/rebuff-alerts.yml");
    let output = match std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: `promtool` is not installed (apt-get install prometheus)");
            return;
        }
        Err(e) => panic!("run promtool: {e}"),
    };
    assert!(
        output.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The metric names an expression mentions, histogram series folded into
/// their family.
fn metric_names(expr: &str, pattern: &Regex) -> Vec<String> {
    let histograms: Vec<&str> = FAMILIES
        .iter()
        .filter(|(_, kind)| *kind == "histogram")
        .map(|(name, _)| *name)
        .collect();
    pattern
        .find_iter(expr)
        .map(|m| {
            let name = m.as_str();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|base| histograms.contains(base))
                })
                .unwrap_or(name)
                .to_owned()
        })
        .collect()
}

fn metric_pattern() -> Regex {
    Regex::new(r"\b(rebuff|reaction|process)_[a-z_]+").expect("the metric pattern compiles")
}

fn unknown_metrics<'a>(exprs: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    let pattern = metric_pattern();
    let known: BTreeSet<&str> = FAMILIES.iter().map(|(name, _)| *name).collect();
    exprs
        .flat_map(|expr| metric_names(expr, &pattern))
        .filter(|name| !known.contains(name.as_str()))
        .collect()
}

#[test]
fn the_dashboards_are_json_with_unique_ids_and_served_metric_names() {
    let prometheus = read_dashboard("dashboards/rebuff-prometheus.json");
    let victoria = read_dashboard("dashboards/rebuff-victoriametrics.json");
    for (name, dashboard, datasource) in [
        ("prometheus", &prometheus, "${DS_PROMETHEUS}"),
        ("victoriametrics", &victoria, "${DS_VICTORIAMETRICS}"),
    ] {
        let mut ids = BTreeSet::new();
        for panel in all_panels(dashboard) {
            let id = panel["id"].as_u64().expect("every panel has a numeric id");
            assert!(ids.insert(id), "{name}: panel id {id} is used twice");
            if panel["type"] != "row" {
                assert_eq!(
                    panel["datasource"]["uid"], datasource,
                    "{name}: panel {} uses another data source",
                    panel["title"]
                );
            }
        }
        let variable_names: Vec<String> = variables(dashboard).into_iter().map(|v| v.0).collect();
        for wanted in [
            &datasource[2..datasource.len() - 1],
            "job",
            "instance",
            "stream",
            "filter",
            "ip",
        ] {
            assert!(
                variable_names.iter().any(|v| v == wanted),
                "{name}: no `{wanted}` variable"
            );
        }
        let queries = panel_queries(dashboard);
        let definitions: Vec<String> = variables(dashboard)
            .into_iter()
            .filter_map(|v| v.1)
            .collect();
        let unknown = unknown_metrics(
            queries
                .iter()
                .map(|q| q.expr.as_str())
                .chain(definitions.iter().map(String::as_str)),
        );
        assert!(
            unknown.is_empty(),
            "{name}: not served by rebuff: {unknown:?}"
        );
    }
    // The VictoriaMetrics dashboard is the Prometheus one plus panels.
    let in_victoria: BTreeSet<String> = panel_queries(&victoria)
        .into_iter()
        .map(|q| q.expr)
        .collect();
    let missing: Vec<String> = panel_queries(&prometheus)
        .into_iter()
        .map(|q| q.expr)
        .filter(|expr| !in_victoria.contains(expr))
        .collect();
    assert!(
        missing.is_empty(),
        "missing from the VictoriaMetrics dashboard: {missing:#?}"
    );
}

#[test]
fn every_alert_names_served_metrics_and_has_severity_summary_and_description() {
    let text = read_alerts();
    let blocks = alert_blocks(&text);
    assert_eq!(
        blocks.len(),
        10,
        "the five exporter alerts and rebuff's five"
    );
    for block in &blocks {
        for key in ["expr:", "severity:", "summary:", "description:"] {
            assert!(block.contains(key), "no `{key}` in:\n{block}");
        }
    }
    let exprs = alert_exprs(&text);
    let unknown = unknown_metrics(exprs.iter().map(String::as_str));
    assert!(unknown.is_empty(), "not served by rebuff: {unknown:?}");
}

#[test]
fn grafana_variables_are_substituted_in_every_form() {
    let dashboard = serde_json::json!({"templating": {"list": [
        {"name": "ip", "type": "query", "query": "label_values(reaction_match_count, ip)"}
    ]}});
    let grafana = Grafana::new(&dashboard, 1000.0);
    assert_eq!(
        grafana
            .substitute(r#"x{ip=~"$ip", b=~"${ip}", c=~"${ip:regex}", d=~"[[ip]]"}[$__range_s]"#)
            .as_deref(),
        Ok(r#"x{ip=~".*", b=~".*", c=~".*", d=~".*"}[300]"#)
    );
    assert_eq!(
        grafana.substitute("$__from/1000").as_deref(),
        Ok("700000/1000")
    );
    assert!(grafana.substitute("x{a=~\"$ipp\"}").is_err());
}

// --- the canned exposition ------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Machine {
    A,
    B,
}

/// Exposition text under construction.
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str) {
        let _ = writeln!(self.0, "# HELP {name} Canned {name}.\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {value}", labels.join(","));
        }
    }

    /// A histogram whose `count` observations fall evenly in its buckets.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], count: u64) {
        let bounds = ["0.005", "0.05", "0.5", "5", "+Inf"];
        for (i, le) in bounds.iter().enumerate() {
            let mut with_le = labels.to_vec();
            with_le.push(("le", le));
            let cumulative = count * (i as u64 + 1) / bounds.len() as u64;
            self.sample(&format!("{name}_bucket"), &with_le, cumulative);
        }
        self.sample(&format!("{name}_sum"), labels, count as f64 * 0.1);
        self.sample(&format!("{name}_count"), labels, count);
    }
}

/// What one machine serves at its `n`-th scrape: every family of the spec,
/// two streams, three filters' worth of series, IPs shared between filters
/// and between machines.
fn exposition(machine: Machine, n: u64) -> String {
    // (stream, filter, action, ips)
    let ssh_ips: &[&str] = match machine {
        Machine::A => &["203.0.113.7", "198.51.100.23"],
        Machine::B => &["203.0.113.7", "192.0.2.44"],
    };
    let web_ips: &[&str] = &["203.0.113.7"];
    let filters: [(&str, &str, &[&str], &[&str]); 2] = [
        ("ssh", "failedlogin", &["ban", "unban"], ssh_ips),
        ("web", "bots", &["ban"], web_ips),
    ];
    let mut t = Text(String::new());

    t.family("rebuff_build_info", "gauge");
    t.sample("rebuff_build_info", &[("version", "0.1.0")], 1);
    // GeoIP: connections by remote country, with the bucket of addresses
    // without one.
    t.family("rebuff_tcp_connections", "gauge");
    for (country, k) in [("FR", 3), ("DE", 2), ("US", 5), ("unknown", 1)] {
        t.sample("rebuff_tcp_connections", &[("country", country)], k + n % 3);
    }
    for (family, value) in [
        ("rebuff_tcp_connections_scanned", 12 + n % 3),
        ("rebuff_tcp_connections_truncated", 0),
        ("rebuff_tcp_connections_failed", 0),
    ] {
        t.family(family, "gauge");
        t.sample(family, &[], value);
    }
    t.family("rebuff_lines_total", "counter");
    t.family("rebuff_bad_lines_total", "counter");
    t.family("rebuff_stream_events_total", "counter");
    t.family("rebuff_stream_up", "gauge");
    for stream in ["ssh", "web"] {
        t.sample("rebuff_lines_total", &[("stream", stream)], 40 * n);
        t.sample(
            "rebuff_bad_lines_total",
            &[("stream", stream), ("reason", "too_long")],
            n / 2,
        );
        t.sample(
            "rebuff_bad_lines_total",
            &[("stream", stream), ("reason", "invalid_utf8")],
            0,
        );
        t.sample(
            "rebuff_stream_events_total",
            &[("stream", stream), ("type", "start")],
            1,
        );
        t.sample(
            "rebuff_stream_events_total",
            &[("stream", stream), ("type", "exit")],
            n / 3,
        );
        t.sample("rebuff_stream_up", &[("stream", stream)], 1);
    }
    for (family, kind) in [
        ("rebuff_matches_total", "counter"),
        ("rebuff_ignored_total", "counter"),
        ("rebuff_triggers_total", "counter"),
        ("rebuff_actions_total", "counter"),
        ("rebuff_action_duration_seconds", "histogram"),
        ("rebuff_pending_actions", "gauge"),
        ("rebuff_jailed", "gauge"),
        ("rebuff_label_template_errors_total", "counter"),
        ("rebuff_pattern_matches_total", "counter"),
    ] {
        t.family(family, kind);
        for (stream, filter, actions, ips) in filters {
            let sf = [("stream", stream), ("filter", filter)];
            match family {
                "rebuff_matches_total" => t.sample(family, &sf, 5 * n),
                // With `geoip.label`, one series per country instead of
                // the filter's total (the web filter shows it).
                "rebuff_triggers_total" if filter == "bots" => {
                    t.sample(family, &[sf[0], sf[1], ("country", "FR")], n - n / 2);
                    t.sample(family, &[sf[0], sf[1], ("country", "US")], n / 2);
                }
                "rebuff_triggers_total" => t.sample(family, &sf, n),
                "rebuff_jailed" => t.sample(family, &sf, ips.len()),
                "rebuff_ignored_total" => {
                    for reason in ["pattern_ignore", "duplicate"] {
                        t.sample(family, &[sf[0], sf[1], ("reason", reason)], n);
                    }
                }
                "rebuff_label_template_errors_total" => {
                    t.sample(family, &[sf[0], sf[1], ("pattern", "ip")], n / 4);
                }
                "rebuff_pattern_matches_total" => {
                    for ip in ips {
                        t.sample(family, &[sf[0], sf[1], ("ip", ip)], 2 * n);
                    }
                }
                _ => {
                    for action in actions {
                        let sfa = [sf[0], sf[1], ("action", action)];
                        match family {
                            "rebuff_actions_total" => {
                                for (result, k) in [("ok", 3), ("failed", 1), ("timeout", 0)] {
                                    t.sample(
                                        family,
                                        &[sfa[0], sfa[1], sfa[2], ("result", result)],
                                        k * n,
                                    );
                                }
                            }
                            "rebuff_action_duration_seconds" => t.histogram(family, &sfa, 4 * n),
                            _ => t.sample(family, &sfa, ips.len()),
                        }
                    }
                }
            }
        }
    }
    t.family("rebuff_actions_queued", "gauge");
    t.sample("rebuff_actions_queued", &[], n % 3);
    t.family("rebuff_actions_running", "gauge");
    t.sample("rebuff_actions_running", &[], 1);
    t.family("rebuff_commands_total", "counter");
    for kind in ["start", "stop"] {
        t.sample(
            "rebuff_commands_total",
            &[("kind", kind), ("result", "ok")],
            2,
        );
        t.sample(
            "rebuff_commands_total",
            &[("kind", kind), ("result", "failed")],
            n / 5,
        );
    }
    t.family("rebuff_store_size_bytes", "gauge");
    t.sample("rebuff_store_size_bytes", &[], 4096 + 64 * n);
    t.family("rebuff_store_commit_duration_seconds", "histogram");
    t.histogram("rebuff_store_commit_duration_seconds", &[], 10 * n);
    t.family("rebuff_store_errors_total", "counter");
    t.sample("rebuff_store_errors_total", &[], n / 6);
    t.family("rebuff_metric_series", "gauge");
    t.family("rebuff_metric_series_dropped_total", "counter");
    for family in [
        "reaction_match_count",
        "reaction_action_count",
        "reaction_pending_count",
    ] {
        t.sample("rebuff_metric_series", &[("family", family)], 3);
        t.sample(
            "rebuff_metric_series_dropped_total",
            &[("family", family)],
            n / 2,
        );
    }

    for (family, kind, value) in [
        ("process_cpu_seconds_total", "counter", 0.02 * n as f64),
        ("process_resident_memory_bytes", "gauge", 12e6),
        ("process_virtual_memory_bytes", "gauge", 80e6),
        ("process_open_fds", "gauge", 14.0),
        ("process_max_fds", "gauge", 1024.0),
        ("process_start_time_seconds", "gauge", 1.7e9),
        ("process_threads", "gauge", 6.0),
    ] {
        t.family(family, kind);
        t.sample(family, &[], value);
    }

    t.family("reaction_exporter_build_info", "gauge");
    t.sample("reaction_exporter_build_info", &[("version", "1.0.1")], 1);
    t.family("reaction_status_info", "gauge");
    let status = if machine == Machine::A { "1" } else { "0" };
    t.sample(
        "reaction_status_info",
        &[("version", "2.2.0"), ("status", status)],
        1,
    );
    t.family("reaction_match_count", "gauge");
    t.family("reaction_action_count", "gauge");
    t.family("reaction_pending_count", "gauge");
    for (stream, filter, actions, ips) in filters {
        for ip in ips {
            let sfi = [("stream", stream), ("filter", filter), ("ip", ip)];
            t.sample("reaction_match_count", &sfi, 1 + n % 3);
            for action in actions {
                let sfai = [sfi[0], sfi[1], ("action", action), sfi[2]];
                t.sample("reaction_action_count", &sfai, n % 2);
                t.sample("reaction_pending_count", &sfai, 1);
            }
        }
    }
    t.family("reaction_commands_count", "gauge");
    t.sample(
        "reaction_commands_count",
        &[
            ("state", "start"),
            ("command", "nft"),
            ("status", "True"),
            ("code", "0"),
        ],
        1,
    );
    t.sample(
        "reaction_commands_count",
        &[
            ("state", "stop"),
            ("command", "nft"),
            ("status", "False"),
            ("code", "1"),
        ],
        n % 2,
    );
    t.family("reaction_stream_event_count", "gauge");
    for stream in ["ssh", "web"] {
        t.sample(
            "reaction_stream_event_count",
            &[("stream", stream), ("type", "start")],
            1,
        );
        t.sample(
            "reaction_stream_event_count",
            &[("stream", stream), ("type", "exit")],
            n % 2,
        );
    }
    t.0
}
