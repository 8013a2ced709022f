//! The incremental cluster view the planner reads: a fold over events.
//!
//! Each event updates a few maps and indexes in O(size of the event), so the
//! planner never rescans history. Images are interned to small integers to
//! keep 100,000 pods in a few tens of megabytes.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::BTreeMap;

use crate::event::{
    Body, ClaimPhase, Event, NodePhase, PodPhase, Taint, Toleration, tolerates_all,
};
use crate::intern::Interner;

/// An interned image.
pub type ImageId = u32;

/// A workload's pod template, as far as placement and images go.
#[derive(Debug, Clone)]
pub struct WorkloadInfo {
    /// `Deployment`, `DaemonSet`, ….
    pub kind: String,
    /// Its images.
    pub images: Box<[ImageId]>,
    /// Its node selector.
    pub node_selector: BTreeMap<String, String>,
    /// Its tolerations.
    pub tolerations: Vec<Toleration>,
    /// Desired replicas, where known.
    pub replicas: Option<u32>,
}

impl WorkloadInfo {
    /// Whether pods of this workload can run on a node with `labels` and
    /// `taints`.
    pub fn fits(&self, labels: &BTreeMap<String, String>, taints: &[Taint]) -> bool {
        self.node_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && tolerates_all(&self.tolerations, taints)
    }

    /// Whether this is a DaemonSet.
    pub fn is_daemonset(&self) -> bool {
        self.kind == "DaemonSet"
    }
}

/// A pod not yet gone.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// Owning workload, interned in [`ClusterState::workload_names`].
    pub workload: Option<u32>,
    /// Its images.
    pub images: Box<[ImageId]>,
    /// Last phase seen.
    pub phase: PodPhase,
    /// Node it is bound to.
    pub node: Option<u32>,
    /// NodeClaim it is nominated to.
    pub claim: Option<u32>,
}

/// A node (or the node a NodeClaim will become).
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// Pool name.
    pub pool: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Taints.
    pub taints: Vec<Taint>,
    /// When it registered (or the claim was created).
    pub since: f64,
    /// Images bound pods or the planner put there.
    pub images: HashSet<ImageId>,
    /// Live pods bound to it: the planner's stand-in for how full it is,
    /// since events carry no resource requests.
    pub pods: u32,
    /// Capacity of its image filesystem, when its `node` events give it.
    pub image_fs_bytes: Option<u64>,
}

/// An HPA's recent history.
#[derive(Debug, Clone)]
pub struct HpaInfo {
    /// The workload it scales, interned.
    pub workload: u32,
    /// Replicas now.
    pub current: u32,
    /// Replicas wanted.
    pub desired: u32,
    /// Upper bound.
    pub max: Option<u32>,
    /// (time, desired replicas), oldest first, bounded.
    pub series: std::collections::VecDeque<(f64, f64)>,
}

/// How one pool's nodes are loaded, and how the scheduler has been
/// placing pods on them, as the bindings show. Events carry no resource
/// requests, so bound pods stand in for load and the most ever seen on one
/// node for its capacity.
#[derive(Debug, Clone, Default)]
pub struct PoolLoad {
    /// How many nodes have each number of live bound pods.
    by_pods: BTreeMap<u32, u32>,
    /// The most live pods seen on one node of the pool.
    pub most: u32,
    /// New bindings onto the fullest node with room, when another node
    /// with room had fewer pods: what MostAllocated scoring does.
    pub packed: u32,
    /// New bindings onto the emptiest node, when another node with room
    /// had more: what LeastAllocated scoring does.
    pub spread: u32,
}

impl PoolLoad {
    fn add(&mut self, pods: u32) {
        *self.by_pods.entry(pods).or_default() += 1;
        self.most = self.most.max(pods);
    }

    fn remove(&mut self, pods: u32) {
        if let Some(n) = self.by_pods.get_mut(&pods) {
            *n -= 1;
            if *n == 0 {
                self.by_pods.remove(&pods);
            }
        }
    }

