//! A small ring of recent state changes (backend up/down, ejections, reloads) for `/status`.

use std::collections::VecDeque;
use std::sync::Mutex;

/// How many events `/status` keeps.
pub(crate) const CAPACITY: usize = 100;

/// One state change: Unix seconds and a sentence.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    pub time: f64,
    pub text: String,
}

#[derive(Debug, Default)]
pub struct EventLog {
    ring: Mutex<VecDeque<Event>>,
}

impl EventLog {
    /// Record an event (state changes only: rare, so the lock is fine).
    pub fn push(&self, text: String) {
        let mut r = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() == CAPACITY {
            r.pop_front();
        }
        r.push_back(Event {
            time: crate::time::unix_now(),
            text,
        });
    }

    /// Newest first.
    pub fn recent(&self) -> Vec<Event> {
        let r = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        r.iter().rev().cloned().collect()
    }
}
