//! Request hygiene at the edge: normalised paths (what the route matched is what the backend
//! gets), identity headers from untrusted peers dropped, `Via` loop detection between two
//! instances, and request bodies trickled below the minimum rate cut with 408.

mod common;

use std::time::Duration;

use common::*;
use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Two services: `/static` → `files`, everything else → `app`.
async fn two_routes(extra: &str) -> (Geolb, TestBackend, TestBackend) {
    let files = TestBackend::spawn("files-1", "eu-central").await;
    let app = TestBackend::spawn("app-1", "eu-central").await;
    let cfg = format!(
        "{extra}\n{}\n{}\n[[routes]]\npath_prefix = \"/static\"\nservice = \"files\"\n\n[[routes]]\nservice = \"app\"\n",
        service_toml("files", &[&files], ""),
        service_toml("app", &[&app], "")
    );
    (Geolb::start(&cfg).await, files, app)
}

/// Send raw bytes on the plain listener; return the whole answer.
async fn raw(g: &Geolb, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(g.http.unwrap())
        .await
        .unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("no answer");
    String::from_utf8_lossy(&buf).into_owned()
}

fn body_of(resp: &str) -> serde_json::Value {
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

#[tokio::test]
async fn paths_are_normalised_before_routing_and_forwarding() {
    let (mut g, files, app) = two_routes("").await;
    let cases = [
        ("/static/../admin", "app-1", "/admin"),
        ("/static/%2e%2e/admin", "app-1", "/admin"),
        ("/static/%2E%2e/admin?x=1", "app-1", "/admin?x=1"),
        ("//static//a.css", "files-1", "/static/a.css"),
        ("/static/./img/../a.png", "files-1", "/static/a.png"),
        ("/%7Euser/%61", "app-1", "/~user/a"),
        ("/static/a%2fb", "files-1", "/static/a%2Fb"),
    ];
    for (path, backend, seen) in cases {
        let resp = raw(
            &g,
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{path}: {resp}");
        let v = body_of(&resp);
        assert_eq!(
            v["backend"], backend,
            "{path} was routed by its normal form"
        );
        assert_eq!(v["uri"].as_str().unwrap_or(""), seen, "{path}");
    }
    // Climbing above the root, malformed escapes: 400, nothing forwarded.
    let before = files.hits() + app.hits();
    for path in [
        "/../../etc/passwd",
        "/static/../../x",
        "/a%zz",
        "/%2e%2e/secret",
    ] {
        let resp = raw(
            &g,
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{path}: {resp}");
    }
    assert_eq!(files.hits() + app.hits(), before);
    let (_, m) = admin_get(&g, "/metrics").await;
    assert!(metric(&m, "geolb_paths_normalized_total") >= 7.0, "{m}");
    assert!(metric(&m, "geolb_paths_rejected_total{reason=\"above_root\"}") >= 3.0);
    assert!(metric(&m, "geolb_paths_rejected_total{reason=\"bad_escape\"}") >= 1.0);
    g.shutdown().await;
}

#[tokio::test]
async fn path_normalisation_can_be_turned_off() {
    let (mut g, _files, app) = two_routes("[headers]\nnormalize_path = false\n").await;
    let resp = raw(
        &g,
        b"GET /x//y/./z HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(body_of(&resp)["uri"], "/x//y/./z", "{resp}");
    assert_eq!(app.hits(), 1);
    g.shutdown().await;
}

const FORGED: [(&str, &str); 6] = [
    ("x-real-ip", "6.6.6.6"),
    ("forwarded", "for=6.6.6.6;proto=https"),
    ("x-forwarded-host", "evil.example"),
    ("x-forwarded-proto", "gopher"),
    ("x-forwarded-port", "1"),
    ("x-forwarded-for", "6.6.6.6"),
];

async fn echo_with_forged(g: &Geolb) -> serde_json::Value {
    let client = g.client(false);
    let mut b = Request::get(g.url("/who"));
    for (k, v) in FORGED {
        b = b.header(k, v);
    }
    let resp = client.request(b.body(full("")).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    echo_json(&body)
}

#[tokio::test]
async fn identity_headers_from_an_untrusted_peer_never_reach_the_backend() {
    let (dir, certs) = prepare();
    let b = TestBackend::spawn("app-1", "eu-central").await;
    // Loopback is not a trusted proxy here.
    let base = base_config(dir.path()).replace(
        "trusted_proxies = [\"127.0.0.0/8\"]",
        "trusted_proxies = [\"10.0.0.0/8\"]",
    );
    let cfg = format!(
        "{base}\n[headers]\nforwarded = true\n{}\n[[routes]]\nservice = \"app\"\n",
        service_toml("app", &[&b], "")
    );
    let mut g = Geolb::start_raw(dir, certs, &cfg, false).await;
    let v = echo_with_forged(&g).await;
    let h = &v["headers"];
    let port = g.https.unwrap().port().to_string();
    // X-Forwarded-For is appended to (as nginx and HAProxy): its last entry is the real peer.
    assert_eq!(
        h["x-forwarded-for"],
        serde_json::json!(["6.6.6.6, 127.0.0.1"]),
        "{v}"
    );
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["https"]), "{v}");
    assert_eq!(h["x-forwarded-port"], serde_json::json!([port]), "{v}");
    assert_eq!(
        h["x-forwarded-host"],
        serde_json::json!([format!("localhost:{port}")]),
        "{v}"
    );
    assert!(h.get("x-real-ip").is_none(), "{v}");
    assert_eq!(
        h["forwarded"],
        serde_json::json!([format!(
            "for=127.0.0.1;proto=https;host=\"localhost:{port}\""
        )]),
        "only geolb's own Forwarded element: {v}"
    );
    g.shutdown().await;
}

#[tokio::test]
async fn a_trusted_proxys_forwarding_headers_are_kept_and_extended() {
    let b = TestBackend::spawn("app-1", "eu-central").await;
    let cfg = format!(
        "{}\n[[routes]]\nservice = \"app\"\n",
        service_toml("app", &[&b], "")
    );
    let mut g = Geolb::start(&cfg).await;
    let v = echo_with_forged(&g).await;
    let h = &v["headers"];
    assert_eq!(
        h["x-forwarded-for"],
        serde_json::json!(["6.6.6.6, 127.0.0.1"]),
        "{v}"
    );
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["gopher"]), "{v}");
    assert_eq!(
        h["x-forwarded-host"],
        serde_json::json!(["evil.example"]),
        "{v}"
    );
    assert_eq!(h["x-real-ip"], serde_json::json!(["6.6.6.6"]), "{v}");
    g.shutdown().await;
}

/// A geolb whose only backend is `upstream` (host:port), with Via pseudonym `via`.
async fn hop(via: &str, upstream: &str) -> Geolb {
    let cfg = format!(
        "[headers]\nvia = \"{via}\"\n[services.next]\nbackends = [{{ region = \"eu-central\", address = \"{upstream}\" }}]\n[[routes]]\nservice = \"next\"\n"
    );
    Geolb::start(&cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_looping_between_two_instances_is_stopped_with_508() {
    // Instance A forwards to B's plain listener; B forwards to a port that A will reload to.
    let placeholder = TestBackend::spawn("tmp", "eu-central").await;
    let mut b = hop("edge-b", &placeholder.addr.to_string()).await;
    let mut a = hop("edge-a", &b.http.unwrap().to_string()).await;
    // Close the loop: B now forwards back to A.
    let text = std::fs::read_to_string(&b.config)
        .unwrap()
        .replace(&placeholder.addr.to_string(), &a.http.unwrap().to_string());
    write_atomic(&b.config, &text);
    b.shared().reload().await.unwrap();
    let resp = raw(
        &a,
        b"GET /loop HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 508"), "{resp}");
    assert_eq!(placeholder.hits(), 0);
    let (_, m) = admin_get(&a, "/metrics").await;
    assert!(metric(&m, "geolb_loops_detected_total") >= 1.0, "{m}");
    a.shutdown().await;
    b.shutdown().await;
    // Other proxies' Via entries (and a pseudonym inside a comment) are not a loop.
    let mut c = hop("edge-c", &placeholder.addr.to_string()).await;
    let resp = raw(
        &c,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nVia: 1.1 cdn (edge-c), 1.0 edge-cc\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let v = body_of(&resp);
    assert_eq!(
        v["headers"]["via"],
        serde_json::json!(["1.1 cdn (edge-c), 1.0 edge-cc", "1.1 edge-c"]),
        "{v}"
    );
    let resp = raw(
        &c,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nVia: 2 EDGE-C\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 508"), "{resp}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_below_the_minimum_rate_is_cut_with_408() {
    let b = TestBackend::spawn("app-1", "eu-central").await;
    let cfg = format!(
        "[limits]\nmin_request_body_rate = 1000\n[timeouts]\nrequest_body_grace = \"300ms\"\nrequest_body = \"10s\"\n{}\n[[routes]]\nservice = \"app\"\n",
        service_toml("app", &[&b], "")
    );
    let mut g = Geolb::start(&cfg).await;
    let s = tokio::net::TcpStream::connect(g.http.unwrap())
        .await
        .unwrap();
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    // 10 bytes every 50 ms: 200 B/s, each piece well within the 10 s pause limit.
    let trickle = tokio::spawn(async move {
        while wr.write_all(b"0123456789").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, rd.read(&mut buf))
            .await
            .expect("a trickled body must be cut")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    trickle.abort();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("client_body_too_slow"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cut by the rate, not by the 10 s pause limit"
    );
    // The backend is not blamed; the cut is counted by reason.
    let snap = g.shared().edge.snapshot.load();
    assert!(
        snap.table.services[0].backends[0]
            .health
            .is_available(geolb::time::now_ms())
    );
    let (_, m) = admin_get(&g, "/metrics").await;
    assert!(
        metric(&m, "geolb_client_body_cut_total{reason=\"rate\"}") >= 1.0,
        "{m}"
    );
    // A body at a healthy rate still goes through.
    let resp = raw(
        &g,
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_body_trickled_below_the_minimum_rate_is_cut_with_408() {
    let b = TestBackend::spawn("app-1", "eu-central").await;
    let cfg = format!(
        "[limits]\nmin_request_body_rate = 1000\n[timeouts]\nrequest_body_grace = \"300ms\"\nrequest_body = \"10s\"\n{}\n[[routes]]\nservice = \"app\"\n",
        service_toml("app", &[&b], "")
    );
    let mut g = Geolb::start(&cfg).await;
    let tls = g.tls_connect("localhost", &[b"h2"]).await;
    let (mut h2, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let req = Request::post(g.url("/upload"))
        .header("content-length", "100000")
        .body(())
        .unwrap();
    let (resp, mut stream) = h2.send_request(req, false).unwrap();
    let trickle = tokio::spawn(async move {
        while stream
            .send_data(bytes::Bytes::from_static(b"0123456789"), false)
            .is_ok()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let resp = tokio::time::timeout(WAIT, resp)
        .await
        .expect("a trickled h2 body must be cut")
        .unwrap();
    trickle.abort();
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    let (_, m) = admin_get(&g, "/metrics").await;
    assert!(
        metric(&m, "geolb_client_body_cut_total{reason=\"rate\"}") >= 1.0,
        "{m}"
    );
    g.shutdown().await;
}
