//! Validation of `type: nftables` and `type: ipset` actions and of
//! rebuff's `firewall` section.
//!
//! reaction's plugins name a set in each action's options (`set: bans`);
//! every action naming the same set shares it, so the kernel sets are
//! assembled here once all streams are read: one per address family
//! (`bans` becomes `bansv4` and `bansv6`), with `flags interval` where a
//! masked pattern feeds it. Names go into `nft -f` scripts and `ipset`
//! lines, so they are checked against a strict alphabet here, once.

use std::sync::Arc;

use rebuff_engine::{ActionSpec, PatternKind};

use super::super::{
    Action, ArgPart, ArgTemplate, FirewallConfig, FirewallSet, KernelSet, SetAction, SetBackend,
    SetOp, Stream,
};
use super::{Checker, Entries, FilterContext, Key, Loc, Node, Value, get, join, key_loc};

const NFTABLES_OPTION_KEYS: &[&str] = &["set", "action", "pattern"];
const IPSET_OPTION_KEYS: &[&str] = &[
    "set", "action", "pattern", "version", "chains", "target", "timeout",
];
const FIREWALL_KEYS: &[&str] = &["reconcile", "remove_on_stop", "table"];

/// The longest element timeout ipset takes, in seconds (about 24.8 days).
pub const IPSET_MAX_TIMEOUT_S: u64 = 2_147_483;
/// ipset set names are at most this long.
const IPSET_MAX_NAME: usize = 31;
/// nftables identifiers are at most this long (NFT_NAME_MAXLEN - 1).
const NFT_MAX_NAME: usize = 255;
const DEFAULT_RECONCILE_MS: u64 = 5 * 60 * 1000;

/// A set as the actions naming it describe it, before the kernel sets
/// are named.
pub(super) struct SetDraft {
    backend: SetBackend,
    name: String,
    v4: bool,
    v6: bool,
    v4_interval: bool,
    v6_interval: bool,
    /// ipset options, each with the path that set it first (a conflicting
    /// value elsewhere is an error naming both).
    version: Option<(Family, String)>,
    chains: Option<(Vec<String>, String)>,
    target: Option<(String, String)>,
    timeout: Option<(u64, String)>,
    /// Where it was first named, for errors about the set as a whole.
    loc: Loc,
}

/// The match value a set action puts in its set.
struct AddressPattern {
    slot: usize,
    kind: PatternKind,
    /// `ipv4mask`, `ipv6mask`.
    masks: (Option<u8>, Option<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
    Both,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::V4 => "4",
            Family::V6 => "6",
            Family::Both => "46",
        }
    }
}

/// How much longer than a ban's delay its kernel timeout is: a tenth of
/// it, between one second and ten minutes.
pub fn kernel_margin(delay_ms: u64) -> u64 {
    (delay_ms / 10).clamp(1000, 600_000)
}

