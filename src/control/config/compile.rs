//! `compile`: validate a parsed `RoutesFile` completely and build the immutable runtime
//! table. Every problem is collected with its field path; nothing is applied on error.
//!
//! Compiling changes no live state: what publishing must do to the running process (mark
//! backends without active checks up) is recorded in `Compiled` and applied by the publisher
//! once the snapshot is live, so an offline `geolb check` or a rejected reload has no effect.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use ipnet::IpNet;

use super::diag::{ConfigError, ConfigErrors, Locator};
use super::file::{
    AdminFile, ClientIpFile, HeadersFile, IpHeaderFile, LimitsFile, ListenersFile, MetricsFile,
    OverrideFile, RegionFile, RouteFile, RoutesFile, TimeoutsFile, TlsFile,
};
use super::values::parse_duration;
use crate::geo::GeoDb;
use crate::health::{BackendHealth, HealthRegistry};
use crate::observe::access_log::AccessLogSettings;
use crate::observe::metrics::RouteRegionMetrics;
use crate::route::client_ip::{IpHeader, TrustedNets};
use crate::route::*;
use crate::tls::{CertLoadError, CertSet, CertSpec};
use crate::upstream::{PoolKey, UpstreamPool};

/// What compile needs from the running process: state that survives reloads.
pub struct CompileCtx<'a> {
    /// Backend health by identity: a backend that stays keeps its state.
    pub health: &'a HealthRegistry,
    /// Upstream clients by pool key: an unchanged pool keeps its connections.
    pub pool: &'a UpstreamPool,
}

/// A validated configuration, ready to publish.
pub struct Compiled {
    /// Routes, services, regions and backends.
    pub table: RoutingTable,
    /// Listeners, timeouts, limits and the other process-wide settings.
    pub settings: Settings,
    /// Loaded when certificates are configured.
    pub certs: Option<Arc<CertSet>>,
    /// Loaded when `[geo] database` is set; otherwise the caller uses the embedded one.
    pub geo: Option<Arc<GeoDb>>,
    /// The pools the services use (the publisher drops the others).
    pub pool_keys: Vec<PoolKey>,
    /// Counts, for `geolb check`, the reload log and `/status`.
    pub summary: Summary,
    /// Health of the backends of services without active checks. Nothing will ever re-check
    /// them, so a state left down by checks this configuration removes must not keep them out
    /// of rotation forever: the publisher calls `force_up` on each once the snapshot is live.
    pub force_up: Vec<Arc<BackendHealth>>,
    /// The `[dns]` section (GeoDNS), when configured.
    pub dns: Option<Arc<crate::dns::DnsConfig>>,
}

/// Read, parse and compile a file.
pub fn load(path: &Path, ctx: &CompileCtx<'_>) -> Result<Compiled, ConfigErrors> {
    let src = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            path: String::new(),
            message: format!("cannot read: {e}"),
        }])
    })?;
    compile_str(&src, path, ctx)
}

/// Parse and compile `src`, which was read from `path` (relative paths inside resolve
/// against its directory).
pub fn compile_str(src: &str, path: &Path, ctx: &CompileCtx<'_>) -> Result<Compiled, ConfigErrors> {
    let loc = Locator::new(path, src);
    let parsed: RoutesFile =
        toml::from_str(src).map_err(|e| ConfigErrors(vec![loc.from_toml(&e)]))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut c = Compiler {
        loc: &loc,
        errors: Vec::new(),
        base,
        ctx,
    };
    let out = c.compile(&parsed);
    if c.errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(c.errors))
    }
}

pub(super) struct Compiler<'a, 'b> {
    pub(super) loc: &'a Locator<'a>,
    pub(super) errors: Vec<ConfigError>,
    pub(super) base: PathBuf,
    pub(super) ctx: &'a CompileCtx<'b>,
}

/// Host → (path prefix, route index) lists, filled route by route.
type HostMap = HashMap<Box<str>, Vec<(Box<str>, RouteIdx)>>;

/// (path prefix, route index), longest prefix first.
type PrefixList = Box<[(Box<str>, RouteIdx)]>;

