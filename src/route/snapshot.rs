//! The published snapshot: everything a request needs, swapped atomically on reload.

use std::sync::Arc;

use crate::geo::GeoDb;
use crate::route::{RoutingTable, Settings};
use crate::tls::CertSet;
use crate::upstream::PoolKey;

/// TLS material for new connections.
#[derive(Clone)]
pub struct TlsState {
    pub certs: Arc<CertSet>,
    pub config: Arc<rustls::ServerConfig>,
}

/// Everything a request needs, published atomically.
pub struct Snapshot {
    pub table: RoutingTable,
    pub settings: Settings,
    pub geo: Arc<GeoDb>,
    pub tls: Option<TlsState>,
    pub generation: u64,
    pub summary: Summary,
    /// Upstream pools this configuration uses (others are dropped on reload).
    pub pool_keys: Vec<PoolKey>,
}

/// Counts for `geolb check` and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub routes: usize,
    pub services: usize,
    pub regions: usize,
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
