//! The `Policy` trait that every planner implements, the `PullOrder` it
//! emits, and the causal baselines (`none`, `static`, `popular`).
//!
//! A policy sees events in time order and nothing else: it cannot look ahead,
//! so what it decided before time T never depends on what happens after T.
//! The same trait is driven by the replay simulator and by the live
//! controller.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::event::{Body, Event, NodePhase, PodPhase};
use crate::intern::Interner;

/// Where a pull is to go.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// An existing (or registering) node, by name.
    Node(String),
    /// A Karpenter NodeClaim whose node does not exist yet; the order waits
    /// until the claim's node registers.
    NodeClaim(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Node(n) => f.write_str(n),
            Target::NodeClaim(c) => write!(f, "nodeclaim/{c}"),
        }
    }
}

/// Why a pull was ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// On the fixed list of the `static` policy.
    Static,
    /// Among the pool's most demanded images.
    Popular,
    /// The oracle knows it will be needed.
    Oracle,
    /// A pod is nominated to the node or its NodeClaim.
    Nominated,
    /// A pod is listed in the scale-up that made the node.
    ScaleUp,
    /// A DaemonSet will run on the node.
    Daemonset,
    /// A pending pod fits the node.
    Pending,
    /// An HPA wants more replicas than it has.
    HpaPressure,
    /// An HPA's trend forecast says it will scale out.
    HpaTrend,
    /// New nodes of this pool needed it before.
    History,
    /// A workload that fits the node uses it.
    Workload,
    /// The node holds room of a short CapacityBuffer whose pod template
    /// uses it.
    Buffer,
}

impl Reason {
    /// The reason as written in decision files.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "static",
            Reason::Popular => "popular",
            Reason::Oracle => "oracle",
            Reason::Nominated => "nominated",
            Reason::ScaleUp => "scale-up",
            Reason::Daemonset => "daemonset",
            Reason::Pending => "pending",
            Reason::HpaPressure => "hpa-pressure",
            Reason::HpaTrend => "hpa-trend",
            Reason::History => "history",
            Reason::Workload => "workload",
            Reason::Buffer => "buffer",
        }
    }
}

/// One decision: pull `image` onto `target`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PullOrder {
    /// Where to pull.
    pub target: Target,
    /// The full image reference.
    pub image: String,
    /// Higher goes first.
    pub priority: u32,
    /// Why.
    pub reason: Reason,
    /// The planner's P(needed within horizon), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
}

/// A planner: events in, pull orders out.
///
/// Implementations must be deterministic and causal: their output may depend
/// only on the events given so far and on `clock`, which the driver sets to
/// the time of the event (or tick) being handled.
pub trait Policy: Send {
    /// The name used in reports and decision files.
    fn name(&self) -> &str;

    /// Takes one event, in time order, and appends the orders it causes.
    fn on_event(&mut self, event: &Event, clock: &dyn Clock, out: &mut Vec<PullOrder>);

    /// How often [`Policy::on_tick`] wants to be called, in seconds. `None`
    /// (the default) means never.
    fn tick_interval(&self) -> Option<f64> {
        None
    }

    /// Called every [`Policy::tick_interval`] seconds of (simulated) time,
    /// for plans driven by time rather than by an event.
    fn on_tick(&mut self, _clock: &dyn Clock, _out: &mut Vec<PullOrder>) {}
}

/// Does nothing: kubelet pulls everything when the pod is bound.
#[derive(Debug, Default)]
pub struct NonePolicy;

impl Policy for NonePolicy {
    fn name(&self) -> &str {
        "none"
    }

    fn on_event(&mut self, _: &Event, _: &dyn Clock, _: &mut Vec<PullOrder>) {}
}

/// Orders `images` onto `node`, first image at the highest priority.
fn order_list<'a>(
    node: &str,
    images: impl ExactSizeIterator<Item = &'a String>,
    reason: Reason,
    out: &mut Vec<PullOrder>,
) {
    let n = images.len() as u32;
    out.extend(images.enumerate().map(|(i, image)| PullOrder {
        target: Target::Node(node.to_string()),
        image: image.clone(),
        priority: n - i as u32,
        reason,
        probability: None,
    }));
}

/// A fixed list on every new node, as kube-fledged and warm-image do.
#[derive(Debug, Default)]
pub struct StaticPolicy {
    images: Vec<String>,
    seen: HashSet<String>,
    fixed: bool,
}

impl StaticPolicy {
    /// Pulls exactly `images` onto every node.
    pub fn fixed(images: Vec<String>) -> Self {
        Self {
            images,
            seen: HashSet::default(),
            fixed: true,
        }
    }

    /// Pulls every image of every `workload` event seen so far.
    pub fn from_workloads() -> Self {
        Self::default()
    }
}

impl Policy for StaticPolicy {
    fn name(&self) -> &str {
        "static"
    }

