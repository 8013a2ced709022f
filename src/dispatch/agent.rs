//! `pullahead agent`: the per-node DaemonSet process.
//!
//! It watches its own `NodePrefetch` (named after the node), turns the spec
//! into [`Order`]s for the [`Puller`], publishes progress to the status
//! subresource at most once per `--status-interval` (2 s), and can remove a
//! startup taint once every critical image is present or `--release-after`
//! has passed.
//!
//! Registry credentials come from dockerconfigjson: files mounted into the
//! agent's pod (`--docker-config`) and the `imagePullSecrets` of the agent's
//! pod and ServiceAccount, read through the API. They go to containerd in the
//! CRI `AuthConfig` and are never logged.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Secret, ServiceAccount};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::clock::SystemClock;
use crate::dispatch::crd::{ImageOrder, ImageStatus, NodePrefetch, NodePrefetchStatus, PullState};
use crate::dispatch::cri::{self, CriClient, ImageService};
use crate::dispatch::puller::{Board, Options, Order, Puller};
use crate::registry::{self, DockerConfig};

/// Errors from the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CRI socket could not be used.
    #[error(transparent)]
    Cri(#[from] cri::Error),
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {context}: {source}")]
    Kube {
        /// What was being done.
        context: String,
        /// The client's error.
        source: kube::Error,
    },
    /// An object kept changing under an update.
    #[error("{0}: still conflicting after 5 tries")]
    Conflict(String),
    /// A credentials source is not valid.
    #[error(transparent)]
    Credentials(#[from] registry::Error),
    /// A credentials file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A disk, budget or clean-up setting is not valid.
    #[error(transparent)]
    Safety(#[from] crate::dispatch::safety::Error),
    /// A flag value is not valid.
    #[error("invalid --{flag} {value:?}: {message}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
        /// Why.
        message: String,
    },
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn kube_err(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let context = context.into();
    move |source| Error::Kube { context, source }
}

/// Flags of `pullahead agent`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// This node's name (from the downward API `spec.nodeName`).
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// containerd's CRI socket, mounted from the host.
    #[arg(
        long,
        env = "PULLAHEAD_CRI_SOCKET",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub cri_socket: PathBuf,
    /// Pulls running at once.
    #[arg(long, env = "PULLAHEAD_PARALLEL", default_value_t = 4)]
    pub parallel: usize,
    /// A startup taint key to remove from the node once every critical image is present.
    #[arg(long, env = "PULLAHEAD_RELEASE_TAINT")]
    pub release_taint: Option<String>,
    /// Remove --release-taint after this long even if critical images are missing (e.g. `90s`, `5m`).
    #[arg(long, env = "PULLAHEAD_RELEASE_AFTER")]
    pub release_after: Option<String>,
    /// Least time between two status writes for this node (e.g. `2s`).
    #[arg(long, env = "PULLAHEAD_STATUS_INTERVAL", default_value = "2s")]
    pub status_interval: String,
    /// dockerconfigjson file(s) with registry credentials (repeatable, comma-separated).
    #[arg(
        long = "docker-config",
        env = "PULLAHEAD_DOCKER_CONFIG",
        value_delimiter = ','
    )]
    pub docker_config: Vec<PathBuf>,
    /// The agent's own pod, whose (and whose ServiceAccount's) imagePullSecrets are used.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// The agent pod's namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "pullahead")]
    pub pod_namespace: String,
    /// Attempts per image for retryable failures.
    #[arg(long, env = "PULLAHEAD_ATTEMPTS", default_value_t = 5)]
    pub attempts: u32,
    /// Disk headroom, registry and cluster budgets, clean-up.
    #[command(flatten)]
    pub safety: crate::dispatch::safety::SafetyArgs,
}

/// Parses a duration flag such as `2s`, `90s`, `5m` or `PT1M`.
pub fn parse_duration(flag: &'static str, value: &str) -> Result<Duration> {
    let bad = |message: String| Error::Flag {
        flag,
        value: value.to_string(),
        message,
    };
    let d: jiff::SignedDuration = value.parse().map_err(|e: jiff::Error| bad(e.to_string()))?;
    Duration::try_from(d).map_err(|_| bad("must not be negative".into()))
}

