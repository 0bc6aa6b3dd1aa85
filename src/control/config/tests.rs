//! Validation, table-driven: one case per rule in `compile.rs`, `service.rs` and the closed
//! value sets of `file.rs`. Each case is a TOML fragment applied to a minimal valid file, and
//! the error it must produce: field path and message substring (and a known line).

use std::path::Path;

use super::{CompileCtx, Compiled, ConfigErrors, compile_str};
use crate::health::HealthRegistry;
use crate::upstream::UpstreamPool;

/// A minimal valid file. Routes are top-level keys so a fragment can replace (or empty) them.
const BASE: &str = r#"routes = [{ service = "app" }]

[listeners]
http = { address = "127.0.0.1:0" }
admin = "off"

[regions.eu]
location = [50.1, 8.7]

[services.app]
backends = [{ region = "eu", address = "10.0.0.1:80" }]
"#;

/// Split TOML text at table headers: (top-level keys, [(header, body)]).
fn sections(text: &str) -> (String, Vec<(String, String)>) {
    let mut root = String::new();
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with('[') {
            out.push((line.trim().to_owned(), String::new()));
        } else {
            let body = out.last_mut().map_or(&mut root, |s| &mut s.1);
            body.push_str(line);
            body.push('\n');
        }
    }
    (root, out)
}

/// `BASE` with `fragment` applied: the fragment's top-level keys, when it has any, replace
/// the base's; each fragment section replaces the base section with the same header, or is
/// appended.
fn config(fragment: &str) -> String {
    let (base_root, mut base) = sections(BASE);
    let (root, frag) = sections(fragment);
    let mut out = if root.trim().is_empty() {
        base_root
    } else {
        root
    };
    let base_len = base.len();
    for (header, body) in frag {
        match base[..base_len].iter_mut().find(|(h, _)| *h == header) {
            Some(s) => s.1 = body,
            None => base.push((header, body)),
        }
    }
    for (header, body) in base {
        out.push_str(&format!("\n{header}\n{body}"));
    }
    out
}

fn compile(text: &str) -> Result<Compiled, ConfigErrors> {
    let (health, pool) = (HealthRegistry::default(), UpstreamPool::default());
    let ctx = CompileCtx {
        health: &health,
        pool: &pool,
    };
    compile_str(text, Path::new("t.toml"), &ctx)
}

/// A cookie-signing key one byte too short (31 bytes once trimmed), for the data-layer cases.
/// Distinctive, so a test can prove errors never print a key.
const SHORT_KEY: &str = "not-printed-short-key-abcdefghi";

/// A valid cookie-signing key (40 bytes once trimmed).
const GOOD_KEY: &str = "good-signing-key-0123456789abcdefghijklm";

/// Files for the cases that read files: `a.pem` + `a.key` match, `other.key` does not
/// (certificates); `short.key` and `rw.key` (data-layer signing keys, with surrounding
/// whitespace that is trimmed).
fn pem_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["a.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("a.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("a.key"), key.serialize_pem()).unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.path().join("other.key"), other.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("short.key"), format!("{SHORT_KEY}\n")).unwrap();
    std::fs::write(dir.path().join("rw.key"), format!("  {GOOD_KEY}\n")).unwrap();
    dir
}

/// A service `s` with one backend in each of 17 regions (one more than `MAX_REGIONS`).
fn seventeen_regions() -> String {
    let mut regions = String::new();
    let mut backends = Vec::new();
    for i in 0..17 {
        regions.push_str(&format!("[regions.r{i}]\nlocation = [{i}.0, 0.0]\n"));
        backends.push(format!(
            "{{ region = \"r{i}\", address = \"10.0.1.{i}:80\" }}"
        ));
    }
    format!(
        "{regions}[services.s]\nbackends = [{}]\n",
        backends.join(", ")
    )
}

/// A second service, for cases about one service's settings (`{s}` in a fragment).
const S: &str = "[services.s]\nbackends = [{ region = \"eu\", address = \"10.0.0.9:80\" }]\n";

