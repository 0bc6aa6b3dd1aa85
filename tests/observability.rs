//! `/metrics` counts what was sent, `/status` (JSON and HTML) shows failures, and the access
//! log records every attempt. Writes the exposition for `promtool check metrics` in CI.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use common::*;
use http::{Request, StatusCode};

/// (name, labels) → value, from the Prometheus text format.
fn parse(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        for kv in labels.split("\",").filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap();
            map.insert(k.to_owned(), v.trim_matches('"').to_owned());
        }
        out.push((name.to_owned(), map, value.parse().unwrap_or(f64::NAN)));
    }
    out
}

fn value(
    m: &[(String, BTreeMap<String, String>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    m.iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

const HEALTH: &str = "health = { path = \"/healthz\", interval = \"100ms\", unhealthy_interval = \"100ms\", healthy = 1, unhealthy = 1 }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_mix_and_show_a_stopped_backend() {
    let mut fra = TestBackend::spawn("fra-1", "eu-central").await;
    let sin = TestBackend::spawn("sin-1", "ap-southeast").await;
    let cfg = service_toml("obs", &[&fra, &sin], HEALTH)
        + "[[routes]]\nhosts = [\"obs.geolb.test\"]\nservice = \"obs\"\n";
    let g = Geolb::start(&cfg).await;
    let c = g.client(false);
    let send = |path: &'static str, ip: &'static str| {
        let req = Request::get(g.url(path))
            .header("host", "obs.geolb.test")
            .header("x-forwarded-for", ip)
            .body(full(""))
            .unwrap();
        let c = c.clone();
        async move { c.request(req).await.unwrap().status() }
    };
    for _ in 0..7 {
        assert_eq!(send("/a", IP_FRANKFURT).await, StatusCode::OK);
    }
    for _ in 0..5 {
        assert_eq!(send("/b", IP_SINGAPORE).await, StatusCode::OK);
    }
    for _ in 0..3 {
        assert_eq!(
            send("/status/404", IP_FRANKFURT).await,
            StatusCode::NOT_FOUND
        );
    }
    let (_, text) = admin_get(&g, "/metrics").await;
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("metrics.prom"),
        &text,
    )
    .unwrap();
    let m = parse(&text);
    let route = "obs.geolb.test/";
    assert_eq!(
        value(
            &m,
            "geolb_requests_total",
            &[("route", route), ("region", "eu-central"), ("class", "2xx")]
        ),
        7.0
    );
    assert_eq!(
        value(
            &m,
            "geolb_requests_total",
            &[("route", route), ("region", "eu-central"), ("class", "4xx")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &m,
            "geolb_requests_total",
            &[
                ("route", route),
                ("region", "ap-southeast"),
                ("class", "2xx")
            ]
        ),
        5.0
    );
    assert_eq!(
        value(
            &m,
            "geolb_request_duration_seconds_count",
            &[("route", route), ("region", "eu-central")]
        ),
        10.0
    );
    assert_eq!(
        value(
            &m,
            "geolb_request_duration_seconds_count",
            &[("route", route), ("region", "ap-southeast")]
        ),
        5.0
    );
    assert_eq!(
        value(
            &m,
            "geolb_request_duration_seconds_bucket",
            &[("route", route), ("region", "ap-southeast"), ("le", "+Inf")]
        ),
        5.0
    );
    assert!(value(&m, "geolb_geo_lookups_total", &[("result", "city")]) >= 15.0);
    assert!(value(&m, "geolb_geo_country_requests_total", &[("country", "SG")]) >= 5.0);
    assert!(
        value(
            &m,
            "geolb_tls_handshakes_total",
            &[("result", "ok"), ("version", "TLSv1.3")]
        ) >= 1.0
    );
    assert_eq!(
        value(
            &m,
            "geolb_backend_up",
            &[("service", "obs"), ("backend", &fra.addr.to_string())]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "geolb_region_state",
            &[
                ("service", "obs"),
                ("region", "eu-central"),
                ("state", "healthy")
            ]
        ),
        1.0
    );
    assert_eq!(value(&m, "geolb_config_generation", &[]), 1.0);

    // A stopped backend shows as down.
    fra.stop().await;
    let h = {
        let snap = g.shared().edge.snapshot.load();
        snap.table.services[0]
            .backends
            .iter()
            .find(|b| *b.name == fra.addr.to_string())
            .unwrap()
            .health
            .clone()
    };
    eventually("fra-1 marked down", || !h.is_up()).await;
    let (_, text) = admin_get(&g, "/metrics").await;
    let m = parse(&text);
    assert_eq!(
        value(
            &m,
            "geolb_backend_up",
            &[("service", "obs"), ("backend", &fra.addr.to_string())]
        ),
        0.0
    );
    assert_eq!(
        value(
            &m,
            "geolb_region_state",
            &[
                ("service", "obs"),
                ("region", "eu-central"),
                ("state", "down")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "geolb_region_health_ratio",
            &[("service", "obs"), ("region", "eu-central")]
        ),
        0.0
    );
    // And Frankfurt's clients spill to Singapore, counted as spillover.
    assert_eq!(send("/a", IP_FRANKFURT).await, StatusCode::OK);
    let (_, text) = admin_get(&g, "/metrics").await;
    let m = parse(&text);
    assert_eq!(
        value(
            &m,
            "geolb_spillover_requests_total",
            &[
                ("route", route),
                ("from", "eu-central"),
                ("to", "ap-southeast")
            ]
        ),
        1.0
    );
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("metrics.prom"),
        &text,
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_and_html_mark_a_failed_region() {
    let mut fra = TestBackend::spawn("fra-1", "eu-central").await;
    let fra2 = TestBackend::spawn("fra-2", "eu-central").await;
    let sin = TestBackend::spawn("sin-1", "ap-southeast").await;
    let cfg = service_toml("st", &[&fra, &fra2, &sin], HEALTH)
        + "[[routes]]\npath_prefix = \"/st\"\nservice = \"st\"\n";
    let g = Geolb::start(&cfg).await;
    fra.stop().await;
    let shared = g.shared().clone();
    eventually("fra-1 down", || {
        !shared.edge.snapshot.load().table.services[0].backends[0]
            .health
            .is_up()
    })
    .await;
    let (status, text) = admin_get(&g, "/status").await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let eu = &v["services"][0]["regions"][0];
    assert_eq!(eu["region"], "eu-central");
    assert_eq!(eu["state"], "spilling", "{eu}");
    assert_eq!(eu["health"], 0.5);
    assert!(
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["text"].as_str().unwrap().contains("is unhealthy"))
    );
    let req = Request::get(g.admin_url("/status"))
        .header("accept", "text/html")
        .body(full(""))
        .unwrap();
    let resp = plain_client().request(req).await.unwrap();
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = String::from_utf8(
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        html.contains("<tr class=\"spilling\"><td>eu-central</td><td>spilling</td>"),
        "{html}"
    );
    assert!(html.contains("http-equiv=\"refresh\""));
    // Now the whole region.
    let mut fra2 = fra2;
    fra2.stop().await;
    eventually("fra-2 down", || {
        !shared.edge.snapshot.load().table.services[0].backends[1]
            .health
            .is_up()
    })
    .await;
    let (_, text) = admin_get(&g, "/status").await;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["services"][0]["regions"][0]["state"], "down");
    let (s, _) = admin_get(&g, "/readyz").await;
    assert_eq!(s, StatusCode::OK, "Singapore can still serve");
    let (s, body) = admin_get(&g, "/healthz").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "ok\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_shows_every_attempt_of_a_retried_request() {
    let mut a1 = TestBackend::spawn("fra-1", "eu-central").await;
    let a2 = TestBackend::spawn("fra-2", "eu-central").await;
    a1.stop().await;
    let (dir, certs) = prepare();
    let log = dir.path().join("access.log");
    let cfg = base_config(dir.path()).replace(
        "[access_log]\nenabled = false",
        &format!("[access_log]\nenabled = true\npath = \"{}\"", log.display()),
    ) + &service_toml("al", &[&a1, &a2], "lb = \"round_robin\"")
        + "[[routes]]\nservice = \"al\"\n";
    let g = Geolb::start_raw(dir, certs, &cfg, false).await;
    let (status, _, _) = get_as(
        &g.client(false),
        &g.url("/retry-me?x=1"),
        Some(IP_FRANKFURT),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut line = String::new();
    eventually("access log line written", || {
        line = std::fs::read_to_string(&log).unwrap_or_default();
        line.contains("/retry-me")
    })
    .await;
    let v: serde_json::Value =
        serde_json::from_str(line.lines().find(|l| l.contains("/retry-me")).unwrap()).unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["client_ip"], IP_FRANKFURT);
    assert_eq!(v["country"], "DE");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/retry-me?x=1");
    assert_eq!(v["route"], "*/");
    assert_eq!(v["region"], "eu-central");
    assert_eq!(v["backend"], a2.addr.to_string());
    assert_eq!(v["tls_version"], "TLSv1.3");
    assert_eq!(v["alpn"], "none", "this test client offers no ALPN");
    let attempts = v["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{v}");
    assert_eq!(attempts[0]["backend"], a1.addr.to_string());
    assert_eq!(attempts[0]["error"], "upstream_connect");
    assert_eq!(attempts[1]["backend"], a2.addr.to_string());
    assert_eq!(attempts[1]["status"], 200);
    assert!(v["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(v["bytes_out"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(a2.hits.load(Ordering::Relaxed), 1);
}
