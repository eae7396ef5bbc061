//! The retry policy: how long a failed message waits before its next delivery.
//!
//! For the n-th retry (n = 1 after the first failed delivery):
//!
//! ```text
//! base(n)  = min(retry_delay_max, retry_delay × retry_backoff^(n − 1))
//! delay(n) = base(n) × (1 − retry_jitter × u),   u uniform in [0, 1)
//! ```
//!
//! With the defaults (1 s, factor 2, cap 1 h, jitter 0.1) the three retries wait 0.9–1 s,
//! 1.8–2 s and 3.6–4 s. Jitter only ever shortens a delay, so the cap is a true upper bound,
//! and retries of messages that failed together spread out instead of arriving in a herd.

/// A queue's retry policy, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub delay: f64,
    pub backoff: f64,
    pub max_delay: f64,
    pub jitter: f64,
}

impl RetryPolicy {
    /// Seconds before retry number `attempt` (1-based), for a jitter draw `u` in [0, 1).
    /// Out-of-range inputs are clamped: the SQL layer's CHECK constraints keep them sane, and a
    /// delay must never be negative, NaN or infinite.
    pub fn delay_secs(&self, attempt: i32, u: f64) -> f64 {
        let n = attempt.max(1);
        let delay = self.delay.max(0.0);
        let cap = self.max_delay.max(0.0);
        let backoff = if self.backoff.is_finite() {
            self.backoff.max(1.0)
        } else {
            1.0
        };
        // powi overflows to infinity for large n; min() with the cap brings it back.
        let grown = delay * backoff.powi(n - 1);
        let base = if grown.is_finite() {
            grown.min(cap)
        } else {
            cap
        };
        let jitter = self.jitter.clamp(0.0, 1.0);
        let u = if u.is_finite() {
            u.clamp(0.0, 1.0)
        } else {
            0.0
        };
        (base * (1.0 - jitter * u)).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: RetryPolicy = RetryPolicy {
        delay: 1.0,
        backoff: 2.0,
        max_delay: 3600.0,
        jitter: 0.1,
    };

    #[test]
    fn exponential_from_one_second_without_jitter() {
        let p = RetryPolicy {
            jitter: 0.0,
            ..DEFAULTS
        };
        let got: Vec<f64> = (1..=5).map(|n| p.delay_secs(n, 0.7)).collect();
        assert_eq!(got, vec![1.0, 2.0, 4.0, 8.0, 16.0]);
    }

    #[test]
    fn jitter_only_shortens_and_stays_in_its_band() {
        assert_eq!(DEFAULTS.delay_secs(3, 0.0), 4.0);
        assert!((DEFAULTS.delay_secs(3, 0.5) - 3.8).abs() < 1e-9);
        let lowest = DEFAULTS.delay_secs(3, 0.999_999);
        assert!(lowest > 3.6 && lowest < 4.0, "{lowest}");
    }

    #[test]
    fn the_cap_bounds_every_delay() {
        let p = RetryPolicy {
            max_delay: 10.0,
            jitter: 0.0,
            ..DEFAULTS
        };
        assert_eq!(p.delay_secs(4, 0.0), 8.0);
        assert_eq!(p.delay_secs(5, 0.0), 10.0);
        assert_eq!(p.delay_secs(60, 0.0), 10.0);
        // Huge attempt numbers overflow the power; the cap still holds.
        assert_eq!(p.delay_secs(i32::MAX, 0.0), 10.0);
    }

    #[test]
    fn constant_delay_with_factor_one_and_zero_delay() {
        let flat = RetryPolicy {
            backoff: 1.0,
            jitter: 0.0,
            ..DEFAULTS
        };
        assert_eq!(flat.delay_secs(7, 0.0), 1.0);
        let zero = RetryPolicy {
            delay: 0.0,
            ..DEFAULTS
        };
        assert_eq!(zero.delay_secs(3, 0.5), 0.0);
    }

    #[test]
    fn bad_inputs_are_clamped_never_negative_or_nan() {
        let p = RetryPolicy {
            delay: 1.0,
            backoff: f64::NAN,
            max_delay: 5.0,
            jitter: 7.0,
        };
        for (n, u) in [(0, 0.5), (-3, 2.0), (3, f64::NAN), (2, -1.0)] {
            let d = p.delay_secs(n, u);
            assert!(
                d.is_finite() && (0.0..=5.0).contains(&d),
                "attempt {n} u {u}: {d}"
            );
        }
        assert_eq!(
            p.delay_secs(0, 0.0),
            1.0,
            "attempt 0 counts as the first retry"
        );
    }
}