/// (fragment, field path, message substring). `{dir}` is the directory of `pem_dir`, `{s}` a
/// valid `[services.s]` (backends in `eu` only, no health checks), `{17 regions}` a service
/// spanning too many regions.
const CASES: &[(&str, &str, &str)] = &[
    // [headers] and the slow-body limits
    (
        "[headers]\nvia = \"two words\"",
        "headers.via",
        "is not a Via pseudonym",
    ),
    (
        "[headers]\nvia = \"\"",
        "headers.via",
        "is not a Via pseudonym",
    ),
    (
        "[headers]\nnormalize_path = \"yes\"",
        "headers.normalize_path",
        "invalid type",
    ),
    (
        "[timeouts]\nrequest_body_grace = \"soon\"",
        "timeouts.request_body_grace",
        "",
    ),
    (
        "[timeouts]\nrequest_body_total = \"10\"",
        "timeouts.request_body_total",
        "",
    ),
    (
        "[limits]\nmin_request_body_rate = -1",
        "limits.min_request_body_rate",
        "",
    ),
    // A route's reads/writes without a data layer.
    (
        "routes = [{ service = \"app\", reads = [\"/search\"] }]",
        "routes[0].reads",
        "need a data layer",
    ),
    (
        "[services.app.data]\nread_lag_recover = \"1s\"",
        "services.app.data.read_lag_recover",
        "has no effect without max_read_lag",
    ),
    (
        "[services.app.data]\ncookie = \"c\"",
        "services.app.data.cookie",
        "has no effect without read_your_writes",
    ),
    // [listeners]
    (
        "[listeners]\nhttps = \"nope\"\nhttp = { address = \"127.0.0.1:0\" }\nadmin = \"off\"",
        "listeners.https",
        "`nope` is not an address",
    ),
    (
        "[listeners]\nhttp = { address = \"localhost:http\" }\nadmin = \"off\"",
        "listeners.http.address",
        "`localhost:http` is not an address",
    ),
    (
        "[listeners]\nhttp = { address = \"127.0.0.1:0\" }\nadmin = \"everywhere\"",
        "listeners.admin",
        "`everywhere` is not an address",
    ),
    (
        "[listeners]\nadmin = \"off\"",
        "listeners",
        "configure at least one of listeners.https and listeners.http",
    ),
    (
        "[listeners]\nhttps = \"127.0.0.1:0\"\nadmin = \"off\"",
        "listeners.https",
        "an https listener needs at least one [[tls.certificates]]",
    ),
    (
        "[listeners]\nhttp = { address = \"127.0.0.1:0\", mode = \"proxy\" }\nadmin = \"off\"",
        "listeners.http.mode",
        "unknown variant `proxy`, expected `redirect` or `serve`",
    ),
    // [metrics]
    (
        "[metrics]\nbuckets = [0.5, 0.1]",
        "metrics.buckets",
        "buckets must be positive seconds in increasing order",
    ),
    // [timeouts]: duration syntax (one case per error), then zero where zero is not allowed.
    (
        "[timeouts]\nrequest_header = \"10\"",
        "timeouts.request_header",
        "`10` needs a unit",
    ),
    (
        "[timeouts]\nupstream_connect = \"3 parsecs\"",
        "timeouts.upstream_connect",
        "unknown duration unit `parsecs`",
    ),
    (
        "[timeouts]\nkeepalive_idle = \"soon\"",
        "timeouts.keepalive_idle",
        "`soon` is not a duration",
    ),
    (
        "[timeouts]\nshutdown_drain = \"9000000h\"",
        "timeouts.shutdown_drain",
        "`9000000h` is out of range",
    ),
    (
        "[timeouts]\ntls_handshake = \"0s\"",
        "timeouts.tls_handshake",
        "must be greater than zero",
    ),
    (
        "[timeouts]\nupstream_response_header = \"0\"",
        "timeouts.upstream_response_header",
        "must be greater than zero",
    ),
    // [limits]
    (
        "[limits]\nmax_header_bytes = 100",
        "limits.max_header_bytes",
        "must be between 8192 and 16777216",
    ),
    (
        "[limits]\nmax_headers = 0",
        "limits.max_headers",
        "must be between 1 and 10000",
    ),
    (
        "[limits]\nmax_connections = 0",
        "limits.max_connections",
        "must be between 1 and 10000000",
    ),
    (
        "[limits]\nh2_max_concurrent_streams = 0",
        "limits.h2_max_concurrent_streams",
        "must be between 1 and 100000",
    ),
    // [client_ip]
    (
        "[client_ip]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]",
        "client_ip.trusted_proxies[1]",
        "`10.0.0.0/33` is not an IP address or CIDR",
    ),
    (
        "[client_ip]\nheader = \"X Real IP\"",
        "client_ip.header",
        "`x real ip` is not a header name",
    ),
    // [tls], [geo], [access_log]
    (
        "[[tls.certificates]]\nnames = [\"bad name\"]\ncert = \"{dir}/a.pem\"\nkey = \"{dir}/a.key\"",
        "tls.certificates[0].names[0]",
        "`bad name` is not a host name or `*.wildcard`",
    ),
    (
        "[[tls.certificates]]\ncert = \"{dir}/a.pem\"\nkey = \"{dir}/a.key\"\ndefault = true\n\
         [[tls.certificates]]\ncert = \"{dir}/a.pem\"\nkey = \"{dir}/a.key\"\ndefault = true",
        "tls.certificates",
        "only one certificate may be `default = true`",
    ),
    (
        "[[tls.certificates]]\ncert = \"{dir}/missing.pem\"\nkey = \"{dir}/a.key\"",
        "tls.certificates[0].cert",
        "missing.pem",
    ),
    (
        "[[tls.certificates]]\ncert = \"{dir}/a.pem\"\nkey = \"{dir}/a.key\"\n\
         [[tls.certificates]]\ncert = \"{dir}/a.pem\"\nkey = \"{dir}/missing.key\"",
        "tls.certificates[1].key",
        "missing.key",
    ),
    (
        "[[tls.certificates]]\ncert = \"{dir}/a.pem\"\nkey = \"{dir}/other.key\"",
        "tls.certificates[0].key",
        "does not match",
    ),
    (
        "[geo]\ndatabase = \"{dir}/missing.mmdb\"",
        "geo.database",
        "missing.mmdb",
    ),
    (
        "[access_log]\nformat = \"xml\"",
        "access_log.format",
        "unknown variant `xml`",
    ),
    // [regions]
    (
        "[regions.far]\nlocation = [91.0, 0.0]",
        "regions.far.location",
        "expected [latitude (-90..90), longitude (-180..180)]",
    ),
    (
        "[regions.far]\nlocation = [1.0, 2.0]\nbias = 100",
        "regions.far.bias",
        "bias must be between -99 and 99",
    ),
    (
        "[regions.\"a\\u0001b\"]\nlocation = [1.0, 2.0]",
        "regions.a\u{1}b",
        "region names must be printable ASCII",
    ),
    // [[routes]]
    (
        "routes = [{ service = \"ap\" }]",
        "routes[0].service",
        "unknown service `ap` (did you mean `app`?)",
    ),
    (
        "routes = [{ service = \"app\", path_prefix = \"api\" }]",
        "routes[0].path_prefix",
        "must start with `/`",
    ),
    (
        "routes = [{ service = \"app\" }, { service = \"app\", hosts = [\"*\"] }]",
        "routes[1].hosts[0]",
        "`*` with path_prefix `/` is already routed",
    ),
    (
        "routes = [{ service = \"app\", hosts = [\"*.bad host\"] }]",
        "routes[0].hosts[0]",
        "`*.bad host` is not a valid wildcard host",
    ),
    (
        "routes = [{ service = \"app\", hosts = [\"ok.test\", \"bad host\"] }]",
        "routes[0].hosts[1]",
        "`bad host` is not a valid host name",
    ),
    (
        "routes = [{ service = \"app\", default_regions = [\"us\"] }]",
        "routes[0].default_regions[0]",
        "service `app` has no backends in region `us`",
    ),
    (
        "routes = [{ service = \"app\", overrides = [{ countries = [\"DE\"], regions = [\"eu\", \"us\"] }] }]",
        "routes[0].overrides[0].regions[1]",
        "service `app` has no backends in region `us`",
    ),
    (
        "routes = [{ service = \"app\", overrides = [{ countries = [\"DE\"], regions = [] }] }]",
        "routes[0].overrides[0].regions",
        "an override needs at least one region",
    ),
    (
        "routes = [{ service = \"app\", overrides = [{ countries = [\"DEU\"], regions = [\"eu\"] }] }]",
        "routes[0].overrides[0].countries[0]",
        "`DEU` is not an ISO 3166 alpha-2 code",
    ),
    (
        "routes = [{ service = \"app\", overrides = [{ continents = [\"eu\", \"XX\"], regions = [\"eu\"] }] }]",
        "routes[0].overrides[0].continents[1]",
        "unknown variant `XX`, expected one of `AF`, `AN`",
    ),
    (
        "routes = [{ service = \"app\", overrides = [{ cidrs = [\"10.0.0.0/99\"], regions = [\"eu\"] }] }]",
        "routes[0].overrides[0].cidrs[0]",
        "`10.0.0.0/99` is not a CIDR",
    ),
    (
        "routes = [{ service = \"app\", overrides = [{ regions = [\"eu\"] }] }]",
        "routes[0].overrides[0]",
        "an override needs countries, continents or cidrs",
    ),
    ("routes = []", "routes", "no [[routes]] defined"),
    (
        "routes = [{ service = \"app\", hots = [\"a.test\"] }]",
        "routes[0].hots",
        "unknown field `hots`, expected one of `hosts`",
    ),
    // [services.*] and its backends
    (
        "[services.s]\nbackends = []",
        "services.s.backends",
        "a service needs at least one backend",
    ),
    (
        "[services.s]\nbackends = [{ region = \"ue\", address = \"10.0.0.9:80\" }]",
        "services.s.backends[0].region",
        "unknown region `ue` (did you mean `eu`?)",
    ),
    (
        "[services.s]\nbackends = [{ region = \"eu\", address = \"10.0.0.9\" }]",
        "services.s.backends[0].address",
        "`10.0.0.9` is not host:port",
    ),
    (
        "[services.s]\nbackends = [{ region = \"eu\", url = \"ftp://10.0.0.9\" }]",
        "services.s.backends[0].url",
        "`ftp://10.0.0.9` is not an http:// or https:// URL without a path",
    ),
    (
        "[services.s]\nbackends = [{ region = \"eu\", address = \"10.0.0.9:80\", url = \"http://10.0.0.9\" }]",
        "services.s.backends[0]",
        "set exactly one of `address` and `url`",
    ),
    (
        "[services.s]\nbackends = [{ region = \"eu\", address = \"10.0.0.9:80\" }, { region = \"eu\", address = \"10.0.0.9:80\" }]",
        "services.s.backends[1]",
        "backend `10.0.0.9:80` is listed twice",
    ),
    (
        "[services.s]\nbackends = [{ region = \"eu\", address = \"10.0.0.9:80\", weight = 10001 }]",
        "services.s.backends[0].weight",
        "weight must be 0..=10000",
    ),
    (
        "{17 regions}",
        "services.s.backends",
        "a service may span at most 16 regions",
    ),
    (
        "{s}lb = \"random\"",
        "services.s.lb",
        "unknown variant `random`, expected one of `round_robin`",
    ),
    (
        "{s}hash_key = \"header:bad name\"",
        "services.s.hash_key",
        "`bad name` is not a header name",
    ),
    (
        "{s}hash_key = \"ip\"",
        "services.s.hash_key",
        "`ip`: expected \"client_ip\", \"header:NAME\" or \"cookie:NAME\"",
    ),
    (
        "{s}hash_key = \"cookie: \"",
        "services.s.hash_key",
        "expected \"client_ip\", \"header:NAME\" or \"cookie:NAME\"",
    ),
    (
        "[services.s]\nhttp2 = true\nbackends = [{ region = \"eu\", address = \"10.0.0.9:80\" }, { region = \"eu\", url = \"https://10.0.0.10\" }]",
        "services.s.http2",
        "http2 needs all backends https (ALPN) or all http (prior knowledge)",
    ),
    // [services.*.health]
    (
        "{s}[services.s.health]\nkind = \"icmp\"",
        "services.s.health.kind",
        "unknown variant `icmp`, expected one of `http`, `tcp`, `none`",
    ),
    (
        "{s}[services.s.health]\nkind = \"tcp\"\ninitial = \"up\"",
        "services.s.health.initial",
        "unknown variant `up`, expected `healthy` or `unhealthy`",
    ),
    (
        "{s}[services.s.health]\ninitial = \"unhealthy\"",
        "services.s.health.initial",
        "\"unhealthy\" needs active health checks",
    ),
    (
        "{s}[services.s.health]\nkind = \"none\"\ninitial = \"unhealthy\"",
        "services.s.health.initial",
        "\"unhealthy\" needs active health checks",
    ),
    (
        "{s}[services.s.health]\npath = \"/h\"\nmethod = \"GE T\"",
        "services.s.health.method",
        "not an HTTP method",
    ),
    (
        "{s}[services.s.health]\npath = \"healthz\"",
        "services.s.health.path",
        "must start with `/`",
    ),
    (
        "{s}[services.s.health]\npath = \"/h\"\nexpect = [\"200\", \"600\"]",
        "services.s.health.expect[1]",
        "`600` is not a status or range like \"200-399\"",
    ),
    (
        "{s}[services.s.health]\nkind = \"http\"\nexpect = [\"399-200\"]",
        "services.s.health.expect[0]",
        "`399-200` is not a status or range",
    ),
    (
        "{s}[services.s.health]\nkind = \"tcp\"\nhealthy = 0",
        "services.s.health",
        "healthy and unhealthy thresholds must be at least 1",
    ),
    (
        "{s}[services.s.health]\nkind = \"tcp\"\ninterval = \"0s\"",
        "services.s.health",
        "interval, unhealthy_interval and timeout must be greater than zero",
    ),
    (
        "{s}[services.s.health]\nkind = \"tcp\"\ntimeout = \"1\"",
        "services.s.health.timeout",
        "`1` needs a unit",
    ),
    // [services.*.passive], [services.*.spillover], [services.*.retry]
    (
        "{s}[services.s.passive]\nmax_ejection_percent = 101",
        "services.s.passive.max_ejection_percent",
        "must be 0..=100",
    ),
    (
        "{s}[services.s.passive]\nbase_ejection = \"30\"",
        "services.s.passive.base_ejection",
        "`30` needs a unit",
    ),
    (
        "{s}[services.s.spillover]\noverprovisioning = 0.5",
        "services.s.spillover.overprovisioning",
        "must be between 1.0 and 10.0",
    ),
    (
        "{s}[services.s.spillover]\npanic_threshold = 1.5",
        "services.s.spillover.panic_threshold",
        "must be between 0.0 and 1.0",
    ),
    (
        "{s}[services.s.spillover]\npanic = \"fail_safe\"",
        "services.s.spillover.panic",
        "unknown variant `fail_safe`, expected `fail_open` or `fail_closed`",
    ),
    (
        "{s}[services.s.spillover]\nfailback_delay = \"later\"",
        "services.s.spillover.failback_delay",
        "`later` is not a duration",
    ),
    (
        "{s}[services.s.retry]\nattempts = 0",
        "services.s.retry.attempts",
        "must be 1..=",
    ),
    (
        "{s}[services.s.retry]\non = [\"connect\", \"404\"]",
        "services.s.retry.on[1]",
        "`404`: expected connect, reset, timeout or a 5xx status",
    ),
    (
        "{s}[services.s.retry]\nbudget = 2.0",
        "services.s.retry.budget",
        "must be between 0.0 and 1.0",
    ),
    (
        "{s}[services.s.retry]\nbudget = -0.1",
        "services.s.retry.budget",
        "must be between 0.0 and 1.0 (the share of requests that may be retried)",
    ),
    (
        "{s}[services.s.retry]\nbudget_ttl = \"500ms\"",
        "services.s.retry.budget_ttl",
        "must be between 1s and 60s",
    ),
    (
        "{s}[services.s.retry]\nbudget_ttl = \"2m\"",
        "services.s.retry.budget_ttl",
        "must be between 1s and 60s",
    ),
    (
        "{s}[services.s.retry]\nbudget_ttl = \"soon\"",
        "services.s.retry.budget_ttl",
        "`soon` is not a duration",
    ),
    (
        "{s}[services.s.retry]\nmin_retries_per_sec = 1000000",
        "services.s.retry.min_retries_per_sec",
        "must be 0..=100000",
    ),
    (
        "{s}[services.s.retry]\nmin_retries = 1000000",
        "services.s.retry.min_retries",
        "must be 0..=100000",
    ),
    (
        "{s}[services.s.retry]\nmin_retries_per_sec = -1",
        "services.s.retry.min_retries_per_sec",
        "invalid value: integer `-1`",
    ),
    (
        "{s}[services.s.retry]\nmin_retries = 3\nmin_retries_per_sec = 3",
        "services.s.retry.min_retries",
        "set only `min_retries_per_sec` (`min_retries` is its deprecated name)",
    ),
    (
        "{s}[services.s.passive]\nlatency_factor = 1.5",
        "services.s.passive.latency_factor",
        "must be 0 (off) or between 2 and 1000 (times the region's median latency)",
    ),
    (
        "{s}[services.s.passive]\nlatency_factor = 5\nlatency_window = \"a while\"",
        "services.s.passive.latency_window",
        "`a while` is not a duration",
    ),
    (
        "{s}[services.s.retry]\nmin_retries_per_second = 3",
        "services.s.retry.min_retries_per_second",
        "unknown field `min_retries_per_second`",
    ),
    (
        "[services.s]\nlb = \"peak_ewm\"\nbackends = [{ region = \"eu\", address = \"10.0.0.9:80\" }]\n",
        "services.s.lb",
        "unknown variant `peak_ewm`, expected one of `round_robin`, `least_request`, `hash`, `peak_ewma`",
    ),
    (
        "[services.s]\nlb = \"peak_ewma\"\newma_decay = \"10ms\"\nbackends = [{ region = \"eu\", address = \"10.0.0.9:80\" }]\n",
        "services.s.ewma_decay",
        "must be between 100ms and 1h",
    ),
    (
        "[services.s]\newma_decay = \"fast\"\nbackends = [{ region = \"eu\", address = \"10.0.0.9:80\" }]\n",
        "services.s.ewma_decay",
        "`fast` is not a duration",
    ),
    // [services.*.upstream_tls]
    (
        "{s}[services.s.upstream_tls]\nclient_cert = \"{dir}/a.pem\"",
        "services.s.upstream_tls",
        "set both client_cert and client_key, or neither",
    ),
    (
        "{s}[services.s.upstream_tls]\nca = \"{dir}/missing-ca.pem\"",
        "services.s.upstream_tls",
        "missing-ca.pem",
    ),
    (
        "{s}[services.s.upstream_tls]\nserver_name = \"bad name!\"",
        "services.s.upstream_tls",
        "bad name!",
    ),
    (
        "{s}[services.s.upstream_tls]\nclient_cert = \"{dir}/a.pem\"\nclient_key = \"{dir}/missing.key\"",
        "services.s.upstream_tls",
        "missing.key",
    ),
    // [services.*.data]: where writes go
    (
        "{s}[services.s.data]\nwrites = \"primary\"",
        "services.s.data.primary",
        "writes = \"primary\" needs primary = \"REGION\" or \"auto\"",
    ),
    (
        "{s}[services.s.data]\nwrites = \"primary_only\"",
        "services.s.data.writes",
        "unknown variant `primary_only`, expected `any` or `primary`",
    ),
    (
        "{s}[services.s.data]\nwrites = \"primary\"\nprimary = \"us\"",
        "services.s.data.primary",
        "`us` is not a region of this service (its backends are in: eu)",
    ),
    (
        "[regions.ap]\nlocation = [1.3, 103.8]\n{s}[services.s.data]\nprimary = \"ap\"",
        "services.s.data.primary",
        "`ap` is not a region of this service (its backends are in: eu)",
    ),
    (
        "{s}[services.s.data]\nwrites = \"primary\"\nprimary = \"auto\"",
        "services.s.data.primary",
        "\"auto\" learns the primary from health answers: the service needs an HTTP health check",
    ),
    (
        "[services.s]\nhealth = { kind = \"tcp\" }\nbackends = [{ region = \"eu\", address = \"10.0.0.9:80\" }]\n\
         [services.s.data]\nwrites = \"primary\"\nprimary = \"auto\"",
        "services.s.data.primary",
        "the service needs an HTTP health check (`health.path`)",
    ),
    // [services.*.data]: durations, lag, headers, write methods
    (
        "{s}[services.s.data]\nmax_read_lag = \"30\"",
        "services.s.data.max_read_lag",
        "`30` needs a unit",
    ),
    (
        "{s}[services.s.data]\nmax_read_lag = \"30s\"\nread_lag_recover = \"soon\"",
        "services.s.data.read_lag_recover",
        "`soon` is not a duration",
    ),
    (
        "{s}[services.s.data]\nwrite_hold = \"5 fortnights\"",
        "services.s.data.write_hold",
        "unknown duration unit `fortnights`",
    ),
    (
        "{s}[services.s.data]\nread_your_writes = \"9000000h\"\nsecret_file = \"{dir}/rw.key\"",
        "services.s.data.read_your_writes",
        "`9000000h` is out of range",
    ),
    (
        "{s}[services.s.data]\nmax_read_lag = \"2s\"\nread_lag_recover = \"3s\"",
        "services.s.data.read_lag_recover",
        "must not be more than max_read_lag",
    ),
    (
        "{s}[services.s.data]\nrole_header = \"X Db Role\"",
        "services.s.data.role_header",
        "`X Db Role` is not a header name",
    ),
    (
        "{s}[services.s.data]\nlag_header = \"x-lag:\"",
        "services.s.data.lag_header",
        "`x-lag:` is not a header name",
    ),
    (
        "{s}[services.s.data]\nwrite_methods = [\"POST\", \"PO ST\"]",
        "services.s.data.write_methods[1]",
        "`PO ST` is not an HTTP method",
    ),
    // [services.*.data]: read-your-writes and its signing key
    (
        "{s}[services.s.data]\nread_your_writes = \"15s\"",
        "services.s.data.read_your_writes",
        "needs a signing key shared by every instance: secret_file or secret_env",
    ),
    (
        "{s}[services.s.data]\nread_your_writes = \"15s\"\nsecret_file = \"{dir}/missing-rw.key\"",
        "services.s.data.secret_file",
        "missing-rw.key",
    ),
    (
        "{s}[services.s.data]\nread_your_writes = \"15s\"\nsecret_file = \"{dir}/short.key\"",
        "services.s.data.secret_file",
        "the key is 31 bytes; at least 32 are needed",
    ),
    (
        "{s}[services.s.data]\nread_your_writes = \"15s\"\nsecret_env = \"GEOLB_TEST_SECRET_NEVER_SET\"",
        "services.s.data.secret_env",
        "environment variable GEOLB_TEST_SECRET_NEVER_SET is not set",
    ),
    (
        "{s}[services.s.data]\nread_your_writes = \"15s\"\nsecret_file = \"{dir}/rw.key\"\nsecret_env = \"GEOLB_TEST_SECRET_NEVER_SET\"",
        "services.s.data.secret_env",
        "set secret_file or secret_env, not both",
    ),
    (
        "{s}[services.s.data]\nread_your_writes = \"15s\"\nsecret_file = \"{dir}/rw.key\"\ncookie = \"rw cookie\"",
        "services.s.data.cookie",
        "`rw cookie` is not a cookie name",
    ),
    (
        "{s}[services.s.data]\nread_your_writes = \"15s\"\nsecret_file = \"{dir}/rw.key\"\ncookie = \"\"",
        "services.s.data.cookie",
        "`` is not a cookie name",
    ),
    (
        "{s}[services.s.data]\nprimry = \"eu\"",
        "services.s.data.primry",
        "(did you mean `primary`?)",
    ),
    // [[routes]] reads / writes
    (
        "routes = [{ service = \"app\", writes = [\"P@ST /orders\"] }]\n[services.app.data]\nwrites = \"any\"",
        "routes[0].writes[0]",
        "`P@ST /orders`: expected \"/prefix\" or \"METHOD /prefix\"",
    ),
    (
        "routes = [{ service = \"app\", reads = [\"/search\", \"POST search\"] }]\n[services.app.data]\nwrites = \"any\"",
        "routes[0].reads[1]",
        "`POST search`: the path prefix must start with `/`",
    ),
    (
        "routes = [{ service = \"app\", writes = [\"orders\"] }]\n[services.app.data]\nwrites = \"any\"",
        "routes[0].writes[0]",
        "`orders`: the path prefix must start with `/`",
    ),
];

