//! Compiling `[services.NAME.data] databases` (database probes): one endpoint per region,
//! PostgreSQL or MySQL/MariaDB, credentials from a file or the environment — never from the
//! URL, and never echoed in an error.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::compile::Compiler;
use super::data::DataFile;
use crate::health::dbspec::{DbEndpoint, DbKind, DbProbes, Secret, Unreachable};

/// One entry of `databases` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DatabaseFile {
    /// The region whose database this is.
    pub region: String,
    /// `postgres://USER@HOST:PORT/DB` (no password).
    pub postgres: Option<String>,
    /// `mysql://USER@HOST:PORT/DB` (no password).
    pub mysql: Option<String>,
    /// File holding the password (trailing newline ignored).
    pub password_file: Option<String>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// Connect with TLS (rustls).
    #[serde(default)]
    pub tls: bool,
    /// CA bundle (PEM) to trust for `tls` instead of the system's.
    pub ca_file: Option<String>,
    /// pt-heartbeat style table (`table` or `schema.table`) with a `ts` column.
    pub heartbeat_table: Option<String>,
    /// Overrides the service's `probe_interval` for this database.
    pub probe_interval: Option<String>,
    /// Overrides the service's `probe_timeout` for this database.
    pub probe_timeout: Option<String>,
}

/// What an unreachable database makes of its region, as written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum UnreachableFile {
    /// Not eligible for writes (reads may still go there).
    #[default]
    IneligibleForWrites,
    /// Not eligible for writes nor reads.
    Ineligible,
}

const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

impl Compiler<'_, '_> {
    /// Compile `databases` (under path `p`, the data section). `regions` are the service's
    /// region names in service-region order. `None` when no database is configured.
    pub(super) fn db_probes(
        &mut self,
        p: &str,
        d: &DataFile,
        regions: &[&str],
    ) -> Option<DbProbes> {
        if d.databases.is_empty() {
            for (key, set) in [
                ("probe_interval", d.probe_interval.is_some()),
                ("probe_timeout", d.probe_timeout.is_some()),
            ] {
                if set {
                    self.err(
                        &format!("{p}.{key}"),
                        "only used with `databases`: there is no database to probe",
                    );
                }
            }
            return None;
        }
        let mut out: Vec<Option<Arc<DbEndpoint>>> = vec![None; regions.len()];
        for (i, db) in d.databases.iter().enumerate() {
            let path = format!("{p}.databases[{i}]");
            let Some(sr) = regions.iter().position(|r| *r == db.region) else {
                self.err(
                    &format!("{path}.region"),
                    format!(
                        "`{}` is not a region of this service (its backends are in: {})",
                        db.region,
                        regions.join(", ")
                    ),
                );
                continue;
            };
            if out[sr].is_some() {
                self.err(
                    &format!("{path}.region"),
                    format!(
                        "region `{}` already has a database: one per region",
                        db.region
                    ),
                );
                continue;
            }
            if let Some(ep) = self.db_endpoint(&path, p, d, db) {
                out[sr] = Some(Arc::new(ep));
            }
        }
        Some(DbProbes {
            unreachable: match d.unreachable {
                UnreachableFile::IneligibleForWrites => Unreachable::IneligibleForWrites,
                UnreachableFile::Ineligible => Unreachable::Ineligible,
            },
            regions: out.into(),
        })
    }

    fn db_endpoint(
        &mut self,
        path: &str,
        p: &str,
        d: &DataFile,
        db: &DatabaseFile,
    ) -> Option<DbEndpoint> {
        let (kind, key, url) = match (&db.postgres, &db.mysql) {
            (Some(u), None) => (DbKind::Postgres, "postgres", u),
            (None, Some(u)) => (DbKind::Mysql, "mysql", u),
            (Some(_), Some(_)) => {
                self.err(path, "set one of `postgres` or `mysql`, not both");
                return None;
            }
            (None, None) => {
                self.err(
                    path,
                    "needs `postgres = \"postgres://USER@HOST:PORT/DB\"` or `mysql = \"mysql://USER@HOST:PORT/DB\"`",
                );
                return None;
            }
        };
        let url_ok = self.db_url(&format!("{path}.{key}"), kind, url);
        let password = self.db_password(path, db);
        let tls = self.db_tls(path, db);
        let heartbeat_ok = self.heartbeat_table(path, db);
        let interval = self.probe_duration(
            path,
            p,
            "probe_interval",
            &db.probe_interval,
            &d.probe_interval,
            DEFAULT_INTERVAL,
        );
        let timeout = self.probe_duration(
            path,
            p,
            "probe_timeout",
            &db.probe_timeout,
            &d.probe_timeout,
            DEFAULT_TIMEOUT,
        );
        if !url_ok || !heartbeat_ok {
            return None;
        }
        Some(DbEndpoint {
            kind,
            url: url.as_str().into(),
            password: password?,
            tls: tls?,
            heartbeat_table: db.heartbeat_table.as_deref().map(Into::into),
            interval,
            timeout,
        })
    }

