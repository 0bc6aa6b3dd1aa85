//! What changes between two compiled configurations (for `geolb check --diff` and reload logs).

use std::collections::BTreeMap;

use super::Compiled;

/// Human-readable lines: `+ route …`, `- backend …`, `~ backend … weight 1 -> 2`.
pub fn diff(old: &Compiled, new: &Compiled) -> Vec<String> {
    let mut out = Vec::new();
    let routes = |c: &Compiled| -> BTreeMap<String, String> {
        c.table
            .routes
            .iter()
            .map(|r| (r.name.to_string(), r.service.name.to_string()))
            .collect()
    };
    let backends = |c: &Compiled| -> BTreeMap<String, (String, u32)> {
        let mut m = BTreeMap::new();
        for s in c.table.services.iter() {
            for b in s.backends.iter() {
                let region = c.table.regions[s.regions[b.region].region].name.to_string();
                m.insert(format!("{}/{}", s.name, b.name), (region, b.weight));
            }
        }
        m
    };
    let services = |c: &Compiled| -> Vec<String> {
        c.table
            .services
            .iter()
            .map(|s| s.name.to_string())
            .collect()
    };
    let (ro, rn) = (routes(old), routes(new));
    for (k, v) in &rn {
        match ro.get(k) {
            None => out.push(format!("+ route {k} -> {v}")),
            Some(o) if o != v => out.push(format!("~ route {k}: service {o} -> {v}")),
            _ => {}
        }
    }
    for k in ro.keys().filter(|k| !rn.contains_key(*k)) {
        out.push(format!("- route {k}"));
    }
    let (so, sn) = (services(old), services(new));
    for s in sn.iter().filter(|s| !so.contains(s)) {
        out.push(format!("+ service {s}"));
    }
    for s in so.iter().filter(|s| !sn.contains(s)) {
        out.push(format!("- service {s}"));
    }
    let (bo, bn) = (backends(old), backends(new));
    for (k, (region, w)) in &bn {
        match bo.get(k) {
            None => out.push(format!("+ backend {k} (region {region}, weight {w})")),
            Some((r0, w0)) if r0 != region || w0 != w => out.push(format!(
                "~ backend {k}: region {r0} -> {region}, weight {w0} -> {w}"
            )),
            _ => {}
        }
    }
    for k in bo.keys().filter(|k| !bn.contains_key(*k)) {
        out.push(format!("- backend {k}"));
    }
    if out.is_empty() {
        out.push("no changes to routes, services or backends".into());
    }
    out
}
