//! Normaliser + in-process bus throughput: watcher events for pods going
//! pending → scheduled → deleted, through the watch state machine (trackers
//! and normaliser) onto the bounded bus and out of a subscriber.
//!
//! Run: `cargo bench --bench watch_throughput`

#[path = "support/fixtures.rs"]
mod fixtures;

use std::sync::OnceLock;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kube::runtime::watcher::Event as WatchEvent;
use pullahead::bus::memory::{InProcessBus, InProcessSubscription};
use pullahead::event::Event;
use pullahead::normalize::Object;
use pullahead::watch::{Kind, Readiness, Watcher};

// The allocator the `pullahead` binary uses, so the figure is the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PODS: usize = 20_000;

/// The 60,000 pod changes as the API server sends them (JSON), made once:
/// `(deleted, object)`.
fn wire() -> &'static [(bool, Vec<u8>)] {
    static WIRE: OnceLock<Vec<(bool, Vec<u8>)>> = OnceLock::new();
    WIRE.get_or_init(|| {
        let mut v = Vec::with_capacity(PODS * 3);
        for i in 0..PODS {
            v.push((false, fixtures::pod_json(i, 1, None)));
        }
        for i in 0..PODS {
            v.push((false, fixtures::pod_json(i, 2, Some("ip-10-0-0-1"))));
        }
        for i in 0..PODS {
            v.push((true, fixtures::pod_json(i, 3, Some("ip-10-0-0-1"))));
        }
        v
    })
}

/// The watch events as the watcher receives them: each pod parsed from its
/// JSON into the [`pullahead::normalize::SlimPod`] the watcher asks for.
/// Parsing is input handling, done before timing.
fn inputs() -> Vec<WatchEvent<Object>> {
    wire()
        .iter()
        .map(|(deleted, json)| {
            let pod = Object::Pod(fixtures::slim_pod_from(json));
            if *deleted {
                WatchEvent::Delete(pod)
            } else {
                WatchEvent::Apply(pod)
            }
        })
        .collect()
}

/// Feeds watch events through a watcher onto the bus and out of a
/// subscriber; `step` hands the `i`th watch event to the watcher, `false`
/// when there is none. Returns what the timed part must not drop
/// (criterion drops a routine's output after timing it): a live watcher
/// never tears its state down.
fn run(
    mut step: impl FnMut(&mut Watcher, usize, &mut Vec<Event>) -> bool,
) -> (Watcher, InProcessSubscription, InProcessBus) {
    let bus = InProcessBus::new(1 << 17).expect("bus");
    let mut sub = bus.subscribe_local();
    let mut w = Watcher::new(&[Kind::Pod], Readiness::new(&[]));
    let mut out = Vec::with_capacity(4);
    let mut received = 0usize;
    let mut i = 0;
    while step(&mut w, i, &mut out) {
        i += 1;
        // The events of one watch event go on the bus together.
        bus.send_all(out.drain(..));
        while sub.try_recv().is_some() {
            received += 1;
        }
    }
    assert_eq!(received, PODS * 3, "every change is one event");
    assert_eq!(bus.dropped(), 0);
    (w, sub, bus)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("watch");
    g.throughput(Throughput::Elements((PODS * 3) as u64));
    g.sample_size(10);
    // The production path: each watch event is consumed, so its objects are
    // dropped inside the timed part. The input's emptied buffer is freed
    // after timing: that is input handling.
    g.bench_function("normalise_and_bus_60k_pod_changes", |b| {
        b.iter_batched(
            inputs,
            |mut input| {
                let mut events = input.drain(..);
                let kept = run(|w, i, out| match events.next() {
                    Some(e) => {
                        w.handle(Kind::Pod, e, i as f64, out);
                        true
                    }
                    None => false,
                });
                drop(events);
                (input, kept)
            },
            BatchSize::PerIteration,
        )
    });
    // The same with the watch events borrowed, and so dropped after timing:
    // the cost of everything but freeing the Kubernetes objects.
    g.bench_function(
        "normalise_and_bus_60k_pod_changes_objects_dropped_untimed",
        |b| {
            b.iter_batched(
                inputs,
                |input| {
                    let kept = run(|w, i, out| match input.get(i) {
                        Some(e) => {
                            w.handle_ref(Kind::Pod, e, i as f64, out);
                            true
                        }
                        None => false,
                    });
                    (input, kept)
                },
                BatchSize::PerIteration,
            )
        },
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
