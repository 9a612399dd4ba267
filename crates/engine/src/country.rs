//! Countries: ISO 3166-1 alpha-2 codes, per-pattern country rules, and the
//! lookup they are evaluated with.
//!
//! The engine does no I/O: where an address's country comes from (a GeoIP
//! database the binary reads and reloads) is behind [`CountryLookup`], a
//! pure in-memory question asked while a captured value is accepted. A
//! pattern with `ignorecountry`/`onlycountry` carries a [`CountryRule`], so
//! every caller of the matcher (the daemon's streams, virtual streams,
//! `replay`, `test-regex`) applies the same rule in the same place as the
//! pattern's other ignore lists.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// An ISO 3166-1 alpha-2 code, upper case (`FR`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

impl Country {
    /// Two ASCII letters, any case, as databases store them; no check
    /// against the ISO list (databases hold codes such as `EU` or `XK`).
    pub fn from_code(code: &str) -> Option<Country> {
        match code.as_bytes() {
            &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Country([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    /// A code a user wrote in a configuration: it must be an assigned ISO
    /// 3166-1 alpha-2 code (or `XK`, which GeoIP databases use for Kosovo).
    pub fn parse_iso(code: &str) -> Option<Country> {
        let country = Country::from_code(code)?;
        (ISO_3166_ALPHA2.contains(&country.as_str()) || country.as_str() == "XK").then_some(country)
    }

    pub fn as_str(&self) -> &str {
        // Always two ASCII letters.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Country({})", self.as_str())
    }
}

/// The country of an address, from memory (no I/O on this path).
pub trait CountryLookup: Send + Sync + fmt::Debug {
    fn country(&self, addr: IpAddr) -> Option<Country>;

    /// The country of a pattern value: an address, or the network a mask
    /// made of it (`192.0.2.0/24`, looked up by its first address).
    fn country_of_value(&self, value: &str) -> Option<Country> {
        let addr = value.split_once('/').map_or(value, |(addr, _)| addr);
        self.country(crate::pattern::parse_ip(addr)?)
    }
}

/// `ignorecountry` or `onlycountry` of one pattern.
#[derive(Clone)]
pub struct CountryRule {
    /// Sorted, deduplicated.
    pub codes: Vec<Country>,
    /// `onlycountry`: only these pass. Otherwise (`ignorecountry`) these
    /// are dropped.
    pub only: bool,
    pub lookup: Arc<dyn CountryLookup>,
}

impl fmt::Debug for CountryRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountryRule")
            .field("codes", &self.codes)
            .field("only", &self.only)
            .finish_non_exhaustive()
    }
}

impl CountryRule {
    /// Whether an address passes. An address of unknown country (not in
    /// the database, or no database loaded) passes `ignorecountry` and
    /// fails `onlycountry`: "only these countries" cannot be shown of it,
    /// and failing closed is what an allow-list promises.
    pub fn admits(&self, addr: IpAddr) -> bool {
        match self.lookup.country(addr) {
            Some(country) => self.codes.binary_search(&country).is_ok() == self.only,
            None => !self.only,
        }
    }
}

/// ISO 3166-1 alpha-2, the officially assigned codes.
pub const ISO_3166_ALPHA2: [&str; 249] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed;

    impl CountryLookup for Fixed {
        fn country(&self, addr: IpAddr) -> Option<Country> {
            match addr.to_string().as_str() {
                "192.0.2.1" | "192.0.2.0" => Country::from_code("fr"),
                "198.51.100.1" => Country::from_code("DE"),
                _ => None,
            }
        }
    }

    #[test]
    fn the_iso_list_is_sorted_unique_and_two_letters() {
        assert!(ISO_3166_ALPHA2.windows(2).all(|w| w[0] < w[1]));
        assert!(
            ISO_3166_ALPHA2
                .iter()
                .all(|c| Country::from_code(c).is_some())
        );
    }

    #[test]
    fn only_assigned_codes_parse_from_a_configuration() {
        assert_eq!(
            Country::parse_iso("fr").map(|c| c.to_string()).as_deref(),
            Some("FR")
        );
        for bad in ["FRA", "EN", "UK", "F", "", "F1", "ÉÉ"] {
            assert_eq!(Country::parse_iso(bad), None, "{bad}");
        }
    }

    #[test]
    fn rules_admit_by_country_and_unknown_fails_only_passes_ignore() {
        let codes = vec![Country::from_code("FR").expect("code")];
        let lookup: Arc<dyn CountryLookup> = Arc::new(Fixed);
        let ignore = CountryRule {
            codes: codes.clone(),
            only: false,
            lookup: lookup.clone(),
        };
        let only = CountryRule {
            codes,
            only: true,
            lookup: lookup.clone(),
        };
        let fr: IpAddr = "192.0.2.1".parse().expect("addr");
        let de: IpAddr = "198.51.100.1".parse().expect("addr");
        let unknown: IpAddr = "203.0.113.1".parse().expect("addr");
        assert!(!ignore.admits(fr) && ignore.admits(de) && ignore.admits(unknown));
        assert!(only.admits(fr) && !only.admits(de) && !only.admits(unknown));
        assert_eq!(
            lookup
                .country_of_value("192.0.2.0/24")
                .map(|c| c.to_string())
                .as_deref(),
            Some("FR")
        );
    }
}
