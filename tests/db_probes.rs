//! Database probes against real servers the tests start themselves: a PostgreSQL primary with
//! a streaming replica and a MariaDB primary with a replica. geolb learns the primary and the
//! replica lag from the databases (not from health answers), sees lag grow while replay is
//! paused and fall when it resumes, moves writes on a promotion under load, takes a killed
//! database's region out of the write path, and names why a probe fails (credentials, a
//! silent listener, a peer that is not a database, nothing listening) without ever hanging.
//!
//! The servers' binaries come from the distribution (`.ci/run` installs `postgresql` and
//! `mariadb-server`); without them the tests say so loudly and skip.

mod common;
#[path = "common/db.rs"]
mod db;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http::{Request, StatusCode};
use serde_json::Value;

const HEALTH: &str = "health = { path = \"/healthz\", interval = \"100ms\", unhealthy_interval = \"100ms\", timeout = \"1s\", healthy = 1, unhealthy = 2 }";
const EU: &str = "eu-central";
const AP: &str = "ap-southeast";

/// geolb with service `app` (one backend per region) and `[services.app.data]` = `data`.
async fn start_geolb(data: &str) -> (Geolb, TestBackend, TestBackend) {
    let fra = TestBackend::spawn("fra-1", EU).await;
    let sin = TestBackend::spawn("sin-1", AP).await;
    let g = Geolb::start(&app_config(&fra, &sin, data)).await;
    (g, fra, sin)
}

fn app_config(fra: &TestBackend, sin: &TestBackend, data: &str) -> String {
    format!(
        "{}\n[services.app.data]\n{data}\n\n[[routes]]\nservice = \"app\"\n",
        service_toml("app", &[fra, sin], HEALTH)
    )
}

/// `databases = [...]` for two endpoints (`kind` = postgres or mysql).
fn databases(kind: &str, eu: &str, ap: &str, extra: &str) -> String {
    format!(
        "databases = [\n  {{ region = \"{EU}\", {kind} = \"{eu}\", {extra} }},\n  {{ region = \"{AP}\", {kind} = \"{ap}\", {extra} }},\n]\n"
    )
}

async fn service_data(g: &Geolb, service: &str) -> Value {
    let s = reload_status(g).await;
    s["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["service"] == service)
        .unwrap_or_else(|| panic!("no service {service} in {s}"))["data"]
        .clone()
}

fn region<'a>(data: &'a Value, name: &str) -> &'a Value {
    data["regions"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["region"] == name))
        .unwrap_or_else(|| panic!("no region {name} in {data}"))
}

