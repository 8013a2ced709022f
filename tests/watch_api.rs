//! Watchers against a scripted API (tower-test mock, and one real
//! `kube::Client` over HTTP): lists, watches, relists after 410 Gone,
//! absent Karpenter CRDs, NodeClaim conditions and every Event reason.

#[path = "ops_common/mod.rs"]
mod common;

use std::time::Duration;

use common::fake_api::{FakeApi, mock_client, serve_http};
use common::objects::*;
#[allow(unused_imports)]
use common::script::*;
use pullahead::bus::memory::InProcessBus;
use pullahead::bus::{Bus, Subscription};
use pullahead::clock::SystemClock;
use pullahead::event::{Autoscaler, Body, ClaimPhase, Event, NodePhase, PodPhase};
use pullahead::watch::{self, Kind, Readiness, Stats};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const NODES: &str = "/api/v1/nodes";
const PODS: &str = "/api/v1/pods";
const CLAIMS: &str = "/apis/karpenter.sh/v1/nodeclaims";
const POOLS: &str = "/apis/karpenter.sh/v1/nodepools";
const BUFFERS: &str = "/apis/autoscaling.x-k8s.io/v1beta1/capacitybuffers";

fn events_route(reason: &str) -> String {
    format!("/api/v1/events?fieldSelector=reason={reason}")
}

/// A watch run on a bus, with a handle to stop it.
struct Run {
    sub: Box<dyn Subscription>,
    ready: Readiness,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<watch::Result<Stats>>,
    seen: Vec<Event>,
}

impl Run {
    fn start(client: kube::Client, kinds: Vec<Kind>) -> Self {
        let bus = InProcessBus::new(10_000).unwrap();
        let sub = bus.subscribe().unwrap();
        let ready = Readiness::new(&kinds);
        let (stop, stopped) = oneshot::channel::<()>();
        let config = watch::Config {
            kinds,
            page_size: None,
        };
        let r = ready.clone();
        let task = tokio::spawn(async move {
            watch::run(client, &config, &bus, &SystemClock, r, async {
                let _ = stopped.await;
            })
            .await
        });
        Self {
            sub,
            ready,
            stop: Some(stop),
            task,
            seen: Vec::new(),
        }
    }

    /// Receives events until `done` holds for everything seen so far.
    async fn until(&mut self, what: &str, done: impl Fn(&[Event]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.sub.next()).await {
                Ok(Some(d)) => self.seen.push(d.unwrap().event),
                Ok(None) => panic!("bus closed before {what}; seen {:#?}", self.seen),
                Err(_) => panic!("timed out waiting for {what}; seen {:#?}", self.seen),
            }
        }
    }

    /// Collects whatever else arrives within `quiet`.
    async fn drain(&mut self, quiet: Duration) {
        while let Ok(Some(d)) = tokio::time::timeout(quiet, self.sub.next()).await {
            self.seen.push(d.unwrap().event);
        }
    }

    async fn stop(mut self) -> (Stats, Vec<Event>) {
        let _ = self.stop.take().unwrap().send(());
        let stats = self.task.await.unwrap().unwrap();
        (stats, self.seen)
    }
}

fn node_phases(events: &[Event]) -> Vec<(String, NodePhase)> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            Body::Node(n) => Some((n.node.clone(), n.phase)),
            _ => None,
        })
        .collect()
}

fn np(name: &str, p: NodePhase) -> (String, NodePhase) {
    (name.to_string(), p)
}

