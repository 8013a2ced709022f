//! `pullahead agent`: the per-node DaemonSet process.
//!
//! It watches its own `NodePrefetch` (named after the node), turns the spec
//! into [`Order`]s for the [`Puller`], publishes progress to the status
//! subresource at most once per `--status-interval` (2 s), and can remove a
//! startup taint once every critical image is present or has finally failed,
//! or `--release-after` has passed ([`crate::dispatch::taint`]). It serves
//! `/metrics`, `/healthz` and `/readyz` on `--metrics-addr`. On SIGTERM it
//! stops taking orders, writes its last status (pulls cut short are reported
//! pending, to be resumed) and exits 0; a restarted agent finds the images
//! already pulled present in the runtime and does not pull them again.
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
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::clock::SystemClock;
use crate::dispatch::crd::{ImageOrder, ImageStatus, NodePrefetch, NodePrefetchStatus};
use crate::dispatch::cri::{self, CriClient, ImageService};
use crate::dispatch::puller::{Board, Options, Order, Puller};
use crate::metrics::{Health, LeaseStatus, Metrics, Server};
use crate::registry::{self, DockerConfig};

pub use crate::dispatch::taint::{critical_ready, release_taint, taint_releaser};

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
    /// The metrics server could not start.
    #[error(transparent)]
    Metrics(crate::metrics::Error),
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

pub(crate) fn kube_err(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let context = context.into();
    move |source| Error::Kube { context, source }
}

