//! Explain a routing decision and describe live state, as JSON (admin `/explain`, `/status`,
//! and `geolb explain`).

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::route::Service;
use crate::route::Snapshot;
use crate::route::select::{self, effective_weight, region_health};
use crate::time::now_ms;

/// Region state as operators see it.
pub fn region_state(svc: &Service, sr: usize, now: u64) -> &'static str {
    let h = region_health(svc, sr, now);
    let r = &svc.regions[sr];
    let recovering = r.backends.iter().any(|&b| {
        let be = &svc.backends[b];
        be.health.is_available(now)
            && effective_weight(svc, &be.health, be.weight, now) < f64::from(be.weight)
    });
    if h <= 0.0 && !recovering {
        "down"
    } else if recovering {
        "recovering"
    } else if h * svc.spill.overprovisioning < 1.0 {
        "spilling"
    } else {
        "healthy"
    }
}

/// Why a request from `ip` to `host` + `path` would go where it goes.
pub fn explain(snap: &Snapshot, ip: IpAddr, host: &str, path: &str) -> Value {
    let ip = ip.to_canonical();
    let loc = snap.geo.locate(ip);
    let geo = json!({
        "ip": ip.to_string(),
        "found": loc.is_some(),
        "country": loc.and_then(|l| l.country_str()),
        "continent": loc.and_then(|l| l.continent).map(|c| String::from_utf8_lossy(&c).into_owned()),
        "latitude": loc.map(|l| l.lat),
        "longitude": loc.map(|l| l.lon),
        "precision": loc.map_or("unknown", |l| l.source.as_str()),
        "database": snap.geo.info(),
    });
    let mut b = [0u8; 256];
    let host_n = crate::route::normalize_host(host, &mut b)
        .unwrap_or("")
        .to_owned();
    let Some(route) = snap.table.match_route(&host_n, path) else {
        return json!({ "geo": geo, "route": Value::Null, "error": "no route matches this host and path" });
    };
    let svc = &route.service;
    let now = now_ms();
    let order = select::order_regions(route, &snap.table.regions, ip, loc.as_ref());
    let (shares, panic) = select::shares(svc, &order, now);
    let candidates: Vec<Value> = (0..order.len)
        .map(|p| {
            let sr = order.idx[p];
            let region = &snap.table.regions[svc.regions[sr].region];
            let d = order.dist_km[p];
            json!({
                "region": &*region.name,
                "position": p,
                "distance_km": (!d.is_nan()).then(|| (d * 10.0).round() / 10.0),
                "bias": region.bias,
                "health": region_health(svc, sr, now),
                "state": region_state(svc, sr, now),
                "share": shares[p],
                "rule": order.rule.describe(),
                "backends": svc.regions[sr].backends.iter().map(|&i| {
                    let be = &svc.backends[i];
                    json!({ "backend": &*be.name, "available": be.health.is_available(now), "weight": be.weight })
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    let chosen = select::pick(svc, &order, now, select::hash_ip(ip), &[]).ok().map(|p| {
        let be = &svc.backends[p.backend];
        json!({ "backend": &*be.name, "region": &*snap.table.regions[svc.regions[be.region].region].name, "panic": p.panic })
    });
    json!({
        "geo": geo,
        "route": { "name": &*route.name, "service": &*svc.name, "lb": format!("{:?}", svc.lb) },
        "rule": order.rule.describe(),
        "panic": panic,
        "candidates": candidates,
        "chosen": chosen,
    })
}

/// Live state of every service, region and backend.
pub fn status(snap: &Snapshot) -> Value {
    let now = now_ms();
    let services: Vec<Value> = snap
        .table
        .services
        .iter()
        .map(|svc| {
            let total: u64 = svc.regions.iter().map(|r| r.served.load(std::sync::atomic::Ordering::Relaxed)).sum();
            let regions: Vec<Value> = svc
                .regions
                .iter()
                .enumerate()
                .map(|(sr, r)| {
                    let served = r.served.load(std::sync::atomic::Ordering::Relaxed);
                    json!({
                        "region": &*snap.table.regions[r.region].name,
                        "health": region_health(svc, sr, now),
                        "state": region_state(svc, sr, now),
                        "served": served,
                        "traffic_share": if total > 0 { served as f64 / total as f64 } else { 0.0 },
                        "backends": r.backends.iter().map(|&i| {
                            let be = &svc.backends[i];
                            let h = &be.health;
                            json!({
                                "backend": &*be.name,
                                "weight": be.weight,
                                "up": h.is_up(),
                                "ejected": h.is_ejected(now),
                                "available": h.is_available(now),
                                "effective_weight": effective_weight(svc, h, be.weight, now),
                                "ejections": h.ejections(),
                                "inflight": h.inflight.load(std::sync::atomic::Ordering::Relaxed),
                                "transitions": h.transitions.load(std::sync::atomic::Ordering::Relaxed),
                            })
                        }).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({ "service": &*svc.name, "lb": format!("{:?}", svc.lb), "regions": regions })
        })
        .collect();
    json!({
        "generation": snap.generation,
        "summary": snap.summary,
        "geo": snap.geo.info(),
        "services": services,
    })
}
