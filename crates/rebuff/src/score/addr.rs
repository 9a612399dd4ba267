//! Addresses as the seed parses and classifies them (Python's `ipaddress`):
//! strict dotted quads, and "globally reachable" for `--exclude-local`.

use std::net::Ipv6Addr;

/// An address the counter tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Addr {
    V4(u32),
    V6(u128),
}

impl Addr {
    pub fn is_unspecified(self) -> bool {
        matches!(self, Addr::V4(0) | Addr::V6(0))
    }

    pub fn is_global(self) -> bool {
        match self {
            Addr::V4(ip) => v4_is_global(ip),
            Addr::V6(ip) => v6_is_global(ip),
        }
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Addr::V4(ip) => write!(
                f,
                "{}.{}.{}.{}",
                ip >> 24,
                (ip >> 16) & 0xff,
                (ip >> 8) & 0xff,
                ip & 0xff
            ),
            Addr::V6(ip) => write!(f, "{}", Ipv6Addr::from(ip)),
        }
    }
}

/// A dotted quad as `IPv4Address(str)` accepts it: four decimal octets of
/// one to three ASCII digits, no leading zero, at most 255; nothing around.
pub fn parse_v4(text: &str) -> Option<u32> {
    let mut value: u32 = 0;
    let mut parts = 0;
    for octet in text.split('.') {
        parts += 1;
        if parts > 4
            || octet.is_empty()
            || octet.len() > 3
            || !octet.bytes().all(|b| b.is_ascii_digit())
            || (octet.len() > 1 && octet.starts_with('0'))
        {
            return None;
        }
        let n: u32 = octet.parse().ok()?;
        if n > 255 {
            return None;
        }
        value = (value << 8) | n;
    }
    (parts == 4).then_some(value)
}

/// An IPv6 address (rebuff's extension; the seed is IPv4 only).
pub fn parse_v6(text: &str) -> Option<u128> {
    text.parse::<Ipv6Addr>().ok().map(u128::from)
}

fn in_v4(ip: u32, net: u32, prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    ip & mask == net & mask
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> u32 {
    u32::from_be_bytes([a, b, c, d])
}

/// Python 3.11's `IPv4Address.is_private`.
fn v4_is_private(ip: u32) -> bool {
    let private = [
        (v4(0, 0, 0, 0), 8),
        (v4(10, 0, 0, 0), 8),
        (v4(127, 0, 0, 0), 8),
        (v4(169, 254, 0, 0), 16),
        (v4(172, 16, 0, 0), 12),
        (v4(192, 0, 0, 0), 24),
        (v4(192, 0, 0, 170), 31),
        (v4(192, 0, 2, 0), 24),
        (v4(192, 168, 0, 0), 16),
        (v4(198, 18, 0, 0), 15),
        (v4(198, 51, 100, 0), 24),
        (v4(203, 0, 113, 0), 24),
        (v4(240, 0, 0, 0), 4),
        (v4(255, 255, 255, 255), 32),
    ];
    let exceptions = [v4(192, 0, 0, 9), v4(192, 0, 0, 10)];
    private.iter().any(|&(net, p)| in_v4(ip, net, p)) && !exceptions.contains(&ip)
}

/// Python 3.11's `IPv4Address.is_global`: not private and not in 100.64/10.
pub fn v4_is_global(ip: u32) -> bool {
    !in_v4(ip, v4(100, 64, 0, 0), 10) && !v4_is_private(ip)
}

fn in_v6(ip: u128, net: &str, prefix: u32) -> bool {
    let net = u128::from(net.parse::<Ipv6Addr>().unwrap_or(Ipv6Addr::UNSPECIFIED));
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    ip & mask == net & mask
}

/// Python 3.11's `IPv6Address.is_global` (`not is_private`, IPv4-mapped
/// addresses judged as IPv4).
pub fn v6_is_global(ip: u128) -> bool {
    if ip >> 32 == 0xffff {
        return !v4_is_private(ip as u32);
    }
    let private = [
        ("::1", 128),
        ("::", 128),
        ("::ffff:0:0", 96),
        ("64:ff9b:1::", 48),
        ("100::", 64),
        ("2001::", 23),
        ("2001:db8::", 32),
        ("2002::", 16),
        ("fc00::", 7),
        ("fe80::", 10),
    ];
    let exceptions = [
        ("2001:1::1", 128),
        ("2001:1::2", 128),
        ("2001:3::", 32),
        ("2001:4:112::", 48),
        ("2001:20::", 28),
        ("2001:30::", 28),
    ];
    let is_private = private.iter().any(|&(n, p)| in_v6(ip, n, p))
        && !exceptions.iter().any(|&(n, p)| in_v6(ip, n, p));
    !is_private
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_dotted_quads() {
        assert_eq!(parse_v4("192.0.2.1"), Some(v4(192, 0, 2, 1)));
        assert_eq!(parse_v4("0.0.0.0"), Some(0));
        for bad in [
            "01.2.3.4",
            "1.2.3.4/32",
            "1.2.3.4:22",
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            " 1.2.3.4",
            "1.2.3.4\n",
            "1..3.4",
            "1.2.3.+4",
            "1.2.3.٤",
            "",
        ] {
            assert_eq!(parse_v4(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn global_as_python_3_11_says() {
        let g = |s: &str| v4_is_global(parse_v4(s).expect("valid"));
        assert!(g("8.8.8.8"));
        assert!(g("224.0.0.1"), "multicast counts as global");
        assert!(g("192.0.0.9"));
        for local in [
            "10.1.2.3",
            "127.0.0.1",
            "100.64.0.1",
            "192.0.2.7",
            "198.51.100.1",
            "203.0.113.9",
            "169.254.1.1",
            "192.0.0.8",
            "255.255.255.255",
            "240.1.1.1",
        ] {
            assert!(!g(local), "{local}");
        }
        let g6 = |s: &str| v6_is_global(parse_v6(s).expect("valid"));
        assert!(g6("2a00:1450::1"));
        assert!(!g6("2001:db8::1"));
        assert!(!g6("fe80::1"));
        assert!(!g6("::ffff:10.0.0.1"));
        assert!(g6("2001:3::1"));
    }

    #[test]
    fn display() {
        assert_eq!(Addr::V4(v4(203, 0, 113, 5)).to_string(), "203.0.113.5");
        assert_eq!(
            Addr::V6(parse_v6("2001:db8::1").expect("valid")).to_string(),
            "2001:db8::1"
        );
    }
}
