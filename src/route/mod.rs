//! Routing decisions: the compiled table (hosts, routes, services, regions, backends), the
//! client's real address, region order and backend pick, and the published snapshot.
//! Pure and allocation-free per request.

pub mod budget;
pub mod client_ip;
pub mod data;
pub mod index;
pub mod select;
pub mod snapshot;
pub mod table;

pub use index::{BackendIdx, RegionIdx, RouteIdx, SrIdx};
pub use snapshot::{Snapshot, Summary, TlsState};
pub use table::*;
