//! A histogram with fixed buckets that many tasks update at once without
//! a lock (one atomic add per bucket and one for the sum), read at scrape
//! time by `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Delivery and flush latencies, in seconds: 100 µs to 5 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Messages per store flush: 1 to 4096.
pub const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds, ascending; the last bucket (+Inf) is implicit.
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); one more than `bounds`.
    counts: Box<[AtomicU64]>,
    /// Sum of the observations in units of `1 / scale`.
    sum_units: AtomicU64,
    /// Units per whole value (1e9 for seconds kept as nanoseconds).
    scale: f64,
}

impl Histogram {
    /// Observations are given in units: a value is `units / scale`.
    pub fn new(bounds: &'static [f64], scale: f64) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_units: AtomicU64::new(0),
            scale,
        }
    }

    /// A histogram of durations in seconds (observed as nanoseconds).
    pub fn seconds() -> Histogram {
        Histogram::new(LATENCY_BUCKETS, 1e9)
    }

    pub fn observe_units(&self, units: u64) {
        let value = units as f64 / self.scale;
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_units.fetch_add(units, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, duration: std::time::Duration) {
        self.observe_units(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Sum, count and (bound, count) per bucket (not cumulative; the last
    /// bound is +Inf), as the exposition encodes them.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_units.load(Ordering::Relaxed) as f64 / self.scale;
        (sum, count, buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::new(&[1.0, 2.0], 1.0);
        for v in [0, 1, 2, 3, 7] {
            h.observe_units(v);
        }
        let (sum, count, buckets) = h.snapshot();
        assert_eq!((sum, count), (13.0, 5));
        assert_eq!(buckets, vec![(1.0, 2), (2.0, 1), (f64::INFINITY, 2)]);
    }
}
