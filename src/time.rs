//! Clocks shared by every layer: a cheap monotonic millisecond counter and Unix time.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// Milliseconds since process start (monotonic). Never 0 after the first call returns.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(|| Instant::now() - Duration::from_secs(3600));
    start.elapsed().as_millis() as u64
}

/// Seconds since the Unix epoch (wall clock), for logs and operators.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Milliseconds since the Unix epoch (wall clock), comparable between geolb instances.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
