//! Client location from MaxMind-format databases.

pub mod centroids;
mod db;

pub use db::{GeoDb, GeoError, GeoInfo, LocSource, Location, distance_km};
