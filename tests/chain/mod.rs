//! The harness of the deployed-chain tests.
//!
//! - [`Chart`]: `helm template` of the repository's chart, and each
//!   workload's container as rendered: args, env, ports, probes, mounts.
//! - [`Workload::spawn`] starts that container as a `pullahead` process,
//!   substituting only what a pod gets from its node: the downward-API env
//!   (node and pod names), the mounts (ConfigMap files, the containerd
//!   socket), the container port (mapped to a free loopback port, as a port
//!   mapping would) and the API server (a kubeconfig instead of the
//!   in-cluster service account).
//! - [`Cluster`]: the stateful fake API server over HTTP, and the other
//!   actors of a Karpenter scale-out played by writing objects into it:
//!   Karpenter (NodePool, NodeClaim, `Nominated` events), kubelet (the Node
//!   registering with a startup taint) and the scheduler (binding pods).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::ops::fake_api::{FakeApi, HttpServer, kubeconfig};
use crate::ops::store::{Store, now_rfc3339};

/// The namespace the chart is rendered into.
pub const NAMESPACE: &str = "pullahead";
/// The startup taint key of the chart's default values.
pub const TAINT: &str = "pullahead.io/prefetching";

/// The rendered chart.
pub struct Chart {
    docs: Vec<Value>,
}

impl Chart {
    /// `helm template pullahead deploy/helm/pullahead` with `--set` values.
    pub fn render(set: &[&str]) -> Self {
        let helm = crate::ops::tool(
            "PULLAHEAD_HELM",
            "/opt/pullahead-tools/helm/helm",
            ".ci/setup.d/30-helm.sh",
        );
        let mut cmd = Command::new(helm);
        cmd.args(["template", "pullahead"])
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/deploy/helm/pullahead"
            ))
            .args(["--namespace", NAMESPACE]);
        for s in set {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().expect("run helm template");
        assert!(
            out.status.success(),
            "helm template failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf-8 manifests");
        let docs = text
            .split("\n---")
            .filter_map(|d| serde_yaml_ng::from_str::<Value>(d).ok())
            .filter(|v| v.is_object())
            .collect();
        Self { docs }
    }

    /// The object of `kind` named `name`.
    pub fn object(&self, kind: &str, name: &str) -> &Value {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("the chart renders no {kind} {name}"))
    }

    /// The single container of workload `kind/name`, with what it needs.
    pub fn workload(&self, kind: &str, name: &str) -> Workload {
        let pod = &self.object(kind, name)["spec"]["template"]["spec"];
        let containers = pod["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "{kind}/{name}: one container");
        let c = containers[0].clone();
        let mut files = HashMap::new();
        let mut host_paths = HashMap::new();
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let vol = pod["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == m["name"])
                .expect("the mount's volume");
            let mount = m["mountPath"].as_str().unwrap().to_string();
            if let Some(cm) = vol["configMap"]["name"].as_str() {
                let data = self.object("ConfigMap", cm)["data"].clone();
                files.insert(mount, data);
            } else if let Some(p) = vol["hostPath"]["path"].as_str() {
                host_paths.insert(mount, p.to_string());
            } else {
                panic!("{kind}/{name}: volume {} of an unknown kind", vol["name"]);
            }
        }
        Workload {
            name: name.to_string(),
            container: c,
            config_maps: files,
            host_paths,
        }
    }
}

/// One container of the chart, ready to run as a process.
pub struct Workload {
    pub name: String,
    pub container: Value,
    /// mountPath → the ConfigMap's `data`.
    config_maps: HashMap<String, Value>,
    /// mountPath → the host path mounted there.
    host_paths: HashMap<String, String>,
}

/// What the test supplies in place of the node.
pub struct Host<'a> {
    /// `spec.nodeName` of the pod.
    pub node: &'a str,
    /// `metadata.name` of the pod.
    pub pod: &'a str,
    /// The node's files: host path → the local stand-in (the CRI socket).
    pub host_paths: &'a [(&'a str, &'a Path)],
    pub kubeconfig: &'a Path,
    pub dir: &'a Path,
}

/// A running workload.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
    /// Container port → the loopback port it is served on.
    pub ports: HashMap<u16, u16>,
    probes: Value,
}

