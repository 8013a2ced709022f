//! `pullahead run` against the mock API with the in-process event channel:
//! what it writes, when it writes, and that `--dry-run` writes nothing.

#[path = "ops_common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::fake_api::{FakeApi, lease_json, micro_now};
use pullahead::config::{Config, RunArgs};
use pullahead::controller::Summary;
use pullahead::event::{ClaimPhase, Event, Node, NodeClaim, NodePhase, Pod, PodPhase};
use pullahead::metrics::{Health, Metrics};
use tokio::sync::{mpsc, watch};

const LEASE: &str = "pullahead-controller";
const NODE: &str = "ip-10-0-12-34.ec2.internal";

fn config(dry_run: bool, decisions: Option<std::path::PathBuf>) -> Config {
    Config::resolve(&RunArgs {
        dry_run,
        decisions,
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        identity: Some("pullahead-controller-6c8f-b".into()),
        lease_namespace: Some("pullahead".into()),
        lease_duration: Some(2.0),
        lease_retry: Some(0.1),
        ..RunArgs::default()
    })
    .unwrap()
}

fn claim(name: &str, phase: ClaimPhase, node: Option<&str>) -> Event {
    Event::new(
        100.0,
        NodeClaim {
            node_claim: name.into(),
            pool: "default".into(),
            phase,
            labels: Default::default(),
            taints: None,
            node: node.map(str::to_string),
        },
    )
}

fn nominated(pod: &str, claim: &str, images: &[&str]) -> Event {
    Event::new(
        100.5,
        Pod {
            pod: pod.into(),
            workload: None,
            images: images.iter().map(|s| s.to_string()).collect(),
            phase: PodPhase::Nominated,
            node: None,
            node_claim: Some(claim.into()),
        },
    )
}

/// A NodeClaim, two pods nominated to it, then the claim's node known.
fn scale_up_events() -> Vec<Event> {
    vec![
        claim("default-x7k2p", ClaimPhase::Created, None),
        nominated(
            "shop/web-5d9c7-abcde",
            "default-x7k2p",
            &[
                "registry.example.com/shop/web:1.4.2",
                "docker.io/library/nginx:1.27",
            ],
        ),
        nominated(
            "shop/worker-77f4-qwert",
            "default-x7k2p",
            &[
                "registry.example.com/shop/worker:2.0.0",
                "docker.io/library/nginx:1.27",
            ],
        ),
        claim(
            "default-x7k2p",
            ClaimPhase::Registered,
            Some("ip-10-0-12-34.ec2.internal"),
        ),
    ]
}

struct Running {
    events: mpsc::Sender<Event>,
    stop: watch::Sender<bool>,
    metrics: Metrics,
    health: Arc<Health>,
    task: tokio::task::JoinHandle<Summary>,
}

