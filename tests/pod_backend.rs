//! The pod backend against the tower-test mock API: the exact pod spec sent,
//! how completion is read from container statuses, and that the pod is
//! deleted after success, failure and timeout.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use pullahead::dispatch::crd::PullState;
use pullahead::dispatch::pod::{PodBackend, PodConfig, prefetch_pod};
use serde_json::{Value, json};
use support::kube_mock::{Reply, Seen, mock_api, status};

const NS: &str = "pullahead";
const NAME: &str = "pullahead-prefetch-x7k2q";

fn cfg(timeout: Duration) -> PodConfig {
    PodConfig {
        namespace: NS.into(),
        pullahead_image: "ghcr.io/pullahead/pullahead:0.1.0".into(),
        image_pull_secrets: vec!["regcred".into()],
        timeout,
    }
}

fn images() -> Vec<String> {
    vec![
        "registry.example/app/api:1.2".into(),
        "registry.example/base/scratch-tool:3".into(),
    ]
}

/// The pod as the API server would return it, with `status` attached.
fn pod_with(sent: &Value, rv: &str, status: Value) -> Value {
    let mut p = sent.clone();
    p["metadata"]["name"] = json!(NAME);
    p["metadata"]["uid"] = json!("u-1");
    p["metadata"]["resourceVersion"] = json!(rv);
    p["status"] = status;
    p
}

fn terminated(name: &str, code: i32) -> Value {
    json!({"name": name, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
           "state": {"terminated": {"exitCode": code, "reason": "Completed"}}})
}

fn waiting(name: &str, reason: &str, message: &str) -> Value {
    json!({"name": name, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
           "state": {"waiting": {"reason": reason, "message": message}}})
}

/// A mock API that creates the pod, lists it as Pending, then streams
/// `updates` on the watch (or holds the watch open when there are none), and
/// accepts the delete.
fn scripted(updates: Vec<Value>) -> (kube::Client, Arc<Mutex<Vec<Seen>>>) {
    let sent: Arc<Mutex<Value>> = Arc::new(Mutex::new(Value::Null));
    let mut watched = false;
    mock_api(Box::new(move |s| {
        let path = s.path.split('?').next().unwrap_or("").to_string();
        match (s.method.clone(), path.as_str()) {
            (Method::POST, "/api/v1/namespaces/pullahead/pods") => {
                *sent.lock().unwrap() = s.body.clone();
                Reply::Json(201, pod_with(&s.body, "1", json!({"phase": "Pending"})))
            }
            (Method::GET, "/api/v1/namespaces/pullahead/pods") if !s.is_watch() => {
                let p = pod_with(&sent.lock().unwrap(), "1", json!({"phase": "Pending"}));
                Reply::Json(
                    200,
                    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": [p]}),
                )
            }
            (Method::GET, "/api/v1/namespaces/pullahead/pods") => {
                if watched || updates.is_empty() {
                    return Reply::Hang;
                }
                watched = true;
                let sent = sent.lock().unwrap().clone();
                Reply::Events(updates.iter().enumerate().map(|(i, st)| {
                    json!({"type": "MODIFIED", "object": pod_with(&sent, &(i + 2).to_string(), st.clone())})
                }).collect())
            }
            (Method::DELETE, p) if p == format!("/api/v1/namespaces/pullahead/pods/{NAME}") => {
                Reply::Json(
                    200,
                    pod_with(&sent.lock().unwrap(), "9", json!({"phase": "Succeeded"})),
                )
            }
            _ => Reply::Json(404, status(404, "NotFound", "unexpected request")),
        }
    }))
}

fn assert_deleted(seen: &[Seen]) {
    let d: Vec<_> = seen.iter().filter(|s| s.method == Method::DELETE).collect();
    assert_eq!(d.len(), 1, "exactly one delete: {seen:#?}");
    assert_eq!(
        d[0].path.split('?').next(),
        Some(format!("/api/v1/namespaces/{NS}/pods/{NAME}").as_str())
    );
    assert_eq!(d[0].body["gracePeriodSeconds"], json!(0));
    assert_eq!(d[0].body["propagationPolicy"], json!("Background"));
}

