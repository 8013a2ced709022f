//! Replay throughput: events per second for the `popular` and `oracle`
//! policies, and for `predictive` on its own (each with `none`, and the
//! oracle, which oracle capture always needs) over a synthetic trace,
//! parsing included.
//!
//! `PULLAHEAD_BENCH_EVENTS` sets the trace size (default 1,000,000).
//! Peak RSS is measured on the binary instead; see `benches/README.md`.

use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pullahead::event::{EventWriter, Header};
use pullahead::replay::{self, synth};

// The allocator the `pullahead` binary uses, so the figure is the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn trace(dir: &Path, events: u64) -> std::path::PathBuf {
    let path = dir.join(format!("synth-{events}.jsonl"));
    let header = Header::new(0.0, "bench");
    let mut w = EventWriter::create(&path, &header).expect("create trace");
    let cfg = synth::SynthConfig {
        seed: 7,
        events,
        pools: 8,
        workloads: 2_000,
        images: 1_000,
    };
    synth::generate(cfg, &mut w).expect("generate trace");
    w.flush().expect("flush trace");
    path
}

fn bench(c: &mut Criterion) {
    let events: u64 = std::env::var("PULLAHEAD_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // As the binary's `replay` sets it.
    pullahead::allocator::keep_freed_memory();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = trace(dir.path(), events);
    let opts = replay::Options {
        policies: vec!["popular".into(), "oracle".into()],
        ..Default::default()
    };
    let mut g = c.benchmark_group("replay");
    g.throughput(Throughput::Elements(events));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("popular+oracle", |b| {
        b.iter(|| replay::replay_file(&path, &opts, None).expect("replay"))
    });
    let predictive = replay::Options {
        policies: vec!["predictive".into()],
        ..Default::default()
    };
    g.bench_function("predictive", |b| {
        b.iter(|| replay::replay_file(&path, &predictive, None).expect("replay"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
