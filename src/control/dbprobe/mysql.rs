//! The MySQL / MariaDB probe (`mysql_async`, TLS by rustls).
//!
//! Role: `read_only` is the fence, as in ProxySQL's replication hostgroups and orchestrator:
//! a server with `@@global.read_only = 0` (and `super_read_only = 0`, which MariaDB does not
//! have) takes the application's writes, so it is the primary — even if it also replicates
//! from somewhere (an active node of a dual-primary pair). A writable server that replicates
//! from another writable one shows as a second primary: geolb then holds writes (split
//! brain) instead of guessing. A read-only server is a replica.
//!
//! Lag on a replica: `Seconds_Behind_Source` (`SHOW REPLICA STATUS`, MySQL 8.0.22+ and
//! MariaDB 10.5+; `Seconds_Behind_Master` from `SHOW SLAVE STATUS` on older servers); NULL
//! (a replication thread stopped or broken), or a read-only server with no replication
//! configured, is unbounded lag. With `heartbeat_table`, `NOW(6) − MAX(ts)` in UTC instead.

use std::io::ErrorKind;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{DriverError, Error, IoError, Opts, OptsBuilder, Row, SslOpts};

use super::{Failure, Phase, Reading};
use crate::health::db::{DbRole, LAG_UNBOUNDED_MS, ProbeError};
use crate::health::dbspec::DbEndpoint;

/// Unknown system variable (MariaDB has no `super_read_only`).
const ER_UNKNOWN_SYSTEM_VARIABLE: u16 = 1193;
/// Syntax error (`SHOW REPLICA STATUS` before MySQL 8.0.22 / MariaDB 10.5).
const ER_PARSE_ERROR: u16 = 1064;
/// Access denied for user / to database / plugin errors at login.
const AUTH_ERRORS: [u16; 5] = [1044, 1045, 1698, 1251, 1862];

/// A connection and what it learned about the server's dialect.
pub(super) struct MyConn {
    conn: mysql_async::Conn,
    /// The server has no `super_read_only` (MariaDB).
    no_super_read_only: bool,
    /// The server has no `SHOW REPLICA STATUS`.
    legacy_status: bool,
}

/// Connect (TCP, TLS when configured, authentication) within the endpoint's timeout.
pub(super) async fn connect(ep: &DbEndpoint) -> Result<MyConn, Failure> {
    let opts = Opts::from_url(&ep.url)
        .map_err(|e| Failure::new(ProbeError::Connect, format!("invalid URL: {e}")))?;
    let mut b = OptsBuilder::from_opts(opts)
        // Never switch to a local socket behind our back: the configured address is probed.
        .prefer_socket(false)
        .stmt_cache_size(0)
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .init(vec!["SET time_zone = '+00:00'"]);
    if let Some(p) = &ep.password {
        b = b.pass(Some(p.expose()));
    }
    if let Some(ca) = &ep.tls {
        let mut ssl = SslOpts::default();
        if let Some(ca) = ca {
            ssl = ssl.with_root_certs(vec![ca.clone().into()]);
        }
        b = b.ssl_opts(Some(ssl));
    }
    // On error or timeout the half-open `Conn` is dropped; mysql_async then sends COM_QUIT
    // from a short task of its own (no pending result, so it cannot wait on the server).
    match tokio::time::timeout(ep.timeout, mysql_async::Conn::new(b)).await {
        Ok(Ok(conn)) => Ok(MyConn {
            conn,
            no_super_read_only: false,
            legacy_status: false,
        }),
        Ok(Err(e)) => Err(classify(&e, Phase::Connect)),
        Err(_) => Err(Failure::timeout("connect", ep.timeout)),
    }
}

