//! The simulated data plane that one policy's orders run against.
//!
//! Each node shares its bandwidth equally among the pulls transferring on it
//! (processor sharing), and every pull first pays a fixed latency. Kubelet
//! pulls one image at a time per node (`serializeImagePulls: true`); prefetch
//! pulls run beside it, up to a per-node limit, highest priority first.
//! Layers already on the node, or in flight, are not fetched again.
//!
//! Nothing that happens on one node affects another, and policies never see
//! the simulator's outcomes, so each node is advanced lazily: only when an
//! event touches it, and once more at the end of the trace. Even then the
//! pulls' byte counts move only when the set of flowing pulls changes, as
//! the rate each gets holds in between.

use rustc_hash::FxHashMap as HashMap;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use super::catalog::{Catalog, ImageId, LayerId};
use crate::event::{Body, ClaimPhase, Event, NodePhase, PodPhase};
use crate::intern::Interner;
use crate::policy::{PullOrder, Target};

/// The data-plane model's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimConfig {
    /// Bandwidth of each node, in bytes per second.
    pub bandwidth_bytes_per_second: f64,
    /// Fixed latency each pull pays before its bytes flow, in seconds.
    pub pull_latency_seconds: f64,
    /// Prefetch pulls that may run at once on one node.
    pub max_parallel_pulls: usize,
    /// Only pods bound and prefetches ordered from this time on are scored;
    /// earlier events only warm the cluster up (held-back evaluation).
    pub score_from: f64,
    /// Keep each scored pod's bind time beside its wait, for the charts of
    /// `--report` (8 bytes a pod; off otherwise).
    pub bind_times: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            bandwidth_bytes_per_second: 1000.0 * 1e6 / 8.0,
            pull_latency_seconds: 0.5,
            max_parallel_pulls: 4,
            score_from: f64::NEG_INFINITY,
            bind_times: false,
        }
    }
}

/// Orders held for a node or NodeClaim that does not exist yet; past this
/// many, further ones are dropped and counted.
const MAX_HELD_ORDERS: usize = 100_000;

/// Fraction of a byte treated as done, against float round-off.
const EPS_BYTES: f64 = 1e-6;

/// What the simulator measured for one policy.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Pods bound to a node.
    pub pods: u64,
    /// Seconds each pod waited for its images after binding.
    pub waits: Vec<f64>,
    /// When each pod of `waits` was bound, in the same order; empty unless
    /// [`SimConfig::bind_times`].
    pub wait_binds: Vec<f64>,
    /// (pod, image) needs whose image was present at binding.
    pub hits: u64,
    /// Needs whose image was being prefetched at binding.
    pub inflight: u64,
    /// Needs whose image nobody had fetched.
    pub misses: u64,
    /// Bytes moved by prefetch pulls.
    pub prefetched_bytes: u64,
    /// Prefetched bytes of images no pod on that node used before it left
    /// or the trace ended.
    pub wasted_bytes: u64,
    /// Bytes moved by kubelet's own pulls.
    pub kubelet_bytes: u64,
    /// Seconds between a prefetched image landing and its first pod binding.
    pub lead_times: Vec<f64>,
    /// Orders taken.
    pub orders: u64,
    /// Orders for images already present, in flight or queued on the node.
    pub orders_duplicate: u64,
    /// Orders for a node that never appeared or had gone, or past the hold
    /// limit.
    pub orders_dropped: u64,
    /// Orders the plan book kept out of a node's plan (its cap was full of
    /// better images, or its NodeClaim had the cap parked), and planned
    /// images a better one pushed out before their pull started.
    pub orders_capped: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum ImgState {
    PrefetchQueued,
    KubeletQueued,
    /// A pull of it is transferring or waiting on layers another pull owns.
    Pulling,
    Present {
        at: f64,
    },
}

#[derive(Debug)]
struct ImgEntry {
    state: ImgState,
    /// The bytes on the node came (or are coming) from a prefetch.
    prefetched: bool,
    /// Bytes the prefetch of this image moved.
    prefetch_bytes: u64,
    /// A pod on this node needed it.
    used: bool,
    /// Ordered inside the scored window.
    scored: bool,
}

impl ImgEntry {
    /// The bytes this entry would add to the waste if its node retired now.
    fn waste(&self) -> u64 {
        if self.prefetched && !self.used && self.scored {
            self.prefetch_bytes
        } else {
            0
        }
    }

    /// Applies `change`, keeping `unused_prefetch`, its node's running sum
    /// of [`ImgEntry::waste`], in step.
    fn update(&mut self, unused_prefetch: &mut u64, change: impl FnOnce(&mut Self)) {
        *unused_prefetch -= self.waste();
        change(self);
        *unused_prefetch += self.waste();
    }
}

#[derive(Debug)]
struct ActivePull {
    image: ImageId,
    kubelet: bool,
    latency_until: f64,
    remaining: f64,
    bytes: u64,
    layers: Vec<LayerId>,
}

