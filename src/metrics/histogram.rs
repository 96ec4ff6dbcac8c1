//! A histogram with fixed buckets that many tasks update at once without
//! a lock (two atomic adds in this thread's shard), read at scrape time by
//! `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Delivery and flush latencies, in seconds: 100 µs to 5 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Messages per store flush: 1 to 4096.
pub const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// Most buckets a histogram has (bounds plus +Inf).
const MAX_BUCKETS: usize = 17;
/// Copies of the counts, so threads on different cores do not contend
/// for one cache line on every observation (fan-out observes once per
/// delivery); a scrape sums them.
const SHARDS: usize = 16;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    counts: [AtomicU64; MAX_BUCKETS],
    /// Sum of the observations in units of `1 / scale`.
    sum_units: AtomicU64,
}

std::thread_local! {
    /// This thread's shard, handed out in turn.
    static SHARD: usize = {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        (NEXT.fetch_add(1, Ordering::Relaxed) as usize) % SHARDS
    };
}

/// Observations not yet added to a `Histogram` (`Histogram::merge`).
#[derive(Debug, Default)]
pub struct LocalHistogram {
    counts: [u32; MAX_BUCKETS],
    sum_units: u64,
    observed: bool,
}

#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds, ascending; the last bucket (+Inf) is implicit.
    bounds: &'static [f64],
    /// The same in units (`bounds * scale`, rounded), compared without
    /// floating point on every observation.
    unit_bounds: Box<[u64]>,
    shards: Box<[Shard]>,
    /// Units per whole value (1e9 for seconds kept as nanoseconds).
    scale: f64,
}

impl Histogram {
    /// Observations are given in units: a value is `units / scale`. At
    /// most 16 bounds.
    pub fn new(bounds: &'static [f64], scale: f64) -> Histogram {
        assert!(bounds.len() < MAX_BUCKETS, "at most {} bounds", MAX_BUCKETS - 1);
        Histogram {
            bounds,
            unit_bounds: bounds.iter().map(|b| (b * scale).round() as u64).collect(),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            scale,
        }
    }

    /// A histogram of durations in seconds (observed as nanoseconds).
    pub fn seconds() -> Histogram {
        Histogram::new(LATENCY_BUCKETS, 1e9)
    }

    fn bucket_of(&self, units: u64) -> usize {
        self.unit_bounds.partition_point(|bound| *bound < units)
    }

    pub fn observe_units(&self, units: u64) {
        let shard = &self.shards[SHARD.with(|s| *s)];
        shard.counts[self.bucket_of(units)].fetch_add(1, Ordering::Relaxed);
        shard.sum_units.fetch_add(units, Ordering::Relaxed);
    }

    /// Observes into `local` (no atomics); `merge` adds it here. For a hot
    /// path that observes many times between two natural pauses (a
    /// connection's write batch).
    pub fn observe_locally(&self, local: &mut LocalHistogram, duration: std::time::Duration) {
        let units = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        local.counts[self.bucket_of(units)] += 1;
        local.sum_units = local.sum_units.saturating_add(units);
        local.observed = true;
    }

    /// Adds what `local` holds and empties it.
    pub fn merge(&self, local: &mut LocalHistogram) {
        if !std::mem::take(&mut local.observed) {
            return;
        }
        let shard = &self.shards[SHARD.with(|s| *s)];
        for (total, n) in shard.counts.iter().zip(local.counts.iter_mut()) {
            if *n > 0 {
                total.fetch_add(u64::from(std::mem::take(n)), Ordering::Relaxed);
            }
        }
        shard
            .sum_units
            .fetch_add(std::mem::take(&mut local.sum_units), Ordering::Relaxed);
    }

    pub fn observe_duration(&self, duration: std::time::Duration) {
        self.observe_units(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Sum, count and (bound, count) per bucket (not cumulative; the last
    /// bound is +Inf), as the exposition encodes them.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let bounds = self.bounds.iter().copied().chain(std::iter::once(f64::INFINITY));
        let buckets: Vec<(f64, u64)> = bounds
            .enumerate()
            .map(|(i, bound)| {
                let n = self
                    .shards
                    .iter()
                    .map(|s| s.counts[i].load(Ordering::Relaxed))
                    .sum();
                (bound, n)
            })
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum_units: u64 = self
            .shards
            .iter()
            .map(|s| s.sum_units.load(Ordering::Relaxed))
            .sum();
        (sum_units as f64 / self.scale, count, buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_from_many_threads_all_count() {
        let h = std::sync::Arc::new(Histogram::new(&[1.0], 1.0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| h.observe_units(1)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(h.snapshot().1, 8000);
    }

    #[test]
    fn local_observations_count_once_merged() {
        let h = Histogram::seconds();
        let mut local = LocalHistogram::default();
        h.observe_locally(&mut local, std::time::Duration::from_micros(300));
        h.observe_locally(&mut local, std::time::Duration::from_millis(2));
        assert_eq!(h.snapshot().1, 0);
        h.merge(&mut local);
        h.merge(&mut local);
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 2);
        assert!((sum - 0.0023).abs() < 1e-9, "{sum}");
        assert_eq!(
            buckets.iter().find(|(b, _)| *b == 0.0005).map(|(_, n)| *n),
            Some(1)
        );
        assert_eq!(
            buckets.iter().find(|(b, _)| *b == 0.0025).map(|(_, n)| *n),
            Some(1)
        );
    }

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
