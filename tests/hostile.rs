//! Hostile clients: h2 rapid-reset floods, stalled TLS handshakes, stalled PROXY headers,
//! oversized h2 header lists, and a connection limit that holds.

mod common;

use std::time::Duration;

use common::*;
use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn setup(extra: &str) -> (Geolb, TestBackend) {
    let b = TestBackend::spawn("fra-1", "eu-central").await;
    let cfg = format!(
        "{extra}\n{}[[routes]]\nservice = \"app\"\n",
        service_toml("app", &[&b], "")
    );
    (Geolb::start(&cfg).await, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_rapid_reset_flood_is_cut_off_and_others_are_served() {
    let (g, b) = setup("").await;
    let tls = g.tls_connect("localhost", &[b"h2"]).await;
    let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut sent = 0;
    for _ in 0..5_000 {
        let req = Request::get(g.url("/delay?ms=2000")).body(()).unwrap();
        let ready = match tokio::time::timeout(WAIT, client.clone().ready()).await {
            Ok(Ok(c)) => c,
            _ => break,
        };
        client = ready;
        match client.send_request(req, true) {
            Ok((_resp, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(_) => break,
        }
    }
    eprintln!(
        "rapid reset: {sent} request+reset pairs sent before the connection ended; backend saw {}",
        b.hits()
    );
    // geolb ends the abusive connection (GOAWAY / reset) long before 5,000 streams.
    let ended = tokio::time::timeout(WAIT, conn)
        .await
        .expect("the flooding connection was never closed");
    assert!(
        sent < 5_000 || ended.unwrap().is_err(),
        "sent {sent} resets without being stopped"
    );
    // The backend saw at most a bounded number of the abandoned requests.
    assert!(
        b.hits() < 1_000,
        "{} requests reached the backend",
        b.hits()
    );
    // Everyone else is still served.
    let (status, _, _) = get_as(&g.client(true), &g.url("/"), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_closed_at_the_handshake_timeout() {
    let (g, _b) = setup("[timeouts]\ntls_handshake = \"300ms\"\n").await;
    let mut s = tokio::net::TcpStream::connect(g.https.unwrap())
        .await
        .unwrap();
    // Half a ClientHello record header, then silence.
    s.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("the stalled handshake was never closed")
        .ok();
    // Nothing but possibly a TLS alert came back.
    assert!(buf.len() < 64, "{buf:?}");
}

#[tokio::test]
async fn a_stalled_proxy_header_is_closed_at_its_timeout() {
    let b = TestBackend::spawn("fra-1", "eu-central").await;
    let (dir, certs) = prepare();
    let cfg = base_config(dir.path()).replace(
        "[client_ip]\n",
        "[timeouts]\nproxy_protocol = \"300ms\"\n\n[client_ip]\nproxy_protocol = true\n",
    ) + &service_toml("app", &[&b], "")
        + "[[routes]]\nservice = \"app\"\n";
    let g = Geolb::start_raw(dir, certs, &cfg, false).await;
    let mut s = tokio::net::TcpStream::connect(g.http.unwrap())
        .await
        .unwrap();
    s.write_all(b"PROXY TCP4 192.0.2").await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("the stalled PROXY header was never closed")
        .ok();
    assert!(buf.is_empty());
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn oversized_h2_header_lists_are_refused() {
    let (g, b) = setup("[limits]\nmax_header_bytes = 16384\n").await;
    let req = Request::get(g.url("/"))
        .header("x-big", "y".repeat(40_000))
        .body(full(""))
        .unwrap();
    let resp = g.client(true).request(req).await;
    // A refused stream (Err) is also acceptable: nothing is forwarded either way.
    if let Ok(r) = resp {
        assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    assert_eq!(b.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_holds_and_frees_up() {
    let (g, _b) = setup("[limits]\nmax_connections = 2\n").await;
    let addr = g.http.unwrap();
    // Two open connections that each completed a request.
    let mut held = Vec::new();
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let r = send
            .send_request(
                Request::get("/")
                    .header("host", "localhost")
                    .body(full(""))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        held.push(send);
    }
    // A third is not served while both are held …
    let third = tokio::spawn(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        send.send_request(
            Request::get("/")
                .header("host", "localhost")
                .body(full(""))
                .unwrap(),
        )
        .await
        .map(|r| r.status())
    });
    let waited = tokio::time::timeout(Duration::from_millis(300), async {
        while !third.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        waited.is_err(),
        "a third connection was served beyond max_connections = 2"
    );
    // … and is served as soon as one closes.
    drop(held.pop());
    let status = tokio::time::timeout(WAIT, third)
        .await
        .expect("never served")
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_client_that_stalls_its_body_gets_408_and_the_backend_is_not_blamed() {
    let (g, _b) = setup("[timeouts]\nrequest_body = \"300ms\"\n").await;
    for (method, path) in [("POST", "/upload"), ("PUT", "/upload")] {
        let mut s = tokio::net::TcpStream::connect(g.http.unwrap())
            .await
            .unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n0123456789"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 512];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("no answer to a stalled body")
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 408"), "{method}: {text}");
    }
    // The backend was not ejected for the client's fault.
    let snap = g.shared().snapshot.load();
    assert!(
        snap.table.services[0].backends[0]
            .health
            .is_available(geolb::health::now_ms())
    );
}