    fn on_event(&mut self, event: &Event, _: &dyn Clock, out: &mut Vec<PullOrder>) {
        match &event.body {
            Body::Workload(w) if !self.fixed => {
                for image in &w.images {
                    if self.seen.insert(image.clone()) {
                        self.images.push(image.clone());
                    }
                }
            }
            Body::Node(n) if n.phase == NodePhase::Registered => {
                order_list(&n.node, self.images.iter(), Reason::Static, out);
            }
            _ => {}
        }
    }
}

/// The top `k` images by past pod demand in the new node's pool.
#[derive(Debug)]
pub struct PopularPolicy {
    k: usize,
    /// Images and pools by name to small ids, so that demand is counted in
    /// flat tables: a pod's images are looked up once each, and ranking a
    /// pool walks an array rather than a hash table.
    images: Interner,
    pools: Interner,
    /// Node → pool id.
    node_pool: HashMap<String, u32>,
    /// Pool id → demand; `None` until a pod is bound in the pool.
    demand: Vec<Option<Demand>>,
    /// Scratch list of `top`, kept to save an allocation a registration.
    ranked: Vec<(u32, u64)>,
}

/// One pool's demand.
#[derive(Debug, Default)]
struct Demand {
    /// Image id → pods that needed it.
    counts: Vec<u64>,
    /// The `k` images that rank first (most pods, then name), in no order.
    /// Kept as counts rise: a count only grows by one, so only the image
    /// counted can enter, in place of the last. Ranking every used image at
    /// each registration was a selection over the whole pool.
    top: Vec<u32>,
    /// The index in `top` of its last-ranked image, once `top` is full. It
    /// changes only when `top` does or that image is counted again, and
    /// finding it anew at every count was most of this policy's time.
    last: usize,
}

impl Demand {
    /// How images `a` and `b` rank: most pods first, ties by name, so that
    /// the ranking does not depend on ids.
    fn rank(&self, names: &Interner, a: u32, b: u32) -> std::cmp::Ordering {
        let count = |i: u32| self.counts[i as usize];
        count(b).cmp(&count(a)).then_with(|| names.cmp_names(a, b))
    }

    /// Whether image `a` ranks before image `b`.
    fn before(&self, names: &Interner, a: u32, b: u32) -> bool {
        self.rank(names, a, b).is_lt()
    }

    /// Counts one more pod needing `image`, and lets it into the top `k`.
    fn count(&mut self, names: &Interner, image: u32, k: usize) {
        let i = image as usize;
        if self.counts.len() <= i {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
        if k == 0 {
            return;
        }
        if self.top.contains(&image) {
            // Counted again, the last may now rank above another.
            if self.top.len() == k && self.top[self.last] == image {
                self.find_last(names);
            }
            return;
        }
        if self.top.len() < k {
            self.top.push(image);
            if self.top.len() == k {
                self.find_last(names);
            }
            return;
        }
        if self.before(names, image, self.top[self.last]) {
            self.top[self.last] = image;
            self.find_last(names);
        }
    }

    /// Points `last` at the last-ranked image of `top`.
    fn find_last(&mut self, names: &Interner) {
        let mut last = 0;
        for (n, &t) in self.top.iter().enumerate().skip(1) {
            if self.before(names, self.top[last], t) {
                last = n;
            }
        }
        self.last = last;
    }
}

impl PopularPolicy {
    /// Pulls the `k` most demanded images of the pool.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            images: Interner::default(),
            pools: Interner::default(),
            node_pool: HashMap::default(),
            demand: Vec::new(),
            ranked: Vec::new(),
        }
    }

    /// Orders the pool's top `k` images onto `node`, first image at the
    /// highest priority. Names are copied once, straight into the orders.
    fn order_top(&mut self, pool: u32, node: &str, out: &mut Vec<PullOrder>) {
        let mut ranked = std::mem::take(&mut self.ranked);
        self.top(pool, &mut ranked);
        let n = ranked.len() as u32;
        let names = &self.images;
        out.extend(ranked.iter().enumerate().map(|(i, &(image, _))| PullOrder {
            target: Target::Node(node.to_string()),
            image: names.name(image).to_string(),
            priority: n - i as u32,
            reason: Reason::Popular,
            probability: None,
        }));
        self.ranked = ranked;
    }

    /// The pool's top `k` images and their counts, best first, into
    /// `ranked`.
    fn top(&mut self, pool: u32, ranked: &mut Vec<(u32, u64)>) {
        ranked.clear();
        let Some(Some(demand)) = self.demand.get(pool as usize) else {
            return;
        };
        let counts = &demand.counts;
        ranked.extend(demand.top.iter().map(|&i| (i, counts[i as usize])));
        ranked.sort_by(|a, b| demand.rank(&self.images, a.0, b.0));
    }
}

impl Policy for PopularPolicy {
    fn name(&self) -> &str {
        "popular"
    }

