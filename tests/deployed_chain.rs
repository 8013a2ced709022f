//! The deployed chain, end to end: `pullahead run` and `pullahead agent`
//! started as the chart renders them (`helm template`, with the startup
//! taint on), against the stateful API server double over HTTP, a real
//! containerd and a real registry on loopback, through a Karpenter
//! scale-out: NodePool and NodeClaim, pods nominated with `Nominated`
//! events, the Node registering with the startup taint, the pods binding
//! later. Also the races and failures on that path: the claim naming its
//! node before the Node is visible, the API server restarting, a 30 s
//! registry outage (with an agent restart in the middle), and a critical
//! image that does not exist.

mod chain;
mod common;
#[path = "ops_common/mod.rs"]
mod ops;
mod support;

use std::time::{Duration, Instant};

use chain::{Chart, Cluster, Host, Proc, TAINT, wait_for};
use pullahead::dispatch::cri::CriClient;
use serde_json::Value;
use support::{Containerd, Registry};

const NODE: &str = "ip-10-0-1-7.eu-west-1.compute.internal";
const CLAIM: &str = "general-x8k2p";
const POOL: &str = "general";
const NS: &str = "shop";
/// The host path of containerd's socket in the chart.
const CRI_SOCKET: &str = "/run/containerd/containerd.sock";

fn chart() -> Chart {
    Chart::render(&["agent.startupTaint.enabled=true"])
}

