//! Configuration: source files -> positioned tree -> validated, compiled config.
//!
//! [`load`] reads a file or a directory ([`sources`]), parses every file into
//! a [`tree::Node`] tree ([`yaml`], [`json`], [`jsonnet`]), merges directory
//! files, and hands the tree to [`validate`], which checks every rule of
//! reaction v2's reference and compiles patterns, matchers and action
//! templates. The result is a [`Config`] that is only ever read afterwards;
//! nothing is compiled again at run time. Errors name the file, line, column
//! and key path, say what was found and what is accepted.
//!
//! The files may come from anyone who can write to the configuration
//! directory, so one load is bounded whatever they hold ([`Budget`]): the
//! bytes read, the size of the tree they describe once YAML aliases are
//! expanded, and the time and memory JSONnet evaluation may take (it runs in
//! a child process under resource limits, see [`jsonnet`]).

pub mod emit;
pub mod json;
pub mod jsonnet;
pub mod sources;
pub mod tree;
pub mod validate;
pub mod yaml;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rebuff_engine::{FilterPlan, Patterns, StreamMatcher};

use self::tree::{Loc, ParseError};

/// One problem in a configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub loc: Option<Loc>,
    /// Dotted key path, e.g. `streams.ssh.filters.failedlogin.retryperiod`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = &self.loc {
            write!(f, "{loc}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a configuration (validation goes on after the
/// first one, so a user fixes them all in one round).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<tree::ParseError> for ConfigErrors {
    fn from(e: tree::ParseError) -> Self {
        ConfigErrors(vec![ConfigError {
            loc: Some(e.loc),
            path: String::new(),
            message: e.message,
        }])
    }
}

/// A validated, compiled configuration.
#[derive(Debug)]
pub struct Config {
    /// The merged configuration as written (for `test-config`).
    pub document: serde_json::Value,
    pub patterns: Patterns,
    pub streams: Vec<Stream>,
    pub start: Vec<Vec<String>>,
    pub stop: Vec<Vec<String>>,
    pub state_directory: PathBuf,
    /// As configured: >0 is a limit, 0 means the number of CPUs, <0 unlimited.
    pub concurrency: i64,
    /// Milliseconds between store compactions; `None` disables them.
    pub state_rotation_interval: Option<u64>,
    /// rebuff's `metrics` section; `None` means no endpoint.
    pub metrics: Option<MetricsConfig>,
    /// Kernel sets of `type: nftables|ipset` actions (none: no firewall).
    pub firewall: FirewallConfig,
    /// rebuff's `geoip` section; `None` means no database.
    pub geoip: Option<GeoipConfig>,
    /// Things that are accepted but probably not what the user meant.
    pub warnings: Vec<ConfigError>,
}

/// The `geoip` section: a local MMDB database, opened and checked at load.
///
/// The configuration holds the opened database ([`crate::geo::Geo`]), as
/// `metrics` holds compiled templates: a broken file is a load error, and
/// pattern rules and `<country>` need it while the config is compiled.
#[derive(Debug, Clone)]
pub struct GeoipConfig {
    pub database: PathBuf,
    /// Dotted path of the country code in a record.
    pub field: String,
    pub geo: crate::geo::Geo,
    /// A `country` label on the per-address families and on
    /// `rebuff_triggers_total`.
    pub label: bool,
    /// `rebuff_tcp_connections`; `None` when turned off.
    pub tcp: Option<TcpConnectionsConfig>,
}

/// `geoip.tcp_connections`: served when `metrics` is configured too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConnectionsConfig {
    /// A `state` label, and every state but listening counted.
    pub state: bool,
    /// Remote addresses in these networks are not counted.
    pub exclude: Vec<ipnet::IpNet>,
    /// Count loopback and the host's own addresses too.
    pub include_local: bool,
    /// Most sockets looked at per scrape.
    pub max_sockets: usize,
}

/// The `metrics` section, shaped like reaction-metrics-exporter's own
/// configuration (`all`, `for`, `export`) so its users recognise it.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    pub listen: std::net::SocketAddr,
    /// A Prometheus web-config file (TLS, basic auth).
    pub web_config: Option<PathBuf>,
    /// Most series a pattern-labelled family holds; more are dropped and
    /// counted.
    pub max_series: usize,
    /// A cumulative pattern-labelled series not updated for this long is
    /// forgotten at the next scrape.
    pub series_idle_ms: u64,
    /// How each filter's pattern values become labels: index by the
    /// global filter index (streams in order, then their filters), then by
    /// value slot.
    pub labels: Vec<Vec<LabelRule>>,
    pub export: MetricsExport,
}