impl Workload {
    /// The container's port named `name`.
    pub fn port(&self, name: &str) -> u16 {
        self.container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("{}: no port {name}", self.name)) as u16
    }

    /// Starts the container's args, env and files as a `pullahead`
    /// process, with the substitutions of the module docs.
    pub fn spawn(&self, host: &Host) -> Proc {
        let ports: HashMap<u16, u16> = self.container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["containerPort"].as_u64().unwrap() as u16,
                    crate::support::free_port(),
                )
            })
            .collect();
        let mut paths: Vec<(String, PathBuf)> = Vec::new();
        for (mount, on_host) in &self.host_paths {
            let (_, local) = host
                .host_paths
                .iter()
                .find(|(h, _)| h == on_host)
                .unwrap_or_else(|| {
                    panic!("{}: the test supplies no host path {on_host}", self.name)
                });
            paths.push((mount.clone(), local.to_path_buf()));
        }
        for (mount, data) in &self.config_maps {
            let local = host.dir.join(format!(
                "{}-{}",
                self.name,
                mount.trim_matches('/').replace('/', "-")
            ));
            std::fs::create_dir_all(&local).unwrap();
            for (file, text) in data.as_object().unwrap() {
                let text = rewrite(text.as_str().unwrap(), &ports, &[]);
                std::fs::write(local.join(file), text).unwrap();
            }
            paths.push((mount.clone(), local));
        }
        let rw = |s: &str| rewrite(s, &ports, &paths);
        // The image's entrypoint is the binary; `command`, if the chart
        // sets one, names it first.
        let mut args: Vec<String> = self.container["command"]
            .as_array()
            .into_iter()
            .flatten()
            .skip(1)
            .chain(self.container["args"].as_array().into_iter().flatten())
            .map(|a| rw(a.as_str().unwrap()))
            .collect();
        if let Some(c) = self.container["command"][0].as_str() {
            assert!(c.ends_with("pullahead"), "{}: command {c}", self.name);
        }
        let log = host.dir.join(format!("{}.log", self.name));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pullahead"));
        cmd.args(args.drain(..))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", host.kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("PULLAHEAD_CHAIN_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(std::fs::File::create(host.dir.join(format!("{}.out", self.name))).unwrap())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            );
        for e in self.container["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap();
            let value = match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
                (Value::String(v), _) => rw(v),
                (_, Value::String(f)) => match f.as_str() {
                    "spec.nodeName" => host.node.to_string(),
                    "metadata.name" => host.pod.to_string(),
                    "metadata.namespace" => NAMESPACE.to_string(),
                    other => panic!("{}: downward-API field {other} not supplied", self.name),
                },
                other => panic!("{}: env {name} of an unknown form {other:?}", self.name),
            };
            cmd.env(name, value);
        }
        let child = cmd.spawn().expect("start pullahead");
        Proc {
            name: self.name.clone(),
            child: Some(child),
            log,
            ports,
            probes: json!({
                "liveness": self.container["livenessProbe"],
                "readiness": self.container["readinessProbe"],
                "ports": self.container["ports"],
            }),
        }
    }
}

/// Maps container ports and mount paths to their local stand-ins.
fn rewrite(s: &str, ports: &HashMap<u16, u16>, paths: &[(String, PathBuf)]) -> String {
    let mut out = s.to_string();
    for (c, h) in ports {
        out = out.replace(&format!("0.0.0.0:{c}"), &format!("127.0.0.1:{h}"));
    }
    for (mount, local) in paths {
        if out.starts_with(mount.as_str()) {
            out = format!("{}{}", local.display(), &out[mount.len()..]);
        }
    }
    out
}

