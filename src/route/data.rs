//! The data layer: which requests are writes, which region holds the primary database,
//! which regions a read may use (replica lag, read-your-writes), all decided from the
//! compiled policy and the role/lag atomics — no allocation, no lock.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http::{HeaderName, Method};

use crate::health::db::{DbRole, DbView, RegionDb};
use crate::health::dbspec::{DbProbes, Unreachable};
use crate::observe::metrics::DataMetrics;
use crate::route::select::RegionOrder;
use crate::route::{Route, Service, SrIdx};

/// Where writes may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Every region takes writes (multi-primary, or no database to care about).
    Any,
    /// Only the region holding the primary database takes writes.
    Primary,
}

/// How the primary region is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimarySource {
    /// Fixed in the configuration (index into `Service::regions`).
    Static(SrIdx),
    /// The region whose available backends (or database probe) report `primary`.
    Auto,
}

/// Read-your-writes: a signed cookie with the client's last write time.
#[derive(Debug)]
pub struct Ryw {
    /// How long after a write its cookie holds reads to fresh regions (ms).
    pub ttl_ms: u64,
    /// Cookie name.
    pub cookie: Box<str>,
    /// HMAC-SHA256 key shared by every geolb instance.
    pub key: aws_lc_rs::hmac::Key,
}

/// A service's data-layer policy, compiled.
#[derive(Debug)]
pub struct DataPolicy {
    /// Where writes go.
    pub writes: WriteMode,
    /// How the primary is known.
    pub primary: PrimarySource,
    /// Health-answer header with the backend's database role.
    pub role_header: HeaderName,
    /// Health-answer header with the replica lag in seconds (decimal).
    pub lag_header: HeaderName,
    /// Reads skip a region whose lag exceeds this (ms).
    pub max_read_lag_ms: Option<u64>,
    /// …until its lag falls to this (ms): hysteresis.
    pub read_lag_recover_ms: u64,
    /// How long a write waits for a primary before 503.
    pub write_hold: Duration,
    /// Read-your-writes, when configured.
    pub ryw: Option<Ryw>,
    /// Methods that are writes unless a route rule says otherwise.
    pub write_methods: Box<[Method]>,
    /// Per service region (same index): state that survives reloads.
    pub regions: Box<[Arc<RegionDb>]>,
    /// Database probes (`databases`): the regions they cover take role and lag from them.
    pub probes: Option<DbProbes>,
    /// Pre-bound metric handles.
    pub(crate) metrics: DataMetrics,
}

/// A route's exception to the method rule: requests with this method (any when `None`) and
/// path prefix are writes (`write`) or reads.
#[derive(Debug, Clone)]
pub struct RwRule {
    /// The method, or any.
    pub method: Option<Method>,
    /// Path prefix.
    pub prefix: Box<str>,
    /// Whether matching requests are writes.
    pub write: bool,
}

/// Is this request a write? The longest matching route rule decides (a tie makes it a
/// write); without one, the service's write methods.
pub fn is_write(policy: &DataPolicy, route: &Route, method: &Method, path: &str) -> bool {
    let mut best: Option<(usize, bool)> = None;
    for r in route.rw_rules.iter() {
        if r.method.as_ref().is_some_and(|m| m != method) || !path.starts_with(&*r.prefix) {
            continue;
        }
        let len = r.prefix.len();
        match best {
            Some((l, w)) if l > len || (l == len && w) => {}
            _ => best = Some((len, r.write)),
        }
    }
    best.map_or_else(|| policy.write_methods.contains(method), |(_, w)| w)
}

/// Where a region's role and lag come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbSource {
    /// Its backends' health answers.
    HealthAnswers,
    /// A database probe that reached the database on its last attempt.
    Probe,
    /// A database probe that did not: the region is not eligible for writes (nor for reads
    /// with `unreachable = "ineligible"`).
    ProbeFailed,
}