#[derive(Debug)]
struct PodWait {
    bind: f64,
    /// Waiter lists that hold this pod: its record is reused only once
    /// none does.
    outstanding: u32,
    /// The slot in `Sim::nodes` of its node, and which incarnation: the
    /// slot is reused once the node is gone.
    node: u32,
    incarnation: u32,
    open: bool,
    scored: bool,
    /// Its delete event came; the record is freed when `outstanding`
    /// reaches zero.
    deleted: bool,
}

#[derive(Debug, Default)]
struct NodeSim {
    /// The node's clock: the latest time it was advanced to.
    now: f64,
    /// The time the pulls' `remaining` counts hold at. Bytes flow at one
    /// rate between the times the flowing set changes, so they are stepped
    /// only there, not on every event that touches the node.
    synced: f64,
    /// When the flowing set next changes, a latency ending or a pull
    /// completing; infinite with nothing active.
    due: f64,
    /// The share of bandwidth each flowing pull gets since `synced`.
    rate: f64,
    /// Active pulls that are prefetches, counted rather than scanned for
    /// each pull a node may start.
    prefetching: usize,
    /// The sum of every image's [`ImgEntry::waste`], kept as they change:
    /// walking a retiring node's images was a cache miss an image.
    unused_prefetch: u64,
    /// Layer → present (`true`) or in flight (`false`).
    layers: HashMap<LayerId, bool>,
    images: HashMap<ImageId, ImgEntry>,
    active: Vec<ActivePull>,
    /// Images whose own bytes arrived but that wait on layers in flight in
    /// another pull.
    finishing: Vec<ImageId>,
    prefetch_queue: BinaryHeap<(u32, Reverse<u64>, ImageId)>,
    kubelet_queue: VecDeque<ImageId>,
    kubelet_on: Option<ImageId>,
    waiters: HashMap<ImageId, Vec<usize>>,
}

impl NodeSim {
    /// Empties a retired node for reuse, keeping its tables' memory.
    fn reset(&mut self, now: f64) {
        self.now = now;
        self.synced = now;
        self.due = f64::INFINITY;
        self.rate = 0.0;
        self.prefetching = 0;
        self.unused_prefetch = 0;
        self.layers.clear();
        self.images.clear();
        self.active.clear();
        self.finishing.clear();
        self.prefetch_queue.clear();
        self.kubelet_queue.clear();
        self.kubelet_on = None;
        self.waiters.clear();
    }

    /// Whether `p` was transferring bytes at `synced`.
    fn flows(&self, p: &ActivePull) -> bool {
        p.latency_until <= self.synced && p.remaining > EPS_BYTES
    }

    /// Moves `remaining` forward from `synced` to `to`, which is no later
    /// than `due`.
    fn sync(&mut self, to: f64) {
        let (from, rate, due) = (self.synced, self.rate, self.due);
        let dt = to - from;
        let at_due = to >= due;
        if dt > 0.0 || at_due {
            for p in self.active.iter_mut() {
                if p.latency_until <= from && p.remaining > EPS_BYTES {
                    // The pulls that set `due` finish exactly there: with
                    // epoch-sized times, `due - from` is too coarse for the
                    // subtraction to reach zero on its own, and it may even
                    // round to no time at all.
                    if at_due && from + p.remaining / rate <= due {
                        p.remaining = 0.0;
                    } else if dt > 0.0 {
                        p.remaining -= rate * dt;
                    }
                }
            }
        }
        if to > from {
            self.synced = to;
        }
    }

    /// Recomputes the rate and the next change from `synced`, once the
    /// flowing set has changed.
    fn plan(&mut self, bandwidth: f64) {
        let synced = self.synced;
        let flowing = self.active.iter().filter(|p| self.flows(p)).count();
        let rate = if flowing > 0 {
            bandwidth / flowing as f64
        } else {
            0.0
        };
        let mut due = f64::INFINITY;
        for p in &self.active {
            let at = if p.latency_until > synced {
                p.latency_until
            } else if p.remaining > EPS_BYTES {
                synced + p.remaining / rate
            } else {
                synced
            };
            due = due.min(at);
        }
        self.rate = rate;
        self.due = due;
    }
}

/// No id: an empty slot of an id-indexed table.
const NONE: u32 = u32::MAX;

/// Node, pod and NodeClaim names, interned once for every lane: each
/// [`Sim`] indexes its tables by these ids, so that an event's names are
/// hashed once rather than once a lane.
#[derive(Debug)]
pub struct Names {
    nodes: Interner,
    pods: Interner,
    claims: Interner,
    /// The node the last order named, and its id: a policy orders a batch
    /// of images for one node at a time.
    last_ordered: (String, u32),
}

impl Default for Names {
    fn default() -> Self {
        Self {
            nodes: Interner::default(),
            pods: Interner::default(),
            claims: Interner::default(),
            last_ordered: (String::new(), NONE),
        }
    }
}

