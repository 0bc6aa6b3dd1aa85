//! The admin listener under `[admin]` limits: the connection limit holds and frees up, a
//! stalled request head and an idle keep-alive connection are cut off, and `/healthz`
//! answers again once slots free.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// geolb with `admin` appended to the test configuration (no file watcher: nothing reloads
/// behind the test's back).
async fn start(admin: &str) -> (Geolb, TestBackend) {
    let b = TestBackend::spawn("fra-1", "eu-central").await;
    let (dir, certs) = prepare();
    let text = format!(
        "{}\n{admin}\n{}[[routes]]\nservice = \"app\"\n",
        base_config(dir.path()),
        service_toml("app", &[&b], "")
    );
    (Geolb::start_raw(dir, certs, &text, false).await, b)
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n";
const HEALTHZ_CLOSE: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";

/// One `/healthz` exchange on a kept-alive connection.
async fn healthz(s: &mut TcpStream) {
    s.write_all(HEALTHZ).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(WAIT, async {
        while !got.ends_with(b"\r\n\r\nok\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed mid-response: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no /healthz answer");
    assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
}

/// Everything the server sends until it closes (or `WAIT`).
async fn read_all(mut s: TcpStream) -> String {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_connection_limit_holds_and_frees_up() {
    let (g, _b) =
        start("[admin]\nmax_connections = 2\nrequest_header = \"60s\"\nkeepalive_idle = \"60s\"\n")
            .await;
    let addr = g.admin.unwrap();
    // Two kept-alive connections, each served once, hold both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        healthz(&mut s).await;
        held.push(s);
    }
    // Three more connect (the kernel completes the handshake) and ask; none is served.
    let mut extra = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(HEALTHZ_CLOSE).await.unwrap();
        extra.push(tokio::spawn(read_all(s)));
    }
    for t in &extra {
        assert!(
            still_pending_after(t, Duration::from_millis(400)).await,
            "an admin connection was served beyond max_connections = 2"
        );
    }
    // One slot frees: the waiting connections are served through it one after another
    // (each closes after its answer), while the other kept-alive connection still works.
    drop(held.pop());
    for t in extra {
        let answer = tokio::time::timeout(WAIT, t)
            .await
            .expect("never served after a slot freed")
            .unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"),
            "{answer}"
        );
    }
    healthz(&mut held[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_idle_admin_clients_are_cut_off_and_healthz_answers_again() {
    let (g, _b) = start(
        "[admin]\nmax_connections = 2\nrequest_header = \"400ms\"\nkeepalive_idle = \"800ms\"\n",
    )
    .await;
    let addr = g.admin.unwrap();
    // One client sends half a request head and stalls; the other sends nothing at all.
    // (Each clock starts before the server can have seen the connection or its bytes.)
    let t0 = Instant::now();
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled.write_all(b"GET /heal").await.unwrap();
    let stalled = tokio::spawn(async move {
        let rest = read_all(stalled).await;
        (rest, t0.elapsed())
    });
    let t1 = Instant::now();
    let idle = TcpStream::connect(addr).await.unwrap();
    let idle = tokio::spawn(async move {
        let rest = read_all(idle).await;
        (rest, t1.elapsed())
    });
    // A third client waits for a slot.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(HEALTHZ_CLOSE).await.unwrap();
    let third = tokio::spawn(read_all(third));
    // Both hogs are disconnected, never before their timeouts, and without an answer.
    let (rest, took) = tokio::time::timeout(WAIT, stalled).await.unwrap().unwrap();
    // (10 ms of slack: geolb's clock counts whole milliseconds.)
    assert!(took >= Duration::from_millis(390), "cut after {took:?}");
    assert!(took < WAIT, "the stalled head was never cut off");
    assert!(!rest.contains("ok"), "{rest}");
    let (rest, took) = tokio::time::timeout(WAIT, idle).await.unwrap().unwrap();
    assert!(took >= Duration::from_millis(790), "closed after {took:?}");
    assert!(took < WAIT, "the idle connection was never closed");
    assert!(rest.is_empty(), "{rest}");
    // The waiting client is served once they are gone, and so is a new one.
    let answer = tokio::time::timeout(WAIT, third).await.unwrap().unwrap();
    assert!(answer.ends_with("ok\n"), "{answer}");
    let (status, body) = admin_get(&g, "/healthz").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "ok\n"));
}

#[test]
fn admin_limits_are_validated() {
    let health = geolb::health::HealthRegistry::default();
    let pool = geolb::UpstreamPool::default();
    let ctx = geolb::config::CompileCtx {
        health: &health,
        pool: &pool,
    };
    let base = "[listeners]\nhttp = { address = \"127.0.0.1:0\" }\n";
    let rest = "[regions.eu]\nlocation = [50.1, 8.7]\n\
                [services.app]\nbackends = [{ region = \"eu\", address = \"127.0.0.1:9\" }]\n\
                [[routes]]\nservice = \"app\"\n";
    for (admin, path) in [
        ("max_connections = 0", "admin.max_connections"),
        ("request_header = \"0s\"", "admin.request_header"),
        ("keepalive_idle = \"soon\"", "admin.keepalive_idle"),
        ("request = \"0\"", "admin.request"),
    ] {
        let text = format!("{base}[admin]\n{admin}\n{rest}");
        let Err(errors) = geolb::config::compile_str(&text, Path::new("routes.toml"), &ctx) else {
            panic!("[admin] {admin} was accepted");
        };
        assert!(
            errors.0.iter().any(|e| e.path == path && e.line == 4),
            "{admin}: {errors}"
        );
    }
    let ok = geolb::config::compile_str(
        &format!("{base}[admin]\nmax_connections = 8\nrequest = \"2s\"\n{rest}"),
        Path::new("routes.toml"),
        &ctx,
    )
    .unwrap();
    let lim = &ok.settings.admin_limits;
    assert_eq!(lim.max_connections, 8);
    assert_eq!(lim.request, Duration::from_secs(2));
    assert_eq!(lim.request_header, Duration::from_secs(5));
    assert_eq!(lim.keepalive_idle, Duration::from_secs(30));
}