/// The host index of the routing table while routes are compiled.
#[derive(Default)]
struct HostIndex {
    exact: HostMap,
    /// Keyed by the suffix after `*`, e.g. `.example.com`.
    wildcard: HostMap,
    any: Vec<(Box<str>, RouteIdx)>,
    /// (host, path prefix) pairs already routed.
    seen: HashSet<(String, String)>,
}

/// The compiled `[listeners]` addresses.
struct Listeners {
    https: Option<SocketAddr>,
    http: Option<(SocketAddr, HttpMode)>,
    admin: Option<SocketAddr>,
}

impl Compiler<'_, '_> {
    pub(super) fn err(&mut self, path: &str, msg: impl Into<String>) {
        let e = self.loc.error(path, msg);
        self.errors.push(e);
    }

    pub(super) fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    pub(super) fn duration(
        &mut self,
        path: &str,
        v: &Option<String>,
        default: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(s) => parse_duration(s).unwrap_or_else(|e| {
                self.err(path, e.to_string());
                default
            }),
        }
    }

    pub(super) fn addr(&mut self, path: &str, s: &str) -> Option<SocketAddr> {
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    path,
                    format!("`{s}` is not an address like \"0.0.0.0:443\" or \"[::]:443\""),
                );
                None
            }
        }
    }

    fn compile(&mut self, f: &RoutesFile) -> Compiled {
        let settings = self.settings(f);
        let certs = self.certificates(&settings);
        if settings.https.is_some() && settings.certificates.is_empty() {
            self.err(
                "listeners.https",
                "an https listener needs at least one [[tls.certificates]]",
            );
        }
        let geo = self.geo(&settings);
        let regions: Vec<Region> = f
            .regions
            .iter()
            .map(|(name, r)| self.region(name, r))
            .collect();
        let region_idx: HashMap<&str, usize> = f
            .regions
            .keys()
            .enumerate()
            .map(|(i, name)| (name.as_str(), i))
            .collect();
        let services = self.services(f, &region_idx, &settings);
        let (routes, hosts) = self.routes(f, &services.by_name, &regions);
        let summary = Summary {
            routes: routes.len(),
            services: services.by_name.len(),
            regions: regions.len(),
            backends: services.backends,
        };
        let table = RoutingTable {
            exact: sort_hosts(hosts.exact),
            wildcard: sort_hosts(hosts.wildcard),
            any: sort_prefixes(hosts.any),
            routes: routes.into(),
            regions: regions.into(),
            services: services.by_name.into_values().collect(),
        };
        let dns = self.dns(f, &table);
        Compiled {
            table,
            settings,
            certs,
            geo,
            pool_keys: services.pool_keys,
            summary,
            force_up: services.force_up,
            dns,
        }
    }

    /// Load `[[tls.certificates]]`; a failure points at the certificate's `cert` or `key`.
    fn certificates(&mut self, settings: &Settings) -> Option<Arc<CertSet>> {
        if settings.certificates.is_empty() {
            return None;
        }
        match CertSet::load(&settings.certificates) {
            Ok(c) => Some(Arc::new(c)),
            Err(CertLoadError::Spec {
                index,
                file,
                source,
            }) => {
                self.err(
                    &format!("tls.certificates[{index}].{}", file.field()),
                    source.to_string(),
                );
                None
            }
            Err(e @ CertLoadError::Empty) => {
                self.err("tls.certificates", e.to_string());
                None
            }
        }
    }

    fn geo(&mut self, settings: &Settings) -> Option<Arc<GeoDb>> {
        let p = settings.geo_database.as_ref()?;
        match GeoDb::open(p) {
            Ok(db) => Some(Arc::new(db)),
            Err(e) => {
                self.err("geo.database", e.to_string());
                None
            }
        }
    }

    fn region(&mut self, name: &str, r: &RegionFile) -> Region {
        let p = format!("regions.{name}");
        let [lat, lon] = r.location;
        if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
            self.err(
                &format!("{p}.location"),
                "expected [latitude (-90..90), longitude (-180..180)]",
            );
        }
        if !(-99..=99).contains(&r.bias) {
            self.err(&format!("{p}.bias"), "bias must be between -99 and 99");
        }
        let header = HeaderValue::from_str(name).unwrap_or_else(|_| {
            self.err(&p, "region names must be printable ASCII");
            HeaderValue::from_static("invalid")
        });
        Region {
            name: name.into(),
            lat,
            lon,
            bias: r.bias,
            header,
            centroid_km: crate::geo::centroids::CENTROIDS
                .iter()
                .map(|c| crate::geo::distance_km(c.lat, c.lon, lat, lon))
                .collect(),
        }
    }

    /// Every `[[routes]]` entry whose service compiled, and the host index over them.
    fn routes(
        &mut self,
        f: &RoutesFile,
        services: &BTreeMap<&str, Arc<Service>>,
        regions: &[Region],
    ) -> (Vec<Route>, HostIndex) {
        let mut routes = Vec::new();
        let mut hosts = HostIndex::default();
        for (i, r) in f.routes.iter().enumerate() {
            let p = format!("routes[{i}]");
            let Some(svc) = services.get(r.service.as_str()).cloned() else {
                if f.services.contains_key(&r.service) {
                    continue; // the service itself had errors, already reported
                }
                let hint = f
                    .services
                    .keys()
                    .min_by_key(|k| super::diag::edit_distance(&r.service, k))
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_default();
                self.err(
                    &format!("{p}.service"),
                    format!("unknown service `{}`{hint}", r.service),
                );
                continue;
            };
            let route = self.route(&p, r, svc, regions, &mut hosts, routes.len());
            routes.push(route);
        }
        if f.routes.is_empty() {
            self.err("routes", "no [[routes]] defined");
        }
        (routes, hosts)
    }

    fn route(
        &mut self,
        p: &str,
        r: &RouteFile,
        svc: Arc<Service>,
        regions: &[Region],
        index: &mut HostIndex,
        route_idx: usize,
    ) -> Route {
        if !r.path_prefix.starts_with('/') {
            self.err(&format!("{p}.path_prefix"), "must start with `/`");
        }
        let hosts: Vec<String> = if r.hosts.is_empty() {
            vec!["*".into()]
        } else {
            r.hosts.clone()
        };
        for (h, host) in hosts.iter().enumerate() {
            self.route_host(&format!("{p}.hosts[{h}]"), host, r, index, route_idx);
        }
        let default_order = match &r.default_regions {
            Some(list) => self.region_order(&format!("{p}.default_regions"), list, &svc, regions),
            None => Vec::new(),
        };
        let overrides: Vec<Override> = r
            .overrides
            .iter()
            .enumerate()
            .map(|(j, o)| self.override_rule(&format!("{p}.overrides[{j}]"), o, &svc, regions))
            .collect();
        let name: Arc<str> = format!("{}{}", hosts[0].to_ascii_lowercase(), r.path_prefix).into();
        let rw_rules = if svc.data.is_none() && !(r.reads.is_empty() && r.writes.is_empty()) {
            self.err(
                &format!("{p}.reads"),
                "reads/writes need a data layer on the service ([services.NAME.data])",
            );
            Box::new([]) as Box<[_]>
        } else {
            self.rw_rules(p, &r.reads, &r.writes)
        };
        Route {
            metrics: route_metrics(&name, &svc, regions),
            name,
            service: svc,
            default_order: default_order.into_iter().map(SrIdx).collect(),
            overrides: overrides.into(),
            rw_rules,
        }
    }

    /// Enter one of a route's hosts (exact, `*.wildcard` or `*`) into the host index.
    fn route_host(
        &mut self,
        hp: &str,
        host: &str,
        r: &RouteFile,
        index: &mut HostIndex,
        route_idx: usize,
    ) {
        let host = host.to_ascii_lowercase();
        if !index.seen.insert((host.clone(), r.path_prefix.clone())) {
            self.err(
                hp,
                format!(
                    "`{host}` with path_prefix `{}` is already routed",
                    r.path_prefix
                ),
            );
            return;
        }
        let entry = (Box::from(r.path_prefix.as_str()), RouteIdx(route_idx));
        if host == "*" {
            index.any.push(entry);
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if !valid_host(suffix) {
                self.err(hp, format!("`{host}` is not a valid wildcard host"));
            }
            index
                .wildcard
                .entry(format!(".{suffix}").into())
                .or_default()
                .push(entry);
        } else if valid_host(&host) {
            index.exact.entry(host.into()).or_default().push(entry);
        } else {
            self.err(
                hp,
                format!("`{host}` is not a valid host name (use `*.example.com` for wildcards)"),
            );
        }
    }

    /// Region names → indices into `svc.regions`; `path` is the list's field path.
    fn region_order(
        &mut self,
        path: &str,
        names: &[String],
        svc: &Service,
        regions: &[Region],
    ) -> Vec<usize> {
        let mut order = Vec::new();
        for (j, name) in names.iter().enumerate() {
            match svc
                .regions
                .iter()
                .position(|sr| &*regions[sr.region].name == name)
            {
                Some(k) => order.push(k),
                None => self.err(
                    &format!("{path}[{j}]"),
                    format!("service `{}` has no backends in region `{name}`", svc.name),
                ),
            }
        }
        order
    }

    fn override_rule(
        &mut self,
        op: &str,
        o: &OverrideFile,
        svc: &Service,
        regions: &[Region],
    ) -> Override {
        let order = self.region_order(&format!("{op}.regions"), &o.regions, svc, regions);
        if o.regions.is_empty() {
            self.err(
                &format!("{op}.regions"),
                "an override needs at least one region",
            );
        }
        let mut countries = Vec::new();
        for (k, c) in o.countries.iter().enumerate() {
            match c.as_bytes() {
                [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                    countries.push([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
                }
                _ => self.err(
                    &format!("{op}.countries[{k}]"),
                    format!("`{c}` is not an ISO 3166 alpha-2 code"),
                ),
            }
        }
        let mut cidrs = Vec::new();
        for (k, c) in o.cidrs.iter().enumerate() {
            match parse_net(c) {
                Some(n) => cidrs.push(n),
                None => self.err(&format!("{op}.cidrs[{k}]"), format!("`{c}` is not a CIDR")),
            }
        }
        if countries.is_empty() && o.continents.is_empty() && cidrs.is_empty() {
            self.err(op, "an override needs countries, continents or cidrs");
        }
        Override {
            countries: countries.into(),
            continents: o.continents.iter().map(|c| c.0).collect(),
            cidrs: cidrs.into(),
            order: order.into_iter().map(SrIdx).collect(),
        }
    }

    fn settings(&mut self, f: &RoutesFile) -> Settings {
        let l = self.listeners(&f.listeners);
        self.buckets(&f.metrics);
        if l.https.is_none()
            && l.http.is_none()
            && f.listeners.https.is_none()
            && f.listeners.http.is_none()
        {
            self.err(
                "listeners",
                "configure at least one of listeners.https and listeners.http",
            );
        }
        let timeouts = self.timeouts(&f.timeouts);
        let limits = self.limits(&f.limits);
        let trusted = self.trusted_proxies(&f.client_ip);
        let ip_header = match &f.client_ip.header {
            IpHeaderFile::XForwardedFor => IpHeader::XForwardedFor,
            IpHeaderFile::Forwarded => IpHeader::Forwarded,
            IpHeaderFile::Single(name) => IpHeader::Single(name.clone()),
        };
        let certificates = self.cert_specs(&f.tls);
        let al = &f.access_log;
        Settings {
            https: l.https,
            http: l.http,
            admin: l.admin,
            admin_token: f.listeners.admin_token.as_deref().map(Arc::from),
            admin_limits: self.admin_limits(&f.admin),
            timeouts,
            limits,
            trusted,
            ip_header,
            proxy_protocol: f.client_ip.proxy_protocol,
            access_log: AccessLogSettings {
                enabled: al.enabled.unwrap_or(true),
                format: al.format.unwrap_or_default(),
                path: al.path.as_deref().map(|p| self.path(p)),
            },
            response_region: f.headers.response_region,
            preserve_host: f.headers.preserve_host.unwrap_or(true),
            certificates,
            geo_database: f.geo.database.as_deref().map(|p| self.path(p)),
            hygiene: self.hygiene(&f.headers),
        }
    }

    fn hygiene(&mut self, h: &HeadersFile) -> Hygiene {
        let via = h.via.as_deref().unwrap_or("geolb");
        let token = !via.is_empty()
            && via.len() <= 64
            && via
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            self.err(
                "headers.via",
                format!(
                    "`{via}` is not a Via pseudonym (a token: letters, digits, -._~ …, at most 64)"
                ),
            );
        }
        Hygiene::new(h.normalize_path.unwrap_or(true), h.forwarded, via)
    }

    fn listeners(&mut self, l: &ListenersFile) -> Listeners {
        let https = l
            .https
            .as_ref()
            .and_then(|a| self.addr("listeners.https", a));
        let http = l.http.as_ref().and_then(|h| {
            self.addr("listeners.http.address", &h.address)
                .map(|a| (a, h.mode))
        });
        let admin = match l.admin.as_deref() {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
            Some("off") => None,
            Some(a) => self.addr("listeners.admin", a),
        };
        if admin.is_some_and(|a| !a.ip().is_loopback()) && l.admin_token.is_none() {
            tracing::warn!("the admin listener is not on loopback and has no admin_token");
        }
        Listeners { https, http, admin }
    }

    fn admin_limits(&mut self, a: &AdminFile) -> AdminLimits {
        let max_connections = a.max_connections.unwrap_or(64);
        if !(1..=100_000).contains(&max_connections) {
            self.err("admin.max_connections", "must be between 1 and 100000");
        }
        let mut d = |name: &str, v: &Option<String>, default_secs: u64| {
            let path = format!("admin.{name}");
            let d = self.duration(&path, v, Duration::from_secs(default_secs));
            if d.is_zero() {
                self.err(&path, "must be greater than zero");
            }
            d
        };
        AdminLimits {
            max_connections: max_connections.clamp(1, 100_000) as usize,
            request_header: d("request_header", &a.request_header, 5),
            keepalive_idle: d("keepalive_idle", &a.keepalive_idle, 30),
            request: d("request", &a.request, 30),
        }
    }

    fn buckets(&mut self, m: &MetricsFile) {
        if let Some(b) = &m.buckets {
            if b.is_empty()
                || b.windows(2).any(|w| w[0] >= w[1])
                || b.iter().any(|x| x.is_nan() || *x <= 0.0)
            {
                self.err(
                    "metrics.buckets",
                    "buckets must be positive seconds in increasing order",
                );
            }
        }
    }

    fn timeouts(&mut self, t: &TimeoutsFile) -> Timeouts {
        let mut d = |name: &str, v: &Option<String>, default_secs: u64| {
            self.duration(
                &format!("timeouts.{name}"),
                v,
                Duration::from_secs(default_secs),
            )
        };
        let timeouts = Timeouts {
            tls_handshake: d("tls_handshake", &t.tls_handshake, 10),
            request_header: d("request_header", &t.request_header, 10),
            keepalive_idle: d("keepalive_idle", &t.keepalive_idle, 60),
            upstream_connect: d("upstream_connect", &t.upstream_connect, 3),
            upstream_response_header: d(
                "upstream_response_header",
                &t.upstream_response_header,
                60,
            ),
            upstream_idle: d("upstream_idle", &t.upstream_idle, 90),
            request: Some(d("request", &t.request, 0)).filter(|d| !d.is_zero()),
            shutdown_drain: d("shutdown_drain", &t.shutdown_drain, 30),
            proxy_protocol: d("proxy_protocol", &t.proxy_protocol, 5),
            request_body: d("request_body", &t.request_body, 60),
            tunnel_idle: d("tunnel_idle", &t.tunnel_idle, 3600),
            client_send: d("client_send", &t.client_send, 60),
            request_body_grace: d("request_body_grace", &t.request_body_grace, 10),
            request_body_total: Some(d("request_body_total", &t.request_body_total, 0))
                .filter(|d| !d.is_zero()),
        };
        for (name, d) in [
            ("tls_handshake", timeouts.tls_handshake),
            ("request_header", timeouts.request_header),
            ("request_body", timeouts.request_body),
            ("tunnel_idle", timeouts.tunnel_idle),
            ("client_send", timeouts.client_send),
            ("upstream_connect", timeouts.upstream_connect),
            (
                "upstream_response_header",
                timeouts.upstream_response_header,
            ),
        ] {
            if d.is_zero() {
                self.err(&format!("timeouts.{name}"), "must be greater than zero");
            }
        }
        timeouts
    }

    fn limits(&mut self, lim: &LimitsFile) -> Limits {
        let max_header_bytes = lim.max_header_bytes.unwrap_or(64 * 1024);
        if !(8192..=1 << 24).contains(&max_header_bytes) {
            self.err(
                "limits.max_header_bytes",
                "must be between 8192 and 16777216",
            );
        }
        for (name, v, lo, hi) in [
            ("max_headers", lim.max_headers, 1, 10_000),
            ("max_connections", lim.max_connections, 1, 10_000_000),
            (
                "h2_max_concurrent_streams",
                lim.h2_max_concurrent_streams.map(u64::from),
                1,
                100_000,
            ),
        ] {
            if v.is_some_and(|v| !(lo..=hi).contains(&v)) {
                self.err(
                    &format!("limits.{name}"),
                    format!("must be between {lo} and {hi}"),
                );
            }
        }
        Limits {
            max_header_bytes: max_header_bytes as usize,
            max_headers: lim.max_headers.unwrap_or(100).clamp(1, 10_000) as usize,
            max_body_bytes: lim.max_body_bytes.filter(|&b| b > 0),
            max_connections: lim.max_connections.unwrap_or(10_000).max(1) as usize,
            h2_max_concurrent_streams: lim.h2_max_concurrent_streams.unwrap_or(128).max(1),
            h2_max_pending_resets: lim.h2_max_pending_resets.unwrap_or(20) as usize,
            h2_max_local_error_resets: lim.h2_max_local_error_resets.unwrap_or(256) as usize,
            max_idle_upstream_per_host: lim.max_idle_upstream_per_host.unwrap_or(256) as usize,
            min_request_body_rate: lim.min_request_body_rate.unwrap_or(512),
        }
    }

    fn trusted_proxies(&mut self, ci: &ClientIpFile) -> TrustedNets {
        let mut nets = Vec::new();
        for (i, n) in ci.trusted_proxies.iter().enumerate() {
            match parse_net(n) {
                Some(net) => nets.push(net),
                None => self.err(
                    &format!("client_ip.trusted_proxies[{i}]"),
                    format!("`{n}` is not an IP address or CIDR"),
                ),
            }
        }
        TrustedNets::new(nets)
    }

    fn cert_specs(&mut self, tls: &TlsFile) -> Vec<CertSpec> {
        let mut certificates = Vec::new();
        for (i, c) in tls.certificates.iter().enumerate() {
            for (j, n) in c.names.iter().enumerate() {
                let bare = n.strip_prefix("*.").unwrap_or(n);
                if !valid_host(&bare.to_ascii_lowercase()) {
                    self.err(
                        &format!("tls.certificates[{i}].names[{j}]"),
                        format!("`{n}` is not a host name or `*.wildcard`"),
                    );
                }
            }
            certificates.push(CertSpec {
                names: c.names.clone(),
                cert: self.path(&c.cert),
                key: self.path(&c.key),
                default: c.default,
            });
        }
        if tls.certificates.iter().filter(|c| c.default).count() > 1 {
            self.err(
                "tls.certificates",
                "only one certificate may be `default = true`",
            );
        }
        certificates
    }
}

/// Per-region request metrics of a route, plus one for "no region".
fn route_metrics(name: &Arc<str>, svc: &Service, regions: &[Region]) -> Box<[RouteRegionMetrics]> {
    let label = metrics::SharedString::from_shared(name.clone());
    let mut out: Vec<_> = svc
        .regions
        .iter()
        .map(|sr| {
            let region = metrics::SharedString::from_shared(regions[sr.region].name.clone());
            RouteRegionMetrics::new(&label, &region)
        })
        .collect();
    out.push(RouteRegionMetrics::new(&label, &"none".into()));
    out.into()
}

fn sort_hosts(m: HostMap) -> HashMap<Box<str>, PrefixList> {
    m.into_iter().map(|(k, v)| (k, sort_prefixes(v))).collect()
}

fn sort_prefixes(mut v: Vec<(Box<str>, RouteIdx)>) -> PrefixList {
    v.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
    v.into()
}

pub(super) fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

/// A DNS name or an IP literal; lowercase expected.
pub(super) fn valid_host(h: &str) -> bool {
    if h.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}
