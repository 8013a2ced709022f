//! The `predictive` policy: at each NodeClaim and node registration it
//! gathers the signals that say which images the node will need, asks the
//! model for P(needed within H) of each, and orders the best expected
//! seconds saved per byte within the node's byte budget.
//!
//! It reads only the events given so far (through [`ClusterState`]) and the
//! clock, so it is causal and deterministic: ties are broken by image name.

use super::model::feature::{
    DAEMONSET, EXISTING, FITS, HISTORY, HPA_PRESSURE, HPA_TREND, NOMINATED, NOT_NOMINATED, PENDING,
    SCALE_UP,
};
use super::model::{Features, Model, N_FEATURES};
use super::trend::{Holt, HoltState};
use crate::clock::Clock;
use crate::event::{Body, ClaimPhase, Event, NodePhase, PodPhase};
use crate::policy::{Policy, PullOrder, Reason, Target};
use crate::state::{ClusterState, ImageId, NodeInfo, PoolLoad};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

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
    /// How long after a NodeClaim's creation its first plan waits, seconds;
    /// 0 plans at creation. Karpenter nominates the claim's pods just after
    /// it creates the claim, and a plan made before that cannot tell the
    /// pool's usual images from the ones these pods need. The plan is made
    /// at the first event or tick at least this long after creation, or at
    /// the node's registration if that comes first. Claim orders wait for
    /// the node anyway, so the delay costs no lead time while the node
    /// takes longer than this to register.
    pub claim_plan_delay_seconds: f64,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        Self {
            node_budget_bytes: 20_000_000_000,
            bandwidth_bytes_per_second: 125e6,
            pull_latency_seconds: 0.5,
            default_image_bytes: 200_000_000,
            tick_seconds: 15.0,
            claim_plan_delay_seconds: 5.0,
        }
    }
}

/// Where a plan goes: a claim that has no node yet, or a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Claim(u32),
    Node(u32),
}

/// How much the scheduler would prefer `info`'s node, holding `pods` bound
/// pods, for a new pod: lower first. `None` when a packing pool's node is
/// taken as full; a spreading pool reaches its fullest nodes last anyway.
fn rank(loads: &HashMap<String, PoolLoad>, info: &NodeInfo, pods: u32) -> Option<u32> {
    match loads.get(&info.pool) {
        Some(l) if l.packs() => l.most.checked_sub(pods).filter(|&room| room > 0),
        _ => Some(pods),
    }
}

/// Whether `image` is on the node `info` describes, or among the images
/// already ordered for it (`done`): a plan orders neither again.
fn present_or_ordered(info: &NodeInfo, done: Option<&HashSet<ImageId>>, image: ImageId) -> bool {
    done.is_some_and(|d| d.contains(&image)) || info.images.contains(&image)
}

