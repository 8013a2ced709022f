//! The readiness gate end to end: the `pullahead agent` binary with a real
//! containerd and a real registry, a real `kube::Client` from a kubeconfig
//! against a small stateful API server here (a Node with its taints and
//! conditions, and the node's NodePrefetch).
//!
//! - Node Readiness Controller mode (`--release-condition`): the Node
//!   condition turns `True` once the critical images are in containerd, and
//!   not before; the rule's `readiness.k8s.io/…` taint is left alone.
//! - A `readiness.k8s.io/…` taint the agent removes itself
//!   (`--startup-taint`), with a critical image that cannot be pulled: the
//!   taint goes after `--release-after`, and not before.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::{Value, json};
use support::{Containerd, Registry};

const RULE_TAINT: &str = "readiness.k8s.io/pullahead-images";
const CONDITION: &str = "pullahead.io/ImagesReady";

/// One call the API saw: when, method, `path?query content-type`, body.
type Call = (Instant, String, String, Value);

/// The API's state: the node and the NodePrefetch spec, and every call.
#[derive(Clone, Default)]
struct Api {
    seen: Arc<Mutex<Vec<Call>>>,
    spec: Arc<Mutex<Value>>,
    node: Arc<Mutex<Value>>,
}

fn json_resp(code: u16, v: &Value) -> Response {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(v.to_string()))
        .unwrap()
}

/// Merges a strategic-merge patch of `status.conditions` (keyed by `type`)
/// into `node`, as the API server does for Node status.
fn merge_conditions(node: &mut Value, patch: &Value) {
    let Some(new) = patch["status"]["conditions"].as_array() else {
        return;
    };
    let conds = node["status"]["conditions"].as_array_mut().unwrap();
    for c in new {
        match conds.iter_mut().find(|o| o["type"] == c["type"]) {
            Some(o) => *o = c.clone(),
            None => conds.push(c.clone()),
        }
    }
}

async fn handle(State(api): State<Api>, req: Request) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    api.seen.lock().unwrap().push((
        Instant::now(),
        method.clone(),
        format!("{path}?{query} {content_type}"),
        body.clone(),
    ));
    let npf = json!({"apiVersion": "pullahead.io/v1alpha1", "kind": "NodePrefetch",
        "metadata": {"name": "n1", "uid": "npf-1", "resourceVersion": "5"},
        "spec": api.spec.lock().unwrap().clone()});
    match (method.as_str(), path.as_str()) {
        ("GET", "/apis/pullahead.io/v1alpha1/nodeprefetches") if query.contains("watch=true") => {
            let never = futures::stream::pending::<Result<Bytes, std::io::Error>>();
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::from_stream(never))
                .unwrap()
        }
        ("GET", "/apis/pullahead.io/v1alpha1/nodeprefetches") => json_resp(
            200,
            &json!({"apiVersion": "pullahead.io/v1alpha1", "kind": "NodePrefetchList",
                "metadata": {"resourceVersion": "5"}, "items": [npf]}),
        ),
        ("PATCH", "/apis/pullahead.io/v1alpha1/nodeprefetches/n1/status") => json_resp(200, &npf),
        ("GET", "/api/v1/nodes/n1" | "/api/v1/nodes/n1/status") => {
            json_resp(200, &api.node.lock().unwrap())
        }
        ("PUT", "/api/v1/nodes/n1") => {
            *api.node.lock().unwrap() = body.clone();
            json_resp(200, &body)
        }
        ("PATCH", "/api/v1/nodes/n1/status")
            if content_type.starts_with("application/strategic-merge-patch+json") =>
        {
            let mut node = api.node.lock().unwrap();
            merge_conditions(&mut node, &body);
            json_resp(200, &node)
        }
        _ => json_resp(
            404,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                    "reason": "NotFound", "message": "no route"}),
        ),
    }
}

/// A Node as the API returns it: registered with the rule's taint, kubelet
/// reporting Ready.
fn node_json() -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
    "metadata": {"name": "n1", "resourceVersion": "3", "labels": {"karpenter.sh/nodepool": "gpu"}},
    "spec": {"taints": [
        {"key": RULE_TAINT, "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}
    ]},
    "status": {"conditions": [
        {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
         "lastHeartbeatTime": "2025-06-01T10:00:30Z", "lastTransitionTime": "2025-06-01T10:00:20Z"}
    ]}})
}