#[test]
fn every_validation_rule_reports_its_field_and_line() {
    let dir = pem_dir();
    let dir_str = dir.path().display().to_string();
    let mut failures = Vec::new();
    for &(fragment, path, message) in CASES {
        let text = config(
            &fragment
                .replace("{s}", S)
                .replace("{17 regions}", &seventeen_regions())
                .replace("{dir}", &dir_str),
        );
        let errors = match compile(&text) {
            Ok(_) => {
                failures.push(format!("{path}: compiled without errors:\n{text}"));
                continue;
            }
            Err(e) => e.0,
        };
        let found = errors
            .iter()
            .find(|e| e.path == path && e.message.contains(message));
        match found {
            None => failures.push(format!(
                "{path}: no error containing {message:?}; got:\n{}\nin:\n{text}",
                ConfigErrors(errors)
            )),
            Some(e) if e.line == 0 => failures.push(format!("{path}: no line in {e}")),
            Some(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n\n")
    );
}

#[test]
fn the_base_and_the_merge_are_sound() {
    compile(&config("")).unwrap();
    // A section with the base's header replaces it; a new one is appended.
    let text =
        config("[listeners]\nhttp = { address = \"127.0.0.1:1\" }\n[timeouts]\nrequest = \"5s\"");
    assert!(
        text.contains("127.0.0.1:1") && !text.contains("127.0.0.1:0"),
        "{text}"
    );
    let c = compile(&text).unwrap();
    assert_eq!(
        c.settings.timeouts.request,
        Some(std::time::Duration::from_secs(5))
    );
    // Every accepted spelling of the closed sets still loads.
    let text = config(
        "[client_ip]\nheader = \"X-Real-IP\"\n\
         [services.app]\nlb = \"hash\"\nhash_key = \"cookie:sid\"\nbackends = [{ region = \"eu\", address = \"10.0.0.1:80\" }]\n\
         [services.app.health]\nkind = \"tcp\"\ninitial = \"unhealthy\"\n\
         [services.app.spillover]\npanic = \"fail_closed\"\n\
         [services.app.retry]\non = [\"timeout\", \"504\"]",
    );
    let c = compile(&text).unwrap();
    let svc = &c.table.services[0];
    assert!(matches!(svc.hash_key, crate::route::HashKey::Cookie(ref n) if &**n == "sid"));
    assert_eq!(svc.spill.panic, crate::route::PanicMode::FailClosed);
    assert_eq!(
        svc.check.as_ref().map(|c| &c.kind),
        Some(&crate::route::CheckKind::Tcp)
    );
    assert!(svc.retry.on_timeout && !svc.retry.on_connect);
    assert_eq!(&*svc.retry.on_status, &[504]);
    assert_eq!(
        c.settings.ip_header,
        crate::route::client_ip::IpHeader::Single(http::HeaderName::from_static("x-real-ip"))
    );
}

#[test]
fn several_errors_are_reported_at_once_in_file_order_of_checks() {
    let text = config(
        "routes = [{ service = \"app\", path_prefix = \"x\" }, { service = \"nope\" }]\n\
         [timeouts]\nrequest_header = \"10\"\n\
         [regions.far]\nlocation = [91.0, 0.0]\n\
         [services.s]\nbackends = [{ region = \"us\", address = \"10.0.0.9:80\" }]",
    );
    let errors = compile(&text).err().expect("invalid").0;
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "timeouts.request_header",
            "regions.far.location",
            "services.s.backends[0].region",
            "routes[0].path_prefix",
            "routes[1].service",
        ],
        "{}",
        ConfigErrors(errors.clone())
    );
    assert!(
        errors.iter().all(|e| e.line > 0),
        "{}",
        ConfigErrors(errors)
    );
}