#[tokio::test]
async fn initial_list_then_watch() {
    let api = FakeApi::new();
    api.list(
        NODES,
        200,
        list(
            "v1",
            "Node",
            "100",
            vec![
                node("node-a", "90", true, "general"),
                node("node-b", "95", false, "general"),
            ],
        ),
    )
    .watch(
        NODES,
        vec![
            ev("MODIFIED", node("node-b", "101", true, "general")),
            ev("ADDED", node("node-c", "102", false, "gpu")),
            ev("DELETED", node("node-a", "103", true, "general")),
        ],
        true,
    );
    api.list(
        PODS,
        200,
        list(
            "v1",
            "Pod",
            "100",
            vec![pod("shop", "web-7d9c5b8f4-abcde", "99", "web", None)],
        ),
    )
    .watch(
        PODS,
        vec![ev(
            "MODIFIED",
            pod("shop", "web-7d9c5b8f4-abcde", "104", "web", Some("node-b")),
        )],
        true,
    );

    let mut run = Run::start(mock_client(api.clone()), vec![Kind::Node, Kind::Pod]);
    run.until("the watch changes", |s| {
        node_phases(s).len() >= 6
            && s.iter().filter(|e| matches!(e.body, Body::Pod(_))).count() >= 2
    })
    .await;
    assert!(run.ready.is_ready());
    run.drain(Duration::from_millis(300)).await;
    let (stats, seen) = run.stop().await;

    assert_eq!(
        node_phases(&seen),
        vec![
            np("node-a", NodePhase::Registered),
            np("node-a", NodePhase::Ready),
            np("node-b", NodePhase::Registered),
            np("node-b", NodePhase::Ready),
            np("node-c", NodePhase::Registered),
            np("node-a", NodePhase::Deleted),
        ]
    );
    let pods: Vec<_> = seen
        .iter()
        .filter_map(|e| match &e.body {
            Body::Pod(p) => Some((
                p.pod.clone(),
                p.phase,
                p.node.clone(),
                p.workload.clone(),
                p.images.clone(),
            )),
            _ => None,
        })
        .collect();
    let img = vec!["registry.example.com/web:1.4.2".to_string()];
    assert_eq!(
        pods,
        vec![
            (
                "shop/web-7d9c5b8f4-abcde".into(),
                PodPhase::Pending,
                None,
                Some("shop/web".into()),
                img.clone()
            ),
            (
                "shop/web-7d9c5b8f4-abcde".into(),
                PodPhase::Scheduled,
                Some("node-b".into()),
                Some("shop/web".into()),
                img
            ),
        ]
    );
    // Events leave in time order, and the pool comes from the Karpenter label.
    assert!(seen.windows(2).all(|w| w[0].ts <= w[1].ts));
    assert!(seen.iter().any(|e| matches!(&e.body, Body::Node(n) if n.node == "node-c" && n.pool.as_deref() == Some("gpu"))));
    // The watch resumed from the list's resource version.
    let reqs = api.scripted_requests();
    assert!(
        reqs.iter().any(|r| r.starts_with("GET /api/v1/nodes?")
            && r.contains("watch=true")
            && r.contains("resourceVersion=100")),
        "{reqs:#?}"
    );
    assert_eq!(stats.lists, 2);
    assert_eq!(stats.relist_deletes, 0);
}

#[tokio::test]
async fn not_ready_until_every_kind_is_listed() {
    let api = FakeApi::new();
    api.list(
        NODES,
        200,
        list(
            "v1",
            "Node",
            "10",
            vec![node("node-a", "9", true, "general")],
        ),
    );
    // The pods list fails first (as during an API server restart), then works.
    api.list(PODS, 500, json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"etcdserver: leader changed","reason":"InternalError","code":500}))
        .list(PODS, 200, list("v1", "Pod", "11", vec![]));
    let mut run = Run::start(mock_client(api), vec![Kind::Node, Kind::Pod]);
    run.until("the node", |s| node_phases(s).len() >= 2).await;
    assert!(!run.ready.is_ready(), "ready before the pods were listed");
    assert_eq!(run.ready.pending(), vec![Kind::Pod]);
    tokio::time::timeout(Duration::from_secs(20), run.ready.wait())
        .await
        .expect("ready after the retry");
    assert!(run.ready.pending().is_empty());
    let (stats, _) = run.stop().await;
    assert!(stats.watch_errors >= 1);
}

