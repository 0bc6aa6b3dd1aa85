//! The answer decision: which regions a name is answered with for a requester, by the same
//! region order (`route::select::order_by`: overrides, biased distance, default order) and
//! spillover shares (`route::select::shares_of`) as HTTP routing, with each region's health
//! from its backends (as this instance sees them) and its probed edges or targets.
//!
//! Pure and allocation-free: fixed-size arrays, relaxed atomic loads.

use std::net::IpAddr;

use crate::dns::zone::{DnsConfig, DnsName, Endpoint, NameKind, WhenDown};
use crate::geo::Location;
use crate::route::select::{self, OrderRules, RegionOrder};
use crate::route::{MAX_REGIONS, RegionIdx, Snapshot, SrIdx};

/// The address family asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// A records.
    V4,
    /// AAAA records.
    V6,
}

impl Family {
    /// Does `ip` belong to this family?
    pub fn has(self, ip: IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
}

/// What a name is answered with for one requester, and why.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    /// The candidate regions, most preferred first (indices into the name's regions).
    pub order: RegionOrder,
    /// Healthy fraction per position (0 when the region has no address of the family).
    pub health: [f64; MAX_REGIONS],
    /// Share of answers per position (the spillover rule).
    pub shares: [f64; MAX_REGIONS],
    /// Nothing could serve (shares are all zero).
    pub panic: bool,
    /// Positions in `order` answered, first is the drawn region.
    pub chosen: [usize; 2],
    /// How many of `chosen` are used (0 = NODATA or SERVFAIL).
    pub n: usize,
    /// Answer SERVFAIL (`when_down = "servfail"` and nothing healthy).
    pub servfail: bool,
    /// Answered the nearest region although nothing was healthy (`when_down = "fail_open"`).
    pub failed_open: bool,
}

impl Decision {
    /// The chosen positions.
    pub fn chosen(&self) -> &[usize] {
        &self.chosen[..self.n]
    }
}

/// The region behind candidate `sr` of a region-based name.
pub fn region_of(snap: &Snapshot, name: &DnsName, sr: SrIdx) -> RegionIdx {
    match &name.kind {
        NameKind::Route { route } => {
            let svc = &snap.table.routes[*route].service;
            svc.regions[sr].region
        }
        NameKind::Targets { targets, .. } => targets[sr.0].region,
        NameKind::Static { .. } | NameKind::EmptyNonTerminal => RegionIdx(0),
    }
}

/// The addresses candidate `sr` is answered with (all families).
pub fn endpoints<'a>(
    cfg: &'a DnsConfig,
    snap: &Snapshot,
    name: &'a DnsName,
    sr: SrIdx,
) -> &'a [Endpoint] {
    match &name.kind {
        NameKind::Route { .. } => cfg
            .regions
            .get(region_of(snap, name, sr).0)
            .map_or(&[], |r| &r.edges),
        NameKind::Targets { targets, .. } => &targets[sr.0].addrs,
        NameKind::Static { .. } | NameKind::EmptyNonTerminal => &[],
    }
}

/// Healthy fraction of candidate `sr` for `family`: the share of its addresses of that family
/// that are up, times (for a route) the region's backend health.
pub fn health(
    cfg: &DnsConfig,
    snap: &Snapshot,
    name: &DnsName,
    sr: SrIdx,
    family: Family,
    now: u64,
) -> f64 {
    let (mut up, mut total) = (0u32, 0u32);
    for e in endpoints(cfg, snap, name, sr) {
        if family.has(e.ip) {
            total += 1;
            up += u32::from(e.is_up());
        }
    }
    if total == 0 {
        return 0.0;
    }
    let edges = f64::from(up) / f64::from(total);
    match &name.kind {
        NameKind::Route { route } => {
            let svc = &snap.table.routes[*route].service;
            edges * select::region_health(svc, sr, now)
        }
        _ => edges,
    }
}

