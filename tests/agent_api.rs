//! The agent's Kubernetes side against the tower-test mock API server:
//! status batching, the status subresource patch, taint release and
//! imagePullSecrets discovery. Time is paused so that intervals are exact.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use pullahead::dispatch::agent::{self, StatusWriter};
use pullahead::dispatch::crd::{ImageOrder, ImageStatus, NodePrefetch, PullState};
use pullahead::dispatch::puller::Board;
use serde_json::{Value, json};
use support::kube_mock::{Reply, Seen};

mod support;
use tokio::sync::watch;

type JsonHandler = Box<dyn FnMut(&Seen) -> (u16, Value) + Send>;

/// The mock API with a handler that always answers JSON.
fn mock_api(mut h: JsonHandler) -> (kube::Client, Arc<Mutex<Vec<Seen>>>) {
    support::kube_mock::mock_api(Box::new(move |s| {
        let (code, v) = h(s);
        Reply::Json(code, v)
    }))
}

fn npf_json(name: &str) -> Value {
    json!({"apiVersion": "pullahead.io/v1alpha1", "kind": "NodePrefetch",
           "metadata": {"name": name, "resourceVersion": "2"}, "spec": {"images": []}})
}

fn order(image: &str, critical: bool) -> ImageOrder {
    ImageOrder {
        image: image.into(),
        priority: 1,
        reason: "nominated".into(),
        deadline: None,
        critical,
    }
}

