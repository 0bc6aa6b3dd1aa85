//! GeoDNS end to end: geolb's DNS listener on 127.0.0.1 random ports, asked with queries built
//! by hickory-proto (with EDNS Client Subnet), a real resolver library (hickory-resolver) and
//! `dig`; edges and internal targets are real local servers whose checks fail and recover.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

// ---------------------------------------------------------------------------------------------
// Fixture: three regions with edges (each a /readyz server that can be made to fail), two
// internal targets (TCP listeners that can be stopped), geolb answering example.com.

/// A `/readyz` server on a loopback address of its own.
struct Readyz {
    addr: SocketAddr,
    ok: Arc<AtomicBool>,
}

async fn readyz(ip: &str) -> Readyz {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let ok = Arc::new(AtomicBool::new(true));
    let flag = ok.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let flag = flag.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let mut n = 0;
                while n < buf.len() {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let status = if flag.load(Ordering::Relaxed) {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    Readyz { addr, ok }
}

/// A TCP target (say, a region's database) that can be stopped and started on its address.
struct TcpTarget {
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TcpTarget {
    async fn bind(addr: SocketAddr) -> TcpTarget {
        let mut t = TcpTarget { addr, task: None };
        t.start().await;
        t
    }

    async fn start(&mut self) {
        let l = TcpListener::bind(self.addr).await.unwrap();
        self.addr = l.local_addr().unwrap();
        self.task = Some(tokio::spawn(async move {
            loop {
                let _ = l.accept().await;
            }
        }));
    }

    async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

struct Fixture {
    g: Geolb,
    udp: SocketAddr,
    tcp: SocketAddr,
    eu: Readyz,
    ap: Readyz,
    db_eu: TcpTarget,
    _db_ap: TcpTarget,
}

const EU_EDGE: &str = "127.0.1.1";
const AP_EDGE: &str = "127.0.1.2";
const SA_EDGE: &str = "127.0.1.3";
const DB_EU: &str = "127.0.2.1";
const DB_AP: &str = "127.0.2.2";

fn config_text(
    dir: &std::path::Path,
    f: (&Readyz, &Readyz, &Readyz, SocketAddr, SocketAddr),
    extra: &str,
) -> String {
    let (eu, ap, sa, db_eu, db_ap) = f;
    let big: Vec<String> = (1..=60).map(|i| format!("\"127.0.9.{i}\"")).collect();
    format!(
        r#"
[listeners]
http = {{ address = "127.0.0.1:0", mode = "serve" }}
admin = "127.0.0.1:0"

[geo]
database = "{db}"

[access_log]
enabled = false

[regions.eu-central]
location = [50.11, 8.68]
edge = ["{eu}", "2001:db8:e::1"]

[regions.ap-northeast]
location = [35.68, 139.75]
edge = ["{ap}", "2001:db8:a::1"]

[regions.sa-east]
location = [-23.55, -46.63]
edge = ["{sa}"]

[services.shop]
backends = [
  {{ region = "eu-central", address = "127.0.0.1:9" }},
  {{ region = "ap-northeast", address = "127.0.0.1:10" }},
  {{ region = "sa-east", address = "127.0.0.1:11" }},
]

[[routes]]
hosts = ["shop.example.com"]
service = "shop"

[dns]
udp = "127.0.0.1:0"
tcp = "127.0.0.1:0"
nameservers = ["ns1.example.com", "ns2.example.com"]
hostmaster = "hostmaster@example.com"
negative_ttl = "45s"
edge_check = {{ path = "/readyz", interval = "100ms", timeout = "1s", healthy = 1, unhealthy = 1 }}
{extra}

[[dns.zones]]
name = "example.com"

[[dns.names]]
name = "shop.example.com"
route = "shop.example.com"

[[dns.names]]
name = "ns1.example.com"
addresses = ["127.0.0.53"]

[[dns.names]]
name = "big.example.com"
addresses = [{big}]

[[dns.names]]
name = "db.internal.example.com"
targets = {{ eu-central = ["{db_eu}"], ap-northeast = ["{db_ap}"] }}
overrides = [
  {{ cidrs = ["10.1.0.0/16"], regions = ["eu-central", "ap-northeast"] }},
  {{ cidrs = ["10.2.0.0/16"], regions = ["ap-northeast", "eu-central"] }},
]
check = {{ interval = "100ms", timeout = "1s", healthy = 1, unhealthy = 1 }}
"#,
        db = dir.join("test-city.mmdb").display(),
        eu = eu.addr,
        ap = ap.addr,
        sa = sa.addr,
        big = big.join(", "),
    )
}

impl Fixture {
    async fn start(extra: &str) -> Fixture {
        let (dir, certs) = prepare();
        let eu = readyz(EU_EDGE).await;
        let ap = readyz(AP_EDGE).await;
        let sa = readyz(SA_EDGE).await;
        let db_eu = TcpTarget::bind(format!("{DB_EU}:0").parse().unwrap()).await;
        let db_ap = TcpTarget::bind(format!("{DB_AP}:0").parse().unwrap()).await;
        let text = config_text(dir.path(), (&eu, &ap, &sa, db_eu.addr, db_ap.addr), extra);
        let g = Geolb::start_raw(dir, certs, &text, true).await;
        let running = g.running.as_ref().unwrap();
        let (udp, tcp) = (running.dns_udp.unwrap(), running.dns_tcp.unwrap());
        // sa's server lives as long as the test (its flag is never changed).
        std::mem::forget(sa);
        Fixture {
            g,
            udp,
            tcp,
            eu,
            ap,
            db_eu,
            _db_ap: db_ap,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Queries

fn query(name: &str, qtype: RecordType, ecs: Option<(&str, u8)>, edns: bool) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = false;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if edns || ecs.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        if let Some((ip, len)) = ecs {
            e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
                ip.parse().unwrap(),
                len,
                0,
            )));
        }
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

async fn udp(server: SocketAddr, packet: &[u8]) -> Message {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(packet, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(WAIT, s.recv(&mut buf))
        .await
        .expect("dns answer")
        .unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

async fn tcp(server: SocketAddr, packet: &[u8]) -> Message {
    let mut s = TcpStream::connect(server).await.unwrap();
    s.write_all(&(packet.len() as u16).to_be_bytes())
        .await
        .unwrap();
    s.write_all(packet).await.unwrap();
    let mut len = [0u8; 2];
    tokio::time::timeout(WAIT, s.read_exact(&mut len))
        .await
        .unwrap()
        .unwrap();
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

fn addrs(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn scope(m: &Message) -> Option<(u8, u8)> {
    match m.edns.as_ref()?.option(EdnsCode::Subnet)? {
        EdnsOption::Subnet(cs) => Some((cs.source_prefix(), cs.scope_prefix())),
        _ => None,
    }
}

fn v4(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn answer_a(f: &Fixture, name: &str, subnet: (&str, u8)) -> Vec<IpAddr> {
    addrs(&udp(f.udp, &query(name, RecordType::A, Some(subnet), true)).await)
}

/// Poll (a DNS query per round) until `name` answers `want` for `subnet`.
async fn until_answer(f: &Fixture, name: &str, subnet: (&str, u8), want: &str) -> Duration {
    let t = Instant::now();
    loop {
        if answer_a(f, name, subnet).await == vec![v4(want)] {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < WAIT,
            "{name} for {subnet:?} never answered {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn ecs_subnets_on_three_continents_get_their_nearest_region_and_the_scope_back() {
    let mut f = Fixture::start("").await;
    // Europe, Asia, South America (a country-only record: the centroid of Brazil).
    for (subnet, want) in [
        (("192.0.2.0", 24), EU_EDGE),
        (("203.0.113.0", 24), AP_EDGE),
        (("100.64.1.0", 24), SA_EDGE),
    ] {
        let m = udp(
            f.udp,
            &query("shop.example.com", RecordType::A, Some(subnet), true),
        )
        .await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative, "AA");
        assert_eq!(addrs(&m), vec![v4(want)], "{subnet:?}");
        assert_eq!(m.answers[0].ttl, 30, "default ttl");
        assert_eq!(scope(&m), Some((24, 24)), "scope returned for {subnet:?}");
    }
    // A /32 source is answered for its /24 (the configured cap), and says so.
    let m = udp(
        f.udp,
        &query(
            "shop.example.com",
            RecordType::A,
            Some(("203.0.113.5", 32)),
            true,
        ),
    )
    .await;
    assert_eq!((addrs(&m), scope(&m)), (vec![v4(AP_EDGE)], Some((32, 24))));
    // IPv6 subnets: Singapore's /48 is nearest Tokyo; AAAA answers the region's v6 edge.
    let m = udp(
        f.udp,
        &query(
            "shop.example.com",
            RecordType::AAAA,
            Some(("2001:db8:2::", 48)),
            true,
        ),
    )
    .await;
    assert_eq!(addrs(&m), vec!["2001:db8:a::1".parse::<IpAddr>().unwrap()]);
    assert_eq!(scope(&m), Some((48, 48)));
    let m = udp(
        f.udp,
        &query(
            "shop.example.com",
            RecordType::AAAA,
            Some(("2001:db8:1::", 64)),
            true,
        ),
    )
    .await;
    assert_eq!(addrs(&m), vec!["2001:db8:e::1".parse::<IpAddr>().unwrap()]);
    assert_eq!(scope(&m), Some((64, 56)), "v6 scope capped at /56");
    // sa-east has no IPv6 edge: a Brazilian AAAA query gets the nearest region that has one.
    let m = udp(
        f.udp,
        &query(
            "shop.example.com",
            RecordType::AAAA,
            Some(("100.64.1.0", 24)),
            true,
        ),
    )
    .await;
    assert_eq!(addrs(&m).len(), 1);
    // Without ECS the resolver's own address (127.0.0.1: not in the database) decides: one
    // answer from some region, no ECS option back.
    let m = udp(f.udp, &query("shop.example.com", RecordType::A, None, true)).await;
    assert_eq!(addrs(&m).len(), 1);
    assert_eq!(scope(&m), None);
    // Source prefix 0: the requester opts out; scope 0.
    let m = udp(
        f.udp,
        &query(
            "shop.example.com",
            RecordType::A,
            Some(("0.0.0.0", 0)),
            true,
        ),
    )
    .await;
    assert_eq!(scope(&m), Some((0, 0)));
    f.g.shutdown().await;
}

#[tokio::test]
async fn a_region_whose_edge_fails_its_check_leaves_the_answers_and_returns_after_fail_back() {
    let mut f = Fixture::start("").await;
    let frankfurt = ("192.0.2.0", 24);
    assert_eq!(
        answer_a(&f, "shop.example.com", frankfurt).await,
        vec![v4(EU_EDGE)]
    );
    f.eu.ok.store(false, Ordering::Relaxed);
    // Probes every 100 ms (±10 %), one failure marks the edge down: the answer moves within
    // an interval or two; a loaded machine gets a generous bound.
    let took = until_answer(&f, "shop.example.com", frankfurt, AP_EDGE).await;
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // Japan is not affected.
    assert_eq!(
        answer_a(&f, "shop.example.com", ("203.0.113.0", 24)).await,
        vec![v4(AP_EDGE)]
    );
    f.eu.ok.store(true, Ordering::Relaxed);
    let took = until_answer(&f, "shop.example.com", frankfurt, EU_EDGE).await;
    assert!(took < Duration::from_secs(5), "fail-back took {took:?}");
    // eu and ap down: Tokyo spills to the only region left.
    f.eu.ok.store(false, Ordering::Relaxed);
    f.ap.ok.store(false, Ordering::Relaxed);
    until_answer(&f, "shop.example.com", ("203.0.113.0", 24), SA_EDGE).await;
    f.g.shutdown().await;
}

#[tokio::test]
async fn authoritative_answers_nxdomain_nodata_refused_soa_ns_any_and_truncation_over_tcp() {
    let mut f = Fixture::start("").await;
    // SOA at the apex.
    let m = udp(f.udp, &query("example.com", RecordType::SOA, None, false)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    let RData::SOA(soa) = &m.answers[0].data else {
        panic!("{m:?}")
    };
    assert_eq!(soa.mname.to_ascii(), "ns1.example.com.");
    assert_eq!(soa.rname.to_ascii(), "hostmaster.example.com.");
    assert_eq!(soa.minimum, 45);
    // NS at the apex; the name server's own name answers.
    let m = udp(f.udp, &query("example.com", RecordType::NS, None, false)).await;
    assert_eq!(m.answers.len(), 2);
    let m = udp(f.udp, &query("ns1.example.com", RecordType::A, None, false)).await;
    assert_eq!(addrs(&m), vec![v4("127.0.0.53")]);
    // NXDOMAIN: AA, SOA in authority with the negative TTL.
    let m = udp(f.udp, &query("nope.example.com", RecordType::A, None, true)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities.len(), 1);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    assert_eq!(m.authorities[0].ttl, 45);
    // NODATA: a known name without the type, and an empty non-terminal.
    for (name, t) in [
        ("shop.example.com", RecordType::MX),
        ("ns1.example.com", RecordType::AAAA),
        ("internal.example.com", RecordType::A),
        ("example.com", RecordType::A),
    ] {
        let m = udp(f.udp, &query(name, t, None, true)).await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{name} {t}"
        );
        assert!(
            m.metadata.authoritative && m.answers.is_empty(),
            "{name} {t}"
        );
        assert_eq!(
            m.authorities[0].record_type(),
            RecordType::SOA,
            "{name} {t}"
        );
    }
    // REFUSED outside the zones, without AA.
    let m = udp(f.udp, &query("example.org", RecordType::A, None, false)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.authoritative);
    // ANY: one HINFO "RFC8482" record (RFC 8482).
    let m = udp(
        f.udp,
        &query("shop.example.com", RecordType::ANY, None, false),
    )
    .await;
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].record_type(), RecordType::HINFO);
    // 60 addresses do not fit 512 bytes: TC, no records, over UDP without EDNS…
    let m = udp(f.udp, &query("big.example.com", RecordType::A, None, false)).await;
    assert!(m.metadata.truncation && m.answers.is_empty(), "{m:?}");
    // …they fit the EDNS size (1232) …
    let m = udp(f.udp, &query("big.example.com", RecordType::A, None, true)).await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
    assert_eq!(m.edns.as_ref().unwrap().max_payload(), 1232);
    // …and over TCP, in full.
    let m = tcp(f.tcp, &query("big.example.com", RecordType::A, None, false)).await;
    assert!(!m.metadata.truncation && m.metadata.authoritative);
    assert_eq!(m.answers.len(), 60);
    let m = tcp(
        f.tcp,
        &query(
            "shop.example.com",
            RecordType::A,
            Some(("203.0.113.0", 24)),
            true,
        ),
    )
    .await;
    assert_eq!((addrs(&m), scope(&m)), (vec![v4(AP_EDGE)], Some((24, 24))));
    // EDNS version 1: BADVERS.
    let mut m = Message::query();
    m.add_query(Query::query(
        Name::from_ascii("shop.example.com").unwrap(),
        RecordType::A,
    ));
    let mut e = Edns::new();
    e.set_version(1);
    m.set_edns(e);
    let r = udp(f.udp, &m.to_vec().unwrap()).await;
    // (Code 16 reads back as BADSIG, which shares the number.)
    assert_eq!(u16::from(r.metadata.response_code), 16);
    f.g.shutdown().await;
}

#[tokio::test]
async fn an_internal_name_answers_each_vpc_with_its_own_target_and_fails_over_on_its_tcp_check() {
    let mut f = Fixture::start("").await;
    let (vpc_eu, vpc_ap) = (("10.1.7.0", 24), ("10.2.7.0", 24));
    let name = "db.internal.example.com";
    assert_eq!(answer_a(&f, name, vpc_eu).await, vec![v4(DB_EU)]);
    assert_eq!(answer_a(&f, name, vpc_ap).await, vec![v4(DB_AP)]);
    // By geography when no VPC range matches: Frankfurt → eu, Tokyo → ap.
    assert_eq!(answer_a(&f, name, ("192.0.2.0", 24)).await, vec![v4(DB_EU)]);
    assert_eq!(
        answer_a(&f, name, ("203.0.113.0", 24)).await,
        vec![v4(DB_AP)]
    );
    // The eu database stops accepting: eu's VPC is sent to the ap target.
    f.db_eu.stop().await;
    let took = until_answer(&f, name, vpc_eu, DB_AP).await;
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(answer_a(&f, name, vpc_ap).await, vec![v4(DB_AP)]);
    f.db_eu.start().await;
    until_answer(&f, name, vpc_eu, DB_EU).await;
    f.g.shutdown().await;
}

#[tokio::test]
async fn a_real_resolver_library_and_dig_get_the_answers() {
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let mut f = Fixture::start("").await;
    let mut conn = ConnectionConfig::udp();
    conn.port = f.udp.port();
    let mut tcp_conn = ConnectionConfig::tcp();
    tcp_conn.port = f.tcp.port();
    let ns = NameServerConfig::new(f.udp.ip(), true, vec![conn, tcp_conn]);
    let config = ResolverConfig::from_parts(None, vec![], vec![ns]);
    let resolver =
        hickory_resolver::Resolver::builder_with_config(config, TokioRuntimeProvider::default())
            .build()
            .unwrap();
    let ips: Vec<IpAddr> = resolver
        .lookup_ip("shop.example.com.")
        .await
        .unwrap()
        .iter()
        .collect();
    assert!(!ips.is_empty());
    // Truncated over UDP, retried over TCP by the resolver: all 60.
    let big = resolver.ipv4_lookup("big.example.com.").await.unwrap();
    assert_eq!(big.answers().len(), 60);
    let soa = resolver.soa_lookup("example.com.").await.unwrap();
    assert_eq!(soa.answers().len(), 1);
    let err = resolver.ipv4_lookup("nope.example.com.").await.unwrap_err();
    assert!(err.is_nx_domain(), "{err:?}");

    let Some(dig) = which("dig") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "dig (Debian dnsutils) is missing in CI"
        );
        eprintln!("dig not installed: skipping its part (apt-get install dnsutils)");
        f.g.shutdown().await;
        return;
    };
    for (subnet, want) in [
        ("81.2.69.0/24", None),
        ("203.0.113.0/24", Some(AP_EDGE)),
        ("192.0.2.0/24", Some(EU_EDGE)),
    ] {
        let out = run_dig(
            &dig,
            f.udp.port(),
            &["shop.example.com", "A", &format!("+subnet={subnet}")],
        )
        .await;
        assert!(out.contains("status: NOERROR"), "{out}");
        assert!(out.contains("flags: qr aa"), "{out}");
        assert!(
            out.contains(&format!("CLIENT-SUBNET: {subnet}/24")),
            "{out}"
        );
        if let Some(want) = want {
            assert!(out.contains(&format!("IN\tA\t{want}")), "{out}");
        }
    }
    let out = run_dig(&dig, f.tcp.port(), &["+tcp", "big.example.com", "A"]).await;
    assert!(out.contains("ANSWER: 60"), "{out}");
    let out = run_dig(&dig, f.udp.port(), &["nope.example.com", "A"]).await;
    assert!(
        out.contains("status: NXDOMAIN") && out.contains("AUTHORITY: 1"),
        "{out}"
    );
    f.g.shutdown().await;
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(cmd))
        .find(|p| p.is_file())
}

/// Run dig (a child process: the runtime keeps serving geolb meanwhile).
async fn run_dig(dig: &std::path::Path, port: u16, args: &[&str]) -> String {
    let out = tokio::process::Command::new(dig)
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+norec",
            "+time=5",
            "+tries=2",
        ])
        .args(args)
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn malformed_packets_and_a_flood_never_stall_the_listener_nor_http() {
    let mut f =
        Fixture::start("rate_limit = { responses_per_second = 20, burst = 20, slip = 2 }").await;
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = vec![0u8; 65535];
    // Unanswerable: shorter than a header, a response (QR set), larger than any query. Then a
    // compression-pointer loop (FORMERR) and another opcode (NOTIMP).
    let mut loop_ptr = vec![0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    loop_ptr.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
    let mut response = query("shop.example.com", RecordType::A, None, false);
    response[2] |= 0x80;
    let mut notify = query("example.com", RecordType::SOA, None, false);
    notify[0..2].copy_from_slice(&[0x77, 0x77]);
    notify[2] = (notify[2] & 0x87) | (4 << 3);
    let mut oversized = query("shop.example.com", RecordType::A, None, false);
    oversized[0..2].copy_from_slice(&[0x55, 0x55]);
    oversized.resize(9000, 0xAB);
    for p in [&[1u8, 2, 3][..], &response, &loop_ptr, &oversized, &notify] {
        s.send_to(p, f.udp).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        let n = tokio::time::timeout(WAIT, s.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.metadata.message_type, MessageType::Response);
        got.push((m.metadata.id, m.metadata.response_code));
    }
    got.sort_by_key(|g| g.0);
    assert_eq!(
        got,
        vec![
            (0x1234, ResponseCode::FormErr),
            (0x7777, ResponseCode::NotImp)
        ]
    );
    // A flood from one /24: beyond the burst, answers are dropped or sent truncated (every
    // second one), never more than the bucket allows.
    let q = query("shop.example.com", RecordType::A, None, false);
    let total = 200;
    for _ in 0..total {
        s.send_to(&q, f.udp).await.unwrap();
    }
    let (mut full, mut slipped) = (0, 0);
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), s.recv(&mut buf)).await {
        let m = Message::from_vec(&buf[..n]).unwrap();
        if m.metadata.truncation {
            slipped += 1;
        } else {
            full += 1;
        }
    }
    // (The packets above took up to five of the burst's tokens.)
    assert!((10..20 + 20 * 5).contains(&full), "full answers: {full}");
    assert!(
        slipped > 0 && full + slipped < total,
        "slipped {slipped}, full {full}"
    );
    // HTTP is unaffected, and so is TCP DNS (not rate limited).
    let (status, _) = admin_get(&f.g, "/healthz").await;
    assert_eq!(status, http::StatusCode::OK);
    let m = tcp(f.tcp, &q).await;
    assert_eq!(addrs(&m).len(), 1);
    f.g.shutdown().await;
}

#[tokio::test]
async fn metrics_exist_from_start_and_explain_and_status_show_the_dns_answers() {
    // A zone of its own: the metrics recorder is shared by the tests running in parallel.
    let mut f = Fixture::start(
        "[[dns.zones]]\nname = \"m.test\"\n[[dns.names]]\nname = \"shop.m.test\"\nroute = \"shop.example.com\"",
    )
    .await;
    let (_, before) = admin_get(&f.g, "/metrics").await;
    for series in [
        "geolb_dns_queries_total{zone=\"m.test\",qtype=\"A\",rcode=\"NOERROR\"} 0",
        "geolb_dns_queries_total{zone=\"m.test\",qtype=\"other\",rcode=\"SERVFAIL\"} 0",
        "geolb_dns_queries_total{zone=\"none\",qtype=\"ANY\",rcode=\"REFUSED\"}",
        "geolb_dns_answer_region_total{region=\"sa-east\"}",
        "geolb_dns_ecs_queries_total",
    ] {
        assert!(before.contains(series), "missing {series} in:\n{before}");
    }
    answer_a(&f, "shop.m.test", ("203.0.113.0", 24)).await;
    let (_, after) = admin_get(&f.g, "/metrics").await;
    let grew = |m: &str| metric(&after, m) - metric(&before, m);
    assert!(grew("geolb_dns_ecs_queries_total") >= 1.0);
    assert!(grew("geolb_dns_answer_region_total{region=\"ap-northeast\"}") >= 1.0);
    assert_eq!(
        metric(
            &after,
            "geolb_dns_queries_total{zone=\"m.test\",qtype=\"A\",rcode=\"NOERROR\"}"
        ),
        1.0
    );
    let (status, body) = admin_get(
        &f.g,
        "/explain?dns=shop.m.test&ip=127.0.0.1&subnet=203.0.113.0/24",
    )
    .await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["answer"][0], AP_EDGE, "{v:#}");
    assert_eq!(v["answer_regions"][0], "ap-northeast", "{v:#}");
    assert_eq!(v["rule"], "distance");
    assert_eq!(v["geo"]["ecs_scope"], 24);
    assert_eq!(v["candidates"].as_array().unwrap().len(), 3);
    let st = reload_status(&f.g).await;
    let regions = st["dns"]["regions"].as_array().unwrap();
    let ap = regions
        .iter()
        .find(|r| r["region"] == "ap-northeast")
        .unwrap();
    assert_eq!(ap["answers"], 1, "{st:#}");
    assert_eq!(ap["edges"][0]["up"], true);
    assert!(
        st["dns"]["names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "db.internal.example.com")
    );
    f.g.shutdown().await;
}

#[tokio::test]
async fn the_zone_reloads_with_routes_toml() {
    let mut f = Fixture::start("").await;
    let m = udp(f.udp, &query("new.example.com", RecordType::A, None, false)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let text = std::fs::read_to_string(&f.g.config).unwrap();
    let text = format!(
        "{text}\n[[dns.names]]\nname = \"new.example.com\"\naddresses = [\"127.0.0.77\"]\n"
    );
    write_atomic(&f.g.config, &text);
    let t = Instant::now();
    loop {
        let m = udp(f.udp, &query("new.example.com", RecordType::A, None, false)).await;
        if addrs(&m) == vec![v4("127.0.0.77")] {
            break;
        }
        assert!(t.elapsed() < WAIT, "the new name never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The listener kept its address, the other names still answer.
    assert_eq!(
        answer_a(&f, "shop.example.com", ("192.0.2.0", 24)).await,
        vec![v4(EU_EDGE)]
    );
    f.g.shutdown().await;
}

#[test]
fn a_degraded_region_keeps_its_spillover_share_of_answers() {
    use geolb::dns::wire::{Scratch, Transport, handle};
    // Two backends in eu-central; one fails its check: with overprovisioning 1.4 the region keeps
    // 0.5 × 1.4 = 70 % of Frankfurt's answers, the next region (ap-northeast) takes 30 %.
    let (_dir, view) = fuzz::view_with(|t| {
        t.replace(
            "{ region = \"eu-central\", address = \"127.0.0.1:9\" },",
            "{ region = \"eu-central\", address = \"127.0.0.1:9\" },\n  { region = \"eu-central\", address = \"127.0.0.1:12\" },",
        )
        .replace("[services.shop]\n", "[services.shop]\nspillover = { overprovisioning = 1.4 }\n")
    });
    let svc = &view.snap.table.routes[0].service;
    let down = svc
        .backends
        .iter()
        .find(|b| &*b.name == "127.0.0.1:9")
        .unwrap();
    down.health.observe_check(false, 1, 1);
    let q = query(
        "shop.example.com",
        RecordType::A,
        Some(("192.0.2.0", 24)),
        true,
    );
    let mut s = Scratch::default();
    let (mut eu, mut ap) = (0, 0);
    for _ in 0..1000 {
        assert!(handle(
            &view,
            &q,
            "127.0.0.1".parse().unwrap(),
            Transport::Udp,
            1_000,
            &mut s
        ));
        match addrs(&Message::from_vec(&s.out).unwrap())[..] {
            [ip] if ip == v4(EU_EDGE) => eu += 1,
            [ip] if ip == v4(AP_EDGE) => ap += 1,
            ref other => panic!("unexpected answer {other:?}"),
        }
    }
    // The golden-ratio sequence meets the shares within a few answers.
    assert!(
        (695..=705).contains(&eu) && eu + ap == 1000,
        "eu {eu}, ap {ap}"
    );
}

#[test]
fn answers_2_adds_the_next_region_and_servfail_when_nothing_can_serve() {
    use geolb::dns::wire::{Scratch, Transport, handle};
    let (_dir, view) =
        fuzz::view_with(|t| t.replace("[dns]\n", "[dns]\nanswers = 2\nwhen_down = \"servfail\"\n"));
    let q = query(
        "shop.example.com",
        RecordType::A,
        Some(("192.0.2.0", 24)),
        true,
    );
    let mut s = Scratch::default();
    let ask = |s: &mut Scratch| {
        assert!(handle(
            &view,
            &q,
            "127.0.0.1".parse().unwrap(),
            Transport::Udp,
            1_000,
            s
        ));
        Message::from_vec(&s.out).unwrap()
    };
    // Frankfurt: eu-central first, then the next nearest, ap-northeast.
    assert_eq!(addrs(&ask(&mut s)), vec![v4(EU_EDGE), v4(AP_EDGE)]);
    // eu-central's backend down: ap-northeast, then sa-east.
    let svc = &view.snap.table.routes[0].service;
    svc.backends[0].health.observe_check(false, 1, 1);
    assert_eq!(addrs(&ask(&mut s)), vec![v4(AP_EDGE), v4(SA_EDGE)]);
    // Nothing healthy and when_down = "servfail": SERVFAIL, not authoritative.
    for b in svc.backends.iter() {
        b.health.observe_check(false, 1, 1);
    }
    let m = ask(&mut s);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(!m.metadata.authoritative && m.answers.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Property test: the packet input path, in process.

mod fuzz {
    use super::*;
    use geolb::dns::wire::{Scratch, Transport, handle};
    use proptest::prelude::*;

    pub(super) fn view() -> (tempfile::TempDir, geolb::dns::DnsView) {
        view_with(|t| t)
    }

    /// The fixture's configuration, edited by `edit`, compiled into a view (no listeners).
    pub(super) fn view_with(
        edit: impl FnOnce(String) -> String,
    ) -> (tempfile::TempDir, geolb::dns::DnsView) {
        let (dir, _certs) = prepare();
        let fake = |ip: &str| Readyz {
            addr: format!("{ip}:9").parse().unwrap(),
            ok: Arc::new(AtomicBool::new(true)),
        };
        let (eu, ap, sa) = (fake(EU_EDGE), fake(AP_EDGE), fake(SA_EDGE));
        let text = config_text(
            dir.path(),
            (
                &eu,
                &ap,
                &sa,
                "127.0.2.1:9".parse().unwrap(),
                "127.0.2.2:9".parse().unwrap(),
            ),
            "",
        );
        let text = edit(text);
        let health = geolb::health::HealthRegistry::default();
        let pool = geolb::UpstreamPool::default();
        let ctx = geolb::config::CompileCtx {
            health: &health,
            pool: &pool,
        };
        let path = dir.path().join("routes.toml");
        let c = geolb::config::compile_str(&text, &path, &ctx).unwrap();
        let config = c.dns.clone().unwrap();
        let snap = geolb::route::Snapshot {
            table: c.table,
            settings: c.settings,
            geo: c.geo.unwrap(),
            tls: None,
            generation: 1,
            summary: c.summary,
            pool_keys: c.pool_keys,
        };
        let view = geolb::dns::DnsView {
            config,
            snap: Arc::new(snap),
            rrl: None,
        };
        (dir, view)
    }

    fn seeds() -> Vec<Vec<u8>> {
        vec![
            query(
                "shop.example.com",
                RecordType::A,
                Some(("192.0.2.0", 24)),
                true,
            ),
            query(
                "shop.example.com",
                RecordType::AAAA,
                Some(("2001:db8:2::", 48)),
                true,
            ),
            query(
                "db.internal.example.com",
                RecordType::A,
                Some(("10.1.0.0", 16)),
                true,
            ),
            query("big.example.com", RecordType::A, None, false),
            query("example.com", RecordType::SOA, None, true),
            query("nope.example.com", RecordType::ANY, None, false),
        ]
    }

    /// Answer `p` and check the answer, when there is one, is a well-formed response to it.
    fn check(view: &geolb::dns::DnsView, p: &[u8], s: &mut Scratch) -> Result<(), TestCaseError> {
        for transport in [Transport::Udp, Transport::Tcp] {
            if handle(view, p, "127.0.0.1".parse().unwrap(), transport, 1_000, s) {
                let m = Message::from_vec(&s.out)
                    .map_err(|e| TestCaseError::fail(format!("unparsable answer: {e}")))?;
                prop_assert_eq!(m.metadata.message_type, MessageType::Response);
                prop_assert_eq!(m.metadata.id, u16::from_be_bytes([p[0], p[1]]));
                if transport == Transport::Udp {
                    prop_assert!(s.out.len() <= 1232);
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn random_packets_never_panic_and_get_no_answer_or_a_well_formed_one(p in proptest::collection::vec(any::<u8>(), 0..700)) {
            let (_dir, view) = VIEW.with(|v| v.clone());
            let mut s = Scratch::default();
            check(&view, &p, &mut s)?;
        }

        #[test]
        fn mutated_queries_never_panic_and_get_no_answer_or_a_well_formed_one(
            seed in 0usize..6,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in proptest::option::of(any::<usize>()),
        ) {
            let (_dir, view) = VIEW.with(|v| v.clone());
            let mut p = seeds()[seed].clone();
            for (i, b) in flips {
                let i = i % p.len();
                p[i] = b;
            }
            if let Some(c) = cut {
                p.truncate(c % (p.len() + 1));
            }
            let mut s = Scratch::default();
            check(&view, &p, &mut s)?;
        }
    }

    thread_local! {
        static VIEW: (Arc<tempfile::TempDir>, Arc<geolb::dns::DnsView>) = {
            let (d, v) = view();
            (Arc::new(d), Arc::new(v))
        };
    }
}
