//! The cluster spec: YAML that describes pools, workloads, DaemonSets and
//! images (see `docs/scenario-spec.md`), and its validation. Every semantic
//! error names the field by its path, e.g. `pools[1].autoscaler`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Error, Result};
use crate::event::{Layer, Taint, Toleration};

/// The whole spec file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Seed for every random draw; `--seed` overrides it.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Images with their sizes.
    #[serde(default)]
    pub images: Vec<ImageSpec>,
    /// A Docker Hub catalogue file (the dockerhub-top150 JSON format),
    /// relative to the spec file.
    #[serde(default)]
    pub catalogue: Option<PathBuf>,
    /// How the load CSV is laid out.
    #[serde(default)]
    pub load_layout: LoadLayout,
    /// Unix time of the first minute when the load file has no timestamps
    /// (the `wide` layout); ISO 8601 or seconds.
    #[serde(default)]
    pub load_start: Option<String>,
    /// HPA controller settings shared by all HPAs.
    #[serde(default)]
    pub hpa_controller: HpaController,
    /// Node pools.
    #[serde(default)]
    pub pools: Vec<PoolSpec>,
    /// DaemonSets: one pod on every node.
    #[serde(default)]
    pub daemonsets: Vec<DaemonSetSpec>,
    /// Workloads driven by load columns.
    #[serde(default)]
    pub workloads: Vec<WorkloadSpec>,
    /// Many similar workloads, one per load column (multi-tenant traces).
    #[serde(default)]
    pub tenants: Option<TenantsSpec>,
    /// Where the workloads of a `--replicas` event file run.
    #[serde(default)]
    pub imported: Option<ImportedSpec>,
    /// CapacityBuffers: spare room the autoscaler keeps for a workload's pods.
    #[serde(default)]
    pub buffers: Vec<BufferSpec>,
}

/// A CapacityBuffer with a `scalableRef` to one of the spec's workloads:
/// the pool's provisioner keeps room for `replicas` more of its pods.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferSpec {
    /// `namespace/name` of the buffer.
    pub name: String,
    /// `namespace/name` of a workload in `workloads`: its pod is the chunk.
    pub workload: String,
    /// Chunks of room to keep.
    pub replicas: i64,
}

/// Placement of workloads that come from a `--replicas` event file (for
/// example an imported SimKube trace) rather than from the spec.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportedSpec {
    /// Pool their pods run in.
    pub pool: String,
    /// Requests of each pod.
    pub pod: Resources,
}

/// Layout of the `--load` CSV.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadLayout {
    /// One row a minute: a timestamp column, then one column per series.
    #[default]
    Long,
    /// One row a series: its name, then `minute_1`, `minute_2`, … columns
    /// (the Azure Functions 2019 trace layout).
    Wide,
}

/// One image and its size.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// Full reference.
    pub image: String,
    /// Compressed bytes.
    pub bytes: i64,
    /// Layers, when known.
    #[serde(default)]
    pub layers: Option<Vec<Layer>>,
}

/// HPA controller flags (kube-controller-manager's `--horizontal-pod-autoscaler-*`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HpaController {
    /// Sync period in seconds.
    pub sync_seconds: f64,
    /// Ratio tolerance within which nothing changes.
    pub tolerance: f64,
    /// Scale-down stabilisation window in seconds.
    pub scale_down_stabilization_seconds: f64,
}

impl Default for HpaController {
    fn default() -> Self {
        Self {
            sync_seconds: 15.0,
            tolerance: 0.1,
            scale_down_stabilization_seconds: 300.0,
        }
    }
}

/// Node size.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU in millicores.
    pub cpu_millis: i64,
    /// Memory in MiB.
    pub memory_mib: i64,
}

