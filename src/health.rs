//! Per-backend health held in atomics, read lock-free on the request path.
//!
//! Availability = actively healthy (rise/fall hysteresis) AND not passively ejected.
//! The registry keys state by backend identity (service, address) so a reload keeps it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};

use crate::time::now_ms;

pub mod db;
pub mod dbspec;

/// Passive ejection settings for one service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassivePolicy {
    /// Consecutive failures that eject; 0 disables passive detection.
    pub consecutive_failures: u32,
    /// A 5xx answer counts as a failure.
    pub on_5xx: bool,
    /// First ejection lasts this long (ms); each repeat doubles it.
    pub base_ejection_ms: u64,
    /// Longest ejection (ms).
    pub max_ejection_ms: u64,
    /// At most this share (percent) of a region's backends ejected at once.
    pub max_ejection_percent: u32,
    /// Latency outliers: a backend whose latency estimate stays above this multiple of its
    /// region's median for `latency_window_ms` is ejected; 0 disables.
    pub latency_factor: f64,
    /// How long a backend must stay a latency outlier before it is ejected (ms).
    pub latency_window_ms: u64,
}

/// Live health of one backend.
#[derive(Debug)]
pub struct BackendHealth {
    /// Result of active checks after hysteresis.
    up: AtomicBool,
    ok_streak: AtomicU32,
    fail_streak: AtomicU32,
    /// `now_ms()` when the backend last became available (0 = available since start).
    up_since_ms: AtomicU64,
    /// Passive: consecutive failures seen on live traffic.
    passive_failures: AtomicU32,
    /// Passive: ejected until this `now_ms()`; 0 = not ejected.
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
    /// Requests in flight (least-request balancing).
    pub inflight: AtomicU32,
    /// Peak-EWMA latency (`lb = "peak_ewma"`): the time of the last sample (`now_ms`, low 32
    /// bits) in the high half, the estimate in microseconds (`f32` bits) in the low half, so
    /// one compare-and-swap updates both.
    latency: AtomicU64,
    /// `now_ms()` since which the backend has been a latency outlier; 0 = it is not.
    slow_since_ms: AtomicU64,
    /// State changes, for operators.
    pub transitions: AtomicU64,
    /// The backend's database role and lag, from its health answers.
    pub db: db::DbReport,
}

impl BackendHealth {
    /// A backend that starts healthy or not.
    pub fn new(initially_up: bool) -> Self {
        BackendHealth {
            up: AtomicBool::new(initially_up),
            ok_streak: AtomicU32::new(0),
            fail_streak: AtomicU32::new(0),
            up_since_ms: AtomicU64::new(0),
            passive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            inflight: AtomicU32::new(0),
            latency: AtomicU64::new(0),
            slow_since_ms: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
            db: db::DbReport::default(),
        }
    }

