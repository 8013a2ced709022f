//! The cluster simulator behind `pullahead scenario`.
//!
//! Time advances in HPA sync periods. Between two syncs the delayed actions
//! (a claim launching, a node registering or becoming ready) run in time
//! order, so the events come out sorted. Every random draw comes from one
//! ChaCha stream seeded by the spec, and nothing iterates a hash map, so a
//! seed always gives the same file.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashSet, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::load::Load;
use super::spec::{CatalogueImage, DaemonSetSpec, HpaController, HpaSpec, Spec};
use crate::event::{self, Autoscaler, ClaimPhase, Event, NodePhase, PodPhase, Taint, Toleration};

/// Which provisioner a pool runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provisioner {
    /// Karpenter-like: NodeClaims, pods nominated to them.
    Karpenter,
    /// cluster-autoscaler-like: a group grows, pods wait for the new nodes.
    ClusterAutoscaler,
}

/// One node pool as the simulator runs it.
#[derive(Clone, Debug)]
pub struct PoolCfg {
    /// Pool name.
    pub name: String,
    /// Its provisioner.
    pub provisioner: Provisioner,
    /// Allocatable CPU per node (millicores), DaemonSet requests excluded.
    pub cpu: i64,
    /// Allocatable memory per node (MiB), DaemonSet requests excluded.
    pub mem: i64,
    /// The `node.kubernetes.io/instance-type` label of the `cpu`/`mem`
    /// size, set on nodes of a pool with `other_sizes`.
    pub instance_type: String,
    /// The pool's further node sizes, (CPU, memory) as `cpu` and `mem`,
    /// each with its instance-type label.
    pub other_sizes: Vec<(i64, i64, String)>,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// Node taints.
    pub taints: Vec<Taint>,
    /// Claim → launched, uniform.
    pub launch: [f64; 2],
    /// Claim/scale-up → registered, uniform.
    pub register: [f64; 2],
    /// Registered → ready, uniform.
    pub ready: [f64; 2],
    /// Nodes kept.
    pub min_nodes: usize,
    /// Nodes never exceeded.
    pub max_nodes: usize,
    /// Idle time before a node is removed.
    pub idle_seconds: f64,
    /// Prefer the most allocated node instead of the least.
    pub binpack: bool,
}

/// One workload as the simulator runs it.
#[derive(Clone, Debug)]
pub struct WorkloadCfg {
    /// `namespace/name`.
    pub name: String,
    /// Images of its pod.
    pub images: Vec<String>,
    /// Index into the pools.
    pub pool: usize,
    /// CPU request (millicores).
    pub cpu: i64,
    /// Memory request (MiB).
    pub mem: i64,
    /// Load column and share.
    pub load: Option<(usize, f64)>,
    /// Load units per minute one pod serves.
    pub capacity: f64,
    /// Its HPA.
    pub hpa: Option<HpaSpec>,
    /// Fixed (or starting) replicas.
    pub replicas: Option<u32>,
    /// Tolerations of its pods.
    pub tolerations: Vec<Toleration>,
}

/// A CapacityBuffer as the simulator runs it: room for `replicas` pods of
/// workload `workload` kept free in its pool.
#[derive(Clone, Debug)]
pub struct BufferCfg {
    /// `namespace/name`.
    pub name: String,
    /// Index into the workloads.
    pub workload: usize,
    /// Chunks of room.
    pub replicas: u32,
}

/// What a run produced, for the command's summary and the README.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events written, header excluded.
    pub events: u64,
    /// Pods created (DaemonSet pods included).
    pub pods: u64,
    /// Workload pods bound to a node that was already up when they were created.
    pub bound_existing: u64,
    /// Workload pods bound to a node provisioned for them.
    pub bound_fresh: u64,
    /// NodeClaims created (Karpenter pools).
    pub node_claims: u64,
    /// `scale_up` events.
    pub scale_ups: u64,
    /// Nodes that registered.
    pub nodes: u64,
    /// Nodes removed as idle.
    pub nodes_removed: u64,
    /// Most nodes up at once.
    pub peak_nodes: u64,
    /// `hpa` events.
    pub hpa_events: u64,
    /// Pods that could not be placed because a pool was at `max_nodes`.
    pub unplaceable_pods: u64,
    /// Nodes added to keep a CapacityBuffer's room.
    pub buffer_nodes: u64,
}

type NodeId = usize;
type PodId = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeState {
    Launching,
    Registered,
    Ready,
}

#[derive(Debug)]
struct SimNode {
    name: String,
    claim: Option<String>,
    pool: usize,
    state: NodeState,
    free_cpu: i64,
    free_mem: i64,
    /// Allocatable (CPU, memory), DaemonSet requests excluded.
    size: (i64, i64),
    /// The instance-type label, in a pool of several node sizes.
    instance_type: Option<String>,
    /// Pods nominated to (Karpenter) or expected on (CA) this node.
    reserved: Vec<PodId>,
    ds_pods: Vec<PodId>,
    workload_pods: u32,
    idle_since: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PodState {
    Pending,
    /// Waiting for a node that is coming (nominated for Karpenter).
    Reserved(NodeId),
    Bound(NodeId),
}

/// Who owns a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Workload(usize),
    DaemonSet(usize),
}

#[derive(Debug)]
struct SimPod {
    name: String,
    owner: Owner,
    state: PodState,
    /// Set when a provisioner made a node for it.
    fresh: bool,
}

