//! Normaliser + in-process bus throughput: watcher events for pods going
//! pending → scheduled → deleted, through the watch state machine (trackers
//! and normaliser) onto the bounded bus and out of a subscriber.
//!
//! Run: `cargo bench --bench watch_throughput`

#[path = "support/fixtures.rs"]
mod fixtures;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kube::runtime::watcher::Event as WatchEvent;
use pullahead::bus::memory::InProcessBus;
use pullahead::normalize::Object;
use pullahead::watch::{Kind, Readiness, Watcher};

// The allocator the `pullahead` binary uses, so the figure is the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PODS: usize = 20_000;

fn inputs() -> Vec<WatchEvent<Object>> {
    let mut v = Vec::with_capacity(PODS * 3);
    for i in 0..PODS {
        v.push(WatchEvent::Apply(Object::Pod(fixtures::pod(i, 1, None))));
    }
    for i in 0..PODS {
        v.push(WatchEvent::Apply(Object::Pod(fixtures::pod(
            i,
            2,
            Some("ip-10-0-0-1"),
        ))));
    }
    for i in 0..PODS {
        v.push(WatchEvent::Delete(Object::Pod(fixtures::pod(
            i,
            3,
            Some("ip-10-0-0-1"),
        ))));
    }
    v
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("watch");
    g.throughput(Throughput::Elements((PODS * 3) as u64));
    g.sample_size(10);
    g.bench_function("normalise_and_bus_60k_pod_changes", |b| {
        b.iter_batched(
            inputs,
            |mut input| {
                let bus = InProcessBus::new(1 << 17).expect("bus");
                let mut sub = bus.subscribe_local();
                let mut w = Watcher::new(&[Kind::Pod], Readiness::new(&[]));
                let mut out = Vec::with_capacity(4);
                let mut received = 0usize;
                for (i, e) in input.drain(..).enumerate() {
                    w.handle(Kind::Pod, e, i as f64, &mut out);
                    // The events of one watch event go on the bus together.
                    bus.send_all(out.drain(..));
                    while sub.try_recv().is_some() {
                        received += 1;
                    }
                }
                assert_eq!(received, PODS * 3, "every change is one event");
                assert_eq!(bus.dropped(), 0);
                // Returned, not dropped here: criterion drops a routine's
                // output after the timed section. Freeing the input's buffer
                // is input handling, and a live watcher never tears its state
                // down, so neither belongs in events per second.
                (input, w, sub, bus)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