/// What becomes of one pattern value in a label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelRule {
    /// The raw value.
    Raw,
    /// No label at all.
    Drop,
    /// A Jinja2 template, with the value bound to the pattern's name; it
    /// compiled at load.
    Template(String),
}

/// Which families are served (`metrics.export`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsExport {
    pub matches: FamilySwitch,
    pub actions: FamilySwitch,
    pub pending: FamilySwitch,
    pub commands: bool,
    pub streams: bool,
    /// Process CPU, memory and file descriptors.
    pub internals: bool,
    /// rebuff's own per-pattern counter, `rebuff_pattern_matches_total`.
    pub pattern_matches: FamilySwitch,
}

/// An exporter family switch: off, or on with or without the pattern
/// labels (`extra`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilySwitch {
    Off,
    On { extra: bool },
}

impl FamilySwitch {
    pub fn is_on(self) -> bool {
        self != FamilySwitch::Off
    }

    /// On, with pattern labels.
    pub fn has_patterns(self) -> bool {
        self == FamilySwitch::On { extra: true }
    }
}

/// A stream and its compiled filters.
#[derive(Debug)]
pub struct Stream {
    pub name: String,
    /// Empty for a virtual stream.
    pub cmd: Vec<String>,
    /// `type: virtual`: no command; its lines are what virtual actions
    /// send it.
    pub is_virtual: bool,
    pub matcher: StreamMatcher,
    /// In the matcher's filter order.
    pub filters: Vec<Filter>,
}

/// A filter: its decision plan and its action commands.
#[derive(Debug)]
pub struct Filter {
    pub name: String,
    /// Pattern names in value order.
    pub pattern_names: Vec<String>,
    pub plan: FilterPlan,
    /// Parallel to `plan.actions`.
    pub actions: Vec<Action>,
}

/// An action's command, ready to be filled with a match's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub name: String,
    /// For a virtual action, one element: the line it sends.
    pub cmd: Vec<ArgTemplate>,
    /// `type: virtual`: the index in [`Config::streams`] of the virtual
    /// stream its line is fed to (it runs no command).
    pub send_to: Option<usize>,
    /// rebuff's `timeout` key: how long the action may run before its
    /// process group is killed; `None` means the default.
    pub timeout_ms: Option<u64>,
    /// `type: nftables|ipset`: the set operation it is (it runs no
    /// command; `cmd` is only what its `run` line shows).
    pub set_action: Option<SetAction>,
}

/// Which program a kernel set is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetBackend {
    Nftables,
    Ipset,
}

impl SetBackend {
    pub fn name(self) -> &'static str {
        match self {
            SetBackend::Nftables => "nftables",
            SetBackend::Ipset => "ipset",
        }
    }
}

/// Adding to a set, or deleting from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetOp {
    Add,
    Delete,
}

/// An action of `type: nftables` or `type: ipset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAction {
    pub backend: SetBackend,
    /// Index in [`FirewallConfig::sets`].
    pub set: usize,
    pub op: SetOp,
    /// Which match value is the address.
    pub slot: usize,
    /// For an add: the element's timeout in the kernel, taken from the
    /// `after` of the filter's delete from the same set, so the ban ends
    /// even if rebuff is not running then.
    pub kernel_timeout_ms: Option<u64>,
    /// For an add with a kernel timeout: how long rebuff holds the element
    /// (the delete's delay). Longer than the kernel timeout only where
    /// ipset caps it; reconcile then adds the element again until then.
    pub hold_ms: Option<u64>,
    /// How much longer than the delete's delay the kernel timeout is (so
    /// the kernel never ends a ban first); an `extend` re-adds the element
    /// only once it moved the unban by half of this.
    pub kernel_margin_ms: u64,
    /// The kernel sets for IPv4 and IPv6 addresses (named here, so a job
    /// made under one configuration never lands in a set of another).
    pub v4: Option<std::sync::Arc<str>>,
    pub v6: Option<std::sync::Arc<str>>,
}

/// One set of the configuration (`options.set`), as one kernel set per
/// address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallSet {
    pub backend: SetBackend,
    /// The name in `options.set`.
    pub name: String,
    pub v4: Option<KernelSet>,
    pub v6: Option<KernelSet>,
    /// ipset: the iptables/ip6tables chains whose rule drops the set's
    /// sources.
    pub chains: Vec<String>,
    /// ipset: the rules' target.
    pub target: String,
    /// ipset: the set's default element timeout in seconds (`timeout`
    /// option); 0 is permanent.
    pub default_timeout_s: u64,
}