#[derive(Debug)]
struct WlState {
    replicas: u32,
    pods: Vec<PodId>,
    /// (time, recommendation) inside the scale-down window.
    recs: VecDeque<(f64, u32)>,
    template_hash: String,
    /// Last emitted (current, desired, utilisation %).
    last_hpa: Option<(u32, u32, f64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Launch(NodeId),
    Register(NodeId),
    Ready(NodeId),
}

#[derive(Clone, Copy, Debug)]
struct Queued {
    at: f64,
    seq: u64,
    action: Action,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    /// Reversed, so that the max-heap pops the earliest first.
    fn cmp(&self, o: &Self) -> Ordering {
        o.at.total_cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}

/// The simulated cluster.
pub struct Sim {
    pools: Vec<PoolCfg>,
    workloads: Vec<WorkloadCfg>,
    daemonsets: Vec<DaemonSetSpec>,
    images: Vec<CatalogueImage>,
    hpa_ctl: HpaController,
    rng: ChaCha8Rng,
    now: f64,
    nodes: Vec<Option<SimNode>>,
    pool_nodes: Vec<Vec<NodeId>>,
    /// cluster-autoscaler group target sizes.
    group_size: Vec<u32>,
    pods: Vec<Option<SimPod>>,
    free_pods: Vec<PodId>,
    pending: Vec<PodId>,
    wl: Vec<WlState>,
    queue: BinaryHeap<Queued>,
    seq: u64,
    names: HashSet<String>,
    emitted_images: HashSet<String>,
    out: Vec<Event>,
    summary: Summary,
    buffers: Vec<BufferCfg>,
}

fn uniform(rng: &mut ChaCha8Rng, r: [f64; 2]) -> f64 {
    if r[1] > r[0] {
        rng.random_range(r[0]..r[1])
    } else {
        r[0]
    }
}

const ALNUM: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

impl Sim {
    /// A cluster from already-resolved pools and workloads.
    pub fn new(
        pools: Vec<PoolCfg>,
        workloads: Vec<WorkloadCfg>,
        daemonsets: Vec<DaemonSetSpec>,
        images: Vec<CatalogueImage>,
        hpa_ctl: HpaController,
        seed: u64,
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let wl = workloads
            .iter()
            .map(|_| WlState {
                replicas: 0,
                pods: Vec::new(),
                recs: VecDeque::new(),
                template_hash: (0..10)
                    .map(|_| ALNUM[rng.random_range(0..ALNUM.len())] as char)
                    .collect(),
                last_hpa: None,
            })
            .collect();
        Self {
            pool_nodes: vec![Vec::new(); pools.len()],
            group_size: vec![0; pools.len()],
            pools,
            workloads,
            daemonsets,
            images,
            hpa_ctl,
            rng,
            now: 0.0,
            nodes: Vec::new(),
            pods: Vec::new(),
            free_pods: Vec::new(),
            pending: Vec::new(),
            wl,
            queue: BinaryHeap::new(),
            seq: 0,
            names: HashSet::new(),
            emitted_images: HashSet::new(),
            out: Vec::new(),
            summary: Summary::default(),
            buffers: Vec::new(),
        }
    }

    /// Keeps room for these CapacityBuffers (at most one a pool, as the
    /// spec checks). Set before [`Sim::start`].
    pub fn set_buffers(&mut self, buffers: Vec<BufferCfg>) {
        self.buffers = buffers;
    }

    /// How many chunks of buffer `b` fit in the free room of its pool's
    /// nodes, up or coming, `except` one.
    fn buffer_room(&self, b: usize, except: Option<NodeId>) -> u32 {
        let cfg = &self.workloads[self.buffers[b].workload];
        let (cpu, mem) = (cfg.cpu.max(1), cfg.mem.max(1));
        self.pool_nodes[cfg.pool]
            .iter()
            .filter(|&&n| Some(n) != except)
            .filter_map(|&n| self.node(n))
            .map(|n| (n.free_cpu / cpu).min(n.free_mem / mem).max(0) as u32)
            .sum()
    }

    /// The autoscaler's side of each buffer: new nodes, with no pod of
    /// their own, until the pool's free room holds its chunks.
    fn provision_buffers(&mut self) {
        for b in 0..self.buffers.len() {
            let cfg = &self.workloads[self.buffers[b].workload];
            let (p, cpu, mem) = (cfg.pool, cfg.cpu.max(1), cfg.mem.max(1));
            let per_node = (self.pools[p].cpu / cpu)
                .min(self.pools[p].mem / mem)
                .max(1) as u32;
            let mut short = self.buffers[b]
                .replicas
                .saturating_sub(self.buffer_room(b, None));
            while short > 0 && self.pool_nodes[p].len() < self.pools[p].max_nodes {
                let id = self.new_node(p, Some((cpu, mem)));
                self.schedule_boot(id);
                self.summary.buffer_nodes += 1;
                short = short.saturating_sub(per_node);
            }
        }
    }

    /// Whether removing node `id` of pool `p` leaves every buffer of the
    /// pool its room.
    fn buffer_keeps(&self, p: usize, id: NodeId) -> bool {
        (0..self.buffers.len()).all(|b| {
            self.workloads[self.buffers[b].workload].pool != p
                || self.buffer_room(b, Some(id)) >= self.buffers[b].replicas
        })
    }

    /// The counters so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Takes the events emitted since the last call, in time order.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Event> {
        self.summary.events += self.out.len() as u64;
        self.out.drain(..)
    }

    fn emit(&mut self, body: impl Into<event::Body>) {
        self.out.push(Event::new(self.now, body));
    }

    fn unique_name(&mut self, make: impl Fn(&mut ChaCha8Rng) -> String) -> String {
        loop {
            let n = make(&mut self.rng);
            if self.names.insert(n.clone()) {
                return n;
            }
        }
    }

    fn rand_suffix(rng: &mut ChaCha8Rng, n: usize) -> String {
        (0..n)
            .map(|_| ALNUM[rng.random_range(0..ALNUM.len())] as char)
            .collect()
    }

    /// Replicas an HPA asks for when it first sees `load`.
    fn initial_replicas(&self, w: usize, load: f64) -> u32 {
        let cfg = &self.workloads[w];
        match cfg.hpa {
            Some(h) => {
                let want = (load / (cfg.capacity * h.target_utilization)).ceil() as i64;
                let want = cfg.replicas.map_or(want, |r| r as i64).max(want);
                want.clamp(h.min, h.max) as u32
            }
            None => cfg.replicas.unwrap_or(1),
        }
    }

