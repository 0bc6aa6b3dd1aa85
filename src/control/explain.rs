//! Explain a routing decision and describe live state, as JSON (admin `/explain`, `/status`,
//! and `geolb explain`).

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::health::db::LAG_UNBOUNDED_MS;
use crate::route::Snapshot;
use crate::route::data::{self, DataPolicy, Primary, Skip, WriteMode};
use crate::route::select::{self, effective_weight, region_health};
use crate::route::{Service, SrIdx};
use crate::time::{now_ms, unix_ms};

/// Region state as operators see it.
pub fn region_state(svc: &Service, sr: SrIdx, now: u64) -> &'static str {
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

/// A request to explain.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    /// The client's address.
    pub ip: IpAddr,
    /// Host (with or without port).
    pub host: &'a str,
    /// Request path.
    pub path: &'a str,
    /// Request method (reads and writes route differently with a data layer).
    pub method: http::Method,
    /// The client wrote this many seconds ago (as if it carried a read-your-writes cookie).
    pub wrote_secs_ago: Option<f64>,
}

/// Why a GET from `ip` to `host` + `path` would go where it goes.
pub fn explain(snap: &Snapshot, ip: IpAddr, host: &str, path: &str) -> Value {
    explain_query(
        snap,
        &Query {
            ip,
            host,
            path,
            method: http::Method::GET,
            wrote_secs_ago: None,
        },
    )
}

/// Why a request would go where it goes: geo, route, region order with each region's
/// health, share and (with a data layer) database role, lag and skip reason.
pub fn explain_query(snap: &Snapshot, q: &Query<'_>) -> Value {
    let ip = q.ip.to_canonical();
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
    let host_n = crate::route::normalize_host(q.host, &mut b)
        .unwrap_or("")
        .to_owned();
    let Some(route) = snap.table.match_route(&host_n, q.path) else {
        return json!({ "geo": geo, "route": Value::Null, "error": "no route matches this host and path" });
    };
    let svc = &route.service;
    let now = now_ms();
    let full = select::order_regions(route, &snap.table.regions, ip, loc.as_ref());
    let mut order = full;
    let data = svc
        .data
        .as_ref()
        .map(|policy| explain_data(snap, route, policy, q, &mut order, now));
    let (shares, panic) = select::shares(svc, &order, now);
    let candidates: Vec<Value> = (0..order.len)
        .map(|p| candidate(snap, svc, &order, p, shares[p], now))
        .collect();
    let chosen = select::pick(svc, &order, now, select::hash_ip(ip), &[]).ok().map(|p| {
        let be = &svc.backends[p.backend];
        json!({ "backend": &*be.name, "region": &*snap.table.region_of(svc, be.region).name, "panic": p.panic })
    });
    json!({
        "geo": geo,
        "route": { "name": &*route.name, "service": &*svc.name, "lb": format!("{:?}", svc.lb) },
        "rule": order.rule.describe(),
        "panic": panic,
        "data": data,
        "candidates": candidates,
        "chosen": chosen,
    })
}

fn candidate(
    snap: &Snapshot,
    svc: &Service,
    order: &select::RegionOrder,
    p: usize,
    share: f64,
    now: u64,
) -> Value {
    let sr = order.idx[p];
    let region = snap.table.region_of(svc, sr);
    let d = order.dist_km[p];
    json!({
        "region": &*region.name,
        "position": p,
        "distance_km": (!d.is_nan()).then(|| (d * 10.0).round() / 10.0),
        "bias": region.bias,
        "health": region_health(svc, sr, now),
        "state": region_state(svc, sr, now),
        "share": share,
        "rule": order.rule.describe(),
        "backends": svc.regions[sr].backends.iter().map(|&i| {
            let be = &svc.backends[i];
            json!({ "backend": &*be.name, "available": be.health.is_available(now), "weight": be.weight })
        }).collect::<Vec<_>>(),
    })
}

