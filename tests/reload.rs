//! Live reloads under load: routes, weights, invalid files, rename and symlink swaps,
//! WebSockets across reloads, 100 reloads in a row, certificates, moved listeners.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use common::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_apply_under_load_without_a_failed_request() {
    let a = TestBackend::spawn("fra-1", "eu-central").await;
    let b = TestBackend::spawn("fra-2", "eu-central").await;
    let c = TestBackend::spawn("new-1", "eu-central").await;
    let g = Geolb::start(&routes(&a, &b, 1, "")).await;
    let base = std::fs::read_to_string(&g.config).unwrap();
    let load = start_load(&g);
    load.wait_for_requests(50).await;

    // Add a route and change a weight; saved by rename, as editors do.
    let new_route = format!(
        "\n[services.fresh]\nbackends = [{{ region = \"eu-central\", address = \"{}\" }}]\n\n[[routes]]\npath_prefix = \"/new\"\nservice = \"fresh\"\n",
        c.addr
    );
    let edited = base.replace("weight = 1 }", "weight = 3 }") + &new_route;
    let written = Instant::now();
    write_atomic(&g.config, &edited);
    let client = g.client(false);
    loop {
        let (status, headers, _) = get_as(&client, &g.url("/new/x"), None).await;
        if status == StatusCode::OK && headers["x-backend"] == "new-1" {
            break;
        }
        assert!(written.elapsed() < WAIT, "the new route never answered");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    eprintln!(
        "new route answered {:?} after the file was saved",
        written.elapsed()
    );
    let snap = g.shared().edge.snapshot.load();
    assert_eq!(snap.generation, 2);
    assert_eq!(
        snap.table
            .services
            .iter()
            .find(|s| &*s.name == "app")
            .unwrap()
            .backends[0]
            .weight,
        3
    );
    load.wait_for_requests(load.ok.load(Ordering::Relaxed) + 50)
        .await;
    let (ok, failed) = load.finish().await;
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across the reload",
        ok + failed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_files_are_refused_and_the_old_config_keeps_serving() {
    let a = TestBackend::spawn("fra-1", "eu-central").await;
    let b = TestBackend::spawn("fra-2", "eu-central").await;
    let g = Geolb::start(&routes(&a, &b, 1, "")).await;
    let good = std::fs::read_to_string(&g.config).unwrap();
    let (_, m) = admin_get(&g, "/metrics").await;
    let errors_before = metric(&m, "geolb_config_reloads_total{result=\"error\"}");

    let mut generation = g.shared().edge.snapshot.load().generation;
    for (what, bad, expect) in [
        (
            "syntax error",
            good.replace("[[routes]]", "[[routes]"),
            "routes.toml:",
        ),
        (
            "unknown service",
            good.replace("service = \"app\"", "service = \"nope\""),
            "routes[0].service: unknown service `nope`",
        ),
    ] {
        write_atomic(&g.config, &bad);
        let deadline = Instant::now() + WAIT;
        loop {
            let v = reload_status(&g).await;
            if v["reload"]["last_result"] == "error"
                && v["reload"]["last_error"]
                    .as_str()
                    .unwrap_or("")
                    .contains(expect)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: /status never showed the error: {v}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(
            g.shared().edge.snapshot.load().generation,
            generation,
            "{what} was applied"
        );
        let (status, _, _) = get_as(&g.client(false), &g.url("/"), None).await;
        assert_eq!(status, StatusCode::OK, "{what}: old config stopped serving");
        // Put the good file back between the two cases so each is a fresh change.
        write_atomic(&g.config, &good);
        let deadline = Instant::now() + WAIT;
        while reload_status(&g).await["reload"]["last_result"] != "ok" {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        generation = g.shared().edge.snapshot.load().generation;
    }
    let (_, m) = admin_get(&g, "/metrics").await;
    assert!(metric(&m, "geolb_config_reloads_total{result=\"error\"}") >= errors_before + 2.0);
    // POST /reload reports errors too.
    write_atomic(
        &g.config,
        &good.replace("location = [1.29, 103.85]", "location = [1.29]"),
    );
    let resp = plain_client()
        .request(
            http::Request::post(g.admin_url("/reload"))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_style_symlink_swaps_are_detected() {
    let a = TestBackend::spawn("fra-1", "eu-central").await;
    let b = TestBackend::spawn("fra-2", "eu-central").await;
    let (dir, certs) = prepare();
    let text = base_config(dir.path()) + &routes(&a, &b, 1, "");
    // routes.toml -> ..data/routes.toml, ..data -> v1 (what a ConfigMap volume looks like).
    let d = dir.path();
    std::fs::create_dir(d.join("v1")).unwrap();
    std::fs::create_dir(d.join("v2")).unwrap();
    std::fs::write(d.join("v1/routes.toml"), &text).unwrap();
    std::fs::write(
        d.join("v2/routes.toml"),
        text.replace("weight = 1 }", "weight = 7 }"),
    )
    .unwrap();
    std::os::unix::fs::symlink("v1", d.join("..data")).unwrap();
    let link = d.join("link.toml");
    std::os::unix::fs::symlink("..data/routes.toml", &link).unwrap();
    let running = geolb::App::start(geolb::Options {
        config: link.clone(),
        watch: true,
    })
    .await
    .unwrap();
    std::os::unix::fs::symlink("v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    let shared = running.shared.clone();
    eventually("symlink swap picked up", || {
        shared.edge.snapshot.load().table.services[0].backends[0].weight == 7
    })
    .await;
    running.shutdown().await;
    drop(certs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_survives_a_reload() {
    let a = TestBackend::spawn("fra-1", "eu-central").await;
    let b = TestBackend::spawn("fra-2", "eu-central").await;
    let g = Geolb::start(&routes(&a, &b, 1, "")).await;
    let tls = g.tls_connect("localhost", &[b"http/1.1"]).await;
    let url = format!("wss://localhost:{}/ws", g.https.unwrap().port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text("before"))
        .await
        .unwrap();
    assert_eq!(
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "before"
    );
    let text = std::fs::read_to_string(&g.config)
        .unwrap()
        .replace("weight = 1 }", "weight = 2 }");
    std::fs::write(&g.config, text).unwrap();
    g.shared().reload().await.unwrap();
    g.shared().reload().await.unwrap();
    assert!(g.shared().edge.snapshot.load().generation >= 2);
    ws.send(tokio_tungstenite::tungstenite::Message::text("after"))
        .await
        .unwrap();
    let back = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_state_is_kept_across_reloads() {
    let a = TestBackend::spawn("fra-1", "eu-central").await;
    let b = TestBackend::spawn("fra-2", "eu-central").await;
    a.mode.store(MODE_HEALTH_FAIL, Ordering::Relaxed);
    let cfg = routes(&a, &b, 1, "").replace(
        "[services.app]\n",
        "[services.app]\nhealth = { path = \"/healthz\", interval = \"50ms\", unhealthy = 1 }\n",
    );
    let g = Geolb::start(&cfg).await;
    let name = a.addr.to_string();
    let down = |g: &Geolb| {
        let snap = g.shared().edge.snapshot.load();
        !snap.table.services[0]
            .backends
            .iter()
            .find(|x| *x.name == name)
            .unwrap()
            .health
            .is_up()
    };
    eventually("fra-1 down", || down(&g)).await;
    g.shared().reload().await.unwrap();
    assert!(down(&g), "a reload reset the health state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_is_served_to_new_connections() {
    let a = TestBackend::spawn("fra-1", "eu-central").await;
    let b = TestBackend::spawn("fra-2", "eu-central").await;
    let g = Geolb::start(&routes(&a, &b, 1, "")).await;
    let serial = |s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        s.get_ref().1.peer_certificates().unwrap()[0]
            .as_ref()
            .to_vec()
    };
    let old_conn = g.tls_connect("localhost", &[b"http/1.1"]).await;
    let old = serial(&old_conn);
    // Issue a new leaf from the same CA into a separate dir, then move it over a.pem / a.key.
    let other = tempfile::tempdir().unwrap();
    let fresh = TestCerts::generate(other.path());
    // Different CA: trust it too by swapping the client's CA is not possible; instead re-sign
    // with the running CA by regenerating both CA and leaf into the live dir.
    drop(fresh);
    let live = g.dir.path();
    let regenerated = TestCerts::generate(other.path());
    std::fs::rename(other.path().join("a.key"), live.join("a.key.new")).unwrap();
    std::fs::rename(other.path().join("a.pem"), live.join("a.pem.new")).unwrap();
    std::fs::rename(live.join("a.pem.new"), live.join("a.pem")).unwrap();
    std::fs::rename(live.join("a.key.new"), live.join("a.key")).unwrap();
    // New connections must present the new certificate (signed by the new CA).
    let mut roots = rustls::RootCertStore::empty();
    roots.add(regenerated.ca_der.clone()).unwrap();
    let cfg = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let deadline = Instant::now() + WAIT;
    let new = loop {
        let tcp = tokio::net::TcpStream::connect(g.https.unwrap())
            .await
            .unwrap();
        let conn = tokio_rustls::TlsConnector::from(cfg.clone());
        if let Ok(s) = conn
            .connect(
                rustls_pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
        {
            break serial(&s);
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_ne!(old, new);
    // The connection opened before the change still works.
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(old_conn))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            http::Request::get("/")
                .header("host", "localhost")
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_listener_binds_the_new_address_and_drains_the_old() {
    let a = TestBackend::spawn("fra-1", "eu-central").await;
    let b = TestBackend::spawn("fra-2", "eu-central").await;
    let g = Geolb::start(&routes(&a, &b, 1, "")).await;
    let old_addr = g.http.unwrap();
    // An open keep-alive connection on the old address.
    let tcp = tokio::net::TcpStream::connect(old_addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let text = std::fs::read_to_string(&g.config)
        .unwrap()
        .replace("address = \"127.0.0.1:0\"", "address = \"127.0.0.2:0\"");
    std::fs::write(&g.config, text).unwrap();
    g.shared().reload().await.unwrap();
    let new_addr = g.shared().bound(geolb::ListenerKind::Http).unwrap();
    assert_eq!(new_addr.ip().to_string(), "127.0.0.2");
    let (status, _, _) = get_as(&plain_client(), &format!("http://{new_addr}/"), None).await;
    assert_eq!(status, StatusCode::OK);
    // The old connection still serves; the old address no longer accepts.
    let resp = send
        .send_request(
            http::Request::get("/")
                .header("host", "localhost")
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    eventually("old listener closed", || {
        std::net::TcpStream::connect(old_addr).is_err()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_diff_compares_against_the_running_instance() {
    let a = TestBackend::spawn("fra-1", "eu-central").await;
    let b = TestBackend::spawn("fra-2", "eu-central").await;
    let g = Geolb::start(&routes(&a, &b, 1, "")).await;
    let edited = std::fs::read_to_string(&g.config)
        .unwrap()
        .replace("weight = 1 }", "weight = 4 }")
        + "\n[[routes]]\nhosts = [\"api.geolb.test\"]\nservice = \"app\"\n";
    let candidate = g.dir.path().join("candidate.toml");
    std::fs::write(&candidate, edited).unwrap();
    let admin = g.admin.unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_geolb"))
            .args([
                "check",
                candidate.to_str().unwrap(),
                "--diff",
                "--admin",
                &admin,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("+ route api.geolb.test/ -> app"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "~ backend app/{}: region eu-central -> eu-central, weight 1 -> 4",
            a.addr
        )),
        "{stdout}"
    );
    assert_eq!(
        g.shared().edge.snapshot.load().generation,
        1,
        "check must not change the running instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backend_is_no_longer_checked_and_its_connections_close() {
    let a = TestBackend::spawn("fra-1", "eu-central").await;
    let b = TestBackend::spawn("fra-2", "eu-central").await;
    let health = "health = { path = \"/healthz\", interval = \"50ms\" }\n";
    let g = Geolb::start(
        &routes(&a, &b, 1, "").replace("[services.app]\n", &format!("[services.app]\n{health}")),
    )
    .await;
    // Traffic and checks open pooled keep-alive connections to both.
    let c = g.client(false);
    for _ in 0..20 {
        assert_eq!(get_as(&c, &g.url("/"), None).await.0, StatusCode::OK);
    }
    assert!(b.open_conns.load(Ordering::Relaxed) > 0);
    // Remove fra-2.
    let text = std::fs::read_to_string(&g.config).unwrap();
    let without_b: String = text
        .lines()
        .filter(|l| !l.contains(&b.addr.to_string()))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&g.config, without_b).unwrap();
    g.shared().reload().await.unwrap();
    assert_eq!(
        g.shared().edge.snapshot.load().table.services[0]
            .backends
            .len(),
        1
    );
    let open = b.open_conns.clone();
    eventually("connections to the removed backend closed", || {
        open.load(Ordering::Relaxed) == 0
    })
    .await;
    // Checks stop: while fra-1 is checked three more times, fra-2 sees nothing new.
    let before = *b.arrivals.borrow();
    let mut a_arrivals = a.arrivals.clone();
    let a_now = *a_arrivals.borrow();
    a_arrivals.wait_for(|n| *n >= a_now + 3).await.unwrap();
    assert_eq!(
        *b.arrivals.borrow(),
        before,
        "the removed backend is still being checked"
    );
    // Requests keep working on what is left.
    assert_eq!(get_as(&c, &g.url("/"), None).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_health_checks_brings_a_checked_down_backend_back() {
    let a = TestBackend::spawn("fra-1", "eu-central").await;
    let b = TestBackend::spawn("fra-2", "eu-central").await;
    a.mode.store(MODE_HEALTH_FAIL, Ordering::Relaxed);
    let checks = "[services.app]\nhealth = { path = \"/healthz\", interval = \"50ms\", unhealthy = 1 }\nspillover = { failback_delay = \"0s\" }\n";
    let g = Geolb::start(&routes(&a, &b, 1, "").replace("[services.app]\n", checks)).await;
    let name = a.addr.to_string();
    let health = {
        let snap = g.shared().edge.snapshot.load();
        snap.table.services[0]
            .backends
            .iter()
            .find(|x| *x.name == name)
            .unwrap()
            .health
            .clone()
    };
    eventually("fra-1 down", || !health.is_up()).await;
    let text = std::fs::read_to_string(&g.config).unwrap().replace(
        "health = { path = \"/healthz\", interval = \"50ms\", unhealthy = 1 }\n",
        "",
    );
    std::fs::write(&g.config, text).unwrap();
    g.shared().reload().await.unwrap();
    assert!(
        health.is_up(),
        "with no checks left, nothing would ever bring fra-1 back"
    );
}