    /// Writes the cluster as it stands at `t0`: images, workloads, HPAs,
    /// and enough ready nodes for the first minute's pods.
    pub fn start(&mut self, t0: f64, loads: &[f64]) {
        let load_at = |w: usize| loads.get(w).copied().unwrap_or(0.0);
        self.now = t0;
        let mut used: Vec<String> = Vec::new();
        for w in &self.workloads {
            used.extend(w.images.iter().cloned());
        }
        for d in &self.daemonsets {
            used.extend(d.images.iter().cloned());
        }
        self.emit_images(&used);
        for d in 0..self.daemonsets.len() {
            let ds = &self.daemonsets[d];
            let w = event::Workload {
                workload: ds.name.clone(),
                kind: "DaemonSet".into(),
                images: ds.images.clone(),
                node_selector: BTreeMap::new(),
                tolerations: (!ds.tolerations.is_empty()).then(|| ds.tolerations.clone()),
                replicas: None,
            };
            self.emit(w);
        }
        let initial: Vec<u32> = (0..self.workloads.len())
            .map(|w| self.initial_replicas(w, load_at(w)))
            .collect();
        for (w, &r) in initial.iter().enumerate() {
            self.wl[w].replicas = r;
            self.emit_workload(w);
        }
        // Warm nodes: enough for the first pods (first fit), at least min_nodes.
        for p in 0..self.pools.len() {
            let (cpu, mem) = (self.pools[p].cpu, self.pools[p].mem);
            let mut bins: Vec<(i64, i64)> = Vec::new();
            for (w, &r) in initial.iter().enumerate() {
                let cfg = &self.workloads[w];
                if cfg.pool != p {
                    continue;
                }
                for _ in 0..r {
                    match bins.iter_mut().find(|b| b.0 >= cfg.cpu && b.1 >= cfg.mem) {
                        Some(b) => {
                            b.0 -= cfg.cpu;
                            b.1 -= cfg.mem;
                        }
                        None if cfg.cpu <= cpu && cfg.mem <= mem => {
                            bins.push((cpu - cfg.cpu, mem - cfg.mem))
                        }
                        None => {}
                    }
                }
            }
            let n = bins
                .len()
                .max(self.pools[p].min_nodes)
                .min(self.pools[p].max_nodes);
            for _ in 0..n {
                let id = self.new_node(p, None);
                self.launch(id);
                self.register(id);
                self.ready(id);
            }
        }
        for (w, &r) in initial.iter().enumerate() {
            for _ in 0..r {
                self.create_pod(Owner::Workload(w));
            }
            self.emit_hpa(w, load_at(w));
        }
        for k in 0..self.buffers.len() {
            let b = &self.buffers[k];
            let w = &self.workloads[b.workload];
            let ev = event::Buffer {
                buffer: b.name.clone(),
                replicas: b.replicas,
                images: w.images.clone(),
                node_selector: self.pools[w.pool].labels.clone(),
                tolerations: (!w.tolerations.is_empty()).then(|| w.tolerations.clone()),
                template: Some(format!("Deployment/{}", w.name)),
                workload: Some(w.name.clone()),
            };
            self.emit(ev);
        }
        self.schedule();
        self.provision();
    }

    /// `image` events for those of `images` the catalogue knows, once each.
    fn emit_images(&mut self, images: &[String]) {
        let mut new = Vec::new();
        for name in images {
            if self.emitted_images.contains(name) {
                continue;
            }
            if let Some(i) = self.images.iter().find(|i| i.image.image == *name) {
                new.push(i.image.clone());
                self.emitted_images.insert(name.clone());
            }
        }
        for i in new {
            self.emit(i);
        }
    }

    /// Adds a workload at the current time (from a `--replicas` file) and
    /// returns its index.
    pub fn add_workload(&mut self, cfg: WorkloadCfg) -> usize {
        let hash = Self::rand_suffix(&mut self.rng, 10);
        self.emit_images(&cfg.images.clone());
        self.workloads.push(cfg);
        self.wl.push(WlState {
            replicas: 0,
            pods: Vec::new(),
            recs: VecDeque::new(),
            template_hash: hash,
            last_hpa: None,
        });
        self.workloads.len() - 1
    }

    /// Index of the workload named `name`.
    pub fn workload_index(&self, name: &str) -> Option<usize> {
        self.workloads.iter().position(|w| w.name == name)
    }

    /// Sets workload `w` to `replicas` at `t`, as a replay of recorded
    /// scaling: delayed actions up to `t` run first, and the scheduler and
    /// provisioners react at once.
    pub fn set_replicas(&mut self, t: f64, w: usize, replicas: u32) {
        self.run_until(t);
        self.now = self.now.max(t);
        let current = self.wl[w].replicas;
        let fresh = self.wl[w].pods.is_empty() && current == 0;
        if replicas == current && !fresh {
            return;
        }
        self.wl[w].replicas = replicas;
        self.emit_workload(w);
        if replicas > current {
            for _ in current..replicas {
                self.create_pod(Owner::Workload(w));
            }
        } else {
            for _ in replicas..current {
                if let Some(victim) = self.scale_down_victim(w) {
                    self.delete_pod(victim);
                }
            }
        }
        self.schedule();
        self.provision();
    }

    fn emit_workload(&mut self, w: usize) {
        let cfg = &self.workloads[w];
        let body = event::Workload {
            workload: cfg.name.clone(),
            kind: "Deployment".into(),
            images: cfg.images.clone(),
            node_selector: self.pools[cfg.pool].labels.clone(),
            tolerations: (!cfg.tolerations.is_empty()).then(|| cfg.tolerations.clone()),
            replicas: Some(self.wl[w].replicas),
        };
        self.emit(body);
    }

    /// One HPA sync at `t`: delayed actions up to `t` first, then every HPA,
    /// the scheduler, the provisioners and idle scale-down.
    pub fn step(&mut self, t: f64, loads: &[f64]) {
        let load_at = |w: usize| loads.get(w).copied().unwrap_or(0.0);
        self.run_until(t);
        self.now = t;
        for w in 0..self.workloads.len() {
            self.hpa(w, load_at(w));
        }
        self.schedule();
        self.provision();
        self.scale_down();
    }

    /// Runs the delayed actions due by `t`.
    pub fn run_until(&mut self, t: f64) {
        while let Some(q) = self.queue.peek().copied() {
            if q.at > t {
                break;
            }
            self.queue.pop();
            self.now = q.at;
            match q.action {
                Action::Launch(n) => self.launch(n),
                Action::Register(n) => self.register(n),
                Action::Ready(n) => {
                    self.ready(n);
                    self.schedule();
                }
            }
        }
        self.now = self.now.max(t);
    }

