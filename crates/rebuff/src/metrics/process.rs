//! The process's own CPU, memory, threads and file descriptors, read from
//! `/proc/self` at scrape time (the `internals` families, with the names
//! every Prometheus client library uses).

use std::fs;

/// One reading of the process.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub start_time_seconds: f64,
}

/// Reads `/proc/self`; a field that cannot be read stays 0.
pub fn read() -> ProcessStats {
    let mut stats = ProcessStats::default();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as u64;
    if let Ok(text) = fs::read_to_string("/proc/self/stat")
        && let Some(parsed) = parse_stat(&text)
    {
        stats.cpu_seconds = (parsed.utime + parsed.stime) as f64 / ticks;
        stats.threads = parsed.threads;
        stats.virtual_bytes = parsed.vsize;
        stats.resident_bytes = parsed.rss_pages * page;
        if let Some(boot) = boot_time() {
            stats.start_time_seconds = boot as f64 + parsed.start_ticks as f64 / ticks;
        }
    }
    stats.open_fds = fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    stats.max_fds = fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| parse_max_fds(&text));
    stats
}

#[derive(Debug, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    threads: u64,
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

/// Fields of `/proc/self/stat` after the command name, which may itself
/// hold spaces and parentheses: split after its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field numbers in proc(5) start at 1 with the pid; `rest` starts at
    // field 3 (state), so field n is fields[n - 3].
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        threads: field(20)?,
        start_ticks: field(22)?,
        vsize: field(23)?,
        rss_pages: field(24)?,
    })
}

fn parse_max_fds(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn boot_time() -> Option<u64> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 12345 1000000 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let stat = parse_stat(line).expect("parsed");
        assert_eq!(
            stat,
            Stat {
                utime: 250,
                stime: 50,
                threads: 7,
                start_ticks: 12345,
                vsize: 1_000_000,
                rss_pages: 300,
            }
        );
    }

    #[test]
    fn the_open_file_limit_is_the_soft_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
    }

    #[test]
    fn this_process_reads_as_alive() {
        let stats = read();
        assert!(stats.resident_bytes > 0);
        assert!(stats.threads >= 1);
        assert!(stats.open_fds >= 3);
        assert!(stats.start_time_seconds > 1.0e9);
    }
}
