//! Geo routing end to end: client address (trusted XFF, PROXY v1/v2) → generated City
//! database → nearest region, overrides, default order, bias, explain.

mod common;

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct World {
    g: Geolb,
    _fra: TestBackend,
    _sin: TestBackend,
}

async fn world(extra_route: &str, extra_top: &str) -> World {
    let fra = TestBackend::spawn("fra-1", "eu-central").await;
    let sin = TestBackend::spawn("sin-1", "ap-southeast").await;
    let cfg = format!(
        "{extra_top}\n[headers]\nresponse_region = true\n{}\n[[routes]]\nservice = \"app\"\ndefault_regions = [\"ap-southeast\", \"eu-central\"]\n{extra_route}\n",
        service_toml("app", &[&fra, &sin], "")
    );
    World {
        g: Geolb::start(&cfg).await,
        _fra: fra,
        _sin: sin,
    }
}

async fn served_by(g: &Geolb, client_ip: &str) -> (String, serde_json::Value) {
    let (status, headers, body) = get_as(&g.client(false), &g.url("/"), Some(client_ip)).await;
    assert_eq!(status, StatusCode::OK, "{client_ip}");
    let v = echo_json(&body);
    assert_eq!(
        headers["x-geolb-region"],
        v["region"].as_str().unwrap(),
        "response header names the region"
    );
    (v["region"].as_str().unwrap().to_owned(), v)
}

#[tokio::test]
async fn clients_reach_their_nearest_region() {
    let w = world("", "").await;
    let (r, v) = served_by(&w.g, IP_FRANKFURT).await;
    assert_eq!(r, "eu-central");
    assert_eq!(v["headers"]["x-geolb-client-country"][0], "DE");
    assert_eq!(v["headers"]["x-geolb-region"][0], "eu-central");
    assert_eq!(served_by(&w.g, IP_BERLIN).await.0, "eu-central");
    let (r, v) = served_by(&w.g, IP_SINGAPORE).await;
    assert_eq!(r, "ap-southeast");
    assert_eq!(v["headers"]["x-geolb-client-country"][0], "SG");
    assert_eq!(served_by(&w.g, IP_TOKYO).await.0, "ap-southeast");
    // Country-only record: Brazil's centroid is nearer Frankfurt than Singapore.
    let (r, v) = served_by(&w.g, IP_BRAZIL_COUNTRY_ONLY).await;
    assert_eq!(r, "eu-central");
    assert_eq!(v["headers"]["x-geolb-client-country"][0], "BR");
}

#[tokio::test]
async fn ipv6_clients_are_located() {
    let w = world("", "").await;
    assert_eq!(served_by(&w.g, IP_V6_FRANKFURT).await.0, "eu-central");
    assert_eq!(served_by(&w.g, IP_V6_SINGAPORE).await.0, "ap-southeast");
    // IPv4-mapped IPv6 is canonicalised before lookup.
    assert_eq!(
        served_by(&w.g, "::ffff:198.51.100.7").await.0,
        "ap-southeast"
    );
}

#[tokio::test]
async fn unknown_location_follows_the_default_order() {
    let w = world("", "").await;
    let (r, v) = served_by(&w.g, IP_NOWHERE).await;
    assert_eq!(r, "ap-southeast");
    assert!(v["headers"].get("x-geolb-client-country").is_none());
}

#[tokio::test]
async fn overrides_win_over_distance() {
    let w = world(
        "overrides = [ { countries = [\"CN\"], regions = [\"eu-central\"] }, { cidrs = [\"198.51.100.0/28\"], regions = [\"eu-central\"] } ]",
        "",
    )
    .await;
    assert_eq!(
        served_by(&w.g, IP_CHINA).await.0,
        "eu-central",
        "country override"
    );
    assert_eq!(
        served_by(&w.g, IP_TOKYO).await.0,
        "ap-southeast",
        "JP is not overridden"
    );
    assert_eq!(
        served_by(&w.g, "198.51.100.7").await.0,
        "eu-central",
        "CIDR override"
    );
    assert_eq!(
        served_by(&w.g, "198.51.100.77").await.0,
        "ap-southeast",
        "outside the CIDR"
    );
}

