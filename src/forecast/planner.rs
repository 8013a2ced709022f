//! The `predictive` policy: at each NodeClaim and node registration it
//! gathers the signals that say which images the node will need, asks the
//! model for P(needed within H) of each, and orders the best expected
//! seconds saved per byte within the node's byte budget.
//!
//! It reads only the events given so far (through [`ClusterState`]) and the
//! clock, so it is causal and deterministic: ties are broken by image name.

use super::model::{Features, Model, N_FEATURES};
use super::trend::{Holt, HoltState};
use crate::clock::Clock;
use crate::event::{Body, ClaimPhase, Event, NodePhase, PodPhase};
use crate::policy::{Policy, PullOrder, Reason, Target};
use crate::state::{ClusterState, HpaInfo, ImageId, NodeInfo};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

/// Planner settings that are not part of the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlannerConfig {
    /// Most bytes planned onto one node.
    pub node_budget_bytes: u64,
    /// Node bandwidth assumed when valuing a pull, bytes per second.
    pub bandwidth_bytes_per_second: f64,
    /// Per-pull latency assumed when valuing a pull, seconds.
    pub pull_latency_seconds: f64,
    /// Size of an image no `image` event describes.
    pub default_image_bytes: u64,
    /// How often HPA series are sampled for the trend, seconds.
    pub tick_seconds: f64,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        Self {
            node_budget_bytes: 20_000_000_000,
            bandwidth_bytes_per_second: 125e6,
            pull_latency_seconds: 0.5,
            default_image_bytes: 200_000_000,
            tick_seconds: 15.0,
        }
    }
}

/// Where a plan goes: a claim that has no node yet, or a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Claim(u32),
    Node(u32),
}

/// One candidate the planner scored: for `pullahead tune`.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// Time of the decision.
    pub ts: f64,
    /// The node.
    pub node: String,
    /// The image.
    pub image: String,
    /// Its feature values.
    pub features: Features,
}

#[derive(Debug, Default)]
struct PoolHistory {
    new_nodes: u64,
    needs: HashMap<ImageId, u64>,
}

/// The predictive planner.
#[derive(Debug)]
pub struct Planner {
    cfg: PlannerConfig,
    model: Model,
    state: ClusterState,
    sizes: HashMap<ImageId, u64>,
    history: HashMap<String, PoolHistory>,
    /// Nodes younger than the horizon: pool, registration time, images counted.
    fresh: HashMap<u32, (String, f64, HashSet<ImageId>)>,
    planned: HashMap<Key, (HashSet<ImageId>, u64)>,
    node_claim: HashMap<u32, u32>,
    holt: Holt,
    trends: HashMap<u32, HoltState>,
    /// Pool → the candidates its workloads give at any moment; dropped when a
    /// workload changes.
    pools: HashMap<String, PoolBase>,
    scratch: Scratch,
    collect: Option<Vec<Candidate>>,
}

/// The part of a pool's candidates that changes only with workloads: a plan
/// starts from it instead of walking every workload again.
#[derive(Debug, Default)]
struct PoolBase {
    /// Workloads (not DaemonSets) that fit the pool's nodes, sorted.
    fits: Vec<u32>,
    /// Each image those workloads or the matching DaemonSets name, with its
    /// `daemonset` feature and its `fits` feature (already on a log scale).
    images: Vec<(ImageId, f64, f64)>,
}

/// Feature rows indexed by image id, reused from plan to plan so that a
/// plan does not build a map of its candidates each time.
#[derive(Debug, Default)]
struct Scratch {
    rows: Vec<Features>,
    seen: Vec<bool>,
    touched: Vec<ImageId>,
}

impl Scratch {
    fn row(&mut self, image: ImageId) -> &mut Features {
        let i = image as usize;
        if i >= self.rows.len() {
            self.rows.resize(i + 1, [0.0; N_FEATURES]);
            self.seen.resize(i + 1, false);
        }
        if !self.seen[i] {
            self.seen[i] = true;
            self.touched.push(image);
        }
        &mut self.rows[i]
    }

    fn add(&mut self, images: &[ImageId], f: usize, v: f64) {
        for &i in images {
            self.row(i)[f] += v;
        }
    }

    fn clear(&mut self) {
        for &i in &self.touched {
            self.rows[i as usize] = [0.0; N_FEATURES];
            self.seen[i as usize] = false;
        }
        self.touched.clear();
    }
}

