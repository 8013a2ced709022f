//! The agent's safety settings and their wiring: disk headroom
//! ([`crate::dispatch::disk`]), registry and cluster budgets
//! ([`crate::dispatch::budget`]) and clean-up ([`crate::dispatch::cleanup`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};
use prometheus::{IntCounter, Registry};

use crate::clock::{Clock, SystemClock};
use crate::dispatch::budget::{
    self, BudgetConfig, BudgetGuard, HostBudgets, LeaseSlots, SharedLeaseSlots,
};
use crate::dispatch::cleanup::{Cleanup, CleanupMetrics, CleanupRecorder};
use crate::dispatch::cri::CriClient;
use crate::dispatch::disk::{self, DiskCheck, DiskConfig, DiskGuard};
use crate::dispatch::guard::PullGuard;
use crate::dispatch::puller::Board;

/// Errors from the safety settings.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A disk setting.
    #[error(transparent)]
    Disk(#[from] disk::Error),
    /// A budget setting.
    #[error(transparent)]
    Budget(#[from] budget::Error),
    /// A duration flag.
    #[error("invalid --{flag} {value:?}: {message}")]
    Duration {
        /// The flag.
        flag: &'static str,
        /// The value.
        value: String,
        /// Why.
        message: String,
    },
    /// A metric could not be registered.
    #[error("registering safety metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Flags of `pullahead agent` that keep it from hurting the node, the
/// registries and the cluster.
#[derive(Clone, Debug, clap::Args)]
pub struct SafetyArgs {
    /// The image filesystem to keep below the ceiling (mounted read-only from the host).
    #[arg(
        long,
        env = "PULLAHEAD_IMAGE_FS_PATH",
        default_value = "/var/lib/containerd"
    )]
    pub image_fs_path: PathBuf,
    /// Kubelet's imageGCHighThresholdPercent; pulls stop below it.
    #[arg(long, env = "PULLAHEAD_IMAGE_GC_HIGH_PERCENT", default_value_t = 85.0)]
    pub image_gc_high_percent: f64,
    /// How far below --image-gc-high-percent use must stay after a pull.
    #[arg(long, env = "PULLAHEAD_DISK_MARGIN_PERCENT", default_value_t = 5.0)]
    pub disk_margin_percent: f64,
    /// On-disk bytes per compressed image byte (content store plus unpacked snapshot).
    #[arg(long, env = "PULLAHEAD_IMAGE_SIZE_FACTOR", default_value_t = 2.0)]
    pub image_size_factor: f64,
    /// Registries the agent reaches over plain HTTP when it asks a 429's Retry-After (host:port, repeatable; loopback always is).
    #[arg(long, env = "PULLAHEAD_INSECURE_REGISTRY", value_delimiter = ',')]
    pub insecure_registry: Vec<String>,
    /// Pulls in flight per registry host across the cluster, for hosts not in --registry-parallel (0: no limit).
    #[arg(
        long,
        env = "PULLAHEAD_REGISTRY_PARALLEL_DEFAULT",
        default_value_t = 32
    )]
    pub registry_parallel_default: usize,
    /// Pulls in flight across the cluster for one host, HOST=N (repeatable, comma-separated).
    #[arg(long, env = "PULLAHEAD_REGISTRY_PARALLEL", value_delimiter = ',')]
    pub registry_parallel: Vec<String>,
    /// Nodes pulling at once across the cluster (0: no cap).
    #[arg(long, env = "PULLAHEAD_MAX_PREFETCHING_NODES", default_value_t = 0)]
    pub max_prefetching_nodes: usize,
    /// How long every agent leaves a registry alone after a 429 that gave no Retry-After.
    #[arg(long, env = "PULLAHEAD_RATE_LIMIT_COOLDOWN", default_value = "30s")]
    pub rate_limit_cooldown: String,
    /// Remove prefetched images that no container used by their deadline.
    #[arg(long, env = "PULLAHEAD_CLEANUP", default_value_t = false)]
    pub cleanup: bool,
    /// How often to look for containers and unused prefetched images.
    #[arg(long, env = "PULLAHEAD_CLEANUP_INTERVAL", default_value = "30s")]
    pub cleanup_interval: String,
}

/// What the safety parts are wired to.
pub struct Wiring<'a> {
    /// This node.
    pub node: &'a str,
    /// Namespace of the budget Leases (the agent's own).
    pub namespace: &'a str,
    /// The API client.
    pub client: Client,
    /// The runtime.
    pub cri: Arc<CriClient>,
    /// Where the metrics go.
    pub registry: &'a Registry,
}

/// The safety parts of one running agent.
pub struct Safety {
    disk: DiskGuard,
    budget: Option<Arc<BudgetGuard>>,
    cleanup: Cleanup<CriClient>,
    cleanup_interval: Duration,
    cleanup_on: bool,
    nodes: Api<Node>,
    node: String,
}

