//! The on-disk shape of `routes.toml`: serde types only, no validation beyond types.
//!
//! Every table rejects unknown keys so a typo is an error, never a silently ignored setting.
//! A setting with a closed set of values is an enum here, so an unknown value is a serde error
//! ("unknown variant …, expected one of …") positioned at the value. Defaults are applied in
//! `compile.rs` and documented in `conf/routes.toml`.

use std::collections::BTreeMap;

use http::HeaderName;
use serde::{Deserialize, Deserializer};

use crate::observe::access_log::AccessLogFormat;
use crate::route::{HttpMode, LbPolicy};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoutesFile {
    #[serde(default)]
    pub listeners: ListenersFile,
    #[serde(default)]
    pub admin: AdminFile,
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub client_ip: ClientIpFile,
    #[serde(default)]
    pub geo: GeoFile,
    #[serde(default)]
    pub tls: TlsFile,
    #[serde(default)]
    pub access_log: AccessLogFile,
    #[serde(default)]
    pub headers: HeadersFile,
    #[serde(default)]
    pub metrics: MetricsFile,
    #[serde(default)]
    pub regions: BTreeMap<String, RegionFile>,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceFile>,
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    /// GeoDNS: the zones and names geolb answers for (off when omitted).
    pub dns: Option<super::dns::DnsFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenersFile {
    /// TLS listener address, e.g. "0.0.0.0:443".
    pub https: Option<String>,
    /// Optional plain-HTTP listener.
    pub http: Option<HttpListenerFile>,
    /// Admin listener (metrics, status, explain); "127.0.0.1:9901" when omitted, "off" to disable.
    pub admin: Option<String>,
    /// Bearer token required on the admin listener (recommended for non-loopback binds).
    pub admin_token: Option<String>,
}

/// `[admin]`: limits of the admin listener (its address and token are in `[listeners]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminFile {
    pub max_connections: Option<u64>,
    pub request_header: Option<String>,
    pub keepalive_idle: Option<String>,
    /// One whole exchange: request head read to last response byte written.
    pub request: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpListenerFile {
    pub address: String,
    #[serde(default)]
    pub mode: HttpMode,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TimeoutsFile {
    pub tls_handshake: Option<String>,
    pub request_header: Option<String>,
    pub keepalive_idle: Option<String>,
    pub upstream_connect: Option<String>,
    pub upstream_response_header: Option<String>,
    pub upstream_idle: Option<String>,
    pub request: Option<String>,
    pub shutdown_drain: Option<String>,
    pub proxy_protocol: Option<String>,
    pub request_body: Option<String>,
    pub tunnel_idle: Option<String>,
    pub client_send: Option<String>,
    /// A request body gets this long before its minimum rate applies.
    pub request_body_grace: Option<String>,
    /// Longest time for a whole request body (unset: no limit beyond the rate).
    pub request_body_total: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsFile {
    pub max_header_bytes: Option<u64>,
    pub max_headers: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub max_connections: Option<u64>,
    pub h2_max_concurrent_streams: Option<u32>,
    pub h2_max_pending_resets: Option<u64>,
    pub h2_max_local_error_resets: Option<u64>,
    pub max_idle_upstream_per_host: Option<u64>,
    /// Bytes per second a request body must average after the grace period (0 = off).
    pub min_request_body_rate: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientIpFile {
    /// CIDRs whose forwarding headers (and PROXY headers) are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// "x-forwarded-for" (default), "forwarded", or a single-value header such as "x-real-ip".
    #[serde(default)]
    pub header: IpHeaderFile,
    /// Expect a PROXY protocol v1/v2 header on the public listeners.
    #[serde(default)]
    pub proxy_protocol: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GeoFile {
    /// Path to a MaxMind-format database; omitted means the embedded country database.
    pub database: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFile {
    #[serde(default)]
    pub certificates: Vec<CertificateFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertificateFile {
    /// Exact names and `*.wildcard` names this certificate answers for (SNI).
    #[serde(default)]
    pub names: Vec<String>,
    pub cert: String,
    pub key: String,
    /// Served when SNI is absent or matches no name; the first certificate otherwise.
    #[serde(default)]
    pub default: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessLogFile {
    pub enabled: Option<bool>,
    pub format: Option<AccessLogFormat>,
    /// File to append to; stdout when omitted.
    pub path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricsFile {
    /// Histogram buckets in seconds (read at start; a change needs a restart).
    pub buckets: Option<Vec<f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeadersFile {
    /// Add `X-Geolb-Region` to responses (which region served).
    #[serde(default)]
    pub response_region: bool,
    /// Keep the client's Host header (default true); false sends the backend's authority.
    pub preserve_host: Option<bool>,
    /// Normalise request paths (RFC 3986 dot segments, unreserved escapes, merged slashes).
    pub normalize_path: Option<bool>,
    /// Also send an RFC 7239 `Forwarded` header to backends.
    #[serde(default)]
    pub forwarded: bool,
    /// This instance's `Via` pseudonym (default "geolb"); a request already carrying it is a
    /// loop and is answered 508.
    pub via: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegionFile {
    /// [latitude, longitude] in degrees.
    pub location: [f64; 2],
    /// Route 53 style bias, -99..=99: positive attracts clients from further away.
    #[serde(default)]
    pub bias: i32,
    /// Public addresses of this region's geolb edge, answered by GeoDNS.
    #[serde(default)]
    pub edge: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceFile {
    #[serde(default)]
    pub lb: LbPolicy,
    /// `lb = "peak_ewma"`: time constant of the latency estimate's decay.
    pub ewma_decay: Option<String>,
    /// Key for `lb = "hash"`: "client_ip" (default), "header:NAME" or "cookie:NAME".
    #[serde(default)]
    pub hash_key: HashKeyFile,
    pub backends: Vec<BackendFile>,
    #[serde(default)]
    pub health: HealthFile,
    #[serde(default)]
    pub passive: PassiveFile,
    #[serde(default)]
    pub spillover: SpilloverFile,
    #[serde(default)]
    pub retry: RetryFile,
    #[serde(default)]
    pub upstream_tls: UpstreamTlsFile,
    /// Speak HTTP/2 (prior knowledge or ALPN) to the backends.
    #[serde(default)]
    pub http2: bool,
    /// The data layer: where the primary database is, replica lag, read-your-writes.
    pub data: Option<super::data::DataFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackendFile {
    pub region: String,
    /// "host:port" (plain HTTP) …
    pub address: Option<String>,
    /// … or a URL, "http://host:port" or "https://host[:port]".
    pub url: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthFile {
    /// "http" (default when `path` is set), "tcp", or "none".
    pub kind: Option<HealthKindFile>,
    pub path: Option<String>,
    pub method: Option<String>,
    pub host: Option<String>,
    /// Status ranges counted healthy, e.g. ["200-399"].
    pub expect: Option<Vec<String>>,
    pub interval: Option<String>,
    pub unhealthy_interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy: Option<u32>,
    pub unhealthy: Option<u32>,
    /// "healthy" (default) or "unhealthy" until the first checks pass.
    #[serde(default)]
    pub initial: InitialHealthFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PassiveFile {
    pub consecutive_failures: Option<u32>,
    /// Count 5xx responses as failures.
    pub on_5xx: Option<bool>,
    pub base_ejection: Option<String>,
    pub max_ejection: Option<String>,
    /// Percentage of a region's backends passive detection may eject at once.
    pub max_ejection_percent: Option<u32>,
    /// Eject a backend whose latency estimate stays above this multiple of its region's
    /// median (0 = off).
    pub latency_factor: Option<f64>,
    /// How long it must stay above before it is ejected.
    pub latency_window: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SpilloverFile {
    pub overprovisioning: Option<f64>,
    /// Fraction (0..1) of total healthy weight under which the service panics.
    pub panic_threshold: Option<f64>,
    /// "fail_open" (default) or "fail_closed" (503).
    #[serde(default)]
    pub panic: PanicFile,
    pub failback_delay: Option<String>,
    pub slow_start: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryFile {
    pub attempts: Option<u32>,
    /// Any of "connect", "reset", "timeout" and status codes like "502", "503".
    pub on: Option<Vec<RetryOnFile>>,
    /// Retry budget: the share of the last `budget_ttl`'s requests that may be retried
    /// (Finagle's `percent_can_retry`), 0..=1.
    pub budget: Option<f64>,
    /// Retries per second allowed whatever the traffic (the budget's reserve).
    pub min_retries_per_sec: Option<u32>,
    /// Deprecated alias of `min_retries_per_sec` (it once counted concurrent retries).
    pub min_retries: Option<u32>,
    /// How long a request's deposit and a retry's withdrawal count, 1s..=60s.
    pub budget_ttl: Option<String>,
    /// Largest request body buffered so it can be replayed.
    pub buffer_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamTlsFile {
    /// PEM CA bundle that signs the backends; system roots when omitted.
    pub ca: Option<String>,
    /// SNI and verification name; the URL's host when omitted.
    pub server_name: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteFile {
    /// Exact host names and `*.suffix` wildcards; empty or ["*"] matches every host.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    pub service: String,
    /// Region order for clients whose location is unknown.
    pub default_regions: Option<Vec<String>>,
    #[serde(default)]
    pub overrides: Vec<OverrideFile>,
    /// Requests that are reads whatever their method: "/prefix" or "METHOD /prefix".
    #[serde(default)]
    pub reads: Vec<String>,
    /// Requests that are writes whatever their method: "/prefix" or "METHOD /prefix".
    #[serde(default)]
    pub writes: Vec<String>,
}

fn default_prefix() -> String {
    "/".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OverrideFile {
    #[serde(default)]
    pub countries: Vec<String>,
    #[serde(default)]
    pub continents: Vec<ContinentFile>,
    #[serde(default)]
    pub cidrs: Vec<String>,
    pub regions: Vec<String>,
}

/// A setting written as a string with a checked set of values. It is parsed inside the
/// deserializer (see `string_setting!`), so a rejected value is a serde error positioned at
/// the value itself, even as an element of an array.
trait StringSetting: Sized {
    /// What a valid value looks like (for serde's "invalid type" errors).
    const EXPECTING: &'static str;
    fn parse<E: serde::de::Error>(s: &str) -> Result<Self, E>;
}

struct StringVisitor<T>(std::marker::PhantomData<T>);

impl<T: StringSetting> serde::de::Visitor<'_> for StringVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        T::parse(v)
    }
}

/// `Deserialize` for `StringSetting` types.
macro_rules! string_setting {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(StringVisitor(std::marker::PhantomData))
            }
        }
    )*};
}

string_setting!(IpHeaderFile, HashKeyFile, RetryOnFile, ContinentFile);

/// `[client_ip] header`: which request header carries the client address (any case).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum IpHeaderFile {
    #[default]
    XForwardedFor,
    Forwarded,
    /// Any other header, holding one address.
    Single(HeaderName),
}

impl StringSetting for IpHeaderFile {
    const EXPECTING: &'static str = "\"x-forwarded-for\", \"forwarded\" or a header name";

    fn parse<E: serde::de::Error>(s: &str) -> Result<Self, E> {
        let h = s.to_ascii_lowercase();
        match h.as_str() {
            "x-forwarded-for" => Ok(IpHeaderFile::XForwardedFor),
            "forwarded" => Ok(IpHeaderFile::Forwarded),
            _ => HeaderName::from_bytes(h.as_bytes())
                .map(IpHeaderFile::Single)
                .map_err(|_| E::custom(format!("`{h}` is not a header name"))),
        }
    }
}

/// `hash_key`: "client_ip", "header:NAME" or "cookie:NAME".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum HashKeyFile {
    #[default]
    ClientIp,
    Header(HeaderName),
    Cookie(String),
}

impl StringSetting for HashKeyFile {
    const EXPECTING: &'static str = "\"client_ip\", \"header:NAME\" or \"cookie:NAME\"";

    fn parse<E: serde::de::Error>(k: &str) -> Result<Self, E> {
        if k == "client_ip" {
            return Ok(HashKeyFile::ClientIp);
        }
        match k.split_once(':') {
            Some(("header", h)) => HeaderName::from_bytes(h.trim().as_bytes())
                .map(HashKeyFile::Header)
                .map_err(|_| E::custom(format!("`{h}` is not a header name"))),
            Some(("cookie", c)) if !c.trim().is_empty() => Ok(HashKeyFile::Cookie(c.trim().into())),
            _ => Err(E::custom(format!("`{k}`: expected {}", Self::EXPECTING))),
        }
    }
}

/// `health.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HealthKindFile {
    Http,
    Tcp,
    /// No active checks.
    None,
}

/// `health.initial`: the state of a backend before its first checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum InitialHealthFile {
    #[default]
    Healthy,
    Unhealthy,
}

/// `spillover.panic`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PanicFile {
    #[default]
    FailOpen,
    FailClosed,
}

/// One entry of `retry.on`: "connect", "reset", "timeout" or a 5xx status such as "503".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryOnFile {
    Connect,
    Reset,
    Timeout,
    Status(u16),
}

impl StringSetting for RetryOnFile {
    const EXPECTING: &'static str = "connect, reset, timeout or a 5xx status";

    fn parse<E: serde::de::Error>(s: &str) -> Result<Self, E> {
        match s {
            "connect" => Ok(RetryOnFile::Connect),
            "reset" => Ok(RetryOnFile::Reset),
            "timeout" => Ok(RetryOnFile::Timeout),
            _ => match s.parse::<u16>() {
                Ok(code) if (500..=599).contains(&code) => Ok(RetryOnFile::Status(code)),
                _ => Err(E::custom(format!("`{s}`: expected {}", Self::EXPECTING))),
            },
        }
    }
}

/// Continent codes, as the geo database reports them.
pub(crate) const CONTINENTS: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];

/// One of [`CONTINENTS`], written in any case; holds the upper-case code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ContinentFile(pub [u8; 2]);

impl StringSetting for ContinentFile {
    const EXPECTING: &'static str = "a continent code";

    fn parse<E: serde::de::Error>(c: &str) -> Result<Self, E> {
        match *c.to_ascii_uppercase().as_bytes() {
            [a, b] if CONTINENTS.iter().any(|k| k.as_bytes() == [a, b]) => {
                Ok(ContinentFile([a, b]))
            }
            _ => Err(E::unknown_variant(c, &CONTINENTS)),
        }
    }
}