#[test]
fn compiling_records_health_to_force_up_and_changes_none() {
    let health = HealthRegistry::default();
    let pool = UpstreamPool::default();
    let ctx = CompileCtx {
        health: &health,
        pool: &pool,
    };
    // Left down by an earlier configuration's checks, and still referenced by its snapshot.
    let down = health.get_or_create(&crate::health::BackendKey::new("app", "10.0.0.1:80"), true);
    down.observe_check(false, 1, 1);
    let checked = "[services.s]\nbackends = [{ region = \"eu\", address = \"10.0.0.9:80\" }]\n\
                   health = { kind = \"tcp\" }";
    let c = compile_str(&config(checked), Path::new("t.toml"), &ctx).unwrap();
    assert!(!down.is_up(), "compiling changed live health");
    // Only the unchecked service's backend is recorded, for the publisher to apply.
    assert_eq!(c.force_up.len(), 1);
    assert!(std::sync::Arc::ptr_eq(&c.force_up[0], &down));
    // A configuration that fails records nothing anyone could apply.
    let bad = config(&format!("{checked}\n[timeouts]\nrequest = \"x\""));
    assert!(compile_str(&bad, Path::new("t.toml"), &ctx).is_err());
    assert!(!down.is_up());
}

/// Two regions, an HTTP-checked service `app` with backends in both, and `data` as its
/// `[services.app.data]` body; the route declares some reads and writes.
fn data_config(data: &str) -> String {
    config(&format!(
        "routes = [{{ service = \"app\", reads = [\"POST /search\"], writes = [\"/rpc/\", \"get /logout\"] }}]\n\
         [regions.ap]\nlocation = [1.3, 103.8]\n\
         [services.app]\nhealth = {{ path = \"/healthz\" }}\n\
         backends = [{{ region = \"eu\", address = \"10.0.0.1:80\" }}, {{ region = \"ap\", address = \"10.0.0.2:80\" }}]\n\
         [services.app.data]\n{data}"
    ))
}

