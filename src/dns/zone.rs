//! The compiled DNS configuration: zones (SOA, NS), the names geolb answers for and where
//! their answers come from (a route's service regions, per-region targets, fixed addresses),
//! each region's public edge addresses, and the health state of everything probed.
//!
//! Built only by `config::compile`; immutable once published, read lock-free per query.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use hickory_proto::rr::{Name, Record};

use crate::dns::metrics::DnsMetrics;
use crate::dns::rrl::RrlPolicy;
use crate::health::BackendHealth;
use crate::route::{Override, RegionIdx, RouteIdx, SpillPolicy, SrIdx};

/// What to answer for a name when none of its regions can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenDown {
    /// Answer the nearest region anyway (health ignored).
    FailOpen,
    /// Answer SERVFAIL (resolvers retry elsewhere or serve stale).
    Servfail,
}

/// An active probe of an edge or a target: a TCP connect or an HTTP GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    /// Healthy when a TCP connection opens.
    Tcp,
    /// Healthy when `GET path` answers 2xx.
    Http {
        /// Request path, e.g. `/readyz`.
        path: Box<str>,
    },
}

/// How often and how an endpoint is probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// TCP or HTTP.
    pub kind: ProbeKind,
    /// Time between probes.
    pub interval: Duration,
    /// A probe without an answer for this long failed.
    pub timeout: Duration,
    /// Consecutive successes that make an endpoint healthy.
    pub rise: u32,
    /// Consecutive failures that make it unhealthy.
    pub fall: u32,
}

/// One address answered for a region, with its health.
#[derive(Debug)]
pub struct Endpoint {
    /// The address put in A/AAAA answers.
    pub ip: IpAddr,
    /// Where it is probed (`None`: not probed, always healthy).
    pub check: Option<SocketAddr>,
    /// Probe results (shared across reloads by identity).
    pub health: Arc<BackendHealth>,
}

impl Endpoint {
    /// May be answered now.
    pub fn is_up(&self) -> bool {
        self.check.is_none() || self.health.is_up()
    }
}

/// A region's public edge addresses (`[regions.NAME] edge`).
#[derive(Debug, Default)]
pub struct RegionEdges {
    /// The edge addresses; empty when the region has none (it is never answered).
    pub edges: Box<[Endpoint]>,
    /// Answers that named this region since the configuration was loaded.
    pub answered: AtomicU64,
}

/// Targets of an internal name in one region.
#[derive(Debug)]
pub struct Target {
    /// The region (index into `RoutingTable::regions`).
    pub region: RegionIdx,
    /// The addresses answered for it.
    pub addrs: Box<[Endpoint]>,
}

/// Where a name's answers come from.
#[derive(Debug)]
pub enum NameKind {
    /// A route's service regions, answered with each region's edge addresses.
    Route {
        /// Index into `RoutingTable::routes`.
        route: RouteIdx,
    },
    /// Per-region targets that are not geolb edges (internal names).
    Targets {
        /// The regions, indexed by `SrIdx` in region orders.
        targets: Box<[Target]>,
        /// CIDR / country / continent rules that fix the order (e.g. each region's VPC).
        overrides: Box<[Override]>,
        /// Order when the requester's location is unknown.
        default_order: Box<[SrIdx]>,
        /// The probe of each target, when configured.
        check: Option<ProbeSpec>,
    },
    /// The same addresses for everyone (e.g. the name servers' own names).
    Static {
        /// The addresses.
        addrs: Box<[IpAddr]>,
    },
    /// A name that exists only because names below it do (answers NODATA).
    EmptyNonTerminal,
}

/// A name geolb answers for.
#[derive(Debug)]
pub struct DnsName {
    /// Lowercase, without the trailing dot.
    pub name: Box<str>,
    /// Index into `DnsConfig::zones`.
    pub zone: usize,
    /// Where its answers come from.
    pub kind: NameKind,
    /// Answers drawn so far (drives the low-discrepancy share sequence).
    pub draws: AtomicU64,
}