impl MyConn {
    /// Close politely within `timeout` (`disconnect` marks the connection closed before it
    /// writes, so dropping it on timeout spawns nothing).
    pub(super) async fn close(self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.conn.disconnect()).await;
    }

    async fn first_row(&mut self, sql: &str, t: Duration) -> Result<Option<Row>, Error> {
        match tokio::time::timeout(t, self.conn.query_first::<Row, _>(sql)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Io(IoError::Io(std::io::Error::new(
                ErrorKind::TimedOut,
                format!("`{sql}` did not finish within {t:?} (probe_timeout)"),
            )))),
        }
    }

    /// `read_only || super_read_only`.
    async fn read_only(&mut self, t: Duration) -> Result<bool, Failure> {
        if !self.no_super_read_only {
            let sql = "SELECT @@global.read_only, @@global.super_read_only";
            match self.first_row(sql, t).await {
                Ok(row) => return Ok(flag(&row, 0)? || flag(&row, 1)?),
                Err(Error::Server(e)) if e.code == ER_UNKNOWN_SYSTEM_VARIABLE => {
                    self.no_super_read_only = true;
                }
                Err(e) => return Err(classify(&e, Phase::Query)),
            }
        }
        let row = self
            .first_row("SELECT @@global.read_only", t)
            .await
            .map_err(|e| classify(&e, Phase::Query))?;
        flag(&row, 0)
    }

    /// The replica status row (`None` when no replication is configured).
    async fn replica_status(&mut self, t: Duration) -> Result<Option<Row>, Failure> {
        if !self.legacy_status {
            match self.first_row("SHOW REPLICA STATUS", t).await {
                Ok(row) => return Ok(row),
                Err(Error::Server(e)) if e.code == ER_PARSE_ERROR => self.legacy_status = true,
                Err(e) => return Err(classify(&e, Phase::Query)),
            }
        }
        self.first_row("SHOW SLAVE STATUS", t)
            .await
            .map_err(|e| classify(&e, Phase::Query))
    }

    /// Role, then (on a replica) lag.
    pub(super) async fn read(&mut self, ep: &DbEndpoint) -> Result<Reading, Failure> {
        let t = ep.timeout;
        if !self.read_only(t).await? {
            return Ok(Reading {
                role: DbRole::Primary,
                lag_ms: Some(0),
            });
        }
        let lag_ms = match &ep.heartbeat_table {
            Some(table) => {
                let sql =
                    format!("SELECT TIMESTAMPDIFF(MICROSECOND, MAX(ts), NOW(6)) FROM {table}");
                let row = self
                    .first_row(&sql, t)
                    .await
                    .map_err(|e| classify(&e, Phase::Query))?;
                let us = row.and_then(|r| r.get_opt::<Option<i64>, _>(0)?.ok().flatten());
                us.map_or(LAG_UNBOUNDED_MS, |us| (us.max(0) as u64).div_ceil(1000))
            }
            None => match self.replica_status(t).await? {
                Some(row) => seconds_behind(&row).map_or(LAG_UNBOUNDED_MS, |s| s * 1000),
                // Read-only and not replicating: its data is frozen.
                None => LAG_UNBOUNDED_MS,
            },
        };
        Ok(Reading {
            role: DbRole::Replica,
            lag_ms: Some(lag_ms),
        })
    }
}

/// A 0/1 system variable from column `i`.
fn flag(row: &Option<Row>, i: usize) -> Result<bool, Failure> {
    let v = row
        .as_ref()
        .and_then(|r| r.get_opt::<Option<i64>, _>(i))
        .and_then(Result::ok)
        .flatten();
    v.map(|v| v != 0).ok_or_else(|| {
        Failure::new(
            ProbeError::Protocol,
            "read_only did not read as 0 or 1 (not a MySQL server?)",
        )
    })
}

/// `Seconds_Behind_Source` (MySQL 8.0.22+ `SHOW REPLICA STATUS`) or `Seconds_Behind_Master`;
/// `None` when NULL (replication stopped or broken) or absent.
fn seconds_behind(row: &Row) -> Option<u64> {
    ["Seconds_Behind_Source", "Seconds_Behind_Master"]
        .iter()
        .find_map(|c| row.get_opt::<Option<u64>, _>(*c))
        .and_then(Result::ok)
        .flatten()
}

/// Sort a driver error into a reason, with a message for operators.
fn classify(e: &Error, phase: Phase) -> Failure {
    let connecting = phase == Phase::Connect;
    let why = match e {
        Error::Server(s) if AUTH_ERRORS.contains(&s.code) => ProbeError::Auth,
        Error::Server(_) if connecting => ProbeError::Connect,
        Error::Server(_) => ProbeError::Query,
        Error::Io(IoError::Io(io)) => match io.kind() {
            ErrorKind::TimedOut => ProbeError::Timeout,
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe => ProbeError::Protocol,
            _ if connecting => ProbeError::Connect,
            _ => ProbeError::Protocol,
        },
        Error::Io(IoError::Tls(_)) | Error::Url(_) => ProbeError::Connect,
        Error::Driver(DriverError::ConnectionClosed) => ProbeError::Protocol,
        Error::Driver(_) if connecting => ProbeError::NotDatabase,
        Error::Driver(_) | Error::Other(_) => ProbeError::Protocol,
    };
    let message = match (why, e) {
        (ProbeError::NotDatabase, e) => {
            format!("{e} (the peer does not speak the MySQL protocol)")
        }
        (_, Error::Server(s)) => format!("ERROR {} ({}): {}", s.code, s.state, s.message),
        (_, e) => e.to_string(),
    };
    Failure::new(why, message)
}
