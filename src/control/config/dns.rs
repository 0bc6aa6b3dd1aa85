//! Compiling `[dns]` (GeoDNS: zones, names, probes, rate limit) and the regions' `edge`
//! addresses into a `dns::DnsConfig`. Defaults are documented in `conf/routes.toml`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use hickory_proto::rr::rdata::{NS, SOA};
use hickory_proto::rr::{Name, RData, Record};
use serde::Deserialize;

use super::compile::{Compiler, parse_net, valid_host};
use super::file::{ContinentFile, RoutesFile};
use crate::dns::metrics::DnsMetrics;
use crate::dns::rrl::RrlPolicy;
use crate::dns::zone::{
    DnsConfig, DnsName, Endpoint, NameKind, ProbeKind, ProbeSpec, RegionEdges, Target, WhenDown,
    Zone,
};
use crate::health::BackendKey;
use crate::route::{Override, PanicMode, RoutingTable, SpillPolicy, SrIdx};

/// `[dns]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DnsFile {
    /// UDP listener, e.g. "0.0.0.0:53".
    pub udp: Option<String>,
    /// TCP listener, e.g. "0.0.0.0:53".
    pub tcp: Option<String>,
    /// TTL of A/AAAA answers (default 30s).
    pub ttl: Option<String>,
    /// Negative-caching TTL: the SOA minimum (default 60s).
    pub negative_ttl: Option<String>,
    /// TTL of the SOA and NS records (default 1h).
    pub soa_ttl: Option<String>,
    /// SOA serial (default: the time the configuration was loaded, in Unix seconds).
    pub serial: Option<u32>,
    /// SOA refresh, retry and expire (defaults 1h, 10m, 1w; only secondaries use them).
    pub refresh: Option<String>,
    pub retry: Option<String>,
    pub expire: Option<String>,
    /// Name servers of every zone (NS records; the first is the SOA MNAME).
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// SOA RNAME, "hostmaster@example.com" or "hostmaster.example.com".
    pub hostmaster: Option<String>,
    /// Regions per answer: 1 (default) or 2 (also the next region that can serve).
    pub answers: Option<u32>,
    /// EDNS(0) UDP payload size advertised and largest UDP answer (default 1232).
    pub max_udp_payload: Option<u16>,
    /// Longest ECS source prefix an answer is based on (defaults 24 and 56).
    pub ecs_max_prefix_v4: Option<u8>,
    pub ecs_max_prefix_v6: Option<u8>,
    /// What to answer when no region can serve: "fail_open" (default) or "servfail".
    #[serde(default)]
    pub when_down: WhenDownFile,
    /// Response rate limiting per /24 (IPv4) or /56 (IPv6); off when omitted.
    pub rate_limit: Option<RateLimitFile>,
    /// Probe of each region's edge addresses; off when omitted.
    pub edge_check: Option<ProbeFile>,
    #[serde(default)]
    pub zones: Vec<ZoneFile>,
    #[serde(default)]
    pub names: Vec<NameFile>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WhenDownFile {
    #[default]
    FailOpen,
    Servfail,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitFile {
    /// Answers per second per network.
    pub responses_per_second: u32,
    /// Answers allowed at once (default: one second's worth).
    pub burst: Option<u32>,
    /// Every Nth limited answer is sent truncated, 0 drops all (default 2).
    pub slip: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProbeFile {
    /// "http" (default for edge_check) or "tcp" (default for a name's check).
    pub kind: Option<ProbeKindFile>,
    /// Port probed on addresses written without one.
    pub port: Option<u16>,
    /// HTTP path (default "/readyz").
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy: Option<u32>,
    pub unhealthy: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ProbeKindFile {
    Http,
    Tcp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ZoneFile {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NameFile {
    pub name: String,
    /// Answer with the edges of this route's service regions: "host" or "host/path".
    pub route: Option<String>,
    /// Per-region targets: region → ["10.0.1.5", "10.0.1.6:5432"].
    pub targets: Option<BTreeMap<String, Vec<String>>>,
    /// Fixed addresses for everyone.
    pub addresses: Option<Vec<String>>,
    /// Requester rules that fix the region order of `targets` (e.g. each region's VPC ranges).
    #[serde(default)]
    pub overrides: Vec<DnsOverrideFile>,
    /// Region order of `targets` when the requester's location is unknown.
    pub default_regions: Option<Vec<String>>,
    /// Probe of each target (a TCP connect by default).
    pub check: Option<ProbeFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DnsOverrideFile {
    #[serde(default)]
    pub cidrs: Vec<String>,
    #[serde(default)]
    pub countries: Vec<String>,
    #[serde(default)]
    pub continents: Vec<ContinentFile>,
    pub regions: Vec<String>,
}

/// One address as written: "203.0.113.10", "10.0.1.5:5432" or "[2001:db8::10]:443".
fn endpoint_addr(s: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some((ip, None));
    }
    s.parse::<SocketAddr>()
        .ok()
        .map(|a| (a.ip(), Some(a.port())))
}

fn dns_name(s: &str) -> Option<Name> {
    let lower = s.trim_end_matches('.').to_ascii_lowercase();
    if !valid_host(&lower) || lower.parse::<IpAddr>().is_ok() {
        return None;
    }
    let mut n = Name::from_ascii(&lower).ok()?;
    n.set_fqdn(true);
    Some(n)
}

impl Compiler<'_, '_> {
    /// Compile `[dns]` against the compiled routing table.
    pub(super) fn dns(&mut self, f: &RoutesFile, table: &RoutingTable) -> Option<Arc<DnsConfig>> {
        let d = f.dns.as_ref()?;
        let udp = d.udp.as_ref().and_then(|a| self.addr("dns.udp", a));
        let tcp = d.tcp.as_ref().and_then(|a| self.addr("dns.tcp", a));
        let secs = |c: &mut Self, key: &str, v: &Option<String>, default: u64| -> u32 {
            let d = c.duration(&format!("dns.{key}"), v, Duration::from_secs(default));
            u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
        };
        let ttl = secs(self, "ttl", &d.ttl, 30);
        let edge_check = d
            .edge_check
            .as_ref()
            .map(|p| self.probe("dns.edge_check", p, ProbeKindFile::Http));
        let zones = self.zones(d);
        let regions = self.edges(f, table, d.edge_check.as_ref());
        let (names, by_name) = self.dns_names(d, table, &zones, &regions);
        let answers = d.answers.unwrap_or(1);
        if !(1..=2).contains(&answers) {
            self.err("dns.answers", "must be 1 or 2");
        }
        let max_udp_payload = d.max_udp_payload.unwrap_or(1232);
        if !(512..=4096).contains(&max_udp_payload) {
            self.err("dns.max_udp_payload", "must be between 512 and 4096");
        }
        let ecs_max_v4 = d.ecs_max_prefix_v4.unwrap_or(24);
        let ecs_max_v6 = d.ecs_max_prefix_v6.unwrap_or(56);
        if ecs_max_v4 > 32 {
            self.err("dns.ecs_max_prefix_v4", "must be at most 32");
        }
        if ecs_max_v6 > 128 {
            self.err("dns.ecs_max_prefix_v6", "must be at most 128");
        }
        let rrl = d.rate_limit.as_ref().map(|r| {
            if r.responses_per_second == 0 {
                self.err("dns.rate_limit.responses_per_second", "must be at least 1");
            }
            RrlPolicy {
                rate: r.responses_per_second.max(1),
                burst: r.burst.unwrap_or(r.responses_per_second).max(1),
                slip: r.slip.unwrap_or(2),
            }
        });
        let zone_names: Vec<&str> = zones.iter().map(|z| &*z.apex).collect();
        let region_names: Vec<metrics::SharedString> = table
            .regions
            .iter()
            .map(|r| metrics::SharedString::from_shared(r.name.clone()))
            .collect();
        let metrics = DnsMetrics::new(&zone_names, &region_names);
        Some(Arc::new(DnsConfig {
            udp,
            tcp,
            ttl,
            answers: answers.clamp(1, 2) as usize,
            max_udp_payload,
            ecs_max_v4: ecs_max_v4.min(32),
            ecs_max_v6: ecs_max_v6.min(128),
            when_down: match d.when_down {
                WhenDownFile::FailOpen => WhenDown::FailOpen,
                WhenDownFile::Servfail => WhenDown::Servfail,
            },
            rrl,
            edge_check,
            zones: zones.into(),
            names: names.into(),
            by_name,
            regions: regions.into(),
            target_spill: SpillPolicy {
                overprovisioning: 1.0,
                panic_threshold: 0.0,
                panic: PanicMode::FailOpen,
                failback_delay_ms: 0,
                slow_start_ms: 0,
            },
            metrics,
        }))
    }

    fn probe(&mut self, p: &str, f: &ProbeFile, default: ProbeKindFile) -> ProbeSpec {
        let kind = match f.kind.unwrap_or(default) {
            ProbeKindFile::Tcp => {
                if f.path.is_some() {
                    self.err(&format!("{p}.path"), "a tcp probe has no path");
                }
                ProbeKind::Tcp
            }
            ProbeKindFile::Http => {
                let path = f.path.as_deref().unwrap_or("/readyz");
                if !path.starts_with('/') {
                    self.err(&format!("{p}.path"), "must start with `/`");
                }
                ProbeKind::Http { path: path.into() }
            }
        };
        let interval = self.duration(
            &format!("{p}.interval"),
            &f.interval,
            Duration::from_secs(2),
        );
        let timeout = self.duration(&format!("{p}.timeout"), &f.timeout, Duration::from_secs(1));
        for (key, d) in [("interval", interval), ("timeout", timeout)] {
            if d.is_zero() {
                self.err(&format!("{p}.{key}"), "must be greater than zero");
            }
        }
        ProbeSpec {
            kind,
            interval,
            timeout,
            rise: f.healthy.unwrap_or(2).max(1),
            fall: f.unhealthy.unwrap_or(2).max(1),
        }
    }

    /// The zones, most specific apex first, with their SOA and NS records.
    fn zones(&mut self, d: &DnsFile) -> Vec<Zone> {
        if d.zones.is_empty() {
            self.err("dns.zones", "[dns] needs at least one [[dns.zones]]");
        }
        if d.nameservers.is_empty() {
            self.err("dns.nameservers", "[dns] needs at least one name server");
        }
        let ns: Vec<Name> = d
            .nameservers
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let name = dns_name(n);
                if name.is_none() {
                    self.err(
                        &format!("dns.nameservers[{i}]"),
                        format!("`{n}` is not a DNS name"),
                    );
                }
                name
            })
            .collect();
        let secs = |c: &mut Self, key: &str, v: &Option<String>, default: u64| -> u32 {
            let d = c.duration(&format!("dns.{key}"), v, Duration::from_secs(default));
            u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
        };
        let negative = secs(self, "negative_ttl", &d.negative_ttl, 60);
        let soa_ttl = secs(self, "soa_ttl", &d.soa_ttl, 3600);
        let refresh = secs(self, "refresh", &d.refresh, 3600);
        let retry = secs(self, "retry", &d.retry, 600);
        let expire = secs(self, "expire", &d.expire, 7 * 86400);
        let serial = d
            .serial
            .unwrap_or_else(|| u32::try_from(crate::time::unix_now() as u64).unwrap_or(1));
        let mut zones = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, z) in d.zones.iter().enumerate() {
            let p = format!("dns.zones[{i}].name");
            let Some(origin) = dns_name(&z.name) else {
                self.err(&p, format!("`{}` is not a DNS name", z.name));
                continue;
            };
            let apex: Box<str> = z.name.trim_end_matches('.').to_ascii_lowercase().into();
            if !seen.insert(apex.clone()) {
                self.err(&p, format!("zone `{apex}` is configured twice"));
                continue;
            }
            let rname = match d.hostmaster.as_deref() {
                Some(h) => dns_name(&h.replacen('@', ".", 1)).unwrap_or_else(|| {
                    self.err(
                        "dns.hostmaster",
                        format!("`{h}` is not a mailbox or DNS name"),
                    );
                    Name::root()
                }),
                None => dns_name(&format!("hostmaster.{apex}")).unwrap_or_else(Name::root),
            };
            let mname = ns.first().cloned().unwrap_or_else(Name::root);
            let soa = SOA::new(
                mname,
                rname,
                serial,
                refresh as i32,
                retry as i32,
                expire as i32,
                negative,
            );
            let rec = |ttl: u32, data: RData| Record::from_rdata(origin.clone(), ttl, data);
            zones.push(Zone {
                soa: rec(soa_ttl, RData::SOA(soa.clone())),
                soa_negative: rec(soa_ttl.min(negative), RData::SOA(soa)),
                ns: ns
                    .iter()
                    .map(|n| rec(soa_ttl, RData::NS(NS(n.clone()))))
                    .collect(),
                negative_ttl: negative,
                apex,
                origin,
            });
        }
        zones.sort_by_key(|z| std::cmp::Reverse(z.apex.len()));
        zones
    }

    /// Each region's `edge` addresses, probed when `[dns] edge_check` is set.
    fn edges(
        &mut self,
        f: &RoutesFile,
        table: &RoutingTable,
        check: Option<&ProbeFile>,
    ) -> Vec<RegionEdges> {
        let mut out = Vec::with_capacity(table.regions.len());
        for (name, r) in &f.regions {
            let mut edges = Vec::new();
            for (i, e) in r.edge.iter().enumerate() {
                let p = format!("regions.{name}.edge[{i}]");
                let Some((ip, port)) = endpoint_addr(e) else {
                    self.err(&p, format!("`{e}` is not an IP address (or address:port)"));
                    continue;
                };
                // Probed at its own port, else at edge_check.port; with neither, not probed.
                let check = check
                    .and_then(|c| port.or(c.port))
                    .map(|port| SocketAddr::new(ip, port));
                let key = BackendKey::new(&format!("dns-edge|{name}"), e);
                edges.push(Endpoint {
                    ip,
                    check,
                    health: self.ctx.health.get_or_create(&key, true),
                });
            }
            out.push(RegionEdges {
                edges: edges.into(),
                answered: AtomicU64::new(0),
            });
        }
        out
    }

    /// The names, plus the empty non-terminals between them and their zones.
    fn dns_names(
        &mut self,
        d: &DnsFile,
        table: &RoutingTable,
        zones: &[Zone],
        regions: &[RegionEdges],
    ) -> (Vec<DnsName>, HashMap<Box<[u8]>, usize>) {
        let mut names = Vec::new();
        let mut by_name: HashMap<Box<[u8]>, usize> = HashMap::new();
        for (i, n) in d.names.iter().enumerate() {
            let p = format!("dns.names[{i}]");
            let lower = n.name.trim_end_matches('.').to_ascii_lowercase();
            if dns_name(&lower).is_none() {
                self.err(
                    &format!("{p}.name"),
                    format!("`{}` is not a DNS name", n.name),
                );
                continue;
            }
            let Some(zone) = zones
                .iter()
                .position(|z| crate::dns::zone::in_zone(lower.as_bytes(), z.apex.as_bytes()))
            else {
                self.err(
                    &format!("{p}.name"),
                    format!("`{lower}` is not inside any [[dns.zones]]"),
                );
                continue;
            };
            if by_name.contains_key(lower.as_bytes()) {
                self.err(
                    &format!("{p}.name"),
                    format!("`{lower}` is configured twice"),
                );
                continue;
            }
            let Some(kind) = self.name_kind(&p, n, table, regions) else {
                continue;
            };
            by_name.insert(lower.as_bytes().into(), names.len());
            names.push(DnsName {
                name: lower.into(),
                zone,
                kind,
                draws: AtomicU64::new(0),
            });
        }
        // A name between a zone apex and a configured name exists (NODATA, not NXDOMAIN).
        for i in 0..names.len() {
            let apex_len = zones[names[i].zone].apex.len();
            let full = names[i].name.clone();
            let mut rest: &str = &full;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if rest.len() <= apex_len {
                    break;
                }
                if !by_name.contains_key(rest.as_bytes()) {
                    by_name.insert(rest.as_bytes().into(), names.len());
                    names.push(DnsName {
                        name: rest.into(),
                        zone: names[i].zone,
                        kind: NameKind::EmptyNonTerminal,
                        draws: AtomicU64::new(0),
                    });
                }
            }
        }
        (names, by_name)
    }

    fn name_kind(
        &mut self,
        p: &str,
        n: &NameFile,
        table: &RoutingTable,
        regions: &[RegionEdges],
    ) -> Option<NameKind> {
        let given = [
            n.route.is_some(),
            n.targets.is_some(),
            n.addresses.is_some(),
        ];
        if given.iter().filter(|x| **x).count() != 1 {
            self.err(p, "a name needs exactly one of route, targets or addresses");
            return None;
        }
        if n.targets.is_none()
            && (n.check.is_some() || !n.overrides.is_empty() || n.default_regions.is_some())
        {
            self.err(
                p,
                "check, overrides and default_regions apply to targets only",
            );
        }
        if let Some(r) = &n.route {
            let (host, path) = r
                .split_once('/')
                .map_or((r.as_str(), "/"), |(h, _)| (h, &r[h.len()..]));
            let Some(route) = table.match_route_idx(&host.to_ascii_lowercase(), path) else {
                self.err(&format!("{p}.route"), format!("no route serves `{r}`"));
                return None;
            };
            let svc = &table.routes[route].service;
            if !svc
                .regions
                .iter()
                .any(|sr| !regions[sr.region.0].edges.is_empty())
            {
                self.err(
                    &format!("{p}.route"),
                    format!(
                        "no region of service `{}` has edge addresses ([regions.NAME] edge)",
                        svc.name
                    ),
                );
            }
            return Some(NameKind::Route { route });
        }
        if let Some(addrs) = &n.addresses {
            let mut out = Vec::new();
            for (i, a) in addrs.iter().enumerate() {
                match a.parse::<IpAddr>() {
                    Ok(ip) => out.push(ip),
                    Err(_) => self.err(
                        &format!("{p}.addresses[{i}]"),
                        format!("`{a}` is not an IP address"),
                    ),
                }
            }
            return Some(NameKind::Static { addrs: out.into() });
        }
        let targets = n.targets.as_ref()?;
        self.targets(p, n, targets, table)
    }

    fn targets(
        &mut self,
        p: &str,
        n: &NameFile,
        targets: &BTreeMap<String, Vec<String>>,
        table: &RoutingTable,
    ) -> Option<NameKind> {
        let check = n
            .check
            .as_ref()
            .map(|c| self.probe(&format!("{p}.check"), c, ProbeKindFile::Tcp));
        let port = n.check.as_ref().and_then(|c| c.port);
        let lower = n.name.trim_end_matches('.').to_ascii_lowercase();
        let mut out = Vec::new();
        for (region, addrs) in targets {
            let tp = format!("{p}.targets.{region}");
            let Some(ri) = table.regions.iter().position(|r| &*r.name == region) else {
                self.err(&tp, format!("unknown region `{region}`"));
                continue;
            };
            let mut eps = Vec::new();
            for (i, a) in addrs.iter().enumerate() {
                let Some((ip, own)) = endpoint_addr(a) else {
                    self.err(
                        &format!("{tp}[{i}]"),
                        format!("`{a}` is not an IP address (or address:port)"),
                    );
                    continue;
                };
                let probe = check.as_ref().and_then(|_| {
                    let port = own.or(port);
                    if port.is_none() {
                        self.err(
                            &format!("{tp}[{i}]"),
                            "the check has no port: set check.port or write ip:port",
                        );
                    }
                    port.map(|port| SocketAddr::new(ip, port))
                });
                let key = BackendKey::new(&format!("dns|{lower}"), a);
                eps.push(Endpoint {
                    ip,
                    check: probe,
                    health: self.ctx.health.get_or_create(&key, true),
                });
            }
            out.push(Target {
                region: crate::route::RegionIdx(ri),
                addrs: eps.into(),
            });
        }
        let index = |c: &mut Self, path: &str, list: &[String]| -> Vec<SrIdx> {
            list.iter()
                .enumerate()
                .filter_map(|(j, r)| {
                    let k = targets.keys().position(|t| t == r);
                    if k.is_none() {
                        c.err(&format!("{path}[{j}]"), format!("`{r}` has no targets"));
                    }
                    k.map(SrIdx)
                })
                .collect()
        };
        let default_order = match &n.default_regions {
            Some(l) => index(self, &format!("{p}.default_regions"), l),
            None => Vec::new(),
        };
        let mut overrides = Vec::new();
        for (j, o) in n.overrides.iter().enumerate() {
            let op = format!("{p}.overrides[{j}]");
            let order = index(self, &format!("{op}.regions"), &o.regions);
            overrides.push(self.dns_override(&op, o, order));
        }
        Some(NameKind::Targets {
            targets: out.into(),
            overrides: overrides.into(),
            default_order: default_order.into(),
            check,
        })
    }

    /// One of a name's `overrides`, `order` its regions as indices into the name's targets.
    fn dns_override(&mut self, op: &str, o: &DnsOverrideFile, order: Vec<SrIdx>) -> Override {
        let mut cidrs = Vec::new();
        for (k, c) in o.cidrs.iter().enumerate() {
            match parse_net(c) {
                Some(net) => cidrs.push(net),
                None => self.err(&format!("{op}.cidrs[{k}]"), format!("`{c}` is not a CIDR")),
            }
        }
        let countries: Vec<[u8; 2]> = o
            .countries
            .iter()
            .filter_map(|c| match c.as_bytes() {
                [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                    Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
                }
                _ => {
                    self.err(
                        &format!("{op}.countries"),
                        format!("`{c}` is not an ISO 3166 alpha-2 code"),
                    );
                    None
                }
            })
            .collect();
        if order.is_empty() || (cidrs.is_empty() && countries.is_empty() && o.continents.is_empty())
        {
            self.err(
                op,
                "an override needs regions and at least one of cidrs, countries or continents",
            );
        }
        Override {
            countries: countries.into(),
            continents: o.continents.iter().map(|c| c.0).collect(),
            cidrs: cidrs.into(),
            order: order.into(),
        }
    }
}
