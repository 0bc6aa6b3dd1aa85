//! The per-request decision path (client IP → geo lookup → route match → region order →
//! backend pick) performs no heap allocation. A counting global allocator proves it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
thread_local! { static COUNT_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) }; }

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNT_HERE.with(|c| c.get()) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

mod common;

#[test]
fn the_decision_path_does_not_allocate() {
    use geolb::route::client_ip::{IpHeader, TrustedNets};
    use geolb::route::select;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _g = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let city = geolb::geo::GeoDb::open(&common::write_city_mmdb(dir.path())).unwrap();
    let embedded = geolb::geo::GeoDb::embedded().unwrap();
    let health = geolb::health::HealthRegistry::default();
    let pool = geolb::UpstreamPool::default();
    let ctx = geolb::config::CompileCtx {
        health: &health,
        pool: &pool,
    };
    let text = r#"
[listeners]
http = { address = "127.0.0.1:0" }
admin = "off"
[regions.eu]
location = [50.1, 8.7]
[regions.ap]
location = [1.3, 103.8]
[services.app]
lb = "least_request"
backends = [{ region = "eu", address = "10.0.0.1:80" }, { region = "eu", address = "10.0.0.2:80" }, { region = "ap", address = "10.0.1.1:80" }]
[services.rr]
lb = "round_robin"
backends = [{ region = "eu", address = "10.0.0.1:80" }, { region = "ap", address = "10.0.1.1:80" }]
[services.h]
lb = "hash"
backends = [{ region = "eu", address = "10.0.0.1:80" }, { region = "ap", address = "10.0.1.1:80" }]
[services.pe]
lb = "peak_ewma"
backends = [{ region = "eu", address = "10.0.0.1:80" }, { region = "eu", address = "10.0.0.2:80" }, { region = "ap", address = "10.0.1.1:80" }]
[[routes]]
hosts = ["shop.example.com", "*.example.org"]
service = "app"
overrides = [{ countries = ["CN"], regions = ["eu"] }]
[[routes]]
hosts = ["rr.example.com"]
service = "rr"
[[routes]]
hosts = ["h.example.com"]
service = "h"
[[routes]]
hosts = ["pe.example.com"]
service = "pe"
"#;
    let table = geolb::config::compile_str(text, Path::new("t.toml"), &ctx)
        .unwrap()
        .table;
    // Latency estimates for the peak_ewma service (one backend left unmeasured).
    for svc in table.services.iter().filter(|s| &*s.name == "pe") {
        for be in svc.backends.iter().skip(1) {
            be.health
                .observe_latency(2_000.0, geolb::time::now_ms(), svc.ewma_decay_ms);
        }
    }
    let trusted = TrustedNets::new(vec!["127.0.0.0/8".parse().unwrap()]);
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "x-forwarded-for",
        http::HeaderValue::from_static("198.51.100.7, 127.0.0.5"),
    );
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    let ips: Vec<IpAddr> = [
        "192.0.2.10",
        "2001:db8:2::1",
        "100.64.1.1",
        "233.252.0.1",
        "81.2.69.142",
        "::ffff:133.1.1.1",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let hosts = [
        "shop.example.com",
        "a.example.org",
        "rr.example.com",
        "h.example.com",
        "pe.example.com",
    ];
    let run = || {
        let mut picked = 0usize;
        for db in [&city, &embedded] {
            for (i, &ip0) in ips.iter().enumerate() {
                let ip = if i == 0 {
                    geolb::route::client_ip::resolve(
                        peer,
                        &headers,
                        &trusted,
                        &IpHeader::XForwardedFor,
                    )
                } else {
                    ip0
                };
                let loc = db.locate(ip);
                let country = loc.and_then(|l| l.country_str());
                let route = table.match_route(hosts[i % hosts.len()], "/cart").unwrap();
                let order = select::order_regions(route, &table.regions, ip, loc.as_ref());
                let p = select::pick(
                    &route.service,
                    &order,
                    geolb::time::now_ms(),
                    select::hash_ip(ip),
                    &[],
                )
                .unwrap();
                picked += p.backend.0 + country.map_or(0, str::len);
            }
        }
        picked
    };
    run(); // warm up lazy statics (thread-local RNG, clocks)
    COUNT_HERE.with(|c| c.set(true));
    let mut total = 0;
    for _ in 0..100 {
        total += run();
    }
    COUNT_HERE.with(|c| c.set(false));
    assert!(total > 0);
    assert_eq!(
        ALLOCS.load(Ordering::Relaxed),
        0,
        "the decision path allocated"
    );
    // The counter itself works: one allocation is seen.
    COUNT_HERE.with(|c| c.set(true));
    let b = std::hint::black_box(Box::new(7u64));
    COUNT_HERE.with(|c| c.set(false));
    assert_eq!(*b, 7);
    assert_eq!(ALLOCS.load(Ordering::Relaxed), 1);
}
