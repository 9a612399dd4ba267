//! ipset lines for `ipset restore -exist`, reading `ipset list`, and the
//! iptables/ip6tables rules that drop a set's sources.
//!
//! Facts this relies on (ipset 7.17): `restore` is not atomic (it stops
//! at the first failing line), but with `-exist` neither adding a present
//! element nor deleting an absent one fails; `create -exist` succeeds only
//! when the existing set has the same parameters, so an existing set is
//! checked first and left as it is when it fits; element timeouts go up to
//! 2,147,483 s and need a set created with a `timeout`.

use std::fmt::Write as _;

use super::element::Element;
use crate::config::{FirewallConfig, FirewallSet, KernelSet, SetBackend};

/// The most elements one set holds (ipset's default is 65,536).
const MAX_ELEMENTS: u32 = 2_097_152;

/// The ipset sets of a configuration, with their set and family.
pub fn sets(config: &FirewallConfig) -> impl Iterator<Item = (&FirewallSet, &KernelSet, bool)> {
    config
        .sets
        .iter()
        .filter(|s| s.backend == SetBackend::Ipset)
        .flat_map(|s| {
            s.v4.iter()
                .map(move |k| (s, k, false))
                .chain(s.v6.iter().map(move |k| (s, k, true)))
        })
}

/// The `create` line of a set.
pub fn create_line(set: &FirewallSet, kernel: &KernelSet, v6: bool) -> String {
    format!(
        "create {} {} family {} hashsize 1024 maxelem {MAX_ELEMENTS} timeout {}\n",
        kernel.name,
        set_type(kernel),
        family(v6),
        set.default_timeout_s
    )
}

fn set_type(kernel: &KernelSet) -> &'static str {
    if kernel.interval {
        "hash:net"
    } else {
        "hash:ip"
    }
}

fn family(v6: bool) -> &'static str {
    if v6 { "inet6" } else { "inet" }
}

/// Appends the line adding `element` (with a timeout in seconds, if any;
/// otherwise the set's default applies).
pub fn add(out: &mut String, set: &str, element: Element, timeout_s: Option<u64>) {
    match timeout_s {
        Some(s) => {
            let _ = writeln!(out, "add {set} {element} timeout {s}");
        }
        None => {
            let _ = writeln!(out, "add {set} {element}");
        }
    }
}

/// Appends the line deleting `element` (absent is fine under `-exist`).
pub fn delete(out: &mut String, set: &str, element: Element) {
    let _ = writeln!(out, "del {set} {element}");
}

/// A set's header and elements, from `ipset list NAME -o save`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SetListing {
    /// `hash:ip`, `hash:net`, ...
    pub kind: String,
    /// The `create` line's options after the type (`family inet ...`).
    pub header: Vec<String>,
    /// Elements with their remaining timeout in seconds (`None`: a
    /// permanent element).
    pub elements: Vec<(Element, Option<u64>)>,
    /// Lines that are not an element rebuff can read.
    pub other: usize,
}

/// Reads `ipset list NAME -o save` (with or without `-terse`).
pub fn parse_listing(text: &str) -> SetListing {
    let mut out = SetListing::default();
    for line in text.lines() {
        let mut words = line.split_ascii_whitespace();
        match words.next() {
            Some("create") => {
                let _name = words.next();
                out.kind = words.next().unwrap_or_default().to_owned();
                out.header = words.map(str::to_owned).collect();
            }
            Some("add") => {
                let _name = words.next();
                let element = words.next().and_then(Element::parse);
                let mut timeout = None;
                while let Some(word) = words.next() {
                    if word == "timeout" {
                        timeout = words.next().and_then(|t| t.parse::<u64>().ok());
                    }
                }
                match element {
                    // `timeout 0` is a permanent element.
                    Some(element) => out.elements.push((element, timeout.filter(|&t| t > 0))),
                    None => out.other += 1,
                }
            }
            _ => {}
        }
    }
    out
}