/// Where region `sr`'s role and lag come from now.
pub fn db_source(svc: &Service, sr: SrIdx) -> DbSource {
    let Some(policy) = &svc.data else {
        return DbSource::HealthAnswers;
    };
    let probed = policy
        .probes
        .as_ref()
        .is_some_and(|p| p.regions.get(sr.0).is_some_and(Option::is_some));
    if !probed {
        DbSource::HealthAnswers
    } else if policy.regions[sr.0].probe_ok.load(Relaxed) {
        DbSource::Probe
    } else {
        DbSource::ProbeFailed
    }
}

/// Nothing known.
const UNKNOWN: DbView = DbView {
    role: DbRole::Unknown,
    lag_ms: None,
    as_of_ms: None,
};

/// A region's database as routing sees it: the probe's report when the service probes that
/// region's database (nothing while the probe fails), else the most conservative report
/// among its available backends (any primary makes the region primary; the largest lag and
/// the oldest data win).
pub fn region_view(svc: &Service, sr: SrIdx, now: u64) -> DbView {
    match db_source(svc, sr) {
        DbSource::HealthAnswers => backends_view(svc, sr, now),
        DbSource::ProbeFailed => UNKNOWN,
        DbSource::Probe => svc
            .data
            .as_ref()
            .map_or(UNKNOWN, |p| p.regions[sr.0].probe.view()),
    }
}

fn backends_view(svc: &Service, sr: SrIdx, now: u64) -> DbView {
    let mut role = DbRole::Unknown;
    let mut lag: Option<u64> = None;
    let mut as_of: Option<u64> = None;
    let mut replicas_without_lag = false;
    for &b in svc.regions[sr].backends.iter() {
        let be = &svc.backends[b];
        if !be.health.is_available(now) {
            continue;
        }
        let v = be.health.db.view();
        match v.role {
            DbRole::Primary => role = DbRole::Primary,
            DbRole::Replica if role != DbRole::Primary => role = DbRole::Replica,
            _ => {}
        }
        if v.role == DbRole::Replica && v.lag_ms.is_none() {
            replicas_without_lag = true;
        }
        lag = max_opt(lag, v.lag_ms);
        as_of = match (as_of, v.as_of_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    if role == DbRole::Primary {
        return DbView {
            role,
            lag_ms: Some(0),
            as_of_ms: as_of,
        };
    }
    if replicas_without_lag {
        // One replica that does not say how far behind it is makes the region's freshness
        // unknown: never assume it is fresh.
        return DbView {
            role,
            lag_ms: None,
            as_of_ms: None,
        };
    }
    DbView {
        role,
        lag_ms: lag,
        as_of_ms: as_of,
    }
}

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

/// Which region takes writes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primary {
    /// This service region.
    One(SrIdx),
    /// No region reports a primary (a failover in progress, or nothing reports).
    None,
    /// More than one region reports a primary: writes are held, never guessed.
    SplitBrain,
}

/// The primary region now. With a static primary, that region (unless its database probe
/// fails); with `auto`, the one region whose database probe (or available backends) report
/// `primary`. A region whose probe fails is never the primary.
pub fn primary(svc: &Service, policy: &DataPolicy, now: u64) -> Primary {
    if let PrimarySource::Static(sr) = policy.primary {
        if db_source(svc, sr) == DbSource::ProbeFailed {
            return Primary::None;
        }
        return Primary::One(sr);
    }
    let mut found = Primary::None;
    for sr in svc.srs() {
        if region_view(svc, sr, now).role == DbRole::Primary {
            found = match found {
                Primary::None => Primary::One(sr),
                _ => return Primary::SplitBrain,
            };
        }
    }
    found
}

/// Why a read skipped a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Replica lag above `max_read_lag` (hysteresis).
    Lag,
    /// Older than the client's last write (read-your-writes).
    Stale,
    /// Its database probe fails and `unreachable = "ineligible"`.
    Unreachable,
}