/// Turns the spec into orders: deadlines as clock seconds, credentials
/// matched by registry host.
pub fn orders_from_spec(images: &[ImageOrder], creds: &DockerConfig) -> Vec<Order> {
    images
        .iter()
        .map(|i| Order {
            image: i.image.clone(),
            priority: i.priority,
            deadline: i
                .deadline
                .as_ref()
                .map(|t| t.0.as_millisecond() as f64 / 1000.0),
            critical: i.critical,
            auth: creds.for_image(&i.image).map(|c| c.cri_auth()),
            bytes: i.bytes,
        })
        .collect()
}

/// The status to publish: one entry per spec image in spec order (pending
/// when the board has nothing yet), with the summary counts.
pub fn status_for(spec: &[ImageOrder], board: &Board) -> NodePrefetchStatus {
    let mut seen = HashSet::new();
    let images = spec
        .iter()
        .filter(|i| seen.insert(i.image.clone()))
        .map(|i| {
            board.get(&i.image).unwrap_or_else(|| ImageStatus {
                image: i.image.clone(),
                ..ImageStatus::default()
            })
        })
        .collect();
    let facts = board.facts();
    NodePrefetchStatus {
        image_fs: facts.image_fs,
        reclaimed_bytes: facts.reclaimed_bytes,
        ..NodePrefetchStatus::from_images(images)
    }
}

/// Whether every critical image in the spec is present.
pub fn critical_ready(spec: &[ImageOrder], board: &Board) -> bool {
    spec.iter().filter(|i| i.critical).all(|i| {
        board
            .get(&i.image)
            .is_some_and(|s| s.state == PullState::Present)
    })
}

/// Publishes a node's status, at most once per `interval`, and only when it
/// changed since the last write.
pub struct StatusWriter {
    api: Api<NodePrefetch>,
    node: String,
    interval: Duration,
    writes: Arc<AtomicU64>,
}

impl StatusWriter {
    /// A writer for `node`'s object.
    pub fn new(api: Api<NodePrefetch>, node: impl Into<String>, interval: Duration) -> Self {
        Self {
            api,
            node: node.into(),
            interval,
            writes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Writes made so far (for metrics and tests).
    pub fn writes(&self) -> Arc<AtomicU64> {
        self.writes.clone()
    }

    /// Runs until `spec` closes: waits for a change, waits out the interval
    /// since the last write (collecting more changes meanwhile), writes once.
    pub async fn run(self, board: Arc<Board>, mut spec: watch::Receiver<Vec<ImageOrder>>) {
        let mut changes = board.subscribe();
        let mut last_write: Option<Instant> = None;
        let mut last: Option<NodePrefetchStatus> = None;
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                r = spec.changed() => if r.is_err() { return },
            }
            if let Some(t) = last_write {
                tokio::time::sleep_until(t + self.interval).await;
            }
            let status = status_for(&spec.borrow(), &board);
            if last.as_ref() == Some(&status) {
                continue;
            }
            last_write = Some(Instant::now());
            match self.write(&status).await {
                Ok(()) => last = Some(status),
                // The next change (or the retry below) writes again.
                Err(e) => {
                    tracing::warn!(node = %self.node, error = %e, "status write failed");
                    board.set_dirty();
                }
            }
        }
    }

    /// One merge patch of the status subresource.
    pub async fn write(&self, status: &NodePrefetchStatus) -> Result<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let patch = serde_json::json!({ "status": status });
        self.api
            .patch_status(&self.node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(kube_err(format!(
                "patch status of nodeprefetch {}",
                self.node
            )))?;
        Ok(())
    }
}

