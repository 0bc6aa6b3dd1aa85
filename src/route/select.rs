//! The pure picker: client location → ordered regions → spillover share → one backend.
//!
//! No allocation: region orders live in fixed-size stack arrays; health is read with relaxed
//! atomic loads.

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;

use crate::geo::Location;
use crate::health::BackendHealth;
use crate::route::{
    Backend, BackendIdx, LbPolicy, MAX_REGIONS, Override, PanicMode, Region, RegionIdx, Route,
    Service, SpillPolicy, SrIdx,
};

/// Why the regions are in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderRule {
    /// Great-circle distance adjusted by bias.
    Distance,
    /// The route's override with this index.
    Override(usize),
    /// Location unknown: the route's default order.
    Default,
}

impl OrderRule {
    /// The rule as operators write it (`distance`, `override[N]`, `default_order`).
    pub fn describe(self) -> String {
        match self {
            OrderRule::Distance => "distance".into(),
            OrderRule::Override(i) => format!("override[{i}]"),
            OrderRule::Default => "default_order".into(),
        }
    }
}

/// Candidate regions (indices into `Service::regions`), most preferred first.
#[derive(Debug, Clone, Copy)]
pub struct RegionOrder {
    /// Indices into `Service::regions`, in order; only the first `len` are meaningful.
    pub idx: [SrIdx; MAX_REGIONS],
    /// Great-circle km from the client (NaN when unknown), per position.
    pub dist_km: [f64; MAX_REGIONS],
    /// Preference key per position (biased km, or the position for fixed orders); positions
    /// with equal keys form one tier that shares traffic by healthy weight.
    pub key: [f64; MAX_REGIONS],
    /// Number of regions in the order.
    pub len: usize,
    /// Why the regions are in this order.
    pub rule: OrderRule,
}

impl RegionOrder {
    /// The ordered service-region indices.
    pub fn as_slice(&self) -> &[SrIdx] {
        &self.idx[..self.len]
    }

    /// Keep only the service regions `keep` accepts, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(SrIdx) -> bool) {
        let mut n = 0;
        for p in 0..self.len {
            if keep(self.idx[p]) {
                self.idx[n] = self.idx[p];
                self.dist_km[n] = self.dist_km[p];
                self.key[n] = self.key[p];
                n += 1;
            }
        }
        self.len = n;
    }
}

/// Order the route's service regions for a client.
pub fn order_regions(
    route: &Route,
    regions: &[Region],
    ip: IpAddr,
    loc: Option<&Location>,
) -> RegionOrder {
    let svc = &route.service;
    let rules = OrderRules {
        n: svc.regions.len(),
        default_order: &route.default_order,
        overrides: &route.overrides,
    };
    order_by(&rules, |sr| svc.regions[sr].region, regions, ip, loc)
}

/// What orders a set of regions (a route's service regions, or the regions of a DNS name's
/// targets): how many there are, the order for unknown locations and the override rules.
#[derive(Debug, Clone, Copy)]
pub struct OrderRules<'a> {
    /// Number of candidate regions (`SrIdx(0)..SrIdx(n)`).
    pub n: usize,
    /// Order when the location is unknown (may be empty: one tier).
    pub default_order: &'a [SrIdx],
    /// Location rules that fix the order, first match wins.
    pub overrides: &'a [Override],
}

