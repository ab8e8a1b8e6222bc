//! Restart backoff for one allocation: exponential between a floor and a ceiling, with jitter.
//!
//! Restarts are unbounded in count (a model server that crashes at 3 a.m. should come back at
//! 9 a.m. without a human), so the backoff is what bounds their rate. Jitter keeps a node's
//! allocations, which often fail together (driver reset, full disk), from restarting in lockstep.

use std::time::Duration;

/// The jitter applied to every delay, as a fraction either side of the nominal delay.
const JITTER_FRACTION: f64 = 0.2;

/// The exponent is capped so the doubling can never overflow, whatever the config says; 2^20
/// times any sane floor is far above any sane ceiling.
const DOUBLINGS_MAX: u32 = 20;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    delay_min: Duration,
    delay_max: Duration,
    /// Failures since the last reset; the next delay is `delay_min * 2^failures`.
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(delay_min: Duration, delay_max: Duration) -> Backoff {
        assert!(delay_min <= delay_max, "backoff floor above its ceiling");
        Backoff {
            delay_min,
            delay_max,
            failures: 0,
        }
    }

    /// The delay before the next attempt; each call doubles the nominal delay up to the ceiling.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let nominal = self.nominal(self.failures);
        self.failures = self.failures.saturating_add(1);
        jitter(nominal, rand::random_range(-1.0..=1.0))
    }

    /// Called after the allocation ran healthy long enough that its last failure says nothing
    /// about the next one.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    fn nominal(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.min(DOUBLINGS_MAX);
        self.delay_min
            .checked_mul(factor)
            .unwrap_or(self.delay_max)
            .min(self.delay_max)
    }
}

/// `unit` in [-1, 1] picks where in the jitter band the delay lands; kept pure for the tests.
fn jitter(nominal: Duration, unit: f64) -> Duration {
    assert!((-1.0..=1.0).contains(&unit));
    nominal.mul_f64(1.0 + JITTER_FRACTION * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_floor_to_ceiling_then_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let nominal: Vec<u64> = (0..7).map(|n| b.nominal(n).as_secs()).collect();
        assert_eq!(nominal, vec![1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.nominal(u32::MAX), Duration::from_secs(30));
        for _ in 0..10 {
            b.next_delay();
        }
        b.reset();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let nominal = Duration::from_secs(10);
        let close = |got: Duration, want_ms: u64| {
            got.abs_diff(Duration::from_millis(want_ms)) < Duration::from_micros(1)
        };
        assert!(close(jitter(nominal, -1.0), 8_000));
        assert!(close(jitter(nominal, 0.0), 10_000));
        assert!(close(jitter(nominal, 1.0), 12_000));
    }
}
