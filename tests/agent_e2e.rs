//! The `pullahead agent` binary end to end: a real `kube::Client` built from
//! a kubeconfig (plain HTTP to a small API server in this test, serving list
//! and watch), a real containerd and a real registry. The agent must pull
//! the NodePrefetch's images, report them present in the status subresource,
//! and release the startup taint.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::{Value, json};
use support::{Containerd, Registry};

#[derive(Clone, Default)]
struct Api {
    seen: Arc<Mutex<Vec<(String, String, Value)>>>,
    spec: Arc<Mutex<Value>>,
}

async fn handle(State(api): State<Api>, req: Request) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    api.seen
        .lock()
        .unwrap()
        .push((method.clone(), format!("{path}?{query}"), body.clone()));
    let npf = json!({"apiVersion": "pullahead.io/v1alpha1", "kind": "NodePrefetch",
        "metadata": {"name": "n1", "uid": "npf-1", "resourceVersion": "5"},
        "spec": api.spec.lock().unwrap().clone()});
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "resourceVersion": "3"},
        "spec": {"taints": [{"key": "pullahead.io/prefetching", "effect": "NoSchedule"}]}});
    let json_resp = |code: u16, v: Value| {
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(v.to_string()))
            .unwrap()
    };
    match (method.as_str(), path.as_str()) {
        ("GET", "/apis/pullahead.io/v1alpha1/nodeprefetches") if query.contains("watch=true") => {
            // A watch that stays open with no news.
            let never = futures::stream::pending::<Result<Bytes, std::io::Error>>();
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::from_stream(never))
                .unwrap()
        }
        ("GET", "/apis/pullahead.io/v1alpha1/nodeprefetches") => {
            assert!(
                query.contains("fieldSelector=metadata.name%3Dn1"),
                "the agent watches only its own object: {query}"
            );
            json_resp(
                200,
                json!({"apiVersion": "pullahead.io/v1alpha1", "kind": "NodePrefetchList",
                "metadata": {"resourceVersion": "5"}, "items": [npf]}),
            )
        }
        ("PATCH", "/apis/pullahead.io/v1alpha1/nodeprefetches/n1/status") => json_resp(200, npf),
        ("GET", "/api/v1/nodes/n1") => json_resp(200, node),
        ("PUT", "/api/v1/nodes/n1") => json_resp(200, body),
        _ => json_resp(
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "no route"}),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_binary_pulls_its_nodeprefetch_reports_status_and_releases_the_taint() {
    let reg = Registry::start();
    let ctrd = Containerd::start();
    let imgs: Vec<_> = (0..3)
        .map(|i| reg.push_image(&format!("e2e/app{i}"), "v1", "amd64", 32 * 1024))
        .collect();
    let missing = format!("{}/e2e/nothing:v1", reg.addr);
    let api = Api::default();
    *api.spec.lock().unwrap() = json!({"images": [
        {"image": imgs[0].reference, "priority": 10, "reason": "nominated", "critical": true},
        {"image": imgs[1].reference, "priority": 5, "reason": "daemonset", "critical": true},
        {"image": imgs[2].reference, "priority": 1, "reason": "history"},
        {"image": missing, "priority": 0, "reason": "history"},
    ]});
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
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .env_remove("POD_NAME")
        .stderr(std::fs::File::create(dir.path().join("agent.log")).expect("log"))
        .spawn()
        .expect("start pullahead agent");

    let start = Instant::now();
    let final_status = loop {
        let last = api
            .seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(m, p, _)| {
                m == "PATCH"
                    && p.starts_with("/apis/pullahead.io/v1alpha1/nodeprefetches/n1/status")
            })
            .map(|(_, _, b)| b["status"].clone());
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
    let seen = api.seen.lock().unwrap().clone();
    let _ = agent.kill();
    let _ = agent.wait();

    assert_eq!(final_status["wanted"], json!(4));
    // No write before the spec was read: not even the first says wanted 0.
    for (m, p, body) in &seen {
        if m == "PATCH" && p.contains("/status") {
            assert_eq!(body["status"]["wanted"], json!(4), "{body}");
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
        .find(|(m, p, _)| m == "PUT" && p.starts_with("/api/v1/nodes/n1"))
        .expect("node update");
    assert_eq!(put.2["spec"]["taints"], json!([]));
    // Status writes are batched: far fewer than the per-image state changes.
    let patches = seen.iter().filter(|(m, _, _)| m == "PATCH").count();
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