/// One node pool (a Karpenter NodePool or a cluster-autoscaler node group).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Pool name.
    pub name: String,
    /// `karpenter` or `cluster-autoscaler`.
    pub autoscaler: String,
    /// Allocatable size of each node.
    pub node: Resources,
    /// Further node sizes the pool launches (a Karpenter NodePool's several
    /// instance types, a mixed-instances node group): a new node is `node`
    /// or one of these, drawn by the seed among those its first pod fits.
    #[serde(default)]
    pub other_node_sizes: Vec<Resources>,
    /// Node labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Node taints.
    #[serde(default)]
    pub taints: Vec<Taint>,
    /// Seconds from claim (or scale-up) to node registration, uniform [lo, hi].
    #[serde(default = "default_register")]
    pub register_seconds: [f64; 2],
    /// Seconds from registration to Ready, uniform [lo, hi].
    #[serde(default = "default_ready")]
    pub ready_seconds: [f64; 2],
    /// Karpenter only: seconds from claim creation to `launched`.
    #[serde(default = "default_launch")]
    pub launch_seconds: [f64; 2],
    /// Nodes kept at all times.
    #[serde(default)]
    pub min_nodes: i64,
    /// Nodes never exceeded.
    #[serde(default = "default_max_nodes")]
    pub max_nodes: i64,
    /// A node with no workload pods for this long is removed.
    #[serde(default = "default_idle")]
    pub idle_seconds: f64,
    /// How the scheduler scores nodes: `spread` (kube-scheduler's default
    /// LeastAllocated) or `binpack` (MostAllocated). Default: `binpack` for
    /// Karpenter pools, standing in for its consolidation, else `spread`.
    #[serde(default)]
    pub packing: Option<Packing>,
}

/// Node scoring of the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Packing {
    /// Prefer the node left least allocated.
    Spread,
    /// Prefer the node left most allocated.
    Binpack,
}

fn default_register() -> [f64; 2] {
    [30.0, 60.0]
}
fn default_ready() -> [f64; 2] {
    [10.0, 20.0]
}
fn default_launch() -> [f64; 2] {
    [2.0, 8.0]
}
fn default_max_nodes() -> i64 {
    100
}
fn default_idle() -> f64 {
    600.0
}

/// A DaemonSet: one pod on every node it tolerates.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSetSpec {
    /// `namespace/name`.
    pub name: String,
    /// Images of its pod.
    pub images: Vec<String>,
    /// Requests of its pod.
    #[serde(default = "default_ds_pod")]
    pub pod: Resources,
    /// Tolerations of its pod.
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
}

fn default_ds_pod() -> Resources {
    Resources {
        cpu_millis: 100,
        memory_mib: 128,
    }
}

/// What drives a workload's replicas.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadRef {
    /// Column of the load CSV.
    pub column: String,
    /// Share of that column this workload serves.
    #[serde(default = "one")]
    pub share: f64,
}

fn one() -> f64 {
    1.0
}

/// A HorizontalPodAutoscaler.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HpaSpec {
    /// `minReplicas`; 0 scales to zero (as KEDA does).
    pub min: i64,
    /// `maxReplicas`.
    pub max: i64,
    /// Target average utilisation, 0–1.
    pub target_utilization: f64,
}

/// A Deployment with its load and HPA.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// `namespace/name`.
    pub name: String,
    /// Images of its pod, init containers included.
    pub images: Vec<String>,
    /// Pool its pods run in (node selector on the pool's labels).
    pub pool: String,
    /// Requests of each pod.
    pub pod: Resources,
    /// Load that drives it; without it, `replicas` stay fixed.
    #[serde(default)]
    pub load: Option<LoadRef>,
    /// Load units per minute one pod serves at 100% utilisation.
    #[serde(default = "default_capacity")]
    pub per_pod_capacity: f64,
    /// Its HPA; without one, `replicas` stay fixed.
    #[serde(default)]
    pub hpa: Option<HpaSpec>,
    /// Fixed replicas (or the starting count under an HPA).
    #[serde(default)]
    pub replicas: Option<i64>,
    /// Tolerations of its pod.
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
}

fn default_capacity() -> f64 {
    100.0
}

/// How tenants pick the load columns they serve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pick {
    /// The columns with the most load.
    #[default]
    Busiest,
    /// Columns drawn at random (by the seed).
    Random,
}

/// Many workloads made from load columns: each column one tenant with its
/// own image, built on a catalogue base image plus an application layer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsSpec {
    /// How many columns become tenants.
    pub count: i64,
    /// Which columns.
    #[serde(default)]
    pub pick: Pick,
    /// Namespace of the tenants' workloads.
    #[serde(default = "default_tenant_ns")]
    pub namespace: String,
    /// Registry and repository prefix of the tenants' images.
    #[serde(default = "default_tenant_registry")]
    pub registry: String,
    /// Application layer size in MiB, uniform [lo, hi].
    #[serde(default = "default_app_layer")]
    pub app_layer_mib: [f64; 2],
    /// Pool the tenants run in.
    pub pool: String,
    /// Requests of each pod.
    pub pod: Resources,
    /// Load units per minute one pod serves at 100% utilisation.
    #[serde(default = "default_capacity")]
    pub per_pod_capacity: f64,
    /// Each tenant's HPA.
    pub hpa: HpaSpec,
}