/// Starts the chart's controller and waits until both its probes pass.
async fn start_controller(chart: &Chart, cluster: &Cluster, dir: &std::path::Path) -> Proc {
    let w = chart.workload("Deployment", "pullahead-controller");
    let mut p = w.spawn(&Host {
        node: "control-plane-a",
        pod: "pullahead-controller-6c8f9d7b5-x2x7q",
        host_paths: &[],
        kubeconfig: &cluster.kubeconfig,
        dir,
    });
    for probe in ["liveness", "readiness"] {
        assert!(
            p.probe(probe).is_some(),
            "the chart probes the controller's {probe}"
        );
    }
    let start = Instant::now();
    while p.check("liveness").await != 200 || p.check("readiness").await != 200 {
        assert!(p.exited().is_none(), "controller exited:\n{}", p.log_text());
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "controller probes not passing:\n{}",
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p
}

/// Starts the chart's agent for `NODE` and waits for its liveness probe.
async fn start_agent(
    chart: &Chart,
    cluster: &Cluster,
    ctrd: &Containerd,
    dir: &std::path::Path,
) -> Proc {
    let w = chart.workload("DaemonSet", "pullahead-agent");
    let mut p = w.spawn(&Host {
        node: NODE,
        pod: "pullahead-agent-7kq2d",
        host_paths: &[(CRI_SOCKET, &ctrd.socket)],
        kubeconfig: &cluster.kubeconfig,
        dir,
    });
    assert!(p.probe("liveness").is_some(), "the chart probes the agent");
    let start = Instant::now();
    while p.check("liveness").await != 200 {
        assert!(p.exited().is_none(), "agent exited:\n{}", p.log_text());
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "agent liveness not passing:\n{}",
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some((path, _)) = p.probe("readiness") {
        assert_eq!(p.check("readiness").await, 200, "{path}");
    }
    p
}

/// The value of one sample line (`name{labels} value`) of a scrape.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn status(cluster: &Cluster) -> Value {
    cluster
        .prefetch(NODE)
        .map(|o| o["status"].clone())
        .unwrap_or(Value::Null)
}

fn present(cluster: &Cluster) -> u64 {
    status(cluster)["present"].as_u64().unwrap_or(0)
}

fn context<'a>(cluster: &'a Cluster, procs: &[&Proc]) -> impl Fn() -> String + use<'a> {
    let logs: Vec<(String, std::path::PathBuf)> = procs
        .iter()
        .map(|p| (p.name.clone(), p.log.clone()))
        .collect();
    move || {
        let mut s = format!("nodeprefetch: {:?}\n", cluster.prefetch(NODE));
        let reqs = cluster.api.requests.lock().unwrap().clone();
        let tail: Vec<&String> = reqs.iter().rev().take(25).collect();
        s += &format!("--- last API requests (of {}):\n{tail:#?}\n", reqs.len());
        for (name, log) in &logs {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            s += &format!(
                "--- {name} log (tail)\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        s
    }
}

async fn in_containerd(ctrd: &Containerd, images: &[&str]) -> Vec<String> {
    let cri = CriClient::new(&ctrd.socket).expect("cri");
    let mut missing = Vec::new();
    for i in images {
        use pullahead::dispatch::cri::ImageService;
        if cri.image_status(i).await.expect("image status").is_none() {
            missing.push(i.to_string());
        }
    }
    missing
}

/// The whole chain: a scale-out is prefetched before its pods bind, the
/// taint goes, the metrics fill in, the agent stops cleanly on SIGTERM and
/// a restarted agent pulls nothing again; a node leaving with an unused
/// image counts as waste.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_karpenter_scale_out_is_prefetched_before_its_pods_bind() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let ctrd = Containerd::start();
    ctrd.trust(&reg.addr);
    let web = reg.push_image("chain/web", "v1", "amd64", 512 * 1024);
    let sidecar = reg.push_image("chain/sidecar", "v1", "amd64", 128 * 1024);
    let spare = reg.push_image("chain/spare", "v1", "amd64", 256 * 1024);
    let cluster = Cluster::start(dir.path()).await;
    let chart = chart();
    let mut controller = start_controller(&chart, &cluster, dir.path()).await;
    let metrics_port = chart
        .workload("Deployment", "pullahead-controller")
        .port("metrics");
    let agent_port = chart
        .workload("DaemonSet", "pullahead-agent")
        .port("metrics");

    // Karpenter: a pool and a claim for two pending pods, nominated to it.
    cluster.node_pool(POOL);
    cluster.node_claim(CLAIM, POOL, None);
    cluster.pending_pod(NS, "web-1", &[&web.reference, &sidecar.reference]);
    cluster.pending_pod(NS, "spare-1", &[&spare.reference]);
    let nominated_at = Instant::now();
    cluster.nominate(NS, "web-1", CLAIM);
    cluster.nominate(NS, "spare-1", CLAIM);
    // Nothing can be written before the node exists.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(cluster.prefetch(NODE).is_none());

    // The Node registers with the startup taint; the claim names it.
    let registered_at = Instant::now();
    cluster.register_node(NODE, POOL);
    cluster.node_claim(CLAIM, POOL, Some(NODE));
    let mut agent = start_agent(&chart, &cluster, &ctrd, dir.path()).await;
    let all = [
        web.reference.as_str(),
        sidecar.reference.as_str(),
        spare.reference.as_str(),
    ];
    let ctx = context(&cluster, &[&controller]);
    wait_for(
        "the NodePrefetch with the pods' images",
        Duration::from_secs(20),
        async || {
            let mut got = cluster.ordered(NODE);
            got.sort();
            let mut want: Vec<String> = all.iter().map(|s| s.to_string()).collect();
            want.sort();
            got == want
        },
        &ctx,
    )
    .await;
    let written = registered_at.elapsed();
    let since_nominated = nominated_at.elapsed();
    wait_for(
        "every image in containerd",
        Duration::from_secs(60),
        async || in_containerd(&ctrd, &all).await.is_empty(),
        &ctx,
    )
    .await;
    let in_runtime = registered_at.elapsed();
    wait_for(
        "every image present in the status",
        Duration::from_secs(60),
        async || present(&cluster) == 3,
        &ctx,
    )
    .await;
    let all_present = registered_at.elapsed();
    assert_eq!(status(&cluster)["wanted"], 3);
    assert_eq!(in_containerd(&ctrd, &all).await, Vec::<String>::new());
    wait_for(
        "the startup taint removed",
        Duration::from_secs(10),
        async || !cluster.taints(NODE).contains(&TAINT.to_string()),
        &ctx,
    )
    .await;
    wait_for(
        "the taint's reason in the status",
        Duration::from_secs(10),
        async || status(&cluster)["startupTaint"]["released"] == true,
        &ctx,
    )
    .await;
    let reason = status(&cluster)["startupTaint"]["reason"].clone();
    assert!(
        reason
            .as_str()
            .unwrap()
            .contains("every critical image is present"),
        "{reason}"
    );

    // The scheduler binds the pod now that the taint is gone; every image
    // it needs is on the node already. The spare pod goes away unbound.
    assert_eq!(
        in_containerd(&ctrd, &[&web.reference, &sidecar.reference]).await,
        Vec::<String>::new(),
        "present before the bind"
    );
    // Let the controller's status watch see the images land first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.bind(NS, "web-1", NODE);
    cluster
        .store()
        .remove(chain::PODS, &format!("{NS}/spare-1"));
    println!(
        "chain timings: nominated→NodePrefetch written {:.3}s; registration→NodePrefetch written {:.3}s; registration→all {} images in containerd {:.3}s, shown present in the status {:.3}s (--status-interval 2s)",
        since_nominated.as_secs_f64(),
        written.as_secs_f64(),
        all.len(),
        in_runtime.as_secs_f64(),
        all_present.as_secs_f64()
    );

    // The agent's pull metrics.
    let page = agent.metrics(agent_port).await;
    assert_eq!(
        sample(&page, "pullahead_pulls_total{result=\"ok\"}"),
        Some(3.0),
        "{page}"
    );
    assert!(
        sample(&page, "pullahead_pull_bytes_total").unwrap_or(0.0) > 0.0,
        "{page}"
    );
    assert_eq!(
        sample(&page, "pullahead_pull_duration_seconds_count"),
        Some(3.0),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            &format!("pullahead_pulls_in_flight{{node=\"{NODE}\"}}")
        ),
        Some(0.0),
        "{page}"
    );

    // SIGTERM: exit 0, the last status written; a new agent pulls nothing.
    let code = agent.terminate(Duration::from_secs(10));
    assert_eq!(code.code(), Some(0), "{}", agent.log_text());
    assert!(
        agent.log_text().contains("final status written"),
        "{}",
        agent.log_text()
    );
    assert_eq!(status(&cluster)["pulling"], 0);
    let again = start_agent(&chart, &cluster, &ctrd, dir.path()).await;
    let ctx2 = context(&cluster, &[&again]);
    wait_for(
        "the restarted agent to find every image present",
        Duration::from_secs(20),
        async || {
            let page = again.metrics(agent_port).await;
            sample(&page, "pullahead_pulls_total{result=\"present\"}") == Some(3.0)
        },
        &ctx2,
    )
    .await;
    let page = again.metrics(agent_port).await;
    assert_eq!(
        sample(&page, "pullahead_pulls_total{result=\"ok\"}"),
        None,
        "{page}"
    );

    wait_for(
        "the restarted agent's status",
        Duration::from_secs(10),
        async || {
            let s = status(&cluster);
            s["present"] == 3
                && s["startupTaint"]["reason"] == "not on the node when the agent started"
        },
        &ctx2,
    )
    .await;

    // The node leaves holding the spare image nobody used: waste.
    let spare_bytes = status(&cluster)["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["image"] == spare.reference.as_str())
        .and_then(|i| i["bytes"].as_f64())
        .unwrap_or_else(|| panic!("the spare image's size in {}", status(&cluster)));
    cluster.store().remove(chain::NODES, NODE);
    cluster.store().remove(chain::CLAIMS, CLAIM);
    let ctx3 = context(&cluster, &[&controller]);
    wait_for(
        "the waste counted",
        Duration::from_secs(10),
        async || {
            let page = controller.metrics(metrics_port).await;
            sample(&page, "pullahead_wasted_bytes_total").unwrap_or(0.0) > 0.0
        },
        &ctx3,
    )
    .await;
    let page = controller.metrics(metrics_port).await;
    assert_eq!(
        sample(&page, "pullahead_wasted_bytes_total"),
        Some(spare_bytes),
        "{page}"
    );
    assert_eq!(
        sample(&page, "pullahead_prefetch_lead_time_seconds_count"),
        Some(2.0),
        "web and sidecar landed before their pod bound:\n{page}"
    );
    assert!(
        page.contains("\npullahead_forecast_brier_score NaN"),
        "no order carried a probability: no score, not a perfect one:\n{page}"
    );
    drop(again);
    let code = controller.terminate(Duration::from_secs(30));
    assert_eq!(code.code(), Some(0), "{}", controller.log_text());
    // One NodePrefetch, applied (never created twice).
    assert_eq!(cluster.store().all(chain::PREFETCHES).len(), 1);
}