/// The region order of a region-based name for a requester at `ip` (`None` for other names).
pub fn order(
    snap: &Snapshot,
    name: &DnsName,
    ip: IpAddr,
    loc: Option<&Location>,
) -> Option<RegionOrder> {
    let regions = &snap.table.regions;
    match &name.kind {
        NameKind::Route { route } => Some(select::order_regions(
            &snap.table.routes[*route],
            regions,
            ip,
            loc,
        )),
        NameKind::Targets {
            targets,
            overrides,
            default_order,
            ..
        } => {
            let rules = OrderRules {
                n: targets.len(),
                default_order,
                overrides,
            };
            Some(select::order_by(
                &rules,
                |sr| targets[sr.0].region,
                regions,
                ip,
                loc,
            ))
        }
        NameKind::Static { .. } | NameKind::EmptyNonTerminal => None,
    }
}

/// Decide the answer for `name` asked by a requester at `ip` (the ECS address or the
/// resolver's), `draw` in [0, 1) choosing among regions by their shares. `None` for names
/// that are not region-based.
pub fn decide(
    cfg: &DnsConfig,
    snap: &Snapshot,
    name: &DnsName,
    family: Family,
    ip: IpAddr,
    now: u64,
    draw: f64,
) -> Option<Decision> {
    let loc = snap.geo.locate(ip);
    let order = order(snap, name, ip, loc.as_ref())?;
    let mut d = Decision {
        order,
        health: [0.0; MAX_REGIONS],
        shares: [0.0; MAX_REGIONS],
        panic: false,
        chosen: [0; 2],
        n: 0,
        servfail: false,
        failed_open: false,
    };
    let mut weight = [1.0; MAX_REGIONS];
    for (p, w) in weight.iter_mut().enumerate().take(order.len) {
        let sr = order.idx[p];
        d.health[p] = health(cfg, snap, name, sr, family, now);
        if let NameKind::Route { route } = &name.kind {
            *w = snap.table.routes[*route].service.regions[sr].total_weight as f64;
        }
    }
    let spill = match &name.kind {
        NameKind::Route { route } => &snap.table.routes[*route].service.spill,
        _ => &cfg.target_spill,
    };
    let (shares, panic) = select::shares_of(&order, &d.health, &weight, spill);
    d.shares = shares;
    d.panic = panic;
    if panic {
        fail(cfg, snap, name, family, &mut d);
        return Some(d);
    }
    let total: f64 = shares[..order.len].iter().sum();
    let mut r = draw * total;
    let mut first = None;
    for (p, &s) in shares.iter().enumerate().take(order.len) {
        if s <= 0.0 {
            continue;
        }
        first = Some(p);
        if r < s {
            break;
        }
        r -= s;
    }
    let Some(first) = first else {
        fail(cfg, snap, name, family, &mut d);
        return Some(d);
    };
    d.chosen[0] = first;
    d.n = 1;
    if cfg.answers > 1 {
        if let Some(next) = (0..order.len).find(|&p| p != first && d.health[p] > 0.0) {
            d.chosen[1] = next;
            d.n = 2;
        }
    }
    Some(d)
}

/// Nothing can serve: SERVFAIL, or the nearest region that has addresses of the family.
fn fail(cfg: &DnsConfig, snap: &Snapshot, name: &DnsName, family: Family, d: &mut Decision) {
    if cfg.when_down == WhenDown::Servfail {
        d.servfail = true;
        return;
    }
    let nearest = (0..d.order.len).find(|&p| {
        endpoints(cfg, snap, name, d.order.idx[p])
            .iter()
            .any(|e| family.has(e.ip))
    });
    if let Some(p) = nearest {
        d.chosen[0] = p;
        d.n = 1;
        d.failed_open = true;
    }
}

/// Call `f` with each address answered for chosen position `p` of `d`: the region's up
/// addresses of `family`, or all of them when the decision failed open.
pub fn for_each_address(
    cfg: &DnsConfig,
    snap: &Snapshot,
    name: &DnsName,
    d: &Decision,
    p: usize,
    family: Family,
    mut f: impl FnMut(IpAddr),
) {
    for e in endpoints(cfg, snap, name, d.order.idx[p]) {
        if family.has(e.ip) && (d.failed_open || e.is_up()) {
            f(e.ip);
        }
    }
}
