//! `compile`: validate a parsed `RoutesFile` completely and build the immutable runtime
//! table. Every problem is collected with its field path; nothing is applied on error.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;

use super::diag::{ConfigError, ConfigErrors, Locator};
use super::file::RoutesFile;
use super::values::parse_duration;
use crate::geo::GeoDb;
use crate::health::HealthRegistry;
use crate::observe::access_log::AccessLogSettings;
use crate::route::client_ip::{IpHeader, TrustedNets};
use crate::route::*;
use crate::tls::{CertSet, CertSpec};
use crate::upstream::{PoolKey, UpstreamPool};

/// What compile needs from the running process: state that survives reloads.
pub struct CompileCtx<'a> {
    pub health: &'a HealthRegistry,
    pub pool: &'a UpstreamPool,
}

/// A validated configuration, ready to publish.
pub struct Compiled {
    pub table: RoutingTable,
    pub settings: Settings,
    /// Loaded when certificates are configured.
    pub certs: Option<Arc<CertSet>>,
    /// Loaded when `[geo] database` is set; otherwise the caller uses the embedded one.
    pub geo: Option<Arc<GeoDb>>,
    pub pool_keys: Vec<PoolKey>,
    /// Raw file, for `check --diff` and `/status`.
    pub summary: Summary,
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
        out.ok_or_else(|| ConfigErrors(vec![loc.error("", "invalid configuration")]))
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

const CONTINENTS: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];

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
                self.err(path, e);
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

    fn compile(&mut self, f: &RoutesFile) -> Option<Compiled> {
        let settings = self.settings(f);
        let certs = if settings.certificates.is_empty() {
            None
        } else {
            match CertSet::load(&settings.certificates) {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    let idx = settings
                        .certificates
                        .iter()
                        .position(|c| {
                            e.to_string().starts_with(&c.cert.display().to_string())
                                || e.to_string().starts_with(&c.key.display().to_string())
                        })
                        .unwrap_or(0);
                    self.err(&format!("tls.certificates[{idx}]"), e.to_string());
                    None
                }
            }
        };
        if settings.https.is_some() && settings.certificates.is_empty() {
            self.err(
                "listeners.https",
                "an https listener needs at least one [[tls.certificates]]",
            );
        }
        let geo = settings
            .geo_database
            .as_ref()
            .and_then(|p| match GeoDb::open(p) {
                Ok(db) => Some(Arc::new(db)),
                Err(e) => {
                    self.err("geo.database", e.to_string());
                    None
                }
            });

        // Regions.
        let mut regions = Vec::new();
        let mut region_idx = HashMap::new();
        for (name, r) in &f.regions {
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
            region_idx.insert(name.as_str(), regions.len());
            regions.push(Region {
                name: name.as_str().into(),
                lat,
                lon,
                bias: r.bias,
                header,
                centroid_km: crate::geo::centroids::CENTROIDS
                    .iter()
                    .map(|c| crate::geo::distance_km(c.lat, c.lon, lat, lon))
                    .collect(),
            });
        }

        // Services.
        let mut services: BTreeMap<&str, Arc<Service>> = BTreeMap::new();
        let mut pool_keys = Vec::new();
        let mut backend_count = 0;
        for (name, s) in &f.services {
            if let Some(svc) = self.service(name, s, &region_idx, &settings, &mut pool_keys) {
                backend_count += svc.backends.len();
                services.insert(name.as_str(), Arc::new(svc));
            }
        }

        // Routes.
        let mut routes = Vec::new();
        let mut exact: HashMap<Box<str>, Vec<(Box<str>, usize)>> = HashMap::new();
        let mut wildcard: HashMap<Box<str>, Vec<(Box<str>, usize)>> = HashMap::new();
        let mut any: Vec<(Box<str>, usize)> = Vec::new();
        let mut seen: HashSet<(String, String)> = HashSet::new();
        for (i, r) in f.routes.iter().enumerate() {
            let p = format!("routes[{i}]");
            let Some(svc) = services.get(r.service.as_str()).cloned() else {
                let known: Vec<&str> = f.services.keys().map(String::as_str).collect();
                let hint = known
                    .iter()
                    .min_by_key(|k| super::diag::edit_distance(&r.service, k))
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_default();
                if f.services.contains_key(&r.service) {
                    continue; // the service itself had errors, already reported
                }
                self.err(
                    &format!("{p}.service"),
                    format!("unknown service `{}`{hint}", r.service),
                );
                continue;
            };
            if !r.path_prefix.starts_with('/') {
                self.err(&format!("{p}.path_prefix"), "must start with `/`");
            }
            let route_idx = routes.len();
            let hosts: Vec<String> = if r.hosts.is_empty() {
                vec!["*".into()]
            } else {
                r.hosts.clone()
            };
            for (h, host) in hosts.iter().enumerate() {
                let host = host.to_ascii_lowercase();
                let hp = format!("{p}.hosts[{h}]");
                if !seen.insert((host.clone(), r.path_prefix.clone())) {
                    self.err(
                        &hp,
                        format!(
                            "`{host}` with path_prefix `{}` is already routed",
                            r.path_prefix
                        ),
                    );
                    continue;
                }
                let entry = (Box::from(r.path_prefix.as_str()), route_idx);
                if host == "*" {
                    any.push(entry);
                } else if let Some(suffix) = host.strip_prefix("*.") {
                    if !valid_host(suffix) {
                        self.err(&hp, format!("`{host}` is not a valid wildcard host"));
                    }
                    wildcard
                        .entry(format!(".{suffix}").into())
                        .or_default()
                        .push(entry);
                } else if valid_host(&host) {
                    exact.entry(host.into()).or_default().push(entry);
                } else {
                    self.err(
                        &hp,
                        format!(
                            "`{host}` is not a valid host name (use `*.example.com` for wildcards)"
                        ),
                    );
                }
            }
            let svc_region_idx = |name: &str| {
                svc.regions
                    .iter()
                    .position(|sr| &*regions[sr.region].name == name)
            };
            let mut default_order = Vec::new();
            if let Some(list) = &r.default_regions {
                for (j, name) in list.iter().enumerate() {
                    match svc_region_idx(name) {
                        Some(k) => default_order.push(k),
                        None => self.err(
                            &format!("{p}.default_regions[{j}]"),
                            format!("service `{}` has no backends in region `{name}`", r.service),
                        ),
                    }
                }
            }
            let mut overrides = Vec::new();
            for (j, o) in r.overrides.iter().enumerate() {
                let op = format!("{p}.overrides[{j}]");
                let mut order = Vec::new();
                for (k, name) in o.regions.iter().enumerate() {
                    match svc_region_idx(name) {
                        Some(x) => order.push(x),
                        None => self.err(
                            &format!("{op}.regions[{k}]"),
                            format!("service `{}` has no backends in region `{name}`", r.service),
                        ),
                    }
                }
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
                let mut continents = Vec::new();
                for (k, c) in o.continents.iter().enumerate() {
                    let up = c.to_ascii_uppercase();
                    if CONTINENTS.contains(&up.as_str()) {
                        let b = up.as_bytes();
                        continents.push([b[0], b[1]]);
                    } else {
                        self.err(
                            &format!("{op}.continents[{k}]"),
                            format!("`{c}` is not one of {CONTINENTS:?}"),
                        );
                    }
                }
                let mut cidrs = Vec::new();
                for (k, c) in o.cidrs.iter().enumerate() {
                    match parse_net(c) {
                        Some(n) => cidrs.push(n),
                        None => {
                            self.err(&format!("{op}.cidrs[{k}]"), format!("`{c}` is not a CIDR"))
                        }
                    }
                }
                if countries.is_empty() && continents.is_empty() && cidrs.is_empty() {
                    self.err(&op, "an override needs countries, continents or cidrs");
                }
                overrides.push(Override {
                    countries: countries.into(),
                    continents: continents.into(),
                    cidrs: cidrs.into(),
                    order: order.into(),
                });
            }
            let name: Arc<str> =
                format!("{}{}", hosts[0].to_ascii_lowercase(), r.path_prefix).into();
            let label = metrics::SharedString::from_shared(name.clone());
            let mut route_metrics: Vec<_> = svc
                .regions
                .iter()
                .map(|sr| {
                    let region =
                        metrics::SharedString::from_shared(regions[sr.region].name.clone());
                    crate::observe::metrics::RouteRegionMetrics::new(&label, &region)
                })
                .collect();
            route_metrics.push(crate::observe::metrics::RouteRegionMetrics::new(
                &label,
                &"none".into(),
            ));
            routes.push(Route {
                name,
                metrics: route_metrics.into(),
                service: svc,
                default_order: default_order.into(),
                overrides: overrides.into(),
            });
        }
        if f.routes.is_empty() {
            self.err("routes", "no [[routes]] defined");
        }
        let finish = |m: HashMap<Box<str>, Vec<(Box<str>, usize)>>| {
            m.into_iter()
                .map(|(k, v)| (k, sort_prefixes(v)))
                .collect::<HashMap<_, _>>()
        };
        let summary = Summary {
            routes: routes.len(),
            services: services.len(),
            regions: regions.len(),
            backends: backend_count,
        };
        let table = RoutingTable {
            exact: finish(exact),
            wildcard: finish(wildcard),
            any: sort_prefixes(any),
            routes: routes.into(),
            regions: regions.into(),
            services: services.into_values().collect(),
        };
        Some(Compiled {
            table,
            settings,
            certs,
            geo,
            pool_keys,
            summary,
        })
    }

    fn settings(&mut self, f: &RoutesFile) -> Settings {
        let l = &f.listeners;
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
        if let Some(b) = &f.metrics.buckets {
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
        if https.is_none() && http.is_none() && l.https.is_none() && l.http.is_none() {
            self.err(
                "listeners",
                "configure at least one of listeners.https and listeners.http",
            );
        }
        let t = &f.timeouts;
        let timeouts = Timeouts {
            tls_handshake: self.duration(
                "timeouts.tls_handshake",
                &t.tls_handshake,
                Duration::from_secs(10),
            ),
            request_header: self.duration(
                "timeouts.request_header",
                &t.request_header,
                Duration::from_secs(10),
            ),
            keepalive_idle: self.duration(
                "timeouts.keepalive_idle",
                &t.keepalive_idle,
                Duration::from_secs(60),
            ),
            upstream_connect: self.duration(
                "timeouts.upstream_connect",
                &t.upstream_connect,
                Duration::from_secs(3),
            ),
            upstream_response_header: self.duration(
                "timeouts.upstream_response_header",
                &t.upstream_response_header,
                Duration::from_secs(60),
            ),
            upstream_idle: self.duration(
                "timeouts.upstream_idle",
                &t.upstream_idle,
                Duration::from_secs(90),
            ),
            request: Some(self.duration("timeouts.request", &t.request, Duration::ZERO))
                .filter(|d| !d.is_zero()),
            shutdown_drain: self.duration(
                "timeouts.shutdown_drain",
                &t.shutdown_drain,
                Duration::from_secs(30),
            ),
            proxy_protocol: self.duration(
                "timeouts.proxy_protocol",
                &t.proxy_protocol,
                Duration::from_secs(5),
            ),
            request_body: self.duration(
                "timeouts.request_body",
                &t.request_body,
                Duration::from_secs(60),
            ),
            tunnel_idle: self.duration(
                "timeouts.tunnel_idle",
                &t.tunnel_idle,
                Duration::from_secs(3600),
            ),
            client_send: self.duration(
                "timeouts.client_send",
                &t.client_send,
                Duration::from_secs(60),
            ),
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
        let lim = &f.limits;
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
        let limits = Limits {
            max_header_bytes: max_header_bytes as usize,
            max_headers: lim.max_headers.unwrap_or(100).clamp(1, 10_000) as usize,
            max_body_bytes: lim.max_body_bytes.filter(|&b| b > 0),
            max_connections: lim.max_connections.unwrap_or(10_000).max(1) as usize,
            h2_max_concurrent_streams: lim.h2_max_concurrent_streams.unwrap_or(128).max(1),
            h2_max_pending_resets: lim.h2_max_pending_resets.unwrap_or(20) as usize,
            h2_max_local_error_resets: lim.h2_max_local_error_resets.unwrap_or(256) as usize,
            max_idle_upstream_per_host: lim.max_idle_upstream_per_host.unwrap_or(256) as usize,
        };
        let ci = &f.client_ip;
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
        let ip_header = match ci.header.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("x-forwarded-for") => IpHeader::XForwardedFor,
            Some("forwarded") => IpHeader::Forwarded,
            Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => IpHeader::Single(n),
                Err(_) => {
                    self.err("client_ip.header", format!("`{h}` is not a header name"));
                    IpHeader::XForwardedFor
                }
            },
        };
        let mut certificates = Vec::new();
        for (i, c) in f.tls.certificates.iter().enumerate() {
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
        if f.tls.certificates.iter().filter(|c| c.default).count() > 1 {
            self.err(
                "tls.certificates",
                "only one certificate may be `default = true`",
            );
        }
        let al = &f.access_log;
        Settings {
            https,
            http,
            admin,
            admin_token: l.admin_token.as_deref().map(Arc::from),
            timeouts,
            limits,
            trusted: TrustedNets::new(nets),
            ip_header,
            proxy_protocol: ci.proxy_protocol,
            access_log: AccessLogSettings {
                enabled: al.enabled.unwrap_or(true),
                format: al.format.unwrap_or_default(),
                path: al.path.as_deref().map(|p| self.path(p)),
            },
            response_region: f.headers.response_region,
            preserve_host: f.headers.preserve_host.unwrap_or(true),
            certificates,
            geo_database: f.geo.database.as_deref().map(|p| self.path(p)),
        }
    }
}

fn sort_prefixes(mut v: Vec<(Box<str>, usize)>) -> Box<[(Box<str>, usize)]> {
    v.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
    v.into()
}

fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

/// A DNS name or an IP literal; lowercase expected.
fn valid_host(h: &str) -> bool {
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
