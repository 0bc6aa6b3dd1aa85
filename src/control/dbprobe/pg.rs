//! The PostgreSQL probe (`tokio-postgres`, TLS by rustls).
//!
//! Role: `pg_is_in_recovery()`. Lag on a replica: 0 when everything received has been
//! replayed *and* the WAL receiver is streaming (an idle primary sends no transactions, so
//! `pg_last_xact_replay_timestamp()` alone would show a growing lag); otherwise
//! `now() − pg_last_xact_replay_timestamp()`, which grows while replay is paused or behind
//! and while the receiver is disconnected. With `heartbeat_table`, `now() − max(ts)`
//! instead. `pg_monitor` is enough for all of it.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_postgres::config::SslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage, Socket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Failure, Phase, Reading, secs_to_lag_ms};
use crate::health::db::{DbRole, LAG_UNBOUNDED_MS, ProbeError};
use crate::health::dbspec::DbEndpoint;

/// Role, "everything received is replayed while streaming", seconds since the last replayed
/// transaction.
const ROLE_SQL: &str = "SELECT pg_is_in_recovery(), \
     (pg_last_wal_receive_lsn() IS NOT NULL \
      AND pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() \
      AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')), \
     EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8";

/// A connection: the client, and the token that ends its connection task.
pub(super) struct PgConn {
    client: Client,
    stop: CancellationToken,
    /// `ROLE_SQL`, plus the heartbeat query when configured.
    sql: String,
}

impl Drop for PgConn {
    fn drop(&mut self) {
        // The connection task sends Terminate once the client is gone; the token is the
        // backstop for a server that stopped answering (see `spawn_connection`).
        self.stop.cancel();
    }
}

/// Connect (TCP, TLS when configured, authentication) within the endpoint's timeout.
pub(super) async fn connect(
    ep: &DbEndpoint,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<PgConn, Failure> {
    let mut cfg: tokio_postgres::Config = ep
        .url
        .parse()
        .map_err(|e| Failure::new(ProbeError::Connect, format!("invalid URL: {e}")))?;
    if let Some(p) = &ep.password {
        cfg.password(p.expose());
    }
    cfg.application_name("geolb-probe")
        .connect_timeout(ep.timeout)
        .options("-c TimeZone=UTC");
    let stop = cancel.child_token();
    let opening = async {
        match &ep.tls {
            None => {
                cfg.ssl_mode(SslMode::Disable);
                open(&cfg, NoTls, tasks, &stop).await
            }
            Some(ca) => {
                cfg.ssl_mode(SslMode::Require);
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_tls(ca.as_ref())?);
                open(&cfg, tls, tasks, &stop).await
            }
        }
    };
    let client = match tokio::time::timeout(ep.timeout, opening).await {
        Ok(r) => r.inspect_err(|_| stop.cancel())?,
        Err(_) => {
            stop.cancel();
            return Err(Failure::timeout("connect", ep.timeout));
        }
    };
    let mut sql = ROLE_SQL.to_owned();
    if let Some(t) = &ep.heartbeat_table {
        sql.push_str(&format!(
            "; SELECT EXTRACT(EPOCH FROM clock_timestamp() - max(ts))::float8 FROM {t}"
        ));
    }
    Ok(PgConn { client, stop, sql })
}

async fn open<T>(
    cfg: &tokio_postgres::Config,
    tls: T,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Result<Client, Failure>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = cfg
        .connect(tls)
        .await
        .map_err(|e| classify(&e, Phase::Connect))?;
    let stop = stop.clone();
    tasks.spawn(async move {
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            _ = &mut connection => {}
            _ = stop.cancelled() => {
                // Give a live server a moment to receive Terminate, then drop the socket.
                let grace = std::time::Duration::from_millis(500);
                let _ = tokio::time::timeout(grace, connection).await;
            }
        }
    });
    Ok(client)
}

/// Roots for `tls = true`: the configured CA bundle, else the system's trust store (the
/// bundled Mozilla roots when it has none).
fn client_tls(ca: Option<&PathBuf>) -> Result<rustls::ClientConfig, Failure> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = crate::tls::load_certs(path)
                .map_err(|e| Failure::new(ProbeError::Connect, e.to_string()))?;
            for c in certs {
                roots.add(c).map_err(|e| {
                    Failure::new(ProbeError::Connect, format!("{}: {e}", path.display()))
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Failure::new(ProbeError::Connect, e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

impl PgConn {
    /// One round trip: role and lag (and the heartbeat when configured).
    pub(super) async fn read(&mut self, ep: &DbEndpoint) -> Result<Reading, Failure> {
        let msgs = tokio::time::timeout(ep.timeout, self.client.simple_query(&self.sql))
            .await
            .map_err(|_| Failure::timeout("the role and lag query", ep.timeout))?
            .map_err(|e| classify(&e, Phase::Query))?;
        let mut rows = msgs.iter().filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        });
        let bad = || Failure::new(ProbeError::Protocol, "the role query returned no row");
        let role = rows.next().ok_or_else(bad)?;
        if role.get(0) != Some("t") {
            return Ok(Reading {
                role: DbRole::Primary,
                lag_ms: Some(0),
            });
        }
        let secs = |v: Option<&str>| v.and_then(|s| s.parse::<f64>().ok());
        let lag_ms = if ep.heartbeat_table.is_some() {
            let hb = rows.next().ok_or_else(|| {
                Failure::new(ProbeError::Query, "the heartbeat query returned no row")
            })?;
            secs(hb.get(0)).map_or(LAG_UNBOUNDED_MS, secs_to_lag_ms)
        } else if role.get(1) == Some("t") {
            0
        } else {
            secs(role.get(2)).map_or(LAG_UNBOUNDED_MS, secs_to_lag_ms)
        };
        Ok(Reading {
            role: DbRole::Replica,
            lag_ms: Some(lag_ms),
        })
    }
}

/// Sort a driver error into a reason, with a message for operators.
fn classify(e: &tokio_postgres::Error, phase: Phase) -> Failure {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let why = if code.starts_with("28") {
            ProbeError::Auth
        } else if phase == Phase::Connect {
            ProbeError::Connect
        } else {
            ProbeError::Query
        };
        return Failure::new(why, format!("{} {code}: {}", db.severity(), db.message()));
    }
    let kind = e.to_string();
    let source = std::error::Error::source(e).map(ToString::to_string);
    // The peer sent bytes that do not frame as a PostgreSQL message, then closed (an HTTP
    // server answering 400 to the startup packet).
    let garbled = source.as_deref() == Some("bytes remaining on stream");
    let why = match kind.as_str() {
        _ if garbled && phase == Phase::Connect => ProbeError::NotDatabase,
        "error connecting to server" | "error performing TLS handshake" => ProbeError::Connect,
        "authentication error" => ProbeError::Auth,
        "timeout waiting for server" => ProbeError::Timeout,
        "unexpected message from server" | "error parsing response from server"
            if phase == Phase::Connect =>
        {
            ProbeError::NotDatabase
        }
        _ => ProbeError::Protocol,
    };
    let message = match source {
        Some(src) if why == ProbeError::NotDatabase => {
            format!("{kind}: {src} (the peer does not speak the PostgreSQL protocol)")
        }
        Some(src) => format!("{kind}: {src}"),
        None if why == ProbeError::NotDatabase => {
            format!("{kind}: the peer does not speak the PostgreSQL protocol")
        }
        None => kind,
    };
    Failure::new(why, message)
}
