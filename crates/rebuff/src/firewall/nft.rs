//! nftables scripts for `nft -f -`, and reading `nft -j list set`.
//!
//! Facts this relies on (nft 1.0.6, measured in namespaces): an `nft -f`
//! batch is one transaction, so one failing line drops every other; `add`
//! of a present element succeeds (and resets its timeout); `delete` of an
//! absent one fails, and nft 1.0.6 has no `destroy`. A delete is therefore
//! written as `add` then `delete` of the same element: the pair cannot
//! fail on a missing element and leaves it absent. `add table|set|chain`
//! are idempotent; rules are not, so the chains are flushed and their
//! rules written again in the same transaction.

use std::fmt::Write as _;

use serde::Deserialize;

use super::element::Element;
use crate::config::{FirewallConfig, FirewallSet, KernelSet, SetBackend};

/// Chain priority: before the usual filter chains (0), like fail2ban's.
const PRIORITY: i32 = -10;

/// The nftables sets of a configuration, with their family.
fn nft_sets(config: &FirewallConfig) -> impl Iterator<Item = (&KernelSet, bool)> {
    config
        .sets
        .iter()
        .filter(|s| s.backend == SetBackend::Nftables)
        .flat_map(|s: &FirewallSet| {
            s.v4.iter()
                .map(|k| (k, false))
                .chain(s.v6.iter().map(|k| (k, true)))
        })
}

/// Whether the configuration has any nftables set.
pub fn used(config: &FirewallConfig) -> bool {
    nft_sets(config).next().is_some()
}

/// The table, its sets, and input and forward chains dropping their
/// sources. Safe to run at every start: it keeps the sets' elements and
/// never duplicates a rule.
pub fn setup_script(config: &FirewallConfig) -> String {
    let table = &config.table;
    let mut out = String::new();
    let _ = writeln!(out, "add table inet {table}");
    for (set, v6) in nft_sets(config) {
        let kind = if v6 { "ipv6_addr" } else { "ipv4_addr" };
        let flags = if set.interval {
            "interval, timeout"
        } else {
            "timeout"
        };
        let _ = writeln!(
            out,
            "add set inet {table} {} {{ type {kind}; flags {flags}; }}",
            set.name
        );
    }
    for (chain, hook) in [("input", "input"), ("forward", "forward")] {
        let _ = writeln!(
            out,
            "add chain inet {table} {chain} {{ type filter hook {hook} priority {PRIORITY}; policy accept; }}"
        );
        let _ = writeln!(out, "flush chain inet {table} {chain}");
        for (set, v6) in nft_sets(config) {
            let family = if v6 { "ip6" } else { "ip" };
            let _ = writeln!(
                out,
                "add rule inet {table} {chain} {family} saddr @{} drop",
                set.name
            );
        }
    }
    out
}

/// Removes the table (at stop, when asked to).
pub fn teardown_script(config: &FirewallConfig) -> String {
    format!("delete table inet {}\n", config.table)
}

/// Appends the line adding `elements` (with a timeout in seconds, if
/// any): one command for many elements costs nft a quarter of one line
/// each. An element already there gets its expiry reset: the kernel
/// updates it only when the timeout differs or `expires` is given, so both
/// are.
pub fn add(out: &mut String, table: &str, set: &str, elements: &[Element], timeout_s: Option<u64>) {
    let _ = write!(out, "add element inet {table} {set} {{ ");
    for (i, element) in elements.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        match timeout_s {
            Some(s) => {
                let _ = write!(out, "{element} timeout {s}s expires {s}s");
            }
            None => {
                let _ = write!(out, "{element}");
            }
        }
    }
    out.push_str(" }\n");
}

/// Appends the lines deleting `elements`, whether or not they are
/// present.
pub fn delete(out: &mut String, table: &str, set: &str, elements: &[Element]) {
    add(out, table, set, elements, None);
    let _ = write!(out, "delete element inet {table} {set} {{ ");
    for (i, element) in elements.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{element}");
    }
    out.push_str(" }\n");
}

