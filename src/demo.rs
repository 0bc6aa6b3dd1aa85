//! `geolb demo`: demo origin servers for two regions, a control endpoint to take a region
//! down and bring it back, and geolb on `conf/demo.toml`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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

/// The demo's pretend database: which region holds the primary, and how far the replica
/// region lags. Every origin reports it in its health answers (`X-Db-Role`,
/// `X-Db-Replica-Lag`), as an application in front of RDS + DTS would.
struct DemoDb {
    primary: Mutex<&'static str>,
    lag_ms: AtomicU64,
}

pub async fn run() -> Result<()> {
    let mut regions: HashMap<&'static str, Arc<AtomicBool>> = HashMap::new();
    let db = Arc::new(DemoDb {
        primary: Mutex::new("eu-central"),
        lag_ms: AtomicU64::new(3_000),
    });
    for (region, name, addr) in ORIGINS {
        let up = regions
            .entry(region)
            .or_insert_with(|| Arc::new(AtomicBool::new(true)))
            .clone();
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("demo origin {name} on {addr}"))?;
        let db = db.clone();
        tokio::spawn(serve(l, move |req: Request<Incoming>| {
            origin(req, region, name, &up, &db)
        }));
    }
    let control = TcpListener::bind(CONTROL)
        .await
        .with_context(|| format!("demo control on {CONTROL}"))?;
    let regions = Arc::new(regions);
    let r2 = regions.clone();
    let db2 = db.clone();
    tokio::spawn(serve(control, move |req: Request<Incoming>| {
        control_req(req, &r2, &db2)
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

The database is primary in eu-central, with a replica in ap-southeast 3 s behind. Writes
go to the primary from anywhere; a client's reads after its write avoid the stale replica
until it has caught up (a signed cookie), then return to the nearest region:

  curl --cacert certs-dev/ca.pem -c /tmp/geolb-demo.jar -X POST https://localhost:{hp}/orders -H 'X-Forwarded-For: 133.1.1.1'  # Japan write -> eu-central
  curl --cacert certs-dev/ca.pem -b /tmp/geolb-demo.jar https://localhost:{hp}/orders -H 'X-Forwarded-For: 133.1.1.1'           # read now  -> eu-central
  sleep 5; curl --cacert certs-dev/ca.pem -b /tmp/geolb-demo.jar https://localhost:{hp}/orders -H 'X-Forwarded-For: 133.1.1.1'  # caught up -> ap-southeast
  curl -X POST http://{CONTROL}/primary/ap-southeast   # fail the database over: writes follow within two checks
  curl -X POST http://{CONTROL}/lag/60                 # a replica 60 s behind: reads skip it (max_read_lag 30s)
  http://{admin}/explain?ip=133.1.1.1&host=localhost&method=POST   # why

GeoDNS answers shop.geolb.test on {dnsline}, from the same regions and health:

  dig @127.0.0.1 -p {dp} shop.geolb.test +subnet=81.2.69.0/24    # Europe -> 127.0.0.1 (eu-central's edge)
  dig @127.0.0.1 -p {dp} shop.geolb.test +subnet=133.1.1.0/24    # Japan  -> 127.0.0.2 (ap-southeast's edge)
  dig @127.0.0.1 -p {dp} +tcp geolb.test SOA                     # the zone: SOA, NS; NXDOMAIN below it
  http://{admin}/explain?dns=shop.geolb.test&ip=127.0.0.1&subnet=133.1.1.0/24   # why

Take a region down and watch its clients spill to the other one (HTTP and DNS), then bring it back:

  curl -X POST http://{CONTROL}/regions/eu-central/down
  curl --cacert certs-dev/ca.pem https://localhost:{hp}/ -H 'X-Forwarded-For: 81.2.69.142'   # now ap-southeast
  dig @127.0.0.1 -p {dp} shop.geolb.test +subnet=81.2.69.0/24 +short                       # now 127.0.0.2
  curl -X POST http://{CONTROL}/regions/eu-central/up      # back after the fail-back delay (5s in the demo)

Ctrl-C stops everything.
"#,
        hp = https.port(),
        dp = running.dns_udp.map_or(5353, |a| a.port()),
        dnsline = running
            .dns_udp
            .map_or("(no [dns] in demo.toml)".to_string(), |a| format!(
                "udp and tcp {a}"
            )),
        httpline = http.map_or("(none)".to_string(), |a| format!(
            "http://localhost:{}/",
            a.port()
        )),
    );
    running.wait_for_signals().await?;
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
    db: &DemoDb,
) -> Response<Full<Bytes>> {
    if !up.load(Ordering::Relaxed) {
        let mut r = Response::new(Full::new(Bytes::from_static(b"region is down (demo)\n")));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return r;
    }
    let primary = *db.primary.lock().unwrap_or_else(|e| e.into_inner()) == region;
    let (role, lag) = if primary {
        ("primary", 0)
    } else {
        ("replica", db.lag_ms.load(Ordering::Relaxed))
    };
    let mut body = format!(
        "region: {region}\nbackend: {name}\n{} {}\nheaders received:\n",
        req.method(),
        req.uri()
    );
    for (k, v) in req.headers() {
        body.push_str(&format!("  {k}: {}\n", v.to_str().unwrap_or("<binary>")));
    }
    let mut r = Response::new(Full::new(Bytes::from(body)));
    let h = r.headers_mut();
    h.insert(
        "x-demo-region",
        http::HeaderValue::from_str(region).unwrap_or(http::HeaderValue::from_static("?")),
    );
    h.insert("x-db-role", http::HeaderValue::from_static(role));
    if let Ok(v) = http::HeaderValue::from_str(&format!("{:.3}", lag as f64 / 1000.0)) {
        h.insert("x-db-replica-lag", v);
    }
    r
}

fn control_req(
    req: Request<Incoming>,
    regions: &HashMap<&'static str, Arc<AtomicBool>>,
    db: &DemoDb,
) -> Response<Full<Bytes>> {
    let parts: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
    let msg = match parts.as_slice() {
        ["primary", region] => match regions.keys().find(|k| **k == *region).copied() {
            Some(name) => {
                *db.primary.lock().unwrap_or_else(|e| e.into_inner()) = name;
                format!("the database primary is now in {name}\n")
            }
            None => format!("unknown region {region}\n"),
        },
        ["lag", secs] => match secs.parse::<f64>() {
            Ok(s) if (0.0..1e6).contains(&s) => {
                db.lag_ms.store((s * 1000.0) as u64, Ordering::Relaxed);
                format!("the replica now lags {s} s\n")
            }
            _ => "use POST /lag/<seconds>\n".into(),
        },
        ["regions", region, state @ ("up" | "down")] => match regions.get(region) {
            Some(flag) => {
                flag.store(*state == "up", Ordering::Relaxed);
                format!("region {region} is now {state}\n")
            }
            None => format!("unknown region {region}\n"),
        },
        _ => "use POST /regions/<eu-central|ap-southeast>/<up|down>, /primary/<region> or /lag/<seconds>\n".into(),
    };
    Response::new(Full::new(Bytes::from(msg)))
}
