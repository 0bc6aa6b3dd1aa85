//! The compiled, immutable routing table: hosts and path prefixes → routes → services →
//! regions → backends. Built only by `config::compile`; read lock-free per request.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::health::{BackendHealth, PassivePolicy};
use crate::observe::access_log::AccessLogSettings;
use crate::route::budget::RetryBudget;
use crate::route::client_ip::{IpHeader, TrustedNets};
use crate::route::data::{DataPolicy, RwRule};
use crate::route::{BackendIdx, RegionIdx, RouteIdx, SrIdx};
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
    /// Weighted round robin.
    RoundRobin,
    #[default]
    /// Power of two choices by requests in flight.
    LeastRequest,
    /// Consistent hash (see `hash_key`).
    Hash,
    /// Power of two choices by peak-EWMA latency × (requests in flight + 1) (Finagle, Linkerd).
    PeakEwma,
}

/// Most regions one service may span (selection works on fixed-size stack arrays).
pub const MAX_REGIONS: usize = 16;
pub use crate::observe::access_log::MAX_ATTEMPTS;

/// A region: a named place with coordinates.
#[derive(Debug)]
pub struct Region {
    /// Name (identity and metric label).
    pub name: Arc<str>,
    /// Degrees.
    pub lat: f64,
    /// Longitude, degrees.
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
    /// `http` or `https`.
    pub scheme: Scheme,
    /// `host:port` to connect to.
    pub authority: Authority,
    /// `authority` as a Host header value, built once.
    pub host_header: HeaderValue,
    /// Relative weight inside its region (0 = drained).
    pub weight: u32,
    /// The service region this backend is in.
    pub region: SrIdx,
    /// Live health, shared by every snapshot that has this backend (survives reloads).
    pub health: Arc<BackendHealth>,
}

/// Backends of one service in one region.
#[derive(Debug)]
pub struct ServiceRegion {
    /// Index into `RoutingTable::regions`.
    pub region: RegionIdx,
    /// This region's backends.
    pub backends: Box<[BackendIdx]>,
    /// Sum of the backends' weights.
    pub total_weight: u64,
    /// Weighted, interleaved round-robin schedule of indices into `Service::backends`.
    pub rr_table: Box<[BackendIdx]>,
    /// Next position in `rr_table`.
    pub rr_next: AtomicUsize,
    /// Consistent-hash ring: (point, index into `Service::backends`), sorted by point.
    pub ring: Box<[(u64, BackendIdx)]>,
    /// Requests this region answered since the configuration was loaded.
    pub served: std::sync::atomic::AtomicU64,
    /// Serialises "count ejected, then eject" on the (rare) failure path so concurrent
    /// failures cannot overshoot the ejection cap.
    pub eject_lock: std::sync::Mutex<()>,
}

/// Where the hash for `lb = "hash"` comes from.
#[derive(Debug, Clone)]
pub enum HashKey {
    /// The client address.
    ClientIp,
    /// A request header (the client address when absent).
    Header(HeaderName),
    /// A cookie (the client address when absent).
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
/// When a region spills traffic to the next, panics, and takes recovered backends back.
pub struct SpillPolicy {
    /// Envoy-style overprovisioning factor (≥ 1).
    pub overprovisioning: f64,
    /// Healthy fraction of the whole service under which it panics.
    pub panic_threshold: f64,
    /// What happens when too little is healthy anywhere.
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
    /// Retry connect failures (nothing was sent).
    pub on_connect: bool,
    /// Retry idempotent requests whose connection failed after sending.
    pub on_reset: bool,
    /// Retry idempotent requests whose response headers timed out.
    pub on_timeout: bool,
    /// Retry idempotent requests answered with these statuses.
    pub on_status: Box<[u16]>,
    /// Retry budget: share of the requests of the last `budget_ttl` that may be retried …
    pub percent_can_retry: f64,
    /// … plus this many retries per second whatever the traffic (the budget's reserve) …
    pub min_retries_per_sec: u32,
    /// … over a window this long.
    pub budget_ttl: Duration,
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
    /// What is probed.
    pub kind: CheckKind,
    /// Time between probes while healthy.
    pub interval: Duration,
    /// Time between probes while unhealthy.
    pub unhealthy_interval: Duration,
    /// A probe without an answer for this long failed.
    pub timeout: Duration,
    /// Consecutive successes that make a backend healthy.
    pub rise: u32,
    /// Consecutive failures that make it unhealthy.
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq)]
/// What an active check probes.
pub enum CheckKind {
    /// A TCP connect.
    Tcp,
    /// An HTTP request; healthy when the status is in `expect`.
    Http {
        /// Request method.
        method: http::Method,
        /// The file.
        path: String,
        /// Host header (the backend's address when unset).
        host: Option<String>,
        /// Inclusive status ranges counted healthy.
        expect: Vec<(u16, u16)>,
    },
}

