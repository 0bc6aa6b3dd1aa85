//! geolb: a geo-aware edge HTTP load balancer for active-active, multi-region applications.
//!
//! Data path: `server` → `proxy` → `client_ip` → `geo` → `routing` → `select` → `upstream`.
//! Control path: `config` (file → compile) → `app::Snapshot` in one `ArcSwap` → `health`.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod body;
pub mod client_ip;
pub mod config;
pub mod error;
pub mod events;
pub mod explain;
pub mod geo;
pub mod headers;
pub mod health;
pub mod metrics;
pub mod prefixed;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
pub mod routing;
pub mod select;
pub mod server;
pub mod status_page;
pub mod tls;
pub mod tunnel;
pub mod upstream;

pub use app::{App, Options, Running, StartError};
