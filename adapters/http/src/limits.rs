//! Per-caller rate limits: requests per minute and tokens per minute, as token buckets that
//! refill continuously. A request is charged its prompt plus `max_tokens` when admitted, as
//! OpenAI does; a refused request is not charged.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::auth::Caller;
use crate::error::ApiError;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
}

impl Bucket {
    fn full(capacity: f64, at: Instant) -> Self {
        Self { level: capacity, at }
    }

    fn refill(&mut self, capacity: f64, now: Instant) {
        let per_second = capacity / 60.0;
        self.level = (self.level + now.duration_since(self.at).as_secs_f64() * per_second).min(capacity);
        self.at = now;
    }

    /// Seconds until `cost` is available.
    fn wait_for(&self, capacity: f64, cost: f64) -> u64 {
        ((cost - self.level).max(0.0) / (capacity / 60.0)).ceil().max(1.0) as u64
    }
}

pub struct RateLimiter {
    limits: RateLimits,
    buckets: Mutex<HashMap<Caller, (Bucket, Bucket)>>,
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        Self { limits, buckets: Mutex::new(HashMap::new()) }
    }

    /// Charges one request of `tokens` tokens to `caller`, or says when to retry.
    pub fn charge(&self, caller: Caller, tokens: usize, now: Instant) -> Result<(), ApiError> {
        let (rpm, tpm) = (self.limits.requests_per_minute, self.limits.tokens_per_minute);
        if (rpm.is_none() && tpm.is_none()) || caller == Caller::Internal {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (rpm_cap, tpm_cap) = (f64::from(rpm.unwrap_or(0)), f64::from(tpm.unwrap_or(0)));
        let (requests, token_bucket) =
            buckets.entry(caller).or_insert_with(|| (Bucket::full(rpm_cap, now), Bucket::full(tpm_cap, now)));
        if let Some(rpm) = rpm {
            requests.refill(rpm_cap, now);
            if requests.level < 1.0 {
                let retry_after_s = requests.wait_for(rpm_cap, 1.0);
                return Err(ApiError::RateLimited { limit: format!("{rpm} requests per minute"), retry_after_s });
            }
        }
        if let Some(tpm) = tpm {
            token_bucket.refill(tpm_cap, now);
            let cost = tokens as f64;
            if cost > tpm_cap {
                return Err(ApiError::invalid(
                    "max_tokens",
                    format!("the request needs {tokens} tokens, more than the limit of {tpm} tokens per minute"),
                ));
            }
            if token_bucket.level < cost {
                let retry_after_s = token_bucket.wait_for(tpm_cap, cost);
                return Err(ApiError::RateLimited { limit: format!("{tpm} tokens per minute"), retry_after_s });
            }
            token_bucket.level -= cost;
        }
        if rpm.is_some() {
            requests.level -= 1.0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn requests_per_minute_refill_over_time() {
        let limiter = RateLimiter::new(RateLimits { requests_per_minute: Some(2), tokens_per_minute: None });
        let t0 = Instant::now();
        let me = Caller::Key(0);
        assert!(limiter.charge(me, 10, t0).is_ok());
        assert!(limiter.charge(me, 10, t0).is_ok());
        let err = limiter.charge(me, 10, t0).expect_err("should fail");
        assert!(matches!(err, ApiError::RateLimited { retry_after_s: 30, .. }), "{err:?}");
        assert!(limiter.charge(Caller::Key(1), 10, t0).is_ok(), "limits are per caller");
        assert!(limiter.charge(me, 10, t0 + Duration::from_secs(30)).is_ok());
    }

    #[test]
    fn tokens_per_minute_and_oversized_requests() {
        let limiter = RateLimiter::new(RateLimits { requests_per_minute: None, tokens_per_minute: Some(100) });
        let t0 = Instant::now();
        let me = Caller::Anonymous;
        assert!(limiter.charge(me, 60, t0).is_ok());
        assert!(matches!(limiter.charge(me, 60, t0), Err(ApiError::RateLimited { retry_after_s: 12, .. })));
        assert!(matches!(limiter.charge(me, 101, t0), Err(ApiError::InvalidRequest { .. })));
    }
}