#[tokio::test]
async fn gone_mid_watch_then_relist_yields_the_deletes() {
    let api = FakeApi::new();
    api.list(
        NODES,
        200,
        list(
            "v1",
            "Node",
            "10",
            vec![
                node("node-a", "5", true, "general"),
                node("node-b", "6", true, "general"),
                node("node-c", "7", true, "general"),
            ],
        ),
    )
    // The watch sees one change, then the server says the version is gone.
    .watch(
        NODES,
        vec![
            ev("MODIFIED", node("node-c", "11", true, "general")),
            gone(),
        ],
        false,
    )
    // While nobody watched: node-b was deleted and node-d joined.
    .list(
        NODES,
        200,
        list(
            "v1",
            "Node",
            "20",
            vec![
                node("node-a", "5", true, "general"),
                node("node-c", "11", true, "general"),
                node("node-d", "18", true, "general"),
            ],
        ),
    )
    .watch(NODES, vec![], true);

    let mut run = Run::start(mock_client(api), vec![Kind::Node]);
    run.until("the relist", |s| {
        node_phases(s).contains(&np("node-b", NodePhase::Deleted))
    })
    .await;
    run.drain(Duration::from_millis(500)).await;
    let (stats, seen) = run.stop().await;
    assert_eq!(
        node_phases(&seen),
        vec![
            np("node-a", NodePhase::Registered),
            np("node-a", NodePhase::Ready),
            np("node-b", NodePhase::Registered),
            np("node-b", NodePhase::Ready),
            np("node-c", NodePhase::Registered),
            np("node-c", NodePhase::Ready),
            np("node-d", NodePhase::Registered),
            np("node-d", NodePhase::Ready),
            np("node-b", NodePhase::Deleted),
        ],
        "exactly the changes: node-a and node-c are not repeated"
    );
    assert_eq!(stats.lists, 2);
    assert_eq!(stats.relist_deletes, 1);
    assert_eq!(stats.unchanged, 2, "node-a and node-c relisted unchanged");
    assert!(stats.watch_errors >= 1);
}

#[tokio::test]
async fn absent_crds_are_logged_once_and_skipped() {
    let api = FakeApi::new();
    // No route for nodeclaims, nodepools or capacitybuffers: the API answers
    // 404 as for a missing CRD.
    api.list(
        NODES,
        200,
        list(
            "v1",
            "Node",
            "10",
            vec![node("node-a", "9", true, "general")],
        ),
    );
    let mut run = Run::start(
        mock_client(api.clone()),
        vec![
            Kind::Node,
            Kind::NodeClaim,
            Kind::NodePool,
            Kind::CapacityBuffer,
        ],
    );
    tokio::time::timeout(Duration::from_secs(10), run.ready.wait())
        .await
        .expect("ready without the CRDs");
    run.until("the node", |s| node_phases(s).len() >= 2).await;
    // Give a spinning watcher time to show itself.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (stats, seen) = run.stop().await;
    let mut absent = stats.absent.clone();
    absent.sort();
    assert_eq!(
        absent,
        vec![Kind::NodeClaim, Kind::NodePool, Kind::CapacityBuffer]
    );
    // Nothing else changes: the node's events, and only those.
    assert_eq!(
        node_phases(&seen),
        vec![
            np("node-a", NodePhase::Registered),
            np("node-a", NodePhase::Ready)
        ]
    );
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(stats.watch_errors, 0, "an absent CRD is no watch error");
    let reqs = api.scripted_requests();
    for path in [CLAIMS, POOLS, BUFFERS] {
        let n = reqs
            .iter()
            .filter(|r| r.starts_with(&format!("GET {path}")))
            .count();
        assert_eq!(n, 1, "{path} asked {n} times: {reqs:#?}");
    }
}