/// A zone geolb is authoritative for.
#[derive(Debug)]
pub struct Zone {
    /// Lowercase apex, without the trailing dot.
    pub apex: Box<str>,
    /// The SOA record (TTL: `[dns] soa_ttl`).
    pub soa: Record,
    /// The SOA record for negative answers (TTL: the negative TTL, RFC 2308).
    pub soa_negative: Record,
    /// NS records at the apex.
    pub ns: Box<[Record]>,
    /// Negative-caching TTL (the SOA minimum).
    pub negative_ttl: u32,
    /// The zone's own name as a DNS name.
    pub origin: Name,
}

/// Everything the DNS listener answers from (`[dns]` in routes.toml).
#[derive(Debug)]
pub struct DnsConfig {
    /// UDP listener address, when enabled.
    pub udp: Option<SocketAddr>,
    /// TCP listener address, when enabled.
    pub tcp: Option<SocketAddr>,
    /// TTL of A/AAAA answers, seconds.
    pub ttl: u32,
    /// Regions per answer: 1, or 2 (the drawn region and the next one that can serve).
    pub answers: usize,
    /// Largest UDP response sent (EDNS(0) payload size we advertise), bytes.
    pub max_udp_payload: u16,
    /// Longest ECS prefix an answer is based on (the scope returned), IPv4.
    pub ecs_max_v4: u8,
    /// Longest ECS prefix an answer is based on, IPv6.
    pub ecs_max_v6: u8,
    /// What to answer when no region can serve.
    pub when_down: WhenDown,
    /// Response rate limiting, when enabled.
    pub rrl: Option<RrlPolicy>,
    /// The probe of other regions' edges, when enabled.
    pub edge_check: Option<ProbeSpec>,
    /// The zones, most specific apex first.
    pub zones: Box<[Zone]>,
    /// The names answered for.
    pub names: Box<[DnsName]>,
    /// Lowercase name → index into `names`.
    pub by_name: HashMap<Box<[u8]>, usize>,
    /// Edge addresses per region (indexed like `RoutingTable::regions`).
    pub regions: Box<[RegionEdges]>,
    /// Spill policy for internal names (their regions have no service).
    pub target_spill: SpillPolicy,
    /// Pre-bound metric handles.
    pub metrics: DnsMetrics,
}

/// Where a lowercase query name falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Outside every zone.
    Outside,
    /// The apex of `zone` (which may also be a configured name).
    Apex {
        /// Index into `zones`.
        zone: usize,
        /// Index into `names` when the apex is also answered for.
        name: Option<usize>,
    },
    /// A configured name.
    Name {
        /// Index into `zones`.
        zone: usize,
        /// Index into `names`.
        name: usize,
    },
    /// Inside `zone`, but no such name.
    NxDomain {
        /// Index into `zones`.
        zone: usize,
    },
}

impl DnsConfig {
    /// Classify a lowercase name without its trailing dot (`""` is the root).
    pub fn lookup(&self, qname: &[u8]) -> Lookup {
        let Some(zone) = self
            .zones
            .iter()
            .position(|z| in_zone(qname, z.apex.as_bytes()))
        else {
            return Lookup::Outside;
        };
        let name = self.by_name.get(qname).copied();
        if qname.len() == self.zones[zone].apex.len() {
            return Lookup::Apex { zone, name };
        }
        match name {
            Some(name) => Lookup::Name { zone, name },
            None => Lookup::NxDomain { zone },
        }
    }
}

/// Is `name` at or below `apex` (both lowercase, no trailing dot)?
pub fn in_zone(name: &[u8], apex: &[u8]) -> bool {
    if apex.is_empty() {
        return true;
    }
    name.ends_with(apex) && (name.len() == apex.len() || name[name.len() - apex.len() - 1] == b'.')
}

#[cfg(test)]
mod tests {
    use super::in_zone;

    #[test]
    fn zone_membership_respects_label_boundaries() {
        assert!(in_zone(b"example.com", b"example.com"));
        assert!(in_zone(b"shop.example.com", b"example.com"));
        assert!(!in_zone(b"badexample.com", b"example.com"));
        assert!(!in_zone(b"com", b"example.com"));
        assert!(in_zone(b"anything", b""));
    }
}
