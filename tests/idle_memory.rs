//! An idle keep-alive connection holds no buffers: after one request each, a thousand idle
//! HTTP/1.1 connections add only a few KiB apiece to geolb's resident memory (upstream hyper
//! keeps ~25 KiB of read/write buffers and header maps per connection; geolb's vendored hyper
//! returns them to per-thread pools while a connection waits, see vendor/hyper/PATCHES.md).
//! Its own test binary, so the process RSS belongs to this test alone.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Soft limit on open files: each idle connection costs two descriptors here (both ends live
/// in this process).
fn max_open_files() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// One GET on a fresh connection, response read to its end; the connection stays open.
async fn one_request(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /idle HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::with_capacity(2048);
    loop {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before the response ended");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("content-length");
            if buf.len() >= end + 4 + len {
                return s;
            }
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn idle_keep_alive_connections_hold_no_buffers() {
    let b = TestBackend::spawn("fra-1", "eu-central").await;
    let g =
        Geolb::start(&(service_toml("app", &[&b], "") + "[[routes]]\nservice = \"app\"\n")).await;
    let addr = g.http.unwrap();
    let n = (max_open_files().saturating_sub(300) / 2).min(1000) as usize;
    assert!(n >= 200, "open-file limit too low for this test");

    // Warm up: pools, allocator arenas, the upstream connection.
    let mut warm = Vec::new();
    for _ in 0..50 {
        warm.push(one_request(addr).await);
    }
    drop(warm);
    let base = rss_kib();

    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(one_request(addr).await);
    }
    let grown = rss_kib().saturating_sub(base);
    let per_conn = grown as f64 / n as f64;
    // Upstream hyper measures ~30 KiB here (its buffers alone are ~25 KiB); with buffers
    // released while idle it is ~5 KiB, including this test's own end of each socket.
    assert!(
        per_conn < 12.0,
        "{n} idle connections grew RSS by {grown} KiB ({per_conn:.1} KiB each)"
    );
    // Every connection is still usable after idling.
    let mut s = held.pop().unwrap();
    s.write_all(b"GET /again HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert!(
        rest.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
}