    /// A node of the pool went from `from` bound pods to `to`.
    fn moved(&mut self, from: u32, to: u32) {
        self.remove(from);
        self.add(to);
    }

    /// Counts a scheduler's choice of a node that had `pods` bound pods.
    fn vote(&mut self, pods: u32) {
        // Nodes at the most ever seen are taken as full: the choice was
        // among the others.
        let mut open = self.by_pods.range(..self.most).map(|(&k, _)| k);
        let (Some(lo), Some(hi)) = (open.next(), open.next_back()) else {
            return;
        };
        if pods == hi {
            self.packed += 1;
        } else if pods == lo {
            self.spread += 1;
        }
    }

    /// Whether the scheduler packs this pool's nodes (more bindings went to
    /// the fullest node with room than to the emptiest) rather than
    /// spreading pods over them.
    pub fn packs(&self) -> bool {
        self.packed > self.spread
    }
}

/// How many HPA observations are kept for the trend.
pub const HPA_SERIES_LEN: usize = 64;

/// A `scale_up` whose nodes have not all appeared.
#[derive(Debug, Clone)]
pub struct PendingScaleUp {
    /// When it happened.
    pub at: f64,
    /// Nodes still to come.
    pub remaining: u32,
    /// Pods that triggered it.
    pub pods: Vec<u32>,
}

/// The ids of the names the last [`ClusterState::apply`] resolved, so that
/// a reader acting on the same event need not look them up again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resolved {
    /// The pod of a pod event, unless it was deleted.
    pub pod: Option<u32>,
    /// The node of a node event, the node a claim registered as, or the
    /// node a pod is bound to.
    pub node: Option<u32>,
    /// The NodeClaim of a claim event, or the claim a pod is nominated to.
    pub claim: Option<u32>,
}

/// The cluster as the events so far describe it.
#[derive(Debug, Default)]
pub struct ClusterState {
    /// Interned images.
    pub images: Interner,
    /// Interned workload names.
    pub workload_names: Interner,
    /// Live pods' names. A deleted pod's name is forgotten and its id
    /// reused, so that the pod tables stay as large as the live pods, not
    /// every pod the cluster ever ran.
    pub pod_names: Interner,
    /// Interned node names.
    pub node_names: Interner,
    /// Interned NodeClaim names.
    pub claim_names: Interner,
    /// Workloads by id.
    pub workloads: HashMap<u32, WorkloadInfo>,
    /// DaemonSet workload ids.
    pub daemonsets: HashSet<u32>,
    /// Live pods, indexed by their id in `pod_names`; see [`Self::pod`].
    pods: Vec<Option<PodInfo>>,
    /// How many pods of each workload are pending (unbound); workloads with
    /// none are absent.
    pub pending: HashMap<u32, u32>,
    /// Pods nominated to each claim.
    pub nominated_to_claim: HashMap<u32, HashSet<u32>>,
    /// Live nodes by id.
    pub nodes: HashMap<u32, NodeInfo>,
    /// Live NodeClaims by id, with the node they will become.
    pub claims: HashMap<u32, NodeInfo>,
    /// Claim → node, once registered.
    pub claim_node: HashMap<u32, u32>,
    /// Each pool's load and placement, by pool name.
    pub pool_load: HashMap<String, PoolLoad>,
    /// HPAs by workload id.
    pub hpas: HashMap<u32, HpaInfo>,
    /// Scale-ups by group whose nodes are still coming.
    pub scale_ups: HashMap<String, Vec<PendingScaleUp>>,
    /// Workloads whose pending pods or HPA the last [`apply`](Self::apply)
    /// changed, so that a reader can update what it derived from them
    /// without rescanning. Cleared at the start of every `apply`.
    pub changed_workloads: Vec<u32>,
    /// What the last [`apply`](Self::apply) resolved.
    pub resolved: Resolved,
}

