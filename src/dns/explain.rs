//! What DNS would answer and why (`geolb explain --dns`, admin `/explain?dns=`), and the DNS
//! part of `/status`: every name's regions with their addresses and health.

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::dns::answer::{self, Family};
use crate::dns::zone::{DnsConfig, DnsName, Endpoint, Lookup, NameKind};
use crate::route::{Snapshot, SrIdx};
use crate::time::now_ms;

/// A DNS question to explain.
#[derive(Debug, Clone, Copy)]
pub struct DnsQuery<'a> {
    /// The name asked for.
    pub name: &'a str,
    /// The resolver's address.
    pub ip: IpAddr,
    /// The EDNS Client Subnet (address, source prefix), when the query would carry one.
    pub subnet: Option<(IpAddr, u8)>,
    /// A (false) or AAAA (true).
    pub aaaa: bool,
}

/// `ADDRESS/PREFIX` (e.g. `81.2.69.0/24`) as an ECS source; a bare address is a full prefix.
pub fn parse_subnet(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a.parse::<IpAddr>().ok()?, l.parse::<u8>().ok()?),
        None => {
            let a = s.parse::<IpAddr>().ok()?;
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

/// Why `q` would be answered the way it would.
pub fn explain(cfg: &DnsConfig, snap: &Snapshot, q: &DnsQuery<'_>) -> Value {
    let lower = q.name.trim_end_matches('.').to_ascii_lowercase();
    let (geo_ip, located_by, scope) = match q.subnet {
        Some((addr, source)) if source > 0 => {
            let cap = if addr.is_ipv4() {
                cfg.ecs_max_v4
            } else {
                cfg.ecs_max_v6
            };
            (addr, "client subnet (ECS)", Some(source.min(cap)))
        }
        Some(_) => (q.ip, "resolver address (ECS source prefix 0)", Some(0)),
        None => (q.ip, "resolver address", None),
    };
    let loc = snap.geo.locate(geo_ip);
    let geo = json!({
        "ip": geo_ip.to_string(),
        "located_by": located_by,
        "ecs_scope": scope,
        "country": loc.and_then(|l| l.country_str()),
        "latitude": loc.map(|l| l.lat),
        "longitude": loc.map(|l| l.lon),
        "precision": loc.map_or("unknown", |l| l.source.as_str()),
    });
    let family = if q.aaaa { Family::V6 } else { Family::V4 };
    let qtype = if q.aaaa { "AAAA" } else { "A" };
    let (zone, name) = match cfg.lookup(lower.as_bytes()) {
        Lookup::Outside => {
            return json!({ "name": lower, "qtype": qtype, "geo": geo, "rcode": "REFUSED",
                "why": "outside every configured zone" });
        }
        Lookup::NxDomain { zone } => {
            return json!({ "name": lower, "qtype": qtype, "geo": geo, "zone": &*cfg.zones[zone].apex,
                "rcode": "NXDOMAIN", "why": "no such name in the zone" });
        }
        Lookup::Apex { zone, name: None } => {
            return json!({ "name": lower, "qtype": qtype, "geo": geo, "zone": &*cfg.zones[zone].apex,
                "rcode": "NOERROR", "answer": [], "why": "zone apex: SOA and NS only (NODATA)" });
        }
        Lookup::Apex {
            zone,
            name: Some(name),
        }
        | Lookup::Name { zone, name } => (zone, name),
    };
    let n = &cfg.names[name];
    let mut v = json!({
        "name": lower,
        "qtype": qtype,
        "zone": &*cfg.zones[zone].apex,
        "geo": geo,
        "source": kind(snap, n),
        "ttl": cfg.ttl,
    });
    match &n.kind {
        NameKind::Static { addrs } => {
            let a: Vec<String> = addrs
                .iter()
                .filter(|i| family.has(**i))
                .map(ToString::to_string)
                .collect();
            v["rcode"] = json!("NOERROR");
            v["answer"] = json!(a);
        }
        NameKind::EmptyNonTerminal => {
            v["rcode"] = json!("NOERROR");
            v["answer"] = json!([]);
        }
        NameKind::Route { .. } | NameKind::Targets { .. } => {
            regional(cfg, snap, n, family, geo_ip, &mut v);
        }
    }
    v
}

/// The decision part of an explanation: rule, candidates with health and share, the answer.
fn regional(
    cfg: &DnsConfig,
    snap: &Snapshot,
    n: &DnsName,
    family: Family,
    geo_ip: IpAddr,
    v: &mut Value,
) {
    let now = now_ms();
    let Some(d) = answer::decide(cfg, snap, n, family, geo_ip, now, 0.0) else {
        return;
    };
    v["rule"] = json!(d.order.rule.describe());
    v["panic"] = json!(d.panic);
    v["failed_open"] = json!(d.failed_open);
    v["candidates"] = json!(
        (0..d.order.len)
            .map(|p| {
                let sr = d.order.idx[p];
                let dist = d.order.dist_km[p];
                json!({
                    "region": &*snap.table.regions[answer::region_of(snap, n, sr)].name,
                    "position": p,
                    "distance_km": (!dist.is_nan()).then(|| (dist * 10.0).round() / 10.0),
                    "health": d.health[p],
                    "share": d.shares[p],
                    "addresses": addresses(answer::endpoints(cfg, snap, n, sr)),
                })
            })
            .collect::<Vec<_>>()
    );
    let mut a = Vec::new();
    let mut regions = Vec::new();
    for &p in d.chosen() {
        regions.push(
            snap.table.regions[answer::region_of(snap, n, d.order.idx[p])]
                .name
                .to_string(),
        );
        answer::for_each_address(cfg, snap, n, &d, p, family, |ip| a.push(ip.to_string()));
    }
    v["rcode"] = json!(if d.servfail { "SERVFAIL" } else { "NOERROR" });
    v["answer_regions"] = json!(regions);
    v["answer"] = json!(a);
}

fn kind(snap: &Snapshot, n: &DnsName) -> Value {
    match &n.kind {
        NameKind::Route { route } => json!({ "route": &*snap.table.routes[*route].name }),
        NameKind::Targets { check, .. } => json!({ "targets": true, "checked": check.is_some() }),
        NameKind::Static { .. } => json!("addresses"),
        NameKind::EmptyNonTerminal => json!("empty non-terminal"),
    }
}

fn addresses(eps: &[Endpoint]) -> Vec<Value> {
    eps.iter()
        .map(|e| {
            json!({
                "address": e.ip.to_string(),
                "checked": e.check.map(|c| c.to_string()),
                "up": e.is_up(),
            })
        })
        .collect()
}

/// The DNS part of `/status`: listeners, zones, each region's edges and every name's regions
/// with their addresses, health and answers so far.
pub fn status(cfg: &DnsConfig, snap: &Snapshot) -> Value {
    let now = now_ms();
    let regions: Vec<Value> = snap
        .table
        .regions
        .iter()
        .zip(cfg.regions.iter())
        .map(|(r, e)| {
            json!({
                "region": &*r.name,
                "edges": addresses(&e.edges),
                "answers": e.answered.load(std::sync::atomic::Ordering::Relaxed),
            })
        })
        .collect();
    let names: Vec<Value> = cfg
        .names
        .iter()
        .filter(|n| !matches!(n.kind, NameKind::EmptyNonTerminal))
        .map(|n| {
            let count = match &n.kind {
                NameKind::Route { route } => snap.table.routes[*route].service.regions.len(),
                NameKind::Targets { targets, .. } => targets.len(),
                _ => 0,
            };
            let per_region: Vec<Value> = (0..count)
                .map(|i| {
                    let sr = SrIdx(i);
                    json!({
                        "region": &*snap.table.regions[answer::region_of(snap, n, sr)].name,
                        "health_a": answer::health(cfg, snap, n, sr, Family::V4, now),
                        "health_aaaa": answer::health(cfg, snap, n, sr, Family::V6, now),
                        "addresses": addresses(answer::endpoints(cfg, snap, n, sr)),
                    })
                })
                .collect();
            json!({ "name": &*n.name, "source": kind(snap, n), "regions": per_region })
        })
        .collect();
    json!({
        "udp": cfg.udp.map(|a| a.to_string()),
        "tcp": cfg.tcp.map(|a| a.to_string()),
        "ttl": cfg.ttl,
        "answers": cfg.answers,
        "zones": cfg.zones.iter().map(|z| &*z.apex).collect::<Vec<_>>(),
        "regions": regions,
        "names": names,
    })
}