/// Pending pods nominated to `CLAIM`, one per image.
fn nominate_pods(cluster: &Cluster, images: &[&str]) {
    for (i, image) in images.iter().enumerate() {
        let pod = format!("app-{i}");
        cluster.pending_pod(NS, &pod, &[image]);
        cluster.nominate(NS, &pod, CLAIM);
    }
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Claim before Node: the NodeClaim reports its node before the API
/// shows the Node. The plan is kept, and written once the Node appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_naming_its_node_before_the_node_exists_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path()).await;
    let chart = chart();
    let controller = start_controller(&chart, &cluster, dir.path()).await;
    let port = chart
        .workload("Deployment", "pullahead-controller")
        .port("metrics");
    let images = ["127.0.0.1:1/a/one:v1", "127.0.0.1:1/a/two:v1"];
    cluster.node_pool(POOL);
    cluster.node_claim(CLAIM, POOL, None);
    nominate_pods(&cluster, &images);
    cluster.node_claim(CLAIM, POOL, Some(NODE));
    let ctx = context(&cluster, &[&controller]);
    wait_for(
        "the controller to find no Node yet",
        Duration::from_secs(10),
        async || {
            let page = controller.metrics(port).await;
            sample(&page, "pullahead_plans_awaiting_node") == Some(1.0)
        },
        &ctx,
    )
    .await;
    assert!(cluster.prefetch(NODE).is_none());
    cluster.register_node(NODE, POOL);
    wait_for(
        "the kept plan written",
        Duration::from_secs(10),
        async || {
            let mut got = cluster.ordered(NODE);
            got.sort();
            got == sorted(&images)
        },
        &ctx,
    )
    .await;
    let page = controller.metrics(port).await;
    assert_eq!(
        sample(&page, "pullahead_plans_awaiting_node"),
        Some(0.0),
        "{page}"
    );
}