/// What a set declares, from `nft -j list set` (enough to tell whether an
/// existing set fits).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SetListing {
    pub kind: String,
    pub flags: Vec<String>,
    /// Elements with their remaining timeout in seconds (`None`: no
    /// timeout, a permanent element).
    pub elements: Vec<(Element, Option<u64>)>,
    /// Elements that are not one address or prefix (ranges made by
    /// auto-merge), left alone.
    pub other: usize,
}

#[derive(Deserialize)]
struct Listing<'a> {
    #[serde(borrow)]
    nftables: Vec<Item<'a>>,
}

#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow, default)]
    set: Option<SetItem<'a>>,
}

#[derive(Deserialize)]
struct SetItem<'a> {
    #[serde(rename = "type", default)]
    kind: Option<serde_json::Value>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(borrow, default)]
    elem: Vec<ElemItem<'a>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ElemItem<'a> {
    Plain(&'a str),
    Timed {
        #[serde(borrow)]
        elem: TimedElem<'a>,
    },
    Value(#[serde(borrow)] ElemValue<'a>),
}

#[derive(Deserialize)]
struct TimedElem<'a> {
    #[serde(borrow)]
    val: ElemValue<'a>,
    #[serde(default)]
    expires: Option<u64>,
    #[serde(default)]
    timeout: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ElemValue<'a> {
    Plain(&'a str),
    Prefix { prefix: Prefix<'a> },
    Other(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct Prefix<'a> {
    addr: &'a str,
    len: u8,
}

impl ElemValue<'_> {
    fn element(&self) -> Option<Element> {
        match self {
            ElemValue::Plain(text) => Element::parse(text),
            ElemValue::Prefix { prefix } => {
                Element::parse(&format!("{}/{}", prefix.addr, prefix.len))
            }
            ElemValue::Other(_) => None,
        }
    }
}

/// Reads the output of `nft -j list set inet TABLE SET`.
pub fn parse_listing(json: &str) -> Result<SetListing, String> {
    let listing: Listing<'_> =
        serde_json::from_str(json).map_err(|e| format!("unreadable nft listing: {e}"))?;
    let Some(set) = listing.nftables.into_iter().find_map(|item| item.set) else {
        return Err("the nft listing holds no set".to_owned());
    };
    let mut out = SetListing {
        kind: match set.kind {
            Some(serde_json::Value::String(kind)) => kind,
            Some(other) => other.to_string(),
            None => String::new(),
        },
        flags: set.flags,
        ..SetListing::default()
    };
    for item in set.elem {
        let (value, remaining) = match &item {
            ElemItem::Plain(text) => (Element::parse(text), None),
            ElemItem::Value(value) => (value.element(), None),
            ElemItem::Timed { elem } => (
                elem.val.element(),
                // A timed element always has `expires`; `timeout` alone
                // would be odd, but is still a timed element.
                elem.expires.or(elem.timeout),
            ),
        };
        match value {
            Some(element) => out.elements.push((element, remaining)),
            None => out.other += 1,
        }
    }
    Ok(out)
}

/// Why an existing set cannot be used as it is, if it cannot.
pub fn incompatible(listing: &SetListing, wanted: &KernelSet, v6: bool) -> Option<String> {
    let kind = if v6 { "ipv6_addr" } else { "ipv4_addr" };
    let has = |flag: &str| listing.flags.iter().any(|f| f == flag);
    if listing.kind != kind {
        return Some(format!("its type is {}, not {kind}", listing.kind));
    }
    if !has("timeout") {
        return Some("it has no 'timeout' flag".to_owned());
    }
    if wanted.interval && !has("interval") {
        return Some(
            "it has no 'interval' flag, and a masked pattern puts prefixes in it".to_owned(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FirewallSet;

    fn config() -> FirewallConfig {
        FirewallConfig {
            sets: vec![FirewallSet {
                backend: SetBackend::Nftables,
                name: "bans".into(),
                v4: Some(KernelSet {
                    name: "bansv4".into(),
                    interval: true,
                }),
                v6: Some(KernelSet {
                    name: "bansv6".into(),
                    interval: false,
                }),
                chains: Vec::new(),
                target: String::new(),
                default_timeout_s: 0,
            }],
            ..FirewallConfig::default()
        }
    }

    #[test]
    fn setup_declares_sets_and_rewrites_rules() {
        let script = setup_script(&config());
        assert!(
            script.contains(
                "add set inet reaction bansv4 { type ipv4_addr; flags interval, timeout; }"
            )
        );
        assert!(script.contains("add set inet reaction bansv6 { type ipv6_addr; flags timeout; }"));
        assert!(!script.contains("auto-merge"));
        let flush = script
            .find("flush chain inet reaction input")
            .expect("flush chain inet reaction input");
        let rule = script
            .find("add rule inet reaction input ip saddr @bansv4 drop")
            .expect("add rule inet reaction input ip saddr @bansv4 drop");
        assert!(flush < rule, "rules are written after the flush");
        assert!(script.contains("add rule inet reaction forward ip6 saddr @bansv6 drop"));
    }

    #[test]
    fn a_delete_cannot_fail_on_a_missing_element() {
        let mut out = String::new();
        delete(
            &mut out,
            "reaction",
            "bansv4",
            &[Element::parse("192.0.2.1").expect("192.0.2.1")],
        );
        assert_eq!(
            out,
            "add element inet reaction bansv4 { 192.0.2.1 }\ndelete element inet reaction bansv4 { 192.0.2.1 }\n"
        );
        let mut out = String::new();
        let elements = ["2001:db8::/64", "2001:db8:1::/64"].map(|e| Element::parse(e).expect(e));
        add(&mut out, "t", "s", &elements, Some(3600));
        assert_eq!(
            out,
            "add element inet t s { 2001:db8::/64 timeout 3600s expires 3600s, 2001:db8:1::/64 timeout 3600s expires 3600s }\n"
        );
    }

    #[test]
    fn reads_every_element_shape() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"set": {"family": "inet", "name": "bansv4", "table": "reaction", "type": "ipv4_addr",
           "handle": 1, "flags": ["interval", "timeout"],
           "elem": ["192.0.2.9",
             {"prefix": {"addr": "198.51.100.0", "len": 24}},
             {"elem": {"val": "192.0.2.1", "timeout": 3600, "expires": 3599}},
             {"elem": {"val": {"prefix": {"addr": "203.0.113.0", "len": 25}}, "timeout": 60, "expires": 7}},
             {"elem": {"val": {"range": ["10.0.0.1", "10.0.0.3"]}, "timeout": 60, "expires": 7}}]}}]}"#;
        let listing = parse_listing(json).expect("a listing");
        assert_eq!(listing.kind, "ipv4_addr");
        assert_eq!(listing.flags, ["interval", "timeout"]);
        let shown: Vec<(String, Option<u64>)> = listing
            .elements
            .iter()
            .map(|(e, t)| (e.to_string(), *t))
            .collect();
        assert_eq!(
            shown,
            [
                ("192.0.2.9".to_owned(), None),
                ("198.51.100.0/24".to_owned(), None),
                ("192.0.2.1".to_owned(), Some(3599)),
                ("203.0.113.0/25".to_owned(), Some(7)),
            ]
        );
        assert_eq!(listing.other, 1);
        assert!(parse_listing("{").is_err());
        assert!(parse_listing(r#"{"nftables": []}"#).is_err());
    }

    #[test]
    fn tells_why_an_existing_set_does_not_fit() {
        let wanted = KernelSet {
            name: "bansv4".into(),
            interval: true,
        };
        let listing = |kind: &str, flags: &[&str]| SetListing {
            kind: kind.into(),
            flags: flags.iter().map(|f| (*f).to_owned()).collect(),
            ..SetListing::default()
        };
        assert_eq!(
            incompatible(
                &listing("ipv4_addr", &["interval", "timeout"]),
                &wanted,
                false
            ),
            None
        );
        assert!(incompatible(&listing("ipv4_addr", &["interval"]), &wanted, false).is_some());
        assert!(incompatible(&listing("ipv4_addr", &["timeout"]), &wanted, false).is_some());
        assert!(
            incompatible(
                &listing("ipv6_addr", &["interval", "timeout"]),
                &wanted,
                false
            )
            .is_some()
        );
    }
}
