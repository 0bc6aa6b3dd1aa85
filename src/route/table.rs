//! The compiled, immutable routing table: hosts and path prefixes → routes → services →
//! regions → backends. Built only by `config::compile`; read lock-free per request.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::health::{BackendHealth, PassivePolicy};
use crate::observe::access_log::AccessLogSettings;
use crate::route::client_ip::{IpHeader, TrustedNets};
use crate::tls::CertSpec;
use crate::upstream::UpstreamClient;
use crate::upstream::failure::{FailureKind, UpstreamFailure};

/// What the plain-HTTP listener does with a request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpMode {
    /// 308 to the same URL on https.
    #[default]
    Redirect,
    /// Proxy like the https listener.
    Serve,
}

/// How a backend is chosen inside a region.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    RoundRobin,
    #[default]
    LeastRequest,
    Hash,
}

/// Most regions one service may span (selection works on fixed-size stack arrays).
pub const MAX_REGIONS: usize = 16;
pub use crate::observe::access_log::MAX_ATTEMPTS;

/// A region: a named place with coordinates.
#[derive(Debug)]
pub struct Region {
    pub name: Arc<str>,
    /// Degrees.
    pub lat: f64,
    pub lon: f64,
    /// Route 53 bias in percent (-99..=99): distance is scaled by `1 - bias/100`.
    pub bias: i32,
    /// `name` as a header value, built once.
    pub header: HeaderValue,
    /// Kilometres from each country centroid (indexed like `geo::centroids::CENTROIDS`), so a
    /// country-level location costs a table load instead of a great-circle computation.
    pub centroid_km: Box<[f64]>,
}

impl Region {
    /// Great-circle kilometres from `loc` to this region.
    pub fn distance_km(&self, loc: &crate::geo::Location) -> f64 {
        if loc.source == crate::geo::LocSource::CountryCentroid {
            if let Some(d) = loc
                .country
                .and_then(|c| crate::geo::centroids::index_of(&c))
                .and_then(|i| self.centroid_km.get(i))
            {
                return *d;
            }
        }
        crate::geo::distance_km(loc.lat, loc.lon, self.lat, self.lon)
    }
}

/// One backend server of a service.
#[derive(Debug)]
pub struct Backend {
    /// Identity and metric label: the address or URL as configured.
    pub name: Arc<str>,
    pub scheme: Scheme,
    pub authority: Authority,
    /// `authority` as a Host header value, built once.
    pub host_header: HeaderValue,
    pub weight: u32,
    /// Index into `Service::regions`.
    pub region: usize,
    pub health: Arc<BackendHealth>,
}

/// Backends of one service in one region.
#[derive(Debug)]
pub struct ServiceRegion {
    /// Index into `RoutingTable::regions`.
    pub region: usize,
    /// Indices into `Service::backends`.
    pub backends: Box<[usize]>,
    pub total_weight: u64,
    /// Weighted, interleaved round-robin schedule of indices into `Service::backends`.
    pub rr_table: Box<[usize]>,
    pub rr_next: AtomicUsize,
    /// Consistent-hash ring: (point, index into `Service::backends`), sorted by point.
    pub ring: Box<[(u64, usize)]>,
    /// Requests this region answered since the configuration was loaded.
    pub served: std::sync::atomic::AtomicU64,
    /// Serialises "count ejected, then eject" on the (rare) failure path so concurrent
    /// failures cannot overshoot the ejection cap.
    pub eject_lock: std::sync::Mutex<()>,
}

/// Where the hash for `lb = "hash"` comes from.
#[derive(Debug, Clone)]
pub enum HashKey {
    ClientIp,
    Header(HeaderName),
    Cookie(Box<str>),
}

/// What happens when too little is healthy anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicMode {
    /// Spread over all backends, nearest region first, ignoring health.
    FailOpen,
    /// Answer 503.
    FailClosed,
}

#[derive(Debug, Clone, Copy)]
pub struct SpillPolicy {
    /// Envoy-style overprovisioning factor (≥ 1).
    pub overprovisioning: f64,
    /// Healthy fraction of the whole service under which it panics.
    pub panic_threshold: f64,
    pub panic: PanicMode,
    /// A recovered backend takes traffic only after this long healthy.
    pub failback_delay_ms: u64,
    /// …then ramps its weight up linearly over this window.
    pub slow_start_ms: u64,
}

/// Which failures a retry may hide.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total attempts including the first (1..=MAX_ATTEMPTS).
    pub attempts: usize,
    pub on_connect: bool,
    pub on_reset: bool,
    pub on_timeout: bool,
    pub on_status: Box<[u16]>,
    /// Concurrent retries allowed as a fraction of active requests …
    pub budget: f64,
    /// … but at least this many.
    pub min_retries: u32,
    /// Request bodies up to this size are buffered so they can be replayed.
    pub buffer_bytes: u64,
}