impl ClusterState {
    /// Folds one event into the view.
    pub fn apply(&mut self, event: &Event) {
        let t = event.ts;
        self.changed_workloads.clear();
        self.resolved = Resolved::default();
        match &event.body {
            Body::Workload(w) => {
                let id = self.workload_names.intern(&w.workload);
                let images = w.images.iter().map(|i| self.images.intern(i)).collect();
                let info = WorkloadInfo {
                    kind: w.kind.clone(),
                    images,
                    node_selector: w.node_selector.clone(),
                    tolerations: w.tolerations.clone().unwrap_or_default(),
                    replicas: w.replicas,
                };
                if info.is_daemonset() {
                    self.daemonsets.insert(id);
                }
                self.workloads.insert(id, info);
            }
            Body::Hpa(h) => {
                let w = self.workload_names.intern(&h.workload);
                let e = self.hpas.entry(w).or_insert_with(|| HpaInfo {
                    workload: w,
                    current: h.current_replicas,
                    desired: h.desired_replicas,
                    max: h.max_replicas,
                    series: Default::default(),
                });
                e.current = h.current_replicas;
                e.desired = h.desired_replicas;
                e.max = h.max_replicas;
                if e.series.len() == HPA_SERIES_LEN {
                    e.series.pop_front();
                }
                e.series.push_back((t, h.desired_replicas as f64));
                self.changed_workloads.push(w);
            }
            Body::ScaleUp(s) => {
                let pods = s
                    .pods
                    .iter()
                    .flatten()
                    .filter_map(|p| self.pod_names.get(p))
                    .collect();
                self.scale_ups
                    .entry(s.group.clone())
                    .or_default()
                    .push(PendingScaleUp {
                        at: t,
                        remaining: s.to.saturating_sub(s.from).max(1),
                        pods,
                    });
            }
            Body::NodeClaim(c) => {
                let id = self.claim_names.intern(&c.node_claim);
                self.resolved.claim = Some(id);
                match c.phase {
                    ClaimPhase::Deleted => {
                        self.claims.remove(&id);
                        self.claim_node.remove(&id);
                        self.nominated_to_claim.remove(&id);
                    }
                    _ => {
                        let info = self.claims.entry(id).or_insert_with(|| NodeInfo {
                            since: t,
                            ..Default::default()
                        });
                        info.pool.clone_from(&c.pool);
                        // A claim's labels seldom change between its events:
                        // comparing them spares a tree's allocations.
                        if info.labels != c.labels {
                            info.labels.clone_from(&c.labels);
                        }
                        info.taints = c.taints.clone().unwrap_or_default();
                        if let Some(node) = &c.node {
                            let n = self.node_names.intern(node);
                            self.resolved.node = Some(n);
                            self.claim_node.insert(id, n);
                        }
                    }
                }
            }
            Body::Node(n) => {
                let id = self.node_names.intern(&n.node);
                self.resolved.node = Some(id);
                match n.phase {
                    NodePhase::Deleted => {
                        if let Some(info) = self.nodes.remove(&id)
                            && let Some(l) = self.pool_load.get_mut(&info.pool)
                        {
                            l.remove(info.pods);
                        }
                    }
                    NodePhase::Registered | NodePhase::Ready => {
                        let mut fresh = false;
                        let info = self.nodes.entry(id).or_insert_with(|| {
                            fresh = true;
                            NodeInfo {
                                since: t,
                                ..Default::default()
                            }
                        });
                        if n.image_fs_bytes.is_some() {
                            info.image_fs_bytes = n.image_fs_bytes;
                        }
                        let pool = n.pool_name();
                        if fresh || info.pool != pool {
                            if !fresh && let Some(l) = self.pool_load.get_mut(&info.pool) {
                                l.remove(info.pods);
                            }
                            info.pool.clear();
                            info.pool.push_str(pool);
                            self.pool_load
                                .entry(info.pool.clone())
                                .or_default()
                                .add(info.pods);
                        }
                        if info.labels != n.labels {
                            info.labels.clone_from(&n.labels);
                        }
                        info.taints = n.taints.clone().unwrap_or_default();
                        for image in n.images.iter().flatten() {
                            let i = self.images.intern(image);
                            if let Some(info) = self.nodes.get_mut(&id) {
                                info.images.insert(i);
                            }
                        }
                    }
                }
            }
            Body::Pod(p) => self.apply_pod(p),
            // Buffers are the planner's own book (`forecast::buffer`).
            Body::Image(_) | Body::Pull(_) | Body::Buffer(_) => {}
        }
    }

