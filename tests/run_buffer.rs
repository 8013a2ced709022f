//! A CapacityBuffer over HTTP, end to end: `pullahead run` with the cluster
//! watchers on a real `kube::Client` from a kubeconfig, the one API double
//! of `ops_common` serving, from its script, a CapacityBuffer (`autoscaling.x-k8s.io/v1beta1`) that
//! names a PodTemplate, and the stateful fake of `ops_common` answering the
//! Lease, the Node lookup and the `NodePrefetch` apply. A NodeClaim created
//! while the buffer is unmet, and its node, must get a `NodePrefetch` with
//! the template's images, reason `buffer`, though no pod names them.

#[path = "ops_common/mod.rs"]
mod ops;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ops::fake_api::{FakeApi, serve_http};
use ops::objects::*;
use pullahead::config::{Config, PolicyName, RunArgs};
use pullahead::metrics::{Health, Metrics};
use serde_json::{Value, json};
use tokio::sync::watch;

const IDENTITY: &str = "pullahead-controller-6c8f-b";
const CLAIM: &str = "general-q4w7z";
const NODE: &str = "ip-10-0-2-9.eu-west-1.compute.internal";
const IMAGES: [&str; 2] = [
    "registry.example.com/checkout:3.1.0",
    "registry.example.com/istio-proxy:1.26.1",
];

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

/// A PodTemplate as `kubectl get podtemplate -o json` shows it.
fn pod_template(ns: &str, name: &str, rv: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PodTemplate",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "resourceVersion": rv,
                     "creationTimestamp": "2025-06-01T09:00:00Z"},
        "template": {
            "metadata": {"labels": {"app": "checkout"}},
            "spec": {
                "initContainers": [{"name": "istio-init", "image": IMAGES[1]}],
                "containers": [{"name": "checkout", "image": IMAGES[0],
                                "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}}}],
                "nodeSelector": {"karpenter.sh/nodepool": "general"}
            }
        }
    })
}

/// A CapacityBuffer as cluster-autoscaler's buffer controller leaves it:
/// the spec names the PodTemplate, the status has counted the chunks.
fn capacity_buffer(ns: &str, name: &str, rv: &str, template: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "autoscaling.x-k8s.io/v1beta1", "kind": "CapacityBuffer",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "resourceVersion": rv,
                     "generation": 1, "creationTimestamp": "2025-06-01T09:00:01Z"},
        "spec": {"provisioningStrategy": "buffer.x-k8s.io/active-capacity",
                 "podTemplateRef": {"name": template}, "replicas": replicas},
        "status": {"podTemplateRef": {"name": template}, "replicas": replicas, "podTemplateGeneration": 1,
                   "provisioningStrategy": "buffer.x-k8s.io/active-capacity",
                   "conditions": [{"type": "ReadyForProvisioning", "status": "True", "reason": "AttributesSetSuccessfully",
                                   "message": "ready", "lastTransitionTime": "2025-06-01T09:00:02Z", "observedGeneration": 1}]}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_default_policy_a_claim_made_while_a_buffer_is_short_gets_the_template() {
    claim_while_short(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_predictive_a_claim_made_while_a_buffer_is_short_gets_the_template() {
    claim_while_short(Some(PolicyName::Predictive)).await;
}

/// The run for `policy` (the default `nominated` when `None`).
async fn claim_while_short(policy: Option<PolicyName>) {
    // The claim and its node wait for `go`, after the lists are in.
    let (open_go, go) = watch::channel(false);
    let api = FakeApi::new();
    for (route, group, kind) in [
        ("/api/v1/pods", "v1", "Pod"),
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
        (
            "/apis/karpenter.sh/v1/nodepools",
            "karpenter.sh/v1",
            "NodePool",
        ),
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
    api.list(
        "/api/v1/podtemplates",
        200,
        list(
            "v1",
            "PodTemplate",
            "100",
            vec![pod_template("shop", "checkout-chunk", "90")],
        ),
    );
    api.list(
        "/apis/autoscaling.x-k8s.io/v1beta1/capacitybuffers",
        200,
        list(
            "autoscaling.x-k8s.io/v1beta1",
            "CapacityBuffer",
            "100",
            vec![capacity_buffer(
                "shop",
                "checkout-spare",
                "91",
                "checkout-chunk",
                2,
            )],
        ),
    );
    empty(
        &api,
        "/apis/karpenter.sh/v1/nodeclaims",
        "karpenter.sh/v1",
        "NodeClaim",
    );
    api.watch_gated(
        "/apis/karpenter.sh/v1/nodeclaims",
        vec![
            ev("ADDED", node_claim(CLAIM, "101", "general", &[], None)),
            ev(
                "MODIFIED",
                node_claim(
                    CLAIM,
                    "102",
                    "general",
                    &["Launched", "Registered"],
                    Some(NODE),
                ),
            ),
        ],
        true,
        go.clone(),
    );
    empty(&api, "/api/v1/nodes", "v1", "Node");
    api.watch_gated(
        "/api/v1/nodes",
        vec![ev("ADDED", node(NODE, "103", false, "general"))],
        true,
        go,
    );

    // Leases, the Node's uid and the NodePrefetch apply: the fake's state
    // answers what the script does not.
    api.add_node(NODE, "7e2f3a4b-1c2d-4e5f-8a9b-0c1d2e3f4a5b");
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
        policy,
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
    // Leader first: the metrics server is up by then.
    wait_until("the Lease", Duration::from_secs(5), async || {
        state.lease_holder("pullahead-controller").as_deref() == Some(IDENTITY)
    })
    .await;
    wait_until("/readyz", Duration::from_secs(10), async || {
        ops::http_get(metrics_addr, "/readyz").await.0 == 200
    })
    .await;
    // A buffer alone orders nothing: no node is coming yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        state.prefetch_writes().is_empty(),
        "{:?}",
        state.prefetch_writes()
    );

    open_go.send(true).unwrap();
    let want: BTreeSet<String> = IMAGES.map(String::from).into();
    let written = || -> Vec<Value> {
        state
            .prefetches
            .lock()
            .unwrap()
            .get(NODE)
            .and_then(|o| o["spec"]["images"].as_array().cloned())
            .unwrap_or_default()
    };
    wait_until(
        "the NodePrefetch with the template's images",
        Duration::from_secs(10),
        async || {
            let got: BTreeSet<String> = written()
                .iter()
                .filter_map(|i| i["image"].as_str().map(String::from))
                .collect();
            want.is_subset(&got)
        },
    )
    .await;
    for i in written() {
        if want.contains(i["image"].as_str().unwrap()) {
            assert_eq!(i["reason"], "buffer", "{i}");
            // A readiness gate waits for the room's images too.
            assert_eq!(i["critical"], true, "{i}");
        }
    }
    let w = state.prefetch_writes();
    let w = w.last().unwrap();
    assert_eq!(
        w.path,
        format!("/apis/pullahead.io/v1alpha1/nodeprefetches/{NODE}")
    );
    // Both kinds were listed through the watch machinery.
    let reqs = api.scripted_requests();
    for path in [
        "/apis/autoscaling.x-k8s.io/v1beta1/capacitybuffers?",
        "/api/v1/podtemplates?",
    ] {
        assert!(
            reqs.iter().any(|r| r.starts_with(&format!("GET {path}"))),
            "{path} never listed: {reqs:#?}"
        );
    }

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run stops within 5 s")
        .unwrap()
        .unwrap();
}