/// Order candidates `0..rules.n` for a client, `region_of` naming each candidate's region: an
/// override that matches fixes the order, else biased distance, else the default order.
pub fn order_by(
    rules: &OrderRules<'_>,
    region_of: impl Fn(SrIdx) -> RegionIdx,
    regions: &[Region],
    ip: IpAddr,
    loc: Option<&Location>,
) -> RegionOrder {
    let mut o = RegionOrder {
        idx: [SrIdx(0); MAX_REGIONS],
        dist_km: [f64::NAN; MAX_REGIONS],
        key: [0.0; MAX_REGIONS],
        len: 0,
        rule: OrderRule::Default,
    };
    let (country, continent) = loc.map_or((None, None), |l| (l.country, l.continent));
    let fixed = rules
        .overrides
        .iter()
        .position(|ov| ov.matches(ip, country, continent))
        .map(|i| (OrderRule::Override(i), &*rules.overrides[i].order));
    let mut biased = [f64::INFINITY; MAX_REGIONS];
    match (fixed, loc) {
        (Some((rule, order)), _) => {
            o.rule = rule;
            push_all(&mut o, order, rules.n);
        }
        (None, Some(l)) => {
            o.rule = OrderRule::Distance;
            for i in 0..rules.n.min(MAX_REGIONS) {
                let r = &regions[region_of(SrIdx(i))];
                let d = r.distance_km(l);
                let b = d * (1.0 - f64::from(r.bias) / 100.0);
                // Insertion sort by biased distance; ties keep configuration order.
                let mut pos = o.len;
                while pos > 0 && biased[pos - 1] > b {
                    biased[pos] = biased[pos - 1];
                    o.idx[pos] = o.idx[pos - 1];
                    o.dist_km[pos] = o.dist_km[pos - 1];
                    pos -= 1;
                }
                biased[pos] = b;
                o.idx[pos] = SrIdx(i);
                o.dist_km[pos] = d;
                o.len += 1;
            }
        }
        (None, None) => push_all(&mut o, rules.default_order, rules.n),
    }
    // Unknown location and no default order: every region is equally preferred (one tier,
    // shared by weight) rather than the first configured region taking all of it.
    let flat = o.rule == OrderRule::Default && rules.default_order.is_empty();
    let distance = o.rule == OrderRule::Distance;
    for (p, key) in o.key.iter_mut().enumerate().take(o.len) {
        *key = if distance {
            biased[p]
        } else if flat {
            0.0
        } else {
            p as f64
        };
    }

    // Distances for display in fixed orders (the distance rule computed them already).
    if let (Some(l), false) = (loc, distance) {
        for p in 0..o.len {
            let r = &regions[region_of(o.idx[p])];
            o.dist_km[p] = r.distance_km(l);
        }
    }
    o
}

/// Append `order`, then every other service region (configuration order).
fn push_all(o: &mut RegionOrder, order: &[SrIdx], n_regions: usize) {
    for &i in order.iter().take(MAX_REGIONS) {
        o.idx[o.len] = i;
        o.len += 1;
    }
    let named = o.len;
    for i in SrIdx::all(n_regions.min(MAX_REGIONS)) {
        if o.len < MAX_REGIONS && !o.idx[..named].contains(&i) {
            o.idx[o.len] = i;
            o.len += 1;
        }
    }
}

/// Effective weight of a backend now: 0 when unavailable or inside its fail-back delay,
/// ramping over slow start.
pub fn effective_weight(svc: &Service, h: &BackendHealth, weight: u32, now: u64) -> f64 {
    if !h.is_available(now) {
        return 0.0;
    }
    let since = h.up_since();
    if since == 0 {
        return f64::from(weight);
    }
    let age = now.saturating_sub(since);
    let delay = svc.spill.failback_delay_ms;
    if age < delay {
        return 0.0;
    }
    let ramp = svc.spill.slow_start_ms;
    if ramp > 0 && age - delay < ramp {
        let frac = ((age - delay) as f64 / ramp as f64).max(0.05);
        return f64::from(weight) * frac;
    }
    f64::from(weight)
}

/// Healthy share (0..=1) of a service region's weight.
pub fn region_health(svc: &Service, sr: SrIdx, now: u64) -> f64 {
    let r = &svc.regions[sr];
    if r.total_weight == 0 {
        return 0.0;
    }
    let eff: f64 = r
        .backends
        .iter()
        .map(|&b| {
            let be = &svc.backends[b];
            effective_weight(svc, &be.health, be.weight, now)
        })
        .sum();
    eff / r.total_weight as f64
}

/// Traffic shares per position of `order` (sums to 1 unless nothing is healthy).
/// Returns the shares and whether the service is in panic.
pub fn shares(svc: &Service, order: &RegionOrder, now: u64) -> ([f64; MAX_REGIONS], bool) {
    let mut health = [0.0; MAX_REGIONS];
    let mut weight = [0.0; MAX_REGIONS];
    for p in 0..order.len {
        let sr = order.idx[p];
        health[p] = region_health(svc, sr, now);
        weight[p] = svc.regions[sr].total_weight as f64;
    }
    shares_of(order, &health, &weight, &svc.spill)
}