    /// Check a connection URL; an error never repeats a URL that carries a password.
    fn db_url(&mut self, path: &str, kind: DbKind, url: &str) -> bool {
        let schemes: &[&str] = match kind {
            DbKind::Postgres => &["postgres://", "postgresql://"],
            DbKind::Mysql => &["mysql://"],
        };
        if url_has_password(url) {
            self.err(
                path,
                "the URL contains a password: remove it and use `password_file` or `password_env` (credentials never go in the URL, which is logged and shown)",
            );
            return false;
        }
        if !schemes.iter().any(|s| url.starts_with(s)) {
            self.err(
                path,
                format!(
                    "`{url}` is not a URL of the form {}USER@HOST:PORT/DB",
                    schemes[0]
                ),
            );
            return false;
        }
        let parsed = match kind {
            DbKind::Postgres => url
                .parse::<tokio_postgres::Config>()
                .map(|c| c.get_hosts().is_empty())
                .map_err(|e| e.to_string()),
            DbKind::Mysql => mysql_async::Opts::from_url(url)
                .map(|_| false)
                .map_err(|e| e.to_string()),
        };
        match parsed {
            Ok(false) => true,
            Ok(true) => {
                self.err(path, format!("`{url}` names no host"));
                false
            }
            Err(e) => {
                self.err(path, format!("`{url}` is not a valid URL: {e}"));
                false
            }
        }
    }

    /// The password from `password_file` or `password_env` (`Some(None)`: none configured;
    /// `None`: an error was reported). Never echoed.
    fn db_password(&mut self, path: &str, db: &DatabaseFile) -> Option<Option<Secret>> {
        match (&db.password_file, &db.password_env) {
            (None, None) => Some(None),
            (Some(_), Some(_)) => {
                self.err(
                    &format!("{path}.password_env"),
                    "set password_file or password_env, not both",
                );
                None
            }
            (Some(f), None) => {
                let file = self.path(f);
                match read_password(&file) {
                    Ok(v) => {
                        let v = v.trim_end_matches(['\n', '\r']);
                        if v.is_empty() {
                            self.err(
                                &format!("{path}.password_file"),
                                format!("{} is empty", file.display()),
                            );
                            return None;
                        }
                        Some(Some(Secret::new(v)))
                    }
                    Err(e) => {
                        self.err(
                            &format!("{path}.password_file"),
                            format!("cannot read {}: {e}", file.display()),
                        );
                        None
                    }
                }
            }
            (None, Some(var)) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Some(Some(Secret::new(&v))),
                _ => {
                    self.err(
                        &format!("{path}.password_env"),
                        format!("environment variable {var} is not set (or empty, or not UTF-8)"),
                    );
                    None
                }
            },
        }
    }

    /// `tls` and `ca_file` (`Some(None)`: no TLS; `None`: an error was reported).
    fn db_tls(
        &mut self,
        path: &str,
        db: &DatabaseFile,
    ) -> Option<Option<Option<std::path::PathBuf>>> {
        match (db.tls, &db.ca_file) {
            (false, None) => Some(None),
            (false, Some(_)) => {
                self.err(&format!("{path}.ca_file"), "only used with `tls = true`");
                None
            }
            (true, None) => Some(Some(None)),
            (true, Some(f)) => {
                let file = self.path(f);
                match crate::tls::load_certs(&file) {
                    Ok(c) if !c.is_empty() => Some(Some(Some(file))),
                    Ok(_) => {
                        self.err(
                            &format!("{path}.ca_file"),
                            format!("{} holds no certificate", file.display()),
                        );
                        None
                    }
                    Err(e) => {
                        self.err(&format!("{path}.ca_file"), e.to_string());
                        None
                    }
                }
            }
        }
    }

    /// `heartbeat_table`: `table` or `schema.table`, plain identifiers (it is put into SQL).
    fn heartbeat_table(&mut self, path: &str, db: &DatabaseFile) -> bool {
        let Some(t) = &db.heartbeat_table else {
            return true;
        };
        let ident = |s: &str| {
            s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        let parts: Vec<&str> = t.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|p| ident(p)) {
            self.err(
                &format!("{path}.heartbeat_table"),
                format!("`{t}` is not `table` or `schema.table` (letters, digits, `_`)"),
            );
            return false;
        }
        true
    }

    /// A probe duration: the entry's own value, else the service's, else `default`; must be
    /// more than zero.
    fn probe_duration(
        &mut self,
        path: &str,
        p: &str,
        key: &str,
        own: &Option<String>,
        service: &Option<String>,
        default: Duration,
    ) -> Duration {
        let (at, v) = match own {
            Some(_) => (format!("{path}.{key}"), own),
            None => (format!("{p}.{key}"), service),
        };
        let d = self.duration(&at, v, default);
        if d.is_zero() {
            self.err(&at, "must be more than 0");
            return default;
        }
        d
    }
}

/// Read a password file: a regular file of at most 4 KiB (a FIFO or `/dev/zero` would hang
/// or exhaust memory during a check or reload), UTF-8.
fn read_password(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read as _;
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut v = String::new();
    std::fs::File::open(path)?
        .take(4097)
        .read_to_string(&mut v)?;
    if v.len() > 4096 {
        return Err(std::io::Error::other("larger than 4 KiB"));
    }
    Ok(v)
}

/// Does `url` carry a password (`user:password@host`, or a `password`/`pass` parameter)?
fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let in_userinfo = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    let in_query = url.split_once('?').is_some_and(|(_, q)| {
        q.split('&').any(|kv| {
            let k = kv.split('=').next().unwrap_or("");
            k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("pass")
        })
    });
    in_userinfo || in_query
}

#[cfg(test)]
mod tests {
    use super::url_has_password;

    #[test]
    fn passwords_in_urls_are_found() {
        for u in [
            "postgres://geolb:s3cret@10.0.1.5:5432/app",
            "mysql://geolb:@db/app",
            "postgres://geolb@db/app?password=x",
            "mysql://geolb@db/app?sslmode=x&pass=y",
        ] {
            assert!(url_has_password(u), "{u}");
        }
        for u in [
            "postgres://geolb@10.0.1.5:5432/app",
            "postgres://geolb@[::1]:5432/app",
            "mysql://geolb@db:3306/app?prefer_socket=false",
        ] {
            assert!(!url_has_password(u), "{u}");
        }
    }
}