fn st(image: &str, state: PullState) -> ImageStatus {
    ImageStatus {
        image: image.into(),
        state,
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn status_writes_are_batched_to_one_per_interval_on_the_status_subresource() {
    let (client, seen) = mock_api(Box::new(|_| (200, npf_json("n1"))));
    let writer = StatusWriter::new(
        Api::<NodePrefetch>::all(client),
        "n1",
        Duration::from_secs(2),
    );
    let writes = writer.writes();
    let board = Arc::new(Board::default());
    let (spec_tx, spec_rx) = watch::channel(vec![order("r/a:1", true), order("r/b:1", false)]);
    // The puller has taken up both (nothing is written before it has).
    board.set(st("r/b:1", PullState::Pending));
    tokio::spawn(writer.run(board.clone(), spec_rx));

    // A burst of 40 changes within 1 s: the first is written at once, the
    // rest collapse into one write when the 2 s interval is over.
    for i in 0..40 {
        let state = if i % 2 == 0 {
            PullState::Pulling
        } else {
            PullState::Pending
        };
        board.set(st("r/a:1", state));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    board.set(st("r/a:1", PullState::Present));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = seen.lock().unwrap().clone();
    assert_eq!(
        s.len(),
        2,
        "one immediate write and one batched write: {s:#?}"
    );
    assert_eq!(writes.load(std::sync::atomic::Ordering::Relaxed), 2);
    for w in &s {
        assert_eq!(w.method, Method::PATCH);
        assert!(
            w.path
                .starts_with("/apis/pullahead.io/v1alpha1/nodeprefetches/n1/status"),
            "{}",
            w.path
        );
        assert_eq!(w.content_type, "application/merge-patch+json");
    }
    let last = &s[1].body["status"];
    assert_eq!(
        last["images"][0],
        json!({"image": "r/a:1", "state": "present"})
    );
    assert_eq!(
        last["images"][1],
        json!({"image": "r/b:1", "state": "pending"}),
        "spec images without progress are pending"
    );
    assert_eq!(
        (last["wanted"].as_u64(), last["present"].as_u64()),
        (Some(2), Some(1))
    );

    // Nothing changed: nothing written. A spec change is written.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(seen.lock().unwrap().len(), 2);
    spec_tx.send_replace(vec![order("r/a:1", true)]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = seen.lock().unwrap().clone();
    assert_eq!(s.len(), 3);
    assert_eq!(s[2].body["status"]["wanted"], json!(1));
}

fn node_json(rv: &str, taints: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": "n1", "resourceVersion": rv},
           "spec": {"taints": taints}})
}

#[tokio::test]
async fn release_taint_removes_only_its_key_and_rereads_on_conflict() {
    let taints = json!([{"key": "pullahead.io/prefetching", "effect": "NoSchedule"},
                        {"key": "karpenter.sh/unregistered", "effect": "NoExecute"}]);
    let mut puts = 0;
    let t2 = taints.clone();
    let (client, seen) = mock_api(Box::new(move |s| match s.method {
        Method::GET => (
            200,
            node_json(if puts == 0 { "7" } else { "8" }, t2.clone()),
        ),
        Method::PUT => {
            puts += 1;
            if puts == 1 {
                (
                    409,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"}),
                )
            } else {
                (200, s.body.clone())
            }
        }
        _ => (405, json!({})),
    }));
    let nodes: Api<Node> = Api::all(client);
    let removed = agent::release_taint(&nodes, "n1", "pullahead.io/prefetching")
        .await
        .expect("release");
    assert!(removed);
    let s = seen.lock().unwrap().clone();
    let methods: Vec<_> = s.iter().map(|x| x.method.clone()).collect();
    assert_eq!(
        methods,
        [Method::GET, Method::PUT, Method::GET, Method::PUT]
    );
    assert_eq!(s[1].path, "/api/v1/nodes/n1?");
    let sent = &s[3].body;
    assert_eq!(
        sent["metadata"]["resourceVersion"], "8",
        "the retry carries the re-read version"
    );
    assert_eq!(
        sent["spec"]["taints"],
        json!([{"key": "karpenter.sh/unregistered", "effect": "NoExecute"}])
    );

    // No such taint: nothing is written.
    let (client, seen) = mock_api(Box::new(|_| {
        (
            200,
            node_json("1", json!([{"key": "other", "effect": "NoSchedule"}])),
        )
    }));
    let removed = agent::release_taint(&Api::all(client), "n1", "pullahead.io/prefetching")
        .await
        .expect("release");
    assert!(!removed);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn taint_is_released_when_critical_images_are_present() {
    let (client, seen) = mock_api(Box::new(|s| match s.method {
        Method::GET => (
            200,
            node_json(
                "1",
                json!([{"key": "pullahead.io/prefetching", "effect": "NoSchedule"}]),
            ),
        ),
        _ => (200, s.body.clone()),
    }));
    let board = Arc::new(Board::default());
    let (_tx, spec) = watch::channel(vec![
        order("r/a:1", true),
        order("r/b:1", true),
        order("r/c:1", false),
    ]);
    let task = tokio::spawn(agent::taint_releaser(
        Api::all(client),
        "n1".into(),
        "pullahead.io/prefetching".into(),
        Some(Duration::from_secs(600)),
        board.clone(),
        spec,
    ));
    board.set(st("r/a:1", PullState::Present));
    board.set(st("r/c:1", PullState::Present));
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Only the start-up read of the node (is the taint there?), no update.
    assert!(
        seen.lock().unwrap().iter().all(|x| x.method == Method::GET),
        "one critical image still missing: no release"
    );
    board.set(st("r/b:1", PullState::Present));
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("released")
        .expect("task");
    let s = seen.lock().unwrap().clone();
    assert_eq!(s.last().map(|x| x.method.clone()), Some(Method::PUT));
    assert_eq!(s.last().unwrap().body["spec"]["taints"], json!([]));
}

#[tokio::test(start_paused = true)]
async fn taint_is_released_after_release_after_even_if_images_are_missing() {
    let (client, seen) = mock_api(Box::new(|s| match s.method {
        Method::GET => (
            200,
            node_json(
                "1",
                json!([{"key": "pullahead.io/prefetching", "effect": "NoSchedule"}]),
            ),
        ),
        _ => (200, s.body.clone()),
    }));
    let board = Arc::new(Board::default());
    let (_tx, spec) = watch::channel(vec![order("r/a:1", true)]);
    let start = tokio::time::Instant::now();
    let task = tokio::spawn(agent::taint_releaser(
        Api::all(client),
        "n1".into(),
        "pullahead.io/prefetching".into(),
        Some(Duration::from_secs(90)),
        board,
        spec,
    ));
    tokio::time::sleep(Duration::from_secs(89)).await;
    assert!(seen.lock().unwrap().iter().all(|x| x.method == Method::GET));
    task.await.expect("task");
    assert!(start.elapsed() >= Duration::from_secs(90));
    assert_eq!(
        seen.lock()
            .unwrap()
            .iter()
            .filter(|x| x.method == Method::PUT)
            .count(),
        1
    );
}

#[tokio::test]
async fn image_pull_secrets_come_from_the_pod_and_its_service_account() {
    use base64::Engine;
    let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let a = enc(r#"{"auths":{"reg-a.example:5000":{"username":"ua","password":"pa"}}}"#);
    let b = enc(r#"{"auths":{"https://reg-b.example":{"auth":"dWI6cGI="}}}"#);
    let (client, seen) = mock_api(Box::new(move |s| {
        match s.path.split('?').next().unwrap_or("") {
            "/api/v1/namespaces/pullahead/pods/agent-x" => (
                200,
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "agent-x"},
            "spec": {"serviceAccountName": "pullahead-agent", "imagePullSecrets": [{"name": "a"}], "containers": [{"name": "c"}]}}),
            ),
            "/api/v1/namespaces/pullahead/serviceaccounts/pullahead-agent" => (
                200,
                json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "pullahead-agent"}, "imagePullSecrets": [{"name": "b"}, {"name": "gone"}]}),
            ),
            "/api/v1/namespaces/pullahead/secrets/a" => (
                200,
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "a"},
            "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": a}}),
            ),
            "/api/v1/namespaces/pullahead/secrets/b" => (
                200,
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "b"},
            "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": b}}),
            ),
            _ => (
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
            ),
        }
    }));
    let creds = agent::pull_secrets_of_pod(client, "pullahead", "agent-x")
        .await
        .expect("creds");
    assert_eq!(creds.hosts(), ["reg-a.example:5000", "reg-b.example"]);
    assert_eq!(
        creds.for_image("reg-b.example/x/y:1").expect("b").username,
        "ub"
    );
    assert_eq!(seen.lock().unwrap().len(), 5, "pod, sa, a, b, gone");
}