/// [`shares`] from each position's healthy fraction (`health`, 0..=1) and weight: the same
/// tiers, overprovisioning and panic threshold, for any set of regions.
pub fn shares_of(
    order: &RegionOrder,
    health: &[f64; MAX_REGIONS],
    weight: &[f64; MAX_REGIONS],
    spill: &SpillPolicy,
) -> ([f64; MAX_REGIONS], bool) {
    let (mut eff_total, mut weight_total) = (0.0, 0.0);
    for p in 0..order.len {
        eff_total += health[p] * weight[p];
        weight_total += weight[p];
    }
    let mut out = [0.0; MAX_REGIONS];
    let healthy_frac = if weight_total > 0.0 {
        eff_total / weight_total
    } else {
        0.0
    };
    if eff_total <= 0.0 || healthy_frac < spill.panic_threshold {
        return (out, true);
    }
    // Walk tiers (regions at the same biased distance, within 1 km) nearest first: a tier
    // keeps min(remaining, tier health × overprovisioning) and splits it by healthy weight.
    let mut remaining = 1.0;
    let mut p = 0;
    while p < order.len {
        let mut end = p + 1;
        while end < order.len && (order.key[end] - order.key[p]).abs() < 1.0 {
            end += 1;
        }
        let (mut eff, mut total) = (0.0, 0.0);
        for q in p..end {
            eff += health[q] * weight[q];
            total += weight[q];
        }
        let tier_health = if total > 0.0 { eff / total } else { 0.0 };
        let share = (tier_health * spill.overprovisioning).min(remaining);
        for q in p..end {
            out[q] = if eff > 0.0 {
                share * health[q] * weight[q] / eff
            } else {
                0.0
            };
        }
        remaining -= share;
        p = end;
    }
    let sum = 1.0 - remaining;
    if sum > 0.0 && sum < 1.0 {
        for s in out.iter_mut().take(order.len) {
            *s /= sum;
        }
    }
    (out, false)
}

/// The outcome of a pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// Index into `Service::backends`.
    pub backend: BackendIdx,
    /// Position in the region order (0 = nearest).
    pub position: usize,
    /// Picked while the service was in panic (health ignored).
    pub panic: bool,
}

/// Nothing could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPick {
    /// Panic with `fail_closed`, or no backend at all.
    NoHealthy,
    /// Every candidate was already tried.
    Exhausted,
}

/// Pick a backend for an attempt. `tried` holds backends already used by this request;
/// `hash` is the affinity key hash (used by `lb = "hash"`).
pub fn pick(
    svc: &Service,
    order: &RegionOrder,
    now: u64,
    hash: u64,
    tried: &[BackendIdx],
) -> Result<Pick, NoPick> {
    let (mut share, panic) = shares(svc, order, now);
    if panic {
        if svc.spill.panic == PanicMode::FailClosed {
            return Err(NoPick::NoHealthy);
        }
        for p in 0..order.len {
            if let Some(b) = in_region(svc, order.idx[p], now, hash, tried, false) {
                return Ok(Pick {
                    backend: b,
                    position: p,
                    panic: true,
                });
            }
        }
        return Err(NoPick::Exhausted);
    }
    // A retry prefers a region this request has not failed in yet (a failure there hints at
    // trouble with the whole region); it stays in the same region only when nothing else can
    // serve.
    if !tried.is_empty() {
        let mut masked = share;
        for (p, m) in masked.iter_mut().enumerate().take(order.len) {
            if tried
                .iter()
                .any(|&b| svc.backends[b].region == order.idx[p])
            {
                *m = 0.0;
            }
        }
        if masked[..order.len].iter().sum::<f64>() <= 0.0 {
            // The other regions had no share of this client's traffic: take the nearest one
            // that can serve.
            if let Some(p) = (0..order.len).find(|&p| {
                !tried
                    .iter()
                    .any(|&b| svc.backends[b].region == order.idx[p])
                    && region_health(svc, order.idx[p], now) > 0.0
            }) {
                masked[p] = 1.0;
            }
        }
        if masked[..order.len].iter().sum::<f64>() > 0.0 {
            share = masked;
        }
    }
    // Draw a region by share; if it has no untried backend, drop it and draw again.
    for _ in 0..order.len {
        let total: f64 = share[..order.len].iter().sum();
        if total <= 0.0 {
            break;
        }
        // A low-discrepancy sequence (golden-ratio steps) per service: shares are met closely
        // even over a handful of requests, with no shared RNG state.
        let step = svc.draws.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut r = ((step as f64 * 0.618_033_988_749_894_9).fract()) * total;
        let mut chosen = None;
        for (p, &s) in share.iter().enumerate().take(order.len) {
            if s <= 0.0 {
                continue;
            }
            chosen = Some(p);
            if r < s {
                break;
            }
            r -= s;
        }
        let Some(p) = chosen else { break };
        if let Some(b) = in_region(svc, order.idx[p], now, hash, tried, true) {
            return Ok(Pick {
                backend: b,
                position: p,
                panic: false,
            });
        }
        share[p] = 0.0;
    }
    // Shares exhausted by retries: any untried healthy backend, nearest first.
    for p in 0..order.len {
        if let Some(b) = in_region(svc, order.idx[p], now, hash, tried, true) {
            return Ok(Pick {
                backend: b,
                position: p,
                panic: false,
            });
        }
    }
    Err(if tried.is_empty() {
        NoPick::NoHealthy
    } else {
        NoPick::Exhausted
    })
}