    fn push(&mut self, at: f64, action: Action) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            action,
        });
    }

    fn node(&self, n: NodeId) -> Option<&SimNode> {
        self.nodes.get(n).and_then(Option::as_ref)
    }

    fn node_mut(&mut self, n: NodeId) -> Option<&mut SimNode> {
        self.nodes.get_mut(n).and_then(Option::as_mut)
    }

    fn node_labels(&self, n: &SimNode) -> BTreeMap<String, String> {
        let pool = &self.pools[n.pool];
        let mut labels = pool.labels.clone();
        if pool.provisioner == Provisioner::Karpenter {
            labels
                .entry("karpenter.sh/nodepool".into())
                .or_insert_with(|| pool.name.clone());
        }
        labels.insert("kubernetes.io/hostname".into(), n.name.clone());
        if let Some(t) = &n.instance_type {
            labels.insert("node.kubernetes.io/instance-type".into(), t.clone());
        }
        labels
    }

    fn claim_event(&self, n: &SimNode, phase: ClaimPhase) -> Option<event::NodeClaim> {
        let pool = &self.pools[n.pool];
        let mut labels = pool.labels.clone();
        labels
            .entry("karpenter.sh/nodepool".into())
            .or_insert_with(|| pool.name.clone());
        Some(event::NodeClaim {
            node_claim: n.claim.clone()?,
            pool: pool.name.clone(),
            phase,
            labels,
            taints: (!pool.taints.is_empty()).then(|| pool.taints.clone()),
            node: (phase != ClaimPhase::Created && phase != ClaimPhase::Launched)
                .then(|| n.name.clone()),
        })
    }

    fn node_event(&self, n: &SimNode, phase: NodePhase) -> event::Node {
        let pool = &self.pools[n.pool];
        event::Node {
            node: n.name.clone(),
            phase,
            pool: Some(pool.name.clone()),
            labels: self.node_labels(n),
            taints: (!pool.taints.is_empty()).then(|| pool.taints.clone()),
            images: None,
            image_fs_bytes: None,
        }
    }

    /// A node (and, for Karpenter, its claim) that is about to exist. In a
    /// pool of several sizes it is one drawn among those `need` fits on
    /// (warm nodes, with no pod to fit, are the pool's first size).
    fn new_node(&mut self, p: usize, need: Option<(i64, i64)>) -> NodeId {
        let (size, instance_type) = self.node_size(p, need);
        let karpenter = self.pools[p].provisioner == Provisioner::Karpenter;
        let pool_name = self.pools[p].name.clone();
        let name = if karpenter {
            self.unique_name(|r| {
                format!(
                    "ip-10-{}-{}-{}.ec2.internal",
                    r.random_range(0..256),
                    r.random_range(0..256),
                    r.random_range(1..255)
                )
            })
        } else {
            self.unique_name(|r| format!("{pool_name}-{}", Self::rand_suffix(r, 8)))
        };
        let claim = karpenter
            .then(|| self.unique_name(|r| format!("{pool_name}-{}", Self::rand_suffix(r, 5))));
        let node = SimNode {
            name,
            claim,
            pool: p,
            state: NodeState::Launching,
            free_cpu: size.0,
            free_mem: size.1,
            size,
            instance_type,
            reserved: Vec::new(),
            ds_pods: Vec::new(),
            workload_pods: 0,
            idle_since: self.now,
        };
        if let Some(c) = self.claim_event(&node, ClaimPhase::Created) {
            self.summary.node_claims += 1;
            self.emit(c);
        }
        if !karpenter {
            self.group_size[p] += 1;
        }
        self.nodes.push(Some(node));
        let id = self.nodes.len() - 1;
        self.pool_nodes[p].push(id);
        id
    }

    /// The size of a new node of pool `p` for a first pod that needs `need`.
    fn node_size(&mut self, p: usize, need: Option<(i64, i64)>) -> ((i64, i64), Option<String>) {
        let pool = &self.pools[p];
        let first = (pool.cpu, pool.mem);
        if pool.other_sizes.is_empty() {
            return (first, None);
        }
        let first_type = pool.instance_type.clone();
        let Some((pc, pm)) = need else {
            return (first, Some(first_type));
        };
        let mut fitting: Vec<((i64, i64), String)> = vec![(first, first_type)];
        fitting.extend(
            pool.other_sizes
                .iter()
                .filter(|s| s.0 >= pc && s.1 >= pm)
                .map(|s| ((s.0, s.1), s.2.clone())),
        );
        let k = self.rng.random_range(0..fitting.len());
        let (size, t) = fitting.swap_remove(k);
        (size, Some(t))
    }

    /// Schedules a fresh node's launch, registration and readiness.
    fn schedule_boot(&mut self, id: NodeId) {
        let p = self.pools[self.nodes[id].as_ref().map_or(0, |n| n.pool)].clone();
        let launch = self.now + uniform(&mut self.rng, p.launch);
        let register = (self.now + uniform(&mut self.rng, p.register)).max(launch);
        let ready = register + uniform(&mut self.rng, p.ready);
        if p.provisioner == Provisioner::Karpenter {
            self.push(launch, Action::Launch(id));
        }
        self.push(register, Action::Register(id));
        self.push(ready, Action::Ready(id));
    }

    fn launch(&mut self, id: NodeId) {
        let ev = self
            .node(id)
            .and_then(|n| self.claim_event(n, ClaimPhase::Launched));
        if let Some(ev) = ev {
            self.emit(ev);
        }
    }

    fn register(&mut self, id: NodeId) {
        let Some(n) = self.node(id) else { return };
        let claim = self.claim_event(n, ClaimPhase::Registered);
        let ev = self.node_event(n, NodePhase::Registered);
        if let Some(c) = claim {
            self.emit(c);
        }
        self.emit(ev);
        self.summary.nodes += 1;
        let up = self
            .nodes
            .iter()
            .flatten()
            .filter(|n| n.state != NodeState::Launching)
            .count()
            + 1;
        self.summary.peak_nodes = self.summary.peak_nodes.max(up as u64);
        if let Some(n) = self.node_mut(id) {
            n.state = NodeState::Registered;
        }
        // DaemonSet pods are bound straight to the node that registered.
        let taints = self.pools[self.node(id).map_or(0, |n| n.pool)]
            .taints
            .clone();
        for d in 0..self.daemonsets.len() {
            if event::tolerates_all(&self.daemonsets[d].tolerations, &taints) {
                let pod = self.create_pod(Owner::DaemonSet(d));
                self.pending.retain(|&p| p != pod);
                self.bind(pod, id);
            }
        }
    }

    fn ready(&mut self, id: NodeId) {
        let Some(n) = self.node(id) else { return };
        let ev = self.node_event(n, NodePhase::Ready);
        let claim = self.claim_event(n, ClaimPhase::Initialized);
        let karpenter = self.pools[n.pool].provisioner == Provisioner::Karpenter;
        if let Some(c) = claim {
            self.emit(c);
        }
        self.emit(ev);
        let now = self.now;
        let reserved = match self.node_mut(id) {
            Some(n) => {
                n.state = NodeState::Ready;
                n.idle_since = now;
                std::mem::take(&mut n.reserved)
            }
            None => Vec::new(),
        };
        for pod in reserved {
            if karpenter {
                // Nominated pods land on the claim's node; room was kept for them.
                self.bind(pod, id);
            } else {
                // cluster-autoscaler does not nominate: the pods go back to the
                // scheduler, which now sees the new node.
                let (cpu, mem) = self.requests(pod);
                if let Some(n) = self.node_mut(id) {
                    n.free_cpu += cpu;
                    n.free_mem += mem;
                }
                if let Some(p) = self.pods.get_mut(pod).and_then(Option::as_mut) {
                    p.state = PodState::Pending;
                }
                self.pending.push(pod);
            }
        }
        self.pending.sort_unstable();
    }

    fn requests(&self, pod: PodId) -> (i64, i64) {
        match self.pods.get(pod).and_then(Option::as_ref).map(|p| p.owner) {
            Some(Owner::Workload(w)) => (self.workloads[w].cpu, self.workloads[w].mem),
            // DaemonSet requests are taken off each node's allocatable up front.
            _ => (0, 0),
        }
    }

    fn pod_event(&self, pod: PodId, phase: PodPhase) -> Option<event::Pod> {
        let p = self.pods.get(pod)?.as_ref()?;
        let (workload, images) = match p.owner {
            Owner::Workload(w) => (&self.workloads[w].name, &self.workloads[w].images),
            Owner::DaemonSet(d) => (&self.daemonsets[d].name, &self.daemonsets[d].images),
        };
        let (node, claim) = match p.state {
            PodState::Pending => (None, None),
            PodState::Reserved(n) | PodState::Bound(n) => {
                let node = self.node(n)?;
                let karpenter = self.pools[node.pool].provisioner == Provisioner::Karpenter;
                match (p.state, karpenter) {
                    (PodState::Reserved(_), true) => (None, node.claim.clone()),
                    (PodState::Bound(_), true) if p.fresh => {
                        (Some(node.name.clone()), node.claim.clone())
                    }
                    _ => (Some(node.name.clone()), None),
                }
            }
        };
        Some(event::Pod {
            pod: p.name.clone(),
            workload: Some(workload.clone()),
            images: images.clone(),
            phase,
            node,
            node_claim: claim,
        })
    }

    fn create_pod(&mut self, owner: Owner) -> PodId {
        let name = match owner {
            Owner::Workload(w) => {
                let base = format!("{}-{}", self.workloads[w].name, self.wl[w].template_hash);
                self.unique_name(|r| format!("{base}-{}", Self::rand_suffix(r, 5)))
            }
            Owner::DaemonSet(d) => {
                let base = self.daemonsets[d].name.clone();
                self.unique_name(|r| format!("{base}-{}", Self::rand_suffix(r, 5)))
            }
        };
        let pod = SimPod {
            name,
            owner,
            state: PodState::Pending,
            fresh: false,
        };
        let id = match self.free_pods.pop() {
            Some(id) => {
                self.pods[id] = Some(pod);
                id
            }
            None => {
                self.pods.push(Some(pod));
                self.pods.len() - 1
            }
        };
        if let Owner::Workload(w) = owner {
            self.wl[w].pods.push(id);
        }
        self.pending.push(id);
        self.summary.pods += 1;
        if let Some(ev) = self.pod_event(id, PodPhase::Pending) {
            self.emit(ev);
        }
        id
    }

    fn bind(&mut self, pod: PodId, node: NodeId) {
        let (cpu, mem) = self.requests(pod);
        let Some(p) = self.pods.get_mut(pod).and_then(Option::as_mut) else {
            return;
        };
        let was_reserved = matches!(p.state, PodState::Reserved(_));
        let owner = p.owner;
        p.state = PodState::Bound(node);
        let fresh = p.fresh;
        if let Some(n) = self.node_mut(node) {
            if !was_reserved {
                n.free_cpu -= cpu;
                n.free_mem -= mem;
            }
            match owner {
                Owner::Workload(_) => n.workload_pods += 1,
                Owner::DaemonSet(_) => n.ds_pods.push(pod),
            }
        }
        if let Owner::Workload(_) = owner {
            if fresh {
                self.summary.bound_fresh += 1;
            } else {
                self.summary.bound_existing += 1;
            }
        }
        if let Some(ev) = self.pod_event(pod, PodPhase::Scheduled) {
            self.emit(ev);
        }
    }

    fn delete_pod(&mut self, pod: PodId) {
        if let Some(ev) = self.pod_event(pod, PodPhase::Deleted) {
            self.emit(ev);
        }
        let (cpu, mem) = self.requests(pod);
        let Some(p) = self.pods.get_mut(pod).and_then(Option::take) else {
            return;
        };
        self.free_pods.push(pod);
        let now = self.now;
        match p.state {
            PodState::Pending => self.pending.retain(|&q| q != pod),
            PodState::Reserved(n) => {
                if let Some(n) = self.node_mut(n) {
                    n.reserved.retain(|&q| q != pod);
                    n.free_cpu += cpu;
                    n.free_mem += mem;
                }
            }
            PodState::Bound(n) => {
                if let Some(n) = self.node_mut(n) {
                    n.free_cpu += cpu;
                    n.free_mem += mem;
                    match p.owner {
                        Owner::Workload(_) => {
                            n.workload_pods = n.workload_pods.saturating_sub(1);
                            if n.workload_pods == 0 {
                                n.idle_since = now;
                            }
                        }
                        Owner::DaemonSet(_) => n.ds_pods.retain(|&q| q != pod),
                    }
                }
            }
        }
        if let Owner::Workload(w) = p.owner {
            self.wl[w].pods.retain(|&q| q != pod);
        }
    }

    /// The Kubernetes HPA algorithm for workload `w` at `load` units/minute.
    fn hpa(&mut self, w: usize, load: f64) {
        let Some(h) = self.workloads[w].hpa else {
            return;
        };
        let cap = self.workloads[w].capacity;
        let replicas = self.wl[w].replicas;
        let ready = self.wl[w]
            .pods
            .iter()
            .filter(|&&p| {
                matches!(
                    self.pods[p].as_ref().map(|p| p.state),
                    Some(PodState::Bound(_))
                )
            })
            .count() as u32;
        let raw = hpa_recommendation(
            replicas,
            ready,
            load,
            cap,
            h.target_utilization,
            self.hpa_ctl.tolerance,
        );
        let window = self.hpa_ctl.scale_down_stabilization_seconds;
        let now = self.now;
        let st = &mut self.wl[w];
        st.recs.push_back((now, raw));
        while st.recs.front().is_some_and(|(t, _)| *t < now - window) {
            st.recs.pop_front();
        }
        let desired = if raw > replicas {
            // Default scale-up policy: at most double, or four more, per period.
            raw.min((replicas * 2).max(replicas + 4))
        } else {
            // Scale-down stabilisation: the highest recommendation in the window.
            st.recs
                .iter()
                .map(|r| r.1)
                .max()
                .unwrap_or(raw)
                .min(replicas)
        };
        let desired = (desired as i64).clamp(h.min, h.max) as u32;
        self.emit_hpa_status(w, desired, load);
        if desired != replicas {
            self.wl[w].replicas = desired;
            self.emit_workload(w);
            if desired > replicas {
                for _ in replicas..desired {
                    self.create_pod(Owner::Workload(w));
                }
            } else {
                for _ in desired..replicas {
                    if let Some(victim) = self.scale_down_victim(w) {
                        self.delete_pod(victim);
                    }
                }
            }
        }
    }

    fn emit_hpa(&mut self, w: usize, load: f64) {
        let r = self.wl[w].replicas;
        self.emit_hpa_status(w, r, load);
    }

    /// An `hpa` event when replicas change or utilisation moves by 25 points.
    fn emit_hpa_status(&mut self, w: usize, desired: u32, load: f64) {
        let cfg = &self.workloads[w];
        let Some(h) = cfg.hpa else { return };
        let current = self.wl[w].replicas;
        let util = if current == 0 {
            0.0
        } else {
            (100.0 * load / (current as f64 * cfg.capacity)).round()
        };
        if let Some((c, d, u)) = self.wl[w].last_hpa
            && c == current
            && d == desired
            && (u - util).abs() < 25.0
        {
            return;
        }
        self.wl[w].last_hpa = Some((current, desired, util));
        let body = event::Hpa {
            hpa: cfg.name.clone(),
            workload: cfg.name.clone(),
            current_replicas: current,
            desired_replicas: desired,
            min_replicas: Some(h.min as u32),
            max_replicas: Some(h.max as u32),
            metric: Some(event::HpaMetric {
                name: "cpu".into(),
                current: util,
                target: (h.target_utilization * 100.0).round(),
            }),
        };
        self.summary.hpa_events += 1;
        self.emit(body);
    }

    /// ReplicaSet scale-down order: unscheduled pods first, then the newest.
    fn scale_down_victim(&self, w: usize) -> Option<PodId> {
        let pods = &self.wl[w].pods;
        let state = |p: PodId| self.pods[p].as_ref().map(|p| p.state);
        pods.iter()
            .rev()
            .find(|&&p| state(p) == Some(PodState::Pending))
            .or_else(|| {
                pods.iter()
                    .rev()
                    .find(|&&p| matches!(state(p), Some(PodState::Reserved(_))))
            })
            .or_else(|| pods.last())
            .copied()
    }

    /// kube-scheduler: each pending pod, oldest first, onto the ready node of
    /// its pool that stays least allocated.
    fn schedule(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let mut left = Vec::with_capacity(pending.len());
        for pod in pending {
            let Some(Owner::Workload(w)) = self.pods[pod].as_ref().map(|p| p.owner) else {
                continue;
            };
            let cfg = &self.workloads[w];
            let pool = &self.pools[cfg.pool];
            let mut best: Option<(f64, NodeId)> = None;
            for &n in &self.pool_nodes[cfg.pool] {
                let Some(node) = self.node(n) else { continue };
                if node.state != NodeState::Ready
                    || node.free_cpu < cfg.cpu
                    || node.free_mem < cfg.mem
                {
                    continue;
                }
                let score = ((node.free_cpu - cfg.cpu) as f64 / node.size.0 as f64)
                    .min((node.free_mem - cfg.mem) as f64 / node.size.1 as f64);
                let score = if pool.binpack { -score } else { score };
                if best.is_none_or(|(s, _)| score > s) {
                    best = Some((score, n));
                }
            }
            match best {
                Some((_, n)) => self.bind(pod, n),
                None => left.push(pod),
            }
        }
        self.pending = left;
    }

    /// Each pool's provisioner, for the pods the scheduler could not place.
    fn provision(&mut self) {
        for p in 0..self.pools.len() {
            let pods: Vec<PodId> = self
                .pending
                .iter()
                .copied()
                .filter(|&pod| match self.pods[pod].as_ref().map(|p| p.owner) {
                    Some(Owner::Workload(w)) => self.workloads[w].pool == p,
                    _ => false,
                })
                .collect();
            if pods.is_empty() {
                continue;
            }
            let (cpu, mem) = (self.pools[p].cpu, self.pools[p].mem);
            let mut placed: Vec<PodId> = Vec::new();
            let mut new_nodes: Vec<NodeId> = Vec::new();
            for pod in pods {
                let (pc, pm) = self.requests(pod);
                if pc > cpu || pm > mem {
                    self.summary.unplaceable_pods += 1;
                    continue;
                }
                // Nodes on their way (in-flight claims) first, then new ones.
                let coming = self.pool_nodes[p].iter().copied().find(|&n| {
                    self.node(n).is_some_and(|node| {
                        node.state != NodeState::Ready && node.free_cpu >= pc && node.free_mem >= pm
                    })
                });
                let target = match coming {
                    Some(n) => n,
                    None => {
                        let alive = self.pool_nodes[p].len();
                        if alive >= self.pools[p].max_nodes {
                            self.summary.unplaceable_pods += 1;
                            continue;
                        }
                        let id = self.new_node(p, Some((pc, pm)));
                        new_nodes.push(id);
                        id
                    }
                };
                if let Some(n) = self.node_mut(target) {
                    n.free_cpu -= pc;
                    n.free_mem -= pm;
                    n.reserved.push(pod);
                }
                if let Some(pp) = self.pods[pod].as_mut() {
                    pp.state = PodState::Reserved(target);
                    pp.fresh = true;
                }
                placed.push(pod);
            }
            self.pending.retain(|q| !placed.contains(q));
            let karpenter = self.pools[p].provisioner == Provisioner::Karpenter;
            if karpenter {
                for &pod in &placed {
                    if let Some(ev) = self.pod_event(pod, PodPhase::Nominated) {
                        self.emit(ev);
                    }
                }
            }
            if !new_nodes.is_empty() {
                let to = self.pool_nodes[p].len() as u32;
                let from = to - new_nodes.len() as u32;
                let trigger: Vec<String> = placed
                    .iter()
                    .filter(|&&pod| {
                        matches!(self.pods[pod].as_ref().map(|p| p.state),
                            Some(PodState::Reserved(n)) if new_nodes.contains(&n))
                    })
                    .filter_map(|&pod| self.pods[pod].as_ref().map(|p| p.name.clone()))
                    .collect();
                let (source, from, to) = if karpenter {
                    (Autoscaler::Karpenter, from, to)
                } else {
                    let to = self.group_size[p];
                    (
                        Autoscaler::ClusterAutoscaler,
                        to - new_nodes.len() as u32,
                        to,
                    )
                };
                let body = event::ScaleUp {
                    source,
                    group: self.pools[p].name.clone(),
                    from,
                    to,
                    pods: Some(trigger),
                };
                self.summary.scale_ups += 1;
                self.emit(body);
                for id in new_nodes {
                    self.schedule_boot(id);
                }
            }
        }
        if !self.buffers.is_empty() {
            self.provision_buffers();
        }
    }

    /// Removes nodes idle for the pool's `idle_seconds`, down to `min_nodes`.
    fn scale_down(&mut self) {
        for p in 0..self.pools.len() {
            let idle = self.pools[p].idle_seconds;
            let mut i = 0;
            while i < self.pool_nodes[p].len() {
                let id = self.pool_nodes[p][i];
                let removable = self.pool_nodes[p].len() > self.pools[p].min_nodes
                    && self.node(id).is_some_and(|n| {
                        n.state == NodeState::Ready
                            && n.workload_pods == 0
                            && n.reserved.is_empty()
                            && self.now - n.idle_since >= idle
                    })
                    && self.buffer_keeps(p, id);
                if removable {
                    self.remove_node(p, id);
                } else {
                    i += 1;
                }
            }
        }
    }

    fn remove_node(&mut self, p: usize, id: NodeId) {
        let ds: Vec<PodId> = self.node(id).map(|n| n.ds_pods.clone()).unwrap_or_default();
        for pod in ds {
            self.delete_pod(pod);
        }
        let Some(n) = self.nodes.get_mut(id).and_then(Option::take) else {
            return;
        };
        let ev = self.node_event(&n, NodePhase::Deleted);
        self.emit(ev);
        if let Some(c) = self.claim_event(&n, ClaimPhase::Deleted) {
            self.emit(c);
        }
        self.pool_nodes[p].retain(|&q| q != id);
        if self.pools[p].provisioner == Provisioner::ClusterAutoscaler {
            self.group_size[p] = self.group_size[p].saturating_sub(1);
        }
        self.summary.nodes_removed += 1;
    }

    /// Nodes in each pool: (up or coming, ready).
    pub fn pool_sizes(&self) -> Vec<(usize, usize)> {
        self.pool_nodes
            .iter()
            .map(|ids| {
                let ready = ids
                    .iter()
                    .filter(|&&n| self.node(n).is_some_and(|n| n.state == NodeState::Ready))
                    .count();
                (ids.len(), ready)
            })
            .collect()
    }

    /// Each workload's load in `minute` of `load`, in units per minute.
    pub fn loads(&self, load: &Load, minute: usize, out: &mut Vec<f64>) {
        out.clear();
        out.extend(self.workloads.iter().map(|w| match w.load {
            Some((c, share)) => share * load.rate(c, minute),
            None => 0.0,
        }));
    }

    /// Replicas of each workload now.
    pub fn replicas(&self) -> Vec<u32> {
        self.wl.iter().map(|w| w.replicas).collect()
    }
}

