//! Per-request work (client IP, geo lookup, route match, region order + backend pick, header
//! rewrite) and the control path (parse + compile + swap of a large config).
//!
//! `cargo bench --bench hot_path`; set `BENCH_MMDB=/path/to/db.mmdb` to add a real database.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use geolb::UpstreamPool;
use geolb::config::{CompileCtx, compile_str};
use geolb::geo::GeoDb;
use geolb::health::HealthRegistry;
use geolb::route::client_ip::{self, IpHeader, TrustedNets};
use geolb::route::select;
use geolb::time::now_ms;
use http::{HeaderMap, HeaderValue};

/// A City database with one record per /16 across 10.0.0.0/8 and some IPv6, plus the
/// ranges the clients below use.
fn city_db() -> GeoDb {
    use maxminddb::geoip2::{self, city};
    use mmdb_writer::{Writer, ipnet::IpNet};
    let rec = |cc: &'static str, lat: f64, lon: f64| geoip2::City {
        country: city::Country {
            iso_code: Some(cc),
            ..Default::default()
        },
        location: city::Location {
            latitude: Some(lat),
            longitude: Some(lon),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut w = Writer::builder("GeoIP2-City")
        .description(&[("en", "bench")])
        .build_epoch(std::time::UNIX_EPOCH)
        .build();
    for i in 0..=255u32 {
        let net: IpNet = format!("10.{i}.0.0/16").parse().unwrap();
        let r = if i % 2 == 0 {
            rec("DE", 50.1, 8.7)
        } else {
            rec("SG", 1.3, 103.8)
        };
        w.insert(net, &r).unwrap();
    }
    w.insert(
        "81.2.69.0/24".parse::<IpNet>().unwrap(),
        &rec("GB", 51.5, -0.1),
    )
    .unwrap();
    w.insert(
        "2001:db8::/32".parse::<IpNet>().unwrap(),
        &rec("JP", 35.7, 139.7),
    )
    .unwrap();
    GeoDb::from_bytes(w.to_bytes().unwrap(), "bench-city").unwrap()
}

fn config(routes: usize, backends: usize) -> String {
    let mut s = String::from(
        "[listeners]\nhttp = { address = \"127.0.0.1:0\", mode = \"serve\" }\nadmin = \"off\"\n[client_ip]\ntrusted_proxies = [\"127.0.0.0/8\"]\n\
         [regions.eu-central]\nlocation = [50.11, 8.68]\n[regions.ap-southeast]\nlocation = [1.29, 103.85]\n[regions.us-east]\nlocation = [39.0, -77.5]\n",
    );
    let services = (backends / 4).max(1);
    for svc in 0..services {
        s.push_str(&format!("[services.s{svc}]\nbackends = [\n"));
        for b in 0..4 {
            let region = ["eu-central", "eu-central", "ap-southeast", "us-east"][b];
            s.push_str(&format!(
                "  {{ region = \"{region}\", address = \"10.{}.{}.{}:8080\" }},\n",
                svc / 250,
                svc % 250,
                b + 1
            ));
        }
        s.push_str("]\n");
    }
    for r in 0..routes {
        s.push_str(&format!(
            "[[routes]]\nhosts = [\"h{r}.example.com\"]\npath_prefix = \"/\"\nservice = \"s{}\"\n",
            r % services
        ));
    }
    s.push_str(
        "[[routes]]\nhosts = [\"shop.example.com\"]\npath_prefix = \"/api\"\nservice = \"s0\"\n",
    );
    s
}

fn bench_hot_path(c: &mut Criterion) {
    let health = HealthRegistry::default();
    let pool = UpstreamPool::default();
    let ctx = CompileCtx {
        health: &health,
        pool: &pool,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let compiled = compile_str(&config(1000, 400), Path::new("bench.toml"), &ctx).unwrap();
    let table = compiled.table;
    let embedded = GeoDb::embedded().unwrap();
    let city = city_db();
    let mut dbs: Vec<(&str, GeoDb, Vec<IpAddr>)> = vec![
        (
            "embedded",
            embedded,
            ["81.2.69.142", "133.1.1.1", "200.160.2.3", "2001:200::1"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
        ),
        (
            "city",
            city,
            ["10.2.3.4", "10.3.3.4", "81.2.69.142", "2001:db8::1"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
        ),
    ];
    if let Ok(p) = std::env::var("BENCH_MMDB") {
        dbs.push((
            "BENCH_MMDB",
            GeoDb::open(Path::new(&p)).unwrap(),
            ["8.8.8.8", "81.2.69.142", "133.1.1.1", "2a00:1450:4001::1"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
        ));
    }
    let trusted = TrustedNets::new(vec![
        "127.0.0.0/8".parse().unwrap(),
        "10.0.0.0/8".parse().unwrap(),
    ]);
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-forwarded-for",
        HeaderValue::from_static("81.2.69.142, 10.0.0.7"),
    );
    let peer: IpAddr = "127.0.0.1".parse().unwrap();

    c.bench_function("client_ip/xff_two_hops", |b| {
        b.iter(|| {
            client_ip::resolve(
                black_box(peer),
                black_box(&headers),
                &trusted,
                &IpHeader::XForwardedFor,
            )
        })
    });
    for (name, db, ips) in &dbs {
        let mut i = 0;
        c.bench_function(&format!("geo/locate/{name}"), |b| {
            b.iter(|| {
                i = (i + 1) % ips.len();
                db.locate(black_box(ips[i]))
            })
        });
    }
    c.bench_function("routing/match_route_1000_hosts", |b| {
        b.iter(|| table.match_route_idx(black_box("h537.example.com"), black_box("/cart/42")))
    });
    let route = table
        .match_route(black_box("shop.example.com"), "/api/x")
        .unwrap();
    for (name, db, ips) in &dbs {
        let mut i = 0;
        c.bench_function(&format!("decision/ip+geo+route+select/{name}"), |b| {
            b.iter(|| {
                i = (i + 1) % ips.len();
                let ip = client_ip::resolve(peer, &headers, &trusted, &IpHeader::XForwardedFor);
                let ip = if i % 2 == 0 { ip } else { ips[i] };
                let loc = db.locate(ip);
                let r = table
                    .match_route(black_box("shop.example.com"), black_box("/api/items"))
                    .unwrap();
                let order = select::order_regions(r, &table.regions, ip, loc.as_ref());
                select::pick(&r.service, &order, now_ms(), select::hash_ip(ip), &[])
            })
        });
    }
    let order = select::order_regions(route, &table.regions, peer, None);
    c.bench_function("select/pick_least_request", |b| {
        b.iter(|| select::pick(&route.service, black_box(&order), now_ms(), 0, &[]))
    });
    // The same pick under lb = "peak_ewma", every backend with a latency estimate.
    let ewma_health = HealthRegistry::default();
    let ewma_ctx = CompileCtx {
        health: &ewma_health,
        pool: &pool,
    };
    let ewma_text = config(1, 4).replace("[services.s0]\n", "[services.s0]\nlb = \"peak_ewma\"\n");
    let ewma_table = compile_str(&ewma_text, Path::new("bench.toml"), &ewma_ctx)
        .unwrap()
        .table;
    let ewma_route = ewma_table
        .match_route("shop.example.com", "/api/x")
        .unwrap();
    let svc = &ewma_route.service;
    for (i, be) in svc.backends.iter().enumerate() {
        be.health
            .observe_latency(1_000.0 * (i + 1) as f64, now_ms(), svc.ewma_decay_ms);
    }
    let ewma_order = select::order_regions(ewma_route, &ewma_table.regions, peer, None);
    c.bench_function("select/pick_peak_ewma", |b| {
        b.iter(|| select::pick(svc, black_box(&ewma_order), now_ms(), 0, &[]))
    });
    let mut base = HeaderMap::new();
    for (k, v) in [
        ("host", "shop.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("connection", "keep-alive"),
        ("x-forwarded-for", "81.2.69.142"),
    ] {
        base.insert(k, HeaderValue::from_static(v));
    }
    c.bench_function("headers/rewrite", |b| {
        b.iter(|| {
            let mut h = base.clone();
            geolb::headers::strip_hop_by_hop(&mut h, false);
            geolb::headers::strip_geolb(&mut h);
            geolb::headers::append_xff(&mut h, peer);
            h
        })
    });
}

fn bench_compile(c: &mut Criterion) {
    let health = HealthRegistry::default();
    let pool = UpstreamPool::default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let text = config(10_000, 1_000);
    let swap = ArcSwap::from_pointee(0usize);
    let mut g = c.benchmark_group("config");
    g.sample_size(10);
    g.bench_function("parse+compile+swap/10k_routes_1k_backends", |b| {
        b.iter(|| {
            let ctx = CompileCtx {
                health: &health,
                pool: &pool,
            };
            let compiled = compile_str(black_box(&text), Path::new("bench.toml"), &ctx).unwrap();
            swap.store(Arc::new(compiled.table.routes.len()));
            compiled
        })
    });
    g.finish();
}

criterion_group!(benches, bench_hot_path, bench_compile);
criterion_main!(benches);