struct Running {
    api: Api,
    agent: std::process::Child,
    dir: tempfile::TempDir,
    start: Instant,
}

impl Running {
    async fn start(ctrd: &Containerd, spec: Value, gate: &[&str]) -> Self {
        let api = Api::default();
        *api.spec.lock().unwrap() = spec;
        *api.node.lock().unwrap() = node_json();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let app = axum::Router::new().fallback(handle).with_state(api.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: t\n  user: {{}}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: t\ncurrent-context: t\n"
        )).expect("kubeconfig");
        let agent = std::process::Command::new(env!("CARGO_BIN_EXE_pullahead"))
            .args([
                "agent",
                "--node",
                "n1",
                "--retry-backoff-max",
                "1s",
                "--status-interval",
                "1s",
            ])
            .args(gate)
            // Loopback and a port of its own: the tests run at once.
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{}", support::free_port()))
            .arg("--cri-socket")
            .arg(&ctrd.socket)
            // containerd's own root as the image filesystem, with no
            // ceiling: it lies on the test machine's disk, which may be past
            // 80% by kubelet's count (tests/safety_containerd.rs tests it).
            .arg("--image-fs-path")
            .arg(ctrd.root())
            .args([
                "--image-gc-high-percent",
                "100",
                "--disk-margin-percent",
                "0",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info")
            .env_remove("POD_NAME")
            .env_remove("PULLAHEAD_STARTUP_TAINT")
            .env_remove("PULLAHEAD_RELEASE_CONDITION")
            .env_remove("PULLAHEAD_RELEASE_AFTER")
            .env_remove("PULLAHEAD_METRICS_ADDR")
            .stderr(std::fs::File::create(dir.path().join("agent.log")).expect("log"))
            .spawn()
            .expect("start pullahead agent");
        Self {
            api,
            agent,
            dir,
            start: Instant::now(),
        }
    }

    /// Waits for `f` over the calls seen; panics with the agent's log.
    async fn until<T>(&mut self, what: &str, f: impl Fn(&[Call]) -> Option<T>) -> T {
        loop {
            if let Some(v) = f(&self.api.seen.lock().unwrap()) {
                return v;
            }
            let exited = self.agent.try_wait().ok().flatten().is_some();
            if self.start.elapsed() > Duration::from_secs(60) || exited {
                let _ = self.agent.kill();
                let log =
                    std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default();
                panic!("no {what}; agent log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }
}

/// When the status first reported `n` images present.
fn present_at(seen: &[Call], n: u64) -> Option<Instant> {
    seen.iter()
        .find(|(_, m, p, b)| {
            m == "PATCH"
                && p.starts_with("/apis/pullahead.io/v1alpha1/nodeprefetches/n1/status")
                && b["status"]["present"].as_u64() >= Some(n)
        })
        .map(|(t, ..)| *t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_condition_turns_true_when_the_critical_images_land() {
    let reg = Registry::start();
    let ctrd = Containerd::start();
    let imgs: Vec<_> = (0..2)
        .map(|i| reg.push_image(&format!("gate/app{i}"), "v1", "amd64", 256 * 1024))
        .collect();
    let spec = json!({"images": [
        {"image": imgs[0].reference, "priority": 10, "reason": "buffer", "critical": true},
        {"image": imgs[1].reference, "priority": 5, "reason": "nominated", "critical": true},
    ]});
    let mut run = Running::start(&ctrd, spec, &["--release-condition", CONDITION]).await;
    let set_at = run
        .until("condition patch", |seen| {
            seen.iter()
                .find(|(_, m, p, _)| m == "PATCH" && p.starts_with("/api/v1/nodes/n1/status"))
                .map(|(t, ..)| *t)
        })
        .await;
    // The images are in containerd by then.
    let cri = pullahead::dispatch::cri::CriClient::new(&ctrd.socket).expect("cri");
    let tags: Vec<String> = cri
        .list_images()
        .await
        .expect("list")
        .into_iter()
        .flat_map(|i| i.repo_tags)
        .collect();
    for i in &imgs {
        assert!(
            tags.contains(&i.reference),
            "{} not in {tags:?}",
            i.reference
        );
    }
    let present = run
        .until("status with both present", |seen| present_at(seen, 2))
        .await;
    // The status write is batched (1 s), so it may trail the condition by
    // up to the interval; the condition never leads the pulls by more.
    assert!(
        set_at + Duration::from_millis(1500) >= present,
        "condition set {:?} before the images were reported present",
        present.duration_since(set_at)
    );
    let node = run.api.node.lock().unwrap().clone();
    let conds = node["status"]["conditions"].as_array().unwrap();
    let ours = conds
        .iter()
        .find(|c| c["type"] == CONDITION)
        .expect("condition");
    assert_eq!(ours["status"], "True");
    assert_eq!(ours["reason"], "CriticalImagesPresent");
    assert!(
        conds
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True"),
        "kubelet's conditions are kept: {conds:?}"
    );
    // The rule's controller owns the taint: the agent never wrote the node.
    assert_eq!(node["spec"]["taints"][0]["key"], RULE_TAINT);
    let seen = run.api.seen.lock().unwrap().clone();
    assert!(
        !seen
            .iter()
            .any(|(_, m, p, _)| m == "PUT" && p.starts_with("/api/v1/nodes/")),
        "the agent must not touch the taints in condition mode"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readiness_taint_goes_after_the_timeout_when_an_image_cannot_be_pulled() {
    let reg = Registry::start();
    // A registry that is down: its pull is retried (connection refused is
    // transient), so only --release-after opens the gate.
    let mut down = Registry::start();
    let ctrd = Containerd::start();
    ctrd.trust(&down.addr);
    let img = reg.push_image("gate/ok", "v1", "amd64", 64 * 1024);
    let unreachable = down.push_image("gate/later", "v1", "amd64", 64 * 1024);
    down.stop();
    let spec = json!({"images": [
        {"image": img.reference, "priority": 10, "reason": "buffer", "critical": true},
        {"image": unreachable.reference, "priority": 5, "reason": "buffer", "critical": true},
    ]});
    let mut run = Running::start(
        &ctrd,
        spec,
        &["--startup-taint", RULE_TAINT, "--release-after", "4s"],
    )
    .await;
    let waiting_at = run
        .until("status waiting for the unreachable image", |seen| {
            seen.iter()
                .find(|(_, m, p, b)| {
                    m == "PATCH"
                        && p.starts_with("/apis/pullahead.io/v1alpha1/nodeprefetches/n1/status")
                        && b["status"]["present"] == json!(1)
                        && b["status"]["startupTaint"]["released"] == json!(false)
                })
                .map(|(t, ..)| *t)
        })
        .await;
    let (put_at, body) = run
        .until("the node update", |seen| {
            seen.iter()
                .find(|(_, m, p, _)| m == "PUT" && p.starts_with("/api/v1/nodes/n1"))
                .map(|(t, _, _, b)| (*t, b.clone()))
        })
        .await;
    assert!(
        put_at.duration_since(run.start) >= Duration::from_secs(4),
        "released after {:?}, before --release-after",
        put_at.duration_since(run.start)
    );
    assert!(waiting_at <= put_at, "the gate waited for the image first");
    // Only the readiness taint went.
    assert_eq!(
        body["spec"]["taints"],
        json!([{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}])
    );
    let reason = run
        .until("status saying why the taint went", |seen| {
            seen.iter()
                .filter(|(_, m, p, b)| {
                    m == "PATCH"
                        && p.starts_with("/apis/pullahead.io/v1alpha1/nodeprefetches/n1/status")
                        && b["status"]["startupTaint"]["released"] == json!(true)
                })
                .find_map(|(.., b)| {
                    b["status"]["startupTaint"]["reason"]
                        .as_str()
                        .map(String::from)
                })
        })
        .await;
    assert!(reason.contains("--release-after elapsed"), "{reason}");
    assert!(reason.contains("waiting for 1 of 2"), "{reason}");
}
