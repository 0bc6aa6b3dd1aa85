//! The published snapshot: everything a request needs, swapped atomically on reload.

use std::sync::Arc;

use crate::geo::GeoDb;
use crate::route::{RoutingTable, Settings};
use crate::tls::CertSet;
use crate::upstream::PoolKey;

/// TLS material for new connections.
#[derive(Clone)]
pub struct TlsState {
    /// The certificates, selected by SNI.
    pub certs: Arc<CertSet>,
    /// The configuration file (routes.toml).
    pub config: Arc<rustls::ServerConfig>,
}

/// Everything a request needs, published atomically.
pub struct Snapshot {
    /// The compiled routing table.
    pub table: RoutingTable,
    /// Listener and per-request settings.
    pub settings: Settings,
    /// The geo database in use.
    pub geo: Arc<GeoDb>,
    /// TLS material, when an https listener is configured.
    pub tls: Option<TlsState>,
    /// Increases by one with every published configuration.
    pub generation: u64,
    /// Counts of routes, services, regions and backends.
    pub summary: Summary,
    /// Upstream pools this configuration uses (others are dropped on reload).
    pub pool_keys: Vec<PoolKey>,
}

/// Counts for `geolb check` and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Number of routes.
    pub routes: usize,
    /// Number of services.
    pub services: usize,
    /// Number of regions.
    pub regions: usize,
    /// Number of backends.
    pub backends: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} routes, {} services, {} regions, {} backends",
            self.routes, self.services, self.regions, self.backends
        )
    }
}
