//! What a database probe connects to (`[services.NAME.data] databases`), compiled. The
//! probes themselves run in the control layer; routing only needs to know which regions are
//! probed and what an unreachable database means.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The database's wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    /// PostgreSQL (`tokio-postgres`).
    Postgres,
    /// MySQL or MariaDB (`mysql_async`).
    Mysql,
}

impl DbKind {
    /// Lowercase word for operators (`/status` "source").
    pub fn as_str(self) -> &'static str {
        match self {
            DbKind::Postgres => "postgres",
            DbKind::Mysql => "mysql",
        }
    }
}

/// What an unreachable database makes of its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// Not eligible for writes; reads may still go there (default).
    IneligibleForWrites,
    /// Not eligible for writes nor reads.
    Ineligible,
}

/// A password read from `password_file` or `password_env`. Its `Debug` never shows it, and
/// nothing serialises it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    /// Wrap a password.
    pub fn new(s: &str) -> Secret {
        Secret(s.into())
    }

    /// The password, for handing to a driver.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One region's database endpoint. Two endpoints compare equal when a running probe may
/// keep going (a reload changes nothing it uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbEndpoint {
    /// The protocol.
    pub kind: DbKind,
    /// Connection URL without a password (validated at compile).
    pub url: Box<str>,
    /// The password, when one is configured.
    pub password: Option<Secret>,
    /// Connect with TLS; `Some(Some(file))` trusts that CA bundle instead of the system's.
    pub tls: Option<Option<PathBuf>>,
    /// `schema.table` (PostgreSQL) or `db.table` (MySQL) with a `ts` column updated on the
    /// primary: lag = now − max(ts) on a replica.
    pub heartbeat_table: Option<Box<str>>,
    /// Time between probe starts.
    pub interval: Duration,
    /// Deadline for connect and for each query.
    pub timeout: Duration,
}

/// A service's database probes.
#[derive(Debug, Clone)]
pub struct DbProbes {
    /// What an unreachable database makes of its region.
    pub unreachable: Unreachable,
    /// Per service region (same index): its database, when one is configured. A region
    /// without one keeps using its backends' health answers.
    pub regions: Box<[Option<Arc<DbEndpoint>>]>,
}