/// Should a read skip service region `sr`? `write_ms` is the client's last write (Unix ms)
/// from a valid cookie. Updates the lag hysteresis. The primary never skips.
pub fn read_skip(
    svc: &Service,
    policy: &DataPolicy,
    sr: SrIdx,
    primary: Primary,
    write_ms: Option<u64>,
    now: u64,
) -> Option<Skip> {
    let source = db_source(svc, sr);
    if source == DbSource::ProbeFailed
        && policy
            .probes
            .as_ref()
            .is_some_and(|p| p.unreachable == Unreachable::Ineligible)
    {
        return Some(Skip::Unreachable);
    }
    let view = region_view(svc, sr, now);
    if primary == Primary::One(sr) || view.role == DbRole::Primary {
        return None;
    }
    if let Some(max) = policy.max_read_lag_ms {
        let state = &policy.regions[sr.0].lag_skipped;
        let skipped = state.load(Relaxed);
        match view.lag_ms {
            Some(l) if !skipped && l > max => state.store(true, Relaxed),
            Some(l) if skipped && l <= policy.read_lag_recover_ms => state.store(false, Relaxed),
            // A replica that does not say how far behind it is (replication stopped: MySQL
            // reports NULL) is treated as too far behind.
            None if view.role == DbRole::Replica => state.store(true, Relaxed),
            _ => {}
        }
        if state.load(Relaxed) {
            return Some(Skip::Lag);
        }
    }
    if let Some(w) = write_ms {
        if view.as_of_ms.is_none_or(|a| a < w) {
            return Some(Skip::Stale);
        }
    }
    None
}

/// How read-your-writes decided a read (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RywDecision {
    /// The nearest region was fresh enough.
    Nearest,
    /// A stale region was skipped for a fresher one.
    Redirected,
    /// No region qualified; the read went to its normal order.
    Fallback,
    /// The cookie was forged, malformed or expired, and ignored.
    Invalid,
}

impl RywDecision {
    /// Every decision, in metric order.
    pub const ALL: [RywDecision; 4] = [
        RywDecision::Nearest,
        RywDecision::Redirected,
        RywDecision::Fallback,
        RywDecision::Invalid,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RywDecision::Nearest => "nearest",
            RywDecision::Redirected => "redirected",
            RywDecision::Fallback => "fallback",
            RywDecision::Invalid => "invalid",
        }
    }
}

/// Drop the regions a read must skip from `order`. Returns whether any was dropped and
/// whether the result is empty (then `order` is left as it was: a read is never refused
/// for freshness, it goes to its normal order).
pub fn filter_reads(
    svc: &Service,
    policy: &DataPolicy,
    order: &mut RegionOrder,
    write_ms: Option<u64>,
    now: u64,
) -> (bool, bool) {
    let primary = primary(svc, policy, now);
    let mut kept = *order;
    kept.retain(|sr| read_skip(svc, policy, sr, primary, write_ms, now).is_none());
    if kept.len == 0 {
        return (order.len > 0, true);
    }
    let dropped = kept.len < order.len;
    *order = kept;
    (dropped, false)
}

/// Cookie value version tag.
const COOKIE_V: &[u8] = b"v1";

/// The cookie value for a write at `write_ms`: `v1.<ms>.<hex hmac>` into `buf`; returns
/// the written prefix. The MAC covers the version, the service name and the time.
pub fn sign_cookie<'b>(ryw: &Ryw, service: &str, write_ms: u64, buf: &'b mut [u8; 96]) -> &'b [u8] {
    let mut ms = itoa_u64(write_ms);
    let digits = ms.as_str().as_bytes();
    let tag = mac(ryw, service, digits);
    let mut n = 0;
    for part in [COOKIE_V, b".", digits, b"."] {
        buf[n..n + part.len()].copy_from_slice(part);
        n += part.len();
    }
    for b in tag.as_ref() {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        buf[n] = HEX[usize::from(b >> 4)];
        buf[n + 1] = HEX[usize::from(b & 15)];
        n += 2;
    }
    ms.clear();
    &buf[..n]
}

fn mac(ryw: &Ryw, service: &str, digits: &[u8]) -> aws_lc_rs::hmac::Tag {
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&ryw.key);
    ctx.update(COOKIE_V);
    ctx.update(b".");
    ctx.update(service.as_bytes());
    ctx.update(b".");
    ctx.update(digits);
    ctx.sign()
}

/// A read-your-writes cookie that is present but must be ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("read-your-writes cookie is forged, malformed or expired")]
pub struct BadCookie;

