//! Event traces for tests: the bundled files in `replay-data/`, and small
//! generated ones.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::{Path, PathBuf};

use pullahead::event::{Event, EventReader, EventWriter, Header};
use pullahead::replay::synth;

/// The path of a bundled trace.
pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("replay-data")
        .join(name)
}

/// Every event of the trace at `path`.
pub fn file_events(path: &Path) -> Vec<Event> {
    EventReader::open(path)
        .unwrap()
        .map(|e| e.expect("bundled trace reads"))
        .collect()
}

/// A generated trace of about `events` events over 3 pools, 40 workloads
/// and 60 images, as schema-v1 JSON lines.
pub fn synth_trace(seed: u64, events: u64) -> Vec<u8> {
    let mut w = EventWriter::new(Vec::new(), "synth", &Header::new(0.0, "test")).unwrap();
    let cfg = synth::SynthConfig {
        seed,
        events,
        pools: 3,
        workloads: 40,
        images: 60,
    };
    synth::generate(cfg, &mut w).unwrap();
    w.into_inner().unwrap()
}