#[tokio::test]
async fn node_claim_moves_launched_registered_initialized() {
    let api = FakeApi::new();
    api.list(
        CLAIMS,
        200,
        list(
            "karpenter.sh/v1",
            "NodeClaim",
            "50",
            vec![node_claim("general-x8k2p", "40", "general", &[], None)],
        ),
    )
    .watch(
        CLAIMS,
        vec![
            ev(
                "MODIFIED",
                node_claim("general-x8k2p", "51", "general", &["Launched"], None),
            ),
            ev(
                "MODIFIED",
                node_claim(
                    "general-x8k2p",
                    "52",
                    "general",
                    &["Launched", "Registered"],
                    Some("ip-10-0-1-5.eu-west-1.compute.internal"),
                ),
            ),
            // A re-send of the same state changes nothing.
            ev(
                "MODIFIED",
                node_claim(
                    "general-x8k2p",
                    "53",
                    "general",
                    &["Launched", "Registered"],
                    Some("ip-10-0-1-5.eu-west-1.compute.internal"),
                ),
            ),
            ev(
                "MODIFIED",
                node_claim(
                    "general-x8k2p",
                    "54",
                    "general",
                    &["Launched", "Registered", "Initialized"],
                    Some("ip-10-0-1-5.eu-west-1.compute.internal"),
                ),
            ),
        ],
        true,
    );
    api.list(
        POOLS,
        200,
        list("karpenter.sh/v1", "NodePool", "50", vec![]),
    );
    let mut run = Run::start(mock_client(api), vec![Kind::NodeClaim, Kind::NodePool]);
    let claims = |s: &[Event]| -> Vec<(ClaimPhase, Option<String>, String)> {
        s.iter()
            .filter_map(|e| match &e.body {
                Body::NodeClaim(c) => Some((c.phase, c.node.clone(), c.pool.clone())),
                _ => None,
            })
            .collect()
    };
    run.until("initialized", |s| {
        claims(s).iter().any(|c| c.0 == ClaimPhase::Initialized)
    })
    .await;
    run.drain(Duration::from_millis(300)).await;
    assert!(run.ready.is_ready());
    let (_, seen) = run.stop().await;
    let node = Some("ip-10-0-1-5.eu-west-1.compute.internal".to_string());
    assert_eq!(
        claims(&seen),
        vec![
            (ClaimPhase::Created, None, "general".into()),
            (ClaimPhase::Launched, None, "general".into()),
            (ClaimPhase::Registered, node.clone(), "general".into()),
            (ClaimPhase::Initialized, node, "general".into()),
        ]
    );
}