#[tokio::test]
async fn continent_override_and_bias() {
    // Bias +60 on eu-central shrinks its distances to 40 %: Tokyo (9,300 km vs 5,300 km)
    // now prefers Frankfurt.
    let fra = TestBackend::spawn("fra-1", "eu-central").await;
    let sin = TestBackend::spawn("sin-1", "ap-southeast").await;
    let (dir, certs) = prepare();
    let cfg = base_config(dir.path()).replace(
        "location = [50.11, 8.68]",
        "location = [50.11, 8.68]\nbias = 60",
    ) + "[headers]\nresponse_region = true\n"
        + &service_toml("app", &[&fra, &sin], "")
        + "[[routes]]\nservice = \"app\"\noverrides = [ { continents = [\"EU\"], regions = [\"ap-southeast\"] } ]\n";
    let g = Geolb::start_raw(dir, certs, &cfg, false).await;
    assert_eq!(served_by(&g, IP_TOKYO).await.0, "eu-central");
    assert_eq!(
        served_by(&g, IP_FRANKFURT).await.0,
        "ap-southeast",
        "continent override"
    );
}

#[tokio::test]
async fn xff_from_an_untrusted_peer_is_ignored() {
    let w = world("", "").await;
    // Same world, but loopback is no longer trusted.
    let text = std::fs::read_to_string(&w.g.config).unwrap().replace(
        "trusted_proxies = [\"127.0.0.0/8\"]",
        "trusted_proxies = [\"10.0.0.0/8\"]",
    );
    let g = Geolb::start_raw(
        tempfile::tempdir().unwrap(),
        TestCerts::generate(w.g.dir.path()),
        &text,
        false,
    )
    .await;
    let (status, _, body) = get_as(&g.client(false), &g.url("/"), Some(IP_FRANKFURT)).await;
    assert_eq!(status, StatusCode::OK);
    let v = echo_json(&body);
    // 127.0.0.1 is not in the database: default order, not Frankfurt.
    assert_eq!(v["region"], "ap-southeast");
    assert!(v["headers"].get("x-geolb-client-country").is_none());
    // The claimed address is still passed on, with the real peer appended.
    assert_eq!(
        v["headers"]["x-forwarded-for"][0],
        format!("{IP_FRANKFURT}, 127.0.0.1")
    );
}

async fn proxied_get(addr: std::net::SocketAddr, header: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(header).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("no answer")
        .ok();
    String::from_utf8_lossy(&buf).into_owned()
}

fn v2_header(src: &str) -> Vec<u8> {
    let src: std::net::SocketAddr = src.parse().unwrap();
    let dst: std::net::SocketAddr = if src.is_ipv4() {
        "127.0.0.1:80".parse().unwrap()
    } else {
        "[::1]:80".parse().unwrap()
    };
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (src, dst),
    )
    .build()
    .unwrap()
}

#[tokio::test]
async fn proxy_protocol_v2_and_v1_carry_the_client_address() {
    let w = world("", "").await;
    let text = std::fs::read_to_string(&w.g.config).unwrap().replace(
        "[client_ip]\ntrusted_proxies",
        "[client_ip]\nproxy_protocol = true\ntrusted_proxies",
    );
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(dir.path());
    let g = Geolb::start_raw(dir, certs, &text, false).await;
    let http = g.http.unwrap();
    let resp = proxied_get(http, &v2_header("198.51.100.7:5555")).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"region\":\"ap-southeast\""), "{resp}");
    assert!(
        resp.contains("\"x-forwarded-for\":[\"198.51.100.7\"]"),
        "{resp}"
    );
    let resp = proxied_get(http, &v2_header("[2001:db8:1::42]:5555")).await;
    assert!(resp.contains("\"region\":\"eu-central\""), "{resp}");
    let resp = proxied_get(http, b"PROXY TCP4 192.0.2.10 127.0.0.1 5555 80\r\n").await;
    assert!(resp.contains("\"region\":\"eu-central\""), "{resp}");
}

