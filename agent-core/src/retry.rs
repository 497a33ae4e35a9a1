//! Retry policy for model calls: full-jitter exponential backoff that honours `Retry-After`.

use std::time::Duration;

/// How throttled and transient model errors are retried. Completed tool calls are never re-run:
/// only the failed model turn is repeated.
///
/// ```
/// use std::time::Duration;
/// use agent_core::retry::RetryPolicy;
/// let policy = RetryPolicy::default().max_attempts(3).initial_delay(Duration::from_millis(200));
/// assert_eq!(policy.max_attempts, 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Total attempts of one model turn, the first included (1 disables retries).
    pub max_attempts: u32,
    /// Upper bound of the first backoff.
    pub initial_delay: Duration,
    /// Upper bound of any backoff (a longer `Retry-After` is still honoured, within the
    /// invocation's time limit).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Sets the total attempts of one model turn, the first included (1 disables retries).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Sets the upper bound of the first backoff.
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Sets the upper bound of any backoff.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// No retries.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The delay before retry number `retry` (1-based): uniformly random in
    /// `[0, min(max_delay, initial_delay * 2^(retry-1))]` ("full jitter"), and never shorter
    /// than the server's `Retry-After`.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .initial_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20));
        let cap = exp.min(self.max_delay);
        let jittered = cap.mul_f64(fastrand::f64());
        match retry_after {
            Some(ra) => jittered.max(ra),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_is_bounded_and_honours_retry_after() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        for retry in 1..=10 {
            for _ in 0..100 {
                let d = p.delay(retry, None);
                let cap = (100u64 << (retry - 1)).min(1000);
                assert!(d <= Duration::from_millis(cap), "retry {retry}: {d:?}");
            }
        }
        assert!(p.delay(1, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        // Jitter really varies.
        let samples: std::collections::HashSet<_> = (0..50).map(|_| p.delay(4, None)).collect();
        assert!(samples.len() > 10);
    }
}
