//! "At most once per interval", shared by many threads without a lock: the file polls of the
//! user and group stores (once a second on the request path) and rate-limited warnings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const NEVER: u64 = u64::MAX;

/// Grants one caller per `every` (the first caller at once); the others are told to skip.
#[derive(Debug)]
pub struct Throttle {
    started: Instant,
    every_ms: u64,
    /// Milliseconds since `started` of the last grant ([`NEVER`]: none yet, the first call is due).
    last_ms: AtomicU64,
}

impl Throttle {
    /// A throttle granting once per `every`.
    pub fn new(every: Duration) -> Throttle {
        Throttle {
            started: Instant::now(),
            every_ms: u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
            last_ms: AtomicU64::new(NEVER),
        }
    }

    /// Whether this caller may act now: true for one caller per interval.
    pub fn due(&self) -> bool {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_ms.load(Ordering::Relaxed);
        (last == NEVER || now.saturating_sub(last) >= self.every_ms)
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_grant_per_interval() {
        let t = Throttle::new(Duration::from_millis(50));
        assert!(t.due(), "the first call at once");
        assert!(!t.due(), "within the interval");
        std::thread::sleep(Duration::from_millis(60));
        assert!(t.due());
        assert!(Throttle::new(Duration::ZERO).due());
    }
}