impl FirewallSet {
    /// The kernel set for an address of this family, if the set has one.
    pub fn kernel_set(&self, v6: bool) -> Option<&KernelSet> {
        if v6 {
            self.v6.as_ref()
        } else {
            self.v4.as_ref()
        }
    }
}

/// One kernel set: its name and whether it holds prefixes (a masked
/// pattern) rather than single addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSet {
    pub name: String,
    pub interval: bool,
}

/// The sets `type: nftables|ipset` actions write, and rebuff's
/// `firewall` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallConfig {
    pub sets: Vec<FirewallSet>,
    /// The nftables table (family `inet`) holding the sets and chains.
    pub table: String,
    /// How often the kernel sets are compared with rebuff's state and
    /// repaired; `None` disables it.
    pub reconcile_ms: Option<u64>,
    /// Delete the sets and rules at stop (by default they are kept, so a
    /// restart opens no window).
    pub remove_on_stop: bool,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        FirewallConfig {
            sets: Vec::new(),
            table: "reaction".to_owned(),
            reconcile_ms: Some(5 * 60 * 1000),
            remove_on_stop: false,
        }
    }
}

/// One argv element: literal text with `<pattern>` holes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgTemplate {
    pub parts: Vec<ArgPart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgPart {
    Text(String),
    /// Index into the match's values.
    Value(usize),
    /// `<country>`: the country of the address at this value slot (an
    /// empty string when unknown).
    Country(usize, CountryOf),
}

/// The lookup `<country>` is filled with.
#[derive(Debug, Clone)]
pub struct CountryOf(pub std::sync::Arc<dyn rebuff_engine::CountryLookup>);

impl PartialEq for CountryOf {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::addr_eq(
            std::sync::Arc::as_ptr(&self.0),
            std::sync::Arc::as_ptr(&other.0),
        )
    }
}

impl Eq for CountryOf {}

impl ArgTemplate {
    /// The argv element for a match's values (never through a shell).
    pub fn render(&self, values: &[String]) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                ArgPart::Text(text) => out.push_str(text),
                ArgPart::Value(slot) => {
                    out.push_str(values.get(*slot).map(String::as_str).unwrap_or(""))
                }
                ArgPart::Country(slot, lookup) => {
                    if let Some(value) = values.get(*slot)
                        && let Some(country) = lookup.0.country_of_value(value)
                    {
                        out.push_str(country.as_str());
                    }
                }
            }
        }
        out
    }
}

impl Action {
    pub fn render(&self, values: &[String]) -> Vec<String> {
        self.cmd.iter().map(|arg| arg.render(values)).collect()
    }
}

impl Config {
    pub fn stream(&self, name: &str) -> Option<&Stream> {
        self.streams.iter().find(|s| s.name == name)
    }
}

/// Loads, merges, validates and compiles the configuration at `path` (a
/// file or a directory).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let document = sources::read(path, &mut Budget::new())?;
    validate::compile(&document)
}

/// Most bytes the files of one configuration may hold in all. Real ones
/// hold a few kilobytes; a distribution's largest, a few dozen.
pub const MAX_INPUT_BYTES: u64 = 16 << 20;

/// Most memory the tree of one configuration may describe, counted as
/// [`NODE_COST`] per value and key plus their text, YAML alias copies
/// included. It keeps a whole load, with validation and printing, well
/// under a gigabyte.
pub const MAX_TREE_BYTES: usize = 128 << 20;

/// What one value or key of the tree is counted for, besides its text
/// (about what a `Node` or a `Key` takes in memory).
pub const NODE_COST: usize = 64;

/// Most time all JSONnet evaluations of one load may take together.
pub const JSONNET_TIME: Duration = Duration::from_secs(10);

/// Most address space a JSONnet evaluation may use.
pub const JSONNET_MEMORY: u64 = 512 << 20;

/// What loading one configuration may still spend. One budget is shared by
/// every file of a directory, so many files cannot add up to more than one.
#[derive(Debug, Clone)]
pub struct Budget {
    input_left: u64,
    tree_limit: usize,
    tree_spent: usize,
    /// The part of `tree_spent` that YAML aliases copied.
    tree_copied: usize,
    jsonnet_left: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new()
    }
}

impl Budget {
    /// The budget of a whole load.
    pub fn new() -> Self {
        Budget::with_tree_limit(MAX_TREE_BYTES)
    }

