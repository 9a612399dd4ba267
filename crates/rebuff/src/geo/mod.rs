//! GeoIP: the country of an address, from a local MMDB file.
//!
//! - [`mmdb`]: the MaxMind DB reader (hardened against hostile files).
pub mod mmdb;