    /// Actively healthy (ignores passive ejection).
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// Passively ejected at `now` (ms from `time::now_ms`).
    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until_ms.load(Relaxed) > now
    }

    /// May receive traffic now.
    pub fn is_available(&self, now: u64) -> bool {
        self.is_up() && !self.is_ejected(now)
    }

    /// `now_ms()` at which the backend last became available; 0 when it always was.
    pub fn up_since(&self) -> u64 {
        self.up_since_ms.load(Relaxed)
    }

    /// Ejections so far (drives the growing ejection time).
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Relaxed)
    }

    /// Record an active check result; returns `Some(new_state)` when the state flipped.
    pub fn observe_check(&self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok {
            self.fail_streak.store(0, Relaxed);
            let streak = self.ok_streak.fetch_add(1, Relaxed).saturating_add(1);
            if !self.is_up() && streak >= rise {
                // A backend that was never up (initial = "unhealthy") joins at full weight;
                // one that recovers waits for fail-back and ramps (see `select`).
                let since = if self.transitions.load(Relaxed) == 0 {
                    0
                } else {
                    now_ms()
                };
                self.up_since_ms.store(since, Relaxed);
                self.passive_failures.store(0, Relaxed);
                self.up.store(true, Relaxed);
                self.transitions.fetch_add(1, Relaxed);
                return Some(true);
            }
        } else {
            self.ok_streak.store(0, Relaxed);
            let streak = self.fail_streak.fetch_add(1, Relaxed).saturating_add(1);
            if self.is_up() && streak >= fall {
                self.up.store(false, Relaxed);
                self.transitions.fetch_add(1, Relaxed);
                return Some(false);
            }
        }
        None
    }

    /// Mark up without a check (the service no longer has active checks). Passive ejection
    /// still applies.
    pub fn force_up(&self) {
        if !self.up.swap(true, Relaxed) {
            self.up_since_ms.store(now_ms(), Relaxed);
            self.transitions.fetch_add(1, Relaxed);
        }
    }

    /// Record a response that took `rtt_us` microseconds, at `now` (ms from `time::now_ms`),
    /// into the peak-EWMA estimate with time constant `decay_ms`: a sample above the current
    /// estimate replaces it (fast rise); one below is blended in with weight
    /// `1 − e^(−elapsed/decay)`, `elapsed` being the time since the previous sample (slow decay).
    pub fn observe_latency(&self, rtt_us: f64, now: u64, decay_ms: u64) {
        let mut cur = self.latency.load(Relaxed);
        loop {
            let w = decay_weight(cur, now, decay_ms);
            let est = f64::from(f32::from_bits(cur as u32));
            let next = if rtt_us > est * w {
                rtt_us
            } else {
                est * w + rtt_us * (1.0 - w)
            };
            let new = (now & 0xFFFF_FFFF) << 32 | u64::from((next as f32).to_bits());
            match self
                .latency
                .compare_exchange_weak(cur, new, Relaxed, Relaxed)
            {
                Ok(_) => return,
                Err(v) => cur = v,
            }
        }
    }

    /// The peak-EWMA latency estimate at `now`, microseconds: the last estimate decayed toward
    /// zero since its sample, so a backend left alone because it was slow is tried again after
    /// a while (as Finagle and Linkerd do). 0 before the first sample.
    pub fn latency_estimate(&self, now: u64, decay_ms: u64) -> f64 {
        let cur = self.latency.load(Relaxed);
        f64::from(f32::from_bits(cur as u32)) * decay_weight(cur, now, decay_ms)
    }

    /// A live request succeeded.
    pub fn observe_success(&self) {
        if self.passive_failures.load(Relaxed) != 0 {
            self.passive_failures.store(0, Relaxed);
        }
    }

    /// A live request failed. `may_eject` says whether the region's ejection cap allows one
    /// more. Returns true when this call ejected the backend.
    pub fn observe_failure(&self, p: &PassivePolicy, may_eject: bool) -> bool {
        if p.consecutive_failures == 0 {
            return false;
        }
        let n = self.passive_failures.fetch_add(1, Relaxed) + 1;
        let now = now_ms();
        if n < p.consecutive_failures || self.is_ejected(now) || !may_eject {
            return false;
        }
        self.eject(p, now);
        true
    }

    /// Track latency outliers: `slow` says whether the backend's estimate is an outlier now.
    /// Returns true when it has been one for `window_ms` (then the tracking starts over).
    pub fn observe_latency_outlier(&self, slow: bool, now: u64, window_ms: u64) -> bool {
        let since = self.slow_since_ms.load(Relaxed);
        if !slow {
            if since != 0 {
                self.slow_since_ms.store(0, Relaxed);
            }
            return false;
        }
        if since == 0 {
            let _ = self
                .slow_since_ms
                .compare_exchange(0, now.max(1), Relaxed, Relaxed);
            return window_ms == 0;
        }
        if now.saturating_sub(since) < window_ms {
            return false;
        }
        self.slow_since_ms.store(0, Relaxed);
        true
    }

    /// Eject a latency outlier (unless already ejected or `may_eject` is false); the ejection
    /// time grows with repeats as for failures. Returns true when this call ejected it.
    pub fn eject_latency_outlier(&self, p: &PassivePolicy, may_eject: bool) -> bool {
        let now = now_ms();
        if !may_eject || self.is_ejected(now) {
            return false;
        }
        self.eject(p, now);
        true
    }

    fn eject(&self, p: &PassivePolicy, now: u64) {
        // Forget earlier ejections once the backend has behaved for a whole max_ejection.
        let until = self.ejected_until_ms.load(Relaxed);
        if until != 0 && now > until.saturating_add(p.max_ejection_ms) {
            self.ejections.store(0, Relaxed);
        }
        let k = self.ejections.fetch_add(1, Relaxed).min(16);
        let dur = p
            .base_ejection_ms
            .saturating_mul(1 << k)
            .min(p.max_ejection_ms.max(1));
        self.ejected_until_ms.store(now + dur, Relaxed);
        self.passive_failures.store(0, Relaxed);
        self.transitions.fetch_add(1, Relaxed);
    }
}

