//! Real database servers for integration tests: a PostgreSQL primary with a streaming replica
//! (`initdb`, `pg_basebackup -R`) and a MariaDB primary with a replica (`CHANGE MASTER TO`),
//! each in a temp dir on free loopback ports, started as `nobody` when the server refuses
//! root, and stopped (processes killed, files removed) when the guard drops — also on panic.
//!
//! Include with `#[path = "common/db.rs"] mod db;`. Tests call `postgres_bin()` /
//! `mariadb_bin()` first and skip (loudly) when the server binaries are absent.
#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Deadline for a server to start or a replica to catch up (loaded 2-core CI machines).
pub const DB_WAIT: Duration = Duration::from_secs(90);

/// A free port on 127.0.0.1 (bound, then closed).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The PostgreSQL server binaries' directory (`$PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` with initdb, postgres and pg_basebackup).
pub fn postgres_bin() -> Option<PathBuf> {
    let ok = |d: &Path| {
        ["initdb", "postgres", "pg_basebackup"]
            .iter()
            .all(|b| d.join(b).is_file())
    };
    if let Some(d) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        return ok(&d).then_some(d);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let d = e.path().join("bin");
            ok(&d).then_some((v, d))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, d)| d)
}

/// MariaDB's server and installer (`mariadbd`, `mariadb-install-db`), when installed.
pub fn mariadb_bin() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str], dirs: &[&str]| {
        dirs.iter()
            .flat_map(|d| names.iter().map(move |n| Path::new(d).join(n)))
            .find(|p| p.is_file())
    };
    let server = find(
        &["mariadbd", "mysqld"],
        &["/usr/sbin", "/usr/bin", "/usr/local/bin"],
    )?;
    let install = find(
        &["mariadb-install-db", "mysql_install_db"],
        &["/usr/bin", "/usr/local/bin", "/usr/sbin"],
    )?;
    Some((server, install))
}

/// Say loudly that a test did not run.
pub fn skip(test: &str, what: &str) {
    eprintln!(
        "\n!!!!!!!! SKIPPED {test}: {what} not installed (CI installs it: see .ci/run) !!!!!!!!\n"
    );
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `nobody`'s uid and gid (PostgreSQL refuses to run as root).
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.first() != Some(&"nobody") || f.len() < 4 {
                return None;
            }
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        })
        .unwrap_or((65534, 65534))
}

/// A command run as `nobody` when we are root, with a harmless environment.
fn as_server_user(program: &Path, home: &Path) -> Command {
    let mut c = Command::new(program);
    c.env("HOME", home)
        .env("LC_ALL", "C")
        .env("LANG", "C")
        .current_dir(home);
    if running_as_root() {
        let (uid, gid) = nobody();
        c.uid(uid).gid(gid);
    }
    c
}

/// Give a path to the server user (when we are root).
fn chown_to_server_user(p: &Path) {
    if running_as_root() {
        let (uid, gid) = nobody();
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    }
}

