//! GeoIP: the country of an address, from a local MMDB file, and the
//! established TCP connections by remote country.
//!
//! [`Geo`] owns the database in force. It is opened and checked when the
//! configuration loads (`config/validate/geoip.rs` calls [`Geo::open`]), so
//! a missing, empty, truncated or malformed file is a configuration error
//! naming the file. It answers [`CountryLookup`], the engine's question, so
//! pattern rules (`ignorecountry`, `onlycountry`) are evaluated inside the
//! engine's value acceptance, the one place every matcher caller (stream
//! threads, virtual streams, `replay`, `test-regex`) goes through.
//!
//! The file is watched without a task of its own: a lookup reads a clock
//! and, at most once per `check_interval`, compares the file's identity
//! (device, inode, size, mtime) with the loaded one. A change starts a
//! loader thread; lookups keep using the old database until the new one is
//! parsed and checked, and an invalid new file keeps the old one (logged).
//!
//! # Layout
//! - [`mmdb`]: the MaxMind DB reader (hardened against hostile files).
//! - [`table`]: the tree flattened into country ranges at load, so a
//!   lookup is a couple of cache lines instead of a walk of up to 128.
//! - [`tcp`]: established TCP connections by remote country, at scrape time.

pub mod mmdb;
pub mod table;
pub mod tcp;

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use rebuff_engine::{Country, CountryLookup, Patterns};

use self::mmdb::Mmdb;
use self::table::CountryTable;

/// Why a database cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("{path}: cannot read the GeoIP database: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a usable GeoIP database: {source}")]
    Invalid {
        path: PathBuf,
        source: mmdb::MmdbError,
    },
    #[error("{path}: the GeoIP database is larger than {max} bytes")]
    TooLarge { path: PathBuf, max: u64 },
}

/// What identifies one version of the file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileId {
    fn of(path: &Path) -> Option<FileId> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        })
    }
}

/// Milliseconds of the coarse monotonic clock: read on every lookup, so
/// the cheapest clock there is (a few milliseconds of resolution is plenty
/// for a check every `check_interval`).
fn coarse_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    (t.tv_sec as u64)
        .saturating_mul(1000)
        .saturating_add(t.tv_nsec as u64 / 1_000_000)
}

/// Reads and checks a database file.
pub fn read_database(path: &Path) -> Result<Mmdb, GeoError> {
    let read_err = |source| GeoError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_file() {
        return Err(read_err(std::io::Error::other("not a regular file")));
    }
    if meta.len() > mmdb::MAX_FILE_BYTES {
        return Err(GeoError::TooLarge {
            path: path.to_owned(),
            max: mmdb::MAX_FILE_BYTES,
        });
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    Mmdb::parse(bytes).map_err(|source| GeoError::Invalid {
        path: path.to_owned(),
        source,
    })
}

/// Tree walks after which the flat table is built (on a thread of its
/// own). A few lookups (replay's per-trigger countries, `show`) never pay
/// for building it; many (a country rule on a busy filter, scrapes of many
/// connections) get it within a fraction of a second.
const TABLE_AFTER_WALKS: u32 = 65_536;

/// Slots of each thread's cache of recent answers (a power of two).
const RECENT_SLOTS: usize = 8192;

/// Gives each loaded database an identity for the per-thread caches (an
/// address could be reused by the next database after a reload).
static NEXT_DATABASE: AtomicU64 = AtomicU64::new(1);

/// Recent answers of tree walks on this thread: attackers repeat, so most
/// lookups before the table exists are answered here. Direct-mapped.
struct Recent {
    database: u64,
    slots: Vec<Option<(IpAddr, Option<Country>)>>,
}

thread_local! {
    /// The database this thread last looked up in: (handle id, generation,
    /// database).
    static SEEN: std::cell::RefCell<Option<(u64, u64, Arc<Database>)>> =
        const { std::cell::RefCell::new(None) };
    static RECENT: std::cell::RefCell<Recent> = const {
        std::cell::RefCell::new(Recent { database: 0, slots: Vec::new() })
    };
}

fn recent_slot(addr: IpAddr) -> usize {
    let folded = match addr {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            (bits as u64) ^ ((bits >> 64) as u64)
        }
    };
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 51) as usize & (RECENT_SLOTS - 1)
}

