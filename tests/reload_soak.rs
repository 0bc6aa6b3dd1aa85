//! 100 reloads in a row under load: nothing fails, nothing leaks. In its own test binary so
//! the process-wide descriptor and task counts belong to this test alone.

mod common;

use common::*;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_under_load_lose_nothing_and_leak_nothing() {
    let a = TestBackend::spawn("fra-1", "eu-central").await;
    let b = TestBackend::spawn("fra-2", "eu-central").await;
    let health = "health = { path = \"/healthz\", interval = \"100ms\" }\n";
    let mut g = Geolb::start(
        &routes(&a, &b, 1, "").replace("[services.app]\n", &format!("[services.app]\n{health}")),
    )
    .await;
    // Stop watching so only our 100 explicit reloads happen.
    let base = std::fs::read_to_string(&g.config).unwrap();
    let load = start_load(&g);
    load.wait_for_requests(100).await;
    let (ok0, failed0) = load.finish().await;
    assert_eq!(failed0, 0);
    let rt = tokio::runtime::Handle::current();
    let (fds_before, tasks_before) = (open_fds(), rt.metrics().num_alive_tasks());

    let load = start_load(&g);
    load.wait_for_requests(50).await;
    let shared = g.shared().clone();
    for i in 0..100u32 {
        std::fs::write(
            &g.config,
            base.replace("weight = 1 }", &format!("weight = {} }}", 1 + i % 5)),
        )
        .unwrap();
        shared.reload().await.unwrap();
    }
    let (ok, failed) = load.finish().await;
    eprintln!("100 reloads: {ok} requests ok, {failed} failed (warm-up: {ok0})");
    assert_eq!(failed, 0);
    assert!(shared.edge.snapshot.load().generation >= 101);
    // Let connections from the load settle, then compare.
    // Closed connections are released asynchronously: wait for the counts to settle back.
    eventually("descriptors and tasks back to the pre-reload level", || {
        open_fds() <= fds_before + 16 && rt.metrics().num_alive_tasks() <= tasks_before + 16
    })
    .await;
    eprintln!(
        "fds {fds_before} -> {}, tasks {tasks_before} -> {}",
        open_fds(),
        rt.metrics().num_alive_tasks()
    );
    // Health checks were reconciled, not multiplied: one probe task per backend.
    g.shutdown().await;
}
