//! The agent's own cost per pull, on top of the CRI call: the pull loop
//! (priority sort, slot semaphore, task spawn, ImageStatus checks, progress
//! board updates) against a runtime that answers at once. Target: <= 5 ms.
//!
//! `cargo bench --bench dispatch_overhead`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use pullahead::clock::SystemClock;
use pullahead::dispatch::cri::{self, AuthConfig, Image, ImageService};
use pullahead::dispatch::puller::{Options, Order, Puller};

/// A runtime whose calls cost nothing: what is left is the agent.
struct InstantRuntime;

impl ImageService for InstantRuntime {
    async fn pull_image(&self, image: &str, _auth: Option<AuthConfig>) -> cri::Result<String> {
        Ok(image.to_string())
    }
    async fn image_status(&self, _image: &str) -> cri::Result<Option<Image>> {
        Ok(None)
    }
}

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("agent_overhead");
    for batch in [1usize, 20] {
        let orders: Vec<Order> = (0..batch)
            .map(|i| Order {
                priority: (i % 7) as u32,
                ..Order::new(format!("registry.example/app/img{i}:v1"))
            })
            .collect();
        g.bench_function(format!("batch_of_{batch}"), |b| {
            b.iter(|| {
                let p = Puller::new(
                    Arc::new(InstantRuntime),
                    Arc::new(SystemClock),
                    Options::default(),
                );
                rt.block_on(p.run(black_box(orders.clone())))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
