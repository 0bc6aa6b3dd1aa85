//! Health checks, distance-ordered spillover, damped fail-back and retries, against real
//! backends that are stopped and restarted while a client streams requests.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use common::*;
use http::{Request, StatusCode};

const HEALTH: &str = "health = { path = \"/healthz\", interval = \"200ms\", unhealthy_interval = \"100ms\", timeout = \"300ms\", healthy = 2, unhealthy = 2 }";

fn backend_health(g: &Geolb, name: &str) -> Arc<geolb::health::BackendHealth> {
    let snap = g.shared().edge.snapshot.load_full();
    for svc in snap.table.services.iter() {
        for b in svc.backends.iter() {
            if &*b.name == name {
                return b.health.clone();
            }
        }
    }
    panic!("no backend {name}")
}

/// Send `n` GETs as a client in Frankfurt; return hits per backend and the failures.
async fn burst(g: &Geolb, n: usize) -> (HashMap<String, usize>, usize, Vec<(u64, String)>) {
    let client = g.client(false);
    let mut hits = HashMap::new();
    let mut failed = 0;
    let mut timeline = Vec::new();
    for _ in 0..n {
        let (status, headers, _) = get_as(&client, &g.url("/"), Some(IP_FRANKFURT)).await;
        if status != StatusCode::OK {
            failed += 1;
            continue;
        }
        let b = headers["x-backend"].to_str().unwrap().to_owned();
        timeline.push((geolb::time::now_ms(), b.clone()));
        *hits.entry(b).or_insert(0) += 1;
    }
    (hits, failed, timeline)
}

