//! Per-connection publish limits (`max_publish_rate`,
//! `max_publish_bytes_rate`): token buckets that refill continuously and
//! hold one second's worth, so a short burst passes and a sustained flood
//! does not.

use tokio::time::Instant;

/// The buckets are boxed: off by default, and every connection's task
/// holds a `PublishBudget`.
pub(crate) struct PublishBudget {
    messages: Option<Box<Bucket>>,
    bytes: Option<Box<Bucket>>,
}

struct Bucket {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(per_second: f64) -> Self {
        Bucket {
            per_second,
            tokens: per_second,
            last: Instant::now(),
        }
    }

    fn take(&mut self, n: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second.max(n));
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

impl PublishBudget {
    /// 0 turns a limit off.
    pub fn new(messages_per_second: u32, bytes_per_second: u64) -> Self {
        PublishBudget {
            messages: (messages_per_second > 0)
                .then(|| Box::new(Bucket::new(f64::from(messages_per_second)))),
            bytes: (bytes_per_second > 0).then(|| Box::new(Bucket::new(bytes_per_second as f64))),
        }
    }

    /// Whether a PUBLISH of `size` payload bytes is within the limits.
    pub fn allow(&mut self, size: usize) -> bool {
        if self.messages.is_none() && self.bytes.is_none() {
            // No limit configured: no clock read per PUBLISH.
            return true;
        }
        let now = Instant::now();
        let messages_ok = self.messages.as_mut().is_none_or(|b| b.take(1.0, now));
        let bytes_ok = self.bytes.as_mut().is_none_or(|b| b.take(size as f64, now));
        messages_ok && bytes_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_one_second_passes_and_a_flood_does_not() {
        let mut budget = PublishBudget::new(10, 0);
        assert!((0..10).all(|_| budget.allow(1)));
        assert!(!budget.allow(1));
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        assert!((0..5).all(|_| budget.allow(1)));
        assert!(!budget.allow(1));
        let mut bytes = PublishBudget::new(0, 1000);
        assert!(bytes.allow(600));
        assert!(!bytes.allow(600));
    }
}