/// A service: the backends a route sends to, grouped by region.
#[derive(Debug)]
pub struct Service {
    /// Name (identity and metric label).
    pub name: Arc<str>,
    /// How a backend is picked inside a region.
    pub lb: LbPolicy,
    /// Where the hash for `lb = "hash"` comes from.
    pub hash_key: HashKey,
    /// Number of backends.
    pub backends: Box<[Backend]>,
    /// Number of regions.
    pub regions: Box<[ServiceRegion]>,
    /// Pooled upstream client.
    pub client: UpstreamClient,
    /// Identity of `client`'s pool (a different key means a different pool).
    pub pool_key: crate::upstream::PoolKey,
    /// Passive ejection policy.
    pub passive: PassivePolicy,
    /// Spillover, panic and fail-back policy.
    pub spill: SpillPolicy,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Active health check, if any.
    pub check: Option<CheckSpec>,
    /// The retry budget (built from `retry`; starts full on every reload).
    pub retry_budget: RetryBudget,
    /// Retries the budget refused (`geolb_retry_budget_exhausted_total`).
    pub retry_budget_exhausted: metrics::Counter,
    /// `lb = "peak_ewma"`: time constant (ms) of the latency estimate's decay.
    pub ewma_decay_ms: u64,
    /// Region draws so far (drives the low-discrepancy share sequence in `select`).
    pub draws: std::sync::atomic::AtomicU64,
    /// The data layer (primary/replica databases), when configured.
    pub data: Option<DataPolicy>,
}

impl Service {
    /// Every service region, in configuration order.
    pub fn srs(&self) -> impl Iterator<Item = SrIdx> + use<> {
        SrIdx::all(self.regions.len())
    }
}

/// A country / continent / CIDR rule that fixes the region order.
#[derive(Debug)]
pub struct Override {
    /// ISO country codes this override matches.
    pub countries: Box<[[u8; 2]]>,
    /// Continent codes this override matches.
    pub continents: Box<[[u8; 2]]>,
    /// Client networks this override matches.
    pub cidrs: Box<[IpNet]>,
    /// Indices into `Service::regions`, in preference order.
    pub order: Box<[SrIdx]>,
}

impl Override {
    /// Does the client (address, country, continent) match?
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
    /// The service this route sends to.
    pub service: Arc<Service>,
    /// Region order (indices into `Service::regions`) when the client's location is unknown.
    pub default_order: Box<[SrIdx]>,
    /// Location rules that fix the region order, first match wins.
    pub overrides: Box<[Override]>,
    /// Requests that are writes or reads against the method rule (longest prefix wins).
    pub rw_rules: Box<[RwRule]>,
    /// Per service region (same index), then one extra for "none" (answered by geolb).
    pub metrics: Box<[crate::observe::metrics::RouteRegionMetrics]>,
}

/// (path prefix, index into `RoutingTable::routes`), longest prefix first.
type PrefixList = Box<[(Box<str>, RouteIdx)]>;

