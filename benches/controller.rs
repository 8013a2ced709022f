//! Controller bench with an in-process mock API (tower-test):
//!
//! 1. latency from the event that makes a node writable (its NodeClaim's
//!    node becoming known) arriving on the bus to the NodePrefetch PATCH
//!    reaching the API, for 2,000 scale-ups arriving at 100 per second, then
//!    200 arriving in one burst;
//! 2. resident memory after folding 5,000 nodes and 100,000 pods.
//!
//! Run: `cargo bench --bench controller`. Prints percentiles; asserts
//! nothing (targets: p99 <= 50 ms, RSS <= 300 MB).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use kube::client::Body;
use pullahead::config::{Config, RunArgs};
use pullahead::event::{ClaimPhase, Event, Image, Node, NodeClaim, NodePhase, Pod, PodPhase};
use pullahead::metrics::{Health, Metrics};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

/// The lean mock: answers the calls the controller makes and notes when
/// each NodePrefetch PATCH arrives. It keeps no objects, so the RSS figure
/// is the controller's, not the mock's.
#[derive(Default)]
struct Mock {
    lease: Mutex<Option<Value>>,
    patched: Mutex<HashMap<String, Instant>>,
    patches: Mutex<u64>,
}

impl Mock {
    fn answer(&self, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, parts.as_slice()) {
            (
                "GET",
                [
                    "apis",
                    "coordination.k8s.io",
                    "v1",
                    "namespaces",
                    _,
                    "leases",
                    _,
                ],
            ) => match self.lease.lock().unwrap().clone() {
                Some(l) => (200, l),
                None => (
                    404,
                    json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}),
                ),
            },
            ("POST" | "PUT", ["apis", "coordination.k8s.io", ..]) => {
                let mut l: Value = serde_json::from_slice(body).unwrap();
                l["metadata"]["resourceVersion"] = json!("1");
                *self.lease.lock().unwrap() = Some(l.clone());
                (200, l)
            }
            ("GET", ["api", "v1", "nodes", name]) => (
                200,
                json!({"apiVersion":"v1","kind":"Node","metadata":{"name": name, "uid": format!("uid-{name}")}}),
            ),
            ("PATCH", ["apis", "pullahead.io", "v1alpha1", "nodeprefetches", name]) => {
                let now = Instant::now();
                self.patched
                    .lock()
                    .unwrap()
                    .entry(name.to_string())
                    .or_insert(now);
                *self.patches.lock().unwrap() += 1;
                (
                    200,
                    json!({"apiVersion":"pullahead.io/v1alpha1","kind":"NodePrefetch",
                             "metadata":{"name": name},"spec":{"images":[]}}),
                )
            }
            _ => (
                404,
                json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}),
            ),
        }
    }

    fn client(self: &Arc<Self>) -> kube::Client {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let mock = self.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let mock = mock.clone();
                tokio::spawn(async move {
                    let (parts, body) = req.into_parts();
                    let bytes = body.collect_bytes().await.unwrap_or_default();
                    let (code, v) = mock.answer(parts.method.as_str(), parts.uri.path(), &bytes);
                    send.send_response(
                        Response::builder()
                            .status(code)
                            .body(Body::from(serde_json::to_vec(&v).unwrap()))
                            .unwrap(),
                    );
                });
            }
        });
        kube::Client::new(svc, "default")
    }
}

fn config() -> Config {
    Config::resolve(&RunArgs {
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        identity: Some("bench".into()),
        queue_capacity: Some(200_000),
        ..RunArgs::default()
    })
    .unwrap()
}

fn image(i: usize) -> String {
    format!("registry.example.com/team-{}/app-{}:v{}", i % 40, i, i % 7)
}

fn claim(c: usize, phase: ClaimPhase, node: Option<String>) -> Event {
    Event::new(
        0.0,
        NodeClaim {
            node_claim: format!("default-{c:05}"),
            pool: "default".into(),
            phase,
            labels: Default::default(),
            taints: None,
            node,
        },
    )
}

fn pod(p: usize, c: usize, phase: PodPhase, node: Option<String>) -> Event {
    Event::new(
        0.0,
        Pod {
            pod: format!("ns-{}/pod-{p}", p % 50),
            workload: Some(format!("ns-{}/app-{}", p % 50, p % 800)),
            images: vec![image(p % 800), image(800 + p % 37)],
            phase,
            node: node.clone(),
            node_claim: node.is_none().then(|| format!("default-{c:05}")),
        },
    )
}

