//! Latency-aware balancing (`lb = "peak_ewma"`): a backend that turns 40x slower than its peer
//! while its health checks stay green loses its traffic, and gets it back once it is fast again.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

const HEALTH: &str = "health = { path = \"/healthz\", interval = \"200ms\" }";

/// Generous: this waits on a balancing outcome, not a deadline (CI machines are loaded).
const DEADLINE: Duration = Duration::from_secs(60);

/// Watch the slow backend's share over windows of `window` requests until `done` accepts one;
/// returns the shares seen. Panics after `DEADLINE`.
async fn shares_until(
    fast: &TestBackend,
    slow: &TestBackend,
    window: u64,
    what: &str,
    mut done: impl FnMut(f64) -> bool,
) -> Vec<f64> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        let (f0, s0) = (fast.hits(), slow.hits());
        while fast.hits() + slow.hits() < f0 + s0 + window {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}; shares seen: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (f, s) = (fast.hits() - f0, slow.hits() - s0);
        let share = s as f64 / (f + s) as f64;
        seen.push(share);
        if done(share) {
            return seen;
        }
    }
}

/// Fast (5 ms) and slow (200 ms) backends in one region with `lb`; steady load from Frankfurt.
async fn slow_backend_share(lb: &str) {
    let fast = TestBackend::spawn("fast", "eu-central").await;
    let slow = TestBackend::spawn("slow", "eu-central").await;
    fast.delay_ms.store(5, Ordering::Relaxed);
    slow.delay_ms.store(200, Ordering::Relaxed);
    // A short decay so that the slow backend's recovery is seen within seconds.
    let extra = format!("lb = \"{lb}\"\newma_decay = \"1s\"\n{HEALTH}");
    let cfg = service_toml("app", &[&fast, &slow], &extra) + "[[routes]]\nservice = \"app\"\n";
    let g = Geolb::start(&cfg).await;
    let load = start_rate_load(&g, 150, "/", 0);
    let slow_seen = shares_until(
        &fast,
        &slow,
        300,
        "the slow backend's share under 1 %",
        |s| s < 0.01,
    )
    .await;
    eprintln!("{lb}: slow backend's share per window of 300 requests: {slow_seen:.4?}");
    slow.delay_ms.store(5, Ordering::Relaxed);
    let back = shares_until(
        &fast,
        &slow,
        300,
        "the recovered backend's share over 20 %",
        |s| s > 0.2,
    )
    .await;
    eprintln!("{lb}: after it sped up: {back:.4?}");
    let stats = load.finish().await;
    assert_eq!(
        RateStats::get(&stats.get_failed),
        0,
        "{:?}",
        stats.failures.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_loses_its_traffic_and_wins_it_back() {
    slow_backend_share("peak_ewma").await;
}

/// Latency-outlier ejection (`passive.latency_factor`) takes a slow backend out of a policy that
/// does not avoid it by itself (round robin), through the passive ejection path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_outlier_is_ejected_when_enabled() {
    let fast1 = TestBackend::spawn("fast-1", "eu-central").await;
    let fast2 = TestBackend::spawn("fast-2", "eu-central").await;
    let slow = TestBackend::spawn("slow", "eu-central").await;
    for b in [&fast1, &fast2] {
        b.delay_ms.store(5, Ordering::Relaxed);
    }
    slow.delay_ms.store(200, Ordering::Relaxed);
    let extra = format!(
        "lb = \"round_robin\"\n{HEALTH}\n\
         passive = {{ latency_factor = 5, latency_window = \"1s\", base_ejection = \"60s\" }}"
    );
    let cfg =
        service_toml("app", &[&fast1, &fast2, &slow], &extra) + "[[routes]]\nservice = \"app\"\n";
    let g = Geolb::start(&cfg).await;
    let load = start_rate_load(&g, 100, "/", 0);
    let health = {
        let snap = g.shared().edge.snapshot.load_full();
        let svc = &snap.table.services[0];
        let b = svc
            .backends
            .iter()
            .find(|b| *b.name == *slow.addr.to_string());
        b.expect("the slow backend").health.clone()
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !health.is_ejected(geolb::time::now_ms()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow backend was never ejected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(health.is_up(), "its health checks stay green");
    // Ejected for 60 s: once the requests picked before the ejection are in (50 requests
    // later), the next 300 all go to the fast backends.
    let fast = fast1.hits() + fast2.hits();
    eventually("50 more requests", || {
        fast1.hits() + fast2.hits() >= fast + 50
    })
    .await;
    let before = slow.hits();
    let fast = fast1.hits() + fast2.hits();
    eventually("300 more requests", || {
        fast1.hits() + fast2.hits() >= fast + 300
    })
    .await;
    assert_eq!(slow.hits(), before, "the ejected backend got requests");
    let (_, text) = admin_get(&g, "/status").await;
    assert!(
        text.contains("latency outlier"),
        "an event says why: {text}"
    );
    let stats = load.finish().await;
    assert_eq!(
        RateStats::get(&stats.get_failed),
        0,
        "{:?}",
        stats.failures.lock().unwrap()
    );
}