fn default_tenant_ns() -> String {
    "tenants".into()
}
fn default_tenant_registry() -> String {
    "registry.example.com/tenants".into()
}
fn default_app_layer() -> [f64; 2] {
    [1.0, 40.0]
}

/// One entry of the Docker Hub catalogue file.
#[derive(Debug, Deserialize)]
struct CatalogueEntry {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    size: Option<f64>,
    #[serde(default)]
    pull_count: Option<f64>,
    #[serde(default)]
    layers: Option<Vec<CatalogueLayer>>,
}

#[derive(Debug, Deserialize)]
struct CatalogueLayer {
    digest: String,
    size: f64,
}

/// An image known to the scenario, with its popularity for tenant draws.
#[derive(Clone, Debug, PartialEq)]
pub struct CatalogueImage {
    /// The `image` event to emit.
    pub image: crate::event::Image,
    /// Docker Hub pulls, as a popularity weight.
    pub pulls: f64,
}

const MIB: f64 = 1024.0 * 1024.0;

impl Spec {
    /// Reads and parses `path`; serde errors carry line and column.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses spec text; `name` is used in errors.
    pub fn parse(text: &str, name: &str) -> Result<Self> {
        serde_yaml_ng::from_str(text).map_err(|e| {
            let (pos, msg) = crate::position::yaml(&e);
            Error::Spec {
                path: crate::position::place(name, pos),
                msg,
            }
        })
    }

