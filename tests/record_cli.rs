//! `pullahead record` as a real process: against no cluster, and against a
//! scripted API server over HTTP, stopped by SIGTERM.

#[path = "ops_common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fake_api::{FakeApi, serve_http};
use common::objects::*;
#[allow(unused_imports)]
use common::script::*;
use pullahead::event::{Body, EventReader, NodePhase};
use pullahead::watch::EVENT_REASONS;

const BIN: &str = env!("CARGO_BIN_EXE_pullahead");

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
    // The listener is dropped here, so nothing listens on the port.
}

/// Runs the binary to completion with a time limit; returns (status, stderr).
fn run_bounded(mut cmd: Command, limit: Duration) -> (std::process::ExitStatus, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status, err);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("pullahead record still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn no_reachable_cluster_fails_fast_naming_the_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig_in(dir.path(), loopback(closed_port()), "default");
    let mut cmd = Command::new(BIN);
    cmd.args(["record", "--out"])
        .arg(dir.path().join("out.jsonl"))
        .env("KUBECONFIG", &kc)
        .env_remove("KUBERNETES_SERVICE_HOST");
    let start = Instant::now();
    let (status, err) = run_bounded(cmd, Duration::from_secs(30));
    assert!(!status.success(), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        err.contains(&kc.display().to_string()),
        "stderr does not name the kubeconfig: {err}"
    );
    assert!(err.contains("cannot reach the Kubernetes API"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn no_configuration_at_all_says_what_was_tried() {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["record", "--connect-timeout", "3s"])
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", home.path());
    let (status, err) = run_bounded(cmd, Duration::from_secs(20));
    assert!(!status.success());
    assert!(err.contains("no in-cluster configuration"), "{err}");
    assert!(err.contains(".kube/config"), "{err}");
}

/// An API with one node, a pending pod, and empty lists of everything else.
fn cluster() -> std::sync::Arc<FakeApi> {
    let api = FakeApi::new();
    api.list(
        "/api/v1/nodes",
        200,
        list(
            "v1",
            "Node",
            "100",
            vec![node("node-a", "90", true, "general")],
        ),
    )
    .watch(
        "/api/v1/nodes",
        vec![ev("ADDED", node("node-b", "101", false, "general"))],
        true,
    );
    api.list(
        "/api/v1/pods",
        200,
        list(
            "v1",
            "Pod",
            "100",
            vec![pod("shop", "web-1", "99", "web", None)],
        ),
    );
    for (path, api_version, kind) in [
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
        api.list(path, 200, list(api_version, kind, "100", vec![]));
    }
    // nodeclaims: absent CRD (404), which record must tolerate.
    for r in EVENT_REASONS {
        api.list(
            &format!("/api/v1/events?fieldSelector=reason={r}"),
            200,
            list("v1", "Event", "100", vec![]),
        );
    }
    api
}

#[test]
fn records_a_cluster_flushes_within_a_second_and_exits_0_on_sigterm() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = cluster();
    let port = rt.block_on(serve_http(api.clone()));
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig_in(dir.path(), loopback(port), "default");
    let out = dir.path().join("rec.jsonl");
    // Record to both a file and a Kafka topic.
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    mock.create_topic("rec", 2, 1).unwrap();
    let mut child = Command::new(BIN)
        .args(["record", "--out"])
        .arg(&out)
        .args([
            "--kafka-brokers",
            &mock.bootstrap_servers(),
            "--kafka-topic",
            "rec",
        ])
        .args(["-X", "client.id=record-test"])
        .env("KUBECONFIG", &kc)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // The events show up in the file while the process runs: it flushes.
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if text.contains("node-b") && text.contains("shop/web-1") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "events not flushed; file: {text}"
        );
        assert!(child.try_wait().unwrap().is_none(), "record exited early");
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "exit {status:?}: {err}");
    assert!(err.contains("recorded"), "{err}");

    let mut reader = EventReader::open(&out).unwrap();
    let events: Vec<_> = reader.by_ref().map(Result::unwrap).collect();
    assert_eq!(
        reader.stats().header.as_ref().unwrap().source,
        "pullahead record"
    );
    let nodes: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.body {
            Body::Node(n) => Some((n.node.as_str(), n.phase)),
            _ => None,
        })
        .collect();
    assert_eq!(
        nodes,
        vec![
            ("node-a", NodePhase::Registered),
            ("node-a", NodePhase::Ready),
            ("node-b", NodePhase::Registered)
        ]
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.body, Body::Pod(p) if p.pod == "shop/web-1"))
    );
    // Recorded times are Unix seconds from the wall clock.
    assert!(events.iter().all(|e| e.ts > 1.7e9));
    // The topic holds the same events as the file.
    let cfg = pullahead::bus::kafka::KafkaConfig::new(mock.bootstrap_servers(), "rec");
    let from_topic = pullahead::bus::kafka::read_range(&cfg, None, None).unwrap();
    assert_eq!(from_topic, events);
}