impl Planner {
    /// A planner using `model`.
    pub fn new(model: Model, cfg: PlannerConfig) -> Self {
        Self {
            cfg,
            model,
            state: ClusterState::default(),
            sizes: HashMap::default(),
            history: HashMap::default(),
            fresh: HashMap::default(),
            planned: HashMap::default(),
            node_claim: HashMap::default(),
            holt: Holt::default(),
            trends: HashMap::default(),
            pools: HashMap::default(),
            scratch: Scratch::default(),
            collect: None,
        }
    }

    /// Also records every candidate scored at a node's registration, with
    /// its features, for fitting a model.
    pub fn collecting(mut self) -> Self {
        self.collect = Some(Vec::new());
        self
    }

    /// The candidates recorded so far.
    pub fn take_candidates(&mut self) -> Vec<Candidate> {
        self.collect
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The cluster view, for measurements.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    fn bytes(&self, image: ImageId) -> u64 {
        self.sizes
            .get(&image)
            .copied()
            .unwrap_or(self.cfg.default_image_bytes)
            .max(1)
    }

    /// The pool's workload-derived base, built on first use after a change.
    fn pool_base<'a>(
        pools: &'a mut HashMap<String, PoolBase>,
        state: &ClusterState,
        info: &NodeInfo,
    ) -> &'a PoolBase {
        pools.entry(info.pool.clone()).or_insert_with(|| {
            let mut fits = Vec::new();
            let mut rows: HashMap<ImageId, (f64, f64)> = HashMap::default();
            for (&id, w) in &state.workloads {
                if !w.fits(&info.labels, &info.taints) {
                    continue;
                }
                for &i in w.images.iter() {
                    let row = rows.entry(i).or_default();
                    if w.is_daemonset() {
                        row.0 = 1.0;
                    } else {
                        row.1 += 1.0;
                    }
                }
                if !w.is_daemonset() {
                    fits.push(id);
                }
            }
            fits.sort_unstable();
            let mut images: Vec<(ImageId, f64, f64)> = rows
                .into_iter()
                .map(|(i, (ds, n))| (i, ds, n.ln_1p()))
                .collect();
            images.sort_unstable_by_key(|r| r.0);
            PoolBase { fits, images }
        })
    }

    /// Fills the scratch rows with the feature vector of every candidate
    /// image for a node described by `info`, which NodeClaim `claim` may
    /// have announced.
    fn candidates(
        &self,
        info: &NodeInfo,
        claim: Option<u32>,
        pools: &mut HashMap<String, PoolBase>,
        c: &mut Scratch,
    ) {
        let st = &self.state;
        c.clear();
        let base = Self::pool_base(pools, st, info);
        for &(i, ds, fits) in &base.images {
            let row = c.row(i);
            row[2] = ds;
            row[7] = fits;
        }
        if let Some(pods) = claim.and_then(|c| st.nominated_to_claim.get(&c)) {
            for p in pods {
                if let Some(p) = st.pods.get(p) {
                    c.add(&p.images, 0, 1.0);
                }
            }
        }
        if let Some(ups) = st.scale_ups.get(&info.pool) {
            for up in ups {
                for p in &up.pods {
                    if let Some(p) = st.pods.get(p)
                        && p.node.is_none()
                    {
                        c.add(&p.images, 1, 1.0);
                    }
                }
            }
        }
        // Walk whichever is shorter: the pool's workloads, or the workloads
        // with pending pods (or HPAs); the sums come out the same.
        let fits = |w: &u32| base.fits.binary_search(w).is_ok();
        let pending: Vec<(u32, usize)> = if st.pending.len() < base.fits.len() {
            st.pending
                .iter()
                .filter(|(w, _)| fits(w))
                .map(|(w, p)| (*w, p.len()))
                .collect()
        } else {
            base.fits
                .iter()
                .filter_map(|w| st.pending.get(w).map(|p| (*w, p.len())))
                .collect()
        };
        for (w, n) in pending {
            if let Some(wl) = st.workloads.get(&w) {
                c.add(&wl.images, 3, n as f64);
            }
        }
        let steps = (self.model.horizon_seconds / self.cfg.tick_seconds).clamp(1.0, 40.0) as u32;
        let hpas: Vec<(&u32, &HpaInfo)> = if st.hpas.len() < base.fits.len() {
            st.hpas.iter().filter(|(w, _)| fits(w)).collect()
        } else {
            base.fits
                .iter()
                .filter_map(|w| st.hpas.get_key_value(w))
                .collect()
        };
        for (w, h) in hpas {
            let Some(wl) = st.workloads.get(w) else {
                continue;
            };
            let pressure = h.desired.saturating_sub(h.current) as f64;
            if pressure > 0.0 {
                c.add(&wl.images, 4, pressure);
            }
            if let Some(s) = self.trends.get(w) {
                let ahead = self.holt.forecast(s, steps) - h.current as f64;
                if ahead > 0.0 {
                    c.add(&wl.images, 5, ahead);
                }
            }
        }
        if let Some(h) = self.history.get(&info.pool)
            && h.new_nodes > 0
        {
            for (&i, &n) in &h.needs {
                c.row(i)[6] = n as f64 / h.new_nodes as f64;
            }
        }
        // Counts enter the model on a log scale (`fits` already is); the
        // DaemonSet flag and the history share stay as they are.
        for &i in &c.touched {
            for k in [0, 1, 3, 4, 5] {
                let v = &mut c.rows[i as usize][k];
                if *v != 0.0 {
                    *v = v.ln_1p();
                }
            }
        }
    }

    fn reason(f: &Features) -> Reason {
        const ORDER: [(usize, Reason); 8] = [
            (0, Reason::Nominated),
            (1, Reason::ScaleUp),
            (2, Reason::Daemonset),
            (3, Reason::Pending),
            (4, Reason::HpaPressure),
            (5, Reason::HpaTrend),
            (6, Reason::History),
            (7, Reason::Workload),
        ];
        ORDER
            .iter()
            .find(|(i, _)| f[*i] > 0.0)
            .map_or(Reason::History, |(_, r)| *r)
    }

    /// Scores the candidates for `key` (a NodeClaim or a node, which `claim`
    /// may have announced) and orders the ones worth it.
    fn plan(&mut self, key: Key, claim: Option<u32>, now: f64, out: &mut Vec<PullOrder>) {
        // The caches are moved out for the call, so that they can be filled
        // while the view they summarise is borrowed.
        let mut pools = std::mem::take(&mut self.pools);
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut planned = std::mem::take(&mut self.planned);
        let mut collect = self.collect.take();
        let info = match key {
            Key::Claim(c) => self.state.claims.get(&c),
            Key::Node(n) => self.state.nodes.get(&n),
        };
        if let Some(info) = info {
            self.candidates(info, claim, &mut pools, &mut scratch);
            if let (Some(rows), Key::Node(n)) = (collect.as_mut(), key) {
                let node = self.state.node_names.name(n);
                let mut list = scratch.touched.clone();
                list.sort_unstable();
                rows.extend(list.into_iter().map(|i| Candidate {
                    ts: now,
                    node: node.to_string(),
                    image: self.state.images.name(i).to_string(),
                    features: scratch.rows[i as usize],
                }));
            }
            self.order(key, info, &scratch, &mut planned, out);
        }
        self.collect = collect;
        self.planned = planned;
        self.pools = pools;
        self.scratch = scratch;
    }

    /// Orders, for `key`, the scored candidates in `c` that are worth it.
    fn order(
        &self,
        key: Key,
        info: &NodeInfo,
        c: &Scratch,
        planned: &mut HashMap<Key, (HashSet<ImageId>, u64)>,
        out: &mut Vec<PullOrder>,
    ) {
        let mut scored: Vec<(f64, f64, ImageId, Reason, u64)> = Vec::new();
        let already = planned.get(&key);
        let z_min = self.model.logit_threshold();
        for &image in &c.touched {
            let f = &c.rows[image as usize];
            // Most candidates fall below the threshold: the cheapest test
            // first, and no exp for them.
            if self.model.logit(f) < z_min
                || already.is_some_and(|(done, _)| done.contains(&image))
                || info.images.contains(&image)
            {
                continue;
            }
            let p = self.model.predict(f);
            let bytes = self.bytes(image);
            let saved =
                self.cfg.pull_latency_seconds + bytes as f64 / self.cfg.bandwidth_bytes_per_second;
            scored.push((p * saved / bytes as f64, p, image, Self::reason(f), bytes));
        }
        let (done, spent) = planned.entry(key).or_default();
        let names = &self.state.images;
        scored.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then_with(|| names.name(a.2).cmp(names.name(b.2)))
        });
        let target = match key {
            Key::Claim(c) => Target::NodeClaim(self.state.claim_names.name(c).to_string()),
            Key::Node(n) => Target::Node(self.state.node_names.name(n).to_string()),
        };
        let count = scored.len() as u32;
        for (rank, (_, p, image, reason, bytes)) in scored.into_iter().enumerate() {
            if *spent + bytes > self.cfg.node_budget_bytes {
                continue;
            }
            *spent += bytes;
            done.insert(image);
            out.push(PullOrder {
                target: target.clone(),
                image: names.name(image).to_string(),
                priority: count - rank as u32,
                reason,
                probability: Some((p * 1e4).round() / 1e4),
            });
        }
    }

    fn learn_binding(&mut self, node: u32, images: &[ImageId], now: f64) {
        let h = self.model.horizon_seconds;
        let Some((pool, since, counted)) = self.fresh.get_mut(&node) else {
            return;
        };
        if now - *since > h {
            self.fresh.remove(&node);
            return;
        }
        let hist = self.history.entry(pool.clone()).or_default();
        for &i in images {
            if counted.insert(i) {
                *hist.needs.entry(i).or_default() += 1;
            }
        }
    }
}

