//! The agent's own cost per pull, on top of the CRI call: the pull loop
//! (priority sort, slot semaphore, task spawn, ImageStatus checks, progress
//! board updates) against a runtime that answers at once. Target: <= 5 ms.
//! The `guarded_*` cases add the agent's safety checks around each pull:
//! a registry budget slot and a node slot (`BudgetGuard` on in-memory
//! slots, so the Lease round trips are left out: they cost what the API
//! server takes), and the disk check (`statfs` of a real directory, the
//! reservation of the image's footprint).
//!
//! `cargo bench --bench dispatch_overhead`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use pullahead::clock::{Clock, SystemClock};
use pullahead::dispatch::budget::{BudgetConfig, BudgetGuard, HostBudgets, LocalSlots};
use pullahead::dispatch::crd::PullState;
use pullahead::dispatch::cri::{self, AuthConfig, Image, ImageService};
use pullahead::dispatch::disk::{DiskCheck, DiskConfig, DiskGuard};
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
        let sized: Vec<Order> = orders
            .iter()
            .map(|o| Order {
                bytes: Some(1_000),
                ..o.clone()
            })
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let guarded = || {
            let clock: Arc<dyn Clock> = Arc::new(SystemClock);
            let budget = BudgetGuard::new(
                BudgetConfig {
                    hosts: HostBudgets::parse(32, &[]).expect("budgets"),
                    max_nodes: 100,
                    ..BudgetConfig::default()
                },
                Arc::new(LocalSlots::new(clock.clone())),
                clock,
            );
            // A ceiling of 100%: the bench measures the check, and must
            // not depend on how full this machine's disk is.
            let disk = DiskGuard::new(DiskConfig {
                path: dir.path().to_path_buf(),
                gc_high_percent: 100.0,
                margin_percent: 0.0,
                size_factor: 2.0,
            })
            .expect("disk guard");
            let p = Puller::new(
                Arc::new(InstantRuntime),
                Arc::new(SystemClock),
                Options::default(),
            )
            .with_guard(Arc::new(budget))
            .with_guard(Arc::new(DiskCheck(Arc::new(disk))));
            rt.block_on(p.run(black_box(sized.clone())))
        };
        // What is timed must be pulls that pass the checks, not hold-backs.
        let once = guarded();
        assert!(
            once.len() == batch && once.iter().all(|o| o.state == PullState::Present),
            "guarded pulls did not all pass: {once:?}"
        );
        g.bench_function(format!("guarded_batch_of_{batch}"), |b| b.iter(guarded));
    }
    g.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
