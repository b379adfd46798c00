//! Per-client rate limiting: a token bucket per client address (`rate` requests per second,
//! bursts of `burst`). A bucket that has been idle long enough to refill completely is the
//! same as no bucket, so idle buckets are evicted; the table never holds more than
//! `max_clients` entries, which bounds the memory any number of clients can make it use.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    max_clients: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    /// `rate` requests per second with bursts of `burst` (at least 1).
    pub fn new(rate: f64, burst: f64, max_clients: usize) -> Self {
        RateLimiter {
            rate,
            burst: burst.max(1.0),
            max_clients: max_clients.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `client`'s bucket at time `now`: Ok, or how long until a
    /// request would be allowed (for Retry-After).
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(&client) && map.len() >= self.max_clients {
            self.evict_idle(&mut map, now);
            if map.len() >= self.max_clients {
                // Every tracked client is mid-burst: the oldest one's state goes.
                if let Some(oldest) = map.iter().min_by_key(|(_, b)| b.last).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let b = map.entry(client).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + dt * self.rate).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }

    /// Removes buckets that would be full again by `now` (indistinguishable from new ones).
    fn evict_idle(&self, map: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        let refill = Duration::from_secs_f64(self.burst / self.rate);
        map.retain(|_, b| now.saturating_duration_since(b.last) < refill);
    }

    /// Evicts idle buckets; the server calls this periodically.
    pub fn sweep(&self, now: Instant) {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        self.evict_idle(&mut map, now);
    }

    pub fn tracked_clients(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn burst_then_limited_then_refilled() {
        let l = RateLimiter::new(2.0, 3.0, 100);
        let t = Instant::now();
        for _ in 0..3 {
            assert!(l.check(ip(1), t).is_ok());
        }
        let wait = l.check(ip(1), t).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        assert!(l.check(ip(2), t).is_ok(), "clients are independent");
        assert!(l.check(ip(1), t + Duration::from_millis(500)).is_ok());
    }

    #[test]
    fn idle_state_is_evicted_and_the_table_is_bounded() {
        let l = RateLimiter::new(1.0, 2.0, 4);
        let t = Instant::now();
        for n in 0..4 {
            l.check(ip(n), t).unwrap();
        }
        assert_eq!(l.tracked_clients(), 4);
        l.sweep(t + Duration::from_secs(1));
        assert_eq!(l.tracked_clients(), 4, "not yet refilled");
        l.sweep(t + Duration::from_secs(3));
        assert_eq!(l.tracked_clients(), 0, "refilled buckets are dropped");
        // Many distinct clients at once never grow the table past its bound.
        for n in 0..50 {
            l.check(ip(n), t + Duration::from_secs(4)).unwrap();
            assert!(l.tracked_clients() <= 4);
        }
    }
}
