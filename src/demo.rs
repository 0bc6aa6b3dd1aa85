//! `geolb demo`: demo origin servers for two regions, a control endpoint to take a region
//! down and bring it back, and geolb on `conf/demo.toml`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const CONFIG: &str = "conf/demo.toml";
const CONTROL: &str = "127.0.0.1:9900";
/// (region, backend name, address) — must match conf/demo.toml.
const ORIGINS: [(&str, &str, &str); 4] = [
    ("eu-central", "fra-1", "127.0.0.1:9101"),
    ("eu-central", "fra-2", "127.0.0.1:9102"),
    ("ap-southeast", "sin-1", "127.0.0.1:9201"),
    ("ap-southeast", "sin-2", "127.0.0.1:9202"),
];

pub async fn run() -> Result<()> {
    let mut regions: HashMap<&'static str, Arc<AtomicBool>> = HashMap::new();
    for (region, name, addr) in ORIGINS {
        let up = regions
            .entry(region)
            .or_insert_with(|| Arc::new(AtomicBool::new(true)))
            .clone();
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("demo origin {name} on {addr}"))?;
        tokio::spawn(serve(l, move |req: Request<Incoming>| {
            origin(req, region, name, &up)
        }));
    }
    let control = TcpListener::bind(CONTROL)
        .await
        .with_context(|| format!("demo control on {CONTROL}"))?;
    let regions = Arc::new(regions);
    let r2 = regions.clone();
    tokio::spawn(serve(control, move |req: Request<Incoming>| {
        control_req(req, &r2)
    }));

    let running = geolb::App::start(geolb::Options {
        config: CONFIG.into(),
        watch: true,
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let https = running.https.context("demo.toml has an https listener")?;
    let admin = running.admin.context("demo.toml has an admin listener")?;
    let http = running.http;
    println!(
        r#"
geolb demo is running (config {CONFIG}, dev certificates from certs-dev/).

  proxy (HTTPS):  https://localhost:{hp}/
  proxy (HTTP):   {httpline}
  admin:          http://{admin}/status   (HTML in a browser)   http://{admin}/metrics
                  http://{admin}/explain?ip=81.2.69.142&host=localhost

Two regions: eu-central (Frankfurt: fra-1, fra-2) and ap-southeast (Singapore: sin-1, sin-2).
geolb trusts X-Forwarded-For from loopback, so you can pretend to be anywhere:

  curl --cacert certs-dev/ca.pem https://localhost:{hp}/ -H 'X-Forwarded-For: 81.2.69.142'   # London   -> eu-central
  curl --cacert certs-dev/ca.pem https://localhost:{hp}/ -H 'X-Forwarded-For: 133.1.1.1'     # Japan    -> ap-southeast
  curl --cacert certs-dev/ca.pem https://localhost:{hp}/ -H 'X-Forwarded-For: 200.160.2.3'   # Brazil   -> eu-central (nearer)
  curl --cacert certs-dev/ca.pem https://localhost:{hp}/ -H 'X-Forwarded-For: 41.0.0.1'      # S.Africa -> eu-central
  curl --cacert certs-dev/ca.pem --http2 https://localhost:{hp}/ -H 'X-Forwarded-For: 2001:200::1'  # IPv6 Japan

Take a region down and watch its clients spill to the other one, then bring it back:

  curl -X POST http://{CONTROL}/regions/eu-central/down
  curl --cacert certs-dev/ca.pem https://localhost:{hp}/ -H 'X-Forwarded-For: 81.2.69.142'   # now ap-southeast
  curl -X POST http://{CONTROL}/regions/eu-central/up      # back after the fail-back delay (5s in the demo)

Ctrl-C stops everything.
"#,
        hp = https.port(),
        httpline = http.map_or("(none)".to_string(), |a| format!(
            "http://localhost:{}/",
            a.port()
        )),
    );
    crate::wait_for_signals(&running).await?;
    running.shutdown().await;
    Ok(())
}

async fn serve<F>(l: TcpListener, f: F)
where
    F: Fn(Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + Clone + 'static,
{
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        let f = f.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let f = f.clone();
                async move { Ok::<_, std::convert::Infallible>(f(req)) }
            });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
        });
    }
}

fn origin(
    req: Request<Incoming>,
    region: &str,
    name: &str,
    up: &AtomicBool,
) -> Response<Full<Bytes>> {
    if !up.load(Ordering::Relaxed) {
        let mut r = Response::new(Full::new(Bytes::from_static(b"region is down (demo)\n")));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return r;
    }
    let mut body = format!(
        "region: {region}\nbackend: {name}\n{} {}\nheaders received:\n",
        req.method(),
        req.uri()
    );
    for (k, v) in req.headers() {
        body.push_str(&format!("  {k}: {}\n", v.to_str().unwrap_or("<binary>")));
    }
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        "x-demo-region",
        http::HeaderValue::from_str(region).unwrap_or(http::HeaderValue::from_static("?")),
    );
    r
}

fn control_req(
    req: Request<Incoming>,
    regions: &HashMap<&'static str, Arc<AtomicBool>>,
) -> Response<Full<Bytes>> {
    let parts: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
    let msg = match parts.as_slice() {
        ["regions", region, state @ ("up" | "down")] => match regions.get(region) {
            Some(flag) => {
                flag.store(*state == "up", Ordering::Relaxed);
                format!("region {region} is now {state}\n")
            }
            None => format!("unknown region {region}\n"),
        },
        _ => "use POST /regions/<eu-central|ap-southeast>/<up|down>\n".into(),
    };
    Response::new(Full::new(Bytes::from(msg)))
}