    /// Checks everything that does not depend on the load file.
    pub fn validate(&self, name: &str) -> Result<()> {
        let bad = |field: String, msg: String| Error::SpecField {
            path: name.to_string(),
            field,
            msg,
        };
        if self.pools.is_empty() {
            return Err(bad("pools".into(), "at least one pool is required".into()));
        }
        let mut pools = HashSet::new();
        for (i, p) in self.pools.iter().enumerate() {
            let f = |s: &str| format!("pools[{i}].{s}");
            if p.name.is_empty() {
                return Err(bad(f("name"), "must not be empty".into()));
            }
            if !pools.insert(p.name.as_str()) {
                return Err(bad(
                    f("name"),
                    format!("pool {:?} is defined twice", p.name),
                ));
            }
            if p.autoscaler != "karpenter" && p.autoscaler != "cluster-autoscaler" {
                return Err(bad(
                    f("autoscaler"),
                    format!(
                        "unknown autoscaler {:?} (expected karpenter or cluster-autoscaler)",
                        p.autoscaler
                    ),
                ));
            }
            positive(&bad, f("node.cpu_millis"), p.node.cpu_millis)?;
            positive(&bad, f("node.memory_mib"), p.node.memory_mib)?;
            for (j, r) in p.other_node_sizes.iter().enumerate() {
                positive(
                    &bad,
                    f(&format!("other_node_sizes[{j}].cpu_millis")),
                    r.cpu_millis,
                )?;
                positive(
                    &bad,
                    f(&format!("other_node_sizes[{j}].memory_mib")),
                    r.memory_mib,
                )?;
            }
            range(&bad, f("register_seconds"), p.register_seconds)?;
            range(&bad, f("ready_seconds"), p.ready_seconds)?;
            range(&bad, f("launch_seconds"), p.launch_seconds)?;
            if p.min_nodes < 0 {
                return Err(bad(
                    f("min_nodes"),
                    format!("must not be negative, got {}", p.min_nodes),
                ));
            }
            if p.max_nodes < p.min_nodes.max(1) {
                return Err(bad(
                    f("max_nodes"),
                    format!("must be at least 1 and min_nodes, got {}", p.max_nodes),
                ));
            }
            if !is_nonneg(p.idle_seconds) {
                return Err(bad(f("idle_seconds"), "must not be negative".into()));
            }
        }
        let h = &self.hpa_controller;
        if !is_pos(h.sync_seconds) {
            return Err(bad(
                "hpa_controller.sync_seconds".into(),
                "must be positive".into(),
            ));
        }
        if !is_nonneg(h.tolerance) {
            return Err(bad(
                "hpa_controller.tolerance".into(),
                "must not be negative".into(),
            ));
        }
        if !is_nonneg(h.scale_down_stabilization_seconds) {
            return Err(bad(
                "hpa_controller.scale_down_stabilization_seconds".into(),
                "must not be negative".into(),
            ));
        }
        for (i, img) in self.images.iter().enumerate() {
            if img.bytes < 0 {
                return Err(bad(
                    format!("images[{i}].bytes"),
                    format!("must not be negative, got {}", img.bytes),
                ));
            }
        }
        for (i, d) in self.daemonsets.iter().enumerate() {
            let f = |s: &str| format!("daemonsets[{i}].{s}");
            namespaced(&bad, f("name"), &d.name)?;
            if d.images.is_empty() {
                return Err(bad(f("images"), "at least one image is required".into()));
            }
            nonneg(&bad, f("pod.cpu_millis"), d.pod.cpu_millis)?;
            nonneg(&bad, f("pod.memory_mib"), d.pod.memory_mib)?;
        }
        let mut names = HashSet::new();
        for (i, w) in self.workloads.iter().enumerate() {
            let f = |s: &str| format!("workloads[{i}].{s}");
            namespaced(&bad, f("name"), &w.name)?;
            if !names.insert(w.name.as_str()) {
                return Err(bad(
                    f("name"),
                    format!("workload {:?} is defined twice", w.name),
                ));
            }
            if w.images.is_empty() {
                return Err(bad(f("images"), "at least one image is required".into()));
            }
            if !pools.contains(w.pool.as_str()) {
                return Err(bad(f("pool"), format!("no pool named {:?}", w.pool)));
            }
            positive(&bad, f("pod.cpu_millis"), w.pod.cpu_millis)?;
            positive(&bad, f("pod.memory_mib"), w.pod.memory_mib)?;
            if !is_pos(w.per_pod_capacity) {
                return Err(bad(f("per_pod_capacity"), "must be positive".into()));
            }
            if let Some(l) = &w.load
                && !is_nonneg(l.share)
            {
                return Err(bad(f("load.share"), "must not be negative".into()));
            }
            if let Some(r) = w.replicas
                && r < 0
            {
                return Err(bad(f("replicas"), format!("must not be negative, got {r}")));
            }
            if let Some(h) = &w.hpa {
                hpa(&bad, &f("hpa"), h)?;
                if w.load.is_none() {
                    return Err(bad(f("load"), "a workload with an hpa needs a load".into()));
                }
            }
        }
        let mut buffer_pools = HashSet::new();
        for (i, b) in self.buffers.iter().enumerate() {
            let f = |s: &str| format!("buffers[{i}].{s}");
            namespaced(&bad, f("name"), &b.name)?;
            let Some(w) = self.workloads.iter().find(|w| w.name == b.workload) else {
                return Err(bad(
                    f("workload"),
                    format!("no workload named {:?}", b.workload),
                ));
            };
            // One buffer a pool: the room one keeps must not count for another.
            if !buffer_pools.insert(w.pool.as_str()) {
                return Err(bad(
                    f("workload"),
                    format!("pool {:?} already has a buffer", w.pool),
                ));
            }
            if b.replicas < 0 {
                return Err(bad(
                    f("replicas"),
                    format!("must not be negative, got {}", b.replicas),
                ));
            }
        }
        if let Some(t) = &self.tenants {
            if t.count <= 0 {
                return Err(bad("tenants.count".into(), "must be positive".into()));
            }
            if !pools.contains(t.pool.as_str()) {
                return Err(bad(
                    "tenants.pool".into(),
                    format!("no pool named {:?}", t.pool),
                ));
            }
            positive(&bad, "tenants.pod.cpu_millis".into(), t.pod.cpu_millis)?;
            positive(&bad, "tenants.pod.memory_mib".into(), t.pod.memory_mib)?;
            range(&bad, "tenants.app_layer_mib".into(), t.app_layer_mib)?;
            if !is_pos(t.per_pod_capacity) {
                return Err(bad(
                    "tenants.per_pod_capacity".into(),
                    "must be positive".into(),
                ));
            }
            hpa(&bad, "tenants.hpa", &t.hpa)?;
        }
        if let Some(i) = &self.imported {
            if !pools.contains(i.pool.as_str()) {
                return Err(bad(
                    "imported.pool".into(),
                    format!("no pool named {:?}", i.pool),
                ));
            }
            positive(&bad, "imported.pod.cpu_millis".into(), i.pod.cpu_millis)?;
            positive(&bad, "imported.pod.memory_mib".into(), i.pod.memory_mib)?;
        }
        if self.workloads.is_empty() && self.tenants.is_none() && self.imported.is_none() {
            return Err(bad(
                "workloads".into(),
                "at least one of workloads, tenants or imported is required".into(),
            ));
        }
        Ok(())
    }

