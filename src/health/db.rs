//! What each region's database is, as last reported: role (primary or replica) and how far
//! behind it is. Held in atomics next to backend health, keyed by identity so it survives
//! reloads, written by the health checker (or database probes) and read lock-free per request.
//!
//! Times are Unix milliseconds (wall clock): a write's time travels between geolb instances
//! in a cookie, so only the wall clock is comparable.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::Notify;

/// A database's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbRole {
    /// Nothing reported (yet), or the report was not understood.
    Unknown,
    /// Takes writes.
    Primary,
    /// Read-only copy of the primary.
    Replica,
}

impl DbRole {
    /// Parse a reported role: `primary`/`master`/`writer`/`rw` or `replica`/`standby`/
    /// `secondary`/`slave`/`reader`/`ro` (case-insensitive); anything else is `Unknown`.
    pub fn parse(s: &str) -> DbRole {
        let s = s.trim();
        let is = |w: &str| s.eq_ignore_ascii_case(w);
        if ["primary", "master", "writer", "rw", "leader"]
            .iter()
            .any(|w| is(w))
        {
            DbRole::Primary
        } else if [
            "replica",
            "standby",
            "secondary",
            "slave",
            "reader",
            "ro",
            "follower",
        ]
        .iter()
        .any(|w| is(w))
        {
            DbRole::Replica
        } else {
            DbRole::Unknown
        }
    }

    /// Lowercase word for operators.
    pub fn as_str(self) -> &'static str {
        match self {
            DbRole::Unknown => "unknown",
            DbRole::Primary => "primary",
            DbRole::Replica => "replica",
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            DbRole::Unknown => 0,
            DbRole::Primary => 1,
            DbRole::Replica => 2,
        }
    }

    fn from_u8(v: u8) -> DbRole {
        match v {
            1 => DbRole::Primary,
            2 => DbRole::Replica,
            _ => DbRole::Unknown,
        }
    }
}

/// Sentinel for "no value" in the atomics below.
const NONE: u64 = u64::MAX;

/// Lag of a replica whose replication is stopped or broken (MySQL's `Seconds_Behind_Source`
/// is NULL): infinitely behind, so it is skipped by `max_read_lag` and never fresh enough for
/// read-your-writes. Shown as "unbounded".
pub const LAG_UNBOUNDED_MS: u64 = u64::MAX - 1;

/// One reporter's view of its database (a backend's health answer, or a database probe).
#[derive(Debug)]
pub struct DbReport {
    role: AtomicU8,
    /// Replica lag in ms; `NONE` when not reported.
    lag_ms: AtomicU64,
    /// The data is at least as new as this Unix ms (report time − lag); `NONE` when unknown.
    as_of_ms: AtomicU64,
}

impl Default for DbReport {
    fn default() -> Self {
        DbReport {
            role: AtomicU8::new(0),
            lag_ms: AtomicU64::new(NONE),
            as_of_ms: AtomicU64::new(NONE),
        }
    }
}

/// A snapshot of a [`DbReport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbView {
    /// The reported role.
    pub role: DbRole,
    /// Replica lag in ms (0 for a primary); `None` when not reported.
    pub lag_ms: Option<u64>,
    /// The data is at least as new as this Unix ms; `None` when unknown.
    pub as_of_ms: Option<u64>,
}

impl DbReport {
    /// Record a report made at `now_unix_ms`. A primary has no lag; a replica without a
    /// lag value keeps `lag_ms` unknown (it never qualifies by freshness).
    pub fn record(&self, role: DbRole, lag_ms: Option<u64>, now_unix_ms: u64) -> bool {
        let lag = match role {
            DbRole::Primary => Some(0),
            _ => lag_ms,
        };
        let before = self.view();
        self.role.store(role.to_u8(), Relaxed);
        self.lag_ms.store(lag.unwrap_or(NONE), Relaxed);
        let as_of = lag.map_or(NONE, |l| now_unix_ms.saturating_sub(l));
        self.as_of_ms.store(as_of, Relaxed);
        let changed = before.role != role;
        if changed {
            notify_changed();
        }
        changed
    }

    /// Forget the report (the reporter stopped answering).
    pub fn clear(&self) {
        let had = self.role.swap(0, Relaxed) != 0;
        self.lag_ms.store(NONE, Relaxed);
        self.as_of_ms.store(NONE, Relaxed);
        if had {
            notify_changed();
        }
    }

    /// The report now.
    pub fn view(&self) -> DbView {
        let opt = |v: u64| (v != NONE).then_some(v);
        DbView {
            role: DbRole::from_u8(self.role.load(Relaxed)),
            lag_ms: opt(self.lag_ms.load(Relaxed)),
            as_of_ms: opt(self.as_of_ms.load(Relaxed)),
        }
    }
}

/// Why a database probe failed (a bounded set: the `reason` label of
/// `geolb_db_probe_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeError {
    /// TCP connect refused, unreachable or the name did not resolve.
    Connect,
    /// The server rejected the credentials.
    Auth,
    /// Connect or a query did not finish within `probe_timeout`.
    Timeout,
    /// The connection broke, or the server spoke its protocol wrongly.
    Protocol,
    /// The server answered a probe query with an error (privileges, missing heartbeat table).
    Query,
    /// The peer answered, but not as a database of the configured kind.
    NotDatabase,
}

impl ProbeError {
    /// Every reason, in label order.
    pub const ALL: [ProbeError; 6] = [
        ProbeError::Connect,
        ProbeError::Auth,
        ProbeError::Timeout,
        ProbeError::Protocol,
        ProbeError::Query,
        ProbeError::NotDatabase,
    ];

