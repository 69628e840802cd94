//! Bandwidth limits: a token bucket that the uploads drawing from it share.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// A limit of bytes per second over everything that draws from it (clones share it). It
/// allows a burst of a tenth of a second's worth, then paces: who takes more than is there
/// waits until the debt is paid back.
#[derive(Debug, Clone)]
pub struct RateLimit {
    bucket: Arc<Mutex<Bucket>>,
}

/// Two limits are equal when they are the same shared bucket.
impl PartialEq for RateLimit {
    fn eq(&self, other: &RateLimit) -> bool {
        Arc::ptr_eq(&self.bucket, &other.bucket)
    }
}

impl Eq for RateLimit {}

#[derive(Debug)]
struct Bucket {
    bytes_per_second: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl RateLimit {
    /// A limit of `bytes_per_second` (at least 1).
    #[must_use]
    pub fn new(bytes_per_second: u64) -> RateLimit {
        #[allow(clippy::cast_precision_loss)] // rates far below 2^52 bytes per second
        let rate = bytes_per_second.max(1) as f64;
        let burst = rate / 10.0;
        RateLimit {
            bucket: Arc::new(Mutex::new(Bucket {
                bytes_per_second: rate,
                burst,
                tokens: burst,
                refilled: Instant::now(),
            })),
        }
    }

    /// Accounts for `bytes` moved; returns how long to wait before moving more.
    #[must_use]
    pub fn take(&self, bytes: usize) -> Duration {
        let Ok(mut bucket) = self.bucket.lock() else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.refilled = now;
        bucket.tokens = (bucket.tokens + elapsed * bucket.bytes_per_second).min(bucket.burst);
        #[allow(clippy::cast_precision_loss)]
        let bytes = bytes as f64;
        bucket.tokens -= bytes;
        if bucket.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-bucket.tokens / bucket.bytes_per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moves `total` bytes in `chunk`s through `limits` on a paused clock; returns the seconds
    /// it took.
    async fn pace(limits: &[RateLimit], total: usize, chunk: usize) -> f64 {
        let start = Instant::now();
        let mut moved = 0;
        while moved < total {
            moved += chunk;
            for limit in limits {
                tokio::time::sleep(limit.take(chunk)).await;
            }
        }
        start.elapsed().as_secs_f64()
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_is_the_limit_after_a_small_burst() {
        for (rate, chunk) in [(1 << 20, 64 << 10), (20 << 20, 1 << 20), (1000, 10)] {
            let limit = RateLimit::new(rate);
            let total = usize::try_from(rate * 10).unwrap();
            let seconds = pace(&[limit], total, chunk).await;
            // Ten seconds' worth, less the burst of a tenth of a second.
            assert!(
                (9.85..=9.95).contains(&seconds),
                "{rate} B/s in chunks of {chunk}: {seconds} s"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_one_limit_and_the_tighter_of_two_wins() {
        let shared = RateLimit::new(1 << 20);
        let (one, other) = ([shared.clone()], [shared]);
        let (a, b) = tokio::join!(
            pace(&one, 5 << 20, 64 << 10),
            pace(&other, 5 << 20, 64 << 10),
        );
        assert!(a.max(b) > 9.8 && a.max(b) < 10.1, "{a} {b}");
        let tight = RateLimit::new(1 << 20);
        let loose = RateLimit::new(4 << 20);
        let seconds = pace(&[loose, tight], 10 << 20, 64 << 10).await;
        assert!((9.8..10.1).contains(&seconds), "{seconds}");
    }
}
