//! Foundation behaviour against real backends: TLS (SNI, ALPN), HTTP/1.1 and h2 proxying,
//! streaming bodies, header hygiene, WebSockets, failure statuses, timeouts, shutdown.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn one_backend(extra_cfg: &str) -> (Geolb, TestBackend) {
    let b = TestBackend::spawn("fra-1", "eu-central").await;
    let cfg = format!(
        "{extra_cfg}\n{}\n[[routes]]\nhosts = [\"localhost\", \"127.0.0.1\", \"*.geolb.test\", \"b.other.test\"]\nservice = \"app\"\n",
        service_toml("app", &[&b], "")
    );
    (Geolb::start(&cfg).await, b)
}

#[tokio::test]
async fn https_get_over_http1_and_h2() {
    let (g, _b) = one_backend("").await;
    for h2 in [false, true] {
        let (status, headers, body) = get_as(&g.client(h2), &g.url("/hello?x=1"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-backend"], "fra-1");
        let v = echo_json(&body);
        assert_eq!(v["uri"], "/hello?x=1");
        // Upstream is HTTP/1.1 either way; Host is preserved.
        assert_eq!(v["version"], "HTTP/1.1");
        assert_eq!(
            v["headers"]["host"][0],
            format!("localhost:{}", g.https.unwrap().port())
        );
        let via = v["headers"]["via"][0].as_str().unwrap();
        assert_eq!(via, if h2 { "2 geolb" } else { "1.1 geolb" });
    }
}

#[tokio::test]
async fn alpn_negotiates_h2_and_http11() {
    let (g, _b) = one_backend("").await;
    let s = g.tls_connect("localhost", &[b"h2", b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let s = g.tls_connect("localhost", &[b"http/1.1"]).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let v = s.get_ref().1.protocol_version();
    assert!(matches!(v, Some(rustls::ProtocolVersion::TLSv1_3)), "{v:?}");
}

/// h2 by prior knowledge (RFC 9113 §3.3) where nothing was negotiated: on the plain listener
/// and over TLS without ALPN; HTTP/1.1 on the same listeners still works.
#[tokio::test]
async fn h2_prior_knowledge_without_alpn() {
    let (g, _b) = one_backend("").await;
    async fn h2_get<I>(io: I, uri: &str) -> serde_json::Value
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(io),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = Request::get(uri).body(full("")).unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        echo_json(&resp.into_body().collect().await.unwrap().to_bytes())
    }
    let plain = tokio::net::TcpStream::connect(g.http.unwrap())
        .await
        .unwrap();
    let v = h2_get(plain, &g.http_url("/h2c")).await;
    assert_eq!(v["uri"], "/h2c");
    assert_eq!(v["headers"]["via"][0], "2 geolb");
    let tls = g.tls_connect("localhost", &[]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let v = h2_get(tls, &g.url("/h2-tls")).await;
    assert_eq!(v["headers"]["via"][0], "2 geolb");
    // HTTP/1.1 on both listeners, including a request split inside the sniffed bytes.
    let (status, _, _) = get_as(&plain_client(), &g.http_url("/h1"), None).await;
    assert_eq!(status, StatusCode::OK);
    let mut s = tokio::net::TcpStream::connect(g.http.unwrap())
        .await
        .unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(b"P").await.unwrap();
    s.write_all(b"OST /split HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"/split\""), "{text}");
}

/// Trailer fields (gRPC's `grpc-status`) come back through geolb, over HTTP/1.1 and h2 on
/// both sides, and a client's `TE: trailers` reaches the backend.
#[tokio::test]
async fn trailers_and_te_trailers_pass_through() {
    for backend_h2 in [false, true] {
        let b = TestBackend::spawn("t-1", "eu-central").await;
        let extra = if backend_h2 { "http2 = true" } else { "" };
        let g = Geolb::start(&(service_toml("t", &[&b], extra) + "[[routes]]\nservice = \"t\"\n"))
            .await;
        for client_h2 in [false, true] {
            let case = format!("backend h2 {backend_h2}, client h2 {client_h2}");
            let req = Request::get(g.url("/trailers"))
                .header("te", "trailers")
                .body(full(""))
                .unwrap();
            let resp = g.client(client_h2).request(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{case}");
            assert_eq!(
                resp.headers().get("x-saw-te").unwrap(),
                "trailers",
                "{case}"
            );
            let body = resp.into_body().collect().await.unwrap();
            let trailers = body.trailers().cloned().unwrap_or_default();
            assert_eq!(body.to_bytes(), "ok", "{case}");
            assert_eq!(trailers.get("grpc-status").unwrap(), "0", "{case}");
        }
    }
}

#[tokio::test]
async fn sni_picks_the_right_certificate() {
    let (g, _b) = one_backend("").await;
    let cn = |s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        let der = s.get_ref().1.peer_certificates().unwrap()[0].clone();
        // The leaf's CN is its file stem ("a" or "b"); find it in the DER.
        let bytes = der.as_ref();
        if bytes.windows(12).any(|w| w == b"b.other.test") {
            "b"
        } else {
            "a"
        }
    };
    let s = g.tls_connect("b.other.test", &[b"http/1.1"]).await;
    assert_eq!(cn(&s), "b");
    let s = g.tls_connect("x.geolb.test", &[b"http/1.1"]).await;
    assert_eq!(cn(&s), "a");
    let s = g.tls_connect("localhost", &[b"http/1.1"]).await;
    assert_eq!(cn(&s), "a");
}

#[tokio::test]
async fn host_outside_the_certificate_is_misdirected() {
    let (g, _b) = one_backend("").await;
    // Connect with SNI b.other.test, then ask for localhost: the cert does not cover it.
    let tls = g.tls_connect("b.other.test", &[b"http/1.1"]).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", "localhost")
        .body(full(""))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST);
    let req = Request::get("/")
        .header("host", "b.other.test")
        .body(full(""))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

async fn streaming_upload(h2: bool) {
    let (g, _b) = one_backend("").await;
    // 64 MiB in 64 KiB frames, produced lazily: never held in memory by the test or geolb.
    const CHUNKS: u64 = 1024;
    let chunk = Bytes::from((0..65_536u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let mut expect = 0u64;
    for _ in 0..CHUNKS {
        for &b in chunk.iter() {
            expect = expect.wrapping_mul(31).wrapping_add(u64::from(b));
        }
    }
    let c2 = chunk.clone();
    let stream = futures_util::stream::unfold(0u64, move |i| {
        let c = c2.clone();
        async move { (i < CHUNKS).then(|| (Ok::<_, std::convert::Infallible>(Frame::data(c)), i + 1)) }
    });
    let req = Request::post(g.url("/upload"))
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(120), g.client(h2).request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v = echo_json(&resp.into_body().collect().await.unwrap().to_bytes());
    assert_eq!(v["bytes"], CHUNKS * 65_536);
    assert_eq!(v["sum"], expect);
}

#[tokio::test]
async fn streaming_post_of_a_large_body_http1() {
    streaming_upload(false).await;
}

#[tokio::test]
async fn streaming_post_of_a_large_body_h2() {
    streaming_upload(true).await;
}

#[tokio::test]
async fn streaming_download_over_h2() {
    let (g, _b) = one_backend("").await;
    let resp = g
        .client(true)
        .request(
            Request::get(g.url("/download?bytes=33554432"))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        n += f.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(n, 32 << 20);
}

#[tokio::test]
async fn hop_by_hop_removed_and_forwarding_headers_set() {
    let (g, _b) = one_backend("").await;
    let req = Request::get(g.url("/hop"))
        .header("connection", "x-drop-me")
        .header("x-drop-me", "secret")
        .header("keep-alive", "timeout=5")
        // (TE: trailers is passed on as such: trailers_and_te_trailers_pass_through.)
        .header("te", "gzip, deflate")
        .header("proxy-authorization", "Basic Zm9v")
        .header("x-forwarded-for", "198.51.100.200")
        .header("x-geolb-region", "forged")
        .header("x-keep", "yes")
        .body(full(""))
        .unwrap();
    let resp = g.client(false).request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    // Response hop-by-hop headers from the backend are gone too.
    assert!(
        h.get("x-hop-secret").is_none() && h.get("keep-alive").is_none(),
        "{h:?}"
    );
    let v = echo_json(&resp.into_body().collect().await.unwrap().to_bytes());
    let hv = &v["headers"];
    for gone in [
        "x-drop-me",
        "keep-alive",
        "te",
        "proxy-authorization",
        "connection",
        "transfer-encoding",
    ] {
        assert!(hv.get(gone).is_none(), "{gone} reached the backend: {hv}");
    }
    assert_eq!(hv["x-keep"][0], "yes");
    // Appended to the client's list: client value, then the peer (loopback).
    assert_eq!(hv["x-forwarded-for"][0], "198.51.100.200, 127.0.0.1");
    assert_eq!(hv["x-forwarded-proto"][0], "https");
    assert_eq!(
        hv["x-forwarded-host"][0],
        format!("localhost:{}", g.https.unwrap().port())
    );
    assert_eq!(hv["via"][0], "1.1 geolb");
    // geolb's own headers cannot be forged by the client.
    assert_eq!(hv["x-geolb-region"][0], "eu-central");
    assert_eq!(hv["x-geolb-region"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn websocket_echo_through_geolb() {
    let (g, _b) = one_backend("").await;
    let tls = g.tls_connect("localhost", &[b"http/1.1"]).await;
    let url = format!("wss://localhost:{}/ws", g.https.unwrap().port());
    let (mut ws, resp) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..5 {
        let msg = format!("hello {i}");
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg.clone()))
            .await
            .unwrap();
        let back = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), msg);
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn backend_down_is_502() {
    let (g, mut b) = one_backend("").await;
    b.stop().await;
    let (status, headers, _) = get_as(&g.client(false), &g.url("/"), None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["server"], "geolb");
    assert_eq!(headers["x-geolb-error"], "upstream_connect");
}

#[tokio::test]
async fn backend_that_hangs_is_504() {
    let (g, _b) = one_backend("[timeouts]\nupstream_response_header = \"500ms\"\n").await;
    let (status, headers, _) = get_as(&g.client(false), &g.url("/hang"), None).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(headers["x-geolb-error"], "upstream_timeout");
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let (g, _b) = one_backend("[limits]\nmax_header_bytes = 16384\n").await;
    let big = "x".repeat(20_000);
    let req = Request::get(g.url("/"))
        .header("x-big", big)
        .body(full(""))
        .unwrap();
    let resp = g.client(false).request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

#[tokio::test]
async fn oversized_body_is_413() {
    let (g, b) = one_backend("[limits]\nmax_body_bytes = 1000\n").await;
    let req = Request::post(g.url("/upload"))
        .body(full(vec![0u8; 5000]))
        .unwrap();
    let resp = g.client(false).request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(b.hits(), 0, "the backend never saw the oversized request");
}

#[tokio::test]
async fn unknown_host_is_404() {
    let (g, _b) = one_backend("").await;
    let req = Request::get(g.http_url("/"))
        .header("host", "nowhere.example")
        .body(full(""))
        .unwrap();
    let resp = plain_client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn slow_client_is_cut_off_at_the_header_timeout() {
    let (g, b) = one_backend("[timeouts]\nrequest_header = \"500ms\"\n").await;
    let mut s = tokio::net::TcpStream::connect(g.http.unwrap())
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    // Never finish the headers; geolb must close the connection.
    let mut buf = Vec::new();
    let started = std::time::Instant::now();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("geolb kept the slow connection open");
    let text = String::from_utf8_lossy(&buf);
    assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() < WAIT);
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn graceful_shutdown_finishes_an_in_flight_request() {
    let (mut g, b) = one_backend("").await;
    let client = g.client(false);
    let url = g.url("/delay?ms=800");
    let inflight = tokio::spawn(async move { get_as(&client, &url, None).await });
    let mut arrivals = b.arrivals.clone();
    arrivals.wait_for(|n| *n >= 1).await.unwrap();
    let https = g.https.unwrap();
    g.shutdown().await;
    let (status, _, body) = inflight.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echo_json(&body)["backend"], "fra-1");
    // New connections are refused once shut down.
    assert!(tokio::net::TcpStream::connect(https).await.is_err());
}

#[tokio::test]
async fn plain_http_redirect_mode() {
    let b = TestBackend::spawn("fra-1", "eu-central").await;
    let (dir, certs) = prepare();
    let cfg = base_config(dir.path()).replace("mode = \"serve\"", "mode = \"redirect\"")
        + &service_toml("app", &[&b], "")
        + "[[routes]]\nservice = \"app\"\n";
    let g = Geolb::start_raw(dir, certs, &cfg, false).await;
    let req = Request::get(g.http_url("/a/b?c=d"))
        .header("host", "localhost:1234")
        .body(full(""))
        .unwrap();
    let resp = plain_client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
    let loc = resp.headers()["location"].to_str().unwrap();
    assert_eq!(
        loc,
        format!("https://localhost:{}/a/b?c=d", g.https.unwrap().port())
    );
}

#[tokio::test]
async fn request_smuggling_attempts_are_rejected() {
    let (g, b) = one_backend("").await;
    let exchange = |raw: &'static [u8]| {
        let addr = g.http.unwrap();
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(raw).await.unwrap();
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
                .await
                .expect("connection left open");
            String::from_utf8_lossy(&buf).into_owned()
        }
    };
    // Duplicate Content-Length and duplicate Host: rejected, nothing forwarded.
    for raw in [
        &b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"[..],
        &b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"[..],
        &b"GET / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n"[..],
    ] {
        let text = exchange(raw).await;
        assert!(
            text.starts_with("HTTP/1.1 400"),
            "{} -> {text}",
            String::from_utf8_lossy(raw)
        );
    }
    assert_eq!(b.hits(), 0, "nothing reached the backend");
    // CL + TE (RFC 9112 §6.3): chunked wins, the connection is closed after one response, so
    // the request hidden behind the chunked terminator is never parsed or forwarded.
    let text = exchange(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert!(!text.contains("/smuggled"), "{text}");
    assert!(b.hits() <= 1);
}

#[tokio::test]
async fn connect_and_trace_are_refused() {
    let (g, b) = one_backend("").await;
    for (method, target) in [("TRACE", "/"), ("CONNECT", "example.com:443")] {
        let mut s = tokio::net::TcpStream::connect(g.http.unwrap())
            .await
            .unwrap();
        let req =
            format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
            .await
            .expect("no answer");
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 405"), "{method}: {text}");
    }
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn http10_without_host_over_tls_uses_the_sni_name() {
    let (g, _b) = one_backend("").await;
    let mut tls = g.tls_connect("b.other.test", &[b"http/1.1"]).await;
    tls.write_all(b"GET /old HTTP/1.0\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut buf))
        .await
        .expect("no answer");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    assert!(text.contains("\"host\":[\"b.other.test\"]"), "{text}");
}