/// A loaded database: the file, and its flat country table for `field`
/// once built (it holds `None` when the tree could not be flattened
/// within bounds: lookups then keep walking the tree).
#[derive(Debug)]
pub struct Database {
    pub mmdb: Arc<Mmdb>,
    table: Arc<OnceLock<Option<CountryTable>>>,
    walks: AtomicU32,
    id: u64,
    field: Arc<Vec<String>>,
}

impl Database {
    fn new(mmdb: Mmdb, field: &[String]) -> Database {
        Database {
            mmdb: Arc::new(mmdb),
            table: Arc::new(OnceLock::new()),
            walks: AtomicU32::new(0),
            id: NEXT_DATABASE.fetch_add(1, Ordering::Relaxed),
            field: Arc::new(field.to_vec()),
        }
    }

    /// The country of `addr`.
    #[inline]
    pub fn country(&self, addr: IpAddr) -> Option<Country> {
        if let Some(Some(table)) = self.table.get() {
            return table.lookup(addr);
        }
        let slot = recent_slot(addr);
        let cached = RECENT.with(|recent| {
            let recent = recent.borrow();
            match recent.slots.get(slot) {
                Some(Some((a, country))) if recent.database == self.id && *a == addr => {
                    Some(*country)
                }
                _ => None,
            }
        });
        if let Some(country) = cached {
            return country;
        }
        let country = self.walk(addr);
        RECENT.with(|recent| {
            let mut recent = recent.borrow_mut();
            if recent.database != self.id || recent.slots.len() != RECENT_SLOTS {
                recent.database = self.id;
                recent.slots.clear();
                recent.slots.resize(RECENT_SLOTS, None);
            }
            recent.slots[slot] = Some((addr, country));
        });
        country
    }

    /// A tree walk, counted: enough of them start building the table.
    fn walk(&self, addr: IpAddr) -> Option<Country> {
        if self.walks.fetch_add(1, Ordering::Relaxed) == TABLE_AFTER_WALKS {
            let (mmdb, field, table) = (self.mmdb.clone(), self.field.clone(), self.table.clone());
            // Without a thread, lookups simply keep walking the tree.
            let _ = std::thread::Builder::new()
                .name("rebuff-geoip-table".into())
                .spawn(move || {
                    table.get_or_init(|| CountryTable::build(&mmdb, &field));
                });
        }
        country_in(&self.mmdb, &self.field, addr)
    }

    /// Builds the flat table now if it is not there yet; returns whether
    /// lookups use it.
    pub fn build_table(&self) -> bool {
        self.table
            .get_or_init(|| CountryTable::build(&self.mmdb, &self.field))
            .is_some()
    }
}

/// The database in force and how to notice a new one.
#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// Map keys from the record's root to the country code.
    field: Vec<String>,
    current: RwLock<Arc<Database>>,
    loaded: Mutex<Option<FileId>>,
    interval_ms: u64,
    /// When the file is next looked at, in [`coarse_ms`].
    next_check_ms: AtomicU64,
    loading: AtomicBool,
    /// Bumped after each new database is in force.
    generation: AtomicU64,
    /// Tells this handle's database apart in per-thread state.
    id: u64,
}

/// A GeoIP database, shared by every thread that asks for countries.
#[derive(Debug, Clone)]
pub struct Geo {
    inner: Arc<Inner>,
}

impl Geo {
    /// Opens and checks `path`; `field` is the dotted path of the country
    /// code in a record (`country.iso_code`, or `country_code` in flat
    /// databases); the file is looked at for changes at most every
    /// `interval_ms` (0: never).
    pub fn open(path: &Path, field: &str, interval_ms: u64) -> Result<Geo, GeoError> {
        let id = FileId::of(path);
        let db = read_database(path)?;
        Ok(Geo::with_database(path, field, interval_ms, db, id))
    }