/// Why an existing set cannot be used as it is, if it cannot.
pub fn incompatible(listing: &SetListing, wanted: &KernelSet, v6: bool) -> Option<String> {
    let header = |key: &str| {
        listing
            .header
            .iter()
            .position(|w| w == key)
            .and_then(|i| listing.header.get(i + 1))
            .map(String::as_str)
    };
    if listing.kind != set_type(wanted) {
        return Some(format!(
            "its type is {}, not {}",
            listing.kind,
            set_type(wanted)
        ));
    }
    if header("family") != Some(family(v6)) {
        return Some(format!(
            "its family is {}, not {}",
            header("family").unwrap_or("unknown"),
            family(v6)
        ));
    }
    if header("timeout").is_none() {
        return Some("it was created without a timeout, so its elements cannot expire".to_owned());
    }
    None
}

/// The iptables argv (after the program) that checks (`-C`), inserts
/// first (`-I`) or deletes (`-D`) the rule dropping `kernel`'s sources in
/// `chain`.
pub fn rule_args(verb: &str, chain: &str, kernel: &KernelSet, target: &str) -> Vec<String> {
    let mut args = vec!["-w", verb, chain];
    if verb == "-I" {
        // First in the chain, so an earlier accept cannot let a banned
        // source through.
        args.push("1");
    }
    args.extend([
        "-m",
        "set",
        "--match-set",
        &kernel.name,
        "src",
        "-j",
        target,
    ]);
    args.into_iter().map(str::to_owned).collect()
}

/// The program that holds the rules of a family.
pub fn iptables(v6: bool) -> &'static str {
    if v6 { "ip6tables" } else { "iptables" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(interval: bool) -> KernelSet {
        KernelSet {
            name: "bansv4".into(),
            interval,
        }
    }

    #[test]
    fn writes_create_add_and_del_lines() {
        let set = FirewallSet {
            backend: SetBackend::Ipset,
            name: "bans".into(),
            v4: Some(kernel(false)),
            v6: None,
            chains: vec!["INPUT".into()],
            target: "DROP".into(),
            default_timeout_s: 0,
        };
        assert_eq!(
            create_line(&set, &kernel(true), false),
            "create bansv4 hash:net family inet hashsize 1024 maxelem 2097152 timeout 0\n"
        );
        let mut out = String::new();
        add(
            &mut out,
            "bansv6",
            Element::parse("2001:db8::1").expect("2001:db8::1"),
            Some(60),
        );
        delete(
            &mut out,
            "bansv6",
            Element::parse("2001:db8::1").expect("2001:db8::1"),
        );
        assert_eq!(
            out,
            "add bansv6 2001:db8::1 timeout 60\ndel bansv6 2001:db8::1\n"
        );
    }

    #[test]
    fn reads_a_saved_set() {
        let text = "create bansv4 hash:ip family inet hashsize 1024 maxelem 2097152 timeout 0 bucketsize 12 initval 0xa0e84bc3\n\
                    add bansv4 192.0.2.1 timeout 59\n\
                    add bansv4 192.0.2.2 timeout 0\n\
                    add bansv4 nonsense\n";
        let listing = parse_listing(text);
        assert_eq!(listing.kind, "hash:ip");
        assert_eq!(listing.elements.len(), 2);
        assert_eq!(listing.elements[0].1, Some(59));
        assert_eq!(listing.elements[1].1, None);
        assert_eq!(listing.other, 1);
        assert_eq!(incompatible(&listing, &kernel(false), false), None);
        assert!(incompatible(&listing, &kernel(true), false).is_some());
        assert!(incompatible(&listing, &kernel(false), true).is_some());
        let untimed =
            parse_listing("create bansv4 hash:ip family inet hashsize 1024 maxelem 65536\n");
        assert!(incompatible(&untimed, &kernel(false), false).is_some());
    }
}
