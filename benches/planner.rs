//! Planner decision latency and memory, with a cluster view of 5,000 nodes,
//! 100,000 pods and 2,000 workloads.
//!
//! A decision is one `on_event` call that plans: a NodeClaim created, a pod
//! nominated to it, and its node registering. Each is timed on its own; the
//! bench prints p50, p99 and max over every decision, and the bytes the
//! planner holds for the view, counted by a wrapping global allocator.
//! Ticks (once every 15 s for the whole cluster: the HPA trends, and plans
//! for the nodes already up where rising HPAs will put pods) are timed
//! and shown apart.
//!
//! Run: `cargo bench --bench planner`

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use pullahead::clock::SimClock;
use pullahead::event::{
    ClaimPhase, Event, Hpa, Image, Node, NodeClaim, NodePhase, Pod, PodPhase, Workload,
};
use pullahead::forecast::model::DEFAULT_MODEL;
use pullahead::forecast::model::Model;
use pullahead::forecast::planner::{Planner, PlannerConfig};
use pullahead::policy::Policy;

/// Counts live heap bytes, so the view's size is measured, not guessed.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to mimalloc (the binary's allocator) unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout as asked.
        unsafe { MiMalloc.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { MiMalloc.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const NODES: usize = 5_000;
const PODS: usize = 100_000;
const WORKLOADS: usize = 2_000;
const IMAGES: usize = 1_000;
const POOLS: usize = 8;
const HPAS: usize = 200;
const PENDING: usize = 2_000;
const DECISION_CLAIMS: usize = 2_000;
const TICKS: usize = 200;

/// A cheap deterministic generator; the bench needs spread, not quality.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

fn pool_labels(pool: usize) -> BTreeMap<String, String> {
    BTreeMap::from([("karpenter.sh/nodepool".to_string(), format!("pool-{pool}"))])
}

fn image(i: usize) -> String {
    format!("registry.example/app/img{i}:v1")
}

/// The events that build the view, in time order.
fn view(rng: &mut Lcg) -> (Vec<Event>, Vec<Vec<String>>) {
    let mut ev = Vec::new();
    for i in 0..IMAGES {
        ev.push(Event::new(
            0.0,
            Image {
                image: image(i),
                bytes: (20 + rng.next(500)) as u64 * 1_000_000,
                layers: None,
            },
        ));
    }
    let mut wl_images = Vec::with_capacity(WORKLOADS);
    for w in 0..WORKLOADS {
        let images: Vec<String> = (0..1 + rng.next(3))
            .map(|_| image(rng.next(IMAGES)))
            .collect();
        ev.push(Event::new(
            0.0,
            Workload {
                workload: format!("ns{}/w{w}", w % 10),
                kind: "Deployment".into(),
                images: images.clone(),
                node_selector: pool_labels(w % POOLS),
                tolerations: None,
                replicas: Some(50),
            },
        ));
        wl_images.push(images);
    }
    for d in 0..3 {
        ev.push(Event::new(
            0.0,
            Workload {
                workload: format!("kube-system/ds{d}"),
                kind: "DaemonSet".into(),
                images: vec![format!("registry.example/infra/ds{d}:v1")],
                node_selector: BTreeMap::new(),
                tolerations: None,
                replicas: None,
            },
        ));
    }
    for h in 0..HPAS {
        let w = h * (WORKLOADS / HPAS);
        ev.push(Event::new(
            1.0,
            Hpa {
                hpa: format!("ns{}/w{w}", w % 10),
                workload: format!("ns{}/w{w}", w % 10),
                current_replicas: 50,
                desired_replicas: 50 + (h % 3) as u32,
                min_replicas: Some(1),
                max_replicas: Some(100),
                metric: None,
            },
        ));
    }
    for n in 0..NODES {
        ev.push(Event::new(
            2.0,
            Node {
                node: format!("node-{n}"),
                phase: NodePhase::Registered,
                pool: Some(format!("pool-{}", n % POOLS)),
                labels: pool_labels(n % POOLS),
                taints: None,
                images: None,
            },
        ));
    }
    for p in 0..PODS {
        let w = p % WORKLOADS;
        let pod = |phase, node: Option<String>| Pod {
            pod: format!("ns{}/w{w}-{p}", w % 10),
            workload: Some(format!("ns{}/w{w}", w % 10)),
            images: wl_images[w].clone(),
            phase,
            node,
            node_claim: None,
        };
        ev.push(Event::new(3.0, pod(PodPhase::Pending, None)));
        if p >= PENDING {
            // Each workload's pods on nodes of its own pool.
            let node = (w % POOLS) + POOLS * rng.next(NODES / POOLS);
            ev.push(Event::new(
                3.0,
                pod(PodPhase::Scheduled, Some(format!("node-{node}"))),
            ));
        }
    }
    (ev, wl_images)
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn main() {
    let mut rng = Lcg(7);
    let model = match Model::from_json(DEFAULT_MODEL) {
        Ok(m) => m,
        Err(e) => panic!("built-in model: {e}"),
    };
    let (events, wl_images) = view(&mut rng);
    let before = LIVE.load(Ordering::Relaxed);
    let mut planner = Planner::new(model, PlannerConfig::default());
    let clock = SimClock::new(0.0);
    let mut out = Vec::new();
    let built = Instant::now();
    for (i, e) in events.iter().enumerate() {
        clock.set(e.ts);
        planner.on_event(e, &clock, &mut out);
        out.clear();
        if i % 5_000 == 0 {
            // Ticks feed the HPA trend, as in a replay.
            planner.on_tick(&clock, &mut out);
            out.clear();
        }
    }
    let build_s = built.elapsed().as_secs_f64();
    let view_bytes = LIVE.load(Ordering::Relaxed) - before;
    let held = planner.state();
    println!(
        "view: {} nodes, {} pods, {} workloads; built from {} events in {build_s:.2} s",
        held.nodes.len(),
        held.pod_names.len(),
        held.workloads.len(),
        events.len()
    );
    println!(
        "planner memory for the view: {:.1} MB",
        view_bytes as f64 / 1e6
    );

    // Per kind of decision: claim created, pod nominated, node registered.
    let mut lat: [Vec<u64>; 3] = Default::default();
    let mut orders = 0usize;
    let mut t = 10.0;
    let mut timed = |planner: &mut Planner, e: Event, out: &mut Vec<_>, lat: &mut Vec<u64>| {
        clock.set(e.ts);
        let start = Instant::now();
        planner.on_event(&e, &clock, out);
        lat.push(start.elapsed().as_nanos() as u64);
        orders += out.len();
        out.clear();
    };
    for c in 0..DECISION_CLAIMS {
        t += 1.0;
        let pool = c % POOLS;
        let claim = format!("claim-{c}");
        let node = format!("new-node-{c}");
        let claim_event = |phase, node: Option<String>| NodeClaim {
            node_claim: claim.clone(),
            pool: format!("pool-{pool}"),
            phase,
            labels: pool_labels(pool),
            taints: None,
            node,
        };
        timed(
            &mut planner,
            Event::new(t, claim_event(ClaimPhase::Created, None)),
            &mut out,
            &mut lat[0],
        );
        for k in 0..3 {
            let w = pool + POOLS * rng.next(WORKLOADS / POOLS);
            timed(
                &mut planner,
                Event::new(
                    t,
                    Pod {
                        pod: format!("ns{}/w{w}-nominated-{c}-{k}", w % 10),
                        workload: Some(format!("ns{}/w{w}", w % 10)),
                        images: wl_images[w].clone(),
                        phase: PodPhase::Nominated,
                        node: None,
                        node_claim: Some(claim.clone()),
                    },
                ),
                &mut out,
                &mut lat[1],
            );
        }
        planner.on_event(
            &Event::new(
                t + 0.5,
                claim_event(ClaimPhase::Launched, Some(node.clone())),
            ),
            &clock,
            &mut out,
        );
        out.clear();
        timed(
            &mut planner,
            Event::new(
                t + 1.0,
                Node {
                    node,
                    phase: NodePhase::Registered,
                    pool: Some(format!("pool-{pool}")),
                    labels: pool_labels(pool),
                    taints: None,
                    images: None,
                },
            ),
            &mut out,
            &mut lat[2],
        );
    }
    // Ticks: every HPA's trend sampled, and plans for the nodes already up
    // where rising HPAs (a third of them here) will put pods. One a 15 s
    // for the whole cluster, so timed on their own.
    let mut ticks = Vec::new();
    for _ in 0..TICKS {
        t += 15.0;
        clock.set(t);
        let start = Instant::now();
        planner.on_tick(&clock, &mut out);
        ticks.push(start.elapsed().as_nanos() as u64);
        orders += out.len();
        out.clear();
    }
    let show = |what: &str, mut lat: Vec<u64>| {
        lat.sort_unstable();
        println!(
            "{what}: {} decisions; latency p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
            lat.len(),
            percentile(&lat, 0.50) as f64 / 1e3,
            percentile(&lat, 0.99) as f64 / 1e3,
            lat[lat.len() - 1] as f64 / 1e3,
        );
    };
    let [created, nominated, registered] = lat;
    let all: Vec<u64> = created
        .iter()
        .chain(&nominated)
        .chain(&registered)
        .copied()
        .collect();
    println!("orders: {orders}");
    show("claim created", created);
    show("pod nominated", nominated);
    show("node registered", registered);
    show("every decision", all);
    show("tick (trends, and plans for nodes up)", ticks);
}