/// The write time in a cookie value, if the MAC verifies (constant time) and it has not
/// expired at `now_unix_ms`.
pub fn verify_cookie(
    ryw: &Ryw,
    service: &str,
    value: &[u8],
    now_unix_ms: u64,
) -> Result<u64, BadCookie> {
    let rest = value.strip_prefix(COOKIE_V).ok_or(BadCookie)?;
    let rest = rest.strip_prefix(b".").ok_or(BadCookie)?;
    let dot = rest.iter().position(|&b| b == b'.').ok_or(BadCookie)?;
    let (digits, hex) = (&rest[..dot], &rest[dot + 1..]);
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(BadCookie);
    }
    let mut tag = [0u8; 32];
    if hex.len() != 64 {
        return Err(BadCookie);
    }
    for (i, pair) in hex.chunks(2).enumerate() {
        let nib = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        tag[i] = (nib(pair[0]).ok_or(BadCookie)? << 4) | nib(pair[1]).ok_or(BadCookie)?;
    }
    let expected = mac(ryw, service, digits);
    if !constant_eq(expected.as_ref(), &tag) {
        return Err(BadCookie);
    }
    let ms = digits
        .iter()
        .try_fold(0u64, |a, &d| {
            a.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or(BadCookie)?;
    // Expired, or from the future beyond a minute of clock skew between instances.
    if now_unix_ms > ms.saturating_add(ryw.ttl_ms) || ms > now_unix_ms.saturating_add(60_000) {
        return Err(BadCookie);
    }
    Ok(ms)
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Decimal digits of a u64 on the stack.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[self.start..]).unwrap_or("0")
    }

    fn clear(&mut self) {
        self.start = self.buf.len();
    }
}

fn itoa_u64(mut v: u64) -> Digits {
    let mut d = Digits {
        buf: [0; 20],
        start: 20,
    };
    loop {
        d.start -= 1;
        d.buf[d.start] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ryw() -> Ryw {
        Ryw {
            ttl_ms: 10_000,
            cookie: "geolb_rw".into(),
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &[7u8; 32]),
        }
    }

    #[test]
    fn cookies_round_trip_and_reject_tampering() {
        let r = ryw();
        let mut buf = [0u8; 96];
        let v = sign_cookie(&r, "shop", 1_700_000_000_123, &mut buf).to_vec();
        assert!(
            v.starts_with(b"v1.1700000000123."),
            "{}",
            String::from_utf8_lossy(&v)
        );
        assert_eq!(
            verify_cookie(&r, "shop", &v, 1_700_000_001_000),
            Ok(1_700_000_000_123)
        );
        // Another service, a changed time, a changed MAC, garbage: all rejected.
        assert!(verify_cookie(&r, "other", &v, 1_700_000_001_000).is_err());
        let mut t = v.clone();
        t[5] = b'9';
        assert!(verify_cookie(&r, "shop", &t, 1_700_000_001_000).is_err());
        let mut t = v.clone();
        let last = t.len() - 1;
        t[last] = if t[last] == b'0' { b'1' } else { b'0' };
        assert!(verify_cookie(&r, "shop", &t, 1_700_000_001_000).is_err());
        for junk in [&b""[..], b"v1", b"v1.", b"v1.12.", b"v2.1.00", b"v1.x.00"] {
            assert!(verify_cookie(&r, "shop", junk, 1).is_err());
        }
        // Expired after the ttl; far-future times are refused.
        assert!(verify_cookie(&r, "shop", &v, 1_700_000_010_124).is_err());
        assert!(verify_cookie(&r, "shop", &v, 1_600_000_000_000).is_err());
        // Another key does not verify.
        let other = Ryw {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &[8u8; 32]),
            ..ryw()
        };
        assert!(verify_cookie(&other, "shop", &v, 1_700_000_001_000).is_err());
    }

    #[test]
    fn digits() {
        assert_eq!(itoa_u64(0).as_str(), "0");
        assert_eq!(itoa_u64(u64::MAX).as_str(), "18446744073709551615");
    }
}
