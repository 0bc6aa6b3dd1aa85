//! GeoDNS: geolb answers DNS for its names from the same regions, health and rules it routes
//! HTTP with. A name is answered with the public edge addresses of the region a requester
//! (located by its EDNS Client Subnet, else by its resolver's address) would be routed to, or
//! for internal names with per-region targets.
//!
//! `zone` (the compiled `[dns]` section) → `answer` (region order, health, shares: the pure
//! decision) → `wire` (hickory-proto parse and serialise, one reused buffer set per task);
//! `rrl` (response rate limiting), `check` (probes of edges and targets), `server` (the UDP
//! and TCP loops on tokio), `explain` (the `/explain?dns=` and `/status` views), `metrics`.
//!
//! Layer 5, beside `proxy`: imports `route`, `health`, `geo`, `observe` and `time`, never
//! `proxy`. The control layer compiles the zone, publishes a [`DnsView`] next to each route
//! snapshot and runs the listeners and probes.

use std::sync::Arc;

use crate::route::Snapshot;

pub mod answer;
pub(crate) mod check;
pub mod explain;
pub mod metrics;
pub mod rrl;
pub(crate) mod server;
pub mod wire;
pub mod zone;

pub use zone::DnsConfig;

/// What the DNS listener answers from: the compiled zone and the route snapshot it was
/// compiled with (its route and region indices refer to that snapshot), published together.
pub struct DnsView {
    /// The `[dns]` section.
    pub config: Arc<DnsConfig>,
    /// The routing snapshot of the same configuration (routes, regions, geo database).
    pub snap: Arc<Snapshot>,
    /// The response rate limiter, when enabled (kept across reloads while its policy is).
    pub rrl: Option<Arc<rrl::RateLimiter>>,
}
