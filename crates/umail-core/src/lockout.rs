//! Failed-authentication accounting per client IP, shared by every protocol
//! so that guessing passwords over SMTP, IMAP and POP3 counts against the
//! same budget.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::SecurityConfig;

/// Most IPs tracked at once; past that, expired entries are dropped first
/// and then the oldest, so a flood of addresses cannot exhaust memory.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    failures: u32,
    locked_until: Option<Instant>,
}

/// Tracks failed authentications per IP and locks an IP out for a while
/// after too many.
#[derive(Debug)]
pub struct AuthLockout {
    limit: u32,
    window: Duration,
    lockout: Duration,
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

impl AuthLockout {
    /// A tracker with the limits of `[security]`.
    pub fn new(config: &SecurityConfig) -> AuthLockout {
        AuthLockout {
            limit: config.auth_failure_limit.max(1),
            window: Duration::from_secs(config.auth_failure_window_secs),
            lockout: Duration::from_secs(config.auth_lockout_secs),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// True when `ip` is currently locked out.
    pub fn is_locked(&self, ip: IpAddr) -> bool {
        self.is_locked_at(ip, Instant::now())
    }

    /// Same as [`AuthLockout::is_locked`] at a given instant (for tests).
    pub fn is_locked_at(&self, ip: IpAddr, now: Instant) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&ip)
            .and_then(|e| e.locked_until)
            .is_some_and(|until| now < until)
    }

    /// Records a failure; returns true when this failure locked the IP out.
    pub fn record_failure(&self, ip: IpAddr) -> bool {
        self.record_failure_at(ip, Instant::now())
    }

    /// Same as [`AuthLockout::record_failure`] at a given instant (for tests).
    pub fn record_failure_at(&self, ip: IpAddr, now: Instant) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_TRACKED && !entries.contains_key(&ip) {
            let (window, lockout) = (self.window, self.lockout);
            entries.retain(|_, e| {
                now.duration_since(e.window_start) < window
                    || e.locked_until.is_some_and(|u| now < u + lockout)
            });
            if entries.len() >= MAX_TRACKED
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, e)| e.window_start)
                    .map(|(k, _)| *k)
            {
                entries.remove(&oldest);
            }
        }
        let entry = entries.entry(ip).or_insert(Entry {
            window_start: now,
            failures: 0,
            locked_until: None,
        });
        if now.duration_since(entry.window_start) >= self.window {
            entry.window_start = now;
            entry.failures = 0;
        }
        entry.failures += 1;
        if entry.failures >= self.limit {
            entry.locked_until = Some(now + self.lockout);
            entry.failures = 0;
            entry.window_start = now;
            tracing::warn!(target: "auth", %ip, "too many failed authentications; locked out");
            return true;
        }
        false
    }

    /// Clears the failure count of `ip` after a successful login.
    pub fn record_success(&self, ip: IpAddr) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = entries.get(&ip)
            && e.locked_until.is_none()
        {
            entries.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_limit_and_expires() {
        let l = AuthLockout::new(&SecurityConfig {
            auth_failure_limit: 3,
            auth_failure_window_secs: 60,
            auth_lockout_secs: 120,
        });
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t0 = Instant::now();
        assert!(!l.record_failure_at(ip, t0));
        assert!(!l.record_failure_at(ip, t0));
        assert!(!l.is_locked_at(ip, t0));
        assert!(l.record_failure_at(ip, t0));
        assert!(l.is_locked_at(ip, t0 + Duration::from_secs(119)));
        assert!(!l.is_locked_at(ip, t0 + Duration::from_secs(121)));
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert!(!l.is_locked_at(other, t0));
    }

    #[test]
    fn window_resets_count() {
        let l = AuthLockout::new(&SecurityConfig {
            auth_failure_limit: 2,
            auth_failure_window_secs: 10,
            auth_lockout_secs: 100,
        });
        let ip: IpAddr = "::1".parse().unwrap();
        let t0 = Instant::now();
        l.record_failure_at(ip, t0);
        assert!(!l.record_failure_at(ip, t0 + Duration::from_secs(11)));
    }
}