/// The API server goes away mid-run; while it is away the scale-out
/// happens (another replica of it takes the writes). When it is back, the
/// controller relists, writes the plan it owes, once, and is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_restart_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path()).await;
    let chart = chart();
    let mut controller = start_controller(&chart, &cluster, dir.path()).await;
    let images = ["127.0.0.1:1/b/one:v1", "127.0.0.1:1/b/two:v1"];
    cluster.node_pool(POOL);
    cluster.node_claim(CLAIM, POOL, None);
    tokio::time::sleep(Duration::from_millis(300)).await;

    cluster.stop_api();
    let down = Instant::now();
    nominate_pods(&cluster, &images);
    cluster.register_node(NODE, POOL);
    cluster.node_claim(CLAIM, POOL, Some(NODE));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(controller.exited().is_none(), "{}", controller.log_text());
    assert_eq!(
        controller.check("liveness").await,
        200,
        "the controller stays alive while the API server is away"
    );
    assert!(cluster.prefetch(NODE).is_none(), "nothing could be written");
    cluster.restart_api().await;
    let ctx = context(&cluster, &[&controller]);
    let after = wait_for(
        "the plan written after the restart",
        Duration::from_secs(45),
        async || {
            let mut got = cluster.ordered(NODE);
            got.sort();
            got == sorted(&images)
        },
        &ctx,
    )
    .await;
    println!(
        "api restart: down {:.1}s, NodePrefetch written {:.3}s after it came back",
        (down.elapsed() - after).as_secs_f64(),
        after.as_secs_f64()
    );
    wait_for(
        "readiness again",
        Duration::from_secs(30),
        async || controller.check("readiness").await == 200,
        &ctx,
    )
    .await;
    // One NodePrefetch and one Lease: applied and updated, never re-created.
    assert_eq!(cluster.store().all(chain::PREFETCHES).len(), 1);
    assert_eq!(
        cluster
            .store()
            .all("/apis/coordination.k8s.io/v1/namespaces/pullahead/leases")
            .len(),
        1
    );
    let posts: Vec<String> = cluster
        .api
        .writes
        .lock()
        .unwrap()
        .iter()
        .filter(|w| w.method == "POST" && w.path.contains("nodeprefetches"))
        .map(|w| w.path.clone())
        .collect();
    assert!(posts.is_empty(), "{posts:?}");
    let code = controller.terminate(Duration::from_secs(30));
    assert_eq!(code.code(), Some(0), "{}", controller.log_text());
}