impl Names {
    /// The id of node `name`, named by an order.
    fn ordered_node(&mut self, name: &str) -> u32 {
        if self.last_ordered.1 != NONE && self.last_ordered.0 == name {
            return self.last_ordered.1;
        }
        let id = self.nodes.intern(name);
        self.last_ordered.0.clear();
        self.last_ordered.0.push_str(name);
        self.last_ordered.1 = id;
        id
    }
}

/// The ids of the names in one event that the simulator reads, resolved
/// once by [`Keys::resolve`] and shared by every lane.
#[derive(Debug)]
pub struct Keys {
    node: u32,
    pod: u32,
    claim: u32,
    images: Vec<ImageId>,
    /// The id of the pod the last event deleted: free for reuse once every
    /// lane has handled that event, which leaves every lane's slot for it
    /// empty (a deleted pod's slot is cleared, a new id's slot is empty).
    released_pod: u32,
}

impl Default for Keys {
    fn default() -> Self {
        Self {
            node: NONE,
            pod: NONE,
            claim: NONE,
            images: Vec::new(),
            released_pod: NONE,
        }
    }
}

impl Keys {
    /// Resolves the names of `event`, interning the ones seen first. Every
    /// lane must have handled the previous event with the previous keys.
    pub fn resolve(&mut self, event: &Event, names: &mut Names, catalog: &mut Catalog) {
        if self.released_pod != NONE {
            names.pods.release(self.released_pod);
            self.released_pod = NONE;
        }
        self.node = NONE;
        self.pod = NONE;
        self.claim = NONE;
        self.images.clear();
        match &event.body {
            Body::Node(n) => {
                self.node = names.nodes.intern(&n.node);
                if n.phase != NodePhase::Deleted {
                    let images = n.images.iter().flatten();
                    self.images.extend(images.map(|i| catalog.intern(i)));
                }
            }
            Body::NodeClaim(c) => {
                self.claim = names.claims.intern(&c.node_claim);
                if let Some(node) = &c.node {
                    self.node = names.nodes.intern(node);
                }
            }
            Body::Pod(p) => match (p.phase, &p.node) {
                (PodPhase::Scheduled, Some(node)) => {
                    self.pod = names.pods.intern(&p.pod);
                    self.node = names.nodes.intern(node);
                    let images = p.images.iter().map(|i| catalog.intern(i));
                    self.images.extend(images);
                }
                // A pod never bound has no id, and nothing to close. A
                // deleted pod's name is forgotten: a pod bound again under
                // it starts afresh in every lane, whatever its id.
                (PodPhase::Deleted, _) => {
                    self.pod = names.pods.remove(&p.pod).unwrap_or(NONE);
                    self.released_pod = self.pod;
                }
                _ => {}
            },
            _ => {}
        }
    }
}

/// The entry for `id` in an id-indexed table, grown as needed.
fn slot(table: &mut Vec<u32>, id: u32) -> &mut u32 {
    let i = id as usize;
    if i >= table.len() {
        table.resize(i + 1, NONE);
    }
    &mut table[i]
}

/// The entry for `id` in an id-indexed table, [`NONE`] past its end.
fn peek(table: &[u32], id: u32) -> u32 {
    table.get(id as usize).copied().unwrap_or(NONE)
}

/// An order held until its node exists: the image and the priority.
type Held = (ImageId, u32);

/// One policy's simulated cluster.
#[derive(Debug)]
pub struct Sim {
    cfg: SimConfig,
    /// Node records by slot. A retired node's slot, with its tables'
    /// memory, goes to the next new node: a trace registers thousands of
    /// nodes but few live at once, and a record for every incarnation was
    /// page faults and cache misses.
    nodes: Vec<NodeSim>,
    /// Whether each of `nodes` is alive, apart from the nodes themselves:
    /// pods are deleted long after their node, and reading a dead node's
    /// large record only to find it dead was a cache miss a time.
    alive: Vec<bool>,
    /// The incarnation in each of `nodes`, numbered in order of creation.
    incarnation: Vec<u32>,
    /// Incarnations created so far.
    incarnations: u32,
    /// Slots of retired nodes, the last retired on top.
    free_slots: Vec<u32>,
    /// Node name id → slot in `nodes` of its live incarnation.
    node_slot: Vec<u32>,
    /// Claim id → node name id, once the claim names its node.
    claim_node: Vec<u32>,
    held_for_node: HashMap<u32, Vec<Held>>,
    held_for_claim: HashMap<u32, Vec<Held>>,
    held: usize,
    pods: Vec<PodWait>,
    /// Records of `pods` free for a new binding: a trace binds hundreds of
    /// thousands of pods but few live at once, and a table of every binding
    /// was page faults and cache misses.
    free_pods: Vec<u32>,
    /// Pod name id → index in `pods` of its binding.
    pod_slot: Vec<u32>,
    /// Scratch lists of `complete_due`, kept to save an allocation a call.
    done: Vec<ActivePull>,
    landed: Vec<ImageId>,
    /// Emptied lists, kept for reuse: a waiter list is made for each image
    /// a pod waits on, a layer list for each pull.
    spare_waiters: Vec<Vec<usize>>,
    spare_layers: Vec<Vec<LayerId>>,
    seq: u64,
    out: Outcome,
}