/// Run a setup command to completion; panics with its output on failure.
async fn run(mut cmd: Command, what: &str) {
    cmd.stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running server process; killed when dropped.
pub struct ServerProcess {
    child: Option<Child>,
    /// Signal for a fast stop (`QUIT` = PostgreSQL immediate shutdown, `KILL` for MariaDB).
    stop_signal: &'static str,
    pub log: PathBuf,
    pub name: String,
}

impl ServerProcess {
    fn spawn(mut cmd: Command, log: PathBuf, name: &str, stop_signal: &'static str) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        chown_to_server_user(&log);
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        ServerProcess {
            child: Some(child),
            stop_signal,
            log,
            name: name.to_owned(),
        }
    }

    /// The server's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Is the process still running?
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kill it now (SIGKILL) and reap it: a crashed database.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop with the fast signal, wait up to 10 s, then SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-s", self.stop_signal, &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(c.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Poll `f` until it returns `Some`, up to `DB_WAIT`; panics with `what` and `log`.
pub async fn poll<T, F, Fut>(what: &str, log: impl Fn() -> String, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DB_WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}\n--- log ---\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// The monitoring user geolb connects as (`pg_monitor`), and its password.
pub const PG_USER: &str = "geolb";
pub const PG_PASSWORD: &str = "pg-probe-secret-1f9a";

/// One PostgreSQL server.
pub struct PgServer {
    pub port: u16,
    pub data: PathBuf,
    pub process: ServerProcess,
}

impl PgServer {
    /// `postgres://geolb@127.0.0.1:PORT/app` (no password: geolb reads it from a file).
    pub fn url(&self) -> String {
        format!("postgres://{PG_USER}@127.0.0.1:{}/app", self.port)
    }

    /// An admin (superuser, trust) connection; its connection task runs until the client drops.
    pub async fn admin(&self) -> tokio_postgres::Client {
        self.try_admin()
            .await
            .unwrap_or_else(|e| panic!("admin connection to {}: {e}", self.process.name))
    }

    pub async fn try_admin(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        self.try_admin_db("app").await
    }

    async fn try_admin_db(
        &self,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("admin")
            .dbname(db)
            .connect_timeout(Duration::from_secs(5))
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Run SQL as admin.
    pub async fn exec(&self, sql: &str) {
        self.admin()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{} `{sql}`: {e:?}", self.process.name));
    }

    /// Turn TLS on (`ssl = on` and a reload) with this certificate and key.
    pub async fn enable_ssl(&self, cert: &Path, key: &Path) {
        for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
            let dest = self.data.join(to);
            std::fs::copy(from, &dest).unwrap();
            std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            chown_to_server_user(&dest);
        }
        let c = self.admin().await;
        for sql in [
            "ALTER SYSTEM SET ssl = on",
            "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
            "ALTER SYSTEM SET ssl_key_file = 'server.key'",
            "SELECT pg_reload_conf()",
        ] {
            c.batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        }
        poll(
            "ssl to be on",
            || self.process.log_tail(),
            || async { (self.query_text("SHOW ssl").await? == "on").then_some(()) },
        )
        .await;
    }

    /// The first column of the first row of `sql`, as text.
    pub async fn query_text(&self, sql: &str) -> Option<String> {
        let c = self.try_admin().await.ok()?;
        let msgs = c.simple_query(sql).await.ok()?;
        msgs.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
    }
}

/// A PostgreSQL primary with a streaming replica, in its own temp dir.
pub struct PgCluster {
    pub primary: PgServer,
    pub replica: PgServer,
    /// `password_file` content for `geolb`.
    pub password_file: PathBuf,
    /// Removed last (after the servers stopped).
    pub dir: tempfile::TempDir,
}

const PG_HBA: &str = "local all all trust
host all admin 127.0.0.1/32 trust
host replication admin 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
";

/// Wait until `ready` succeeds. `false` when the server exited first — its port was taken
/// between `free_port` and its bind — so the caller retries on another port.
async fn wait_ready<F, Fut>(process: &mut ServerProcess, what: &str, mut ready: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DB_WAIT;
    loop {
        if ready().await {
            return true;
        }
        if !process.alive() {
            eprintln!(
                "{what}: the server exited; retrying on another port\n{}",
                process.log_tail()
            );
            return false;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}\n--- log ---\n{}",
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_pg(bin: &Path, base: &Path, data: &Path, name: &str) -> PgServer {
    for _ in 0..3 {
        let port = free_port();
        let mut process = spawn_pg(bin, base, data, name, port);
        let probe = PgServer::addr_only(port);
        let what = format!("{name} to accept connections");
        if wait_ready(&mut process, &what, || async {
            probe.try_admin_db("postgres").await.is_ok()
        })
        .await
        {
            return PgServer {
                port,
                data: data.to_path_buf(),
                process,
            };
        }
    }
    panic!("{name} did not start in 3 attempts");
}

fn spawn_pg(bin: &Path, base: &Path, data: &Path, name: &str, port: u16) -> ServerProcess {
    let mut cmd = as_server_user(&bin.join("postgres"), base);
    cmd.arg("-D").arg(data).args([
        "-c",
        &format!("port={port}"),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "unix_socket_directories=",
        "-c",
        "fsync=off",
        "-c",
        "synchronous_commit=off",
        "-c",
        "full_page_writes=off",
        "-c",
        "wal_receiver_status_interval=1s",
        "-c",
        "max_connections=40",
        "-c",
        "shared_buffers=16MB",
    ]);
    ServerProcess::spawn(cmd, base.join(format!("{name}.log")), name, "QUIT")
}

impl PgCluster {
    /// initdb, start the primary, create the `geolb` monitoring role (`pg_monitor`), the `app`
    /// database with `orders` and `heartbeat` tables, then `pg_basebackup -R` a replica and
    /// wait until it streams.
    pub async fn start(bin: &Path) -> PgCluster {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("pg");
        std::fs::create_dir(&base).unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        chown_to_server_user(&base);
        let pdata = base.join("primary");
        let mut init = as_server_user(&bin.join("initdb"), &base);
        init.arg("-D").arg(&pdata).args([
            "-U",
            "admin",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        run(init, "initdb").await;
        std::fs::write(pdata.join("pg_hba.conf"), PG_HBA).unwrap();
        let primary = start_pg(bin, &base, &pdata, "pg-primary").await;
        let c = primary.try_admin_db("postgres").await.unwrap();
        c.batch_execute(&format!(
            "CREATE ROLE {PG_USER} LOGIN PASSWORD '{PG_PASSWORD}'; GRANT pg_monitor TO {PG_USER};"
        ))
        .await
        .unwrap();
        c.batch_execute("CREATE DATABASE app").await.unwrap();
        primary
            .exec(&format!(
                "CREATE TABLE orders (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
                 CREATE TABLE heartbeat (id int PRIMARY KEY, ts timestamptz NOT NULL);
                 INSERT INTO heartbeat VALUES (1, now());
                 GRANT SELECT ON heartbeat TO {PG_USER};"
            ))
            .await;
        let rdata = base.join("replica");
        let mut bb = as_server_user(&bin.join("pg_basebackup"), &base);
        bb.args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "admin",
            "-D",
        ])
        .arg(&rdata)
        .args(["-R", "-X", "stream", "--checkpoint=fast", "--no-sync"]);
        run(bb, "pg_basebackup").await;
        let replica = start_pg(bin, &base, &rdata, "pg-replica").await;
        poll(
            "the replica to stream from the primary",
            || replica.process.log_tail(),
            || async {
                let s = replica
                    .query_text("SELECT status FROM pg_stat_wal_receiver")
                    .await?;
                (s == "streaming").then_some(())
            },
        )
        .await;
        // One transaction replayed, so pg_last_xact_replay_timestamp() is set (it is NULL
        // until the replica has replayed a commit since it started).
        primary.exec("INSERT INTO orders DEFAULT VALUES").await;
        poll(
            "the replica to replay a transaction",
            || replica.process.log_tail(),
            || async {
                let s = replica
                    .query_text("SELECT pg_last_xact_replay_timestamp() IS NOT NULL")
                    .await?;
                (s == "t").then_some(())
            },
        )
        .await;
        let password_file = dir.path().join("pg-password");
        std::fs::write(&password_file, format!("{PG_PASSWORD}\n")).unwrap();
        PgCluster {
            primary,
            replica,
            password_file,
            dir,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// MariaDB

/// The monitoring user geolb connects as, and its password.
pub const MY_USER: &str = "geolb";
pub const MY_PASSWORD: &str = "my-probe-secret-7c2e";

/// One MariaDB server.
pub struct MyServer {
    pub port: u16,
    pub data: PathBuf,
    pub process: ServerProcess,
}

impl MyServer {
    /// `mysql://geolb@127.0.0.1:PORT/app` (no password: geolb reads it from a file).
    pub fn url(&self) -> String {
        format!("mysql://{MY_USER}@127.0.0.1:{}/app", self.port)
    }

    /// A root connection over the server's unix socket.
    pub async fn try_admin(&self) -> Result<mysql_async::Conn, mysql_async::Error> {
        let opts = mysql_async::OptsBuilder::default()
            .socket(Some(
                self.data.join("mysqld.sock").to_string_lossy().into_owned(),
            ))
            .user(Some("root"))
            .prefer_socket(true);
        let c = tokio::time::timeout(Duration::from_secs(5), mysql_async::Conn::new(opts))
            .await
            .map_err(|_| mysql_async::Error::Other("admin connect timed out".into()))??;
        Ok(c)
    }

    /// Run SQL statements (`;`-separated) as root.
    pub async fn exec(&self, sql: &str) {
        use mysql_async::prelude::Queryable;
        let mut c = self
            .try_admin()
            .await
            .unwrap_or_else(|e| panic!("admin connection to {}: {e}", self.process.name));
        c.query_drop(sql)
            .await
            .unwrap_or_else(|e| panic!("{} `{sql}`: {e}", self.process.name));
        let _ = c.disconnect().await;
    }

    /// The named column of the first row of `sql` (NULL → "NULL").
    pub async fn query_col(&self, sql: &str, col: &str) -> Option<String> {
        use mysql_async::prelude::Queryable;
        let mut c = self.try_admin().await.ok()?;
        let row: Option<mysql_async::Row> = c.query_first(sql).await.ok()?;
        let _ = c.disconnect().await;
        let v: Option<String> = row?.get_opt::<Option<String>, _>(col)?.ok()?;
        Some(v.unwrap_or_else(|| "NULL".into()))
    }
}

/// A MariaDB primary with a replica (`CHANGE MASTER TO …; START SLAVE`), in its own temp dir.
pub struct MyCluster {
    pub primary: MyServer,
    pub replica: MyServer,
    pub password_file: PathBuf,
    pub dir: tempfile::TempDir,
}

async fn start_my(server: &Path, data: &Path, name: &str, id: u32, read_only: bool) -> MyServer {
    for _ in 0..3 {
        let port = free_port();
        let mut process = spawn_my(server, data, name, id, read_only, port);
        let probe = MyServer::socket_only(data.to_path_buf());
        let what = format!("{name} to accept connections");
        let ready = wait_ready(&mut process, &what, || async {
            match probe.try_admin().await {
                Ok(c) => {
                    let _ = c.disconnect().await;
                    true
                }
                Err(_) => false,
            }
        })
        .await;
        if ready {
            return MyServer {
                port,
                data: data.to_path_buf(),
                process,
            };
        }
    }
    panic!("{name} did not start in 3 attempts");
}

fn spawn_my(
    server: &Path,
    data: &Path,
    name: &str,
    id: u32,
    read_only: bool,
    port: u16,
) -> ServerProcess {
    let mut cmd = Command::new(server);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--port={port}"))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--socket={}", data.join("mysqld.sock").display()))
        .arg(format!("--pid-file={}", data.join("mysqld.pid").display()))
        .arg(format!("--server-id={id}"))
        .arg(format!("--log-bin={}", data.join("binlog").display()))
        .arg(format!("--read-only={}", u8::from(read_only)))
        .args([
            "--innodb-buffer-pool-size=16M",
            "--innodb-flush-log-at-trx-commit=2",
            "--sync-binlog=0",
            "--skip-innodb-doublewrite",
            "--performance-schema=OFF",
        ])
        .current_dir(data);
    if running_as_root() {
        cmd.arg("--user=root");
    }
    ServerProcess::spawn(cmd, data.with_extension("log"), name, "KILL")
}

impl MyCluster {
    /// Install one data directory, copy it for the replica, start both, create the `geolb`
    /// user (`REPLICATION CLIENT`, `SLAVE MONITOR`), the `app` schema with `orders` and
    /// `heartbeat`, and replicate (GTID) until the replica has them.
    pub async fn start(server: &Path, install: &Path) -> MyCluster {
        let dir = tempfile::tempdir().unwrap();
        let pdata = dir.path().join("primary");
        let mut init = Command::new(install);
        init.arg("--no-defaults")
            .arg(format!("--datadir={}", pdata.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
        if running_as_root() {
            init.arg("--user=root");
        }
        run(init, "mariadb-install-db").await;
        let rdata = dir.path().join("replica");
        let mut cp = Command::new("cp");
        cp.arg("-a").arg(&pdata).arg(&rdata);
        run(cp, "copy the data directory").await;
        let primary = start_my(server, &pdata, "mariadb-primary", 1, false).await;
        let replica = start_my(server, &rdata, "mariadb-replica", 2, true).await;
        primary
            .exec(&format!(
                "CREATE USER 'repl'@'%' IDENTIFIED BY 'repl';
                 GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';
                 CREATE USER '{MY_USER}'@'%' IDENTIFIED BY '{MY_PASSWORD}';
                 GRANT REPLICATION CLIENT, SLAVE MONITOR ON *.* TO '{MY_USER}'@'%';
                 CREATE DATABASE app;
                 CREATE TABLE app.orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, at DATETIME(6) NOT NULL);
                 CREATE TABLE app.heartbeat (id INT PRIMARY KEY, ts TIMESTAMP(6) NOT NULL);
                 INSERT INTO app.heartbeat VALUES (1, NOW(6));
                 GRANT SELECT ON app.heartbeat TO '{MY_USER}'@'%';"
            ))
            .await;
        replica
            .exec(&format!(
                "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='repl', MASTER_PASSWORD='repl', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1;
                 START SLAVE;",
                primary.port
            ))
            .await;
        poll(
            "the replica to replicate the app schema",
            || replica.process.log_tail(),
            || async {
                replica
                    .query_col("SELECT COUNT(*) AS n FROM app.heartbeat", "n")
                    .await
                    .filter(|n| n == "1")
            },
        )
        .await;
        let password_file = dir.path().join("my-password");
        std::fs::write(&password_file, format!("{MY_PASSWORD}\n")).unwrap();
        MyCluster {
            primary,
            replica,
            password_file,
            dir,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Write traffic

/// A background writer: inserts an order and bumps the heartbeat every 50 ms until dropped.
pub struct Writer {
    stop: tokio_util::sync::CancellationToken,
    task: Option<tokio::task::JoinHandle<u64>>,
}

impl Writer {
    /// Write to a PostgreSQL primary.
    pub fn pg(server: &PgServer) -> Writer {
        let port = server.port;
        Self::spawn(move |stop| async move {
            let s = PgServer::addr_only(port);
            let mut n = 0;
            while !stop.is_cancelled() {
                if let Ok(c) = s.try_admin().await {
                    while !stop.is_cancelled() {
                        let sql =
                            "INSERT INTO orders DEFAULT VALUES; UPDATE heartbeat SET ts = now();";
                        if c.batch_execute(sql).await.is_err() {
                            break;
                        }
                        n += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            n
        })
    }

    /// Write to a MariaDB primary.
    pub fn mariadb(server: &MyServer) -> Writer {
        let data = server.data.clone();
        Self::spawn(move |stop| async move {
            use mysql_async::prelude::Queryable;
            let s = MyServer::socket_only(data);
            let mut n = 0;
            while !stop.is_cancelled() {
                if let Ok(mut c) = s.try_admin().await {
                    while !stop.is_cancelled() {
                        let sql = "INSERT INTO app.orders (at) VALUES (NOW(6)); UPDATE app.heartbeat SET ts = NOW(6);";
                        if c.query_drop(sql).await.is_err() {
                            break;
                        }
                        n += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let _ = c.disconnect().await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            n
        })
    }

    fn spawn<F, Fut>(f: F) -> Writer
    where
        F: FnOnce(tokio_util::sync::CancellationToken) -> Fut,
        Fut: std::future::Future<Output = u64> + Send + 'static,
    {
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(f(stop.clone()));
        Writer {
            stop,
            task: Some(task),
        }
    }

    /// Stop and return how many writes were made.
    pub async fn finish(mut self) -> u64 {
        self.stop.cancel();
        match self.task.take() {
            Some(t) => t.await.unwrap_or(0),
            None => 0,
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl PgServer {
    /// A handle that only knows the port (for background writers); its process guard is
    /// inert.
    fn addr_only(port: u16) -> PgServer {
        PgServer {
            port,
            data: PathBuf::new(),
            process: ServerProcess::inert(),
        }
    }
}

impl MyServer {
    fn socket_only(data: PathBuf) -> MyServer {
        MyServer {
            port: 0,
            data,
            process: ServerProcess::inert(),
        }
    }
}

impl ServerProcess {
    fn inert() -> ServerProcess {
        ServerProcess {
            child: None,
            stop_signal: "KILL",
            log: PathBuf::new(),
            name: "writer".into(),
        }
    }
}