#[tokio::test]
async fn malformed_proxy_header_closes_without_reaching_a_backend() {
    let fra = TestBackend::spawn("fra-1", "eu-central").await;
    let (dir, certs) = prepare();
    let cfg = base_config(dir.path())
        .replace("[client_ip]\n", "[client_ip]\nproxy_protocol = true\n")
        + &service_toml("app", &[&fra], "")
        + "[[routes]]\nservice = \"app\"\n";
    let g = Geolb::start_raw(dir, certs, &cfg, false).await;
    for bad in [
        &b"PROXY TCP4 999.1.1.1 127.0.0.1 1 2\r\n"[..],
        &b"PROXY GARBAGE\r\n"[..],
        &b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff"[..],
        &b""[..], // no PROXY header at all: plain HTTP is refused
    ] {
        let resp = proxied_get(g.http.unwrap(), bad).await;
        assert!(resp.is_empty(), "{bad:?} got an answer: {resp}");
    }
    // TLS listener too.
    let resp = proxied_get(g.https.unwrap(), b"PROXY NOPE\r\n").await;
    assert!(resp.is_empty());
    assert_eq!(fra.hits(), 0);
}

#[tokio::test]
async fn explain_reports_the_decision() {
    let w = world(
        "overrides = [ { countries = [\"CN\"], regions = [\"eu-central\"] } ]",
        "",
    )
    .await;
    let (status, text) = admin_get(
        &w.g,
        &format!("/explain?ip={IP_SINGAPORE}&host=localhost&path=/x"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["geo"]["country"], "SG");
    assert_eq!(v["geo"]["precision"], "city");
    assert_eq!(v["rule"], "distance");
    assert_eq!(v["candidates"][0]["region"], "ap-southeast");
    assert_eq!(v["candidates"][1]["region"], "eu-central");
    let d0 = v["candidates"][0]["distance_km"].as_f64().unwrap();
    let d1 = v["candidates"][1]["distance_km"].as_f64().unwrap();
    assert!(d0 < 10.0 && d1 > 10_000.0, "{d0} {d1}");
    assert_eq!(v["chosen"]["region"], "ap-southeast");
    assert_eq!(v["chosen"]["backend"], w._sin.addr.to_string());
    let (_, text) = admin_get(&w.g, &format!("/explain?ip={IP_CHINA}")).await;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["rule"], "override[0]");
    assert_eq!(v["chosen"]["region"], "eu-central");
    let (_, text) = admin_get(&w.g, &format!("/explain?ip={IP_NOWHERE}")).await;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["rule"], "default_order");
    assert_eq!(v["geo"]["found"], false);
}

#[tokio::test]
async fn hash_policy_keeps_a_client_on_one_backend() {
    let a = TestBackend::spawn("fra-1", "eu-central").await;
    let b = TestBackend::spawn("fra-2", "eu-central").await;
    let cfg = service_toml("app", &[&a, &b], "lb = \"hash\"\nhash_key = \"client_ip\"")
        + "[[routes]]\nservice = \"app\"\n";
    let g = Geolb::start(&cfg).await;
    let client = g.client(false);
    let mut seen = std::collections::HashMap::new();
    for i in 0..40 {
        let ip = format!("192.0.2.{}", i % 8 + 1);
        let (_, h, _) = get_as(&client, &g.url("/"), Some(&ip)).await;
        let backend = h["x-backend"].to_str().unwrap().to_owned();
        let prev = seen.entry(ip.clone()).or_insert_with(|| backend.clone());
        assert_eq!(*prev, backend, "{ip} moved between backends");
    }
    let distinct: std::collections::HashSet<_> = seen.values().collect();
    assert_eq!(
        distinct.len(),
        2,
        "8 clients should spread over both backends: {seen:?}"
    );
}