fn duration(flag: &'static str, value: &str) -> Result<Duration> {
    let bad = |message: String| Error::Duration {
        flag,
        value: value.to_string(),
        message,
    };
    let d: jiff::SignedDuration = value.parse().map_err(|e: jiff::Error| bad(e.to_string()))?;
    Duration::try_from(d).map_err(|_| bad("must not be negative".into()))
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Safety {
    /// Checks the settings and builds the parts (no task runs yet).
    pub fn start(args: &SafetyArgs, w: Wiring<'_>) -> Result<Self> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let disk = DiskGuard::new(DiskConfig {
            path: args.image_fs_path.clone(),
            gc_high_percent: args.image_gc_high_percent,
            margin_percent: args.disk_margin_percent,
            size_factor: args.image_size_factor,
        })?
        .with_cri(w.cri.clone())
        .with_metrics(
            counter(
                w.registry,
                "pullahead_held_back_bytes_total",
                "Compressed bytes of images held back for disk space or DiskPressure.",
            )?,
            counter(
                w.registry,
                "pullahead_held_back_images_total",
                "Images held back for disk space or DiskPressure.",
            )?,
        );
        let budget = if args.registry_parallel_default > 0 || args.max_prefetching_nodes > 0 {
            let hosts = HostBudgets::parse(
                if args.registry_parallel_default == 0 {
                    usize::MAX / 2
                } else {
                    args.registry_parallel_default
                },
                &args.registry_parallel,
            )?;
            let store = LeaseSlots::new(
                Api::namespaced(w.client.clone(), w.namespace),
                w.node.to_string(),
                Duration::from_secs(30),
                clock.clone(),
            );
            Some(Arc::new(BudgetGuard::new(
                BudgetConfig {
                    hosts,
                    max_nodes: args.max_prefetching_nodes,
                    default_retry_after: duration(
                        "rate-limit-cooldown",
                        &args.rate_limit_cooldown,
                    )?,
                    plain_http: args.insecure_registry.clone(),
                    ..BudgetConfig::default()
                },
                Arc::new(SharedLeaseSlots(Arc::new(store))),
                clock.clone(),
            )))
        } else {
            None
        };
        let cleanup = Cleanup::new(w.cri, clock, args.cleanup).with_metrics(CleanupMetrics {
            removed: counter(
                w.registry,
                "pullahead_images_removed_total",
                "Prefetched images removed because no container used them by their deadline.",
            )?,
            reclaimed_bytes: counter(
                w.registry,
                "pullahead_reclaimed_bytes_total",
                "Bytes given back by removing unused prefetched images.",
            )?,
        });
        Ok(Self {
            disk,
            budget,
            cleanup,
            cleanup_interval: duration("cleanup-interval", &args.cleanup_interval)?,
            cleanup_on: args.cleanup,
            nodes: Api::all(w.client),
            node: w.node.to_string(),
        })
    }

    /// The guards for the pull loop, in the order they must run: budgets
    /// (which may wait) before the disk check (which must see the disk as it
    /// is when the pull starts). Starts the Node and clean-up tasks.
    pub fn guards(self, board: Arc<Board>) -> Vec<Arc<dyn PullGuard>> {
        let Self {
            disk,
            budget,
            cleanup,
            cleanup_interval,
            cleanup_on,
            nodes,
            node,
        } = self;
        let disk = Arc::new(disk.with_board(board.clone()));
        tokio::spawn(watch_node(nodes, node, disk.clone(), board.clone()));
        let cleanup = Arc::new(cleanup.with_board(board));
        if cleanup_on {
            tokio::spawn(cleanup.clone().run(cleanup_interval));
        }
        let mut out: Vec<Arc<dyn PullGuard>> = Vec::new();
        if let Some(b) = budget {
            out.push(b);
        }
        out.push(Arc::new(DiskCheck(disk)));
        out.push(Arc::new(CleanupRecorder(cleanup)));
        out
    }
}

/// How often the Node's conditions and the image filesystem are looked at
/// between pulls.
const NODE_POLL: Duration = Duration::from_secs(10);

/// Keeps the DiskPressure flag and the status's image filesystem current:
/// reads the Node (`get`, which the agent may already do) and measures the
/// disk every [`NODE_POLL`]. A failed read keeps the last answer.
async fn watch_node(nodes: Api<Node>, node: String, disk: Arc<DiskGuard>, board: Arc<Board>) {
    let flag: Arc<AtomicBool> = disk.pressure();
    let mut last_headroom = None;
    loop {
        match nodes.get(&node).await {
            Ok(n) => {
                let pressure = has_disk_pressure(&n);
                if flag.swap(pressure, Ordering::Relaxed) != pressure {
                    tracing::info!(node, pressure, "Node DiskPressure changed");
                    board.set_dirty();
                }
            }
            Err(e) => tracing::debug!(node, error = %e, "cannot read the Node's conditions"),
        }
        match disk.measure().await {
            // Publish a moved headroom (by 1% of capacity or more) even when
            // no pull runs, so the controller's plan follows the disk.
            Ok(fs) => {
                let step = (fs.capacity_bytes / 100).max(1);
                let h = fs.headroom_bytes / step;
                if last_headroom != Some(h) {
                    last_headroom = Some(h);
                    board.set_dirty();
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot measure the image filesystem"),
        }
        tokio::time::sleep(NODE_POLL).await;
    }
}

/// Whether the Node's `DiskPressure` condition is `True`.
pub fn has_disk_pressure(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "DiskPressure" && c.status == "True")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_pressure_is_read_from_node_conditions() {
        let n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n"},
            "status": {"conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "DiskPressure", "status": "True"}]}
        }))
        .unwrap();
        assert!(has_disk_pressure(&n));
        let n: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n"},
            "status": {"conditions": [{"type": "DiskPressure", "status": "False"}]}
        }))
        .unwrap();
        assert!(!has_disk_pressure(&n));
    }
}