/// The data layer's part of an explanation; narrows `order` as the request would.
fn explain_data(
    snap: &Snapshot,
    route: &crate::route::Route,
    policy: &DataPolicy,
    q: &Query<'_>,
    order: &mut select::RegionOrder,
    now: u64,
) -> Value {
    let svc = &route.service;
    let write = data::is_write(policy, route, &q.method, q.path);
    let primary = data::primary(svc, policy, now);
    let name = |sr: SrIdx| snap.table.region_of(svc, sr).name.to_string();
    let primary_v = match primary {
        Primary::One(sr) => json!(name(sr)),
        Primary::None => Value::Null,
        Primary::SplitBrain => json!("split-brain"),
    };
    let write_ms = q
        .wrote_secs_ago
        .map(|s| unix_ms().saturating_sub((s.max(0.0) * 1000.0) as u64));
    let regions: Vec<Value> = svc
        .srs()
        .map(|sr| {
            let skip = (!write)
                .then(|| data::read_skip(svc, policy, sr, primary, write_ms, now))
                .flatten();
            let mut v = region_db(svc, policy, sr, now);
            v["region"] = json!(name(sr));
            v["skipped"] = json!(skip.map(|s| match s {
                Skip::Lag => "lag above max_read_lag",
                Skip::Stale => "older than the client's last write",
                Skip::Unreachable => "database unreachable (unreachable = \"ineligible\")",
            }));
            v
        })
        .collect();
    let mut note = Value::Null;
    if write && policy.writes == WriteMode::Primary {
        match primary {
            Primary::One(sr) => order.retain(|x| x == sr),
            _ => {
                note = json!(
                    "no primary now: the write would be held for write_hold, then answered 503"
                )
            }
        }
    } else if !write {
        let (_, none_left) = data::filter_reads(svc, policy, order, write_ms, now);
        if none_left {
            note = json!("no region qualifies: the read goes to its normal order");
        }
    }
    json!({
        "request": if write { "write" } else { "read" },
        "writes": match policy.writes { WriteMode::Any => "any", WriteMode::Primary => "primary" },
        "primary": primary_v,
        "regions": regions,
        "note": note,
    })
}

/// A service's data layer now: where writes go and each region's database.
pub fn data_status(snap: &Snapshot, svc: &Service, policy: &DataPolicy, now: u64) -> Value {
    let name = |sr: SrIdx| snap.table.region_of(svc, sr).name.to_string();
    let primary = data::primary(svc, policy, now);
    json!({
        "writes": match policy.writes { WriteMode::Any => "any", WriteMode::Primary => "primary" },
        "primary": match primary { Primary::One(sr) => Some(name(sr)), _ => None },
        "split_brain": primary == Primary::SplitBrain,
        "max_read_lag_seconds": policy.max_read_lag_ms.map(|m| m as f64 / 1000.0),
        "read_your_writes_seconds": policy.ryw.as_ref().map(|r| r.ttl_ms as f64 / 1000.0),
        "regions": svc.srs().map(|sr| {
            let mut v = region_db(svc, policy, sr, now);
            v["region"] = json!(name(sr));
            v["skipped_for_lag"] = json!(policy.regions[sr.0].lag_skipped.load(std::sync::atomic::Ordering::Relaxed));
            v
        }).collect::<Vec<_>>(),
    })
}

/// A region's database as routing sees it: role, lag (`lag_unbounded` when replication is
/// stopped or broken), where that comes from (`source`: health answers, postgres or mysql)
/// and, for a probed database, whether the last probe reached it and why not. Never shows a
/// password: endpoints hold none.
fn region_db(svc: &Service, policy: &DataPolicy, sr: SrIdx, now: u64) -> Value {
    let v = data::region_view(svc, sr, now);
    let unbounded = v.lag_ms == Some(LAG_UNBOUNDED_MS);
    let endpoint = policy
        .probes
        .as_ref()
        .and_then(|p| p.regions.get(sr.0)?.as_ref());
    let probe = endpoint.map(|ep| {
        let db = &policy.regions[sr.0];
        let error = db.probe_error();
        json!({
            "endpoint": &*ep.url,
            "ok": data::db_source(svc, sr) == data::DbSource::Probe,
            "error": error.as_ref().map(|(why, _)| why.as_str()),
            "message": error.as_ref().map(|(_, m)| &**m),
            "tls": ep.tls.is_some(),
            "heartbeat_table": ep.heartbeat_table.as_deref(),
        })
    });
    json!({
        "source": endpoint.map_or("health answers", |ep| ep.kind.as_str()),
        "probe": probe,
        "role": v.role.as_str(),
        "lag_seconds": v.lag_ms.filter(|_| !unbounded).map(|l| l as f64 / 1000.0),
        "lag_unbounded": unbounded,
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
                .zip(svc.srs())
                .map(|(r, sr)| {
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
            json!({
                "service": &*svc.name,
                "lb": format!("{:?}", svc.lb),
                "regions": regions,
                "data": svc.data.as_ref().map(|p| data_status(snap, svc, p, now)),
            })
        })
        .collect();
    json!({
        "generation": snap.generation,
        "summary": snap.summary,
        "geo": snap.geo.info(),
        "services": services,
    })
}