/// Removes every taint with `key` from `node`. Returns whether one was
/// removed. Uses replace with the read resourceVersion, so a concurrent
/// change to the node makes it re-read rather than overwrite.
pub async fn release_taint(nodes: &Api<Node>, node: &str, key: &str) -> Result<bool> {
    for _ in 0..5 {
        let mut n = nodes
            .get(node)
            .await
            .map_err(kube_err(format!("get node {node}")))?;
        let Some(taints) = n.spec.as_mut().and_then(|s| s.taints.as_mut()) else {
            return Ok(false);
        };
        let before = taints.len();
        taints.retain(|t| t.key != key);
        if taints.len() == before {
            return Ok(false);
        }
        match nodes.replace(node, &PostParams::default(), &n).await {
            Ok(_) => {
                tracing::info!(node, taint = key, "released startup taint");
                return Ok(true);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(kube_err(format!("update node {node}"))(e)),
        }
    }
    Err(Error::Conflict(format!("node {node}")))
}

/// Credentials from the `imagePullSecrets` of a pod and of its
/// ServiceAccount. Secrets that are missing or not dockerconfigjson are
/// skipped with a warning naming them (never their content).
pub async fn pull_secrets_of_pod(
    client: Client,
    namespace: &str,
    pod: &str,
) -> Result<DockerConfig> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let p = pods
        .get(pod)
        .await
        .map_err(kube_err(format!("get pod {namespace}/{pod}")))?;
    let spec = p.spec.unwrap_or_default();
    let mut names: Vec<String> = spec
        .image_pull_secrets
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect();
    let sa_name = spec
        .service_account_name
        .unwrap_or_else(|| "default".into());
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    match sas.get_opt(&sa_name).await {
        Ok(Some(sa)) => names.extend(
            sa.image_pull_secrets
                .unwrap_or_default()
                .into_iter()
                .map(|r| r.name),
        ),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(serviceaccount = %sa_name, error = %e, "cannot read ServiceAccount")
        }
    }
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let mut all = DockerConfig::default();
    for name in names {
        let s = match secrets.get_opt(&name).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                tracing::warn!(secret = %name, "imagePullSecret not found");
                continue;
            }
            Err(e) => return Err(kube_err(format!("get secret {namespace}/{name}"))(e)),
        };
        let data = s.data.unwrap_or_default();
        let Some(bytes) = data
            .get(".dockerconfigjson")
            .or_else(|| data.get(".dockercfg"))
        else {
            tracing::warn!(secret = %name, "imagePullSecret holds no .dockerconfigjson");
            continue;
        };
        all.merge(DockerConfig::parse(
            &bytes.0,
            &format!("secret {namespace}/{name}"),
        )?);
    }
    Ok(all)
}

/// The agent's running parts, wired to one node.
pub struct Agent<C: ImageService> {
    node: String,
    puller: Puller<C, SystemClock>,
    creds: DockerConfig,
    spec_tx: watch::Sender<Vec<ImageOrder>>,
    submitted: HashSet<String>,
}

impl<C: ImageService> Agent<C> {
    /// An agent pulling through `cri`.
    pub fn new(node: impl Into<String>, cri: Arc<C>, opts: Options, creds: DockerConfig) -> Self {
        let (spec_tx, _) = watch::channel(Vec::new());
        Self {
            node: node.into(),
            puller: Puller::new(cri, Arc::new(SystemClock), opts),
            creds,
            spec_tx,
            submitted: HashSet::new(),
        }
    }

    /// The progress board.
    pub fn board(&self) -> Arc<Board> {
        self.puller.board()
    }

    /// A receiver of the current spec, for the status writer.
    pub fn spec(&self) -> watch::Receiver<Vec<ImageOrder>> {
        self.spec_tx.subscribe()
    }

    /// Adds a check around every pull (disk, budgets, clean-up record).
    pub fn with_guard(mut self, guard: Arc<dyn crate::dispatch::guard::PullGuard>) -> Self {
        self.puller = self.puller.with_guard(guard);
        self
    }

    /// Takes a new spec: starts images not yet started (as one batch, by
    /// priority) and forgets images no longer wanted. Returns the started
    /// batch's task.
    pub fn apply(&mut self, images: Vec<ImageOrder>) -> Option<tokio::task::JoinHandle<()>> {
        let wanted: HashSet<String> = images.iter().map(|i| i.image.clone()).collect();
        self.submitted.retain(|i| wanted.contains(i));
        self.puller.board().retain(&wanted);
        let fresh: Vec<ImageOrder> = images
            .iter()
            .filter(|i| !self.submitted.contains(&i.image))
            .cloned()
            .collect();
        self.spec_tx.send_replace(images);
        if fresh.is_empty() {
            return None;
        }
        self.submitted.extend(fresh.iter().map(|i| i.image.clone()));
        let orders = orders_from_spec(&fresh, &self.creds);
        tracing::info!(node = %self.node, images = orders.len(), "new prefetch orders");
        let puller = self.puller.clone();
        Some(tokio::spawn(async move {
            puller.run(orders).await;
        }))
    }
}

