//! geolb: a geo-aware edge HTTP load balancer for active-active, multi-region applications.
//!
//! The crate is layered; a module may import only from layers below it (checked by
//! `tests/layering.rs`, see ARCHITECTURE.md):
//!
//! | layer | modules | what |
//! |---|---|---|
//! | 7 | `control` | config file → compile → publish, reload, checks, admin, explain |
//! | 6 | `net` | listeners, accept, PROXY protocol, TLS handshake, h1/h2 serving |
//! | 5 | `proxy`, `dns` | the request pipeline, headers, response bodies, tunnels; GeoDNS |
//! | 4 | `route` | route table, client IP, region order, backend pick, snapshot |
//! | 3 | `upstream` | pooled upstream clients, request bodies, failure classification |
//! | 2 | `health`, `observe` | health atomics; metrics, access log, events |
//! | 1 | `geo`, `tls` | geo database and distances; certificates and SNI |
//! | 0 | `time` | clocks |
//!
//! Data path: `net` → `proxy` → `route` (client IP → geo → route → region order → pick) →
//! `upstream`. Control path: `control::config` (file → compile) → one
//! `ArcSwap<route::Snapshot>` → read per request; health in atomics that survive reloads.
//!
//! The public API is what `main`, the tests, the benches and an embedding program need:
//! [`App`] to start geolb, [`config`] to compile and diff configurations offline,
//! [`explain`], and the decision path's pure building blocks ([`route`], [`geo`],
//! [`health`], [`headers`]) for benchmarks. Everything else is crate-private.
#![forbid(unsafe_code)]
#![warn(unreachable_pub, missing_docs, clippy::too_many_lines)]

pub(crate) mod control;
pub mod dns;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod geo;
pub mod health;
pub(crate) mod net;
pub(crate) mod observe;
pub(crate) mod proxy;
pub mod route;
pub mod time;
pub(crate) mod tls;
pub(crate) mod upstream;

pub use control::app::{App, Options, Running, StartError};
pub use control::shared::{ReloadStatus, Shared};
pub use control::{config, explain};
pub use proxy::{Edge, ListenerKind, headers};
pub use upstream::UpstreamPool;