/// One HPA recommendation, as kube-controller-manager computes it for a
/// resource metric: utilisation over the pods that report (bound ones);
/// pods without metrics count as 0% when scaling up and as 100% of target
/// when scaling down; no change within the tolerance or when the missing
/// pods would reverse the direction.
pub fn hpa_recommendation(
    replicas: u32,
    ready: u32,
    load: f64,
    capacity: f64,
    target: f64,
    tolerance: f64,
) -> u32 {
    if replicas == 0 {
        // Scale from zero (min 0): start what the load needs.
        return (load / (capacity * target)).ceil().max(0.0) as u32;
    }
    if ready == 0 {
        // No metrics at all: the HPA holds.
        return replicas;
    }
    let ratio = load / (ready as f64 * capacity) / target;
    let missing = replicas.saturating_sub(ready);
    if missing == 0 {
        if (ratio - 1.0).abs() <= tolerance {
            return replicas;
        }
        return (ratio * ready as f64).ceil() as u32;
    }
    let assumed = if ratio > 1.0 { 0.0 } else { 1.0 };
    let new_ratio = (ratio * ready as f64 + assumed * missing as f64) / replicas as f64;
    if (new_ratio - 1.0).abs() <= tolerance || (new_ratio > 1.0) != (ratio > 1.0) {
        return replicas;
    }
    (new_ratio * replicas as f64).ceil() as u32
}