impl Proc {
    /// The loopback address of container port `port`.
    pub fn addr(&self, port: u16) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.ports[&port]).into()
    }

    /// The probe `which` (`liveness`/`readiness`) as the chart declares it:
    /// (path, loopback address). `None` when the chart declares none.
    pub fn probe(&self, which: &str) -> Option<(String, std::net::SocketAddr)> {
        let p = &self.probes[which]["httpGet"];
        let path = p["path"].as_str()?.to_string();
        let port = match &p["port"] {
            Value::Number(n) => n.as_u64().unwrap() as u16,
            Value::String(name) => self.probes["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["name"] == name.as_str())
                .and_then(|x| x["containerPort"].as_u64())
                .expect("the probe's named port") as u16,
            other => panic!("probe port {other}"),
        };
        Some((path, self.addr(port)))
    }

    /// GET on the probe; its status code (0 when nothing answers).
    pub async fn check(&self, which: &str) -> u16 {
        let (path, addr) = self.probe(which).expect("a probe");
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => crate::ops::http_get(addr, &path).await.0,
            Err(_) => 0,
        }
    }

    /// The process's `/metrics` page, from the chart's `metrics` port.
    pub async fn metrics(&self, port: u16) -> String {
        crate::ops::http_get(self.addr(port), "/metrics").await.1
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, then waits up to `timeout` for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return s;
            }
            if Instant::now() > end {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "{} did not stop within {timeout:?}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The API server double and the cluster's other actors.
pub struct Cluster {
    pub api: Arc<FakeApi>,
    pub server: HttpServer,
    pub kubeconfig: PathBuf,
}

/// Collections the controller lists (empty ones answer an empty list).
pub const NODES: &str = "/api/v1/nodes";
pub const PODS: &str = "/api/v1/pods";
pub const EVENTS: &str = "/api/v1/events";
pub const CLAIMS: &str = "/apis/karpenter.sh/v1/nodeclaims";
pub const POOLS: &str = "/apis/karpenter.sh/v1/nodepools";
pub const PREFETCHES: &str = "/apis/pullahead.io/v1alpha1/nodeprefetches";

impl Cluster {
    /// A fresh API server on a free loopback port.
    pub async fn start(dir: &Path) -> Self {
        let api = FakeApi::stateful();
        let server = api.serve_http_at("127.0.0.1:0".parse().unwrap()).await;
        let kubeconfig = kubeconfig(dir, server.addr);
        Self {
            api,
            server,
            kubeconfig,
        }
    }

    pub fn store(&self) -> &Store {
        self.api.store()
    }

    /// The API server goes away: listener and connections closed.
    pub fn stop_api(&self) {
        self.server.stop();
    }

    /// ...and comes back on the same address, with the same objects.
    pub async fn restart_api(&mut self) {
        self.server = self.api.serve_http_at(self.server.addr).await;
    }

    /// Karpenter: a NodePool.
    pub fn node_pool(&self, name: &str) {
        self.store().put(
            POOLS,
            json!({"apiVersion": "karpenter.sh/v1", "kind": "NodePool",
                   "metadata": {"name": name, "generation": 1},
                   "spec": {"template": {"spec": {
                       "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"},
                       "requirements": [{"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]}],
                       "startupTaints": [{"key": TAINT, "effect": "NoSchedule"}]}},
                     "disruption": {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "1m"}},
                   "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "",
                                              "lastTransitionTime": "2025-06-01T09:00:00Z", "observedGeneration": 1}]}}),
        );
    }

    /// Karpenter: a NodeClaim launched (no node yet), or registered with
    /// its node's name.
    pub fn node_claim(&self, name: &str, pool: &str, node: Option<&str>) {
        let conds: &[&str] = if node.is_some() {
            &["Launched", "Registered"]
        } else {
            &["Launched"]
        };
        let mut c = crate::common::node_claim(name, "1", pool, conds, node);
        strip_meta(&mut c);
        self.store().put(CLAIMS, c);
    }

    /// A pending pod with `images`, as a Deployment's ReplicaSet makes it.
    pub fn pending_pod(&self, ns: &str, name: &str, images: &[&str]) {
        let mut p = crate::common::pod(ns, name, "1", name, None);
        strip_meta(&mut p);
        p["spec"]["containers"] = Value::Array(
            images
                .iter()
                .enumerate()
                .map(|(i, image)| {
                    json!({"name": format!("c{i}"), "image": image, "imagePullPolicy": "IfNotPresent",
                           "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}})
                })
                .collect(),
        );
        self.store().put(PODS, p);
    }

    /// Karpenter: the `Nominated` event of `pod` for `claim`.
    pub fn nominate(&self, ns: &str, pod: &str, claim: &str) {
        let mut e = crate::common::kube_event(
            &format!("{pod}.nominated"),
            "1",
            "Nominated",
            &format!("Pod should schedule on: nodeclaim/{claim}"),
            ("Pod", ns, pod),
            "karpenter",
            None,
        );
        strip_meta(&mut e);
        let now = now_rfc3339();
        e["firstTimestamp"] = json!(now);
        e["lastTimestamp"] = json!(now);
        self.store().put(EVENTS, e);
    }

    /// kubelet: the Node registers, not ready, with the startup taint.
    pub fn register_node(&self, name: &str, pool: &str) {
        let mut n = crate::common::node(name, "1", false, pool);
        strip_meta(&mut n);
        n["spec"]["taints"] = json!([{"key": TAINT, "effect": "NoSchedule"}]);
        self.store().put(NODES, n);
    }

    /// The scheduler: binds `pod` to `node`.
    pub fn bind(&self, ns: &str, pod: &str, node: &str) {
        self.store()
            .update(PODS, &format!("{ns}/{pod}"), |p| {
                p["spec"]["nodeName"] = json!(node);
                p["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "True",
                    "lastProbeTime": null, "lastTransitionTime": now_rfc3339()}]);
            })
            .expect("the pod");
    }

    /// The taints of `node` now.
    pub fn taints(&self, node: &str) -> Vec<String> {
        self.store()
            .get(NODES, node)
            .and_then(|n| n["spec"]["taints"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|t| t["key"].as_str().map(str::to_string))
            .collect()
    }

    /// `node`'s NodePrefetch, if written.
    pub fn prefetch(&self, node: &str) -> Option<Value> {
        self.store().get(PREFETCHES, node)
    }

    /// The images of `node`'s NodePrefetch spec.
    pub fn ordered(&self, node: &str) -> Vec<String> {
        self.prefetch(node)
            .and_then(|o| o["spec"]["images"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|i| i["image"].as_str().map(str::to_string))
            .collect()
    }
}

/// Drops the fixture's fixed resourceVersion and uid: the store sets them.
fn strip_meta(v: &mut Value) {
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("resourceVersion");
        m.remove("uid");
        m.remove("managedFields");
    }
}

/// Polls `f` every 50 ms; panics with `what` and `context()` after `timeout`.
pub async fn wait_for(
    what: &str,
    timeout: Duration,
    mut f: impl AsyncFnMut() -> bool,
    context: impl Fn() -> String,
) -> Duration {
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}
