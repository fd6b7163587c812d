//! Throughput limits: a token bucket per account on each core.
//!
//! Owns: the bucket arithmetic (integer milli-tokens, no floats) and the
//! split of an account's limit over the cores. Must not touch: clocks (the
//! caller passes `now_ms`), sockets or the store.
//!
//! Why per core and not cluster-wide: a shared bucket would put a lock or a
//! cross-core round trip on every submit. Each core gets `limit / cores`
//! (at least one per second); binds spread over cores by the kernel, so the
//! account's total stays near its limit, a little above it at worst when
//! the division rounds up.

/// One bucket. Capacity is one second of the rate, so a customer may burst
/// up to its per-second limit after a quiet second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    rate_per_s: u32,
    milli_tokens: u64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket for `rate_per_s` (0 is treated as 1: use no bucket for
    /// "unlimited").
    pub fn new(rate_per_s: u32, now_ms: u64) -> TokenBucket {
        let rate_per_s = rate_per_s.max(1);
        TokenBucket {
            rate_per_s,
            milli_tokens: u64::from(rate_per_s) * 1000,
            last_ms: now_ms,
        }
    }

    pub fn rate_per_s(&self) -> u32 {
        self.rate_per_s
    }

    /// Changes the rate (the account was updated), keeping the tokens held.
    pub fn set_rate(&mut self, rate_per_s: u32) {
        self.rate_per_s = rate_per_s.max(1);
        self.milli_tokens = self.milli_tokens.min(self.capacity());
    }

    fn capacity(&self) -> u64 {
        u64::from(self.rate_per_s) * 1000
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now_ms: u64) -> bool {
        let elapsed_ms = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        // rate tokens/s = rate milli-tokens/ms.
        let refill = elapsed_ms.saturating_mul(u64::from(self.rate_per_s));
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(refill)
            .min(self.capacity());
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

/// An account's limit as one core applies it; `None` = unlimited.
pub fn per_core_rate(account_limit_per_s: u32, cores: usize) -> Option<u32> {
    if account_limit_per_s == 0 {
        return None;
    }
    let cores = u32::try_from(cores.max(1)).unwrap_or(u32::MAX);
    Some(account_limit_per_s.div_ceil(cores).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_limits_and_refills() {
        let mut bucket = TokenBucket::new(5, 0);
        let taken = (0..20).filter(|_| bucket.try_take(0)).count();
        assert_eq!(taken, 5, "a full bucket holds one second");
        assert!(!bucket.try_take(100), "half a token is not a token");
        assert!(bucket.try_take(200), "200 ms at 5/s is one token");
        assert!(!bucket.try_take(200));
        // A long pause refills to capacity, not beyond.
        let taken = (0..20).filter(|_| bucket.try_take(60_000)).count();
        assert_eq!(taken, 5);
        // A clock going backwards takes nothing and gives nothing.
        assert!(!bucket.try_take(10));
    }

    #[test]
    fn rate_changes_keep_the_bucket_bounded() {
        let mut bucket = TokenBucket::new(100, 0);
        bucket.set_rate(2);
        let taken = (0..10).filter(|_| bucket.try_take(0)).count();
        assert_eq!(taken, 2);
        assert_eq!(bucket.rate_per_s(), 2);
    }

    #[test]
    fn per_core_split() {
        assert_eq!(per_core_rate(0, 4), None);
        assert_eq!(per_core_rate(10, 2), Some(5));
        assert_eq!(per_core_rate(5, 2), Some(3));
        assert_eq!(per_core_rate(1, 8), Some(1));
        assert_eq!(per_core_rate(7, 0), Some(7));
    }
}
