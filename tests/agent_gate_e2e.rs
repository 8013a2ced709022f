//! The readiness gate end to end: the `pullahead agent` binary with a real
//! containerd and a real registry, a real `kube::Client` from a kubeconfig
//! against the project's one API double answering as the node's API (a Node
//! with its taints and conditions, and the node's NodePrefetch).
//!
//! - Node Readiness Controller mode (`--release-condition`): the Node
//!   condition turns `True` once the critical images are in containerd, and
//!   not before; the rule's `readiness.k8s.io/…` taint is left alone.
//! - A `readiness.k8s.io/…` taint the agent removes itself
//!   (`--startup-taint`), with a critical image that cannot be pulled: the
//!   taint goes after `--release-after`, and not before.

mod ops_common;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use ops_common::agent::{AgentApi, is_status_patch};
use ops_common::fake_api::{FakeApi, Seen, handled};
use ops_common::objects::kubeconfig;
use serde_json::{Value, json};
use support::{Containerd, Registry};

const RULE_TAINT: &str = "readiness.k8s.io/pullahead-images";
const CONDITION: &str = "pullahead.io/ImagesReady";

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
    api: Arc<FakeApi>,
    node: AgentApi,
    agent: std::process::Child,
    dir: tempfile::TempDir,
    start: Instant,
}

impl Running {
    async fn start(ctrd: &Containerd, spec: Value, gate: &[&str]) -> Self {
        let node = AgentApi::new("n1", spec, node_json());
        let api = handled(node.handler());
        let addr = api.serve_http().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = kubeconfig(dir.path(), addr);
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
            node,
            agent,
            dir,
            start: Instant::now(),
        }
    }

    /// Waits for `f` over the calls seen; panics with the agent's log.
    async fn until<T>(&mut self, what: &str, f: impl Fn(&[Seen]) -> Option<T>) -> T {
        loop {
            if let Some(v) = f(&self.api.seen()) {
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
fn present_at(seen: &[Seen], n: u64) -> Option<Instant> {
    seen.iter()
        .find(|s| is_status_patch(s, "n1") && s.body["status"]["present"].as_u64() >= Some(n))
        .map(|s| s.at)
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
                .find(|s| {
                    s.method == Method::PATCH && s.path.starts_with("/api/v1/nodes/n1/status")
                })
                .map(|s| s.at)
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
    let node = run.node.node.lock().unwrap().clone();
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
    let seen = run.api.seen();
    assert!(
        !seen
            .iter()
            .any(|s| s.method == Method::PUT && s.path.starts_with("/api/v1/nodes/")),
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
                .find(|s| {
                    is_status_patch(s, "n1")
                        && s.body["status"]["present"] == json!(1)
                        && s.body["status"]["startupTaint"]["released"] == json!(false)
                })
                .map(|s| s.at)
        })
        .await;
    let (put_at, body) = run
        .until("the node update", |seen| {
            seen.iter()
                .find(|s| s.method == Method::PUT && s.path.starts_with("/api/v1/nodes/n1"))
                .map(|s| (s.at, s.body.clone()))
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
                .filter(|s| {
                    is_status_patch(s, "n1")
                        && s.body["status"]["startupTaint"]["released"] == json!(true)
                })
                .find_map(|s| {
                    s.body["status"]["startupTaint"]["reason"]
                        .as_str()
                        .map(String::from)
                })
        })
        .await;
    assert!(reason.contains("--release-after elapsed"), "{reason}");
    assert!(reason.contains("waiting for 1 of 2"), "{reason}");
}