fn app(c: &Compiled) -> &crate::route::Service {
    c.table
        .services
        .iter()
        .find(|s| &*s.name == "app")
        .expect("service app")
}

#[test]
fn a_full_data_section_compiles_to_its_policy() {
    use crate::route::data::{PrimarySource, Ryw, WriteMode, is_write, sign_cookie, verify_cookie};
    use http::Method;
    use std::time::Duration;

    let dir = pem_dir();
    // `secret_file` is relative: it resolves against the configuration file's directory.
    let text = data_config(
        "writes = \"primary\"\nprimary = \"ap\"\nrole_header = \"X-Role\"\nlag_header = \"X-Lag\"\n\
         max_read_lag = \"10s\"\nread_lag_recover = \"4s\"\nread_your_writes = \"15s\"\n\
         secret_file = \"rw.key\"\ncookie = \"rw\"\nwrite_hold = \"2500ms\"\n\
         write_methods = [\"post\", \"PURGE\"]",
    );
    let (health, pool) = (HealthRegistry::default(), UpstreamPool::default());
    let ctx = CompileCtx {
        health: &health,
        pool: &pool,
    };
    let c = compile_str(&text, &dir.path().join("t.toml"), &ctx)
        .unwrap_or_else(|e| panic!("{e}\nin:\n{text}"));
    let svc = app(&c);
    let d = svc.data.as_ref().expect("a data policy");
    assert_eq!(d.writes, WriteMode::Primary);
    let PrimarySource::Static(sr) = d.primary else {
        panic!("{:?}", d.primary)
    };
    assert_eq!(&*c.table.regions[svc.regions[sr].region].name, "ap");
    assert_eq!(d.role_header.as_str(), "x-role");
    assert_eq!(d.lag_header.as_str(), "x-lag");
    assert_eq!(d.max_read_lag_ms, Some(10_000));
    assert_eq!(d.read_lag_recover_ms, 4_000);
    assert_eq!(d.write_hold, Duration::from_millis(2_500));
    assert_eq!(
        &*d.write_methods,
        &[Method::POST, Method::from_bytes(b"PURGE").unwrap()]
    );
    assert_eq!(d.regions.len(), 2);
    let ryw = d.ryw.as_ref().expect("read-your-writes");
    assert_eq!((ryw.ttl_ms, &*ryw.cookie), (15_000, "rw"));
    // The key is the file's content with the surrounding whitespace trimmed.
    let expected = Ryw {
        ttl_ms: 15_000,
        cookie: "rw".into(),
        key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, GOOD_KEY.as_bytes()),
    };
    let mut buf = [0u8; 96];
    let value = sign_cookie(ryw, "app", 1_700_000_000_000, &mut buf);
    assert_eq!(
        verify_cookie(&expected, "app", value, 1_700_000_001_000),
        Ok(1_700_000_000_000)
    );
    // The route's rules: the longest matching prefix decides, then the write methods.
    let route = &c.table.routes[0];
    assert_eq!(route.rw_rules.len(), 3);
    for (method, path, write) in [
        ("POST", "/search?q=x", false),
        ("POST", "/orders", true),
        ("PURGE", "/cache", true),
        ("PUT", "/orders", false),
        ("DELETE", "/orders", false),
        ("GET", "/rpc/getUser", true),
        ("GET", "/logout", true),
        ("HEAD", "/logout", false),
        ("GET", "/orders", false),
    ] {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        assert_eq!(is_write(d, route, &m, path), write, "{method} {path}");
    }
}

