//! Progress for display: an adapter shows whatever it counts.
//!
//! Adapters count in their own terms (files, tables, keys); the command line
//! draws one bar. A [`Meter`] is the adapter's view of its counters, set on
//! the job's [`Progress`] once the work starts; the display polls it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One look at an adapter's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reading {
    pub bytes_done: u64,
    /// 0 when unknown (a backup does not know its size up front).
    pub bytes_total: u64,
    /// What else is counted, e.g. `3/40 tables`.
    pub detail: String,
}

impl Reading {
    /// Bytes done of a total, and `done/total unit` for what else is counted.
    pub fn counted(bytes: [&AtomicU64; 2], items: [&AtomicU64; 2], unit: &str) -> Reading {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Reading {
            bytes_done: load(bytes[0]),
            bytes_total: load(bytes[1]),
            detail: format!("{}/{} {unit}", load(items[0]), load(items[1])),
        }
    }
}

/// An adapter's counters, read for display.
pub trait Meter: Send + Sync {
    fn read(&self) -> Reading;
}

/// The job's progress display: a slot for the adapter's meter.
#[derive(Default)]
pub struct Progress {
    meter: Mutex<Option<Arc<dyn Meter>>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress").field("reading", &self.read()).finish()
    }
}

impl Progress {
    /// Shows `meter` from now on.
    pub fn show(&self, meter: Arc<dyn Meter>) {
        *self.meter.lock().expect("progress meter") = Some(meter);
    }

    /// The current reading, once an adapter has set a meter.
    pub fn read(&self) -> Option<Reading> {
        let meter = self.meter.lock().expect("progress meter").clone();
        meter.map(|m| m.read())
    }
}