    fn on_event(&mut self, event: &Event, _: &dyn Clock, out: &mut Vec<PullOrder>) {
        match &event.body {
            Body::Node(n) => match n.phase {
                NodePhase::Registered => {
                    let pool = self.pools.intern(n.pool_name());
                    self.order_top(pool, &n.node, out);
                    match self.node_pool.get_mut(&n.node) {
                        Some(p) => *p = pool,
                        None => {
                            self.node_pool.insert(n.node.clone(), pool);
                        }
                    }
                }
                NodePhase::Deleted => {
                    self.node_pool.remove(&n.node);
                }
                NodePhase::Ready => {}
            },
            Body::Pod(p) if p.phase == PodPhase::Scheduled => {
                let known = p.node.as_ref().and_then(|n| self.node_pool.get(n));
                let pool = match known {
                    Some(&pool) => pool,
                    None => self.pools.intern(crate::event::DEFAULT_POOL),
                };
                let i = pool as usize;
                if self.demand.len() <= i {
                    self.demand.resize_with(i + 1, || None);
                }
                self.demand[i].get_or_insert_with(Demand::default);
                for image in &p.images {
                    let id = self.images.intern(image);
                    let Some(Some(demand)) = self.demand.get_mut(i) else {
                        return;
                    };
                    demand.count(&self.images, id, self.k);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SimClock;
    use crate::event::{Node, Pod, Workload};

    fn node(name: &str, pool: &str, phase: NodePhase) -> Event {
        Event::new(
            0.0,
            Node {
                node: name.into(),
                phase,
                pool: Some(pool.into()),
                labels: Default::default(),
                taints: None,
                images: None,
                image_fs_bytes: None,
            },
        )
    }

    fn scheduled(pod: &str, node: &str, images: &[&str]) -> Event {
        Event::new(
            0.0,
            Pod {
                pod: pod.into(),
                workload: None,
                images: images.iter().map(|s| s.to_string()).collect(),
                phase: PodPhase::Scheduled,
                node: Some(node.into()),
                node_claim: None,
            },
        )
    }

    fn run(p: &mut dyn Policy, events: &[Event]) -> Vec<PullOrder> {
        let clock = SimClock::new(0.0);
        let mut out = Vec::new();
        for e in events {
            p.on_event(e, &clock, &mut out);
        }
        out
    }

    #[test]
    fn static_pulls_workload_images_seen_so_far() {
        let w = Event::new(
            0.0,
            Workload {
                workload: "a/web".into(),
                kind: "Deployment".into(),
                images: vec!["x:1".into(), "y:1".into(), "x:1".into()],
                node_selector: Default::default(),
                tolerations: None,
                replicas: None,
            },
        );
        let orders = run(
            &mut StaticPolicy::from_workloads(),
            &[
                node("n0", "p", NodePhase::Registered),
                w,
                node("n1", "p", NodePhase::Registered),
            ],
        );
        let got: Vec<_> = orders
            .iter()
            .map(|o| (o.target.to_string(), o.image.as_str(), o.priority))
            .collect();
        assert_eq!(got, vec![("n1".into(), "x:1", 2), ("n1".into(), "y:1", 1)]);
    }

    #[test]
    fn popular_keeps_the_top_k_that_a_full_ranking_gives() {
        // Few images and many ties, so that names often decide.
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for k in [0, 1, 3, 10] {
            let mut p = PopularPolicy::new(k);
            run(&mut p, &[node("n0", "p", NodePhase::Registered)]);
            let mut events = Vec::new();
            let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
            for i in 0..400 {
                let images: Vec<String> = (0..=next(2))
                    .map(|_| format!("img{}:1", next(25)))
                    .collect();
                for image in &images {
                    *counts.entry(image.clone()).or_default() += 1;
                }
                let refs: Vec<&str> = images.iter().map(String::as_str).collect();
                events.push(scheduled(&format!("ns/{i}"), "n0", &refs));
                events.push(node(&format!("m{i}"), "p", NodePhase::Registered));
                let orders = run(&mut p, &events[events.len() - 2..]);
                let got: Vec<&str> = orders.iter().map(|o| o.image.as_str()).collect();
                let mut want: Vec<(&String, &u64)> = counts.iter().collect();
                want.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
                let want: Vec<&str> = want.iter().take(k).map(|(n, _)| n.as_str()).collect();
                assert_eq!(got, want, "k {k}, after pod {i}");
            }
        }
    }

    #[test]
    fn popular_ranks_by_demand_per_pool() {
        let orders = run(
            &mut PopularPolicy::new(1),
            &[
                node("a", "gpu", NodePhase::Registered),
                node("b", "cpu", NodePhase::Registered),
                scheduled("ns/1", "a", &["cuda:1"]),
                scheduled("ns/2", "b", &["web:1", "sidecar:1"]),
                scheduled("ns/3", "b", &["web:1"]),
                node("c", "cpu", NodePhase::Registered),
                node("d", "gpu", NodePhase::Registered),
                node("e", "empty", NodePhase::Registered),
            ],
        );
        let got: Vec<_> = orders
            .iter()
            .map(|o| (o.target.to_string(), o.image.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("c".to_string(), "web:1".to_string()),
                ("d".to_string(), "cuda:1".to_string())
            ]
        );
    }
}