#[test]
fn durations_parse_friendly_and_reject_nonsense() {
    assert_eq!(
        agent::parse_duration("release-after", "90s").unwrap(),
        Duration::from_secs(90)
    );
    assert_eq!(
        agent::parse_duration("release-after", "5m").unwrap(),
        Duration::from_secs(300)
    );
    let e = agent::parse_duration("release-after", "soon").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("invalid --release-after \"soon\""),
        "{e}"
    );
}

/// A critical image that failed for good releases the taint (it is
/// settled: waiting longer cannot help), and the board carries the reason
/// the status then shows.
#[tokio::test]
async fn a_finally_failed_critical_image_releases_the_taint_and_says_why() {
    let (client, seen) = mock_api(Box::new(|s| match s.method {
        Method::GET => (
            200,
            node_json(
                "1",
                json!([{"key": "pullahead.io/prefetching", "effect": "NoSchedule"}]),
            ),
        ),
        _ => (200, s.body.clone()),
    }));
    let board = Arc::new(Board::default());
    let (_tx, spec) = watch::channel(vec![order("r/a:1", true), order("r/gone:1", true)]);
    let task = tokio::spawn(agent::taint_releaser(
        Api::all(client),
        "n1".into(),
        "pullahead.io/prefetching".into(),
        None,
        board.clone(),
        spec,
    ));
    board.set(st("r/a:1", PullState::Present));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting = board.startup_taint().expect("a taint status");
    assert!(!waiting.released);
    assert_eq!(waiting.reason, "waiting for 1 of 2 critical images");
    board.set(ImageStatus {
        message: Some("not found: manifest unknown".into()),
        ..st("r/gone:1", PullState::Failed)
    });
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("released without --release-after")
        .expect("task");
    assert_eq!(
        seen.lock()
            .unwrap()
            .iter()
            .filter(|x| x.method == Method::PUT)
            .count(),
        1
    );
    let t = board.startup_taint().unwrap();
    assert!(t.released);
    assert_eq!(
        t.reason,
        "critical images settled: 1 present, 1 failed (r/gone:1: not found: manifest unknown)"
    );
    let status = agent::status_for(&[order("r/a:1", true)], &board);
    assert_eq!(status.startup_taint, Some(t));
}
