//! Exponential backoff with jitter, so that a lost store is retried without a busy loop
//! and many nodes do not retry in lockstep (upstream: 100 ms doubling to 5 s).

use std::time::Duration;

/// Exponential backoff state.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min` and doubles up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        let max = max.max(min);
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The delay before the next retry (±20 % jitter); each call doubles the base.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let r = getrandom::u32().unwrap_or(0x8000_0000);
        // Map r to a factor in [0.8, 1.2).
        let factor = 0.8 + 0.4 * (f64::from(r) / f64::from(u32::MAX));
        base.mul_f64(factor)
    }

    /// Back to the shortest delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let d: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(80) && d[0] <= Duration::from_millis(120));
        assert!(d[4] >= Duration::from_millis(320) && d[4] <= Duration::from_millis(480));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }
}
