//! The retry budget (a Finagle-style token bucket) under load: a backend dying with requests in
//! flight costs no GET and replays no POST, and a sustained storm is capped at the budget.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use common::*;

/// Every `x-test-id` the backends received, with how often.
fn post_arrivals(backends: &[&TestBackend]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for b in backends {
        for id in b.post_ids.lock().unwrap().iter() {
            *seen.entry(id.clone()).or_insert(0) += 1;
        }
    }
    seen
}

async fn metric_of(g: &Geolb, prefix: &str) -> f64 {
    let (_, text) = admin_get(g, "/metrics").await;
    metric(&text, prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_dying_under_load_costs_no_get_and_replays_no_post() {
    let mut fra1 = TestBackend::spawn("fra-1", "eu-central").await;
    let fra2 = TestBackend::spawn("fra-2", "eu-central").await;
    let sin1 = TestBackend::spawn("sin-1", "ap-southeast").await;
    let sin2 = TestBackend::spawn("sin-2", "ap-southeast").await;
    // Every request takes 50 ms, so several are in flight on each backend at any moment.
    for b in [&fra1, &fra2, &sin1, &sin2] {
        b.delay_ms.store(50, Ordering::Relaxed);
    }
    // Default budget (20 %, 10/s, 10 s); passive ejection after 5 failures.
    let cfg = service_toml(
        "app",
        &[&fra1, &fra2, &sin1, &sin2],
        "retry = { attempts = 3 }",
    ) + "[[routes]]\nservice = \"app\"\n";
    let g = Geolb::start(&cfg).await;
    let load = start_rate_load(&g, 300, "/", 5);
    eventually("load is flowing", || {
        RateStats::get(&load.stats.get_ok) >= 300
    })
    .await;
    eventually("requests in flight on fra-1", || fra1.inflight() >= 4).await;
    let in_flight = fra1.inflight();
    let sent_at_kill = load.sent();
    fra1.kill().await;
    // Two more seconds of load after the death.
    eventually("load continues after the failure", || {
        load.sent() >= sent_at_kill + 600
    })
    .await;
    let stats = load.finish().await;
    let (get_ok, get_failed) = (
        RateStats::get(&stats.get_ok),
        RateStats::get(&stats.get_failed),
    );
    let (post_ok, post_failed) = (
        RateStats::get(&stats.post_ok),
        RateStats::get(&stats.post_failed),
    );
    let retries = metric_of(&g, "geolb_retries_total{service=\"app\"}").await;
    let refused = metric_of(&g, "geolb_retry_budget_exhausted_total{service=\"app\"}").await;
    eprintln!(
        "fra-1 died with {in_flight} requests in flight: GETs {get_ok} ok / {get_failed} failed, \
         POSTs {post_ok} ok / {post_failed} failed, {retries} retries, {refused} refused by the budget"
    );
    assert_eq!(
        get_failed,
        0,
        "GETs failed: {:?}",
        stats.failures.lock().unwrap()
    );
    // No POST reached a backend twice, and every POST the client saw succeed arrived once.
    let arrivals = post_arrivals(&[&fra1, &fra2, &sin1, &sin2]);
    let twice: Vec<_> = arrivals.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "POSTs delivered more than once: {twice:?}"
    );
    for id in stats.post_ok_ids.lock().unwrap().iter() {
        assert_eq!(arrivals.get(id), Some(&1), "POST {id} answered 200");
    }
    assert_eq!(refused, 0.0, "the budget refused a retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sustained_retry_storm_is_capped_by_the_budget() {
    let backends = [
        TestBackend::spawn("fra-1", "eu-central").await,
        TestBackend::spawn("fra-2", "eu-central").await,
        TestBackend::spawn("sin-1", "ap-southeast").await,
        TestBackend::spawn("sin-2", "ap-southeast").await,
    ];
    // Everything answers 503 after 20 ms, and 503 is retried: every request wants two retries.
    for b in &backends {
        b.mode.store(MODE_503, Ordering::Relaxed);
        b.delay_ms.store(20, Ordering::Relaxed);
    }
    const PERCENT: f64 = 0.2;
    const MIN_PER_SEC: f64 = 5.0;
    let refs: Vec<&TestBackend> = backends.iter().collect();
    let cfg = service_toml(
        "storm",
        &refs,
        "retry = { attempts = 3, on = [\"503\"], budget = 0.2, min_retries_per_sec = 5, budget_ttl = \"1s\" }",
    ) + "[[routes]]\nservice = \"storm\"\n";
    let g = Geolb::start(&cfg).await;
    let started = Instant::now();
    let load = start_rate_load(&g, 200, "/", 0);
    eventually("a thousand requests sent", || load.sent() >= 1000).await;
    let stats = load.finish().await;
    let elapsed = started.elapsed().as_secs_f64();
    let requests = RateStats::get(&stats.sent);
    assert_eq!(RateStats::get(&stats.get_failed), requests, "all failed");
    // Each request's first attempt reaches a backend; every other arrival is a retry.
    let arrivals: u64 = backends.iter().map(|b| b.hits()).sum();
    let retries = arrivals - requests;
    let counted = metric_of(&g, "geolb_retries_total{service=\"storm\"}").await;
    let refused = metric_of(&g, "geolb_retry_budget_exhausted_total{service=\"storm\"}").await;
    // In every aligned window of budget_ttl (1 s), retries ≤ 20 % of its requests + 5 × 1 s;
    // the run spans at most elapsed + 2 such windows.
    let cap = PERCENT * requests as f64 + MIN_PER_SEC * (elapsed + 2.0);
    eprintln!(
        "{requests} requests in {elapsed:.1} s: {retries} retries (metric {counted}), \
         {refused} refused, cap {cap:.0}; without a budget: {}",
        2 * requests
    );
    assert_eq!(
        retries as f64, counted,
        "arrivals and the retry metric agree"
    );
    assert!(
        retries as f64 <= cap,
        "{retries} retries exceed the cap {cap:.0}"
    );
    assert!(
        retries as f64 >= PERCENT / 2.0 * requests as f64,
        "the budget allowed too few retries: {retries}"
    );
    assert!(refused > 0.0);
}