#[test]
fn data_defaults() {
    use crate::route::data::{PrimarySource, WriteMode};
    use http::Method;

    let c = compile(&data_config("writes = \"primary\"\nprimary = \"eu\"")).unwrap();
    let svc = app(&c);
    let d = svc.data.as_ref().expect("a data policy");
    let PrimarySource::Static(sr) = d.primary else {
        panic!("{:?}", d.primary)
    };
    assert_eq!(&*c.table.regions[svc.regions[sr].region].name, "eu");
    assert_eq!(d.role_header.as_str(), "x-db-role");
    assert_eq!(d.lag_header.as_str(), "x-db-replica-lag");
    assert_eq!((d.max_read_lag_ms, d.read_lag_recover_ms), (None, 0));
    assert_eq!(d.write_hold, std::time::Duration::from_secs(5));
    assert!(d.ryw.is_none());
    assert_eq!(
        &*d.write_methods,
        &[Method::POST, Method::PUT, Method::PATCH, Method::DELETE]
    );
    // An empty section: writes anywhere, the primary learned; recovery at half the maximum lag.
    let c = compile(&data_config("max_read_lag = \"30s\"")).unwrap();
    let d = app(&c).data.as_ref().expect("a data policy");
    assert_eq!((d.writes, d.primary), (WriteMode::Any, PrimarySource::Auto));
    assert_eq!(
        (d.max_read_lag_ms, d.read_lag_recover_ms),
        (Some(30_000), 15_000)
    );
    // No section, no policy.
    let c = compile(&config("")).unwrap();
    assert!(app(&c).data.is_none());
}