    /// Counts one node of `group`'s oldest pending scale-up as arrived. The
    /// planner calls this after planning the node, so that the node still
    /// sees the scale-up that made it.
    pub fn consume_scale_up(&mut self, group: &str) {
        if let Some(list) = self.scale_ups.get_mut(group) {
            if let Some(first) = list.first_mut() {
                first.remaining = first.remaining.saturating_sub(1);
            }
            list.retain(|s| s.remaining > 0);
        }
    }

    /// The live pod with id `id` (in [`Self::pod_names`]).
    pub fn pod(&self, id: u32) -> Option<&PodInfo> {
        self.pods.get(id as usize)?.as_ref()
    }

    fn apply_pod(&mut self, p: &crate::event::Pod) {
        if p.phase == PodPhase::Deleted {
            if let Some(id) = self.pod_names.remove(&p.pod) {
                if let Some(old) = self.pods.get_mut(id as usize).and_then(Option::take) {
                    self.unindex(id, &old);
                }
                // The id goes to the next new pod: nothing may still name it.
                for ups in self.scale_ups.values_mut() {
                    for up in ups {
                        up.pods.retain(|&q| q != id);
                    }
                }
                self.pod_names.release(id);
            }
            return;
        }
        let id = self.pod_names.intern(&p.pod);
        let workload = p.workload.as_deref().map(|w| self.workload_names.intern(w));
        let node = p.node.as_deref().map(|n| self.node_names.intern(n));
        let claim = p.node_claim.as_deref().map(|c| self.claim_names.intern(c));
        self.resolved = Resolved {
            pod: Some(id),
            node,
            claim,
        };
        let slot = id as usize;
        if slot >= self.pods.len() {
            self.pods.resize_with(slot + 1, || None);
        }
        let old = self.pods[slot].take();
        // A pod newly bound without a NodeClaim was placed by the scheduler
        // among the nodes up; a nominated one went where its claim became.
        let placed = matches!(p.phase, PodPhase::Scheduled | PodPhase::Started)
            && old.as_ref().is_none_or(|o| {
                o.claim.is_none() && matches!(o.phase, PodPhase::Pending | PodPhase::Nominated)
            })
            && !workload.is_some_and(|w| self.daemonsets.contains(&w));
        if let Some(old) = &old {
            self.unindex(id, old);
        }
        // A pod's images rarely change between its events, and a new pod's
        // are mostly its workload's: comparing names is cheaper than
        // interning them again.
        let same = |ids: &[ImageId]| {
            ids.len() == p.images.len()
                && ids
                    .iter()
                    .zip(&p.images)
                    .all(|(&i, name)| self.images.is(i, name))
        };
        let images = match old {
            Some(old) if same(&old.images) => old.images,
            _ => match workload.and_then(|w| self.workloads.get(&w)) {
                Some(w) if same(&w.images) => w.images.clone(),
                _ => p.images.iter().map(|i| self.images.intern(i)).collect(),
            },
        };
        let info = PodInfo {
            workload,
            images,
            phase: p.phase,
            node,
            claim,
        };
        match info.phase {
            PodPhase::Pending | PodPhase::Nominated => {
                if let Some(w) = workload {
                    *self.pending.entry(w).or_default() += 1;
                    self.changed_workloads.push(w);
                }
                if let Some(c) = claim {
                    self.nominated_to_claim.entry(c).or_default().insert(id);
                }
            }
            PodPhase::Scheduled | PodPhase::Started => {
                if let Some(n) = node.and_then(|n| self.nodes.get_mut(&n)) {
                    n.images.extend(info.images.iter().copied());
                    if let Some(l) = self.pool_load.get_mut(&n.pool) {
                        if placed {
                            l.vote(n.pods);
                        }
                        l.moved(n.pods, n.pods + 1);
                    }
                    n.pods += 1;
                }
            }
            PodPhase::Deleted => {}
        }
        self.pods[slot] = Some(info);
    }