    fn with_database(
        path: &Path,
        field: &str,
        interval_ms: u64,
        db: Mmdb,
        id: Option<FileId>,
    ) -> Geo {
        let field: Vec<String> = field.split('.').map(str::to_owned).collect();
        Geo {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                current: RwLock::new(Arc::new(Database::new(db, &field))),
                field,
                loaded: Mutex::new(id),
                interval_ms,
                next_check_ms: AtomicU64::new(coarse_ms().saturating_add(interval_ms)),
                loading: AtomicBool::new(false),
                generation: AtomicU64::new(0),
                id: NEXT_DATABASE.fetch_add(1, Ordering::Relaxed),
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The database in force.
    pub fn database(&self) -> Arc<Database> {
        self.inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The country of `addr` in the database in force, without looking at
    /// the file.
    pub fn lookup(&self, addr: IpAddr) -> Option<Country> {
        // The database in force, as this thread last saw it: a relaxed
        // load of the generation instead of taking the lock, whose counter
        // every matching thread would otherwise bounce between cores.
        let generation = self.inner.generation.load(Ordering::Acquire);
        let db = SEEN.with(|seen| {
            let mut seen = seen.borrow_mut();
            match &*seen {
                Some((id, g, db)) if *id == self.inner.id && *g == generation => db.clone(),
                _ => {
                    let db = self.database();
                    *seen = Some((self.inner.id, generation, db.clone()));
                    db
                }
            }
        });
        db.country(addr)
    }

    /// Looks at the file if its check is due; a changed file is loaded on
    /// a thread of its own.
    fn maybe_refresh(&self) {
        let inner = &self.inner;
        if inner.interval_ms == 0 {
            return;
        }
        let now = coarse_ms();
        let due = inner.next_check_ms.load(Ordering::Relaxed);
        if now < due
            || inner
                .next_check_ms
                .compare_exchange(
                    due,
                    now + inner.interval_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        self.refresh_in_background();
    }

    fn refresh_in_background(&self) {
        if self.inner.loading.swap(true, Ordering::AcqRel) {
            return;
        }
        let geo = self.clone();
        let spawned = std::thread::Builder::new()
            .name("rebuff-geoip".into())
            .spawn(move || {
                geo.refresh();
                geo.inner.loading.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.inner.loading.store(false, Ordering::Release);
        }
    }

    /// Reloads the file now if it changed on disk; returns whether a new
    /// database is in force. An invalid new file keeps the old database.
    pub fn refresh(&self) -> bool {
        let inner = &self.inner;
        let id = FileId::of(&inner.path);
        {
            let loaded = inner.loaded.lock().unwrap_or_else(PoisonError::into_inner);
            if id.is_none() || *loaded == id {
                return false;
            }
        }
        let result = read_database(&inner.path);
        // Whatever the outcome, this version of the file was looked at: an
        // invalid file is reported once, not at every check.
        *inner.loaded.lock().unwrap_or_else(PoisonError::into_inner) = id;
        match result {
            Ok(db) => {
                tracing::info!(
                    path = %inner.path.display(),
                    database_type = db.database_type(),
                    nodes = db.node_count(),
                    "GeoIP database reloaded"
                );
                let db = Arc::new(Database::new(db, &inner.field));
                *inner
                    .current
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = db;
                inner.generation.fetch_add(1, Ordering::Release);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the new GeoIP database is invalid; keeping the previous one");
                false
            }
        }
    }
}

impl CountryLookup for Geo {
    fn country(&self, addr: IpAddr) -> Option<Country> {
        self.maybe_refresh();
        self.lookup(addr)
    }
}

/// The country of `addr` in `db` at `field`.
pub fn country_in(db: &Mmdb, field: &[String], addr: IpAddr) -> Option<Country> {
    let record = db.lookup(addr)?;
    let mut path: [&str; 8] = [""; 8];
    let n = field.len().min(path.len());
    for (slot, key) in path.iter_mut().zip(field) {
        *slot = key;
    }
    Country::from_code(db.text_at(record, &path[..n])?)
}

/// The country of a pattern value as `<country>` and reports show it: the
/// ISO code, or an empty string when unknown.
pub fn country_text(lookup: &dyn CountryLookup, value: &str) -> String {
    lookup
        .country_of_value(value)
        .map(|c| c.to_string())
        .unwrap_or_default()
}

/// The value slot of `filter` whose country stands for the trigger (in
/// `<country>`, replay records, `show`, metrics): its first ip-typed value.
pub fn country_slot(patterns: &Patterns, filter: &crate::config::Filter) -> Option<usize> {
    slot_of_names(patterns, &filter.pattern_names)
}

fn slot_of_names(patterns: &Patterns, names: &[String]) -> Option<usize> {
    names
        .iter()
        .position(|name| patterns.get(name).is_some_and(|(_, p)| p.kind().is_ip()))
}

/// For `show`: the value slot of the address of a filter capturing
/// `pattern_names` and the database to look it up in, when `geoip` is
/// configured and the filter captures an address.
pub fn show_lookup(
    config: &crate::config::Config,
    pattern_names: &[String],
) -> Option<(usize, Geo)> {
    let geoip = config.geoip.as_ref()?;
    let slot = slot_of_names(&config.patterns, pattern_names)?;
    Some((slot, geoip.geo.clone()))
}

#[cfg(test)]
mod tests {
    use super::mmdb::writer::{Value, Writer};
    use super::*;

    fn write_db(path: &Path, entries: &[(&str, Value)]) {
        let mut w = Writer::new(6, 24);
        for (net, value) in entries {
            w.insert(net, value.clone());
        }
        std::fs::write(path, w.build()).expect("write");
    }

    fn code(geo: &Geo, addr: &str) -> Option<String> {
        geo.lookup(addr.parse().expect("addr"))
            .map(|c| c.to_string())
    }

    #[test]
    fn country_city_and_flat_shapes_give_the_code_at_their_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.mmdb");
        write_db(
            &path,
            &[
                ("192.0.2.0/24", Value::country_record("FR")),
                ("198.51.100.0/24", Value::city_record("de")),
                ("2001:db8::/32", Value::country_record("JP")),
            ],
        );
        let geo = Geo::open(&path, "country.iso_code", 0).expect("open");
        assert_eq!(code(&geo, "192.0.2.1").as_deref(), Some("FR"));
        assert_eq!(code(&geo, "198.51.100.1").as_deref(), Some("DE"));
        assert_eq!(code(&geo, "2001:db8::5").as_deref(), Some("JP"));
        assert_eq!(code(&geo, "203.0.113.1"), None);
        write_db(&path, &[("192.0.2.0/24", Value::flat_record("BR"))]);
        let flat = Geo::open(&path, "country_code", 0).expect("open");
        assert_eq!(code(&flat, "192.0.2.1").as_deref(), Some("BR"));
        let wrong_field = Geo::open(&path, "country.iso_code", 0).expect("open");
        assert_eq!(code(&wrong_field, "192.0.2.1"), None);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.mmdb");
        let e = Geo::open(&missing, "country.iso_code", 0).expect_err("missing");
        assert!(e.to_string().contains("missing.mmdb"), "{e}");
        let empty = dir.path().join("empty.mmdb");
        std::fs::write(&empty, b"").expect("write");
        let e = Geo::open(&empty, "country.iso_code", 0).expect_err("empty");
        assert!(
            e.to_string().contains("empty.mmdb") && e.to_string().contains("empty"),
            "{e}"
        );
        let e = Geo::open(dir.path(), "country.iso_code", 0).expect_err("a directory");
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn a_changed_file_is_reloaded_and_an_invalid_one_keeps_the_old() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.mmdb");
        write_db(&path, &[("192.0.2.0/24", Value::country_record("FR"))]);
        let geo = Geo::open(&path, "country.iso_code", 0).expect("open");
        // Remembered by this thread's cache of recent answers, which must
        // not outlive the database.
        assert_eq!(code(&geo, "192.0.2.1").as_deref(), Some("FR"));
        assert!(!geo.refresh(), "unchanged");
        // A new file (new inode: written beside and renamed, as updaters do).
        let next = dir.path().join("next.mmdb");
        write_db(&next, &[("192.0.2.0/24", Value::country_record("IT"))]);
        std::fs::rename(&next, &path).expect("rename");
        assert!(geo.refresh());
        assert_eq!(code(&geo, "192.0.2.1").as_deref(), Some("IT"));
        std::fs::write(&next, b"garbage").expect("write");
        std::fs::rename(&next, &path).expect("rename");
        assert!(!geo.refresh());
        assert_eq!(code(&geo, "192.0.2.1").as_deref(), Some("IT"));
    }
}