#[test]
fn signing_key_errors_name_the_source_never_the_key() {
    let dir = pem_dir();
    let d = dir.path().display().to_string();
    for (keys, path) in [
        (format!("secret_file = \"{d}/short.key\""), "secret_file"),
        (
            format!(
                "secret_file = \"{d}/short.key\"\nsecret_env = \"GEOLB_TEST_SECRET_NEVER_SET\""
            ),
            "secret_env",
        ),
        (
            format!("secret_file = \"{d}/missing-rw.key\""),
            "secret_file",
        ),
    ] {
        let text = data_config(&format!("read_your_writes = \"15s\"\n{keys}"));
        let errors = compile(&text).err().expect("invalid").0;
        let all = ConfigErrors(errors.clone()).to_string();
        assert!(
            errors
                .iter()
                .any(|e| e.path == format!("services.app.data.{path}")),
            "{all}"
        );
        assert!(!all.contains(SHORT_KEY), "a key was printed: {all}");
    }
    // A missing file is named with the directory it was looked for in.
    let text = data_config("read_your_writes = \"15s\"\nsecret_file = \"nowhere/rw.key\"");
    let (health, pool) = (HealthRegistry::default(), UpstreamPool::default());
    let ctx = CompileCtx {
        health: &health,
        pool: &pool,
    };
    let errors = compile_str(&text, &dir.path().join("t.toml"), &ctx)
        .err()
        .expect("invalid");
    let want = dir.path().join("nowhere/rw.key").display().to_string();
    assert!(errors.to_string().contains(&want), "{errors}");
}