impl Policy for Planner {
    fn name(&self) -> &str {
        "predictive"
    }

    fn on_event(&mut self, event: &Event, clock: &dyn Clock, out: &mut Vec<PullOrder>) {
        let now = clock.now();
        self.state.apply(event);
        match &event.body {
            Body::Image(i) => {
                let id = self.state.images.intern(&i.image);
                self.sizes.insert(id, i.bytes);
            }
            Body::Workload(_) => {
                self.pools.clear();
            }
            Body::NodeClaim(c) => {
                let Some(id) = self.state.claim_names.get(&c.node_claim) else {
                    return;
                };
                match c.phase {
                    ClaimPhase::Created => {
                        self.plan(Key::Claim(id), Some(id), now, out);
                    }
                    ClaimPhase::Deleted => {
                        self.planned.remove(&Key::Claim(id));
                    }
                    _ => {
                        if let Some(n) =
                            c.node.as_deref().and_then(|n| self.state.node_names.get(n))
                        {
                            self.node_claim.insert(n, id);
                        }
                    }
                }
            }
            Body::Pod(p) if p.phase == PodPhase::Nominated => {
                let claim = p
                    .node_claim
                    .as_deref()
                    .and_then(|c| self.state.claim_names.get(c));
                if let Some(id) = claim
                    && !self.state.claim_node.contains_key(&id)
                {
                    self.plan(Key::Claim(id), Some(id), now, out);
                }
            }
            Body::Pod(p) if p.phase == PodPhase::Scheduled => {
                if let Some(n) = p.node.as_deref().and_then(|n| self.state.node_names.get(n))
                    && let Some(pod) = self.state.pod_names.get(&p.pod)
                    && let Some(info) = self.state.pods.get(&pod)
                {
                    let images = info.images.clone();
                    self.learn_binding(n, &images, now);
                }
            }
            Body::Node(n) => {
                let Some(id) = self.state.node_names.get(&n.node) else {
                    return;
                };
                match n.phase {
                    NodePhase::Registered => {
                        let Some(info) = self.state.nodes.get(&id).cloned() else {
                            return;
                        };
                        let claim = self.node_claim.get(&id).copied().or_else(|| {
                            self.state
                                .claim_node
                                .iter()
                                .find(|(_, node)| **node == id)
                                .map(|(c, _)| *c)
                        });
                        // What was ordered for the claim is already on its way here.
                        if let Some(c) = claim
                            && let Some(done) = self.planned.remove(&Key::Claim(c))
                        {
                            self.planned.insert(Key::Node(id), done);
                        }
                        self.history.entry(info.pool.clone()).or_default().new_nodes += 1;
                        self.fresh
                            .insert(id, (info.pool.clone(), now, HashSet::default()));
                        self.plan(Key::Node(id), claim, now, out);
                        self.state.consume_scale_up(&info.pool);
                    }
                    NodePhase::Deleted => {
                        self.planned.remove(&Key::Node(id));
                        self.fresh.remove(&id);
                        self.node_claim.remove(&id);
                    }
                    NodePhase::Ready => {}
                }
            }
            _ => {}
        }
    }

    fn tick_interval(&self) -> Option<f64> {
        Some(self.cfg.tick_seconds)
    }

    fn on_tick(&mut self, _clock: &dyn Clock, _out: &mut Vec<PullOrder>) {
        // Sample every HPA's desired replicas on a regular grid for the trend.
        for (w, h) in &self.state.hpas {
            let s = self.trends.entry(*w).or_default();
            self.holt.update(s, h.desired as f64);
        }
    }
}