impl Sim {
    /// An empty cluster.
    pub fn new(cfg: SimConfig) -> Self {
        Self {
            cfg,
            nodes: Vec::new(),
            alive: Vec::new(),
            incarnation: Vec::new(),
            incarnations: 0,
            free_slots: Vec::new(),
            node_slot: Vec::new(),
            claim_node: Vec::new(),
            held_for_node: HashMap::default(),
            held_for_claim: HashMap::default(),
            held: 0,
            pods: Vec::new(),
            free_pods: Vec::new(),
            pod_slot: Vec::new(),
            done: Vec::new(),
            landed: Vec::new(),
            spare_waiters: Vec::new(),
            spare_layers: Vec::new(),
            seq: 0,
            out: Outcome::default(),
        }
    }

    /// Applies one input event at its time; `keys` are its names, resolved
    /// against the same [`Names`] and `catalog` as every earlier event.
    /// Outcomes (`pull`, pod `started`) are ignored: the simulator computes
    /// its own.
    pub fn on_event(&mut self, event: &Event, keys: &Keys, catalog: &mut Catalog) {
        let t = event.ts;
        match &event.body {
            Body::Node(n) => match n.phase {
                NodePhase::Registered | NodePhase::Ready => {
                    let (idx, new) = self.node_at(keys.node, t, catalog);
                    if new {
                        for &id in &keys.images {
                            self.mark_present(idx, id, t, catalog);
                        }
                        self.release_held_for_node(keys.node, t, catalog);
                    }
                }
                NodePhase::Deleted => self.delete_node(keys.node, t, catalog),
            },
            Body::NodeClaim(c) => {
                if c.node.is_some() {
                    *slot(&mut self.claim_node, keys.claim) = keys.node;
                    if peek(&self.node_slot, keys.node) != NONE {
                        self.release_held_for_claim(keys.claim, t, catalog);
                    }
                }
                if c.phase == ClaimPhase::Deleted {
                    if let Some(n) = self.claim_node.get_mut(keys.claim as usize) {
                        *n = NONE;
                    }
                    self.drop_held(true, keys.claim);
                }
            }
            Body::Pod(p) => match p.phase {
                PodPhase::Scheduled if p.node.is_some() => {
                    self.bind(keys.pod, keys.node, &keys.images, t, catalog);
                }
                PodPhase::Deleted => {
                    let pid = self
                        .pod_slot
                        .get_mut(keys.pod as usize)
                        .map_or(NONE, |s| std::mem::replace(s, NONE));
                    if pid != NONE {
                        if let Some(node) = self.pod_node(pid as usize) {
                            self.advance(node, t, catalog);
                        }
                        self.close_pod(pid as usize, t);
                        let pod = &mut self.pods[pid as usize];
                        if pod.outstanding == 0 {
                            self.free_pods.push(pid);
                        } else {
                            pod.deleted = true;
                        }
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// Takes one order from the policy at time `t`.
    pub fn order(&mut self, order: &PullOrder, t: f64, names: &mut Names, catalog: &mut Catalog) {
        if t >= self.cfg.score_from {
            self.out.orders += 1;
        }
        let image = catalog.intern(&order.image);
        let held = (image, order.priority);
        let node = match &order.target {
            Target::Node(n) => names.ordered_node(n),
            Target::NodeClaim(c) => {
                let claim = names.claims.intern(c);
                match peek(&self.claim_node, claim) {
                    n if n != NONE && peek(&self.node_slot, n) != NONE => n,
                    _ => {
                        self.hold(true, claim, held);
                        return;
                    }
                }
            }
        };
        match peek(&self.node_slot, node) {
            NONE => self.hold(false, node, held),
            idx => self.enqueue_prefetch(idx as usize, held, t, catalog),
        }
    }

    /// Counts one order a policy made at `t`; the plan book decides what of
    /// it reaches the node ([`Sim::plan`], [`Sim::unplan`], [`Sim::skipped`]).
    pub fn count_order(&mut self, t: f64) {
        if t >= self.cfg.score_from {
            self.out.orders += 1;
        }
    }

    /// Counts an order the plan book did not pass on: the node had the image
    /// at that priority already, or (`capped`) better images filled its plan.
    pub fn skipped(&mut self, capped: bool) {
        if capped {
            self.out.orders_capped += 1;
        } else {
            self.out.orders_duplicate += 1;
        }
    }

    /// Queues a prefetch of `image` on `node` at `priority` (again, at a
    /// higher priority, if it is still queued); held until the node exists.
    pub fn plan(
        &mut self,
        node: &str,
        image: &str,
        priority: u32,
        t: f64,
        names: &mut Names,
        catalog: &mut Catalog,
    ) {
        let image = catalog.intern(image);
        let node = names.ordered_node(node);
        match peek(&self.node_slot, node) {
            NONE => self.hold(false, node, (image, priority)),
            idx => self.enqueue_prefetch(idx as usize, (image, priority), t, catalog),
        }
    }

    /// Takes `image` out of `node`'s plan: a prefetch not started yet is
    /// cancelled, as the agent drops an image its NodePrefetch no longer
    /// lists; one started runs on.
    pub fn unplan(
        &mut self,
        node: &str,
        image: &str,
        t: f64,
        names: &mut Names,
        catalog: &mut Catalog,
    ) {
        let image = catalog.intern(image);
        let node = names.ordered_node(node);
        let idx = peek(&self.node_slot, node);
        if idx == NONE {
            if let Some(held) = self.held_for_node.get_mut(&node)
                && let Some(at) = held.iter().position(|&(id, _)| id == image)
            {
                held.remove(at);
                self.held -= 1;
                self.out.orders_capped += 1;
            }
            return;
        }
        let idx = idx as usize;
        self.advance(idx, t, catalog);
        let n = &mut self.nodes[idx];
        if n.images.get(&image).map(|e| e.state) == Some(ImgState::PrefetchQueued) {
            // Queued only: nothing moved, so no waste to take back; its
            // queue entry finds no entry and lapses.
            n.images.remove(&image);
            self.out.orders_capped += 1;
        }
    }

    /// The images each live node has prefetched, is pulling or has queued
    /// for prefetch, by node name: what its simulated agent was told to pull.
    pub fn prefetches(
        &self,
        names: &Names,
        catalog: &Catalog,
    ) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
        let mut out = std::collections::BTreeMap::new();
        for (id, &idx) in self.node_slot.iter().enumerate() {
            if idx == NONE || !self.alive[idx as usize] {
                continue;
            }
            let images = self.nodes[idx as usize]
                .images
                .iter()
                .filter(|(_, e)| e.prefetched)
                .map(|(&i, _)| catalog.name(i).to_string())
                .collect();
            out.insert(names.nodes.name(id as u32).to_string(), images);
        }
        out
    }

    /// Runs every node until its queues are empty, settles the waste, and
    /// returns the measurements.
    pub fn finish(mut self, catalog: &mut Catalog) -> Outcome {
        // In order of creation, as the books of each are closed in turn.
        let mut live: Vec<(u32, usize)> = (0..self.nodes.len())
            .filter(|&idx| self.alive[idx])
            .map(|idx| (self.incarnation[idx], idx))
            .collect();
        live.sort_unstable();
        for (_, idx) in live {
            self.advance(idx, f64::INFINITY, catalog);
            let end = self.nodes[idx].now;
            self.retire_node(idx, end);
        }
        self.out.orders_dropped += self.held as u64;
        self.out
    }

    fn hold(&mut self, claim: bool, key: u32, order: Held) {
        if self.held >= MAX_HELD_ORDERS {
            self.out.orders_dropped += 1;
            return;
        }
        self.held += 1;
        let map = if claim {
            &mut self.held_for_claim
        } else {
            &mut self.held_for_node
        };
        map.entry(key).or_default().push(order);
    }

    fn drop_held(&mut self, claim: bool, key: u32) {
        let map = if claim {
            &mut self.held_for_claim
        } else {
            &mut self.held_for_node
        };
        if let Some(v) = map.remove(&key) {
            self.held -= v.len();
            self.out.orders_dropped += v.len() as u64;
        }
    }

    fn release_held_for_node(&mut self, node: u32, t: f64, catalog: &mut Catalog) {
        if let Some(orders) = self.held_for_node.remove(&node) {
            self.held -= orders.len();
            let idx = peek(&self.node_slot, node) as usize;
            for o in orders {
                self.enqueue_prefetch(idx, o, t, catalog);
            }
        }
        if self.held_for_claim.is_empty() {
            return;
        }
        // In claim order, so that the queue order does not depend on hashing.
        let mut claims: Vec<u32> = self
            .held_for_claim
            .keys()
            .copied()
            .filter(|&c| peek(&self.claim_node, c) == node)
            .collect();
        claims.sort_unstable();
        for c in claims {
            self.release_held_for_claim(c, t, catalog);
        }
    }

    fn release_held_for_claim(&mut self, claim: u32, t: f64, catalog: &mut Catalog) {
        let Some(orders) = self.held_for_claim.remove(&claim) else {
            return;
        };
        self.held -= orders.len();
        let idx = peek(&self.node_slot, peek(&self.claim_node, claim)) as usize;
        for o in orders {
            self.enqueue_prefetch(idx, o, t, catalog);
        }
    }

    /// The node with name id `node`, created if it is new; a node seen first
    /// in a binding existed before the trace began.
    fn node_at(&mut self, node: u32, t: f64, catalog: &mut Catalog) -> (usize, bool) {
        let idx = peek(&self.node_slot, node);
        if idx != NONE {
            self.advance(idx as usize, t, catalog);
            return (idx as usize, false);
        }
        let serial = self.incarnations;
        self.incarnations += 1;
        let idx = match self.free_slots.pop() {
            Some(idx) => {
                let idx = idx as usize;
                self.nodes[idx].reset(t);
                self.alive[idx] = true;
                self.incarnation[idx] = serial;
                idx
            }
            None => {
                let mut node = NodeSim::default();
                node.reset(t);
                self.nodes.push(node);
                self.alive.push(true);
                self.incarnation.push(serial);
                self.nodes.len() - 1
            }
        };
        *slot(&mut self.node_slot, node) = idx as u32;
        (idx, true)
    }

    fn delete_node(&mut self, node: u32, t: f64, catalog: &mut Catalog) {
        self.drop_held(false, node);
        let idx = match self.node_slot.get_mut(node as usize) {
            Some(s) if *s != NONE => std::mem::replace(s, NONE) as usize,
            _ => return,
        };
        self.advance(idx, t, catalog);
        // Pulls cut short still moved bytes; a prefetch's count as waste.
        let node = &mut self.nodes[idx];
        let now = node.now;
        node.sync(now);
        for mut p in node.active.drain(..) {
            p.layers.clear();
            self.spare_layers.push(p.layers);
            let moved = (p.bytes as f64 - p.remaining.max(0.0)).round() as u64;
            if p.kubelet {
                self.out.kubelet_bytes += moved;
            } else if let Some(e) = node.images.get_mut(&p.image)
                && e.scored
            {
                self.out.prefetched_bytes += moved;
                e.update(&mut node.unused_prefetch, |e| e.prefetch_bytes += moved);
            }
        }
        self.retire_node(idx, t);
    }

    /// Closes a node's books: pods still waiting stop at `t`, unused
    /// prefetched bytes become waste.
    fn retire_node(&mut self, idx: usize, t: f64) {
        let node = &mut self.nodes[idx];
        self.alive[idx] = false;
        debug_assert_eq!(
            node.unused_prefetch,
            node.images.values().map(ImgEntry::waste).sum::<u64>()
        );
        self.out.wasted_bytes += node.unused_prefetch;
        let mut waiting = Vec::new();
        for (_, mut pids) in node.waiters.drain() {
            waiting.extend_from_slice(&pids);
            pids.clear();
            self.spare_waiters.push(pids);
        }
        self.free_slots.push(idx as u32);
        for pid in waiting {
            self.close_pod(pid, t);
            self.unwait(pid);
        }
    }

    /// Takes pod `pid` off one waiter list, freeing its record when it was
    /// deleted and no list holds it any more.
    fn unwait(&mut self, pid: usize) {
        let pod = &mut self.pods[pid];
        pod.outstanding = pod.outstanding.saturating_sub(1);
        if pod.outstanding == 0 && pod.deleted {
            pod.deleted = false;
            self.free_pods.push(pid as u32);
        }
    }

    /// The slot of pod `pid`'s node while that node lives.
    fn pod_node(&self, pid: usize) -> Option<usize> {
        let pod = &self.pods[pid];
        let idx = pod.node as usize;
        (self.alive[idx] && self.incarnation[idx] == pod.incarnation).then_some(idx)
    }

    fn close_pod(&mut self, pid: usize, t: f64) {
        let pod = &mut self.pods[pid];
        if pod.open {
            pod.open = false;
            if pod.scored {
                self.out.waits.push(t - pod.bind);
                if self.cfg.bind_times {
                    self.out.wait_binds.push(pod.bind);
                }
            }
        }
    }

    fn bind(&mut self, pod: u32, node: u32, images: &[ImageId], t: f64, catalog: &mut Catalog) {
        let bound = peek(&self.pod_slot, pod);
        if bound != NONE {
            if self.pod_node(bound as usize).is_some() {
                return; // already bound; a repeated event
            }
            // Its node is gone, and took the pod off every waiter list: the
            // old binding's record is free.
            self.free_pods.push(bound);
        }
        let (idx, _) = self.node_at(node, t, catalog);
        let scored = t >= self.cfg.score_from;
        let record = PodWait {
            bind: t,
            outstanding: 0,
            node: idx as u32,
            incarnation: self.incarnation[idx],
            open: true,
            scored,
            deleted: false,
        };
        let pid = match self.free_pods.pop() {
            Some(p) => {
                self.pods[p as usize] = record;
                p as usize
            }
            None => {
                self.pods.push(record);
                self.pods.len() - 1
            }
        };
        *slot(&mut self.pod_slot, pod) = pid as u32;
        // Counters of an unscored binding go to a scratch copy.
        let mut scratch = Outcome::default();
        let out = if scored {
            self.out.pods += 1;
            &mut self.out
        } else {
            &mut scratch
        };
        let mut outstanding = 0;
        for &id in images {
            let n = &mut self.nodes[idx];
            let entry = n.images.entry(id).or_insert(ImgEntry {
                state: ImgState::KubeletQueued,
                prefetched: false,
                prefetch_bytes: 0,
                used: false,
                scored: false,
            });
            let fresh = !entry.used;
            entry.update(&mut n.unused_prefetch, |e| e.used = true);
            match entry.state {
                ImgState::Present { at } => {
                    if fresh {
                        out.hits += 1;
                        if entry.prefetched {
                            out.lead_times.push(t - at);
                        }
                    } else {
                        out.hits += 1;
                    }
                    continue;
                }
                ImgState::Pulling if entry.prefetched => out.inflight += 1,
                ImgState::Pulling => out.misses += 1,
                ImgState::KubeletQueued => {
                    out.misses += 1;
                    if fresh {
                        n.kubelet_queue.push_back(id);
                    }
                }
                ImgState::PrefetchQueued => {
                    // Kubelet does not know about queued prefetches: it pulls
                    // the image itself, and the queued order lapses.
                    out.misses += 1;
                    entry.state = ImgState::KubeletQueued;
                    entry.prefetched = false;
                    n.kubelet_queue.push_back(id);
                }
            }
            let spare = &mut self.spare_waiters;
            let waiters = n
                .waiters
                .entry(id)
                .or_insert_with(|| spare.pop().unwrap_or_default());
            if !waiters.contains(&pid) {
                waiters.push(pid);
                outstanding += 1;
            }
        }
        if outstanding == 0 {
            self.close_pod(pid, t);
        } else {
            self.pods[pid].outstanding = outstanding;
            self.start_pulls(idx, catalog);
        }
    }

    fn enqueue_prefetch(&mut self, idx: usize, order: Held, t: f64, catalog: &mut Catalog) {
        self.advance(idx, t, catalog);
        let (id, priority) = order;
        let node = &mut self.nodes[idx];
        if let Some(e) = node.images.get(&id) {
            if e.state == ImgState::PrefetchQueued {
                // A higher priority from the plan book: queued again at it;
                // the entry at the old one finds the pull started and lapses.
                self.seq += 1;
                node.prefetch_queue.push((priority, Reverse(self.seq), id));
                self.start_pulls(idx, catalog);
            } else {
                self.out.orders_duplicate += 1;
            }
            return;
        }
        node.images.insert(
            id,
            ImgEntry {
                state: ImgState::PrefetchQueued,
                prefetched: true,
                prefetch_bytes: 0,
                used: false,
                scored: t >= self.cfg.score_from,
            },
        );
        self.seq += 1;
        node.prefetch_queue.push((priority, Reverse(self.seq), id));
        self.start_pulls(idx, catalog);
    }

    fn mark_present(&mut self, idx: usize, id: ImageId, t: f64, catalog: &Catalog) {
        let node = &mut self.nodes[idx];
        for &l in catalog.layers(id) {
            node.layers.insert(l, true);
        }
        node.images.insert(
            id,
            ImgEntry {
                state: ImgState::Present { at: t },
                prefetched: false,
                prefetch_bytes: 0,
                used: false,
                scored: false,
            },
        );
    }

    /// Starts whatever the node's free slots allow.
    fn start_pulls(&mut self, idx: usize, catalog: &mut Catalog) {
        let max_parallel = self.cfg.max_parallel_pulls;
        let latency = self.cfg.pull_latency_seconds;
        let node = &mut self.nodes[idx];
        let spare = &mut self.spare_layers;
        while node.kubelet_on.is_none() {
            let Some(id) = node.kubelet_queue.pop_front() else {
                break;
            };
            let Some(e) = node.images.get(&id) else {
                continue;
            };
            match e.state {
                ImgState::Present { .. } => continue,
                // Kubelet's pull joins the one in flight and blocks on it.
                ImgState::Pulling => node.kubelet_on = Some(id),
                ImgState::KubeletQueued | ImgState::PrefetchQueued => {
                    node.kubelet_on = Some(id);
                    start_pull(node, id, true, latency, catalog, spare);
                }
            }
        }
        while node.prefetching < max_parallel {
            let Some((_, _, id)) = node.prefetch_queue.pop() else {
                break;
            };
            if node.images.get(&id).map(|e| e.state) == Some(ImgState::PrefetchQueued) {
                start_pull(node, id, false, latency, catalog, spare);
            }
        }
    }

    /// Moves node `idx` forward to time `t`, completing pulls on the way.
    fn advance(&mut self, idx: usize, t: f64, catalog: &mut Catalog) {
        // A dead node's record is a placeholder nobody reads again.
        if !self.alive[idx] {
            return;
        }
        let bandwidth = self.cfg.bandwidth_bytes_per_second;
        loop {
            let node = &mut self.nodes[idx];
            let due = node.due;
            // Before `due` nothing completes and the rate holds: only the
            // clock moves. An infinite `due` with pulls active cannot move
            // at all.
            if node.active.is_empty() || t < due || due == f64::INFINITY {
                if t.is_finite() && t > node.now {
                    node.now = t;
                }
                return;
            }
            node.sync(due);
            node.now = due;
            self.complete_due(idx, catalog);
            self.nodes[idx].plan(bandwidth);
        }
    }

    /// Completes every pull whose latency has passed and bytes have arrived.
    fn complete_due(&mut self, idx: usize, catalog: &mut Catalog) {
        let node = &mut self.nodes[idx];
        let now = node.now;
        let tolerance = 1e-9 * self.cfg.bandwidth_bytes_per_second.max(1.0);
        let mut done = std::mem::take(&mut self.done);
        let mut i = 0;
        while i < node.active.len() {
            let p = &node.active[i];
            if p.latency_until <= now && p.remaining <= tolerance {
                if !p.kubelet {
                    node.prefetching -= 1;
                }
                done.push(node.active.swap_remove(i));
            } else {
                i += 1;
            }
        }
        // A latency ending: the flowing set changed, but nothing landed and
        // no slot freed, so there is nothing new to start either.
        if done.is_empty() {
            self.done = done;
            return;
        }
        for mut p in done.drain(..) {
            for &l in &p.layers {
                node.layers.insert(l, true);
            }
            p.layers.clear();
            self.spare_layers.push(p.layers);
            if p.kubelet {
                self.out.kubelet_bytes += p.bytes;
            } else if let Some(e) = node.images.get_mut(&p.image)
                && e.scored
            {
                self.out.prefetched_bytes += p.bytes;
                e.update(&mut node.unused_prefetch, |e| e.prefetch_bytes += p.bytes);
            }
            node.finishing.push(p.image);
        }
        self.done = done;
        // An image is present once all its layers are, whichever pull brought them.
        let mut landed = std::mem::take(&mut self.landed);
        node.finishing.retain(|&id| {
            let ready = catalog
                .layers(id)
                .iter()
                .all(|l| node.layers.get(l) == Some(&true));
            if ready {
                landed.push(id);
            }
            !ready
        });
        for id in landed.drain(..) {
            if let Some(e) = node.images.get_mut(&id) {
                e.state = ImgState::Present { at: now };
            }
            if node.kubelet_on == Some(id) {
                node.kubelet_on = None;
            }
            let Some(mut pids) = node.waiters.remove(&id) else {
                continue;
            };
            for &pid in &pids {
                let pod = &mut self.pods[pid];
                pod.outstanding = pod.outstanding.saturating_sub(1);
                if pod.outstanding == 0 {
                    if pod.open {
                        pod.open = false;
                        if pod.scored {
                            self.out.waits.push(now - pod.bind);
                            if self.cfg.bind_times {
                                self.out.wait_binds.push(pod.bind);
                            }
                        }
                    } else if pod.deleted {
                        pod.deleted = false;
                        self.free_pods.push(pid as u32);
                    }
                }
            }
            pids.clear();
            self.spare_waiters.push(pids);
        }
        self.landed = landed;
        self.start_pulls(idx, catalog);
    }
}

/// Starts a pull of `id` on `node`: it fetches the layers nobody has, and
/// waits on the ones another pull is fetching.
/// `spare` holds emptied layer lists to reuse.
fn start_pull(
    node: &mut NodeSim,
    id: ImageId,
    kubelet: bool,
    latency: f64,
    catalog: &mut Catalog,
    spare: &mut Vec<Vec<LayerId>>,
) {
    let mut bytes = 0;
    let mut layers = spare.pop().unwrap_or_default();
    // By index: `layer_bytes` needs the catalogue mutably.
    for i in 0..catalog.layers(id).len() {
        let l = catalog.layers(id)[i];
        if let std::collections::hash_map::Entry::Vacant(v) = node.layers.entry(l) {
            v.insert(false);
            bytes += catalog.layer_bytes(l);
            layers.push(l);
        }
    }
    if let Some(e) = node.images.get_mut(&id) {
        e.update(&mut node.unused_prefetch, |e| {
            e.state = ImgState::Pulling;
            e.prefetched = !kubelet;
        });
    }
    let latency_until = node.now + latency;
    // The new pull flows only once its latency has passed: until then the
    // rate holds, and only its start may come due sooner.
    node.due = node.due.min(latency_until);
    if !kubelet {
        node.prefetching += 1;
    }
    node.active.push(ActivePull {
        image: id,
        kubelet,
        latency_until,
        remaining: bytes as f64,
        bytes,
        layers,
    });
}
