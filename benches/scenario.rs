//! `scenario` throughput: 30 days of a NASA-shaped load (a daily and weekly
//! cycle with minute noise, 43 200 minutes) through the NASA Karpenter spec,
//! events serialised to a sink. The timed command with the real NASA file is
//! in replay-data/README.md's neighbour, docs/scenario-spec.md.

use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use pullahead::event::{EventWriter, Header};
use pullahead::scenario::load::Load;
use pullahead::scenario::spec::Spec;
use pullahead::scenario::{Options, generate};

fn synthetic_month() -> Load {
    let minutes = 30 * 24 * 60;
    let mut noise: u64 = 0x9e37_79b9_7f4a_7c15;
    let series = (0..minutes)
        .map(|m| {
            noise ^= noise << 13;
            noise ^= noise >> 7;
            noise ^= noise << 17;
            let day = (m as f64 / 1440.0 * std::f64::consts::TAU).sin();
            let weekday = if (m / 1440) % 7 < 5 { 1.0 } else { 0.5 };
            let jitter = (noise % 40) as f64 - 20.0;
            ((90.0 + 70.0 * day) * weekday + jitter).max(0.0) as f32
        })
        .collect();
    Load {
        start: 804_556_800.0,
        columns: vec!["count".into()],
        series: vec![series],
    }
}

fn bench(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("replay-data/specs");
    let spec_path = dir.join("nasa-karpenter.yaml");
    let spec = match Spec::load(&spec_path) {
        Ok(s) => s,
        Err(e) => panic!("bench spec: {e}"),
    };
    let load = synthetic_month();
    let opts = Options {
        seed: 7,
        hours: None,
        start_hour: 0.0,
    };
    let mut g = c.benchmark_group("scenario");
    g.sample_size(10);
    g.bench_function("nasa_karpenter_30d_synthetic", |b| {
        b.iter(|| {
            let r = generate(&spec, &dir, "nasa-karpenter.yaml", &load, &opts, |t0| {
                EventWriter::new(std::io::sink(), "sink", &Header::new(t0, "bench"))
            });
            match r {
                Ok((summary, _)) => summary.events,
                Err(e) => panic!("scenario failed: {e}"),
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