impl RetryPolicy {
    /// May a request that failed with `f` be sent to another backend? Never when the client's
    /// body failed or can no longer be replayed; a failure before sending is always safe to
    /// retry, one after sending only for idempotent requests.
    pub(crate) fn allows(&self, f: UpstreamFailure, idempotent: bool, replayable: bool) -> bool {
        if f.client_body() || !replayable {
            return false;
        }
        match f.kind {
            _ if f.before_sending() => self.on_connect,
            FailureKind::ResponseTimeout => self.on_timeout && idempotent,
            _ => self.on_reset && idempotent,
        }
    }
}

/// Active health-check specification.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSpec {
    pub kind: CheckKind,
    pub interval: Duration,
    pub unhealthy_interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    Tcp,
    Http {
        method: http::Method,
        path: String,
        host: Option<String>,
        /// Inclusive status ranges counted healthy.
        expect: Vec<(u16, u16)>,
    },
}

/// A service: the backends a route sends to, grouped by region.
#[derive(Debug)]
pub struct Service {
    pub name: Arc<str>,
    pub lb: LbPolicy,
    pub hash_key: HashKey,
    pub backends: Box<[Backend]>,
    pub regions: Box<[ServiceRegion]>,
    pub client: UpstreamClient,
    /// Identity of `client`'s pool (a different key means a different pool).
    pub pool_key: crate::upstream::PoolKey,
    pub passive: PassivePolicy,
    pub spill: SpillPolicy,
    pub retry: RetryPolicy,
    pub check: Option<CheckSpec>,
    /// Requests in flight (retry budget).
    pub active: AtomicU32,
    /// Retries in flight (retry budget).
    pub retries_active: AtomicU32,
    /// Region draws so far (drives the low-discrepancy share sequence in `select`).
    pub draws: std::sync::atomic::AtomicU64,
}

/// A country / continent / CIDR rule that fixes the region order.
#[derive(Debug)]
pub struct Override {
    pub countries: Box<[[u8; 2]]>,
    pub continents: Box<[[u8; 2]]>,
    pub cidrs: Box<[IpNet]>,
    /// Indices into `Service::regions`, in preference order.
    pub order: Box<[usize]>,
}

impl Override {
    pub fn matches(
        &self,
        ip: IpAddr,
        country: Option<[u8; 2]>,
        continent: Option<[u8; 2]>,
    ) -> bool {
        country.is_some_and(|c| self.countries.contains(&c))
            || continent.is_some_and(|c| self.continents.contains(&c))
            || self.cidrs.iter().any(|n| n.contains(&ip))
    }
}

/// A route: host + path prefix → service, with its region preferences.
#[derive(Debug)]
pub struct Route {
    /// Metric label and log name: `host-pattern + prefix`, e.g. `shop.example.com/api`.
    pub name: Arc<str>,
    pub service: Arc<Service>,
    /// Region order (indices into `Service::regions`) when the client's location is unknown.
    pub default_order: Box<[usize]>,
    pub overrides: Box<[Override]>,
    /// Per service region (same index), then one extra for "none" (answered by geolb).
    pub metrics: Box<[crate::observe::metrics::RouteRegionMetrics]>,
}

/// (path prefix, index into `RoutingTable::routes`), longest prefix first.
type PrefixList = Box<[(Box<str>, usize)]>;

/// All routes. Host lookup is exact, then the longest `*.suffix`, then the catch-all.
#[derive(Debug, Default)]
pub struct RoutingTable {
    pub exact: HashMap<Box<str>, PrefixList>,
    /// Keyed by the suffix with its leading dot, e.g. `.example.com`.
    pub wildcard: HashMap<Box<str>, PrefixList>,
    pub any: PrefixList,
    pub routes: Box<[Route]>,
    pub regions: Box<[Region]>,
    pub services: Box<[Arc<Service>]>,
}

impl RoutingTable {
    /// The route for `host` (lowercase, no port) and `path`.
    pub fn match_route(&self, host: &str, path: &str) -> Option<&Route> {
        self.routes.get(self.match_route_idx(host, path)?)
    }

    /// As [`RoutingTable::match_route`], returning the index into `routes`.
    pub fn match_route_idx(&self, host: &str, path: &str) -> Option<usize> {
        let list = self.host_routes(host)?;
        list.iter()
            .find(|(prefix, _)| path.starts_with(&**prefix))
            .map(|(_, i)| *i)
    }

    fn host_routes(&self, host: &str) -> Option<&PrefixList> {
        if let Some(l) = self.exact.get(host) {
            return Some(l);
        }
        if !self.wildcard.is_empty() {
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                let suffix = &rest[dot..];
                if let Some(l) = self.wildcard.get(suffix) {
                    return Some(l);
                }
                rest = &suffix[1..];
            }
        }
        (!self.any.is_empty()).then_some(&self.any)
    }
}