#[test]
fn a_signing_key_from_the_environment() {
    // Library code forbids `unsafe`, so `set_var` is out: use variables the test runs with.
    let usable = |len: &dyn Fn(usize) -> bool| {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .find(|(k, v)| {
                k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && len(v.trim_ascii().len())
            })
    };
    if let Some((name, value)) = usable(&|n| n >= 32) {
        let text = data_config(&format!(
            "read_your_writes = \"15s\"\nsecret_env = \"{name}\""
        ));
        let c = compile(&text).unwrap_or_else(|e| panic!("{e}"));
        let ryw = app(&c).data.as_ref().unwrap().ryw.as_ref().expect("ryw");
        let expected = crate::route::data::Ryw {
            ttl_ms: 15_000,
            cookie: "geolb_rw".into(),
            key: aws_lc_rs::hmac::Key::new(
                aws_lc_rs::hmac::HMAC_SHA256,
                value.trim_ascii().as_bytes(),
            ),
        };
        let mut buf = [0u8; 96];
        let v = crate::route::data::sign_cookie(ryw, "app", 5_000, &mut buf);
        assert_eq!(
            crate::route::data::verify_cookie(&expected, "app", v, 6_000),
            Ok(5_000)
        );
    }
    if let Some((name, value)) = usable(&|n| (1..32).contains(&n)) {
        let text = data_config(&format!(
            "read_your_writes = \"15s\"\nsecret_env = \"{name}\""
        ));
        let errors = compile(&text).err().expect("a short key").0;
        let want = format!("the key is {} bytes", value.trim_ascii().len());
        assert!(
            errors
                .iter()
                .any(|e| e.path == "services.app.data.secret_env" && e.message.contains(&want)),
            "{}",
            ConfigErrors(errors)
        );
    }
}

#[test]
fn retry_budget_and_peak_ewma_settings() {
    use std::time::Duration;
    let svc_with = |extra: &str| {
        config(&format!(
            "[services.app]\n{extra}\nbackends = [{{ region = \"eu\", address = \"10.0.0.1:80\" }}]"
        ))
    };
    // Defaults: 20 % of the last 10 s of requests plus 10 retries per second (Finagle's).
    let c = compile(&svc_with("")).unwrap();
    let svc = app(&c);
    assert_eq!(svc.retry.percent_can_retry, 0.2);
    assert_eq!(svc.retry.min_retries_per_sec, 10);
    assert_eq!(svc.retry.budget_ttl, Duration::from_secs(10));
    assert_eq!(svc.retry_budget.balance(crate::time::now_ms()), 100);
    assert_eq!(svc.lb, crate::route::LbPolicy::LeastRequest);
    assert_eq!(svc.ewma_decay_ms, 10_000);
    assert_eq!(
        svc.passive.latency_factor, 0.0,
        "latency ejection is off by default"
    );
    assert_eq!(svc.passive.latency_window_ms, 10_000);
    // Every key set.
    let c = compile(&svc_with(
        "lb = \"peak_ewma\"\newma_decay = \"3s\"\n\
         retry = { budget = 0.1, min_retries_per_sec = 5, budget_ttl = \"2s\" }",
    ))
    .unwrap();
    let svc = app(&c);
    assert_eq!(svc.retry.percent_can_retry, 0.1);
    assert_eq!(svc.retry.min_retries_per_sec, 5);
    assert_eq!(svc.retry.budget_ttl, Duration::from_secs(2));
    assert_eq!(svc.retry_budget.balance(crate::time::now_ms()), 10);
    assert_eq!(svc.lb, crate::route::LbPolicy::PeakEwma);
    assert_eq!(svc.ewma_decay_ms, 3_000);
    let c = compile(&svc_with(
        "passive = { latency_factor = 4, latency_window = \"2s\" }",
    ))
    .unwrap();
    let svc = app(&c);
    assert_eq!(svc.passive.latency_factor, 4.0);
    assert_eq!(svc.passive.latency_window_ms, 2_000);
    // The deprecated `min_retries` still loads, read as retries per second.
    let c = compile(&svc_with("retry = { min_retries = 4 }")).unwrap();
    assert_eq!(app(&c).retry.min_retries_per_sec, 4);
    assert_eq!(app(&c).retry_budget.balance(crate::time::now_ms()), 40);
    // No budget at all: no retry is ever allowed.
    let c = compile(&svc_with(
        "retry = { budget = 0.0, min_retries_per_sec = 0 }",
    ))
    .unwrap();
    assert!(!app(&c).retry_budget.try_withdraw(crate::time::now_ms()));
}
