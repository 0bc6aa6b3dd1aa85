//! Observability: metric names and pre-bound handles, the access log, and the event ring.
//! Depends only on `time` and `geo`; every layer above reports through it.

pub(crate) mod access_log;
pub(crate) mod events;
pub(crate) mod metrics;
