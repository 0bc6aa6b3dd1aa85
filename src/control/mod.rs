//! The control path: configuration (file → compile → publish), reload, active health
//! checks, database probes, the admin listener, `explain` and the status page.

pub(crate) mod admin;
pub(crate) mod admin_conn;
pub(crate) mod app;
pub(crate) mod checker;
pub mod config;
pub(crate) mod dbprobe;
pub(crate) mod dns;
pub mod explain;
pub(crate) mod reload;
pub(crate) mod shared;
pub(crate) mod status_page;
