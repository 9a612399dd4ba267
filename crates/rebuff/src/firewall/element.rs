//! A set element: one address or one prefix, as bits (no string).
//!
//! Pattern values of ip-typed patterns are already normalised
//! (`192.0.2.1`, `2001:db8::1`, `198.51.100.0/24` for a masked pattern),
//! so parsing is strict: anything else is not an element.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address (`prefix` 32 or 128) or a network, kept as bits: 18 bytes
/// with an alignment of 1, since a million of them are kept in maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element {
    /// The address bits, big-endian; an IPv4 address in the last 4 bytes.
    bits: [u8; 16],
    prefix: u8,
    v6: bool,
}

impl Element {
    /// Parses `addr` or `addr/len`. A prefix covering the whole address
    /// is the address itself, and host bits must be zero.
    pub fn parse(text: &str) -> Option<Element> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, len)) => {
                // Digits only: `u8::from_str` would take a leading `+`.
                if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                (addr, Some(len.parse::<u8>().ok()?))
            }
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().ok()?;
        let (bits, full, v6) = match addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32, false),
            IpAddr::V6(a) => (u128::from(a), 128, true),
        };
        let prefix = prefix.unwrap_or(full);
        if prefix > full {
            return None;
        }
        let host_bits = u32::from(full - prefix);
        let host_mask = if host_bits == 0 {
            0
        } else {
            u128::MAX >> (128 - host_bits)
        };
        if bits & host_mask != 0 {
            return None;
        }
        Some(Element {
            bits: bits.to_be_bytes(),
            prefix,
            v6,
        })
    }

    pub fn is_v6(self) -> bool {
        self.v6
    }

    /// A network rather than one address.
    pub fn is_prefix(self) -> bool {
        self.prefix < if self.v6 { 128 } else { 32 }
    }

    pub fn addr(self) -> IpAddr {
        let bits = u128::from_be_bytes(self.bits);
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(bits))
        } else {
            // Built from a u32, so it fits.
            IpAddr::V4(Ipv4Addr::from(bits as u32))
        }
    }
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_prefix() {
            write!(f, "{}/{}", self.addr(), self.prefix)
        } else {
            write!(f, "{}", self.addr())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_form() {
        for text in [
            "192.0.2.1",
            "198.51.100.0/24",
            "0.0.0.0/0",
            "2001:db8::1",
            "2001:db8::/64",
            "::/0",
            "::ffff:192.0.2.1",
        ] {
            let element = Element::parse(text).expect(text);
            assert_eq!(element.to_string(), text);
        }
        assert_eq!(
            Element::parse("192.0.2.1/32")
                .expect("192.0.2.1/32")
                .to_string(),
            "192.0.2.1"
        );
        assert!(!Element::parse("192.0.2.1").expect("192.0.2.1").is_v6());
        assert!(Element::parse("2001:db8::1").expect("2001:db8::1").is_v6());
        assert!(
            Element::parse("10.0.0.0/8")
                .expect("10.0.0.0/8")
                .is_prefix()
        );
    }

    #[test]
    fn is_small() {
        assert_eq!(std::mem::size_of::<Element>(), 18);
        assert_eq!(std::mem::align_of::<Element>(), 1);
    }

    #[test]
    fn refuses_what_is_not_an_element() {
        for text in [
            "",
            "bans",
            "192.0.2.1/33",
            "192.0.2.1/24",
            "192.0.2.0/",
            "192.0.2.0/+8",
            "2001:db8::1/129",
            "192.0.2.1 }",
            "192.0.2.1, 10.0.0.1",
            "01.2.3.4",
        ] {
            assert_eq!(Element::parse(text), None, "{text}");
        }
    }
}