/// Choose a backend inside one service region by the service's policy.
fn in_region(
    svc: &Service,
    sr: SrIdx,
    now: u64,
    hash: u64,
    tried: &[BackendIdx],
    need_healthy: bool,
) -> Option<BackendIdx> {
    let region = &svc.regions[sr];
    let ok = |b: BackendIdx| {
        !tried.contains(&b)
            && (!need_healthy || {
                let be = &svc.backends[b];
                effective_weight(svc, &be.health, be.weight, now) > 0.0
            })
    };
    let n = region.backends.len();
    if n == 0 {
        return None;
    }
    match svc.lb {
        LbPolicy::RoundRobin => {
            let t = &region.rr_table;
            let start = region
                .rr_next
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (0..t.len())
                .map(|i| t[(start + i) % t.len()])
                .find(|&b| ok(b))
        }
        LbPolicy::Hash => {
            let ring = &region.ring;
            let start = ring.partition_point(|(p, _)| *p < hash);
            (0..ring.len())
                .map(|i| ring[(start + i) % ring.len()].1)
                .find(|&b| ok(b))
        }
        LbPolicy::LeastRequest => two_choices(&region.backends, ok, |b| {
            let be = &svc.backends[b];
            let w = effective_weight(svc, &be.health, be.weight, now).max(0.05);
            (f64::from(be.health.inflight.load(Relaxed)) + 1.0) / w
        }),
        LbPolicy::PeakEwma => two_choices(&region.backends, ok, |b| {
            let be = &svc.backends[b];
            peak_ewma_cost(svc, be, now)
        }),
    }
}

/// Power of two choices among the backends `ok` accepts: the lower `score` wins.
fn two_choices(
    backends: &[BackendIdx],
    ok: impl Fn(BackendIdx) -> bool,
    score: impl Fn(BackendIdx) -> f64,
) -> Option<BackendIdx> {
    let n = backends.len();
    let r = rand_u64();
    let a = (0..n)
        .map(|i| backends[(r as usize + i) % n])
        .find(|&b| ok(b))?;
    let r2 = (r >> 32) as usize;
    let b = (0..n)
        .map(|i| backends[(r2 + i) % n])
        .find(|&b| ok(b) && b != a);
    match b {
        Some(b) if score(b) < score(a) => Some(b),
        _ => Some(a),
    }
}

/// What a request costs on `be` under `lb = "peak_ewma"`: its latency estimate × (requests in
/// flight + 1), per unit of effective weight (so slow start and weights still apply). A
/// backend with no latency sample yet costs nothing while idle and the most while a request
/// is in flight on it (Finagle's penalty), so it is probed one request at a time.
pub fn peak_ewma_cost(svc: &Service, be: &Backend, now: u64) -> f64 {
    let h = &be.health;
    let pending = f64::from(h.inflight.load(Relaxed));
    let est = h.latency_estimate(now, svc.ewma_decay_ms);
    let w = effective_weight(svc, h, be.weight, now).max(0.05);
    if est <= 0.0 && pending > 0.0 {
        return UNMEASURED_PENALTY + pending;
    }
    est * (pending + 1.0) / w
}

/// The cost of a backend with no latency sample and a request in flight (µs, ~31 years).
const UNMEASURED_PENALTY: f64 = 1e15;

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9E37_79B9, |d| d.as_nanos() as u64);
        let local = 0u8;
        (seed ^ (&local as *const u8 as u64)).max(1)
    });
}