/// `e^(−elapsed/decay)` for a packed latency word, `elapsed` since its sample. Clock reads
/// racing by a little count as no time; a word older than the 32-bit clock can tell (24 days)
/// counts as fully decayed.
fn decay_weight(word: u64, now: u64, decay_ms: u64) -> f64 {
    let d = (now as u32).wrapping_sub((word >> 32) as u32) as i32;
    let elapsed = match d {
        i32::MIN..-60_000 => return 0.0,
        -60_000..0 => 0.0,
        _ => f64::from(d),
    };
    (-elapsed / decay_ms.max(1) as f64).exp()
}

/// A backend's identity across reloads: its service and its configured address or URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey(String);

impl BackendKey {
    /// The key of backend `backend` (address or URL as configured) of service `service`.
    pub fn new(service: &str, backend: &str) -> BackendKey {
        let mut k = String::with_capacity(service.len() + backend.len() + 1);
        k.push_str(service);
        k.push('|');
        k.push_str(backend);
        BackendKey(k)
    }
}

impl std::fmt::Display for BackendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Health state by backend identity, and data-layer state by (service, region), shared by
/// every compiled snapshot.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    map: Mutex<HashMap<BackendKey, Weak<BackendHealth>>>,
    regions: db::DbRegistry,
}

