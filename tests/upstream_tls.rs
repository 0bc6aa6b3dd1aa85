//! Backends over HTTPS: verification against a configured CA, SNI, client certificates, and
//! HTTP/2 to backends.

mod common;

use std::sync::Arc;

use common::*;
use http::StatusCode;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

fn server_config(dir: &std::path::Path, require_client_cert: bool) -> rustls::ServerConfig {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("backend.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("backend.key")).unwrap();
    let builder = rustls::ServerConfig::builder();
    let builder = if require_client_cert {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap())
            .unwrap();
        builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .unwrap(),
        )
    } else {
        builder.with_no_client_auth()
    };
    builder.with_single_cert(certs, key).unwrap()
}

fn https_service(b: &TestBackend, dir: &std::path::Path, extra: &str) -> String {
    format!(
        "[services.secure]\n{extra}\nbackends = [{{ region = \"eu-central\", url = \"https://127.0.0.1:{}\" }}]\n\n[[routes]]\nservice = \"secure\"\n",
        b.addr.port()
    )
    .replace("{dir}", &dir.display().to_string())
}

async fn start(require_client_cert: bool, extra: &str) -> (Geolb, TestBackend) {
    let (dir, certs) = prepare();
    let b = TestBackend::spawn_tls(
        "tls-1",
        "eu-central",
        server_config(dir.path(), require_client_cert),
    )
    .await;
    let cfg = base_config(dir.path()) + &https_service(&b, dir.path(), extra);
    (Geolb::start_raw(dir, certs, &cfg, false).await, b)
}

#[tokio::test]
async fn https_backend_verified_by_configured_ca_with_sni() {
    let (g, b) = start(
        false,
        "upstream_tls = { ca = \"{dir}/ca.pem\", server_name = \"backend.internal\" }",
    )
    .await;
    let (status, headers, body) = get_as(&g.client(false), &g.url("/x"), None).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["x-tls-sni"], "backend.internal");
    assert_eq!(headers["x-tls-client-cert"], "false");
    assert_eq!(b.hits(), 1);
}

#[tokio::test]
async fn an_untrusted_backend_certificate_is_a_502() {
    // No CA configured: system roots do not know the test CA.
    let (g, b) = start(
        false,
        "upstream_tls = { server_name = \"backend.internal\" }",
    )
    .await;
    let (status, headers, _) = get_as(&g.client(false), &g.url("/x"), None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-geolb-error"], "upstream_connect");
    assert_eq!(b.hits(), 0);
    // Right CA, wrong name: also refused.
    let (g, _b) = start(
        false,
        "upstream_tls = { ca = \"{dir}/ca.pem\", server_name = \"other.internal\" }",
    )
    .await;
    let (status, _, _) = get_as(&g.client(false), &g.url("/x"), None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn client_certificate_is_presented_when_configured() {
    let (g, _b) = start(
        true,
        "upstream_tls = { ca = \"{dir}/ca.pem\", server_name = \"backend.internal\", client_cert = \"{dir}/client.pem\", client_key = \"{dir}/client.key\" }",
    )
    .await;
    let (status, headers, _) = get_as(&g.client(false), &g.url("/x"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-tls-client-cert"], "true");
    // Without it, the backend refuses the handshake.
    let (g, b) = start(
        true,
        "upstream_tls = { ca = \"{dir}/ca.pem\", server_name = \"backend.internal\" }",
    )
    .await;
    let (status, _, _) = get_as(&g.client(false), &g.url("/x"), None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn http2_to_backends_by_alpn_and_prior_knowledge() {
    let (g, _b) = start(false, "http2 = true\nupstream_tls = { ca = \"{dir}/ca.pem\", server_name = \"backend.internal\" }").await;
    let (status, _, body) = get_as(&g.client(false), &g.url("/x"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echo_json(&body)["version"], "HTTP/2.0");
    // Plain backends with http2 = true speak h2c with prior knowledge.
    let plain = TestBackend::spawn("h2c-1", "eu-central").await;
    let cfg = service_toml("h2c", &[&plain], "http2 = true") + "[[routes]]\nservice = \"h2c\"\n";
    let g = Geolb::start(&cfg).await;
    let (status, _, body) = get_as(&g.client(false), &g.url("/y"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echo_json(&body)["version"], "HTTP/2.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stalls_its_tls_handshake_fails_over_within_the_connect_timeout() {
    // Accepts TCP, never answers the ClientHello.
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stall_addr = stall.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = stall.accept().await {
            held.push(s);
        }
    });
    let good = TestBackend::spawn("sin-1", "ap-southeast").await;
    let cfg = format!(
        "[timeouts]\nupstream_connect = \"300ms\"\n\n[services.mixed]\nupstream_tls = {{ server_name = \"backend.internal\" }}\nbackends = [\n  {{ region = \"eu-central\", url = \"https://{stall_addr}\" }},\n  {{ region = \"ap-southeast\", address = \"{}\" }},\n]\n[[routes]]\nservice = \"mixed\"\n",
        good.addr
    );
    let g = Geolb::start(&cfg).await;
    // A POST: replayable only because nothing was sent before the connect phase failed.
    let req = http::Request::post(g.url("/upload"))
        .header("x-forwarded-for", IP_FRANKFURT)
        .body(full("order"))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, g.client(false).request(req))
        .await
        .expect("stuck on the stalled handshake")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v = echo_json(
        &http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes(),
    );
    assert_eq!(v["backend"], "sin-1");
    assert_eq!(v["bytes"], 5);
}
