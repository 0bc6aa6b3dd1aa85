//! The data layer, against real backends that report their database's role and replica lag
//! in their health answers: writes to the primary's region from everywhere, reads by
//! geography, lagging regions skipped with hysteresis, read-your-writes cookies, automatic
//! primary with a promotion under load, split brain and the write hold.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;

const HEALTH: &str = "health = { path = \"/healthz\", interval = \"100ms\", unhealthy_interval = \"100ms\", timeout = \"500ms\", healthy = 1, unhealthy = 2 }";

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Body,
>;

/// One request as a client at `xff`, with an optional cookie header.
async fn send(
    c: &Client,
    g: &Geolb,
    method: &str,
    path: &str,
    xff: &str,
    cookie: Option<&str>,
) -> (StatusCode, HeaderMap, String) {
    let mut b = Request::builder()
        .method(method)
        .uri(g.url(path))
        .header("x-forwarded-for", xff);
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    let resp = tokio::time::timeout(WAIT, c.request(b.body(full("")).unwrap()))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn backend_of(h: &HeaderMap) -> String {
    h.get("x-backend")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Two regions, one backend each; `data` is the `[services.app.data]` body.
async fn start(data: &str) -> (Geolb, TestBackend, TestBackend) {
    let fra = TestBackend::spawn("fra-1", "eu-central").await;
    let sin = TestBackend::spawn("sin-1", "ap-southeast").await;
    fra.db.set("primary", 0);
    sin.db.set("replica", 200);
    let cfg = format!(
        "{}\n[services.app.data]\n{data}\n\n[[routes]]\nservice = \"app\"\nreads = [\"POST /search\"]\n",
        service_toml("app", &[&fra, &sin], HEALTH)
    );
    let g = Geolb::start(&cfg).await;
    (g, fra, sin)
}

async fn data_status(g: &Geolb) -> serde_json::Value {
    let s = reload_status(g).await;
    s["services"][0]["data"].clone()
}

async fn wait_primary(g: &Geolb, want: Option<&str>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let d = data_status(g).await;
        if d["primary"].as_str() == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "primary never became {want:?}: {d}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Send GETs as `xff` until one is served by `backend` (lag and health are learned from
/// periodic checks, so the switch is awaited, not timed).
async fn reads_reach(c: &Client, g: &Geolb, xff: &str, cookie: Option<&str>, backend: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (s, h, _) = send(c, g, "GET", "/orders", xff, cookie).await;
        if s == StatusCode::OK && backend_of(&h) == backend {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reads from {xff} never reached {backend} (last: {s} {})",
            backend_of(&h)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_to_the_primary_from_everywhere_and_reads_follow_geography() {
    let (mut g, fra, sin) = start("writes = \"primary\"\nprimary = \"auto\"").await;
    wait_primary(&g, Some("eu-central")).await;
    let c = g.client(false);
    for xff in [
        IP_TOKYO,
        IP_SINGAPORE,
        IP_FRANKFURT,
        IP_V6_SINGAPORE,
        IP_NOWHERE,
    ] {
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            let (s, h, _) = send(&c, &g, method, "/orders", xff, None).await;
            assert_eq!(s, StatusCode::OK, "{method} from {xff}");
            assert_eq!(backend_of(&h), "fra-1", "{method} from {xff}");
        }
    }
    // Reads (and a POST the route declares a read) stay near the client.
    reads_reach(&c, &g, IP_TOKYO, None, "sin-1").await;
    let (_, h, _) = send(&c, &g, "POST", "/search?q=x", IP_SINGAPORE, None).await;
    assert_eq!(
        backend_of(&h),
        "sin-1",
        "a POST declared a read is routed as a read"
    );
    let (_, h, _) = send(&c, &g, "GET", "/orders", IP_FRANKFURT, None).await;
    assert_eq!(backend_of(&h), "fra-1");
    assert_eq!(
        sin.db.writes(),
        1,
        "only the declared-read POST reached Singapore"
    );
    assert_eq!(sin.db.writes_as_replica(), 1);
    assert_eq!(fra.db.writes_as_replica(), 0);
    // Visible: explain says write/read and the primary; metrics count writes per region.
    let (_, text) = admin_get(
        &g,
        &format!("/explain?ip={IP_TOKYO}&host=localhost&path=/orders&method=POST"),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["data"]["request"], "write", "{v}");
    assert_eq!(v["data"]["primary"], "eu-central", "{v}");
    assert_eq!(v["chosen"]["region"], "eu-central", "{v}");
    let (_, m) = admin_get(&g, "/metrics").await;
    assert!(
        metric(
            &m,
            "geolb_write_requests_total{service=\"app\",region=\"eu-central\",outcome=\"served\"}"
        ) >= 20.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "geolb_primary_region{service=\"app\",region=\"eu-central\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "geolb_region_replica_lag_seconds{service=\"app\",region=\"ap-southeast\"}"
        ),
        0.2
    );
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_region_is_skipped_for_reads_with_hysteresis() {
    let (mut g, _fra, sin) = start(
        "writes = \"primary\"\nprimary = \"eu-central\"\nmax_read_lag = \"2s\"\nread_lag_recover = \"1s\"",
    )
    .await;
    let c = g.client(false);
    reads_reach(&c, &g, IP_TOKYO, None, "sin-1").await;
    sin.db.set("replica", 5_000);
    reads_reach(&c, &g, IP_TOKYO, None, "fra-1").await;
    // Between the recovery level and the maximum: still skipped (no flapping).
    sin.db.set("replica", 1_500);
    eventually_status_lag(&g, 1.5).await;
    for _ in 0..20 {
        let (_, h, _) = send(&c, &g, "GET", "/orders", IP_TOKYO, None).await;
        assert_eq!(
            backend_of(&h),
            "fra-1",
            "hysteresis: 1.5 s is above read_lag_recover"
        );
    }
    let (_, text) = admin_get(
        &g,
        &format!("/explain?ip={IP_TOKYO}&host=localhost&path=/orders"),
    )
    .await;
    assert!(text.contains("lag above max_read_lag"), "{text}");
    sin.db.set("replica", 500);
    reads_reach(&c, &g, IP_TOKYO, None, "sin-1").await;
    g.shutdown().await;
}

async fn eventually_status_lag(g: &Geolb, secs: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let d = data_status(g).await;
        if d["regions"][1]["lag_seconds"].as_f64() == Some(secs) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lag never {secs}: {d}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn cookie_pair(h: &HeaderMap) -> String {
    let v = h
        .get("set-cookie")
        .expect("a successful write sets the read-your-writes cookie")
        .to_str()
        .unwrap();
    v.split(';').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_a_write_wait_for_a_fresh_region_and_forged_cookies_are_ignored() {
    let (dir, certs) = prepare();
    let key = dir.path().join("rw.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef-test-key\n").unwrap();
    let fra = TestBackend::spawn("fra-1", "eu-central").await;
    let sin = TestBackend::spawn("sin-1", "ap-southeast").await;
    fra.db.set("primary", 0);
    sin.db.set("replica", 1_500);
    let cfg = format!(
        "{}\n{}\n[services.app.data]\nwrites = \"primary\"\nprimary = \"auto\"\nread_your_writes = \"30s\"\nsecret_file = \"{}\"\n\n[[routes]]\nservice = \"app\"\n",
        base_config(dir.path()),
        service_toml("app", &[&fra, &sin], HEALTH),
        key.display()
    );
    let mut g = Geolb::start_raw(dir, certs, &cfg, true).await;
    wait_primary(&g, Some("eu-central")).await;
    let c = g.client(false);
    reads_reach(&c, &g, IP_TOKYO, None, "sin-1").await;
    let (s, h, _) = send(&c, &g, "POST", "/orders", IP_TOKYO, None).await;
    assert_eq!((s, backend_of(&h).as_str()), (StatusCode::OK, "fra-1"));
    let set = h["set-cookie"].to_str().unwrap().to_owned();
    for attr in ["Max-Age=30", "Path=/", "HttpOnly", "SameSite=Lax", "Secure"] {
        assert!(set.contains(attr), "{set}");
    }
    let cookie = cookie_pair(&h);
    // Right after the write Singapore's data (1.5 s behind) is older than the write.
    let (_, h, _) = send(&c, &g, "GET", "/orders", IP_TOKYO, Some(&cookie)).await;
    assert_eq!(backend_of(&h), "fra-1", "a stale region is skipped");
    // Without the cookie the same client reads nearby; with a forged one too.
    let (_, h, _) = send(&c, &g, "GET", "/orders", IP_TOKYO, None).await;
    assert_eq!(backend_of(&h), "sin-1");
    let forged = {
        let (name, value) = cookie.split_once('=').unwrap();
        let mut v = value.as_bytes().to_vec();
        let last = v.len() - 1;
        v[last] = if v[last] == b'0' { b'1' } else { b'0' };
        format!("{name}={}", String::from_utf8(v).unwrap())
    };
    // Correctly signed (the test knows the key) but older than read_your_writes: expired.
    let expired = {
        let key = aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            b"0123456789abcdef0123456789abcdef-test-key",
        );
        let ms = geolb::time::unix_ms() - 31_000;
        let tag = aws_lc_rs::hmac::sign(&key, format!("v1.app.{ms}").as_bytes());
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("geolb_rw=v1.{ms}.{hex}")
    };
    for bad in [
        forged.as_str(),
        expired.as_str(),
        "geolb_rw=v1.99999999999999.00",
        "geolb_rw=garbage",
    ] {
        let (s, h, _) = send(&c, &g, "GET", "/orders", IP_TOKYO, Some(bad)).await;
        assert_eq!(
            (s, backend_of(&h).as_str()),
            (StatusCode::OK, "sin-1"),
            "{bad}"
        );
    }
    // Once Singapore has replayed past the write, reads with the cookie go back to it.
    reads_reach(&c, &g, IP_TOKYO, Some(&cookie), "sin-1").await;
    let (_, m) = admin_get(&g, "/metrics").await;
    let ryw = |d: &str| {
        metric(
            &m,
            &format!("geolb_read_your_writes_total{{service=\"app\",decision=\"{d}\"}}"),
        )
    };
    assert!(ryw("redirected") >= 1.0, "{m}");
    assert!(ryw("nearest") >= 1.0, "{m}");
    assert_eq!(ryw("invalid"), 4.0, "{m}");
    // A failed write sets no cookie.
    let (s, h, _) = send(&c, &g, "POST", "/status/500", IP_TOKYO, None).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(h.get("set-cookie").is_none());
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_primary_follows_a_promotion_under_load_without_misdirected_writes() {
    let (mut g, fra, sin) =
        start("writes = \"primary\"\nprimary = \"auto\"\nwrite_hold = \"20s\"").await;
    wait_primary(&g, Some("eu-central")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut writers = Vec::new();
    for (i, xff) in [IP_TOKYO, IP_FRANKFURT, IP_SINGAPORE, IP_BERLIN]
        .into_iter()
        .enumerate()
    {
        let c = g.client(i % 2 == 1);
        let url = g.url("/orders");
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        writers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let req = Request::post(&url)
                    .header("x-forwarded-for", xff)
                    .body(full("{}"))
                    .unwrap();
                match c.request(req).await {
                    Ok(r) if r.status() == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    eventually("writes flow", || ok.load(Ordering::Relaxed) >= 50).await;
    // The database fails over: the old primary is demoted first, then the replica promoted.
    fra.db.set("replica", 0);
    wait_primary(&g, None).await;
    // From the moment geolb knows, no write may reach the demoted region.
    let misdirected_before = fra.db.writes_as_replica();
    let at_demotion = ok.load(Ordering::Relaxed);
    sin.db.set("primary", 0);
    wait_primary(&g, Some("ap-southeast")).await;
    eventually("writes flow to the new primary", || {
        sin.db.writes() >= 50 && ok.load(Ordering::Relaxed) >= at_demotion + 50
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(
        fra.db.writes_as_replica(),
        misdirected_before,
        "writes reached the demoted region after geolb saw the demotion"
    );
    assert_eq!(sin.db.writes_as_replica(), 0, "writes reached the replica");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "held writes must not fail"
    );
    let (_, m) = admin_get(&g, "/metrics").await;
    assert!(
        metric(&m, "geolb_write_hold_seconds_count{service=\"app\"}") >= 1.0,
        "{m}"
    );
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_brain_holds_writes_then_refuses_them_and_says_so() {
    let (mut g, _fra, sin) =
        start("writes = \"primary\"\nprimary = \"auto\"\nwrite_hold = \"300ms\"").await;
    wait_primary(&g, Some("eu-central")).await;
    sin.db.set("primary", 0);
    let deadline = tokio::time::Instant::now() + WAIT;
    while data_status(&g).await["split_brain"] != true {
        assert!(
            tokio::time::Instant::now() < deadline,
            "split brain never seen"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let c = g.client(false);
    let started = std::time::Instant::now();
    let (s, h, _) = send(&c, &g, "POST", "/orders", IP_TOKYO, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h["retry-after"], "1");
    assert_eq!(h["x-geolb-error"], "write_held");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(300),
        "held first"
    );
    // Reads still work.
    let (s, _, _) = send(&c, &g, "GET", "/orders", IP_TOKYO, None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, m) = admin_get(&g, "/metrics").await;
    assert_eq!(metric(&m, "geolb_data_split_brain{service=\"app\"}"), 1.0);
    assert!(
        metric(
            &m,
            "geolb_write_requests_total{service=\"app\",region=\"none\",outcome=\"held_out\"}"
        ) >= 1.0
    );
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_held_during_a_failover_is_served_when_the_new_primary_appears() {
    let (mut g, fra, sin) =
        start("writes = \"primary\"\nprimary = \"auto\"\nwrite_hold = \"30s\"").await;
    wait_primary(&g, Some("eu-central")).await;
    fra.db.set("replica", 0);
    wait_primary(&g, None).await;
    let c = g.client(false);
    let url = g.url("/orders");
    let held = tokio::spawn(async move {
        let req = Request::post(&url)
            .header("x-forwarded-for", IP_FRANKFURT)
            .body(full(""))
            .unwrap();
        let r = c.request(req).await.unwrap();
        (r.status(), backend_of(r.headers()))
    });
    assert!(
        still_pending_after(&held, std::time::Duration::from_millis(300)).await,
        "the write waits for a primary"
    );
    sin.db.set("primary", 0);
    let (s, b) = held.await.unwrap();
    assert_eq!((s, b.as_str()), (StatusCode::OK, "sin-1"));
    g.shutdown().await;
}
