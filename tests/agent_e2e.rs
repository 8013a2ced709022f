//! The `pullahead agent` binary end to end: a real `kube::Client` built from
//! a kubeconfig (plain HTTP to the project's one API double, answering as
//! the node's API: its NodePrefetch and its Node), a real containerd and a
//! real registry. The agent must pull the NodePrefetch's images, report them
//! present in the status subresource, and release the startup taint.

mod ops_common;
mod support;

use std::time::{Duration, Instant};

use http::Method;
use ops_common::agent::{AgentApi, is_status_patch};
use ops_common::fake_api::handled;
use ops_common::objects::kubeconfig;
use serde_json::json;
use support::{Containerd, Registry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_binary_pulls_its_nodeprefetch_reports_status_and_releases_the_taint() {
    let reg = Registry::start();
    let ctrd = Containerd::start();
    let imgs: Vec<_> = (0..3)
        .map(|i| reg.push_image(&format!("e2e/app{i}"), "v1", "amd64", 32 * 1024))
        .collect();
    let missing = format!("{}/e2e/nothing:v1", reg.addr);
    let spec = json!({"images": [
        {"image": imgs[0].reference, "priority": 10, "reason": "nominated", "critical": true},
        {"image": imgs[1].reference, "priority": 5, "reason": "daemonset", "critical": true},
        {"image": imgs[2].reference, "priority": 1, "reason": "history"},
        {"image": missing, "priority": 0, "reason": "history"},
    ]});
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "resourceVersion": "3"},
        "spec": {"taints": [{"key": "pullahead.io/prefetching", "effect": "NoSchedule"}]}});
    let api = handled(AgentApi::new("n1", spec, node).handler());
    let addr = api.serve_http().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kubeconfig(dir.path(), addr);
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_pullahead"))
        .args([
            "agent",
            "--node",
            "n1",
            "--parallel",
            "2",
            "--status-interval",
            "1s",
            "--startup-taint",
            "pullahead.io/prefetching",
            "--metrics-addr",
            "127.0.0.1:0",
            "--cri-socket",
        ])
        .arg(&ctrd.socket)
        .arg("--image-fs-path")
        .arg(ctrd.root())
        // The root is on the test machine's disk, which may be past the
        // default 80% ceiling; tests/safety_containerd.rs tests the ceiling.
        .args([
            "--image-gc-high-percent",
            "100",
            "--disk-margin-percent",
            "0",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .env_remove("POD_NAME")
        .stderr(std::fs::File::create(dir.path().join("agent.log")).expect("log"))
        .spawn()
        .expect("start pullahead agent");

    let start = Instant::now();
    let final_status = loop {
        let last = api
            .seen()
            .iter()
            .rev()
            .find(|s| is_status_patch(s, "n1"))
            .map(|s| s.body["status"].clone());
        if let Some(s) = &last
            && s["present"] == json!(3)
            && s["failed"] == json!(1)
        {
            break s.clone();
        }
        if start.elapsed() > Duration::from_secs(60) || agent.try_wait().ok().flatten().is_some() {
            let _ = agent.kill();
            let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
            panic!("no final status; last={last:?}\nagent log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let seen = api.seen();
    let _ = agent.kill();
    let _ = agent.wait();

    assert_eq!(final_status["wanted"], json!(4));
    // No write before the spec was read: not even the first says wanted 0.
    for s in &seen {
        if s.method == Method::PATCH && s.path.contains("/status") {
            assert_eq!(s.body["status"]["wanted"], json!(4), "{}", s.body);
        }
    }
    let missing_status = final_status["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["image"] == json!(missing))
        .unwrap()
        .clone();
    assert_eq!(missing_status["state"], json!("failed"));
    assert!(
        missing_status["message"]
            .as_str()
            .unwrap()
            .contains("not found"),
        "{missing_status}"
    );
    // The taint went once both critical images were present.
    let put = seen
        .iter()
        .find(|s| s.method == Method::PUT && s.path.starts_with("/api/v1/nodes/n1"))
        .expect("node update");
    assert_eq!(put.body["spec"]["taints"], json!([]));
    // Status writes are batched: far fewer than the per-image state changes.
    let patches = seen.iter().filter(|s| s.method == Method::PATCH).count();
    let secs = start.elapsed().as_secs_f64();
    assert!(
        patches as f64 <= secs / 1.0 + 2.0,
        "{patches} writes in {secs:.1}s with a 1s interval"
    );
    // And containerd has them.
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
}