#[tokio::test]
async fn every_event_reason_is_watched_and_normalised() {
    let api = FakeApi::new();
    let pod_ref = ("Pod", "shop", "web-7d9c5b8f4-abcde");
    api.list(
        PODS,
        200,
        list(
            "v1",
            "Pod",
            "100",
            vec![pod("shop", "web-7d9c5b8f4-abcde", "99", "web", None)],
        ),
    );
    // Nominated and TriggeredScaleUp arrive in the lists, the others by watch.
    api.list(
        &events_route("Nominated"),
        200,
        list(
            "v1",
            "Event",
            "100",
            vec![kube_event(
                "web-7d9c5b8f4-abcde.18a1",
                "101",
                "Nominated",
                "Pod should schedule on: nodeclaim/general-x8k2p",
                pod_ref,
                "karpenter",
                None,
            )],
        ),
    );
    api.list(
        &events_route("TriggeredScaleUp"),
        200,
        list(
            "v1",
            "Event",
            "100",
            vec![kube_event(
                "web-7d9c5b8f4-abcde.18a2",
                "102",
                "TriggeredScaleUp",
                "pod triggered scale-up: [{eks-general-1 3->6 (max: 10)}]",
                pod_ref,
                "cluster-autoscaler",
                None,
            )],
        ),
    );
    api.list(
        &events_route("ScaledUpGroup"),
        200,
        list("v1", "Event", "100", vec![]),
    )
    .watch(
        &events_route("ScaledUpGroup"),
        vec![ev(
            "ADDED",
            kube_event(
                "cluster-autoscaler-status.18a3",
                "103",
                "ScaledUpGroup",
                "Scale-up: setting group eks-general-1 size to 6 instead of 3 (max: 10)",
                ("ConfigMap", "kube-system", "cluster-autoscaler-status"),
                "cluster-autoscaler",
                None,
            ),
        )],
        true,
    );
    api.list(
        &events_route("NotTriggerScaleUp"),
        200,
        list("v1", "Event", "100", vec![]),
    )
    .watch(
        &events_route("NotTriggerScaleUp"),
        vec![ev(
            "ADDED",
            kube_event(
                "web-7d9c5b8f4-abcde.18a4",
                "104",
                "NotTriggerScaleUp",
                "pod didn't trigger scale-up: 1 max node group size reached",
                pod_ref,
                "cluster-autoscaler",
                None,
            ),
        )],
        true,
    );
    api.list(&events_route("Pulled"), 200, list("v1", "Event", "100", vec![]))
        .watch(&events_route("Pulled"), vec![ev("ADDED", kube_event(
            "web-7d9c5b8f4-abcde.18a5", "105", "Pulled",
            "Successfully pulled image \"registry.example.com/web:1.4.2\" in 2.5s (2.5s including waiting). Image size: 52428800 bytes.",
            pod_ref, "kubelet", Some("ip-10-0-1-5.eu-west-1.compute.internal")))], true);

    let mut kinds = vec![Kind::Pod];
    kinds.extend(watch::EVENT_REASONS.iter().map(|r| Kind::Event(r)));
    let mut run = Run::start(mock_client(api.clone()), kinds);
    let has = |s: &[Event], f: &dyn Fn(&Body) -> bool| s.iter().any(|e| f(&e.body));
    run.until("every reason's event", |s| {
        has(
            s,
            &|b| matches!(b, Body::Pod(p) if p.phase == PodPhase::Nominated),
        ) && has(s, &|b| matches!(b, Body::ScaleUp(u) if u.pods.is_some()))
            && has(s, &|b| matches!(b, Body::ScaleUp(u) if u.pods.is_none()))
            && has(s, &|b| matches!(b, Body::Pull(_)))
    })
    .await;
    run.drain(Duration::from_millis(500)).await;
    let (stats, seen) = run.stop().await;

    let nominated = seen.iter().find_map(|e| match &e.body {
        Body::Pod(p) if p.phase == PodPhase::Nominated => Some(p.clone()),
        _ => None,
    });
    let nominated = nominated.unwrap();
    assert_eq!(nominated.pod, "shop/web-7d9c5b8f4-abcde");
    assert_eq!(nominated.node_claim.as_deref(), Some("general-x8k2p"));
    let ups: Vec<_> = seen
        .iter()
        .filter_map(|e| match &e.body {
            Body::ScaleUp(u) => Some(u.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ups.len(), 2, "{ups:#?}");
    for u in &ups {
        assert_eq!(
            (u.source, u.group.as_str(), u.from, u.to),
            (Autoscaler::ClusterAutoscaler, "eks-general-1", 3, 6)
        );
    }
    let pull = seen.iter().find_map(|e| match &e.body {
        Body::Pull(p) => Some(p.clone()),
        _ => None,
    });
    let pull = pull.unwrap();
    assert_eq!(pull.node, "ip-10-0-1-5.eu-west-1.compute.internal");
    assert_eq!(pull.image, "registry.example.com/web:1.4.2");
    assert_eq!(pull.bytes, Some(52_428_800));
    assert!(!pull.cached);
    // NotTriggerScaleUp is watched but carries nothing to prefetch.
    assert_eq!(
        seen.iter()
            .filter(|e| matches!(e.body, Body::ScaleUp(_)))
            .count(),
        2
    );
    // One watcher per reason, each with its field selector.
    let reqs = api.scripted_requests();
    for reason in watch::EVENT_REASONS {
        assert!(
            reqs.iter().any(|r| r.starts_with("GET /api/v1/events?")
                && r.contains(&format!("fieldSelector=reason%3D{reason}"))),
            "no request for reason {reason}: {reqs:#?}"
        );
    }
    assert_eq!(stats.normalize_errors, 0);
}

/// A real `kube::Client` from a kubeconfig file, over HTTP to a server in
/// this test: catches TLS provider and client-construction mistakes that the
/// mock service hides.
#[tokio::test]
async fn a_real_client_from_a_kubeconfig_lists_and_watches_nodes() {
    let api = FakeApi::new();
    api.list(
        NODES,
        200,
        list(
            "v1",
            "Node",
            "100",
            vec![node("node-a", "90", true, "general")],
        ),
    )
    .watch(
        NODES,
        vec![ev("ADDED", node("node-b", "101", false, "general"))],
        true,
    );
    let port = serve_http(api.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = kubeconfig_in(dir.path(), loopback(port), "default");

    watch::client::install_crypto_provider();
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let info = client.apiserver_version().await.unwrap();
    assert_eq!(info.git_version, "v1.33.1");

    let mut run = Run::start(client, vec![Kind::Node]);
    run.until("node-b", |s| {
        node_phases(s).contains(&np("node-b", NodePhase::Registered))
    })
    .await;
    let (_, seen) = run.stop().await;
    assert_eq!(
        node_phases(&seen),
        vec![
            np("node-a", NodePhase::Registered),
            np("node-a", NodePhase::Ready),
            np("node-b", NodePhase::Registered)
        ]
    );
    assert!(
        api.scripted_requests()
            .iter()
            .any(|r| r.contains("watch=true"))
    );
}
