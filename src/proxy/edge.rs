//! `Edge`: the part of the process state the data path reads — the published snapshot, the
//! counters and log it reports to, and the task set and tokens that bound its lifetime.

use std::sync::Arc;
use std::sync::atomic::AtomicU16;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::observe::access_log::AccessLog;
use crate::observe::events::EventLog;
use crate::observe::metrics::{CountryCounters, GeoMetrics, PathMetrics};
use crate::route::Snapshot;

/// Shared by every connection and request; created once per process.
pub struct Edge {
    /// The configuration being served; replaced whole on reload.
    pub snapshot: ArcSwap<Snapshot>,
    /// Geo lookup results.
    pub geo_metrics: GeoMetrics,
    /// Requests by client country (bounded labels).
    pub countries: CountryCounters,
    /// Path normalisation, loop and slow-body counters.
    pub(crate) hygiene: PathMetrics,
    /// Access log sender (writes happen on a background task).
    pub access_log: AccessLog,
    /// Recent state changes, for `/status`.
    pub events: Arc<EventLog>,
    /// Stop accepting and drain connections gracefully.
    pub drain: CancellationToken,
    /// Stop everything now (tunnels, checkers, background tasks).
    pub hard: CancellationToken,
    /// Client connections and the tunnels they become.
    pub tasks: TaskTracker,
    /// Bound port of the https listener (redirect target); 443 when there is none.
    pub https_port: AtomicU16,
}