/// Why a plan is made, which decides its candidates.
#[derive(Clone, Copy, Debug)]
enum Why<'a> {
    /// A NodeClaim or a newly registered node, which this claim (if any)
    /// announced: every signal.
    New(Option<u32>),
    /// A node already up, where these workloads' rising HPAs are expected
    /// to put pods: their images it lacks.
    Rising(&'a [u32]),
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

/// Which images the pool's new nodes needed within the horizon.
#[derive(Debug, Default)]
struct PoolHistory {
    new_nodes: u64,
    /// (image, how many new nodes needed it), most needed first: a plan
    /// walks it only as far as a count can still pass the threshold.
    needs: Vec<(ImageId, u64)>,
    /// Image → its index in `needs`.
    at: HashMap<ImageId, usize>,
}

impl PoolHistory {
    /// Counts one more new node that needed `image`, keeping `needs` in
    /// order: the image swaps with the first of those it ties with, then
    /// moves ahead of them.
    fn count(&mut self, image: ImageId) {
        let Some(&k) = self.at.get(&image) else {
            // A count of 1 is the least, so the end keeps the order.
            self.at.insert(image, self.needs.len());
            self.needs.push((image, 1));
            return;
        };
        let n = self.needs[k].1;
        let first = self.needs.partition_point(|&(_, m)| m > n);
        if first != k {
            self.needs.swap(first, k);
            self.at.insert(self.needs[k].0, k);
            self.at.insert(image, first);
        }
        self.needs[first].1 += 1;
    }

    /// `image`'s count.
    fn needs_of(&self, image: ImageId) -> Option<u64> {
        self.at.get(&image).map(|&k| self.needs[k].1)
    }

    /// The `history` feature of an image `n` new nodes needed: their share
    /// of the pool's new nodes.
    fn share(&self, n: u64) -> f64 {
        n as f64 / self.new_nodes as f64
    }
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
    /// Per HPA'd workload: its pressure (desired − current) and the replicas
    /// its trend forecasts beyond the current ones over the horizon; kept
    /// up to date at HPA events and ticks, so a plan only reads them.
    hpa_signals: HashMap<u32, [f64; 2]>,
    /// Pool name → its view in `views`; both dropped when a workload changes.
    pool_ix: HashMap<String, usize>,
    views: Vec<PoolView>,
    /// Workload → the views whose pool it fits, to mark them stale.
    wl_views: HashMap<u32, Vec<usize>>,
    scratch: Scratch,
    collect: Option<Vec<Candidate>>,
    /// Claims whose creation plan waits, with the time it is due.
    waiting: HashMap<u32, f64>,
    /// (due time, claim), in due order; an entry whose time no longer
    /// matches `waiting` was planned or dropped already.
    due: VecDeque<(f64, u32)>,
}

/// A pool's candidates as its workloads give them, and which of them pass
/// the threshold on the pool's signals alone. A plan scores those, plus the
/// images of the claim's own pods and of the pool's history, instead of
/// every image of every workload that fits: any other image has only pool
/// signals, so it fails the threshold.
#[derive(Debug, Default)]
struct PoolView {
    /// Each image that the workloads or DaemonSets fitting the pool name,
    /// sorted.
    images: Vec<PoolImage>,
    /// Image id → its index in `images`, or `NONE`; dense, because every
    /// plan looks up each history image.
    at: Vec<u32>,
    /// Indexes in `images` whose pool signals alone pass the threshold.
    passing: HashSet<usize>,
    /// At least the log-odds of every image in `images` that does not
    /// pass: an image's history share has to make up the difference.
    z_failing: f64,
    /// Workloads whose pending pods or HPA changed since the last plan.
    dirty: Vec<u32>,
    /// Every image must be scored again (a new view, or too many changes).
    stale: bool,
}

/// One image of a [`PoolView`].
#[derive(Debug)]
struct PoolImage {
    image: ImageId,
    /// The `daemonset` feature.
    ds: f64,
    /// The `fits` feature, already on a log scale.
    fits: f64,
    /// The fitting workloads that name it, sorted, once per mention: the
    /// pending and HPA features are sums over them.
    workloads: Box<[u32]>,
    /// The model's log-odds on the pool signals alone.
    z: f64,
}

impl PoolView {
    const NONE: u32 = u32::MAX;

    /// The index of `image` in `images`.
    fn index(&self, image: ImageId) -> Option<usize> {
        match self.at.get(image as usize) {
            Some(&k) if k != Self::NONE => Some(k as usize),
            _ => None,
        }
    }

    /// Notes that `w`'s pending pods or HPA changed.
    fn mark(&mut self, w: u32) {
        if self.stale {
            return;
        }
        self.dirty.push(w);
        // Bounded: past this, scoring every image again is cheaper.
        if self.dirty.len() > self.images.len() + 64 {
            self.stale = true;
            self.dirty.clear();
        }
    }
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

    fn has(&self, image: ImageId) -> bool {
        self.seen.get(image as usize).copied().unwrap_or(false)
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
            hpa_signals: HashMap::default(),
            pool_ix: HashMap::default(),
            views: Vec::new(),
            wl_views: HashMap::default(),
            scratch: Scratch::default(),
            collect: None,
            waiting: HashMap::default(),
            due: VecDeque::new(),
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

    /// The index in `views` of the pool of `info`, built on first use after
    /// a workload change.
    fn view_of(
        pool_ix: &mut HashMap<String, usize>,
        views: &mut Vec<PoolView>,
        wl_views: &mut HashMap<u32, Vec<usize>>,
        state: &ClusterState,
        info: &NodeInfo,
    ) -> usize {
        if let Some(&v) = pool_ix.get(&info.pool) {
            return v;
        }
        let v = views.len();
        let mut rows: HashMap<ImageId, (f64, f64, Vec<u32>)> = HashMap::default();
        for (&id, w) in &state.workloads {
            if !w.fits(&info.labels, &info.taints) {
                continue;
            }
            let ds = w.is_daemonset();
            for &i in w.images.iter() {
                let row = rows.entry(i).or_default();
                if ds {
                    row.0 = 1.0;
                } else {
                    row.1 += 1.0;
                    row.2.push(id);
                }
            }
            if !ds {
                wl_views.entry(id).or_default().push(v);
            }
        }
        let mut images: Vec<PoolImage> = rows
            .into_iter()
            .map(|(image, (ds, n, mut workloads))| {
                workloads.sort_unstable();
                PoolImage {
                    image,
                    ds,
                    fits: n.ln_1p(),
                    workloads: workloads.into(),
                    z: f64::NEG_INFINITY,
                }
            })
            .collect();
        images.sort_unstable_by_key(|r| r.image);
        let mut at = vec![PoolView::NONE; images.last().map_or(0, |r| r.image as usize + 1)];
        for (k, r) in images.iter().enumerate() {
            at[r.image as usize] = k as u32;
        }
        views.push(PoolView {
            images,
            at,
            passing: HashSet::default(),
            z_failing: f64::NEG_INFINITY,
            dirty: Vec::new(),
            stale: true,
        });
        pool_ix.insert(info.pool.clone(), v);
        v
    }

    /// Workload `w`'s pending-pod count, HPA pressure and HPA trend, each 0
    /// when absent.
    fn workload_signals(&self, w: u32) -> [f64; 3] {
        let pending = self.state.pending.get(&w).copied().unwrap_or(0) as f64;
        let [pressure, ahead] = self.hpa_signals.get(&w).copied().unwrap_or_default();
        [pending, pressure, ahead]
    }

    /// Computes again `w`'s HPA pressure and trend, after its HPA or its
    /// trend changed.
    fn update_hpa_signal(&mut self, w: u32) {
        let Some(h) = self.state.hpas.get(&w) else {
            self.hpa_signals.remove(&w);
            return;
        };
        let steps = (self.model.horizon_seconds / self.cfg.tick_seconds).clamp(1.0, 40.0) as u32;
        let pressure = h.desired.saturating_sub(h.current) as f64;
        let ahead = self
            .trends
            .get(&w)
            .map_or(0.0, |s| self.holt.forecast(s, steps) - h.current as f64);
        self.hpa_signals.insert(w, [pressure, ahead.max(0.0)]);
    }

    /// Adds the pool signals of `img` (DaemonSet, fits, and the pending and
    /// HPA sums over its workloads, in workload order) to `row`.
    fn add_pool_signals(&self, img: &PoolImage, row: &mut Features) {
        row[DAEMONSET] = img.ds;
        row[FITS] = img.fits;
        for &w in img.workloads.iter() {
            let [pending, pressure, ahead] = self.workload_signals(w);
            for (k, v) in [
                (PENDING, pending),
                (HPA_PRESSURE, pressure),
                (HPA_TREND, ahead),
            ] {
                if v > 0.0 {
                    row[k] += v;
                }
            }
        }
    }

    /// Counts enter the model on a log scale (`fits` already is); the
    /// DaemonSet flag and the history share stay as they are.
    fn log_scale(row: &mut Features) {
        for k in [NOMINATED, SCALE_UP, PENDING, HPA_PRESSURE, HPA_TREND] {
            if row[k] != 0.0 {
                row[k] = row[k].ln_1p();
            }
        }
    }

    /// Scores again the images of `view` whose pool signals changed, and
    /// updates which of them pass on those alone.
    fn refresh(&self, view: &mut PoolView) {
        let z_min = self.model.logit_threshold();
        let mut redo: Vec<usize> = if view.stale {
            view.z_failing = f64::NEG_INFINITY;
            (0..view.images.len()).collect()
        } else {
            let mut v = Vec::new();
            for &w in &view.dirty {
                if let Some(wl) = self.state.workloads.get(&w) {
                    v.extend(wl.images.iter().filter_map(|i| view.index(*i)));
                }
            }
            v.sort_unstable();
            v.dedup();
            v
        };
        view.stale = false;
        view.dirty.clear();
        for k in redo.drain(..) {
            let mut row = [0.0; N_FEATURES];
            self.add_pool_signals(&view.images[k], &mut row);
            Self::log_scale(&mut row);
            let z = self.model.logit(&row);
            view.images[k].z = z;
            if z >= z_min {
                view.passing.insert(k);
            } else {
                view.passing.remove(&k);
                // A bound, not the maximum: an image whose log-odds fell
                // keeps it high until the next full pass, which costs only
                // a longer walk of the history.
                view.z_failing = view.z_failing.max(z);
            }
        }
    }

    /// Adds the signals of the claim's own pods (nominated to it, or in a
    /// scale-up of its pool) to the scratch rows.
    fn claim_signals(&self, info: &NodeInfo, claim: Option<u32>, c: &mut Scratch) {
        let st = &self.state;
        if let Some(pods) = claim.and_then(|c| st.nominated_to_claim.get(&c)) {
            for p in pods {
                if let Some(p) = st.pod(*p) {
                    c.add(&p.images, NOMINATED, 1.0);
                }
            }
        }
        if let Some(ups) = st.scale_ups.get(&info.pool) {
            for up in ups {
                for p in &up.pods {
                    if let Some(p) = st.pod(*p)
                        && p.node.is_none()
                    {
                        c.add(&p.images, SCALE_UP, 1.0);
                    }
                }
            }
        }
    }

    /// Fills the scratch rows with the feature vector of every image that
    /// can pass the threshold on a node described by `info`, which NodeClaim
    /// `claim` may have announced: those whose pool signals pass, and those
    /// the claim's pods or the pool's history name. With `every`, all the
    /// pool's images are filled, as `pullahead tune` needs.
    fn candidates(
        &self,
        view: &PoolView,
        info: &NodeInfo,
        claim: Option<u32>,
        done: Option<&HashSet<ImageId>>,
        every: bool,
        c: &mut Scratch,
    ) {
        c.clear();
        self.claim_signals(info, claim, c);
        // Once the claim's own pods are known, an image none of them needs
        // gets `not_nominated`. With a positive weight that could lift an
        // image whose pool signals fail, so then every image is scored.
        let named = claim
            .and_then(|c| self.state.nominated_to_claim.get(&c))
            .is_some_and(|p| !p.is_empty());
        let every = every || (named && self.model.weights()[NOT_NOMINATED] > 0.0);
        // Before the history, so that every image already in gets its
        // history share whatever the sign of its weight.
        if every {
            for img in &view.images {
                c.row(img.image);
            }
        } else {
            for &k in &view.passing {
                c.row(view.images[k].image);
            }
        }
        if let Some(h) = self.history.get(&info.pool)
            && h.new_nodes > 0
        {
            if every {
                for &(i, n) in &h.needs {
                    c.row(i)[HISTORY] = h.share(n);
                }
            } else {
                for t in 0..c.touched.len() {
                    let i = c.touched[t];
                    if let Some(n) = h.needs_of(i) {
                        c.rows[i as usize][HISTORY] = h.share(n);
                    }
                }
                self.history_candidates(view, h, named, c);
            }
        }
        for t in 0..c.touched.len() {
            let i = c.touched[t];
            // Already ordered here, or already on the node: `order` skips
            // it whatever its score, so only `tune` needs its features.
            if !every && present_or_ordered(info, done, i) {
                continue;
            }
            let row = &mut c.rows[i as usize];
            if let Some(k) = view.index(i) {
                self.add_pool_signals(&view.images[k], row);
            }
            // Scaled by `fits` (already on a log scale), not a flag: a flag
            // or the history share left an image that many of the pool's
            // workloads share above the threshold on claims whose pods do
            // not use it.
            if named && row[NOMINATED] == 0.0 {
                row[NOT_NOMINATED] = row[FITS];
            }
            Self::log_scale(row);
        }
    }

    /// Adds the history images that no claim pod names and whose pool
    /// signals fail alone, but which their history share may carry over the
    /// threshold. With `named` (the claim's pods are known), each also has
    /// `not_nominated`, whose weight is then at most 0.
    fn history_candidates(&self, view: &PoolView, h: &PoolHistory, named: bool, c: &mut Scratch) {
        // The sum below is the log-odds up to rounding, so a margin keeps
        // every image that might pass, and the exact test comes later.
        let z_min = self.model.logit_threshold();
        let may_pass = |z: f64| z >= z_min - 1e-9 * (1.0 + z.abs());
        let z_none = self.model.logit(&[0.0; N_FEATURES]);
        let per_node = self.model.weights()[HISTORY] / h.new_nodes as f64;
        let not_nominated = if named {
            self.model.weights()[NOT_NOMINATED]
        } else {
            0.0
        };
        // Any image not yet a candidate has at most this pool log-odds
        // (`not_nominated` only lowers it).
        let z_top = view.z_failing.max(z_none);
        for &(i, n) in &h.needs {
            // `needs` runs from most needed down: with a positive weight,
            // once the best pool log-odds plus this share fails, so does
            // every image after it (`may_pass` is monotone).
            if per_node > 0.0 && !may_pass(z_top + per_node * n as f64) {
                break;
            }
            if c.has(i) {
                continue;
            }
            let z = view.index(i).map_or(z_none, |k| {
                view.images[k].z + not_nominated * view.images[k].fits
            }) + per_node * n as f64;
            if may_pass(z) {
                c.row(i)[HISTORY] = h.share(n);
            }
        }
    }

    /// Fills the scratch rows for an existing node's plan: each image of
    /// `workloads` that the node neither has nor was ordered, with its pool
    /// signals and `existing`.
    fn rising_candidates(
        &self,
        view: &PoolView,
        info: &NodeInfo,
        workloads: &[u32],
        done: Option<&HashSet<ImageId>>,
        c: &mut Scratch,
    ) {
        c.clear();
        for w in workloads {
            let Some(wl) = self.state.workloads.get(w) else {
                continue;
            };
            for &i in wl.images.iter() {
                if c.has(i) || present_or_ordered(info, done, i) {
                    continue;
                }
                let row = c.row(i);
                if let Some(k) = view.index(i) {
                    self.add_pool_signals(&view.images[k], row);
                }
                row[EXISTING] = 1.0;
                Self::log_scale(row);
            }
        }
    }

    /// Plans for nodes already up where rising HPAs will put their next
    /// pods. A workload whose pressure or trend expects `k` ≥ 1 more
    /// replicas within the horizon targets the `k` nodes it fits where the
    /// scheduler would most likely send them: the fewest bound pods where
    /// the pool's bindings show spreading (LeastAllocated), the most short
    /// of full where they show packing (MostAllocated). Events carry no
    /// resource requests, so bound pods stand in for load ([`PoolLoad`]).
    /// Each target node is planned once per tick, for the images of its
    /// rising workloads that it lacks.
    fn plan_existing(&mut self, now: f64, out: &mut Vec<PullOrder>) {
        let mut rising: Vec<(u32, usize)> = self
            .hpa_signals
            .iter()
            .filter_map(|(&w, &[pressure, ahead])| {
                let more = pressure.max(ahead);
                // `more` is at most max replicas here; the cast saturates.
                (more >= 1.0).then_some((w, more.ceil() as usize))
            })
            .collect();
        if rising.is_empty() || self.state.nodes.is_empty() {
            return;
        }
        // Map order is not the events' order; sorting keeps plans
        // deterministic, and node ids are interned in event order.
        rising.sort_unstable();
        // The expected pods are placed one at a time on the node each fits
        // that the scheduler would prefer, which then counts them: several
        // rising workloads share out the nodes as the scheduler would share
        // out their pods, rather than all aiming at the same one.
        let loads = &self.state.pool_load;
        // (rank, node, pods counting those placed this tick), lowest first.
        let mut by_load: BinaryHeap<Reverse<(u32, u32, u32)>> = self
            .state
            .nodes
            .iter()
            .filter_map(|(&n, info)| Some(Reverse((rank(loads, info, info.pods)?, n, info.pods))))
            .collect();
        let mut targets: Vec<(u32, u32)> = Vec::new();
        let mut skipped = Vec::new();
        for (w, k) in rising {
            let Some(wl) = self.state.workloads.get(&w) else {
                continue;
            };
            if wl.is_daemonset() {
                continue;
            }
            let mut placed = Vec::with_capacity(k);
            while placed.len() < k {
                let Some(Reverse((r, n, pods))) = by_load.pop() else {
                    break;
                };
                let Some(info) = self.state.nodes.get(&n) else {
                    continue;
                };
                if !wl.fits(&info.labels, &info.taints) {
                    skipped.push(Reverse((r, n, pods)));
                    continue;
                }
                // A node filled by this placement takes no more.
                if let Some(r) = rank(loads, info, pods + 1) {
                    placed.push(Reverse((r, n, pods + 1)));
                }
                let done = self.planned.get(&Key::Node(n)).map(|(d, _)| d);
                if wl
                    .images
                    .iter()
                    .any(|&i| !present_or_ordered(info, done, i))
                {
                    targets.push((n, w));
                }
            }
            by_load.extend(placed.drain(..).chain(skipped.drain(..)));
        }
        targets.sort_unstable();
        let mut workloads = Vec::new();
        for (k, &(n, w)) in targets.iter().enumerate() {
            workloads.push(w);
            if targets.get(k + 1).is_none_or(|&(next, _)| next != n) {
                self.plan(Key::Node(n), Why::Rising(&workloads), now, out);
                workloads.clear();
            }
        }
    }

    fn reason(f: &Features) -> Reason {
        const ORDER: [(usize, Reason); 8] = [
            (NOMINATED, Reason::Nominated),
            (SCALE_UP, Reason::ScaleUp),
            (DAEMONSET, Reason::Daemonset),
            (PENDING, Reason::Pending),
            (HPA_PRESSURE, Reason::HpaPressure),
            (HPA_TREND, Reason::HpaTrend),
            (HISTORY, Reason::History),
            (FITS, Reason::Workload),
        ];
        ORDER
            .iter()
            .find(|(i, _)| f[*i] > 0.0)
            .map_or(Reason::History, |(_, r)| *r)
    }

    /// Scores the candidates for `key` (a NodeClaim or a node) that `why`
    /// gives, and orders the ones worth it.
    fn plan(&mut self, key: Key, why: Why<'_>, now: f64, out: &mut Vec<PullOrder>) {
        // The caches are moved out for the call, so that they can be filled
        // while the view they summarise is borrowed.
        let mut pool_ix = std::mem::take(&mut self.pool_ix);
        let mut views = std::mem::take(&mut self.views);
        let mut wl_views = std::mem::take(&mut self.wl_views);
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut planned = std::mem::take(&mut self.planned);
        let mut collect = self.collect.take();
        let info = match key {
            Key::Claim(c) => self.state.claims.get(&c),
            Key::Node(n) => self.state.nodes.get(&n),
        };
        if let Some(info) = info {
            let v = Self::view_of(&mut pool_ix, &mut views, &mut wl_views, &self.state, info);
            let view = &mut views[v];
            self.refresh(view);
            let done = planned.get(&key).map(|(d, _)| d);
            match why {
                Why::New(claim) => {
                    self.candidates(view, info, claim, done, collect.is_some(), &mut scratch);
                }
                Why::Rising(workloads) => {
                    self.rising_candidates(view, info, workloads, done, &mut scratch);
                }
            }
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
        self.pool_ix = pool_ix;
        self.views = views;
        self.wl_views = wl_views;
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
        let done = planned.get(&key).map(|(d, _)| d);
        let z_min = self.model.logit_threshold();
        for &image in &c.touched {
            let f = &c.rows[image as usize];
            // Most candidates fall below the threshold: the cheapest test
            // first, and no exp for them.
            if self.model.logit(f) < z_min || present_or_ordered(info, done, image) {
                continue;
            }
            let p = self.model.predict(f);
            let bytes = self.bytes(image);
            let saved =
                self.cfg.pull_latency_seconds + bytes as f64 / self.cfg.bandwidth_bytes_per_second;
            scored.push((p * saved / bytes as f64, p, image, Self::reason(f), bytes));
        }
        let (done, spent) = planned.entry(key).or_default();
        // Most plans order nothing: no target name to copy then.
        if scored.is_empty() {
            return;
        }
        let names = &self.state.images;
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| names.cmp_names(a.2, b.2)));
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

    /// Makes the creation plans of the claims due by `t`, in the order they
    /// fell due. Called before the event at `t` is applied, so a plan sees
    /// what happened until then.
    fn plan_due(&mut self, t: f64, out: &mut Vec<PullOrder>) {
        while let Some(&(at, c)) = self.due.front() {
            if at > t {
                break;
            }
            self.due.pop_front();
            if self.waiting.get(&c) == Some(&at) {
                self.waiting.remove(&c);
                self.plan(Key::Claim(c), Why::New(Some(c)), t, out);
            }
        }
    }

    /// Counts the images of `pod`, just bound to `node`, in its pool's
    /// history while the node is younger than the horizon.
    fn learn_binding(&mut self, node: u32, pod: u32, now: f64) {
        let h = self.model.horizon_seconds;
        // Most bindings are to nodes past their first hour: no lookups then.
        let Some((pool, since, counted)) = self.fresh.get_mut(&node) else {
            return;
        };
        if now - *since > h {
            self.fresh.remove(&node);
            return;
        }
        let Some(info) = self.state.pod(pod) else {
            return;
        };
        // Registration made the pool's history before the node was fresh.
        let Some(hist) = self.history.get_mut(pool.as_str()) else {
            return;
        };
        for &i in info.images.iter() {
            if counted.insert(i) {
                hist.count(i);
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
        if !self.due.is_empty() {
            self.plan_due(now, out);
        }
        self.state.apply(event);
        // The ids of the event's names, as `apply` just interned them.
        let ids = self.state.resolved;
        let changed = std::mem::take(&mut self.state.changed_workloads);
        for &w in &changed {
            if matches!(event.body, Body::Hpa(_)) {
                self.update_hpa_signal(w);
            }
            for &v in self.wl_views.get(&w).into_iter().flatten() {
                self.views[v].mark(w);
            }
        }
        self.state.changed_workloads = changed;
        match &event.body {
            Body::Image(i) => {
                let id = self.state.images.intern(&i.image);
                self.sizes.insert(id, i.bytes);
            }
            Body::Workload(_) => {
                self.pool_ix.clear();
                self.views.clear();
                self.wl_views.clear();
            }
            Body::NodeClaim(c) => {
                let Some(id) = ids.claim else {
                    return;
                };
                match c.phase {
                    ClaimPhase::Created => {
                        let delay = self.cfg.claim_plan_delay_seconds;
                        if delay > 0.0 {
                            let at = now + delay;
                            self.waiting.insert(id, at);
                            self.due.push_back((at, id));
                        } else {
                            self.plan(Key::Claim(id), Why::New(Some(id)), now, out);
                        }
                    }
                    ClaimPhase::Deleted => {
                        self.planned.remove(&Key::Claim(id));
                        self.waiting.remove(&id);
                    }
                    _ => {
                        if let Some(n) = ids.node {
                            self.node_claim.insert(n, id);
                        }
                    }
                }
            }
            Body::Pod(p) if p.phase == PodPhase::Nominated => {
                // A claim whose first plan still waits will see this pod then.
                if let Some(id) = ids.claim
                    && !self.state.claim_node.contains_key(&id)
                    && !self.waiting.contains_key(&id)
                {
                    self.plan(Key::Claim(id), Why::New(Some(id)), now, out);
                }
            }
            Body::Pod(p) if p.phase == PodPhase::Scheduled => {
                if let (Some(n), Some(pod)) = (ids.node, ids.pod) {
                    self.learn_binding(n, pod, now);
                }
            }
            Body::Node(n) => {
                let Some(id) = ids.node else {
                    return;
                };
                match n.phase {
                    NodePhase::Registered => {
                        let Some(pool) = self.state.nodes.get(&id).map(|n| n.pool.clone()) else {
                            return;
                        };
                        let claim = self.node_claim.get(&id).copied().or_else(|| {
                            self.state
                                .claim_node
                                .iter()
                                .find(|(_, node)| **node == id)
                                .map(|(c, _)| *c)
                        });
                        // What was ordered for the claim is already on its way
                        // here; a claim plan still waiting is this plan now.
                        if let Some(c) = claim {
                            self.waiting.remove(&c);
                            if let Some(done) = self.planned.remove(&Key::Claim(c)) {
                                self.planned.insert(Key::Node(id), done);
                            }
                        }
                        self.history.entry(pool.clone()).or_default().new_nodes += 1;
                        self.plan(Key::Node(id), Why::New(claim), now, out);
                        self.state.consume_scale_up(&pool);
                        self.fresh.insert(id, (pool, now, HashSet::default()));
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

    fn on_tick(&mut self, clock: &dyn Clock, out: &mut Vec<PullOrder>) {
        if !self.due.is_empty() {
            self.plan_due(clock.now(), out);
        }
        // Sample every HPA's desired replicas on a regular grid for the trend.
        let mut hpas: Vec<u32> = Vec::with_capacity(self.state.hpas.len());
        for (w, h) in &self.state.hpas {
            let s = self.trends.entry(*w).or_default();
            self.holt.update(s, h.desired as f64);
            hpas.push(*w);
        }
        for w in hpas {
            self.update_hpa_signal(w);
            for &v in self.wl_views.get(&w).into_iter().flatten() {
                self.views[v].mark(w);
            }
        }
        self.plan_existing(clock.now(), out);
    }
}

#[cfg(test)]
mod tests {
    use super::{Planner, PlannerConfig, PoolHistory};
    use crate::clock::SimClock;
    use crate::event::EventReader;
    use crate::forecast::model::Model;
    use crate::policy::{Policy, PullOrder, Target};

    /// Each event's orders, from a planner fed `lines` without ticks.
    fn orders_by_event(lines: &str) -> Vec<(f64, Vec<PullOrder>)> {
        let model = Model::from_json(crate::forecast::model::DEFAULT_MODEL).unwrap();
        let mut planner = Planner::new(model, PlannerConfig::default());
        let clock = SimClock::new(0.0);
        let mut all = Vec::new();
        for e in EventReader::new(lines.as_bytes(), "t") {
            let e = e.unwrap();
            let mut out = Vec::new();
            clock.set(e.ts);
            planner.on_event(&e, &clock, &mut out);
            all.push((e.ts, out));
        }
        all
    }

    const CLAIM: &str = r#"{"ts":0,"type":"workload","workload":"a/web","kind":"Deployment","images":["r/web:1"],"node_selector":{}}
{"ts":0,"type":"workload","workload":"a/db","kind":"Deployment","images":["r/db:1"],"node_selector":{}}
{"ts":10,"type":"node_claim","node_claim":"c1","pool":"p","phase":"created","labels":{}}
{"ts":10,"type":"pod","pod":"a/web-1","workload":"a/web","images":["r/web:1"],"phase":"nominated","node_claim":"c1"}
"#;

    /// The claim's first plan waits for the delay, then sees the pod
    /// nominated in the same second as the claim.
    #[test]
    fn claim_plan_waits_and_sees_the_nominations() {
        let later = r#"{"ts":16,"type":"pod","pod":"a/db-1","workload":"a/db","images":["r/db:1"],"phase":"pending"}"#;
        let all = orders_by_event(&format!("{CLAIM}{later}\n"));
        let (last, rest) = all.split_last().unwrap();
        assert!(rest.iter().all(|(_, o)| o.is_empty()), "{rest:?}");
        assert_eq!(last.0, 16.0);
        let web = last.1.iter().find(|o| o.image == "r/web:1").unwrap();
        assert_eq!(web.target, Target::NodeClaim("c1".into()));
        assert_eq!(web.reason, crate::policy::Reason::Nominated);
    }

    /// A node that registers before the delay is up gets one plan, at its
    /// registration, and the claim none.
    #[test]
    fn early_registration_takes_the_claim_plan() {
        let reg = r#"{"ts":12,"type":"node_claim","node_claim":"c1","pool":"p","phase":"registered","labels":{},"node":"n1"}
{"ts":12,"type":"node","node":"n1","phase":"registered","pool":"p","labels":{}}
{"ts":30,"type":"pod","pod":"a/db-1","workload":"a/db","images":["r/db:1"],"phase":"pending"}
"#;
        let all = orders_by_event(&format!("{CLAIM}{reg}"));
        let orders: Vec<_> = all
            .iter()
            .flat_map(|(ts, o)| o.iter().map(move |o| (*ts, o)))
            .collect();
        assert!(!orders.is_empty());
        for (ts, o) in orders {
            assert_eq!((ts, &o.target), (12.0, &Target::Node("n1".into())), "{o:?}");
        }
    }

    /// Feeds `lines` to a planner whose model counts only `existing` (so
    /// that no registration plan passes), checks that they ordered nothing,
    /// and runs the tick at 15 s.
    fn ticked(lines: &str) -> (Planner, SimClock, Vec<PullOrder>) {
        use crate::forecast::model::{N_FEATURES, feature::EXISTING};
        let mut w = [0.0; N_FEATURES];
        w[EXISTING] = 10.0;
        let mut planner = Planner::new(Model::new(w, -5.0, 600.0, 0.5), PlannerConfig::default());
        let clock = SimClock::new(0.0);
        let mut out = Vec::new();
        for e in EventReader::new(lines.as_bytes(), "t") {
            let e = e.unwrap();
            clock.set(e.ts);
            planner.on_event(&e, &clock, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
        clock.set(15.0);
        planner.on_tick(&clock, &mut out);
        (planner, clock, out)
    }

    /// A rising HPA plans for nodes already up: its expected pods go, one
    /// at a time, to the least loaded node they fit, and only such a node
    /// that lacks the image gets an order.
    #[test]
    fn a_rising_hpa_plans_for_the_nodes_its_pods_will_land_on() {
        let lines = r#"{"ts":0,"type":"workload","workload":"a/fn","kind":"Deployment","images":["r/fn:1"],"node_selector":{"pool":"x"}}
{"ts":0,"type":"workload","workload":"a/b","kind":"Deployment","images":["r/b:1"],"node_selector":{"pool":"x"}}
{"ts":1,"type":"node","node":"n1","phase":"registered","pool":"x","labels":{"pool":"x"}}
{"ts":1,"type":"node","node":"n2","phase":"registered","pool":"x","labels":{"pool":"x"}}
{"ts":1,"type":"node","node":"n3","phase":"registered","pool":"x","labels":{"pool":"x"}}
{"ts":1,"type":"node","node":"n4","phase":"registered","pool":"y","labels":{"pool":"y"}}
{"ts":2,"type":"pod","pod":"a/b-1","workload":"a/b","images":["r/b:1"],"phase":"scheduled","node":"n1"}
{"ts":2,"type":"pod","pod":"a/b-2","workload":"a/b","images":["r/b:1"],"phase":"scheduled","node":"n1"}
{"ts":2,"type":"pod","pod":"a/fn-1","workload":"a/fn","images":["r/fn:1"],"phase":"scheduled","node":"n3"}
{"ts":5,"type":"hpa","hpa":"a/fn","workload":"a/fn","current_replicas":1,"desired_replicas":3,"min_replicas":0,"max_replicas":10}
"#;
        let (mut planner, clock, mut out) = ticked(lines);
        // Two more pods: n2 (empty) and n3 (one pod, has the image) take
        // them before n1 (two pods); n4 is empty but in another pool.
        let got: Vec<_> = out.iter().map(|o| (&o.target, o.image.as_str())).collect();
        assert_eq!(got, [(&Target::Node("n2".into()), "r/fn:1")]);
        assert_eq!(out[0].reason, crate::policy::Reason::HpaPressure);
        // Ordered once: the next tick does not order it again.
        out.clear();
        clock.set(30.0);
        planner.on_tick(&clock, &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    /// Where the pool's bindings show packing, the expected pods go to the
    /// node with the least room left, and a full node takes none.
    #[test]
    fn in_a_packing_pool_rising_pods_go_to_the_fullest_node_with_room() {
        // n1 fills to 3 pods, then n2 takes 2: the pool packs, and n1 is
        // taken as full. n3 is empty.
        let mut lines = String::from(
            r#"{"ts":0,"type":"workload","workload":"a/fn","kind":"Deployment","images":["r/fn:1"],"node_selector":{"pool":"x"}}
{"ts":0,"type":"workload","workload":"a/b","kind":"Deployment","images":["r/b:1"],"node_selector":{"pool":"x"}}
{"ts":1,"type":"node","node":"n1","phase":"registered","pool":"x","labels":{"pool":"x"}}
{"ts":1,"type":"node","node":"n2","phase":"registered","pool":"x","labels":{"pool":"x"}}
{"ts":1,"type":"node","node":"n3","phase":"registered","pool":"x","labels":{"pool":"x"}}
"#,
        );
        for (k, n) in ["n1", "n1", "n1", "n2", "n2"].iter().enumerate() {
            lines.push_str(&format!(
                r#"{{"ts":2,"type":"pod","pod":"a/b-{k}","workload":"a/b","images":["r/b:1"],"phase":"scheduled","node":"{n}"}}
"#
            ));
        }
        lines.push_str(r#"{"ts":5,"type":"hpa","hpa":"a/fn","workload":"a/fn","current_replicas":1,"desired_replicas":3,"min_replicas":0,"max_replicas":10}
"#);
        let (planner, _, out) = ticked(&lines);
        assert!(planner.state.pool_load["x"].packs());
        // Two more pods: n2 (2 pods) fills with the first, n3 takes the
        // second; n1 is full. Spreading would have sent both to n3.
        let mut got: Vec<_> = out.iter().map(|o| (&o.target, o.image.as_str())).collect();
        got.sort_by_key(|(t, _)| format!("{t:?}"));
        assert_eq!(
            got,
            [
                (&Target::Node("n2".into()), "r/fn:1"),
                (&Target::Node("n3".into()), "r/fn:1")
            ]
        );
    }

    /// `needs` stays sorted by count, most first, and `at` points at each
    /// image, whatever order the counts come in.
    #[test]
    fn history_counts_stay_ordered() {
        let mut h = PoolHistory::default();
        let mut want = std::collections::HashMap::new();
        let mut x = 7u64;
        for _ in 0..5_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Skewed, so that counts tie and overtake one another.
            let image = ((x >> 33) % 64).min((x >> 40) % 64) as u32;
            h.count(image);
            *want.entry(image).or_insert(0u64) += 1;
        }
        assert!(
            h.needs.windows(2).all(|w| w[0].1 >= w[1].1),
            "{:?}",
            h.needs
        );
        assert_eq!(h.needs.len(), want.len());
        for (&image, &n) in &want {
            assert_eq!(h.needs_of(image), Some(n), "image {image}");
            assert_eq!(h.needs[h.at[&image]].0, image);
        }
    }
}