/// Resolves a validated spec against a load file: pool indices, DaemonSet
/// overhead, load columns and tenants.
pub fn resolve(
    spec: &Spec,
    load: &Load,
    images: &mut Vec<CatalogueImage>,
    rng_seed: u64,
    spec_name: &str,
) -> super::Result<(Vec<PoolCfg>, Vec<WorkloadCfg>)> {
    let bad = |field: String, msg: String| super::Error::SpecField {
        path: spec_name.to_string(),
        field,
        msg,
    };
    let mut pools = Vec::new();
    for (i, p) in spec.pools.iter().enumerate() {
        // Each size's allocatable once the DaemonSets that run there are
        // placed, and the instance-type label that names it.
        let room = |r: &super::spec::Resources, field: String| {
            let (mut cpu, mut mem) = (r.cpu_millis, r.memory_mib);
            for d in &spec.daemonsets {
                if event::tolerates_all(&d.tolerations, &p.taints) {
                    cpu -= d.pod.cpu_millis;
                    mem -= d.pod.memory_mib;
                }
            }
            if cpu <= 0 || mem <= 0 {
                return Err(bad(
                    field,
                    "DaemonSet requests leave no room on the node".into(),
                ));
            }
            Ok((cpu, mem, format!("{}m-{}Mi", r.cpu_millis, r.memory_mib)))
        };
        let (cpu, mem, instance_type) = room(&p.node, format!("pools[{i}].node"))?;
        let other_sizes = p
            .other_node_sizes
            .iter()
            .enumerate()
            .map(|(j, r)| room(r, format!("pools[{i}].other_node_sizes[{j}]")))
            .collect::<super::Result<Vec<_>>>()?;
        pools.push(PoolCfg {
            name: p.name.clone(),
            provisioner: if p.autoscaler == "karpenter" {
                Provisioner::Karpenter
            } else {
                Provisioner::ClusterAutoscaler
            },
            cpu,
            mem,
            instance_type,
            other_sizes,
            labels: p.labels.clone(),
            taints: p.taints.clone(),
            launch: p.launch_seconds,
            register: p.register_seconds,
            ready: p.ready_seconds,
            min_nodes: p.min_nodes as usize,
            max_nodes: p.max_nodes as usize,
            idle_seconds: p.idle_seconds,
            binpack: match p.packing {
                Some(k) => k == super::spec::Packing::Binpack,
                None => p.autoscaler == "karpenter",
            },
        });
    }
    let pool_index = |name: &str| spec.pools.iter().position(|p| p.name == name);
    let mut workloads = Vec::new();
    for (i, w) in spec.workloads.iter().enumerate() {
        let pool = pool_index(&w.pool).ok_or_else(|| {
            bad(
                format!("workloads[{i}].pool"),
                format!("no pool named {:?}", w.pool),
            )
        })?;
        let load_ref = match &w.load {
            Some(l) => Some((
                load.column(&l.column).ok_or_else(|| {
                    bad(
                        format!("workloads[{i}].load.column"),
                        format!(
                            "the load file has no column {:?} (it has: {})",
                            l.column,
                            preview(&load.columns)
                        ),
                    )
                })?,
                l.share,
            )),
            None => None,
        };
        if !event::tolerates_all(&w.tolerations, &spec.pools[pool].taints) {
            return Err(bad(
                format!("workloads[{i}].tolerations"),
                format!("do not tolerate the taints of pool {:?}", w.pool),
            ));
        }
        if w.pod.cpu_millis > pools[pool].cpu || w.pod.memory_mib > pools[pool].mem {
            return Err(bad(
                format!("workloads[{i}].pod"),
                format!("does not fit on a node of pool {:?}", w.pool),
            ));
        }
        workloads.push(WorkloadCfg {
            name: w.name.clone(),
            images: w.images.clone(),
            pool,
            cpu: w.pod.cpu_millis,
            mem: w.pod.memory_mib,
            load: load_ref,
            capacity: w.per_pod_capacity,
            hpa: w.hpa,
            replicas: w.replicas.map(|r| r as u32),
            tolerations: w.tolerations.clone(),
        });
    }
    if let Some(t) = &spec.tenants {
        let pool = pool_index(&t.pool)
            .ok_or_else(|| bad("tenants.pool".into(), format!("no pool named {:?}", t.pool)))?;
        if t.pod.cpu_millis > pools[pool].cpu || t.pod.memory_mib > pools[pool].mem {
            return Err(bad(
                "tenants.pod".into(),
                format!("does not fit on a node of pool {:?}", t.pool),
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(rng_seed ^ 0x7e4a_4e75);
        let mut cols: Vec<usize> = (0..load.columns.len()).collect();
        match t.pick {
            super::spec::Pick::Busiest => {
                let totals: Vec<f64> = cols.iter().map(|&c| load.total(c)).collect();
                cols.sort_by(|&a, &b| totals[b].total_cmp(&totals[a]).then(a.cmp(&b)));
            }
            super::spec::Pick::Random => {
                for i in (1..cols.len()).rev() {
                    cols.swap(i, rng.random_range(0..=i));
                }
            }
        }
        cols.truncate(t.count as usize);
        let bases: Vec<CatalogueImage> = images
            .iter()
            .filter(|i| i.image.layers.is_some() && i.pulls > 0.0)
            .cloned()
            .collect();
        if bases.is_empty() {
            return Err(bad(
                "tenants".into(),
                "needs catalogue images with layers and pull counts as bases".into(),
            ));
        }
        let total_pulls: f64 = bases.iter().map(|b| b.pulls).sum();
        let mut used = HashSet::new();
        for c in cols {
            let short: String = load.columns[c]
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(10)
                .collect::<String>()
                .to_ascii_lowercase();
            let mut name = format!("fn-{short}");
            let mut k = 1;
            while !used.insert(name.clone()) {
                k += 1;
                name = format!("fn-{short}-{k}");
            }
            // A base image by popularity, plus the tenant's own layer.
            let mut x = rng.random_range(0.0..total_pulls);
            let base = bases
                .iter()
                .find(|b| {
                    x -= b.pulls;
                    x < 0.0
                })
                .unwrap_or(&bases[0]);
            let app_bytes = (uniform(&mut rng, t.app_layer_mib) * 1024.0 * 1024.0).round() as u64;
            let digest: String = (0..64)
                .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
                .collect();
            let mut layers = base.image.layers.clone().unwrap_or_default();
            layers.push(event::Layer {
                digest: format!("sha256:{digest}"),
                bytes: app_bytes,
            });
            let image = format!("{}/{name}:v1", t.registry);
            images.push(CatalogueImage {
                image: event::Image {
                    image: image.clone(),
                    bytes: layers.iter().map(|l| l.bytes).sum(),
                    layers: Some(layers),
                },
                pulls: 0.0,
            });
            workloads.push(WorkloadCfg {
                name: format!("{}/{name}", t.namespace),
                images: vec![image],
                pool,
                cpu: t.pod.cpu_millis,
                mem: t.pod.memory_mib,
                load: Some((c, 1.0)),
                capacity: t.per_pod_capacity,
                hpa: Some(t.hpa),
                replicas: None,
                tolerations: Vec::new(),
            });
        }
    }
    Ok((pools, workloads))
}

/// The spec's buffers for `sim`, whose workloads the spec check found.
pub fn resolve_buffers(spec: &Spec, sim: &Sim) -> Vec<BufferCfg> {
    spec.buffers
        .iter()
        .filter_map(|b| {
            Some(BufferCfg {
                name: b.name.clone(),
                workload: sim.workload_index(&b.workload)?,
                replicas: b.replicas.clamp(0, i64::from(u32::MAX)) as u32,
            })
        })
        .collect()
}

fn preview(cols: &[String]) -> String {
    let mut s: Vec<&str> = cols.iter().take(5).map(String::as_str).collect();
    if cols.len() > 5 {
        s.push("…");
    }
    s.join(", ")
}
