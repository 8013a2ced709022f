//! API writes for a planned burst on 1,000 nodes x 20 images: every node's
//! agent runs the real pull loop (4 at a time, pulls of 3-30 s, simulated in
//! paused tokio time) and the real status writer (2 s interval) against one
//! counting mock API server. Prints the figures; asserts the hard bounds.
//!
//! `PULLAHEAD_WRITE_RATE_NODES=1000 cargo test --test api_write_rate -- --nocapture`
//! (CI runs 250 nodes by default to stay quick; per-node figures do not
//! depend on the node count, since nodes share nothing but the API.)

#[path = "ops_common/mod.rs"]
mod ops;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kube::Api;
use ops::fake_api::mock_api;
use ops::store::Reply;
use pullahead::clock::SystemClock;
use pullahead::dispatch::agent::{StatusWriter, orders_from_spec};
use pullahead::dispatch::crd::{ImageOrder, NodePrefetch};
use pullahead::dispatch::cri::{self, AuthConfig, Image, ImageService};
use pullahead::dispatch::puller::{Options, Puller};
use pullahead::registry::DockerConfig;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::watch;

const IMAGES: usize = 20;

/// Pulls that take a fixed, per-image simulated time.
struct SimRuntime {
    seconds: Vec<f64>,
}

impl ImageService for SimRuntime {
    async fn pull_image(&self, image: &str, _auth: Option<AuthConfig>) -> cri::Result<String> {
        let i: usize = image
            .rsplit(':')
            .next()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_secs_f64(self.seconds[i])).await;
        Ok(image.into())
    }
    async fn image_status(&self, _image: &str) -> cri::Result<Option<Image>> {
        Ok(None)
    }
}

#[tokio::test(start_paused = true)]
async fn a_burst_on_many_nodes_by_20_images_stays_within_one_write_per_node_per_2s() {
    let nodes: usize = std::env::var("PULLAHEAD_WRITE_RATE_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);
    let (client, seen) = mock_api(Box::new(|_| {
        Reply::Json(
            200,
            json!({"apiVersion": "pullahead.io/v1alpha1", "kind": "NodePrefetch", "metadata": {"name": "n"}, "spec": {}}),
        )
    }));
    let writes = Arc::new(AtomicU64::new(0));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
    let start = tokio::time::Instant::now();
    let mut per_node_writes = Vec::new();
    let mut done = Vec::new();
    for n in 0..nodes {
        let spec: Vec<ImageOrder> = (0..IMAGES)
            .map(|i| ImageOrder {
                image: format!("r.example/app{i}:{i}"),
                priority: (IMAGES - i) as u32,
                ..Default::default()
            })
            .collect();
        let seconds = (0..IMAGES).map(|_| rng.random_range(3.0..30.0)).collect();
        let puller = Puller::new(
            Arc::new(SimRuntime { seconds }),
            Arc::new(SystemClock),
            Options::default(),
        );
        let writer = StatusWriter::new(
            Api::<NodePrefetch>::all(client.clone()),
            format!("node-{n}"),
            Duration::from_secs(2),
        );
        per_node_writes.push(writer.writes());
        let (tx, rx) = watch::channel(spec.clone());
        tokio::spawn(writer.run(puller.board(), rx));
        let orders = orders_from_spec(&spec, &DockerConfig::default());
        done.push(tokio::spawn(async move {
            puller.run(orders).await;
            tx // keep the spec channel open until the pulls end
        }));
    }
    let mut txs = Vec::new();
    for d in done {
        txs.push(d.await.expect("node task"));
    }
    let burst = start.elapsed();
    // Let the last batched writes go out.
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop(txs);
    let total: u64 = per_node_writes
        .iter()
        .map(|w| w.load(Ordering::Relaxed))
        .sum();
    writes.store(total, Ordering::Relaxed);
    assert_eq!(
        seen.lock().unwrap().len() as u64,
        total,
        "every counted write reached the API"
    );
    let minutes = burst.as_secs_f64() / 60.0;
    let max_node = per_node_writes
        .iter()
        .map(|w| w.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let state_changes = (nodes * IMAGES * 3) as f64; // pending -> pulling -> present
    println!(
        "{nodes} nodes x {IMAGES} images: burst {:.1}s simulated; {total} status writes = {:.0} writes/min cluster-wide ({:.1}/node/min); \
         busiest node {max_node} writes; unbatched it would be ~{state_changes:.0} writes ({:.0}/min); objects: {nodes}",
        burst.as_secs_f64(),
        total as f64 / minutes,
        total as f64 / minutes / nodes as f64,
        state_changes / minutes,
    );
    // Hard bound: one write per node per 2 s (plus the first, immediate one).
    let bound = (burst.as_secs_f64() + 5.0) / 2.0 + 1.0;
    assert!(
        (max_node as f64) <= bound,
        "busiest node wrote {max_node} times in {burst:?}"
    );
    assert!(
        (total as f64) < state_changes / 2.0,
        "batching must save most writes"
    );
}