fn count(h: &HashMap<String, usize>, names: &[&str]) -> usize {
    names.iter().map(|n| h.get(*n).copied().unwrap_or(0)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_failure_spills_gradually_and_fails_back_without_errors() {
    let mut a1 = TestBackend::spawn("fra-1", "eu-central").await;
    let mut a2 = TestBackend::spawn("fra-2", "eu-central").await;
    let b1 = TestBackend::spawn("sin-1", "ap-southeast").await;
    let b2 = TestBackend::spawn("sin-2", "ap-southeast").await;
    let extra = format!(
        "{HEALTH}\nspillover = {{ overprovisioning = 1.4, failback_delay = \"1500ms\" }}\npassive = {{ consecutive_failures = 2, base_ejection = \"2s\" }}\nretry = {{ attempts = 3 }}"
    );
    let cfg =
        service_toml("spill", &[&a1, &a2, &b1, &b2], &extra) + "[[routes]]\nservice = \"spill\"\n";
    let g = Geolb::start(&cfg).await;
    let (a, b) = (["fra-1", "fra-2"], ["sin-1", "sin-2"]);
    let mut total_failed = 0;

    // 1. Healthy: everything stays in Frankfurt.
    let (h, f, _) = burst(&g, 100).await;
    total_failed += f;
    assert_eq!(count(&h, &a), 100, "{h:?}");

    // 2. One of two Frankfurt backends dies: A keeps min(1, 0.5 × 1.4) = 70 %, B takes 30 %.
    let killed_at = Instant::now();
    a1.stop().await;
    let (h, f, _) = burst(&g, 50).await; // retries hide the failure while it is detected
    total_failed += f;
    eprintln!("while fra-1 dies: {h:?}");
    let a1h = backend_health(&g, &a1.addr.to_string());
    eventually("fra-1 marked down", || {
        !a1h.is_available(geolb::time::now_ms())
    })
    .await;
    eprintln!("fra-1 out of rotation after {:?}", killed_at.elapsed());
    let (h, f, _) = burst(&g, 600).await;
    total_failed += f;
    let spilled = count(&h, &b) as f64 / 600.0;
    eprintln!("one backend down: {h:?} (spilled {spilled:.3})");
    assert_eq!(count(&h, &["fra-1"]), 0);
    assert!(
        (0.2..=0.4).contains(&spilled),
        "expected ~30 % spill, got {spilled}"
    );

    // 3. Both die: everything goes to Singapore.
    let killed_at = Instant::now();
    a2.stop().await;
    let a2h = backend_health(&g, &a2.addr.to_string());
    let mut first_all_b = None;
    while first_all_b.is_none() {
        let (h, f, _) = burst(&g, 20).await;
        total_failed += f;
        if count(&h, &a) == 0 && !a2h.is_available(geolb::time::now_ms()) {
            first_all_b = Some(killed_at.elapsed());
        }
        assert!(killed_at.elapsed() < WAIT, "traffic never left Frankfurt");
    }
    eprintln!(
        "region death → all traffic in ap-southeast after {:?}",
        first_all_b.unwrap()
    );
    let (h, f, _) = burst(&g, 100).await;
    total_failed += f;
    assert_eq!(count(&h, &b), 100, "{h:?}");

    // 4. Both come back: traffic returns only after each has been healthy for failback_delay.
    a1.restart().await;
    a2.restart().await;
    eventually("frankfurt healthy again", || a1h.is_up() && a2h.is_up()).await;
    let mut timeline = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let (h, f, t) = burst(&g, 20).await;
        total_failed += f;
        timeline.extend(t);
        if count(&h, &a) == 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "traffic never came back to Frankfurt"
        );
    }
    for (at, backend) in &timeline {
        let since = if backend == "fra-1" {
            a1h.up_since()
        } else if backend == "fra-2" {
            a2h.up_since()
        } else {
            continue;
        };
        assert!(
            *at >= since + 1500,
            "{backend} got traffic {} ms after recovering, before the fail-back delay",
            at - since
        );
    }
    assert_eq!(total_failed, 0, "a GET failed during the run");
    let (_, metrics) = admin_get(&g, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "geolb_retry_budget_exhausted_total{service=\"spill\"}"
        ),
        0.0,
        "the retry budget refused a retry"
    );
    let retried: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("geolb_retries_total{service=\"spill\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!("requests that needed a retry over the run: {retried}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_backend_dies_mid_request_is_not_replayed() {
    let mut a1 = TestBackend::spawn("fra-1", "eu-central").await;
    let a2 = TestBackend::spawn("fra-2", "eu-central").await;
    let b1 = TestBackend::spawn("sin-1", "ap-southeast").await;
    let cfg = service_toml(
        "app",
        &[&a1, &a2, &b1],
        "lb = \"round_robin\"\nretry = { attempts = 3, on = [\"connect\", \"reset\", \"503\"] }",
    ) + "[[routes]]\nservice = \"app\"\n";
    let g = Geolb::start(&cfg).await;
    // Round robin in Frankfurt: the first request goes to the first backend that answers.
    let client = g.client(false);
    let url = g.url("/delay?ms=5000");
    let c2 = client.clone();
    let post = tokio::spawn(async move {
        let req = Request::post(url)
            .header("x-forwarded-for", IP_FRANKFURT)
            .body(full("payload"))
            .unwrap();
        c2.request(req).await.map(|r| r.status())
    });
    // Wait for one of the Frankfurt backends to hold the POST, then kill that one.
    let mut rx1 = a1.arrivals.clone();
    let mut rx2 = a2.arrivals.clone();
    let first = tokio::select! {
        _ = rx1.wait_for(|n| *n >= 1) => 1,
        _ = rx2.wait_for(|n| *n >= 1) => 2,
    };
    // Stop whichever backend holds the POST; the others must never see it.
    let mut a2 = a2;
    let others_before = if first == 1 {
        a2.hits() + b1.hits()
    } else {
        a1.hits() + b1.hits()
    };
    if first == 1 {
        a1.stop().await;
    } else {
        a2.stop().await;
    }
    let status = post.await.unwrap().unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let others_after = if first == 1 {
        a2.hits() + b1.hits()
    } else {
        a1.hits() + b1.hits()
    };
    assert_eq!(
        others_after, others_before,
        "the POST was replayed elsewhere"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_detection_ejects_before_the_active_checker_notices() {
    let mut a1 = TestBackend::spawn("fra-1", "eu-central").await;
    let a2 = TestBackend::spawn("fra-2", "eu-central").await;
    let extra = "health = { path = \"/healthz\", interval = \"60s\" }\npassive = { consecutive_failures = 2, base_ejection = \"30s\", max_ejection_percent = 50 }";
    let cfg = service_toml("app", &[&a1, &a2], extra) + "[[routes]]\nservice = \"app\"\n";
    let g = Geolb::start(&cfg).await;
    let h1 = backend_health(&g, &a1.addr.to_string());
    a1.stop().await;
    let (h, failed, _) = burst(&g, 30).await;
    assert_eq!(failed, 0, "connect failures were retried on fra-2");
    assert!(
        h1.is_ejected(geolb::time::now_ms()),
        "passive detection ejected fra-1"
    );
    assert!(
        h1.is_up(),
        "the active checker (60 s interval) has not run yet"
    );
    assert!(count(&h, &["fra-2"]) == 30, "{h:?}");
    // The ejection cap (50 % of 2 backends = 1) stops passive detection from emptying the region.
    let h2 = backend_health(&g, &a2.addr.to_string());
    let p = g.shared().edge.snapshot.load().table.services[0].passive;
    for _ in 0..5 {
        h2.observe_failure(&p, false);
    }
    assert!(!h2.is_ejected(geolb::time::now_ms()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_backend_does_not_change_the_region_state() {
    let a1 = TestBackend::spawn("fra-1", "eu-central").await;
    let a2 = TestBackend::spawn("fra-2", "eu-central").await;
    a1.mode.store(MODE_FLAP, Ordering::Relaxed);
    let extra = "health = { path = \"/healthz\", interval = \"50ms\", unhealthy_interval = \"50ms\", healthy = 2, unhealthy = 2 }";
    let cfg = service_toml("app", &[&a1, &a2], extra) + "[[routes]]\nservice = \"app\"\n";
    let g = Geolb::start(&cfg).await;
    let h1 = backend_health(&g, &a1.addr.to_string());
    // Let it flap through 30 checks (pass, fail, pass, …): never two failures in a row.
    let mut arrivals = a1.arrivals.clone();
    arrivals.wait_for(|n| *n >= 30).await.unwrap();
    assert!(h1.is_up());
    assert_eq!(h1.transitions.load(Ordering::Relaxed), 0);
    let (_, text) = admin_get(&g, "/status").await;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["services"][0]["regions"][0]["state"], "healthy");
}

async fn panic_mode(mode: &str) -> (StatusCode, http::HeaderMap) {
    let a1 = TestBackend::spawn("fra-1", "eu-central").await;
    let b1 = TestBackend::spawn("sin-1", "ap-southeast").await;
    for b in [&a1, &b1] {
        b.mode.store(MODE_HEALTH_FAIL, Ordering::Relaxed);
    }
    let extra = format!("{HEALTH}\nspillover = {{ panic = \"{mode}\" }}");
    let cfg = service_toml("app", &[&a1, &b1], &extra) + "[[routes]]\nservice = \"app\"\n";
    let g = Geolb::start(&cfg).await;
    let (ha, hb) = (
        backend_health(&g, &a1.addr.to_string()),
        backend_health(&g, &b1.addr.to_string()),
    );
    eventually("all backends unhealthy", || !ha.is_up() && !hb.is_up()).await;
    let (status, headers, _) = get_as(&g.client(false), &g.url("/"), Some(IP_FRANKFURT)).await;
    (status, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_fail_open_spreads_to_the_nearest_region() {
    let (status, headers) = panic_mode("fail_open").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-backend"], "fra-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_fail_closed_answers_503() {
    let (status, headers) = panic_mode("fail_closed").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["x-geolb-error"], "no_healthy_backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_region_of_three_dying_at_once_costs_no_request() {
    let mut a: Vec<TestBackend> = Vec::new();
    for i in 1..=3 {
        a.push(TestBackend::spawn(&format!("fra-{i}"), "eu-central").await);
    }
    let b1 = TestBackend::spawn("sin-1", "ap-southeast").await;
    // Slow active checks: only passive detection and retries can hide the failure. Passive
    // detection may eject only one of the three (max_ejection_percent), so most requests below
    // need a retry; retries after a refused connect do not spend the retry budget, so the
    // default budget serves them all.
    let extra = "health = { path = \"/healthz\", interval = \"30s\" }\nretry = { attempts = 3 }";
    let refs: Vec<&TestBackend> = a.iter().chain(std::iter::once(&b1)).collect();
    let cfg = service_toml("whole", &refs, extra) + "[[routes]]\nservice = \"whole\"\n";
    let g = Geolb::start(&cfg).await;
    let client = g.client(false);
    let (h, f, _) = burst(&g, 30).await;
    assert_eq!(f, 0);
    assert_eq!(count(&h, &["sin-1"]), 0, "{h:?}");
    for b in a.iter_mut() {
        b.stop().await;
    }
    let (h, failed, _) = burst(&g, 200).await;
    assert_eq!(failed, 0, "GETs failed while the region died: {h:?}");
    assert_eq!(count(&h, &["sin-1"]), 200);
    // Non-idempotent requests whose connect fails are safe to send elsewhere too.
    for i in 0..50 {
        let req = Request::post(g.url("/upload"))
            .header("x-forwarded-for", IP_FRANKFURT)
            .body(full(format!("order {i}")))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "POST {i}");
    }
}