fn start(api: &Arc<FakeApi>, cfg: Config) -> Running {
    let (tx, rx) = mpsc::channel(64);
    let (stop, stop_rx) = watch::channel(false);
    let metrics = Metrics::new().unwrap();
    let health = Health::new();
    let task = tokio::spawn(pullahead::run::run_with(
        cfg,
        Some(api.client()),
        Some(rx),
        stop_rx,
        metrics.clone(),
        health.clone(),
    ));
    let task = tokio::spawn(async move { task.await.unwrap().unwrap() });
    Running {
        events: tx,
        stop,
        metrics,
        health,
        task,
    }
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + timeout;
    while !f() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn images_of(write: &common::fake_api::Write) -> BTreeSet<String> {
    write.body["spec"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["image"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_nodeclaim_with_nominated_pods_gets_a_nodeprefetch_with_their_images() {
    let api = FakeApi::new();
    api.add_node(
        "ip-10-0-12-34.ec2.internal",
        "9b2f6c1e-58d3-4b8a-a1f0-3c5e7d9f1a2b",
    );
    let run = start(&api, config(false, None));
    wait_until("the Lease", Duration::from_secs(5), || {
        api.lease_holder(LEASE).as_deref() == Some("pullahead-controller-6c8f-b")
    })
    .await;
    for e in scale_up_events() {
        run.events.send(e).await.unwrap();
    }
    wait_until("a NodePrefetch write", Duration::from_secs(5), || {
        !api.prefetch_writes().is_empty()
    })
    .await;
    // Let any further write land before checking there is exactly one.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let writes = api.prefetch_writes();
    assert_eq!(
        writes.len(),
        1,
        "one object per node, one write: {writes:?}"
    );
    let w = &writes[0];
    assert_eq!(w.method, "PATCH");
    assert_eq!(
        w.path,
        "/apis/pullahead.io/v1alpha1/nodeprefetches/ip-10-0-12-34.ec2.internal"
    );
    assert!(w.query.contains("fieldManager=pullahead"), "{}", w.query);
    assert!(w.query.contains("force=true"), "{}", w.query);
    assert_eq!(w.body["kind"], "NodePrefetch");
    assert_eq!(
        w.body["metadata"]["ownerReferences"][0],
        serde_json::json!({"apiVersion": "v1", "kind": "Node", "name": "ip-10-0-12-34.ec2.internal",
                           "uid": "9b2f6c1e-58d3-4b8a-a1f0-3c5e7d9f1a2b",
                           "controller": false, "blockOwnerDeletion": false})
    );
    assert_eq!(
        images_of(w),
        BTreeSet::from([
            "docker.io/library/nginx:1.27".to_string(),
            "registry.example.com/shop/web:1.4.2".to_string(),
            "registry.example.com/shop/worker:2.0.0".to_string(),
        ])
    );
    for i in w.body["spec"]["images"].as_array().unwrap() {
        assert_eq!(i["reason"], "nominated");
        assert_eq!(i["critical"], true);
        assert_eq!(i["priority"], 1000);
        assert!(i["deadline"].as_str().unwrap().ends_with('Z'), "{i}");
    }
    assert!(
        w.body.get("status").is_none_or(|s| s.is_null()),
        "the controller must not apply status"
    );
    assert_eq!(run.metrics.leader.get(), 1);
    assert_eq!(
        run.metrics
            .pull_orders
            .with_label_values(&["nominated"])
            .get(),
        3
    );
    assert_eq!(run.metrics.events.with_label_values(&["pod"]).get(), 2);
    assert!(run.health.ready());

    run.stop.send(true).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(10), run.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.writes, 1);
    // On shutdown the Lease is given back.
    assert_eq!(api.lease_holder(LEASE), None);
}

#[tokio::test]
async fn a_lease_held_by_another_means_no_writes_until_it_is_taken_over() {
    let api = FakeApi::new();
    api.add_node(
        "ip-10-0-12-34.ec2.internal",
        "9b2f6c1e-58d3-4b8a-a1f0-3c5e7d9f1a2b",
    );
    api.set_lease(lease_json(
        "pullahead",
        LEASE,
        "pullahead-controller-6c8f-a",
        &micro_now(),
        2,
    ));
    // The other replica keeps renewing until told to die.
    let (kill, mut killed) = watch::channel(false);
    let renewer = {
        let api = api.clone();
        tokio::spawn(async move {
            loop {
                {
                    let mut leases = api.leases.lock().unwrap();
                    let l = leases.get_mut(LEASE).unwrap();
                    l["spec"]["renewTime"] = serde_json::json!(micro_now());
                    let rv: u64 = l["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    l["metadata"]["resourceVersion"] = serde_json::json!((rv + 1).to_string());
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = killed.wait_for(|k| *k) => return,
                }
            }
        })
    };
    let run = start(&api, config(false, None));
    for e in scale_up_events() {
        run.events.send(e).await.unwrap();
    }
    // Several election rounds pass while the other holds the Lease.
    wait_until("readiness as a follower", Duration::from_secs(5), || {
        run.health.ready()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        api.prefetch_writes().is_empty(),
        "a follower wrote: {:?}",
        api.prefetch_writes()
    );
    assert_eq!(run.metrics.leader.get(), 0);
    assert_eq!(
        api.lease_holder(LEASE).as_deref(),
        Some("pullahead-controller-6c8f-a")
    );
    let lease_writes = api.writes.lock().unwrap().len();
    assert_eq!(
        lease_writes, 0,
        "a follower must not touch the Lease while it is valid"
    );

    // The other replica dies; its 2 s Lease expires and ours takes over.
    kill.send(true).unwrap();
    renewer.await.unwrap();
    wait_until("the takeover write", Duration::from_secs(6), || {
        !api.prefetch_writes().is_empty()
    })
    .await;
    assert_eq!(
        api.lease_holder(LEASE).as_deref(),
        Some("pullahead-controller-6c8f-b")
    );
    assert_eq!(run.metrics.leader.get(), 1);
    let writes = api.prefetch_writes();
    assert_eq!(
        images_of(&writes[0]).len(),
        3,
        "the standby kept the plan it folded"
    );

    run.stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), run.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn dry_run_records_decisions_and_makes_no_write_calls() {
    let api = FakeApi::new();
    api.add_node(
        "ip-10-0-12-34.ec2.internal",
        "9b2f6c1e-58d3-4b8a-a1f0-3c5e7d9f1a2b",
    );
    let dir = tempfile::tempdir().unwrap();
    let decisions = dir.path().join("decisions.jsonl");
    let run = start(&api, config(true, Some(decisions.clone())));
    for e in scale_up_events() {
        run.events.send(e).await.unwrap();
    }
    wait_until("the decisions", Duration::from_secs(5), || {
        std::fs::read_to_string(&decisions)
            .map(|t| t.lines().count() == 3)
            .unwrap_or(false)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    run.stop.send(true).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(10), run.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.orders, 3);
    assert_eq!(summary.writes, 0);
    let writes = api.writes.lock().unwrap().clone();
    assert!(writes.is_empty(), "dry run made write calls: {writes:?}");
    assert!(
        run.health.ready(),
        "a dry run takes no Lease and is ready once synced"
    );

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&decisions)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: BTreeSet<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["node"].as_str().unwrap().to_string(),
                l["image"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        BTreeSet::from([
            (
                "nodeclaim/default-x7k2p".into(),
                "docker.io/library/nginx:1.27".into()
            ),
            (
                "nodeclaim/default-x7k2p".into(),
                "registry.example.com/shop/web:1.4.2".into()
            ),
            (
                "nodeclaim/default-x7k2p".into(),
                "registry.example.com/shop/worker:2.0.0".into()
            ),
        ])
    );
    for l in &lines {
        assert_eq!(l["policy"], "nominated");
        assert_eq!(l["reason"], "nominated");
        assert!(
            l["ts"].as_f64().unwrap() > 1.7e9,
            "live decisions carry wall-clock time"
        );
    }
}

fn node_event(node: &str, phase: NodePhase) -> Event {
    Event::new(
        101.0,
        Node {
            node: node.into(),
            phase,
            pool: Some("default".into()),
            labels: Default::default(),
            taints: None,
            images: None,
        },
    )
}

/// Claim before Node: the NodeClaim names its node before the API shows
/// the Node. The plan is kept (not dropped) and written once the Node
/// appears.
#[tokio::test]
async fn a_plan_whose_node_is_not_visible_yet_is_kept_until_it_appears() {
    let api = FakeApi::new();
    let run = start(&api, config(false, None));
    wait_until("the Lease", Duration::from_secs(5), || {
        api.lease_holder(LEASE).is_some()
    })
    .await;
    for e in scale_up_events() {
        run.events.send(e).await.unwrap();
    }
    wait_until("the failed node lookup", Duration::from_secs(5), || {
        run.metrics
            .nodeprefetch_writes
            .with_label_values(&["node-pending"])
            .get()
            >= 1
    })
    .await;
    assert!(api.prefetch_writes().is_empty());
    assert_eq!(run.metrics.plans_awaiting_node.get(), 1);
    // The Node becomes visible, and its watch event arrives.
    api.add_node(NODE, "9b2f6c1e-58d3-4b8a-a1f0-3c5e7d9f1a2b");
    run.events
        .send(node_event(NODE, NodePhase::Registered))
        .await
        .unwrap();
    wait_until("the write", Duration::from_secs(5), || {
        !api.prefetch_writes().is_empty()
    })
    .await;
    let writes = api.prefetch_writes();
    assert_eq!(images_of(&writes[0]).len(), 3, "nothing was lost");
    assert_eq!(run.metrics.plans_awaiting_node.get(), 0);
    run.stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), run.task)
        .await
        .unwrap()
        .unwrap();
}

/// A kept plan goes when its claim is deleted before the Node ever showed.
#[tokio::test]
async fn a_kept_plan_is_dropped_when_its_claim_is_deleted() {
    let api = FakeApi::new();
    let run = start(&api, config(false, None));
    wait_until("the Lease", Duration::from_secs(5), || {
        api.lease_holder(LEASE).is_some()
    })
    .await;
    for e in scale_up_events() {
        run.events.send(e).await.unwrap();
    }
    wait_until("the kept plan", Duration::from_secs(5), || {
        run.metrics.plans_awaiting_node.get() == 1
    })
    .await;
    run.events
        .send(claim("default-x7k2p", ClaimPhase::Deleted, None))
        .await
        .unwrap();
    wait_until("the plan dropped", Duration::from_secs(5), || {
        run.metrics.plans_awaiting_node.get() == 0
    })
    .await;
    // The Node showing up later writes nothing: the plan is gone.
    api.add_node(NODE, "9b2f6c1e-58d3-4b8a-a1f0-3c5e7d9f1a2b");
    run.events
        .send(node_event(NODE, NodePhase::Registered))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(api.prefetch_writes().is_empty());
    run.stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), run.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_failed_write_is_retried_with_backoff() {
    let api = FakeApi::new();
    api.add_node(
        "ip-10-0-12-34.ec2.internal",
        "9b2f6c1e-58d3-4b8a-a1f0-3c5e7d9f1a2b",
    );
    *api.fail_writes.lock().unwrap() = 2;
    let run = start(&api, config(false, None));
    wait_until("the Lease", Duration::from_secs(5), || {
        api.lease_holder(LEASE).is_some()
    })
    .await;
    for e in scale_up_events() {
        run.events.send(e).await.unwrap();
    }
    wait_until("the third attempt", Duration::from_secs(10), || {
        run.metrics
            .nodeprefetch_writes
            .with_label_values(&["ok"])
            .get()
            == 1
    })
    .await;
    assert_eq!(
        run.metrics
            .nodeprefetch_writes
            .with_label_values(&["error"])
            .get(),
        2
    );
    let attempts = api.prefetch_writes();
    assert_eq!(attempts.len(), 3);
    // 1 s, then 2 s between attempts: not a tight loop.
    let gap1 = attempts[1].at - attempts[0].at;
    let gap2 = attempts[2].at - attempts[1].at;
    assert!(gap1 >= Duration::from_millis(900), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(1900), "{gap2:?}");
    assert_eq!(images_of(&attempts[2]).len(), 3);
    run.stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), run.task)
        .await
        .unwrap()
        .unwrap();
}
