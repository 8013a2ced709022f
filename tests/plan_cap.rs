//! The images `replay` simulates on a node are the images of the
//! NodePrefetch `run` writes for it from the same events: the per-node cap
//! and the merge by priority are one plan book's, not two sets of rules.

#[path = "ops_common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::fake_api::FakeApi;
use pullahead::config::{Config, PolicyArgs, PolicyName, RunArgs};
use pullahead::event::{Event, EventReader};
use pullahead::metrics::{Health, Metrics};
use pullahead::plan::PolicySettings;
use pullahead::replay::{self, sim::SimConfig};
use tokio::sync::{mpsc, watch};

const CAP: usize = 3;
const NODE: &str = "ip-10-0-7-9.ec2.internal";

/// Pods on node `a` make eight images popular, each less than the one
/// before; then `NODE` registers in the same pool, and `popular` orders
/// all eight onto it, more than the cap.
fn trace() -> Vec<Event> {
    let mut lines = vec![
        r#"{"ts":0,"type":"node","node":"a","phase":"registered","pool":"p","labels":{}}"#
            .to_string(),
    ];
    let mut ts = 1;
    for i in 1..=8 {
        for n in 0..(9 - i) {
            lines.push(format!(
                r#"{{"ts":{ts},"type":"pod","pod":"d/p{i}-{n}","images":["r/img{i}:1"],"phase":"scheduled","node":"a"}}"#
            ));
            ts += 1;
        }
    }
    lines.push(format!(
        r#"{{"ts":{ts},"type":"node","node":"{NODE}","phase":"registered","pool":"p","labels":{{}}}}"#
    ));
    let text = lines.join("\n");
    EventReader::new(text.as_bytes(), "trace")
        .map(|e| e.unwrap())
        .collect()
}

/// What `run` writes for `NODE`: the images of its NodePrefetch, in order,
/// with their priorities.
async fn written(events: &[Event]) -> (Vec<(String, u64)>, u64) {
    let api = FakeApi::new();
    api.add_node(NODE, "5f0c9a7e-2b1d-4c3e-8f6a-1d2e3c4b5a69");
    api.add_node("a", "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d");
    let cfg = Config::resolve(&RunArgs {
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        identity: Some("pullahead-controller-0".into()),
        lease_namespace: Some("pullahead".into()),
        lease_duration: Some(2.0),
        lease_retry: Some(0.1),
        policy: Some(PolicyName::Popular),
        settings: PolicyArgs {
            max_images_per_node: Some(CAP),
            ..PolicyArgs::default()
        },
        ..RunArgs::default()
    })
    .unwrap();
    let (tx, rx) = mpsc::channel(256);
    let (stop, stop_rx) = watch::channel(false);
    let metrics = Metrics::new().unwrap();
    let task = tokio::spawn(pullahead::run::run_with(
        cfg,
        Some(api.client()),
        Some(rx),
        stop_rx,
        metrics.clone(),
        Health::new(),
    ));
    for e in events {
        tx.send(e.clone()).await.unwrap();
    }
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    while !api.prefetches.lock().unwrap().contains_key(NODE) {
        assert!(tokio::time::Instant::now() < end, "no NodePrefetch written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let object = api.prefetches.lock().unwrap()[NODE].clone();
    let images = object["spec"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["image"].as_str().unwrap().to_string(),
                i["priority"].as_u64().unwrap(),
            )
        })
        .collect();
    (images, summary.orders)
}

#[tokio::test]
async fn replay_prefetches_what_run_writes_when_a_node_is_ordered_past_its_cap() {
    let events = trace();
    let (images, orders) = written(&events).await;
    assert_eq!(orders, 8, "popular should order all eight images");
    // The cap keeps the best three, highest priority first.
    assert_eq!(
        images,
        vec![
            ("r/img1:1".to_string(), 8),
            ("r/img2:1".to_string(), 7),
            ("r/img3:1".to_string(), 6),
        ]
    );

    let settings = PolicySettings {
        max_images_per_node: CAP,
        ..PolicySettings::default()
    };
    let opts = replay::Options::with_settings(SimConfig::default(), Vec::new(), settings);
    let simulated =
        replay::simulated_prefetches(events.into_iter().map(Ok), "popular", &opts).unwrap();
    let want: BTreeSet<String> = images.into_iter().map(|(i, _)| i).collect();
    assert_eq!(simulated.get(NODE), Some(&want), "{simulated:?}");
    assert_eq!(simulated.get("a"), Some(&BTreeSet::new()));
}