/// All routes. Host lookup is exact, then the longest `*.suffix`, then the catch-all.
#[derive(Debug, Default)]
pub struct RoutingTable {
    /// Exact host → path prefixes.
    pub exact: HashMap<Box<str>, PrefixList>,
    /// Keyed by the suffix with its leading dot, e.g. `.example.com`.
    pub wildcard: HashMap<Box<str>, PrefixList>,
    /// Catch-all host (`*`) path prefixes.
    pub any: PrefixList,
    /// Number of routes.
    pub routes: Box<[Route]>,
    /// Number of regions.
    pub regions: Box<[Region]>,
    /// Number of services.
    pub services: Box<[Arc<Service>]>,
}

impl RoutingTable {
    /// The route for `host` (lowercase, no port) and `path`.
    pub fn match_route(&self, host: &str, path: &str) -> Option<&Route> {
        self.routes.get(self.match_route_idx(host, path)?.0)
    }

    /// The region a service region stands for.
    pub fn region_of(&self, svc: &Service, sr: SrIdx) -> &Region {
        &self.regions[svc.regions[sr].region]
    }

    /// As [`RoutingTable::match_route`], returning the index into `routes`.
    pub fn match_route_idx(&self, host: &str, path: &str) -> Option<RouteIdx> {
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

/// Limits of the admin listener (`[admin]`). `max_connections` is read when the listener
/// starts; the timeouts apply to connections accepted after a reload.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminLimits {
    /// Most open admin connections; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Longest time from the first byte of a request head to its end.
    pub request_header: Duration,
    /// A connection with no exchange in progress for this long is closed.
    pub keepalive_idle: Duration,
    /// Longest exchange, from the request head read to the last response byte written
    /// (a client that stops reading cannot hold a connection past it).
    pub request: Duration,
}

/// Listener and per-request settings that are not routes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bound address of the https listener, when configured.
    pub https: Option<SocketAddr>,
    /// Bound address of the plain-HTTP listener, when configured.
    pub http: Option<(SocketAddr, HttpMode)>,
    /// Bound address of the admin listener, when configured.
    pub admin: Option<SocketAddr>,
    /// Bearer token required by the admin listener (except `/healthz`).
    pub admin_token: Option<Arc<str>>,
    /// Connection limit and timeouts of the admin listener.
    pub admin_limits: AdminLimits,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Size and concurrency limits.
    pub limits: Limits,
    /// Peers whose forwarding headers are trusted.
    pub trusted: TrustedNets,
    /// Where a trusted peer puts the client address.
    pub ip_header: IpHeader,
    /// Expect a PROXY protocol header from trusted peers.
    pub proxy_protocol: bool,
    /// Access log settings.
    pub access_log: AccessLogSettings,
    /// Tell clients the serving region (`X-Geolb-Region`).
    pub response_region: bool,
    /// Send the client's Host to backends instead of the backend address.
    pub preserve_host: bool,
    /// Certificates to load.
    pub certificates: Vec<CertSpec>,
    /// The `.mmdb` file; the embedded country database when unset.
    pub geo_database: Option<PathBuf>,
    /// Request hygiene: path normalisation, forwarding headers, loop detection.
    pub hygiene: Hygiene,
}

/// Request hygiene settings.
#[derive(Debug, Clone)]
pub struct Hygiene {
    /// Normalise request paths before routing (see `proxy::path`).
    pub normalize_path: bool,
    /// Also send an RFC 7239 `Forwarded` header.
    pub forwarded: bool,
    /// This instance's `Via` pseudonym.
    pub via_name: Box<str>,
    /// `Via` values for HTTP/1.0, HTTP/1.1 and HTTP/2 requests, built once.
    pub via: [HeaderValue; 3],
}

