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

/// PEM files for the certificate cases: `a.pem` + `a.key` match, `other.key` does not.
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

/// (fragment, field path, message substring). `{dir}` is a directory with PEM files, `{s}` a
/// valid `[services.s]`, `{17 regions}` a service spanning too many regions.
const CASES: &[(&str, &str, &str)] = &[
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