/// A 30 s registry outage during the pulls: the agent keeps retrying
/// (with an agent restart, by SIGTERM, in the middle), the images land
/// once the registry is back, and the taint goes then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_land_after_a_30s_registry_outage() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = Registry::start();
    let ctrd = Containerd::start();
    ctrd.trust(&reg.addr);
    let a = reg.push_image("outage/a", "v1", "amd64", 128 * 1024);
    let b = reg.push_image("outage/b", "v1", "amd64", 128 * 1024);
    let images = [a.reference.as_str(), b.reference.as_str()];
    let cluster = Cluster::start(dir.path()).await;
    let chart = chart();
    let controller = start_controller(&chart, &cluster, dir.path()).await;

    reg.stop();
    let outage = Instant::now();
    cluster.node_pool(POOL);
    cluster.node_claim(CLAIM, POOL, None);
    nominate_pods(&cluster, &images);
    cluster.register_node(NODE, POOL);
    cluster.node_claim(CLAIM, POOL, Some(NODE));
    let mut agent = start_agent(&chart, &cluster, &ctrd, dir.path()).await;
    let ctx = context(&cluster, &[&agent, &controller]);
    wait_for(
        "failed attempts reported",
        Duration::from_secs(20),
        async || {
            status(&cluster)["images"]
                .as_array()
                .is_some_and(|i| i.iter().any(|i| i["message"].is_string()))
        },
        &ctx,
    )
    .await;
    // SIGTERM in the middle of the retries: exit 0, and the last status
    // says the pulls stopped, not that they are running.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let code = agent.terminate(Duration::from_secs(10));
    assert_eq!(code.code(), Some(0), "{}", agent.log_text());
    let last = status(&cluster);
    assert_eq!(last["pulling"], 0, "{last}");
    assert_eq!(last["present"], 0, "{last}");
    assert!(last.to_string().contains("agent stopped"), "{last}");
    assert!(cluster.taints(NODE).contains(&TAINT.to_string()));
    let agent = start_agent(&chart, &cluster, &ctrd, dir.path()).await;
    let ctx = context(&cluster, &[&agent]);

    let rest = Duration::from_secs(30).saturating_sub(outage.elapsed());
    tokio::time::sleep(rest).await;
    assert_eq!(
        present(&cluster),
        0,
        "nothing lands while the registry is down"
    );
    reg.resume();
    let back = Instant::now();
    wait_for(
        "the images after the outage",
        Duration::from_secs(40),
        async || present(&cluster) == 2,
        &ctx,
    )
    .await;
    let landed = back.elapsed();
    assert_eq!(in_containerd(&ctrd, &images).await, Vec::<String>::new());
    wait_for(
        "the startup taint removed",
        Duration::from_secs(10),
        async || !cluster.taints(NODE).contains(&TAINT.to_string()),
        &ctx,
    )
    .await;
    println!(
        "registry outage: {:.1}s down; every image present {:.3}s after it came back",
        outage.elapsed().as_secs_f64() - back.elapsed().as_secs_f64(),
        landed.as_secs_f64()
    );
}

/// A critical image that does not exist: it fails for good, and the taint
/// is released anyway (pods come on and kubelet reports the same error),
/// with the status saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_critical_image_fails_and_the_taint_is_released_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let ctrd = Containerd::start();
    ctrd.trust(&reg.addr);
    let ok = reg.push_image("miss/ok", "v1", "amd64", 64 * 1024);
    let missing = format!("{}/miss/nothing:v1", reg.addr);
    let cluster = Cluster::start(dir.path()).await;
    let chart = chart();
    let _controller = start_controller(&chart, &cluster, dir.path()).await;
    cluster.node_pool(POOL);
    cluster.node_claim(CLAIM, POOL, None);
    nominate_pods(&cluster, &[&ok.reference, &missing]);
    cluster.register_node(NODE, POOL);
    cluster.node_claim(CLAIM, POOL, Some(NODE));
    let agent = start_agent(&chart, &cluster, &ctrd, dir.path()).await;
    let ctx = context(&cluster, &[&agent]);
    wait_for(
        "the taint released",
        Duration::from_secs(30),
        async || {
            !cluster.taints(NODE).contains(&TAINT.to_string())
                && status(&cluster)["startupTaint"]["released"] == true
        },
        &ctx,
    )
    .await;
    let s = status(&cluster);
    assert_eq!(
        (s["present"].as_u64(), s["failed"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    let reason = s["startupTaint"]["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("1 failed"), "{reason}");
    assert!(
        reason.contains(&missing),
        "the reason names the image: {reason}"
    );
    assert!(reason.contains("not found"), "and why it failed: {reason}");
}