    /// A budget whose tree may take at most `tree_limit` counted bytes.
    pub fn with_tree_limit(tree_limit: usize) -> Self {
        Budget {
            input_left: MAX_INPUT_BYTES,
            tree_limit,
            tree_spent: 0,
            tree_copied: 0,
            jsonnet_left: JSONNET_TIME,
        }
    }

    /// What the tree may still take.
    pub fn tree_left(&self) -> usize {
        self.tree_limit.saturating_sub(self.tree_spent)
    }

    /// The time JSONnet evaluation may still take.
    pub fn jsonnet_left(&self) -> Duration {
        self.jsonnet_left
    }

    /// Counts time taken by JSONnet evaluation.
    pub fn spend_jsonnet(&mut self, took: Duration) {
        self.jsonnet_left = self.jsonnet_left.saturating_sub(took);
    }

    /// Counts `bytes` more of the tree (`copied` when an alias makes them);
    /// the error says why the document is refused.
    pub fn spend(&mut self, bytes: usize, copied: bool) -> Result<(), String> {
        self.tree_spent = self.tree_spent.saturating_add(bytes);
        if copied {
            self.tree_copied = self.tree_copied.saturating_add(bytes);
        }
        if self.tree_spent <= self.tree_limit {
            return Ok(());
        }
        let limit = mib(self.tree_limit as u64);
        Err(if self.tree_copied.saturating_mul(2) > self.tree_spent {
            format!(
                "the document expands to more than {limit} of values once its aliases are \
                 expanded (an alias copies its anchor each time it is used)"
            )
        } else {
            format!(
                "the configuration is too large: its values take more than {limit} \
                 (real configurations take well under a megabyte)"
            )
        })
    }

    /// Reads a configuration file, counting it against the input bytes.
    /// Only regular files are read (a FIFO or a device would block or never
    /// end), and never more than the budget allows.
    pub fn read(&mut self, path: &Path) -> Result<Vec<u8>, ParseError> {
        let fail = |why: String| ParseError::in_file(path, why);
        let meta =
            std::fs::metadata(path).map_err(|e| fail(format!("cannot read the file: {e}")))?;
        if !meta.is_file() {
            return Err(fail(
                "cannot read the file: it is not a regular file".to_owned(),
            ));
        }
        let file =
            std::fs::File::open(path).map_err(|e| fail(format!("cannot read the file: {e}")))?;
        let mut data = Vec::new();
        file.take(self.input_left.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| fail(format!("cannot read the file: {e}")))?;
        let read = data.len() as u64;
        if read > self.input_left {
            return Err(fail(format!(
                "the configuration is too large: its files may hold {} in all \
                 (real configurations hold a few kilobytes)",
                mib(MAX_INPUT_BYTES)
            )));
        }
        self.input_left -= read;
        Ok(data)
    }
}

/// `bytes` in MiB, for messages.
pub(crate) fn mib(bytes: u64) -> String {
    let whole = bytes >> 20;
    if whole > 0 || bytes == 0 {
        format!("{whole} MiB")
    } else {
        format!("{} KiB", bytes.div_ceil(1024))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read() {
        // Reading /dev/zero whole would never end.
        let err = Budget::new()
            .read(Path::new("/dev/zero"))
            .expect_err("a device");
        assert!(err.message.contains("not a regular file"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Budget::new().read(dir.path()).expect_err("a directory");
        assert!(err.message.contains("not a regular file"), "{err}");
    }

    #[test]
    fn the_input_limit_is_shared_by_every_file_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a.yml"), dir.path().join("b.yml"));
        std::fs::write(&a, vec![b'#'; 600]).expect("write");
        std::fs::write(&b, vec![b'#'; 600]).expect("write");
        let mut budget = Budget::new();
        budget.input_left = 1000;
        assert_eq!(budget.read(&a).expect("fits").len(), 600);
        let err = budget.read(&b).expect_err("over the limit in all");
        assert!(err.message.contains("too large"), "{err}");
        assert!(err.message.contains("16 MiB in all"), "{err}");
        assert_eq!(&*err.loc.file, b.as_path());
    }

    #[test]
    fn the_tree_budget_says_whether_aliases_made_it_overflow() {
        let mut budget = Budget::with_tree_limit(100);
        budget.spend(60, false).expect("fits");
        let err = budget.spend(60, true).expect_err("over");
        assert!(err.contains("too large"), "{err}");
        let mut budget = Budget::with_tree_limit(100);
        budget.spend(10, false).expect("fits");
        let err = budget.spend(100, true).expect_err("over");
        assert!(err.contains("aliases"), "{err}");
        assert_eq!(mib(100), "1 KiB");
        assert_eq!(mib(128 << 20), "128 MiB");
    }
}
