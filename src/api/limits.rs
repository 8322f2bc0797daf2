//! Per-client rate limits: a token bucket per client name, so one client's
//! excess gets 429 with Retry-After while the others go on unaffected.

use crate::config::{Rate, RateLimits};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of all clients.
#[derive(Debug, Default)]
pub struct RateLimiter {
    limits: RateLimits,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// A limiter with these limits.
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `client`'s bucket; `Err(wait)` when it is
    /// empty, with the time until the next request is allowed.
    pub fn check(&self, client: &str, now: Instant) -> Result<(), Duration> {
        let Some(Rate { per_second, burst }) = self.limits.for_client(client) else {
            return Ok(());
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = buckets.entry(client.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * per_second).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn buckets_refill_at_the_rate_and_are_per_client() {
        let mut clients = BTreeMap::new();
        clients.insert(
            "slow".to_string(),
            Some(Rate {
                per_second: 2.0,
                burst: 2.0,
            }),
        );
        clients.insert("free".to_string(), None);
        let limiter = RateLimiter::new(RateLimits {
            default: Some(Rate {
                per_second: 100.0,
                burst: 100.0,
            }),
            clients,
        });
        let t0 = Instant::now();
        assert!(limiter.check("slow", t0).is_ok());
        assert!(limiter.check("slow", t0).is_ok());
        let wait = limiter.check("slow", t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        // Another client is not affected.
        for _ in 0..100 {
            assert!(limiter.check("other", t0).is_ok());
        }
        assert!(limiter.check("other", t0).is_err());
        for _ in 0..10_000 {
            assert!(limiter.check("free", t0).is_ok());
        }
        // Half a second later one more request is allowed, then not.
        let t1 = t0 + Duration::from_millis(500);
        assert!(limiter.check("slow", t1).is_ok());
        assert!(limiter.check("slow", t1).is_err());
    }
}
