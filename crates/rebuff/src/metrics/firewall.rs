//! The firewall writer's families: set sizes, batches, failures, repairs.

use std::sync::atomic::{AtomicU64, Ordering};

use super::encode::{Encoder, Kind, push_float};
use crate::events::{
    BATCH_SECONDS_BUCKETS, BATCH_SIZE_BUCKETS, BackendStats, Buckets, FirewallStats,
};

const BACKENDS: [&str; 2] = ["nftables", "ipset"];

/// Writes every firewall family.
pub fn render(e: &mut Encoder, stats: &FirewallStats) {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    e.family(
        "rebuff_firewall_set_elements",
        Kind::Gauge,
        "Elements rebuff holds in each kernel set.",
    );
    if let Ok(sizes) = stats.set_sizes.lock() {
        for (backend, set, count) in sizes.iter() {
            e.sample(
                "rebuff_firewall_set_elements",
                &[("backend", backend), ("set", set)],
                *count,
            );
        }
    }
    let per_backend = |e: &mut Encoder, name: &str, field: fn(&BackendStats) -> &AtomicU64| {
        for (backend, s) in BACKENDS.iter().zip(&stats.backends) {
            e.sample(name, &[("backend", backend)], load(field(s)));
        }
    };
    e.family(
        "rebuff_firewall_batches_total",
        Kind::Counter,
        "Batches of set operations applied, one program run each (retries aside).",
    );
    per_backend(e, "rebuff_firewall_batches_total", |s| &s.batches);
    e.family(
        "rebuff_firewall_operations_total",
        Kind::Counter,
        "Element operations, by result (failed: after a retry and a search for the failing element).",
    );
    for (backend, s) in BACKENDS.iter().zip(&stats.backends) {
        for (result, n) in [("applied", &s.applied), ("failed", &s.failed)] {
            e.sample(
                "rebuff_firewall_operations_total",
                &[("backend", backend), ("result", result)],
                load(n),
            );
        }
    }
    e.family(
        "rebuff_firewall_retries_total",
        Kind::Counter,
        "Extra program runs for failed batches (a retry after setting up again, halves searched).",
    );
    per_backend(e, "rebuff_firewall_retries_total", |s| &s.retries);
    e.family(
        "rebuff_firewall_repairs_total",
        Kind::Counter,
        "Elements a reconcile repaired: readded (missing from the kernel), removed (stale in the kernel).",
    );
    for (backend, s) in BACKENDS.iter().zip(&stats.backends) {
        for (kind, n) in [("readded", &s.readded), ("removed", &s.removed)] {
            e.sample(
                "rebuff_firewall_repairs_total",
                &[("backend", backend), ("kind", kind)],
                load(n),
            );
        }
    }
    e.family(
        "rebuff_firewall_reconciles_total",
        Kind::Counter,
        "Kernel sets compared with rebuff's state, by result (failed: the set could not be read).",
    );
    for (backend, s) in BACKENDS.iter().zip(&stats.backends) {
        let failed = load(&s.reconcile_errors);
        let ok = load(&s.reconciles).saturating_sub(failed);
        for (result, n) in [("ok", ok), ("failed", failed)] {
            e.sample(
                "rebuff_firewall_reconciles_total",
                &[("backend", backend), ("result", result)],
                n,
            );
        }
    }
    e.family(
        "rebuff_firewall_batch_size",
        Kind::Histogram,
        "Element operations per batch.",
    );
    for (backend, s) in BACKENDS.iter().zip(&stats.backends) {
        histogram(
            e,
            "rebuff_firewall_batch_size",
            backend,
            &s.batch_sizes,
            &BATCH_SIZE_BUCKETS,
        );
    }
    e.family(
        "rebuff_firewall_batch_duration_seconds",
        Kind::Histogram,
        "Time from a batch's first request to its result.",
    );
    for (backend, s) in BACKENDS.iter().zip(&stats.backends) {
        histogram(
            e,
            "rebuff_firewall_batch_duration_seconds",
            backend,
            &s.batch_seconds,
            &BATCH_SECONDS_BUCKETS,
        );
    }
}

fn histogram<const N: usize>(
    e: &mut Encoder,
    name: &str,
    backend: &str,
    buckets: &Buckets<N>,
    bounds: &[f64; N],
) {
    let bucket = format!("{name}_bucket");
    let labels = [("backend", backend)];
    let mut cumulative = 0;
    let mut le = String::new();
    for (count, bound) in buckets.counts.iter().zip(bounds) {
        cumulative += count.load(Ordering::Relaxed);
        le.clear();
        push_float(&mut le, *bound);
        e.sample_with(
            &bucket,
            &labels,
            [("le", le.as_str())].into_iter(),
            cumulative,
        );
    }
    cumulative += buckets.above.load(Ordering::Relaxed);
    e.sample_with(&bucket, &labels, [("le", "+Inf")].into_iter(), cumulative);
    let sum = buckets.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
    e.sample_float(&format!("{name}_sum"), &labels, sum);
    e.sample(&format!("{name}_count"), &labels, cumulative);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::http::Format;

    #[test]
    fn renders_sizes_counters_and_histograms() {
        let stats = FirewallStats::default();
        stats.backends[0].batches.fetch_add(2, Ordering::Relaxed);
        stats.backends[0]
            .batch_sizes
            .observe(&BATCH_SIZE_BUCKETS, 5.0);
        stats.backends[0]
            .batch_sizes
            .observe(&BATCH_SIZE_BUCKETS, 500_000.0);
        stats.backends[1].readded.fetch_add(3, Ordering::Relaxed);
        *stats.set_sizes.lock().expect("unpoisoned") = vec![("nftables", "bansv4".into(), 7)];
        let mut e = Encoder::new(Format::Prometheus, 1024);
        render(&mut e, &stats);
        let text = String::from_utf8(e.finish()).expect("UTF-8");
        for line in [
            "rebuff_firewall_set_elements{backend=\"nftables\",set=\"bansv4\"} 7",
            "rebuff_firewall_batches_total{backend=\"nftables\"} 2",
            "rebuff_firewall_repairs_total{backend=\"ipset\",kind=\"readded\"} 3",
            "rebuff_firewall_batch_size_bucket{backend=\"nftables\",le=\"1.0\"} 0",
            "rebuff_firewall_batch_size_bucket{backend=\"nftables\",le=\"10.0\"} 1",
            "rebuff_firewall_batch_size_bucket{backend=\"nftables\",le=\"+Inf\"} 2",
            "rebuff_firewall_batch_size_count{backend=\"nftables\"} 2",
        ] {
            assert!(text.contains(line), "{line} missing in:\n{text}");
        }
    }
}
