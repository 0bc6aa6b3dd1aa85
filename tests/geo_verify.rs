//! A geo database is verified whole before use: a file whose search tree is intact but whose
//! data section is damaged is refused on reload (the running database keeps answering, the
//! refusal is counted and shown) and by `geolb check`.

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::BodyExt;

/// A copy of the test database whose Singapore record no longer decodes: its latitude (a
/// double, control byte 0x68) is retyped as 8 raw bytes (0x88). The structure is intact —
/// maxminddb's own `verify` passes — so only decoding every record finds it. Returns the
/// copy's path and the file offset of the damaged record.
fn write_corrupt_copy(good: &Path, to: &Path) -> (PathBuf, usize) {
    let mut bytes = std::fs::read(good).unwrap();
    let reader = maxminddb::Reader::from_source(bytes.clone()).unwrap();
    reader.verify().unwrap();
    let m = reader.metadata();
    let data_section = m.node_count as usize * usize::from(m.record_size) / 4 + 16;
    let record = data_section
        + reader
            .lookup("198.51.100.7".parse().unwrap())
            .unwrap()
            .offset()
            .unwrap();
    let mut latitude = vec![0x68];
    latitude.extend_from_slice(&1.29f64.to_be_bytes());
    let at = bytes.windows(9).position(|w| w == latitude).unwrap();
    bytes[at] = 0x88;
    maxminddb::Reader::from_source(bytes.clone())
        .unwrap()
        .verify()
        .expect("the damage is invisible to maxminddb's structural check");
    std::fs::write(to, &bytes).unwrap();
    (to.to_path_buf(), record)
}

async fn post_reload(g: &Geolb) -> (StatusCode, serde_json::Value) {
    let resp = plain_client()
        .request(
            http::Request::post(g.admin_url("/reload"))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let body: Bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

async fn country_of(g: &Geolb, ip: &str) -> serde_json::Value {
    let (status, text) = admin_get(g, &format!("/explain?ip={ip}&host=localhost&path=/")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["geo"]["country"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_database_is_refused_and_the_running_one_keeps_answering() {
    let b = TestBackend::spawn("fra-1", "eu-central").await;
    let (dir, certs) = prepare();
    let good_text = format!(
        "{}\n{}[[routes]]\nservice = \"app\"\n",
        base_config(dir.path()),
        service_toml("app", &[&b], "")
    );
    // No file watcher: the test decides when reloads happen (and counts them).
    let g = Geolb::start_raw(dir, certs, &good_text, false).await;
    let good = g.dir.path().join("test-city.mmdb");
    assert_eq!(country_of(&g, "198.51.100.7").await, "SG");
    let (_, m) = admin_get(&g, "/metrics").await;
    let rejected_before = metric(&m, "geolb_geo_database_rejected_total");

    // 1. The configuration names a damaged copy.
    let (bad, offset) = write_corrupt_copy(&good, &g.dir.path().join("damaged.mmdb"));
    std::fs::write(
        &g.config,
        good_text.replace(&good.display().to_string(), &bad.display().to_string()),
    )
    .unwrap();
    let (status, v) = post_reload(&g).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let err = v["errors"][0].as_str().unwrap().to_owned();
    assert!(err.contains("geo.database"), "{err}");
    assert!(err.contains(&bad.display().to_string()), "{err}");
    assert!(
        err.contains(&format!("corrupt record at file offset {offset} ")),
        "{err}"
    );
    assert_eq!(country_of(&g, "198.51.100.7").await, "SG");

    // 2. The file in use is replaced in place by the damaged copy (a bad download).
    std::fs::write(&g.config, &good_text).unwrap();
    std::fs::copy(&bad, &good).unwrap();
    let (status, v) = post_reload(&g).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(country_of(&g, "198.51.100.7").await, "SG");
    assert_eq!(country_of(&g, "192.0.2.1").await, "DE");

    // Both refusals are counted and the last one is shown.
    let (_, m) = admin_get(&g, "/metrics").await;
    assert_eq!(
        metric(&m, "geolb_geo_database_rejected_total"),
        rejected_before + 2.0
    );
    let st = reload_status(&g).await;
    assert_eq!(st["reload"]["last_result"], "error");
    assert!(
        st["reload"]["last_error"]
            .as_str()
            .unwrap()
            .contains("corrupt record"),
        "{st}"
    );
}

#[test]
fn geolb_check_reports_a_corrupt_database() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_city_mmdb(dir.path());
    let (bad, offset) = write_corrupt_copy(&good, &dir.path().join("damaged.mmdb"));
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        "[listeners]\nhttp = { address = \"127.0.0.1:0\" }\n\
         [geo]\ndatabase = \"damaged.mmdb\"\n\
         [regions.eu]\nlocation = [50.1, 8.7]\n\
         [services.app]\nbackends = [{ region = \"eu\", address = \"127.0.0.1:9\" }]\n\
         [[routes]]\nservice = \"app\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_geolb"))
        .arg("check")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(":4:12: geo.database: "), "{stderr}");
    assert!(stderr.contains(&bad.display().to_string()), "{stderr}");
    assert!(
        stderr.contains(&format!("corrupt record at file offset {offset} ")),
        "{stderr}"
    );
}