#[test]
fn the_pod_spec_is_pinned_tolerant_hostnetwork_and_never_restarts() {
    let pod = prefetch_pod(
        &cfg(Duration::from_secs(300)),
        "ip-10-0-1-5.ec2.internal",
        &images(),
    );
    let v = serde_json::to_value(&pod).unwrap();
    let expected = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "pullahead-prefetch-",
            "namespace": "pullahead",
            "labels": {"app.kubernetes.io/managed-by": "pullahead", "pullahead.io/prefetch-node": "ip-10-0-1-5.ec2.internal"}
        },
        "spec": {
            "nodeName": "ip-10-0-1-5.ec2.internal",
            "hostNetwork": true,
            "restartPolicy": "Never",
            "tolerations": [{"operator": "Exists"}],
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 0,
            "activeDeadlineSeconds": 300,
            "imagePullSecrets": [{"name": "regcred"}],
            "initContainers": [{
                "name": "install-noop",
                "image": "ghcr.io/pullahead/pullahead:0.1.0",
                "imagePullPolicy": "IfNotPresent",
                "command": ["cp", "/usr/local/bin/pullahead-noop", "/pullahead-noop/noop"],
                "volumeMounts": [{"name": "noop", "mountPath": "/pullahead-noop"}],
                "resources": {"requests": {"cpu": "1m", "memory": "8Mi"}, "limits": {"memory": "16Mi"}}
            }],
            "containers": [
                {"name": "img-0", "image": "registry.example/app/api:1.2", "imagePullPolicy": "IfNotPresent",
                 "command": ["/pullahead-noop/noop"],
                 "volumeMounts": [{"name": "noop", "mountPath": "/pullahead-noop", "readOnly": true}],
                 "resources": {"requests": {"cpu": "1m", "memory": "8Mi"}, "limits": {"memory": "16Mi"}}},
                {"name": "img-1", "image": "registry.example/base/scratch-tool:3", "imagePullPolicy": "IfNotPresent",
                 "command": ["/pullahead-noop/noop"],
                 "volumeMounts": [{"name": "noop", "mountPath": "/pullahead-noop", "readOnly": true}],
                 "resources": {"requests": {"cpu": "1m", "memory": "8Mi"}, "limits": {"memory": "16Mi"}}}
            ],
            "volumes": [{"name": "noop", "emptyDir": {"sizeLimit": "16Mi"}}]
        }
    });
    assert_eq!(v, expected, "{}", serde_json::to_string_pretty(&v).unwrap());
}

#[tokio::test]
async fn success_reads_terminated_containers_and_deletes_the_pod() {
    let (client, seen) = scripted(vec![
        json!({"phase": "Running", "containerStatuses": [terminated("img-0", 0), waiting("img-1", "ContainerCreating", "")]}),
        json!({"phase": "Succeeded", "containerStatuses": [terminated("img-0", 0), terminated("img-1", 0)]}),
    ]);
    let backend = PodBackend::new(client, cfg(Duration::from_secs(30)));
    let out = backend.run_batch("node-a", &images()).await.expect("batch");
    assert_eq!(
        out.iter().map(|s| s.state).collect::<Vec<_>>(),
        [PullState::Present, PullState::Present]
    );
    let seen = seen.lock().unwrap().clone();
    let post = seen
        .iter()
        .find(|s| s.method == Method::POST)
        .expect("create");
    assert_eq!(post.body["spec"]["nodeName"], json!("node-a"));
    assert_eq!(
        post.body["spec"]["containers"][1]["image"],
        json!(images()[1])
    );
    assert_deleted(&seen);
}

#[tokio::test]
async fn pull_errors_are_final_and_the_pod_is_still_deleted() {
    let (client, seen) = scripted(vec![json!({"phase": "Pending", "containerStatuses": [
        terminated("img-0", 0),
        waiting("img-1", "ErrImagePull", "rpc error: code = NotFound desc = failed to pull and unpack image: not found"),
    ]})]);
    let backend = PodBackend::new(client, cfg(Duration::from_secs(30)));
    let out = backend.run_batch("node-a", &images()).await.expect("batch");
    assert_eq!(out[0].state, PullState::Present);
    assert_eq!(out[1].state, PullState::Failed);
    assert!(
        out[1]
            .message
            .as_deref()
            .unwrap()
            .starts_with("ErrImagePull: rpc error: code = NotFound"),
        "{:?}",
        out[1]
    );
    assert_deleted(&seen.lock().unwrap());
}

#[tokio::test]
async fn a_pod_that_never_finishes_times_out_and_is_deleted() {
    let (client, seen) = scripted(Vec::new());
    let backend = PodBackend::new(client, cfg(Duration::from_millis(300)));
    let t = std::time::Instant::now();
    let out = backend.run_batch("node-a", &images()).await.expect("batch");
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(out.iter().all(|s| s.state == PullState::Failed));
    assert!(
        out[0]
            .message
            .as_deref()
            .unwrap()
            .contains(&format!("prefetch pod {NAME} timed out")),
        "{:?}",
        out[0]
    );
    assert_deleted(&seen.lock().unwrap());
}

#[tokio::test]
async fn an_empty_batch_creates_nothing() {
    let (client, seen) = scripted(Vec::new());
    let backend = PodBackend::new(client, cfg(Duration::from_secs(1)));
    let e = backend.run_batch("node-a", &[]).await.expect_err("empty");
    assert_eq!(e.to_string(), "a prefetch pod needs at least one image");
    assert!(seen.lock().unwrap().is_empty());
}