    /// Images from the inline list and the catalogue file (resolved against
    /// `spec_dir`), inline ones first.
    pub fn images(&self, spec_dir: &Path) -> Result<Vec<CatalogueImage>> {
        let mut out: Vec<CatalogueImage> = self
            .images
            .iter()
            .map(|i| CatalogueImage {
                image: crate::event::Image {
                    image: i.image.clone(),
                    bytes: i.bytes.max(0) as u64,
                    layers: i.layers.clone(),
                },
                pulls: 0.0,
            })
            .collect();
        if let Some(cat) = &self.catalogue {
            let path = spec_dir.join(cat);
            let name = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
                path: name.clone(),
                source,
            })?;
            let entries: Vec<CatalogueEntry> = serde_json::from_str(&text).map_err(|e| {
                let (pos, msg) = crate::position::json(&e);
                Error::Catalogue {
                    path: crate::position::place(&name, pos),
                    msg,
                }
            })?;
            for e in entries {
                let Some(size) = e.size.filter(|s| s.is_finite() && *s >= 0.0) else {
                    continue;
                };
                let ns = e.namespace.as_deref().unwrap_or("library");
                let layers = e.layers.filter(|l| !l.is_empty()).map(|ls| {
                    ls.into_iter()
                        .map(|l| Layer {
                            digest: l.digest,
                            bytes: (l.size.max(0.0) * MIB).round() as u64,
                        })
                        .collect::<Vec<_>>()
                });
                let bytes = match &layers {
                    Some(ls) => ls.iter().map(|l| l.bytes).sum(),
                    None => (size * MIB).round() as u64,
                };
                out.push(CatalogueImage {
                    image: crate::event::Image {
                        image: format!("docker.io/{ns}/{}:latest", e.name),
                        bytes,
                        layers,
                    },
                    pulls: e.pull_count.unwrap_or(0.0).max(0.0),
                });
            }
        }
        Ok(out)
    }
}

type Bad<'a> = dyn Fn(String, String) -> Error + 'a;

fn positive(bad: &Bad, field: String, v: i64) -> Result<()> {
    if v <= 0 {
        return Err(bad(field, format!("must be positive, got {v}")));
    }
    Ok(())
}

fn nonneg(bad: &Bad, field: String, v: i64) -> Result<()> {
    if v < 0 {
        return Err(bad(field, format!("must not be negative, got {v}")));
    }
    Ok(())
}

fn range(bad: &Bad, field: String, r: [f64; 2]) -> Result<()> {
    if !(r[0] >= 0.0 && r[1] >= r[0] && r[1].is_finite()) {
        return Err(bad(
            field,
            format!("must be [lo, hi] with 0 <= lo <= hi, got {r:?}"),
        ));
    }
    Ok(())
}

fn namespaced(bad: &Bad, field: String, name: &str) -> Result<()> {
    match name.split_once('/') {
        Some((ns, n)) if !ns.is_empty() && !n.is_empty() && !n.contains('/') => Ok(()),
        _ => Err(bad(field, format!("must be namespace/name, got {name:?}"))),
    }
}

fn hpa(bad: &Bad, at: &str, h: &HpaSpec) -> Result<()> {
    if h.min < 0 {
        return Err(bad(
            format!("{at}.min"),
            format!("must not be negative, got {}", h.min),
        ));
    }
    if h.max < h.min.max(1) {
        return Err(bad(
            format!("{at}.max"),
            format!("must be at least 1 and min, got {}", h.max),
        ));
    }
    if !(h.target_utilization > 0.0 && h.target_utilization <= 1.0) {
        return Err(bad(
            format!("{at}.target_utilization"),
            format!("must be in (0, 1], got {}", h.target_utilization),
        ));
    }
    Ok(())
}

/// Positive and finite (false for NaN).
pub(crate) fn is_pos(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

/// Not negative and finite (false for NaN).
pub(crate) fn is_nonneg(x: f64) -> bool {
    x.is_finite() && x >= 0.0
}