    /// Metric label and status word.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeError::Connect => "connect",
            ProbeError::Auth => "auth",
            ProbeError::Timeout => "timeout",
            ProbeError::Protocol => "protocol",
            ProbeError::Query => "query",
            ProbeError::NotDatabase => "not_database",
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            ProbeError::Connect => 1,
            ProbeError::Auth => 2,
            ProbeError::Timeout => 3,
            ProbeError::Protocol => 4,
            ProbeError::Query => 5,
            ProbeError::NotDatabase => 6,
        }
    }

    fn from_u8(v: u8) -> Option<ProbeError> {
        ProbeError::ALL.into_iter().find(|e| e.to_u8() == v)
    }
}

/// Per (service, region) data-layer state that must survive reloads.
#[derive(Debug, Default)]
pub struct RegionDb {
    /// Reads skip this region: its lag crossed `max_read_lag` and has not yet fallen below
    /// the recovery threshold (hysteresis).
    pub lag_skipped: AtomicBool,
    /// What a database probe of this region's database last said (not used when the
    /// service has no probes configured).
    pub probe: DbReport,
    /// The probe reached the database on its last attempt.
    pub probe_ok: AtomicBool,
    /// Why the last probe failed (0 = it did not, or nothing probed yet).
    probe_error: AtomicU8,
    /// The last probe failure's message, for `/status` (never holds a password: probes
    /// pass credentials separately, and drivers do not echo them).
    probe_message: Mutex<Option<Box<str>>>,
}

impl RegionDb {
    /// A probe reached the database and read `role` and `lag_ms` at `now_unix_ms`.
    pub fn probe_succeeded(&self, role: DbRole, lag_ms: Option<u64>, now_unix_ms: u64) {
        let role_changed = self.probe.record(role, lag_ms, now_unix_ms);
        self.probe_error.store(0, Relaxed);
        let was_ok = self.probe_ok.swap(true, Relaxed);
        *self.probe_message.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // After `probe_ok` is set: a held write woken by the role change must see it.
        if !was_ok || role_changed {
            notify_changed();
        }
    }

    /// A probe failed: the region's database is unreachable (its report is forgotten).
    pub fn probe_failed(&self, why: ProbeError, message: &str) {
        let was_ok = self.probe_ok.swap(false, Relaxed);
        self.probe_error.store(why.to_u8(), Relaxed);
        *self.probe_message.lock().unwrap_or_else(|e| e.into_inner()) = Some(message.into());
        self.probe.clear();
        if was_ok {
            notify_changed();
        }
    }

    /// Nothing probes this region any more: forget what the last probe said.
    pub fn probe_stopped(&self) {
        self.probe_ok.store(false, Relaxed);
        self.probe_error.store(0, Relaxed);
        *self.probe_message.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.probe.clear();
    }

    /// Why the last probe failed, and its message; `None` when it did not.
    pub fn probe_error(&self) -> Option<(ProbeError, Box<str>)> {
        let why = ProbeError::from_u8(self.probe_error.load(Relaxed))?;
        let msg = self
            .probe_message
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default();
        Some((why, msg))
    }
}

/// Region data-layer state by identity (`service|region`), shared by every snapshot.
#[derive(Debug, Default)]
pub struct DbRegistry {
    map: Mutex<HashMap<String, Weak<RegionDb>>>,
}

impl DbRegistry {
    /// The state for `key`, created when no live snapshot holds it.
    pub fn get_or_create(&self, key: &str) -> Arc<RegionDb> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = map.get(key).and_then(Weak::upgrade) {
            return h;
        }
        let h = Arc::new(RegionDb::default());
        map.insert(key.to_owned(), Arc::downgrade(&h));
        map.retain(|_, w| w.strong_count() > 0);
        h
    }
}

fn changes() -> &'static Notify {
    static N: OnceLock<Notify> = OnceLock::new();
    N.get_or_init(Notify::new)
}

/// Wake everything waiting for a role or health change (held writes).
pub fn notify_changed() {
    changes().notify_waiters();
}

/// Resolves at the next role or health change. Create it (and `enable` it) before checking
/// the state it waits on, so a change in between is not missed.
pub fn changed() -> tokio::sync::futures::Notified<'static> {
    changes().notified()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_common_spellings() {
        assert_eq!(DbRole::parse(" Primary "), DbRole::Primary);
        assert_eq!(DbRole::parse("master"), DbRole::Primary);
        assert_eq!(DbRole::parse("standby"), DbRole::Replica);
        assert_eq!(DbRole::parse("REPLICA"), DbRole::Replica);
        assert_eq!(DbRole::parse("primaryx"), DbRole::Unknown);
        assert_eq!(DbRole::parse(""), DbRole::Unknown);
    }

    #[test]
    fn reports_record_lag_and_freshness() {
        let r = DbReport::default();
        assert_eq!(r.view().role, DbRole::Unknown);
        assert!(r.record(DbRole::Replica, Some(2_500), 1_000_000));
        let v = r.view();
        assert_eq!(v.lag_ms, Some(2_500));
        assert_eq!(v.as_of_ms, Some(997_500));
        assert!(!r.record(DbRole::Replica, None, 1_001_000));
        assert_eq!(r.view().as_of_ms, None);
        assert!(r.record(DbRole::Primary, Some(99), 1_002_000));
        assert_eq!(r.view().lag_ms, Some(0));
        assert_eq!(r.view().as_of_ms, Some(1_002_000));
        r.clear();
        assert_eq!(r.view().role, DbRole::Unknown);
    }
}
