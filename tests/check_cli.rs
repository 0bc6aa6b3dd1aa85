//! `geolb check`: every error with file:line:column and field path, exit codes.

use std::process::Command;

fn check(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_geolb"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    let stderr =
        String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "routes.toml");
    let stdout =
        String::from_utf8_lossy(&out.stdout).replace(&path.display().to_string(), "routes.toml");
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

const GOOD: &str = r#"
[listeners]
http = { address = "127.0.0.1:0", mode = "serve" }

[regions.eu]
location = [50.1, 8.7]

[services.app]
backends = [{ region = "eu", address = "127.0.0.1:9" }]

[[routes]]
hosts = ["example.com"]
service = "app"
"#;

#[test]
fn valid_file_prints_a_summary_and_exits_0() {
    let (code, out, err) = check(GOOD);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ok: 1 routes, 1 services, 1 regions, 1 backends"),
        "{out}"
    );
}

#[test]
fn syntax_error_names_file_line_and_column() {
    let (code, _, err) = check("[listeners]\nhttp = { address = \"127.0.0.1:0\" \n");
    assert_eq!(code, 1);
    assert!(err.contains("routes.toml:2:"), "{err}");
}

#[test]
fn unknown_key_names_the_field_and_suggests_the_right_one() {
    let bad = GOOD.replace("hosts = [", "hots = [");
    let (code, _, err) = check(&bad);
    assert_eq!(code, 1);
    assert!(
        err.contains("routes.toml:12:1: routes[0].hots: unknown field `hots`"),
        "{err}"
    );
    assert!(err.contains("did you mean `hosts`?"), "{err}");
}

#[test]
fn every_semantic_error_is_reported_with_its_path() {
    let bad = GOOD
        .replace("service = \"app\"", "service = \"ap\"")
        .replace("region = \"eu\"", "region = \"us\"")
        .replace("location = [50.1, 8.7]", "location = [150.1, 8.7]");
    let (code, _, err) = check(&bad);
    assert_eq!(code, 1);
    assert!(
        err.contains("routes.toml:6:12: regions.eu.location:"),
        "{err}"
    );
    assert!(err.contains("routes.toml:9:24: services.app.backends[0].region: unknown region `us` (did you mean `eu`?)"), "{err}");
    assert!(err.contains("3 error(s)"), "{err}");
    // The route error is reported even though its service had errors? No: the service exists
    // but failed, so the route is not double-reported; the typo'd name is.
    assert!(
        err.contains("routes[0].service: unknown service `ap` (did you mean `app`?)"),
        "{err}"
    );
}

#[test]
fn bad_durations_and_addresses_are_errors() {
    let bad = GOOD
        .replace(
            "[regions.eu]",
            "[timeouts]\nupstream_connect = \"3 parsecs\"\n\n[regions.eu]",
        )
        .replace("127.0.0.1:0", "localhost:http");
    let (code, _, err) = check(&bad);
    assert_eq!(code, 1);
    assert!(
        err.contains("timeouts.upstream_connect: unknown duration unit"),
        "{err}"
    );
    assert!(
        err.contains("listeners.http.address: `localhost:http` is not an address"),
        "{err}"
    );
}

#[test]
fn the_shipped_configurations_are_valid() {
    for file in ["conf/routes.toml", "conf/demo.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let out = Command::new(env!("CARGO_BIN_EXE_geolb"))
            .arg("check")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[path = "common/mod.rs"]
mod common;

#[test]
fn explain_prints_the_decision_offline() {
    let dir = tempfile::tempdir().unwrap();
    let db = common::write_city_mmdb(dir.path());
    let cfg = GOOD.replace("[regions.eu]", &format!("[geo]\ndatabase = \"{}\"\n\n[regions.ap]\nlocation = [1.29, 103.85]\n\n[regions.eu]", db.display()))
        .replace("backends = [{ region = \"eu\", address = \"127.0.0.1:9\" }]", "backends = [{ region = \"eu\", address = \"127.0.0.1:9\" }, { region = \"ap\", address = \"127.0.0.1:10\" }]");
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, cfg).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_geolb"))
        .args([
            "explain",
            "--config",
            path.to_str().unwrap(),
            "--ip",
            common::IP_SINGAPORE,
            "--host",
            "example.com",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["geo"]["country"], "SG");
    assert_eq!(v["route"]["service"], "app");
    assert_eq!(v["candidates"][0]["region"], "ap");
    assert_eq!(v["chosen"]["region"], "ap");
}

#[test]
fn bad_histogram_buckets_are_an_error() {
    let (code, _, err) = check(&GOOD.replace(
        "[regions.eu]",
        "[metrics]\nbuckets = [1.0, 0.5]\n\n[regions.eu]",
    ));
    assert_eq!(code, 1);
    assert!(
        err.contains("metrics.buckets: buckets must be positive seconds in increasing order"),
        "{err}"
    );
}