/// Flags of `pullahead agent`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// This node's name (from the downward API `spec.nodeName`).
    #[arg(long, env = "PULLAHEAD_NODE_NAME")]
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
    /// A startup taint key to remove from the node once every critical image is present or has finally failed.
    #[arg(long, env = "PULLAHEAD_STARTUP_TAINT")]
    pub startup_taint: Option<String>,
    /// Remove --startup-taint after this long even if critical images are still pulling (e.g. `90s`, `5m`).
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
    /// Where to serve /metrics, /healthz and /readyz.
    #[arg(long, env = "PULLAHEAD_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: std::net::SocketAddr,
    /// Longest wait between two attempts of a failing pull (the backoff
    /// doubles from 0.5 s up to this). Failing pulls are retried until the
    /// order's deadline.
    #[arg(long, env = "PULLAHEAD_RETRY_BACKOFF_MAX", default_value = "10s")]
    pub retry_backoff_max: String,
    /// How long a failing pull of an order without a deadline is retried.
    #[arg(long, env = "PULLAHEAD_RETRY_FOR", default_value = "10m")]
    pub retry_for: String,
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
    let mut status = NodePrefetchStatus::from_images(images);
    status.startup_taint = board.startup_taint();
    status
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
    /// Nothing is written before the spec has been read and the puller has
    /// taken up each of its images: an empty spec is written only once
    /// something was (the controller emptied it).
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
            let (status, known) = {
                let spec = spec.borrow();
                let known = spec.iter().all(|i| board.get(&i.image).is_some());
                (status_for(&spec, &board), known)
            };
            // The first write waits until the puller has looked at every
            // image: a restarted agent must not report present images as
            // pending for the moment it takes to find them.
            if last.as_ref() == Some(&status) || (last.is_none() && (status.wanted == 0 || !known))
            {
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
    /// An agent pulling through `cri`, counting its pulls in `metrics`.
    pub fn new(
        node: impl Into<String>,
        cri: Arc<C>,
        opts: Options,
        creds: DockerConfig,
        metrics: Metrics,
    ) -> Self {
        let (spec_tx, _) = watch::channel(Vec::new());
        let node = node.into();
        Self {
            puller: Puller::new(cri, Arc::new(SystemClock), opts).with_metrics(metrics, &node),
            node,
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

    /// Takes a new spec: starts images not yet started (as one batch, by
    /// priority) and forgets images no longer wanted. Returns the started
    /// batch's task.
    pub fn apply(&mut self, images: Vec<ImageOrder>) -> Option<tokio::task::JoinHandle<()>> {
        let wanted: HashSet<String> = images.iter().map(|i| i.image.clone()).collect();
        self.submitted.retain(|i| wanted.contains(i));
        let fresh: Vec<ImageOrder> = images
            .iter()
            .filter(|i| !self.submitted.contains(&i.image))
            .cloned()
            .collect();
        // The spec first: a status written in between must not pair the
        // new board with the old spec.
        self.spec_tx.send_replace(images);
        self.puller.board().retain(&wanted);
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

/// Runs the agent until SIGTERM (or Ctrl-C): then writes the last status
/// and returns, so the process exits 0.
pub async fn run(args: Args) -> Result<()> {
    let interval = parse_duration("status-interval", &args.status_interval)?;
    let release_after = args
        .release_after
        .as_deref()
        .map(|v| parse_duration("release-after", v))
        .transpose()?;
    let opts = Options {
        parallel: args.parallel,
        max_attempts: None,
        retry_for: parse_duration("retry-for", &args.retry_for)?,
        backoff_max: parse_duration("retry-backoff-max", &args.retry_backoff_max)?,
        ..Options::default()
    };
    let mut shutdown = crate::run::shutdown_on_signals();
    let metrics = Metrics::new().map_err(Error::Metrics)?;
    let health = Health::new();
    // No Lease: ready once the spec has been read.
    health.set_lease(LeaseStatus::Disabled);
    let server = serve_metrics(args.metrics_addr, &metrics, &health, &shutdown).await?;
    let cri = Arc::new(CriClient::new(&args.cri_socket)?);
    registry::install_crypto_provider();
    let client = Client::try_default().await.map_err(kube_err(
        "build client from kubeconfig or in-cluster config",
    ))?;
    let creds = credentials(&client, &args).await?;
    tracing::info!(node = %args.node, registries = ?creds.hosts(), "agent starting");
    let mut agent = Agent::new(args.node.clone(), cri, opts, creds, metrics);
    let api: Api<NodePrefetch> = Api::all(client.clone());
    let writer = StatusWriter::new(api.clone(), args.node.clone(), interval);
    let writer_task = tokio::spawn(writer.run(agent.board(), agent.spec()));
    if let Some(key) = args.startup_taint.clone() {
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
    let mut events = watcher(api.clone(), cfg).default_backoff().boxed();
    loop {
        let ev = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break,
            ev = events.next() => ev,
        };
        let Some(ev) = ev else { break };
        match ev {
            Ok(watcher::Event::Apply(npf) | watcher::Event::InitApply(npf)) => {
                agent.apply(npf.spec.images);
            }
            Ok(watcher::Event::Delete(_)) => {
                agent.apply(Vec::new());
            }
            Ok(watcher::Event::InitDone) => health.set_synced(),
            Ok(watcher::Event::Init) => {}
            Err(e) => tracing::warn!(error = %e, "NodePrefetch watch error; retrying"),
        }
    }
    writer_task.abort();
    final_status(&api, &args.node, &agent).await;
    // Stopped already on a signal; a watch that ended on its own must not
    // leave the process serving forever.
    server.abort();
    let _ = server.await;
    Ok(())
}

/// Binds the metrics server and serves it until `shutdown`.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: &Metrics,
    health: &Arc<Health>,
    shutdown: &watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>> {
    let server = Server::bind(addr, metrics.clone(), health.clone())
        .await
        .map_err(Error::Metrics)?;
    tracing::info!(addr = ?server.local_addr(), "serving /metrics /healthz /readyz");
    let mut stop = shutdown.clone();
    Ok(tokio::spawn(async move {
        let done = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = server.serve(done).await {
            tracing::warn!(error = %e, "metrics server");
        }
    }))
}

/// Registry credentials from the `--docker-config` files and the agent
/// pod's imagePullSecrets.
async fn credentials(client: &Client, args: &Args) -> Result<DockerConfig> {
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
    Ok(creds)
}

/// The status at shutdown: pulls cut short are pending again (the next
/// agent resumes them), written at once, bounded so a dead API server
/// cannot hold the exit past the pod's grace period.
async fn final_status<C: ImageService>(api: &Api<NodePrefetch>, node: &str, agent: &Agent<C>) {
    let board = agent.board();
    board.interrupt("agent stopped; the next agent resumes this pull");
    let spec = agent.spec();
    let status = status_for(&spec.borrow(), &board);
    if status.wanted == 0 {
        return;
    }
    let writer = StatusWriter::new(api.clone(), node, Duration::ZERO);
    match tokio::time::timeout(FINAL_WRITE_TIMEOUT, writer.write(&status)).await {
        Ok(Ok(())) => tracing::info!(node, "final status written; stopping"),
        Ok(Err(e)) => tracing::warn!(node, error = %e, "final status write failed"),
        Err(_) => tracing::warn!(node, "final status write timed out"),
    }
}

/// Bound on the last status write (the chart gives the pod 15 s).
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