/// A name safe to put in an nft script or an ipset line as it is.
fn is_safe_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Checker {
    /// An action of `type: nftables|ipset`: its options compiled into a
    /// [`SetAction`] (the kernel timeout is filled in by
    /// [`Checker::kernel_timeouts`]) and the argv its `run` line shows.
    pub(super) fn set_action(
        &mut self,
        backend: SetBackend,
        key: &Key,
        entries: &Entries,
        path: &str,
        filter: &FilterContext<'_>,
    ) -> Option<(Vec<ArgTemplate>, SetAction)> {
        let opath = join(path, "options");
        let example = match backend {
            SetBackend::Nftables => "{set: bans, action: add|delete}",
            SetBackend::Ipset => "{set: bans, action: add|del}",
        };
        let Some(node) = get(entries, "options") else {
            self.error(
                &key.loc,
                path,
                format!("a {} action needs options: {example}", backend.name()),
            );
            return None;
        };
        let options = self.map(node, &opath, &format!("a map like {example}"))?;
        let known = match backend {
            SetBackend::Nftables => NFTABLES_OPTION_KEYS,
            SetBackend::Ipset => IPSET_OPTION_KEYS,
        };
        self.known_keys(options, &opath, known);
        for key in ["cmd", "timeout"] {
            if let Some(loc) = key_loc(entries, key) {
                self.error(
                    loc,
                    &join(path, key),
                    format!(
                        "a {} action runs no command: rebuff writes the set itself; remove '{key}'",
                        backend.name()
                    ),
                );
            }
        }

        let set_name = match get(options, "set") {
            Some(n) => self.set_name(backend, n, &join(&opath, "set")),
            None => {
                self.error(
                    &node.loc,
                    &opath,
                    format!("a {} action needs 'set': the set's name", backend.name()),
                );
                None
            }
        };
        let op = self.set_op(backend, options, &opath);
        let slot = self.set_pattern(options, &opath, &node.loc, filter);
        let set_name = set_name?;
        let op = op?;
        let AddressPattern { slot, kind, masks } = slot?;
        let set = self.set_draft(backend, &set_name, &node.loc);
        let draft = &mut self.firewall_sets[set];
        if matches!(kind, PatternKind::Ip | PatternKind::Ipv4) {
            draft.v4 = true;
            draft.v4_interval |= masks.0.is_some_and(|m| m < 32);
        }
        if matches!(kind, PatternKind::Ip | PatternKind::Ipv6) {
            draft.v6 = true;
            draft.v6_interval |= masks.1.is_some_and(|m| m < 128);
        }
        if backend == SetBackend::Ipset {
            self.ipset_options(set, options, &opath);
        }
        let op_word = match (backend, op) {
            (_, SetOp::Add) => "add",
            (SetBackend::Nftables, SetOp::Delete) => "delete",
            (SetBackend::Ipset, SetOp::Delete) => "del",
        };
        let text = |t: &str| ArgTemplate {
            parts: vec![ArgPart::Text(t.to_owned())],
        };
        let cmd = vec![
            text(backend.name()),
            text(op_word),
            text(&set_name),
            ArgTemplate {
                parts: vec![ArgPart::Value(slot)],
            },
        ];
        Some((
            cmd,
            SetAction {
                backend,
                set,
                op,
                slot,
                kernel_timeout_ms: None,
                hold_ms: None,
                kernel_margin_ms: 0,
                // Named once every action is read: see `name_kernel_sets`.
                v4: None,
                v6: None,
            },
        ))
    }

    fn set_name(&mut self, backend: SetBackend, node: &Node, path: &str) -> Option<String> {
        let name = self.string(node, path)?;
        // The longest suffix added is "v4"/"v6".
        let max = match backend {
            SetBackend::Nftables => NFT_MAX_NAME,
            SetBackend::Ipset => IPSET_MAX_NAME,
        } - 2;
        if !is_safe_name(&name) {
            self.error(
                &node.loc,
                path,
                format!("set name {name:?} is not accepted: use letters, digits, '_' and '-', starting with a letter or '_'"),
            );
            return None;
        }
        if name.len() > max {
            self.error(
                &node.loc,
                path,
                format!(
                    "set name {name:?} is too long: {} sets take at most {max} characters here (a v4/v6 suffix may be added)",
                    backend.name()
                ),
            );
            return None;
        }
        Some(name)
    }

    fn set_op(&mut self, backend: SetBackend, options: &Entries, opath: &str) -> Option<SetOp> {
        let Some(node) = get(options, "action") else {
            // reaction's default.
            return Some(SetOp::Add);
        };
        let path = join(opath, "action");
        let word = self.string(node, &path)?;
        match (backend, word.as_str()) {
            (_, "add") => Some(SetOp::Add),
            (SetBackend::Nftables, "delete") | (SetBackend::Ipset, "del") => Some(SetOp::Delete),
            _ => {
                let accepted = match backend {
                    SetBackend::Nftables => "add, delete",
                    SetBackend::Ipset => "add, del",
                };
                self.error(
                    &node.loc,
                    &path,
                    format!("unknown set action '{word}' (accepted: {accepted})"),
                );
                None
            }
        }
    }

    /// The match value that is the address: `options.pattern`, or the
    /// filter's ip-typed pattern. With its kind and masks.
    fn set_pattern(
        &mut self,
        options: &Entries,
        opath: &str,
        loc: &Loc,
        filter: &FilterContext<'_>,
    ) -> Option<AddressPattern> {
        // The filter's regexes are broken (reported): nothing to check.
        let names = filter.names?;
        let (slot, path, loc) = match get(options, "pattern") {
            Some(node) => {
                let path = join(opath, "pattern");
                let name = self.string(node, &path)?;
                let Some(slot) = names.iter().position(|n| *n == name) else {
                    self.error(
                        &node.loc,
                        &path,
                        format!(
                            "the filter's regexes capture no pattern '{name}' (they capture: {})",
                            if names.is_empty() {
                                "nothing".to_owned()
                            } else {
                                names.join(", ")
                            }
                        ),
                    );
                    return None;
                };
                (slot, path, node.loc.clone())
            }
            None => match filter.ip_slot {
                Some(slot) => (slot, opath.to_owned(), loc.clone()),
                None => {
                    self.error(
                        loc,
                        opath,
                        "a set action needs an address: the filter's regexes capture no pattern of type ip, ipv4 or ipv6 (or name one in 'pattern')",
                    );
                    return None;
                }
            },
        };
        let (_, pattern) = filter.patterns.get(&names[slot])?;
        if !pattern.kind().is_ip() {
            self.error(
                &loc,
                &path,
                format!(
                    "pattern '{}' is not of type ip, ipv4 or ipv6: a set holds addresses",
                    pattern.name()
                ),
            );
            return None;
        }
        Some(AddressPattern {
            slot,
            kind: pattern.kind(),
            masks: (pattern.ipv4_mask(), pattern.ipv6_mask()),
        })
    }

    /// The index of the set `name` of `backend`, created on first use.
    fn set_draft(&mut self, backend: SetBackend, name: &str, loc: &Loc) -> usize {
        if let Some(i) = self
            .firewall_sets
            .iter()
            .position(|d| d.backend == backend && d.name == name)
        {
            return i;
        }
        self.firewall_sets.push(SetDraft {
            backend,
            name: name.to_owned(),
            v4: false,
            v6: false,
            v4_interval: false,
            v6_interval: false,
            version: None,
            chains: None,
            target: None,
            timeout: None,
            loc: loc.clone(),
        });
        self.firewall_sets.len() - 1
    }

    /// reaction's ipset set options, merged per set: an action may leave
    /// one out, but two actions giving different values is an error.
    fn ipset_options(&mut self, set: usize, options: &Entries, opath: &str) {
        if let Some(node) = get(options, "version") {
            let path = join(opath, "version");
            let family = match &node.value {
                Value::Int(4) => Some(Family::V4),
                Value::Int(6) => Some(Family::V6),
                Value::Int(46) => Some(Family::Both),
                Value::Str(s) => match s.as_str() {
                    "4" | "ipv4" => Some(Family::V4),
                    "6" | "ipv6" => Some(Family::V6),
                    "46" | "ip" | "both" => Some(Family::Both),
                    _ => None,
                },
                _ => None,
            };
            match family {
                Some(family) => {
                    self.merge_option(set, &path, &node.loc, family, |d| &mut d.version)
                }
                None => self.error(&node.loc, &path, "unknown ip version (accepted: 4, 6, 46)"),
            }
        }
        if let Some(node) = get(options, "chains") {
            let path = join(opath, "chains");
            if let Some(items) = self.strings(node, &path) {
                let mut chains = Vec::new();
                for (chain, item) in items {
                    if is_safe_name(&chain) {
                        chains.push(chain);
                    } else {
                        self.error(
                            &item.loc,
                            &path,
                            format!("chain name {chain:?} is not accepted: use letters, digits, '_' and '-'"),
                        );
                    }
                }
                self.merge_option(set, &path, &node.loc, chains, |d| &mut d.chains);
            }
        }
        if let Some(node) = get(options, "target") {
            let path = join(opath, "target");
            if let Some(target) = self.string(node, &path) {
                if is_safe_name(&target) {
                    self.merge_option(set, &path, &node.loc, target, |d| &mut d.target);
                } else {
                    self.error(
                        &node.loc,
                        &path,
                        format!("target {target:?} is not accepted: use letters, digits, '_' and '-' (for example DROP or REJECT)"),
                    );
                }
            }
        }
        if let Some(node) = get(options, "timeout") {
            let path = join(opath, "timeout");
            if let Some(ms) = self.duration(node, &path) {
                let mut seconds = ms.div_ceil(1000);
                if seconds > IPSET_MAX_TIMEOUT_S {
                    self.warn(
                        &node.loc,
                        &path,
                        format!("ipset takes timeouts of at most {IPSET_MAX_TIMEOUT_S}s (about 24.8 days): capped to that"),
                    );
                    seconds = IPSET_MAX_TIMEOUT_S;
                }
                self.merge_option(set, &path, &node.loc, seconds, |d| &mut d.timeout);
            }
        }
    }

    fn merge_option<T: PartialEq + std::fmt::Debug>(
        &mut self,
        set: usize,
        path: &str,
        loc: &Loc,
        value: T,
        field: impl Fn(&mut SetDraft) -> &mut Option<(T, String)>,
    ) {
        let draft = &mut self.firewall_sets[set];
        let name = draft.name.clone();
        let slot = field(draft);
        match slot {
            None => *slot = Some((value, path.to_owned())),
            Some((existing, first)) if *existing != value => {
                let message = format!(
                    "set '{name}' gets {value:?} here but {existing:?} at {first}: actions naming one set must agree on its options"
                );
                self.error(loc, path, message);
            }
            Some(_) => {}
        }
    }

    /// Gives each add of a filter the kernel timeout of the filter's
    /// delayed delete from the same set: the ban then ends even when
    /// rebuff is not running at its end. The delete still runs.
    pub(super) fn kernel_timeouts(
        &mut self,
        actions: &mut [Action],
        specs: &[ActionSpec],
        locs: &[(Loc, String)],
    ) {
        let deletes: Vec<(usize, u64)> = actions
            .iter()
            .zip(specs)
            .filter_map(|(action, spec)| {
                let set_action = action.set_action.as_ref()?;
                (set_action.op == SetOp::Delete)
                    .then_some(())
                    .and(spec.after.map(|after| (set_action.set, after)))
            })
            .collect();
        for (i, (action, spec)) in actions.iter_mut().zip(specs).enumerate() {
            let Some(set_action) = &mut action.set_action else {
                continue;
            };
            if set_action.op != SetOp::Add {
                continue;
            }
            let Some(delete_after) = deletes
                .iter()
                .filter(|(set, _)| *set == set_action.set)
                .map(|(_, after)| *after)
                .max()
            else {
                continue;
            };
            let delay = delete_after.saturating_sub(spec.after.unwrap_or(0));
            if delay == 0 {
                continue;
            }
            // The kernel keeps the element a little longer than the delete's
            // delay, so it never ends a ban before rebuff's unban, and an
            // `extend` need not refresh it at every match.
            let margin = kernel_margin(delay);
            let timeout = delay.saturating_add(margin);
            let draft = &self.firewall_sets[set_action.set];
            let capped = if draft.backend == SetBackend::Ipset
                && timeout.div_ceil(1000) > IPSET_MAX_TIMEOUT_S
            {
                let (loc, path) = &locs[i];
                self.warn(
                    loc,
                    path,
                    format!(
                        "the delete of set '{}' runs after {}s, longer than ipset's longest timeout ({IPSET_MAX_TIMEOUT_S}s): the kernel timeout is capped to that, and rebuff re-adds the element until its delete runs",
                        draft.name,
                        timeout / 1000
                    ),
                );
                IPSET_MAX_TIMEOUT_S * 1000
            } else {
                timeout
            };
            set_action.kernel_timeout_ms = Some(capped);
            set_action.hold_ms = Some(timeout);
            set_action.kernel_margin_ms = margin;
        }
    }

    /// rebuff's `firewall` section and the kernel sets the actions named;
    /// each set action learns the names of its kernel sets.
    pub(super) fn firewall(
        &mut self,
        node: Option<&Node>,
        streams: &mut [Stream],
    ) -> FirewallConfig {
        let mut config = FirewallConfig::default();
        if let Some(node) = node {
            self.firewall_section(node, &mut config);
        }
        let drafts = std::mem::take(&mut self.firewall_sets);
        let mut sets = Vec::with_capacity(drafts.len());
        for draft in drafts {
            sets.push(self.kernel_sets(draft));
        }
        let actions = streams
            .iter_mut()
            .flat_map(|s| s.filters.iter_mut())
            .flat_map(|f| f.actions.iter_mut())
            .filter_map(|a| a.set_action.as_mut());
        for action in actions {
            if let Some(Some(set)) = sets.get(action.set) {
                action.v4 = set.v4.as_ref().map(|k| Arc::from(k.name.as_str()));
                action.v6 = set.v6.as_ref().map(|k| Arc::from(k.name.as_str()));
            }
        }
        // A set with an error (reported) makes the configuration invalid,
        // so indices only need to hold for a valid one.
        config.sets = sets.into_iter().flatten().collect();
        config
    }

    fn firewall_section(&mut self, node: &Node, config: &mut FirewallConfig) {
        const PATH: &str = "firewall";
        let empty = Vec::new();
        let entries: &Entries = match &node.value {
            Value::Null => &empty,
            _ => match self.map(node, PATH, "a map (reconcile, remove_on_stop, table)") {
                Some(entries) => entries,
                None => return,
            },
        };
        self.known_keys(entries, PATH, FIREWALL_KEYS);
        if let Some(n) = get(entries, "reconcile") {
            let path = join(PATH, "reconcile");
            config.reconcile_ms = match &n.value {
                Value::Null => None,
                _ => match self.duration(n, &path) {
                    Some(0) => {
                        self.error(
                            &n.loc,
                            &path,
                            "reconcile must be longer than 0 (null disables it)",
                        );
                        None
                    }
                    Some(ms) => Some(ms),
                    None => Some(DEFAULT_RECONCILE_MS),
                },
            };
        }
        if let Some(n) = get(entries, "remove_on_stop") {
            config.remove_on_stop = self.bool(n, &join(PATH, "remove_on_stop")).unwrap_or(false);
        }
        if let Some(n) = get(entries, "table") {
            let path = join(PATH, "table");
            if let Some(table) = self.string(n, &path) {
                if is_safe_name(&table) && table.len() <= NFT_MAX_NAME {
                    config.table = table;
                } else {
                    self.error(
                        &n.loc,
                        &path,
                        format!("table name {table:?} is not accepted: use letters, digits, '_' and '-', starting with a letter or '_'"),
                    );
                }
            }
        }
    }

    /// Names the kernel sets of a set: `NAME` → `NAMEv4`/`NAMEv6` (an
    /// ipset set of one family keeps its name).
    fn kernel_sets(&mut self, draft: SetDraft) -> Option<FirewallSet> {
        let name = &draft.name;
        let suffixed = |suffix: &str| format!("{name}{suffix}");
        let (v4, v6) = match draft.backend {
            // reaction's nftables plugin: a set per family, always.
            SetBackend::Nftables => (true, true),
            SetBackend::Ipset => match draft.version.as_ref().map(|(f, _)| *f) {
                Some(Family::V4) => (true, false),
                Some(Family::V6) => (false, true),
                Some(Family::Both) => (true, true),
                None => (draft.v4 || !draft.v6, draft.v6 || !draft.v4),
            },
        };
        if draft.backend == SetBackend::Ipset
            && let Some((family, path)) = &draft.version
            && ((draft.v4 && !v4) || (draft.v6 && !v6))
        {
            let message = format!(
                "set '{name}' is for IP version {} only, but an action feeds it addresses of the other version (a pattern of type ip); use a pattern of type ipv{} or version 46",
                family.name(),
                family.name()
            );
            let loc = draft.loc.clone();
            self.error(&loc, path, message);
            return None;
        }
        let both = v4 && v6;
        let kernel = |used: bool, interval: bool, suffix: &str| {
            used.then(|| KernelSet {
                name: if both || draft.backend == SetBackend::Nftables {
                    suffixed(suffix)
                } else {
                    name.clone()
                },
                interval,
            })
        };
        Some(FirewallSet {
            backend: draft.backend,
            name: name.clone(),
            v4: kernel(v4, draft.v4_interval, "v4"),
            v6: kernel(v6, draft.v6_interval, "v6"),
            chains: draft.chains.map_or_else(
                || vec!["INPUT".to_owned(), "FORWARD".to_owned()],
                |(c, _)| c,
            ),
            target: draft.target.map_or_else(|| "DROP".to_owned(), |(t, _)| t),
            default_timeout_s: draft.timeout.map_or(0, |(t, _)| t),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::is_safe_name;

    #[test]
    fn only_plain_names_go_into_scripts() {
        for ok in ["bans", "ban_s-2", "_x", "Bans4"] {
            assert!(is_safe_name(ok), "{ok}");
        }
        for bad in ["", "1bans", "a b", "a;b", "a}", "a\nb", "é", "a.b"] {
            assert!(!is_safe_name(bad), "{bad}");
        }
    }
}
