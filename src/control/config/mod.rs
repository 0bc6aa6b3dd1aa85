//! Configuration: `file` (serde shape), `compile` (validation into runtime types), `diag`
//! (positioned errors).

pub mod compile;
mod data;
mod databases;
pub mod diag;
pub mod diff;
mod dns;
pub(crate) mod file;
mod service;
#[cfg(test)]
mod tests;
pub(crate) mod values;

pub use compile::{CompileCtx, Compiled, compile_str, load};
pub use diag::{ConfigError, ConfigErrors};