impl Hygiene {
    /// Settings with `via_name` as the pseudonym (a valid token).
    pub fn new(normalize_path: bool, forwarded: bool, via_name: &str) -> Hygiene {
        let v = |proto: &str| {
            HeaderValue::from_str(&format!("{proto} {via_name}"))
                .unwrap_or_else(|_| HeaderValue::from_static("1.1 geolb"))
        };
        Hygiene {
            normalize_path,
            forwarded,
            via_name: via_name.into(),
            via: [v("1.0"), v("1.1"), v("2")],
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
/// Every timeout, as configured.
pub struct Timeouts {
    /// Longest TLS handshake.
    pub tls_handshake: Duration,
    /// Longest wait for a request head (and between keep-alive requests on HTTP/1.1).
    pub request_header: Duration,
    /// A client connection with no request for this long is closed.
    pub keepalive_idle: Duration,
    /// TCP connect + TLS handshake to a backend.
    pub upstream_connect: Duration,
    /// Wait for response headers after the request body is sent.
    pub upstream_response_header: Duration,
    /// Idle pooled upstream connections close after this.
    pub upstream_idle: Duration,
    /// From request start until the response headers arrive (covers buffering, retries and
    /// the upstream wait, not the streamed response body); `None` = unlimited.
    pub request: Option<Duration>,
    /// On shutdown, in-flight requests get this long.
    pub shutdown_drain: Duration,
    /// Longest wait for a PROXY protocol header.
    pub proxy_protocol: Duration,
    /// Longest pause while the client sends a request body (then 408).
    pub request_body: Duration,
    /// A request body gets this long before `limits.min_request_body_rate` applies.
    pub request_body_grace: Duration,
    /// Longest time for a whole request body; `None` = no limit beyond the rate.
    pub request_body_total: Option<Duration>,
    /// An upgraded (WebSocket) tunnel with no traffic either way for this long is closed.
    pub tunnel_idle: Duration,
    /// A write to the client blocked this long (the client stopped reading) closes the
    /// connection.
    pub client_send: Duration,
}

#[derive(Debug, Clone, PartialEq)]
/// Size and concurrency limits.
pub struct Limits {
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Most request header fields.
    pub max_headers: usize,
    /// `None` = unlimited.
    pub max_body_bytes: Option<u64>,
    /// Most open client connections per listener.
    pub max_connections: usize,
    /// h2 streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// h2 pending-accept resets before the connection is closed (rapid reset).
    pub h2_max_pending_resets: usize,
    /// h2 locally reset streams before the connection is closed.
    pub h2_max_local_error_resets: usize,
    /// Idle pooled connections kept per backend.
    pub max_idle_upstream_per_host: usize,
    /// Bytes per second a request body must average after the grace period; 0 = off.
    pub min_request_body_rate: u64,
}

/// Lowercase, strip the port and a trailing dot, into `buf`. `None` when invalid.
///
/// Accepts `name`, `name:port`, `[v6]`, `[v6]:port` and a bare IPv6 literal (what this
/// returns for `[v6]`, so normalising is idempotent); a port is digits only. Output is
/// lowercase, has no port and no trailing dot, and contains `:` only as an IPv6 literal.
pub fn normalize_host<'b>(raw: &str, buf: &'b mut [u8; 256]) -> Option<&'b str> {
    let raw = raw.trim();
    let is_port = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let host = if let Some(rest) = raw.strip_prefix('[') {
        let (lit, after) = rest.split_once(']')?;
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(is_port);
        if !port_ok || lit.parse::<std::net::Ipv6Addr>().is_err() {
            return None;
        }
        lit
    } else {
        match raw.split_once(':') {
            None => raw,
            Some((h, p)) if is_port(p) => h,
            // Two colons or more: only a whole IPv6 literal, which cannot carry a port.
            Some(_) => {
                raw.parse::<std::net::Ipv6Addr>().ok()?;
                raw
            }
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.len() > buf.len() || host.ends_with('.') {
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
            let l: PrefixList = list
                .iter()
                .map(|(p, i)| (Box::from(*p), RouteIdx(*i)))
                .collect();
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
        assert_eq!(t.host_routes("a.example.com").unwrap()[0].1, RouteIdx(0));
        assert_eq!(t.host_routes("b.example.com").unwrap()[0].1, RouteIdx(1));
        assert_eq!(
            t.host_routes("x.y.eu.example.com").unwrap()[0].1,
            RouteIdx(2)
        );
        assert_eq!(t.host_routes("example.com").unwrap()[0].1, RouteIdx(3));
        assert_eq!(t.host_routes("other.org").unwrap()[0].1, RouteIdx(3));
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