/// Listener and per-request settings that are not routes.
#[derive(Debug, Clone)]
pub struct Settings {
    pub https: Option<SocketAddr>,
    pub http: Option<(SocketAddr, HttpMode)>,
    pub admin: Option<SocketAddr>,
    pub admin_token: Option<Arc<str>>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub trusted: TrustedNets,
    pub ip_header: IpHeader,
    pub proxy_protocol: bool,
    pub access_log: AccessLogSettings,
    pub response_region: bool,
    pub preserve_host: bool,
    pub certificates: Vec<CertSpec>,
    pub geo_database: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    pub tls_handshake: Duration,
    pub request_header: Duration,
    pub keepalive_idle: Duration,
    pub upstream_connect: Duration,
    pub upstream_response_header: Duration,
    pub upstream_idle: Duration,
    /// From request start until the response headers arrive (covers buffering, retries and
    /// the upstream wait, not the streamed response body); `None` = unlimited.
    pub request: Option<Duration>,
    pub shutdown_drain: Duration,
    pub proxy_protocol: Duration,
    /// Longest pause while the client sends a request body (then 408).
    pub request_body: Duration,
    /// An upgraded (WebSocket) tunnel with no traffic either way for this long is closed.
    pub tunnel_idle: Duration,
    /// A write to the client blocked this long (the client stopped reading) closes the
    /// connection.
    pub client_send: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// `None` = unlimited.
    pub max_body_bytes: Option<u64>,
    pub max_connections: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_pending_resets: usize,
    pub h2_max_local_error_resets: usize,
    pub max_idle_upstream_per_host: usize,
}

/// Lowercase, strip the port and a trailing dot, into `buf`. `None` when invalid.
pub fn normalize_host<'b>(raw: &str, buf: &'b mut [u8; 256]) -> Option<&'b str> {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        &rest[..rest.find(']')?]
    } else {
        match raw.rfind(':') {
            Some(i) if raw[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &raw[..i],
            _ => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.len() > buf.len() {
        return None;
    }
    for (i, b) in host.bytes().enumerate() {
        if !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':')) {
            return None;
        }
        buf[i] = b.to_ascii_lowercase();
    }
    std::str::from_utf8(&buf[..host.len()]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::{LocSource, Location, centroids, distance_km};

    fn table(entries: &[(&str, &[(&str, usize)])]) -> RoutingTable {
        let mut t = RoutingTable::default();
        for (host, list) in entries {
            let l: PrefixList = list.iter().map(|(p, i)| (Box::from(*p), *i)).collect();
            if *host == "*" {
                t.any = l;
            } else if let Some(s) = host.strip_prefix('*') {
                t.wildcard.insert(s.into(), l);
            } else {
                t.exact.insert((*host).into(), l);
            }
        }
        t
    }

    #[test]
    fn host_normalisation() {
        let mut b = [0u8; 256];
        assert_eq!(
            normalize_host("Example.COM:8443", &mut b),
            Some("example.com")
        );
        let mut b = [0u8; 256];
        assert_eq!(
            normalize_host("[2001:DB8::1]:443", &mut b),
            Some("2001:db8::1")
        );
        let mut b = [0u8; 256];
        assert_eq!(normalize_host("a.b.", &mut b), Some("a.b"));
        let mut b = [0u8; 256];
        assert_eq!(normalize_host("bad host", &mut b), None);
        let mut b = [0u8; 256];
        assert_eq!(normalize_host("x/y", &mut b), None);
    }

    #[test]
    fn host_precedence_and_longest_suffix() {
        let t = table(&[
            ("a.example.com", &[("/", 0)]),
            ("*.example.com", &[("/", 1)]),
            ("*.eu.example.com", &[("/", 2)]),
            ("*", &[("/", 3)]),
        ]);
        assert_eq!(t.host_routes("a.example.com").unwrap()[0].1, 0);
        assert_eq!(t.host_routes("b.example.com").unwrap()[0].1, 1);
        assert_eq!(t.host_routes("x.y.eu.example.com").unwrap()[0].1, 2);
        assert_eq!(t.host_routes("example.com").unwrap()[0].1, 3);
        assert_eq!(t.host_routes("other.org").unwrap()[0].1, 3);
    }
    fn region(lat: f64, lon: f64) -> Region {
        Region {
            name: "r".into(),
            lat,
            lon,
            bias: 0,
            header: HeaderValue::from_static("r"),
            centroid_km: centroids::CENTROIDS
                .iter()
                .map(|c| distance_km(c.lat, c.lon, lat, lon))
                .collect(),
        }
    }

    #[test]
    fn country_locations_use_the_table_and_agree_with_the_formula() {
        let r = region(50.11, 8.68);
        let sg = centroids::centroid(b"SG").unwrap();
        let by_country = Location {
            lat: sg.lat,
            lon: sg.lon,
            country: Some(*b"SG"),
            continent: Some(*b"AS"),
            source: LocSource::CountryCentroid,
        };
        let d = r.distance_km(&by_country);
        assert!((d - distance_km(sg.lat, sg.lon, 50.11, 8.68)).abs() < 1e-9);
        assert!((9_000.0..11_000.0).contains(&d), "{d}");
        // A city-level record is measured from its own coordinates, not its country's.
        let city = Location {
            lat: 1.29,
            lon: 103.85,
            source: LocSource::Record,
            ..by_country
        };
        assert!((r.distance_km(&city) - distance_km(1.29, 103.85, 50.11, 8.68)).abs() < 1e-9);
    }
}
