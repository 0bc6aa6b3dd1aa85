//! Large bodies stream through geolb in both directions without being buffered: the process's
//! resident memory stays flat while 256 MiB go up and 256 MiB come down. Its own test binary,
//! so the process RSS belongs to this test alone.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

const SIZE: u64 = 256 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarter_gigabyte_each_way_with_flat_memory() {
    let b = TestBackend::spawn("fra-1", "eu-central").await;
    let g =
        Geolb::start(&(service_toml("big", &[&b], "") + "[[routes]]\nservice = \"big\"\n")).await;
    let client = plain_client();
    // Warm up pools and allocator arenas, then take the baseline.
    let (s, _, _) = get_as(&client, &g.http_url("/"), None).await;
    assert_eq!(s, StatusCode::OK);
    let base = rss_kib();
    let peak = Arc::new(AtomicU64::new(base));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
    };

    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let n = SIZE / chunk.len() as u64;
    let stream = futures_util::stream::unfold(0u64, move |i| {
        let c = chunk.clone();
        async move { (i < n).then(|| (Ok::<_, std::convert::Infallible>(Frame::data(c)), i + 1)) }
    });
    let req = Request::post(g.http_url("/upload"))
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(300), client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v = echo_json(&resp.into_body().collect().await.unwrap().to_bytes());
    assert_eq!(v["bytes"], SIZE);

    let resp = client
        .request(
            Request::get(g.http_url(&format!("/download?bytes={SIZE}")))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(f) = body.frame().await {
        got += f.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, SIZE);
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let grew_mib = (peak.load(Ordering::Relaxed).saturating_sub(base)) / 1024;
    eprintln!(
        "RSS baseline {} MiB, peak growth {grew_mib} MiB while moving 2 x {} MiB",
        base / 1024,
        SIZE >> 20
    );
    assert!(
        grew_mib < 64,
        "resident memory grew by {grew_mib} MiB: a body was buffered"
    );
}