/// Poll `/status` until `cond` holds for the service's data section; returns it.
async fn wait_data(g: &Geolb, service: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + db::DB_WAIT;
    loop {
        let d = service_data(g, service).await;
        if cond(&d) {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}\nlast status: {d:#}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn lag(d: &Value, r: &str) -> Option<f64> {
    region(d, r)["lag_seconds"].as_f64()
}

/// The replica's lag grows: above 1 s, then at least one more second later.
async fn lag_grows(g: &Geolb) -> f64 {
    let d = wait_data(g, "app", "replica lag above 1s", |d| {
        lag(d, AP).is_some_and(|l| l >= 1.0)
    })
    .await;
    let first = lag(&d, AP).unwrap();
    let d = wait_data(g, "app", "replica lag to keep growing", |d| {
        lag(d, AP).is_some_and(|l| l >= first + 1.0)
    })
    .await;
    assert_eq!(region(&d, AP)["role"], "replica", "{d}");
    lag(&d, AP).unwrap()
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Body,
>;

/// GETs from Tokio until one is served by `backend`.
async fn reads_reach(c: &Client, g: &Geolb, backend: &str) {
    let deadline = tokio::time::Instant::now() + db::DB_WAIT;
    loop {
        let req = Request::get(g.url("/orders"))
            .header("x-forwarded-for", IP_TOKYO)
            .body(full(""))
            .unwrap();
        let r = tokio::time::timeout(WAIT, c.request(req)).await;
        let got = match r {
            Ok(Ok(r)) => r
                .headers()
                .get("x-backend")
                .map(|v| v.to_str().unwrap().to_owned()),
            _ => None,
        };
        if got.as_deref() == Some(backend) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reads from Tokio never reached {backend} (last: {got:?})"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// POST load from four client locations until stopped; counts answers.
struct WriteLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl WriteLoad {
    fn start(g: &Geolb) -> WriteLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut tasks = Vec::new();
        for (i, xff) in [IP_TOKYO, IP_FRANKFURT, IP_SINGAPORE, IP_BERLIN]
            .into_iter()
            .enumerate()
        {
            let c = g.client(i % 2 == 1);
            let url = g.url("/orders");
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let req = Request::post(&url)
                        .header("x-forwarded-for", xff)
                        .body(full("{}"))
                        .unwrap();
                    match c.request(req).await {
                        Ok(r) if r.status() == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
        WriteLoad {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Once geolb has seen the old primary's region leave the write path, wait half a second for
/// writes it had already routed to land (a loaded machine can hold one that long), then count the writes that old region's
/// backend received; run `promote`, wait for the new primary and for writes to flow to it;
/// the old region must not have received one more write.
async fn promotion_moves_writes<F: std::future::Future<Output = ()>>(
    g: &Geolb,
    fra: &TestBackend,
    sin: &TestBackend,
    load: WriteLoad,
    promote: F,
) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fra_before = fra.db.writes();
    let sin_before = sin.db.writes();
    let ok_before = load.ok();
    promote.await;
    wait_data(
        g,
        "app",
        "the promoted replica's region to be primary",
        |d| d["primary"] == AP,
    )
    .await;
    let ok = load.ok.clone();
    eventually("writes flow to the new primary's region", || {
        sin.db.writes() >= sin_before + 30 && ok.load(Ordering::Relaxed) >= ok_before + 30
    })
    .await;
    let (_, failed) = load.finish().await;
    assert_eq!(
        fra.db.writes(),
        fra_before,
        "writes reached the old primary's region after geolb saw it leave the write path"
    );
    assert_eq!(failed, 0, "held writes must be served, not failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_primary_lag_while_replay_is_paused_promotion_and_a_killed_primary() {
    let Some(bin) = db::postgres_bin() else {
        return db::skip(
            "postgres probes",
            "PostgreSQL (initdb, postgres, pg_basebackup)",
        );
    };
    let pg = db::PgCluster::start(&bin).await;
    let pw = pg.password_file.display().to_string();
    let data = format!(
        "writes = \"primary\"\nprimary = \"auto\"\nwrite_hold = \"30s\"\nmax_read_lag = \"2s\"\nprobe_interval = \"200ms\"\nprobe_timeout = \"2s\"\n{}",
        databases(
            "postgres",
            &pg.primary.url(),
            &pg.replica.url(),
            &format!("password_file = \"{pw}\"")
        )
    );
    let (mut g, fra, sin) = start_geolb(&data).await;
    let d = wait_data(&g, "app", "eu primary, ap replica fully replayed", |d| {
        d["primary"] == EU && region(d, AP)["role"] == "replica" && lag(d, AP) == Some(0.0)
    })
    .await;
    assert_eq!(region(&d, EU)["source"], "postgres", "{d}");
    assert_eq!(region(&d, AP)["probe"]["ok"], true, "{d}");
    let c = g.client(false);
    reads_reach(&c, &g, "sin-1").await;

    // Replay paused while the primary takes writes: the WAL keeps arriving, replay stands
    // still, the lag grows; reads leave the lagging region.
    let writer = db::Writer::pg(&pg.primary);
    pg.replica.exec("SELECT pg_wal_replay_pause()").await;
    let grown = lag_grows(&g).await;
    reads_reach(&c, &g, "fra-1").await;
    let (_, m) = admin_get(&g, "/metrics").await;
    let gauge = metric(
        &m,
        "geolb_region_replica_lag_seconds{service=\"app\",region=\"ap-southeast\"}",
    );
    assert!(gauge >= 1.0, "lag gauge {gauge} (status said {grown})");
    pg.replica.exec("SELECT pg_wal_replay_resume()").await;
    wait_data(&g, "app", "the lag to fall after replay resumed", |d| {
        lag(d, AP).is_some_and(|l| l < 1.0)
    })
    .await;
    reads_reach(&c, &g, "sin-1").await;
    assert!(writer.finish().await > 10);

    // The primary crashes under write load: its region leaves the write path within a probe
    // interval or two (writes are held), then the replica is promoted and writes follow.
    let load = WriteLoad::start(&g);
    let ok = load.ok.clone();
    eventually("writes flow", || ok.load(Ordering::Relaxed) >= 30).await;
    let mut primary = pg.primary;
    let killed = Instant::now();
    primary.process.stop();
    let d = wait_data(
        &g,
        "app",
        "the killed primary's region to be ineligible",
        |d| region(d, EU)["probe"]["ok"] == false && d["primary"].is_null(),
    )
    .await;
    let took = killed.elapsed();
    eprintln!("postgres: killed primary left the write path after {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "took {took:?} with a 200ms interval"
    );
    let reason = region(&d, EU)["probe"]["error"].clone();
    assert!(
        reason == "connect" || reason == "protocol",
        "a dead server is a connect (or broken connection) failure: {d}"
    );
    let replica = &pg.replica;
    promotion_moves_writes(&g, &fra, &sin, load, async {
        replica.exec("SELECT pg_promote(true, 60)").await;
    })
    .await;
    let d = service_data(&g, "app").await;
    assert_eq!(region(&d, AP)["role"], "primary", "{d}");
    assert_eq!(region(&d, EU)["probe"]["error"], "connect", "{d}");
    let (_, m) = admin_get(&g, "/metrics").await;
    assert!(
        metric(
            &m,
            "geolb_db_probe_errors_total{service=\"app\",region=\"eu-central\",reason=\"connect\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "geolb_db_probe_seconds_count{service=\"app\",region=\"ap-southeast\"}"
        ) >= 5.0
    );
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_primary_stopped_replication_heartbeat_lag_and_promotion() {
    let Some((server, install)) = db::mariadb_bin() else {
        return db::skip("mariadb probes", "MariaDB (mariadbd, mariadb-install-db)");
    };
    let my = db::MyCluster::start(&server, &install).await;
    let pw = my.password_file.display().to_string();
    let data = |extra: &str| {
        format!(
            "writes = \"primary\"\nprimary = \"auto\"\nwrite_hold = \"30s\"\nmax_read_lag = \"2s\"\nprobe_interval = \"200ms\"\nprobe_timeout = \"2s\"\n{}",
            databases(
                "mysql",
                &my.primary.url(),
                &my.replica.url(),
                &format!("password_file = \"{pw}\"{extra}")
            )
        )
    };
    let (mut g, fra, sin) = start_geolb(&data("")).await;
    let d = wait_data(&g, "app", "eu primary, ap replica caught up", |d| {
        d["primary"] == EU && region(d, AP)["role"] == "replica" && lag(d, AP) == Some(0.0)
    })
    .await;
    assert_eq!(region(&d, AP)["source"], "mysql", "{d}");
    let c = g.client(false);
    reads_reach(&c, &g, "sin-1").await;

    // The SQL thread stopped: Seconds_Behind_Master is NULL, which is infinitely behind.
    my.replica.exec("STOP SLAVE SQL_THREAD").await;
    wait_data(
        &g,
        "app",
        "stopped replication to show unbounded lag",
        |d| region(d, AP)["lag_unbounded"] == true && region(d, AP)["role"] == "replica",
    )
    .await;
    reads_reach(&c, &g, "fra-1").await;
    let (_, m) = admin_get(&g, "/metrics").await;
    let gauge = metric(
        &m,
        "geolb_region_replica_lag_seconds{service=\"app\",region=\"ap-southeast\"}",
    );
    assert_eq!(gauge, f64::INFINITY, "infinitely behind");
    my.replica.exec("START SLAVE SQL_THREAD").await;
    wait_data(&g, "app", "lag back to 0", |d| lag(d, AP) == Some(0.0)).await;
    reads_reach(&c, &g, "sin-1").await;

    // With a heartbeat table (a reload restarts the probes): lag = now − the last heartbeat
    // the replica applied, which grows while the SQL thread is stopped and writes go on.
    write_atomic(
        &g.config,
        &format!(
            "{}\n{}",
            base_config(g.dir.path()),
            app_config(&fra, &sin, &data(", heartbeat_table = \"app.heartbeat\""))
        ),
    );
    wait_data(&g, "app", "the reload to configure the heartbeat", |d| {
        region(d, AP)["probe"]["heartbeat_table"] == "app.heartbeat"
    })
    .await;
    let writer = db::Writer::mariadb(&my.primary);
    wait_data(&g, "app", "heartbeat lag below 1s", |d| {
        lag(d, AP).is_some_and(|l| l < 1.0)
    })
    .await;
    my.replica.exec("STOP SLAVE SQL_THREAD").await;
    lag_grows(&g).await;
    my.replica.exec("START SLAVE SQL_THREAD").await;
    wait_data(&g, "app", "heartbeat lag to fall", |d| {
        lag(d, AP).is_some_and(|l| l < 1.0)
    })
    .await;
    assert!(writer.finish().await > 10);

    // Switchover under write load: the old primary is made read-only first (geolb sees a
    // replica: no primary, writes held), then the replica is detached and made writable.
    let load = WriteLoad::start(&g);
    let ok = load.ok.clone();
    eventually("writes flow", || ok.load(Ordering::Relaxed) >= 30).await;
    my.primary.exec("SET GLOBAL read_only = 1").await;
    wait_data(&g, "app", "the demoted primary to read as a replica", |d| {
        region(d, EU)["role"] == "replica" && d["primary"].is_null()
    })
    .await;
    let replica = &my.replica;
    promotion_moves_writes(&g, &fra, &sin, load, async {
        replica.exec("STOP SLAVE; SET GLOBAL read_only = 0").await;
    })
    .await;

    // The old primary is killed: its region's probe fails within a couple of intervals.
    let mut old = my.primary;
    let killed = Instant::now();
    old.process.kill();
    let d = wait_data(&g, "app", "the killed server's probe to fail", |d| {
        region(d, EU)["probe"]["ok"] == false
    })
    .await;
    eprintln!(
        "mariadb: killed server's probe failed after {:?}",
        killed.elapsed()
    );
    assert!(killed.elapsed() < Duration::from_secs(10));
    assert_eq!(d["primary"], AP, "{d}");
    g.shutdown().await;
}

/// A TCP listener that accepts connections and never says or reads anything.
async fn silent_listener() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_failures_name_their_reason_and_never_hang() {
    let Some(bin) = db::postgres_bin() else {
        return db::skip(
            "probe failure reasons",
            "PostgreSQL (initdb, postgres, pg_basebackup)",
        );
    };
    let pg = db::PgCluster::start(&bin).await;
    let wrong = pg.dir.path().join("wrong-password");
    std::fs::write(&wrong, "definitely-not-the-password-93kq\n").unwrap();
    let certs = TestCerts::generate(pg.dir.path());
    pg.primary
        .enable_ssl(&certs.dir.join("a.pem"), &certs.dir.join("a.key"))
        .await;
    let (silent, silent_task) = silent_listener().await;
    let closed = db::free_port();
    let fra = TestBackend::spawn("fra-1", EU).await;
    let sin = TestBackend::spawn("sin-1", AP).await;
    let probe = "probe_interval = \"200ms\"\nprobe_timeout = \"500ms\"";
    let tls_dbs = format!(
        "databases = [\n  {{ region = \"{EU}\", postgres = \"{url}\", password_file = \"{pw}\", tls = true, ca_file = \"{ca}\" }},\n  {{ region = \"{AP}\", postgres = \"{url}\", password_file = \"{pw}\", tls = true }},\n]\n",
        url = pg.primary.url(),
        pw = pg.password_file.display(),
        ca = certs.dir.join("ca.pem").display(),
    );
    let cfg = format!(
        "{}\n[services.creds.data]\n{probe}\n{}\n{}\n[services.peers.data]\n{probe}\nunreachable = \"ineligible\"\n{}\n{}\n[services.tls.data]\n{probe}\n{}\n[[routes]]\nservice = \"creds\"\n",
        service_toml("creds", &[&fra, &sin], ""),
        databases(
            "postgres",
            &pg.primary.url(),
            &format!("postgres://geolb@{silent}/app"),
            &format!("password_file = \"{}\"", wrong.display())
        ),
        service_toml("peers", &[&fra, &sin], ""),
        databases(
            "postgres",
            &format!("postgres://geolb@{}/app", fra.addr),
            &format!("postgres://geolb@127.0.0.1:{closed}/app"),
            "",
        ),
        service_toml("tls", &[&fra, &sin], ""),
        tls_dbs,
    );
    let mut g = Geolb::start(&cfg).await;
    let reason = |d: &Value, r: &str| region(d, r)["probe"]["error"].as_str().map(str::to_owned);
    let d = wait_data(&g, "creds", "auth and timeout failures", |d| {
        reason(d, EU).is_some() && reason(d, AP).is_some()
    })
    .await;
    assert_eq!(reason(&d, EU).as_deref(), Some("auth"), "{d:#}");
    let msg = region(&d, EU)["probe"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(msg.contains("password authentication failed"), "{msg}");
    assert_eq!(reason(&d, AP).as_deref(), Some("timeout"), "{d:#}");
    assert!(
        d["primary"].is_null(),
        "no reachable database, no primary: {d}"
    );
    let d = wait_data(&g, "peers", "not-a-database and connect failures", |d| {
        reason(d, EU).is_some() && reason(d, AP).is_some()
    })
    .await;
    assert_eq!(reason(&d, EU).as_deref(), Some("not_database"), "{d:#}");
    assert_eq!(reason(&d, AP).as_deref(), Some("connect"), "{d:#}");

    // TLS: verified against the configured CA it works; against the system's roots the
    // test CA is unknown, and the handshake fails as a connect error that says why.
    let d = wait_data(&g, "tls", "a TLS probe to succeed and one to fail", |d| {
        region(d, EU)["probe"]["ok"] == true && reason(d, AP).is_some()
    })
    .await;
    assert_eq!(d["primary"], EU, "{d:#}");
    assert_eq!(region(&d, EU)["probe"]["tls"], true, "{d:#}");
    assert_eq!(reason(&d, AP).as_deref(), Some("connect"), "{d:#}");
    let msg = region(&d, AP)["probe"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(msg.contains("TLS") || msg.contains("certificate"), "{msg}");

    // The loops go on: the silent listener times out again and again (nothing hangs).
    let count = |m: &str, svc: &str, r: &str, why: &str| {
        metric(
            m,
            &format!(
                "geolb_db_probe_errors_total{{service=\"{svc}\",region=\"{r}\",reason=\"{why}\"}}"
            ),
        )
    };
    let (_, m) = admin_get(&g, "/metrics").await;
    let first = count(&m, "creds", AP, "timeout");
    assert!(first >= 1.0, "{m}");
    assert!(count(&m, "creds", EU, "auth") >= 1.0, "{m}");
    assert!(count(&m, "peers", EU, "not_database") >= 1.0, "{m}");
    assert!(count(&m, "peers", AP, "connect") >= 1.0, "{m}");
    // Every reason's counter exists from the start.
    assert!(
        m.contains("geolb_db_probe_errors_total{service=\"creds\",region=\"eu-central\",reason=\"query\"} 0"),
        "{m}"
    );
    let deadline = tokio::time::Instant::now() + db::DB_WAIT;
    loop {
        let (_, m) = admin_get(&g, "/metrics").await;
        if count(&m, "creds", AP, "timeout") >= first + 2.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the probe of a silent server stopped probing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, text) = admin_get(&g, "/explain?ip=203.0.113.5&host=localhost&path=/").await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["data"]["regions"][0]["source"], "postgres", "{v:#}");
    assert_eq!(v["data"]["regions"][0]["probe"]["error"], "auth", "{v:#}");

    // No password anywhere an operator looks.
    for path in [
        "/status",
        "/config",
        "/metrics",
        "/explain?ip=203.0.113.5&host=localhost&path=/",
    ] {
        let (_, text) = admin_get(&g, path).await;
        for secret in [db::PG_PASSWORD, "definitely-not-the-password-93kq"] {
            assert!(!text.contains(secret), "{path} shows a password");
        }
    }
    let started = Instant::now();
    g.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "shutdown waited on a probe: {:?}",
        started.elapsed()
    );
    silent_task.abort();
}

#[test]
fn database_config_errors_name_the_field_and_never_echo_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let base = "routes = [{ service = \"app\" }]\n[listeners]\nhttp = { address = \"127.0.0.1:0\" }\nadmin = \"off\"\n\n\
        [regions.eu]\nlocation = [50.1, 8.7]\n[regions.ap]\nlocation = [1.3, 103.8]\n\n\
        [services.app]\nbackends = [{ region = \"eu\", address = \"10.0.0.1:80\" }, { region = \"ap\", address = \"10.0.1.1:80\" }]\n\n\
        [services.app.data]\n";
    let cases: &[(&str, &str, &str)] = &[
        (
            "databases = [{ region = \"us\", postgres = \"postgres://geolb@db/app\" }]",
            "services.app.data.databases[0].region",
            "`us` is not a region of this service (its backends are in: eu, ap)",
        ),
        (
            "databases = [{ region = \"eu\", postgres = \"postgres://geolb@db/app\", mysql = \"mysql://geolb@db/app\" }]",
            "services.app.data.databases[0]",
            "not both",
        ),
        (
            "databases = [{ region = \"eu\" }]",
            "services.app.data.databases[0]",
            "needs `postgres",
        ),
        (
            "databases = [{ region = \"eu\", postgres = \"postgres://geolb:hunter2@db/app\" }]",
            "services.app.data.databases[0].postgres",
            "use `password_file` or `password_env`",
        ),
        (
            "databases = [{ region = \"eu\", mysql = \"mysql://geolb@db/app?password=hunter2\" }]",
            "services.app.data.databases[0].mysql",
            "contains a password",
        ),
        (
            "databases = [{ region = \"eu\", postgres = \"mysql://geolb@db/app\" }]",
            "services.app.data.databases[0].postgres",
            "is not a URL of the form postgres://",
        ),
        (
            "databases = [{ region = \"eu\", postgres = \"postgres://geolb@db/app\", password_file = \"missing-pw\" }]",
            "services.app.data.databases[0].password_file",
            "cannot read",
        ),
        (
            "databases = [{ region = \"eu\", mysql = \"mysql://geolb@db/app\", password_env = \"GEOLB_TEST_UNSET_PW_VAR\" }]",
            "services.app.data.databases[0].password_env",
            "GEOLB_TEST_UNSET_PW_VAR is not set",
        ),
        (
            "probe_interval = \"1\"\ndatabases = [{ region = \"eu\", postgres = \"postgres://geolb@db/app\" }]",
            "services.app.data.probe_interval",
            "needs a unit",
        ),
        (
            "databases = [{ region = \"eu\", postgres = \"postgres://geolb@db/app\", probe_timeout = \"0s\" }]",
            "services.app.data.databases[0].probe_timeout",
            "must be more than 0",
        ),
        (
            "databases = [{ region = \"eu\", postgres = \"postgres://geolb@db/app\" }, { region = \"eu\", postgres = \"postgres://geolb@db2/app\" }]",
            "services.app.data.databases[1].region",
            "already has a database",
        ),
        (
            "databases = [{ region = \"eu\", postgres = \"postgres://geolb@db/app\", heartbeat_table = \"hb; DROP TABLE x\" }]",
            "services.app.data.databases[0].heartbeat_table",
            "is not `table` or `schema.table`",
        ),
        (
            "unreachable = \"sometimes\"\ndatabases = [{ region = \"eu\", postgres = \"postgres://geolb@db/app\" }]",
            "services.app.data.unreachable",
            "unknown variant `sometimes`",
        ),
    ];
    let health = geolb::health::HealthRegistry::default();
    let pool = geolb::UpstreamPool::default();
    let ctx = geolb::config::CompileCtx {
        health: &health,
        pool: &pool,
    };
    let file = dir.path().join("routes.toml");
    for (fragment, path, message) in cases {
        let text = format!("{base}{fragment}\n");
        let errs = match geolb::config::compile_str(&text, &file, &ctx) {
            Ok(_) => panic!("accepted: {fragment}"),
            Err(e) => e,
        };
        let shown = errs.to_string();
        assert!(
            errs.0
                .iter()
                .any(|e| e.path == *path && e.message.contains(message)),
            "{fragment}\nwant {path}: {message}\ngot:\n{shown}"
        );
        assert!(
            !shown.contains("hunter2"),
            "an error echoes the password:\n{shown}"
        );
    }
    // A valid one compiles, and its view (for /config and check --diff) holds no password.
    let ok = format!(
        "{base}unreachable = \"ineligible\"\ndatabases = [{{ region = \"eu\", postgres = \"postgres://geolb@db:5432/app\", password_file = \"{}\", tls = true, heartbeat_table = \"public.heartbeat\" }}, {{ region = \"ap\", mysql = \"mysql://geolb@db2:3306/app\" }}]\n",
        pw.display()
    );
    let compiled = geolb::config::compile_str(&ok, &file, &ctx).unwrap_or_else(|e| panic!("{e}"));
    let view = geolb::config::diff::ConfigView::of(&compiled.table);
    let json = serde_json::to_string(&view).unwrap();
    assert!(!json.contains("s3cret"), "{json}");
    assert_eq!(
        view.databases["app/eu"],
        "postgres://geolb@db:5432/app tls heartbeat public.heartbeat"
    );
}
