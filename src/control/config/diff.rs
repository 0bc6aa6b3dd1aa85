//! What changes between two configurations (for `geolb check --diff`, `/config` and the
//! one-line reload log).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::route::RoutingTable;

/// The parts of a configuration an operator diffs: routes, services and backends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigView {
    /// route name → service
    pub routes: BTreeMap<String, String>,
    /// service → load-balancing policy
    pub services: BTreeMap<String, String>,
    /// `service/backend` → (region, weight)
    pub backends: BTreeMap<String, (String, u32)>,
    /// `service/region` → probed database (its URL, which never holds a password, and
    /// options); absent in views from older instances.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub databases: BTreeMap<String, String>,
}

impl ConfigView {
    /// The view of a compiled table.
    pub fn of(t: &RoutingTable) -> ConfigView {
        let mut v = ConfigView::default();
        for r in t.routes.iter() {
            v.routes
                .insert(r.name.to_string(), r.service.name.to_string());
        }
        for s in t.services.iter() {
            v.services.insert(s.name.to_string(), format!("{:?}", s.lb));
            for b in s.backends.iter() {
                let region = t.region_of(s, b.region).name.to_string();
                v.backends
                    .insert(format!("{}/{}", s.name, b.name), (region, b.weight));
            }
            let probes = s.data.as_ref().and_then(|d| d.probes.as_ref());
            for (sr, ep) in probes.iter().flat_map(|p| s.srs().zip(p.regions.iter())) {
                let Some(ep) = ep else { continue };
                let region = &t.region_of(s, sr).name;
                let mut desc = ep.url.to_string();
                if ep.tls.is_some() {
                    desc.push_str(" tls");
                }
                if let Some(h) = &ep.heartbeat_table {
                    desc.push_str(&format!(" heartbeat {h}"));
                }
                v.databases.insert(format!("{}/{region}", s.name), desc);
            }
        }
        v
    }
}

/// Human-readable lines: `+ route …`, `- backend …`, `~ backend … weight 1 -> 2`.
pub fn diff(old: &ConfigView, new: &ConfigView) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in &new.routes {
        match old.routes.get(k) {
            None => out.push(format!("+ route {k} -> {v}")),
            Some(o) if o != v => out.push(format!("~ route {k}: service {o} -> {v}")),
            _ => {}
        }
    }
    for k in old.routes.keys().filter(|k| !new.routes.contains_key(*k)) {
        out.push(format!("- route {k}"));
    }
    for (k, v) in &new.services {
        match old.services.get(k) {
            None => out.push(format!("+ service {k} ({v})")),
            Some(o) if o != v => out.push(format!("~ service {k}: lb {o} -> {v}")),
            _ => {}
        }
    }
    for k in old
        .services
        .keys()
        .filter(|k| !new.services.contains_key(*k))
    {
        out.push(format!("- service {k}"));
    }
    for (k, (region, w)) in &new.backends {
        match old.backends.get(k) {
            None => out.push(format!("+ backend {k} (region {region}, weight {w})")),
            Some((r0, w0)) if r0 != region || w0 != w => out.push(format!(
                "~ backend {k}: region {r0} -> {region}, weight {w0} -> {w}"
            )),
            _ => {}
        }
    }
    for k in old
        .backends
        .keys()
        .filter(|k| !new.backends.contains_key(*k))
    {
        out.push(format!("- backend {k}"));
    }
    for (k, v) in &new.databases {
        match old.databases.get(k) {
            None => out.push(format!("+ database {k} ({v})")),
            Some(o) if o != v => out.push(format!("~ database {k}: {o} -> {v}")),
            _ => {}
        }
    }
    for k in old
        .databases
        .keys()
        .filter(|k| !new.databases.contains_key(*k))
    {
        out.push(format!("- database {k}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_additions_removals_and_changes() {
        let mut a = ConfigView::default();
        a.routes.insert("x/".into(), "app".into());
        a.services.insert("app".into(), "LeastRequest".into());
        a.backends
            .insert("app/10.0.0.1:80".into(), ("eu".into(), 1));
        a.backends
            .insert("app/10.0.0.2:80".into(), ("eu".into(), 1));
        let mut b = a.clone();
        b.routes.insert("y/".into(), "app".into());
        b.backends.remove("app/10.0.0.2:80");
        b.backends
            .insert("app/10.0.0.1:80".into(), ("eu".into(), 3));
        let d = diff(&a, &b);
        assert_eq!(
            d,
            vec![
                "+ route y/ -> app".to_string(),
                "~ backend app/10.0.0.1:80: region eu -> eu, weight 1 -> 3".into(),
                "- backend app/10.0.0.2:80".into(),
            ]
        );
        assert!(diff(&a, &a).is_empty());
    }
}
