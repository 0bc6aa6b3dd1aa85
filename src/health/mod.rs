//! Backend health: shared atomic state (survives reloads) and the active checker.

pub mod checker;
pub mod state;

pub use state::{BackendHealth, HealthRegistry, PassivePolicy, now_ms};