impl HealthRegistry {
    /// The state for `key`, creating it (with `initially_up`) when no live snapshot holds it.
    pub fn get_or_create(&self, key: &BackendKey, initially_up: bool) -> Arc<BackendHealth> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = map.get(key).and_then(Weak::upgrade) {
            return h;
        }
        let h = Arc::new(BackendHealth::new(initially_up));
        map.insert(key.clone(), Arc::downgrade(&h));
        map.retain(|_, w| w.strong_count() > 0);
        h
    }

    /// The data-layer state of `service|region`, created when no live snapshot holds it.
    pub fn region_db(&self, key: &str) -> Arc<db::RegionDb> {
        self.regions.get_or_create(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: PassivePolicy = PassivePolicy {
        consecutive_failures: 3,
        on_5xx: true,
        base_ejection_ms: 1000,
        max_ejection_ms: 5000,
        max_ejection_percent: 50,
        latency_factor: 0.0,
        latency_window_ms: 0,
    };

    #[test]
    fn hysteresis_needs_consecutive_results() {
        let h = BackendHealth::new(true);
        assert_eq!(h.observe_check(false, 2, 3), None);
        assert_eq!(h.observe_check(false, 2, 3), None);
        assert_eq!(h.observe_check(true, 2, 3), None); // streak broken
        assert_eq!(h.observe_check(false, 2, 3), None);
        assert_eq!(h.observe_check(false, 2, 3), None);
        assert_eq!(h.observe_check(false, 2, 3), Some(false));
        assert!(!h.is_up());
        assert_eq!(h.observe_check(true, 2, 3), None);
        assert_eq!(h.observe_check(false, 2, 3), None);
        assert_eq!(h.observe_check(true, 2, 3), None);
        assert_eq!(h.observe_check(true, 2, 3), Some(true));
        assert!(h.is_up() && h.up_since() > 0);
    }

    #[test]
    fn passive_ejection_grows_and_caps() {
        let h = BackendHealth::new(true);
        assert!(!h.observe_failure(&P, true));
        assert!(!h.observe_failure(&P, true));
        assert!(h.observe_failure(&P, true));
        let now = now_ms();
        assert!(!h.is_available(now));
        let first = h.ejected_until_ms.load(Relaxed) - now;
        assert!(first <= 1000);
        h.ejected_until_ms.store(0, Relaxed);
        for _ in 0..3 {
            h.observe_failure(&P, true);
        }
        let second = h.ejected_until_ms.load(Relaxed) - now_ms();
        assert!(second > 1000 && second <= 2000, "{second}");
        // The region cap can forbid ejection.
        let g = BackendHealth::new(true);
        for _ in 0..5 {
            assert!(!g.observe_failure(&P, false));
        }
        assert!(g.is_available(now_ms()));
    }

    #[test]
    fn peak_ewma_rises_at_once_and_decays_slowly() {
        let h = BackendHealth::new(true);
        let t = 3_600_000;
        assert_eq!(h.latency_estimate(t, 10_000), 0.0);
        h.observe_latency(1_000.0, t, 10_000);
        assert_eq!(h.latency_estimate(t, 10_000), 1_000.0);
        // A slower sample replaces the estimate at once.
        h.observe_latency(40_000.0, t + 100, 10_000);
        assert_eq!(h.latency_estimate(t + 100, 10_000), 40_000.0);
        // Faster samples pull it down by 1 − e^(−elapsed/decay) each.
        h.observe_latency(1_000.0, t + 1_100, 10_000);
        let w = (-0.1f64).exp();
        let want = 40_000.0 * w + 1_000.0 * (1.0 - w);
        assert!((h.latency_estimate(t + 1_100, 10_000) - want).abs() < 1.0);
        // Without samples it decays toward zero: one time constant leaves 1/e.
        let later = h.latency_estimate(t + 11_100, 10_000);
        assert!((later - want / std::f64::consts::E).abs() < 1.0, "{later}");
        // A slightly earlier clock read (another thread) counts as no time.
        assert!((h.latency_estimate(t + 1_090, 10_000) - want).abs() < 1.0);
    }

    #[test]
    fn a_latency_outlier_is_reported_after_its_window() {
        let h = BackendHealth::new(true);
        let t = 3_600_000;
        assert!(!h.observe_latency_outlier(true, t, 1_000));
        assert!(!h.observe_latency_outlier(true, t + 999, 1_000));
        // One fast estimate in between starts the window over.
        assert!(!h.observe_latency_outlier(false, t + 1_000, 1_000));
        assert!(!h.observe_latency_outlier(true, t + 1_100, 1_000));
        assert!(!h.observe_latency_outlier(true, t + 2_000, 1_000));
        assert!(h.observe_latency_outlier(true, t + 2_100, 1_000));
        assert!(h.eject_latency_outlier(&P, true));
        assert!(!h.is_available(now_ms()));
        assert!(!h.eject_latency_outlier(&P, true), "already ejected");
        let g = BackendHealth::new(true);
        assert!(
            !g.eject_latency_outlier(&P, false),
            "the region cap forbids it"
        );
    }

    #[test]
    fn registry_keeps_state_while_referenced() {
        let r = HealthRegistry::default();
        let k = BackendKey::new("svc", "10.0.0.1:80");
        let a = r.get_or_create(&k, true);
        a.observe_check(false, 1, 1);
        let b = r.get_or_create(&k, true);
        assert!(!b.is_up());
        drop((a, b));
        assert!(r.get_or_create(&k, true).is_up());
    }
}