fn node_name(c: usize) -> String {
    format!(
        "ip-10-{}-{}-{}.ec2.internal",
        c / 65536,
        (c / 256) % 256,
        c % 256
    )
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

struct Started {
    tx: mpsc::Sender<Event>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(mock: &Arc<Mock>) -> Started {
    let (tx, rx) = mpsc::channel(200_000);
    let (stop, stop_rx) = watch::channel(false);
    let client = mock.client();
    let task = tokio::spawn(async move {
        pullahead::run::run_with(
            config(),
            Some(client),
            Some(rx),
            stop_rx,
            Metrics::new().unwrap(),
            Health::new(),
        )
        .await
        .unwrap();
    });
    while mock.lease.lock().unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Started { tx, stop, task }
}

async fn latency(
    mock: &Arc<Mock>,
    s: &Started,
    range: std::ops::Range<usize>,
    gap: Option<Duration>,
) -> Vec<Duration> {
    let mut sent = HashMap::new();
    for c in range.clone() {
        s.tx.send(claim(c, ClaimPhase::Created, None))
            .await
            .unwrap();
        for k in 0..3 {
            s.tx.send(pod(c * 3 + k, c, PodPhase::Nominated, None))
                .await
                .unwrap();
        }
        let node = node_name(c);
        sent.insert(node.clone(), Instant::now());
        s.tx.send(claim(c, ClaimPhase::Registered, Some(node)))
            .await
            .unwrap();
        if let Some(g) = gap {
            tokio::time::sleep(g).await;
        }
    }
    let end = Instant::now() + Duration::from_secs(60);
    while mock.patched.lock().unwrap().len() < range.end && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let patched = mock.patched.lock().unwrap();
    let mut lat: Vec<Duration> = sent
        .iter()
        .filter_map(|(n, t)| patched.get(n).map(|p| p.saturating_duration_since(*t)))
        .collect();
    lat.sort();
    assert_eq!(lat.len(), range.len(), "every node got its write");
    lat
}

fn report(name: &str, lat: &[Duration]) {
    println!(
        "{name}: n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms",
        lat.len(),
        percentile(lat, 0.5).as_secs_f64() * 1e3,
        percentile(lat, 0.9).as_secs_f64() * 1e3,
        percentile(lat, 0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3,
    );
}

async fn bench() {
    // 1. Latency.
    let mock = Arc::new(Mock::default());
    let s = start(&mock).await;
    let steady = latency(&mock, &s, 0..2000, Some(Duration::from_millis(10))).await;
    report(
        "event->NodePrefetch PATCH, 2000 scale-ups at 100/s",
        &steady,
    );
    // A large Karpenter batch: 200 nodes at once. Writes queue behind each
    // other (8 in flight), so this measures throughput as much as latency.
    let burst = latency(&mock, &s, 2000..2200, None).await;
    report(
        "event->NodePrefetch PATCH, 200 scale-ups in one burst",
        &burst,
    );
    s.stop.send(true).unwrap();
    s.task.await.unwrap();

    // 2. Memory with 5,000 nodes and 100,000 pods.
    let before = rss_mb();
    let mock = Arc::new(Mock::default());
    let s = start(&mock).await;
    let started = Instant::now();
    for i in 0..837 {
        s.tx.send(Event::new(
            0.0,
            Image {
                image: image(i),
                bytes: 50_000_000 + i as u64,
                layers: None,
            },
        ))
        .await
        .unwrap();
    }
    for c in 0..5000 {
        s.tx.send(claim(c, ClaimPhase::Created, None))
            .await
            .unwrap();
    }
    for p in 0..100_000 {
        s.tx.send(pod(p, p % 5000, PodPhase::Nominated, None))
            .await
            .unwrap();
    }
    for c in 0..5000 {
        let node = node_name(c);
        s.tx.send(claim(c, ClaimPhase::Registered, Some(node.clone())))
            .await
            .unwrap();
        s.tx.send(Event::new(
            0.0,
            Node {
                node,
                phase: NodePhase::Ready,
                pool: Some("default".into()),
                labels: Default::default(),
                taints: None,
                images: None,
                image_fs_bytes: None,
            },
        ))
        .await
        .unwrap();
    }
    for p in 0..100_000 {
        s.tx.send(pod(
            p,
            p % 5000,
            PodPhase::Scheduled,
            Some(node_name(p % 5000)),
        ))
        .await
        .unwrap();
    }
    let end = Instant::now() + Duration::from_secs(120);
    while mock.patched.lock().unwrap().len() < 5000 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    let after = rss_mb();
    println!(
        "5000 nodes / 100000 pods: {} nodes written, {} PATCHes, {:.2} s; RSS {:.1} MB (was {:.1} MB before; delta {:.1} MB)",
        mock.patched.lock().unwrap().len(),
        mock.patches.lock().unwrap(),
        took.as_secs_f64(),
        after,
        before,
        after - before
    );
    s.stop.send(true).unwrap();
    s.task.await.unwrap();
}

fn main() {
    // `cargo test --benches` runs bench binaries with no `--bench`: do a
    // quick smoke run only then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("controller bench: run with `cargo bench --bench controller`");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}