/// xorshift64* per thread: fast, not cryptographic.
pub fn rand_u64() -> u64 {
    RNG.with(|c| {
        let mut x = c.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        c.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// Uniform in [0, 1).
pub fn rand_f64() -> f64 {
    (rand_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// 64-bit FNV-1a followed by a finaliser (stable across runs, for consistent hashing).
pub fn hash_bytes(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64 finaliser.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hash of a client address, without allocating.
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => hash_bytes(&v6.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config::{CompileCtx, compile_str};
    use crate::geo::LocSource;
    use crate::health::HealthRegistry;
    use crate::route::RoutingTable;
    use crate::upstream::UpstreamPool;

    fn table(extra_region: &str, svc_extra: &str) -> RoutingTable {
        let text = format!(
            r#"
[listeners]
http = {{ address = "127.0.0.1:0" }}
admin = "off"
[regions.fra]
location = [50.11, 8.68]
[regions.sin]
location = [1.29, 103.85]
{extra_region}
[services.app]
{svc_extra}
backends = [
  {{ region = "fra", address = "10.0.0.1:80" }},
  {{ region = "fra", address = "10.0.0.2:80" }},
  {{ region = "sin", address = "10.0.1.1:80" }},
  {{ region = "sin", address = "10.0.1.2:80" }},
]
[[routes]]
service = "app"
"#
        );
        let (h, p) = (HealthRegistry::default(), UpstreamPool::default());
        compile_str(
            &text,
            std::path::Path::new("t.toml"),
            &CompileCtx {
                health: &h,
                pool: &p,
            },
        )
        .unwrap()
        .table
    }

    fn at(lat: f64, lon: f64) -> Location {
        Location {
            lat,
            lon,
            country: None,
            continent: None,
            source: LocSource::Record,
        }
    }

    fn ip() -> IpAddr {
        "192.0.2.1".parse().unwrap()
    }

    #[test]
    fn nearest_region_takes_everything_while_healthy() {
        let t = table("", "");
        let r = &t.routes[0];
        let o = order_regions(r, &t.regions, ip(), Some(&at(48.8, 2.3))); // Paris
        assert_eq!(
            t.regions[r.service.regions[o.idx[0]].region].name.as_ref(),
            "fra"
        );
        let (s, panic) = shares(&r.service, &o, crate::time::now_ms());
        assert!(!panic);
        assert_eq!((s[0], s[1]), (1.0, 0.0));
    }

    #[test]
    fn half_a_region_down_spills_thirty_percent() {
        let t = table("", "");
        let r = &t.routes[0];
        r.service.backends[0].health.observe_check(false, 1, 1);
        let o = order_regions(r, &t.regions, ip(), Some(&at(48.8, 2.3)));
        let (s, _) = shares(&r.service, &o, crate::time::now_ms());
        assert!(
            (s[0] - 0.7).abs() < 1e-9 && (s[1] - 0.3).abs() < 1e-9,
            "{s:?}"
        );
        // Both down: everything to the next region.
        r.service.backends[1].health.observe_check(false, 1, 1);
        let (s, panic) = shares(&r.service, &o, crate::time::now_ms());
        assert!(!panic);
        assert_eq!((s[0], s[1]), (0.0, 1.0));
        // Everything down: panic.
        r.service.backends[2].health.observe_check(false, 1, 1);
        r.service.backends[3].health.observe_check(false, 1, 1);
        assert!(shares(&r.service, &o, crate::time::now_ms()).1);
    }

    #[test]
    fn equidistant_regions_share_by_weight() {
        let text = r#"
[listeners]
http = { address = "127.0.0.1:0" }
admin = "off"
[regions.fra-a]
location = [50.11, 8.68]
[regions.fra-b]
location = [50.11, 8.68]
[services.app]
backends = [{ region = "fra-a", address = "10.0.0.1:80" }, { region = "fra-b", address = "10.0.0.2:80", weight = 3 }]
[[routes]]
service = "app"
"#;
        let (h, p) = (HealthRegistry::default(), UpstreamPool::default());
        let t = compile_str(
            text,
            std::path::Path::new("t.toml"),
            &CompileCtx {
                health: &h,
                pool: &p,
            },
        )
        .unwrap()
        .table;
        let r = &t.routes[0];
        let o = order_regions(r, &t.regions, ip(), Some(&at(51.5, -0.1)));
        let (s, _) = shares(&r.service, &o, crate::time::now_ms());
        assert!(
            (s[0] - 0.25).abs() < 1e-9 && (s[1] - 0.75).abs() < 1e-9,
            "{s:?}"
        );
    }

    #[test]
    fn failback_waits_then_ramps() {
        let t = table(
            "",
            "spillover = { failback_delay = \"10s\", slow_start = \"10s\" }",
        );
        let svc = &t.routes[0].service;
        let b = &svc.backends[0];
        b.health.observe_check(false, 1, 1);
        b.health.observe_check(true, 1, 1);
        let since = b.health.up_since();
        assert!(since > 0);
        assert_eq!(effective_weight(svc, &b.health, 1, since + 9_000), 0.0);
        let mid = effective_weight(svc, &b.health, 1, since + 15_000);
        assert!((mid - 0.5).abs() < 0.01, "{mid}");
        assert_eq!(effective_weight(svc, &b.health, 1, since + 21_000), 1.0);
    }

    #[test]
    fn weighted_round_robin_follows_weights() {
        let t = table("", "lb = \"round_robin\"");
        let r = &t.routes[0];
        let o = order_regions(r, &t.regions, ip(), Some(&at(48.8, 2.3)));
        let mut counts = [0usize; 4];
        for _ in 0..100 {
            counts[pick(&r.service, &o, crate::time::now_ms(), 0, &[])
                .unwrap()
                .backend
                .0] += 1;
        }
        assert_eq!(counts, [50, 50, 0, 0]);
    }

    #[test]
    fn unknown_location_without_default_order_spreads_over_all_regions() {
        let t = table("", "lb = \"round_robin\"");
        let r = &t.routes[0];
        let o = order_regions(r, &t.regions, ip(), None);
        let mut per_region = [0usize; 2];
        for _ in 0..100 {
            let b = pick(&r.service, &o, crate::time::now_ms(), 0, &[])
                .unwrap()
                .backend;
            per_region[r.service.backends[b].region.0] += 1;
        }
        // The golden-ratio sequence meets a 50/50 share within one request.
        assert!(per_region[0].abs_diff(50) <= 1, "{per_region:?}");
    }

    #[test]
    fn peak_ewma_avoids_the_slow_backend_and_probes_unmeasured_ones_singly() {
        let t = table("", "lb = \"peak_ewma\"");
        let r = &t.routes[0];
        let svc = &r.service;
        let o = order_regions(r, &t.regions, ip(), Some(&at(48.8, 2.3)));
        let now = crate::time::now_ms();
        // Unmeasured and idle: free. Unmeasured with a request in flight: avoided.
        svc.backends[0].health.inflight.store(1, Relaxed);
        for _ in 0..20 {
            assert_eq!(pick(svc, &o, now, 0, &[]).unwrap().backend, BackendIdx(1));
        }
        svc.backends[0].health.inflight.store(0, Relaxed);
        // 40 ms against 1 ms: the slow one loses every comparison…
        svc.backends[0]
            .health
            .observe_latency(40_000.0, now, 10_000);
        svc.backends[1].health.observe_latency(1_000.0, now, 10_000);
        for _ in 0..20 {
            assert_eq!(pick(svc, &o, now, 0, &[]).unwrap().backend, BackendIdx(1));
        }
        // …until the fast one has 40 requests in flight.
        svc.backends[1].health.inflight.store(40, Relaxed);
        assert_eq!(pick(svc, &o, now, 0, &[]).unwrap().backend, BackendIdx(0));
        svc.backends[1].health.inflight.store(0, Relaxed);
        // Left alone, the slow one's estimate decays (e^-4 × 40 ms < 1 ms) while the fast one
        // keeps being measured: the slow one is tried again.
        let later = now + 10_000 * 4;
        svc.backends[1]
            .health
            .observe_latency(1_000.0, later, 10_000);
        assert_eq!(pick(svc, &o, later, 0, &[]).unwrap().backend, BackendIdx(0));
    }

    #[test]
    fn a_retry_leaves_the_region_that_failed() {
        let t = table("", "lb = \"round_robin\"");
        let r = &t.routes[0];
        let o = order_regions(r, &t.regions, ip(), Some(&at(48.8, 2.3)));
        let now = crate::time::now_ms();
        let first = pick(&r.service, &o, now, 0, &[]).unwrap();
        assert_eq!(r.service.backends[first.backend].region, o.idx[0]);
        let second = pick(&r.service, &o, now, 0, &[first.backend]).unwrap();
        assert_eq!(second.position, 1, "the retry goes to the next region");
        // With the other region down, the retry stays in the first region.
        r.service.backends[2].health.observe_check(false, 1, 1);
        r.service.backends[3].health.observe_check(false, 1, 1);
        let third = pick(&r.service, &o, now, 0, &[first.backend]).unwrap();
        assert_eq!(third.position, 0);
        assert_ne!(third.backend, first.backend);
    }
}
