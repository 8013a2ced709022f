//! `pullahead run` fed by the cluster watchers, end to end over HTTP: a real
//! `kube::Client` from a kubeconfig, the watchers listing and watching the
//! scripted API of `common` (the watch tests' server), and the stateful fake
//! of `ops_common` answering the Lease, the Node lookup and the
//! `NodePrefetch` apply. A Karpenter NodeClaim gets two pending pods
//! nominated to it and then its node; the controller must write that node's
//! `NodePrefetch` with the pods' images, and `/readyz` must turn ready only
//! once the initial lists are in.

#[path = "ops_common/mod.rs"]
mod ops;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ops::fake_api::{FakeApi, serve_http};
use ops::objects::*;
use pullahead::config::{Config, RunArgs};
use pullahead::metrics::{Health, Metrics};
use serde_json::Value;
use tokio::sync::watch;

const IDENTITY: &str = "pullahead-controller-6c8f-b";
const CLAIM: &str = "general-x8k2p";
const NODE: &str = "ip-10-0-1-7.eu-west-1.compute.internal";

/// Waits until `f` holds, polling; panics with `what` after `timeout`.
async fn wait_until(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback port that was free a moment ago, for the metrics server.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn empty(api: &FakeApi, route: &str, api_version: &str, kind: &str) {
    api.list(route, 200, list(api_version, kind, "100", vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_nominations_become_a_node_prefetch_and_readyz_waits_for_the_lists() {
    // Gate `lists` holds the pod list back; gate `scale_up` holds the
    // nominations and the claim's registration until the lists are in, as
    // when a scale-up happens while the controller runs.
    let (open_lists, lists) = watch::channel(false);
    let (open_scale_up, scale_up) = watch::channel(false);

    let api = FakeApi::new();
    empty(&api, "/api/v1/nodes", "v1", "Node");
    for (route, group, kind) in [
        (
            "/apis/autoscaling/v2/horizontalpodautoscalers",
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
        ),
        ("/apis/apps/v1/deployments", "apps/v1", "Deployment"),
        ("/apis/apps/v1/statefulsets", "apps/v1", "StatefulSet"),
        ("/apis/apps/v1/daemonsets", "apps/v1", "DaemonSet"),
        ("/apis/apps/v1/replicasets", "apps/v1", "ReplicaSet"),
        ("/apis/batch/v1/jobs", "batch/v1", "Job"),
    ] {
        empty(&api, route, group, kind);
    }
    for reason in pullahead::watch::EVENT_REASONS {
        empty(
            &api,
            &format!("/api/v1/events?fieldSelector=reason={reason}"),
            "v1",
            "Event",
        );
    }
    // NodePools are not scripted: the fallback answers 404, as for a CRD
    // that is not installed, and readiness must not wait for them.
    api.list_gated(
        "/api/v1/pods",
        200,
        list(
            "v1",
            "Pod",
            "100",
            vec![
                pod("shop", "web-7d9c5b8f4-abcde", "97", "web", None),
                pod("shop", "worker-7d9c5b8f4-fghij", "98", "worker", None),
                // Already running elsewhere: not nominated, not planned.
                pod(
                    "shop",
                    "cart-7d9c5b8f4-klmno",
                    "99",
                    "cart",
                    Some("node-old"),
                ),
            ],
        ),
        lists.clone(),
    );
    api.list(
        "/apis/karpenter.sh/v1/nodeclaims",
        200,
        list(
            "karpenter.sh/v1",
            "NodeClaim",
            "100",
            vec![node_claim(CLAIM, "95", "general", &["Launched"], None)],
        ),
    )
    .watch_gated(
        "/apis/karpenter.sh/v1/nodeclaims",
        vec![ev(
            "MODIFIED",
            node_claim(
                CLAIM,
                "105",
                "general",
                &["Launched", "Registered"],
                Some(NODE),
            ),
        )],
        true,
        scale_up.clone(),
    );
    let nominated = |pod: &str, rv: &str| {
        ev(
            "ADDED",
            kube_event(
                &format!("{pod}.18a1"),
                rv,
                "Nominated",
                &format!("Pod should schedule on: nodeclaim/{CLAIM}"),
                ("Pod", "shop", pod),
                "karpenter",
                None,
            ),
        )
    };
    api.watch_gated(
        "/api/v1/events?fieldSelector=reason=Nominated",
        vec![
            nominated("web-7d9c5b8f4-abcde", "101"),
            nominated("worker-7d9c5b8f4-fghij", "102"),
        ],
        true,
        scale_up,
    );

    // Leases, the Node's uid and the NodePrefetch apply: the fake's state
    // answers what the script does not.
    api.add_node(NODE, "5c1d2e3f-0a1b-4c2d-8e3f-405162738495");
    let state = api.clone();
    let port = serve_http(api.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = kubeconfig_in(dir.path(), loopback(port), "default");
    pullahead::watch::client::install_crypto_provider();
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();

    let metrics_addr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let cfg = Config::resolve(&RunArgs {
        metrics_addr: Some(metrics_addr),
        identity: Some(IDENTITY.into()),
        lease_namespace: Some("pullahead".into()),
        lease_duration: Some(2.0),
        lease_retry: Some(0.1),
        ..RunArgs::default()
    })
    .unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let metrics = Metrics::new().unwrap();
    let health = Health::new();
    let task = tokio::spawn(pullahead::run::run_with(
        cfg,
        Some(client),
        None,
        stop_rx,
        metrics.clone(),
        health.clone(),
    ));

    // Leader, and the pod list asked for but not answered: not ready.
    wait_until("the Lease", Duration::from_secs(5), async || {
        state.lease_holder("pullahead-controller").as_deref() == Some(IDENTITY)
    })
    .await;
    wait_until("the pod list request", Duration::from_secs(5), async || {
        api.scripted_requests()
            .iter()
            .any(|r| r.starts_with("GET /api/v1/pods?") && !r.contains("watch=true"))
    })
    .await;
    let (status, body) = ops::http_get(metrics_addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("synced=false"), "{body}");
    assert!(!health.ready());

    open_lists.send(true).unwrap();
    wait_until("/readyz", Duration::from_secs(5), async || {
        ops::http_get(metrics_addr, "/readyz").await.0 == 200
    })
    .await;
    assert!(
        state.prefetch_writes().is_empty(),
        "nothing is nominated yet: {:?}",
        state.prefetch_writes()
    );

    open_scale_up.send(true).unwrap();
    let want: BTreeSet<String> = [
        "registry.example.com/web:1.4.2",
        "registry.example.com/worker:1.4.2",
    ]
    .map(String::from)
    .into();
    let images_written = || -> BTreeSet<String> {
        state
            .prefetches
            .lock()
            .unwrap()
            .get(NODE)
            .and_then(|o| o["spec"]["images"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|i| i["image"].as_str().map(String::from))
            .collect()
    };
    wait_until(
        "the NodePrefetch with both images",
        Duration::from_secs(5),
        async || images_written() == want,
    )
    .await;

    let writes = state.prefetch_writes();
    let w = writes.last().unwrap();
    assert_eq!(w.method, "PATCH", "server-side apply");
    assert_eq!(
        w.path,
        format!("/apis/pullahead.io/v1alpha1/nodeprefetches/{NODE}")
    );
    assert!(w.query.contains("fieldManager=pullahead"), "{}", w.query);
    assert_eq!(w.body["kind"], "NodePrefetch");
    assert_eq!(
        w.body["metadata"]["ownerReferences"][0]["uid"],
        Value::from("5c1d2e3f-0a1b-4c2d-8e3f-405162738495")
    );
    for i in w.body["spec"]["images"].as_array().unwrap() {
        assert_eq!(i["reason"], "nominated", "{i}");
    }

    stop.send(true).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run stops within 5 s")
        .unwrap()
        .unwrap();
    assert!(summary.writes >= 1, "{summary:?}");
    assert_eq!(
        metrics
            .events_dropped
            .with_label_values(&["queue-full"])
            .get(),
        0
    );
    // The Lease is given back on the way out.
    assert_eq!(state.lease_holder("pullahead-controller"), None);
}