/// Runs the agent until the watch ends or the process is stopped.
pub async fn run(args: Args) -> Result<()> {
    let interval = parse_duration("status-interval", &args.status_interval)?;
    let release_after = args
        .release_after
        .as_deref()
        .map(|v| parse_duration("release-after", v))
        .transpose()?;
    let cri = Arc::new(CriClient::new(&args.cri_socket)?);
    registry::install_crypto_provider();
    let client = Client::try_default().await.map_err(kube_err(
        "build client from kubeconfig or in-cluster config",
    ))?;
    let mut creds = DockerConfig::default();
    for p in &args.docker_config {
        let bytes = std::fs::read(p).map_err(|source| Error::Io {
            path: p.clone(),
            source,
        })?;
        creds.merge(DockerConfig::parse(&bytes, &p.display().to_string())?);
    }
    if let Some(pod) = &args.pod_name {
        creds.merge(pull_secrets_of_pod(client.clone(), &args.pod_namespace, pod).await?);
    }
    tracing::info!(node = %args.node, registries = ?creds.hosts(), "agent starting");
    let opts = Options {
        parallel: args.parallel,
        max_attempts: args.attempts.max(1),
        ..Options::default()
    };
    let safety = crate::dispatch::safety::Safety::start(
        &args.safety,
        crate::dispatch::safety::Wiring {
            node: &args.node,
            namespace: &args.pod_namespace,
            client: client.clone(),
            cri: cri.clone(),
            creds: creds.clone(),
            registry: &prometheus::Registry::new(),
        },
    )?;
    let mut agent = Agent::new(args.node.clone(), cri, opts, creds);
    for g in safety.guards(agent.board()) {
        agent = agent.with_guard(g);
    }
    let api: Api<NodePrefetch> = Api::all(client.clone());
    let writer = StatusWriter::new(api.clone(), args.node.clone(), interval);
    tokio::spawn(writer.run(agent.board(), agent.spec()));
    if let Some(key) = args.release_taint.clone() {
        let nodes: Api<Node> = Api::all(client.clone());
        tokio::spawn(taint_releaser(
            nodes,
            args.node.clone(),
            key,
            release_after,
            agent.board(),
            agent.spec(),
        ));
    }
    let cfg = watcher::Config::default().fields(&format!("metadata.name={}", args.node));
    let mut events = watcher(api, cfg).default_backoff().boxed();
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Apply(npf) | watcher::Event::InitApply(npf)) => {
                agent.apply(npf.spec.images);
            }
            Ok(watcher::Event::Delete(_)) => {
                agent.apply(Vec::new());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "NodePrefetch watch error; retrying"),
        }
    }
    Ok(())
}

/// Waits until the critical images are present or `after` has passed, then
/// removes the taint.
pub async fn taint_releaser(
    nodes: Api<Node>,
    node: String,
    key: String,
    after: Option<Duration>,
    board: Arc<Board>,
    mut spec: watch::Receiver<Vec<ImageOrder>>,
) {
    let deadline = after.map(|d| Instant::now() + d);
    let mut changes = board.subscribe();
    loop {
        // An empty spec has no critical image yet: wait for the controller.
        let ready = {
            let s = spec.borrow();
            s.iter().any(|i| i.critical) && critical_ready(&s, &board)
        };
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        if ready || expired {
            let why = if ready {
                "critical images present"
            } else {
                "release-after elapsed"
            };
            match release_taint(&nodes, &node, &key).await {
                Ok(_) => {
                    tracing::info!(node, taint = %key, why, "startup taint released");
                    return;
                }
                Err(e) => tracing::warn!(node, error = %e, "cannot release taint; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = changes.changed() => {}
            _ = spec.changed() => {}
            _ = sleep => {}
        }
    }
}
