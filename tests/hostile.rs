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
    assert!(
        still_pending_after(&third, Duration::from_millis(300)).await,
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
    let snap = g.shared().edge.snapshot.load();
    assert!(
        snap.table.services[0].backends[0]
            .health
            .is_available(geolb::time::now_ms())
    );
}

async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("no answer");
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn malformed_client_bodies_do_not_eject_backends() {
    let (g, _b) = setup("").await;
    for _ in 0..8 {
        let text = raw_exchange(
            g.http.unwrap(),
            b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\nZZ\r\n",
        )
        .await;
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 400"),
            "{text}"
        );
    }
    let snap = g.shared().edge.snapshot.load();
    let h = &snap.table.services[0].backends[0].health;
    assert!(
        h.is_available(geolb::time::now_ms()),
        "a client's broken body ejected the backend"
    );
    assert_eq!(h.ejections(), 0);
}

#[tokio::test]
async fn a_get_with_a_chunked_body_is_forwarded_whole() {
    let (g, _b) = setup("").await;
    let text = raw_exchange(
        g.http.unwrap(),
        b"GET /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"bytes\":11"), "{text}");
}

#[tokio::test]
async fn h2c_upgrades_are_not_tunnelled() {
    let (g, _b) = setup("").await;
    let text = raw_exchange(
        g.http.unwrap(),
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("\"upgrade\""),
        "the Upgrade header reached the backend: {text}"
    );
    assert!(
        !text.to_ascii_lowercase().contains("http2-settings"),
        "{text}"
    );
}

#[tokio::test]
async fn h2_cookies_are_joined_for_http11_backends() {
    let (g, _b) = setup("").await;
    let req = Request::get(g.url("/"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(full(""))
        .unwrap();
    let resp = g.client(true).request(req).await.unwrap();
    let v = echo_json(
        &http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes(),
    );
    assert_eq!(v["headers"]["cookie"], serde_json::json!(["a=1; b=2"]));
}

#[tokio::test]
async fn a_backend_sending_both_content_length_and_chunked_cannot_truncate_responses() {
    // A hand-written backend that frames its response both ways (RFC 9112 §6.3 says chunked wins).
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n")
                    .await;
            });
        }
    });
    let (dir, certs) = prepare();
    let cfg = base_config(dir.path())
        + &format!(
            "[services.lying]\nbackends = [{{ region = \"eu-central\", address = \"{addr}\" }}]\n[[routes]]\nservice = \"lying\"\n"
        );
    let g = Geolb::start_raw(dir, certs, &cfg, false).await;
    let (status, headers, body) = get_as(&g.client(false), &g.url("/"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"hello world");
    assert!(
        headers.get("content-length").is_none_or(|v| v == "11"),
        "{headers:?}"
    );
}

#[tokio::test]
async fn a_slow_upload_is_not_a_slow_backend() {
    // The backend's response clock starts when the body is fully sent.
    let (g, b) =
        setup("[timeouts]\nupstream_response_header = \"300ms\"\nrequest_body = \"10s\"\n").await;
    let mut s = tokio::net::TcpStream::connect(g.http.unwrap())
        .await
        .unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\nConnection: close\r\n\r\n01234").await.unwrap();
    // The client pauses for longer than the upstream response timeout before the rest.
    tokio::time::sleep(Duration::from_millis(900)).await;
    s.write_all(b"56789").await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("no answer")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"bytes\":10"), "{text}");
    let snap = g.shared().edge.snapshot.load();
    assert!(
        snap.table.services[0].backends[0]
            .health
            .is_available(geolb::time::now_ms())
    );
    assert_eq!(b.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnels_count_against_the_connection_limit() {
    use futures_util::SinkExt;
    let (g, _b) = setup("[limits]\nmax_connections = 1\n").await;
    let addr = g.http.unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    // While the tunnel is open, a second connection is not served …
    let second = tokio::spawn(async move {
        get_as(&plain_client(), &format!("http://{addr}/"), None)
            .await
            .0
    });
    assert!(
        still_pending_after(&second, Duration::from_millis(300)).await,
        "a connection beyond the limit was served while a tunnel was open"
    );
    // … and is once the tunnel closes.
    ws.close(None).await.unwrap();
    drop(ws);
    let status = tokio::time::timeout(WAIT, second)
        .await
        .expect("never served")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_websocket_tunnels_are_closed_busy_ones_are_not() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (g, _b) = setup("[timeouts]\ntunnel_idle = \"1s\"\n").await;
    let addr = g.http.unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .unwrap();
    // Busy: a message every 100 ms for about a second keeps the tunnel open.
    for i in 0..10 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        let back = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), format!("m{i}"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Idle: geolb closes it.
    let end = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("an idle tunnel was never closed");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
}

/// Slow read: a client that asks for a large response and stops reading it is disconnected once
/// a write to it has been blocked for `client_send`, instead of holding its connection (and an
/// upstream one) forever.
#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected() {
    let (g, _b) = setup("[timeouts]\nclient_send = \"300ms\"\n").await;
    let mut s = tokio::net::TcpStream::connect(g.http.unwrap())
        .await
        .unwrap();
    const ASKED: usize = 1 << 30;
    s.write_all(
        format!("GET /download?bytes={ASKED} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    // Read nothing until geolb reports that it gave up on this client.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, text) = admin_get(&g, "/metrics").await;
        if metric(&text, "geolb_client_send_timeouts_total") >= 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled reader was never cut off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What was already in the socket buffers drains, then the connection ends: far short of
    // the gigabyte asked for.
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the connection stayed open");
    assert!(got < ASKED / 4, "{got} bytes arrived");
}