    fn unindex(&mut self, id: u32, old: &PodInfo) {
        if let Some(w) = old.workload
            && matches!(old.phase, PodPhase::Pending | PodPhase::Nominated)
            && let Some(n) = self.pending.get_mut(&w)
        {
            self.changed_workloads.push(w);
            *n -= 1;
            if *n == 0 {
                self.pending.remove(&w);
            }
        }
        if matches!(old.phase, PodPhase::Scheduled | PodPhase::Started)
            && let Some(n) = old.node.and_then(|n| self.nodes.get_mut(&n))
            && n.pods > 0
        {
            if let Some(l) = self.pool_load.get_mut(&n.pool) {
                l.moved(n.pods, n.pods - 1);
            }
            n.pods -= 1;
        }
        if let Some(c) = old.claim
            && let Some(set) = self.nominated_to_claim.get_mut(&c)
        {
            set.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Autoscaler, Pod, ScaleUp};

    fn pod(ts: f64, name: &str, phase: PodPhase, node: Option<&str>) -> Event {
        Event::new(
            ts,
            Pod {
                pod: name.into(),
                workload: Some("shop/web".into()),
                images: vec!["web:1".into(), "sidecar:2".into()],
                phase,
                node: node.map(String::from),
                node_claim: None,
            },
        )
    }

    #[test]
    fn deleted_pods_are_forgotten_and_their_ids_reused() {
        let mut st = ClusterState::default();
        for round in 0..1_000 {
            let name = format!("shop/web-{round}");
            st.apply(&pod(round as f64, &name, PodPhase::Pending, None));
            assert_eq!(st.pending.get(&0), Some(&1));
            st.apply(&pod(round as f64, &name, PodPhase::Scheduled, Some("n1")));
            assert_eq!(st.pending.get(&0), None);
            let id = st.pod_names.get(&name).expect("live pod has an id");
            assert_eq!(st.pod(id).map(|p| p.images.len()), Some(2));
            st.apply(&pod(
                round as f64 + 0.5,
                &name,
                PodPhase::Deleted,
                Some("n1"),
            ));
            assert_eq!(st.pod_names.get(&name), None);
            assert!(st.pod(id).is_none());
        }
        // A thousand pods came and went one at a time: one id served them all.
        assert_eq!(st.pod_names.len(), 0);
        assert_eq!(st.pod_names.id_bound(), 1);
    }

    #[test]
    fn a_node_counts_its_live_bound_pods() {
        let mut st = ClusterState::default();
        st.apply(&Event::new(
            0.0,
            crate::event::Node {
                node: "n1".into(),
                phase: NodePhase::Registered,
                pool: None,
                labels: BTreeMap::new(),
                taints: None,
                images: None,
                image_fs_bytes: None,
            },
        ));
        let n1 = st.node_names.get("n1").expect("registered node has an id");
        let count = |st: &ClusterState| st.nodes[&n1].pods;
        st.apply(&pod(1.0, "shop/a", PodPhase::Pending, None));
        assert_eq!(count(&st), 0);
        st.apply(&pod(2.0, "shop/a", PodPhase::Scheduled, Some("n1")));
        st.apply(&pod(2.0, "shop/b", PodPhase::Scheduled, Some("n1")));
        assert_eq!(count(&st), 2);
        // Started is the same pod on the same node, not another one.
        st.apply(&pod(3.0, "shop/a", PodPhase::Started, Some("n1")));
        assert_eq!(count(&st), 2);
        st.apply(&pod(4.0, "shop/a", PodPhase::Deleted, Some("n1")));
        assert_eq!(count(&st), 1);
        // A pod bound to a node the view has not seen counts nowhere.
        st.apply(&pod(5.0, "shop/c", PodPhase::Scheduled, Some("n2")));
        assert_eq!(count(&st), 1);
    }

    fn node(ts: f64, name: &str, phase: NodePhase) -> Event {
        Event::new(
            ts,
            crate::event::Node {
                node: name.into(),
                phase,
                pool: Some("x".into()),
                labels: BTreeMap::new(),
                taints: None,
                images: None,
                image_fs_bytes: None,
            },
        )
    }

    #[test]
    fn a_pool_learns_whether_the_scheduler_packs_or_spreads() {
        // Three nodes; each step binds a new pod to a node, or deletes one.
        let run = |steps: &[(&str, bool)]| {
            let mut st = ClusterState::default();
            for n in ["n1", "n2", "n3"] {
                st.apply(&node(0.0, n, NodePhase::Registered));
            }
            for (k, &(n, bind)) in steps.iter().enumerate() {
                if !bind {
                    // Deletes the pod step `n` names (as a number).
                    let name = format!("shop/p{n}");
                    st.apply(&pod(2.0, &name, PodPhase::Deleted, None));
                    continue;
                }
                let name = format!("shop/p{k}");
                st.apply(&pod(1.0, &name, PodPhase::Pending, None));
                st.apply(&pod(1.0, &name, PodPhase::Scheduled, Some(n)));
                // Started is not a second placement.
                st.apply(&pod(2.0, &name, PodPhase::Started, Some(n)));
            }
            st
        };
        let bind = |n| (n, true);
        // MostAllocated: n1 until it is full at 3, then n2 until it is too.
        let st = run(&["n1", "n1", "n1", "n2", "n2", "n2", "n3"].map(bind));
        let l = &st.pool_load["x"];
        assert_eq!((l.most, l.packed, l.spread), (3, 2, 0));
        assert!(l.packs());
        // Nodes that fill in step leave no node with room to compare with:
        // no vote, and spreading is the default.
        let st = run(&["n1", "n2", "n3", "n1", "n2", "n3", "n1"].map(bind));
        let l = &st.pool_load["x"];
        assert_eq!((l.most, l.packed, l.spread), (3, 0, 0));
        assert!(!l.packs());
        // LeastAllocated after churn: n1 had 3 and lost 2; the next pods
        // go to the empty n2 and n3 rather than to n1.
        let st = run(&[
            bind("n1"),
            bind("n1"),
            bind("n1"),
            ("0", false),
            ("1", false),
            bind("n2"),
            bind("n3"),
        ]);
        let l = &st.pool_load["x"];
        assert_eq!((l.most, l.packed, l.spread), (3, 0, 2));
        assert!(!l.packs());
        // Nodes by pods stays right through deletions of pods and nodes:
        // n1, n2 and n3 hold one pod each, then n1 goes and n2 empties.
        let mut st = st;
        assert_eq!(
            st.pool_load["x"].by_pods.iter().collect::<Vec<_>>(),
            [(&1, &3)]
        );
        st.apply(&node(3.0, "n1", NodePhase::Deleted));
        st.apply(&pod(3.0, "shop/p5", PodPhase::Deleted, None));
        assert_eq!(
            st.pool_load["x"].by_pods.iter().collect::<Vec<_>>(),
            [(&0, &1), (&1, &1)]
        );
    }

    #[test]
    fn a_scale_up_does_not_name_the_pod_that_reuses_a_deleted_pods_id() {
        let mut st = ClusterState::default();
        st.apply(&pod(0.0, "shop/a", PodPhase::Pending, None));
        st.apply(&Event::new(
            1.0,
            ScaleUp {
                source: Autoscaler::ClusterAutoscaler,
                group: "pool".into(),
                from: 1,
                to: 2,
                pods: Some(vec!["shop/a".into()]),
            },
        ));
        assert_eq!(st.scale_ups["pool"][0].pods, vec![0]);
        st.apply(&pod(2.0, "shop/a", PodPhase::Deleted, None));
        st.apply(&pod(3.0, "shop/b", PodPhase::Pending, None));
        assert_eq!(st.pod_names.get("shop/b"), Some(0));
        assert!(st.scale_ups["pool"][0].pods.is_empty());
    }
}
