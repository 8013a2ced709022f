//! Synthetic traces of any length, for benchmarks and property tests: a
//! churning Karpenter-style cluster with workloads, DaemonSets, shared
//! layers, nominated pods, and pods landing on old and new nodes.
//!
//! It is not a realistic workload model (that is `pullahead scenario`); it
//! exercises every code path of replay at a chosen size, deterministically.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::event::{
    self, ClaimPhase, Event, EventWriter, Image, Layer, Node, NodeClaim, NodePhase, Pod, PodPhase,
    Workload,
};

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct SynthConfig {
    /// Seed: the same seed gives the same trace.
    pub seed: u64,
    /// Stop after about this many events.
    pub events: u64,
    /// Node pools.
    pub pools: usize,
    /// Workloads (Deployments).
    pub workloads: usize,
    /// Distinct application images.
    pub images: usize,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            events: 10_000,
            pools: 4,
            workloads: 200,
            images: 300,
        }
    }
}

#[derive(Debug)]
enum Action {
    ScaleOut,
    Register {
        claim: u64,
        pool: usize,
        pods: Vec<(u64, usize)>,
    },
    Ready {
        node: u64,
        pool: usize,
        pods: Vec<(u64, usize)>,
    },
    Existing,
    PodGone {
        pod: u64,
        workload: usize,
        node: u64,
    },
    NodeGone {
        node: u64,
        pool: usize,
    },
}

struct Gen {
    rng: ChaCha8Rng,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    actions: Vec<Option<Action>>,
    workload_images: Vec<Vec<String>>,
    workload_pool: Vec<usize>,
    alive: Vec<(u64, usize)>,
    next_id: u64,
}

impl Gen {
    fn at(&mut self, t: f64, action: Action) {
        let key = (t * 1000.0).round() as u64;
        self.actions.push(Some(action));
        self.queue
            .push(Reverse((key, (self.actions.len() - 1) as u64)));
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn pod(
        &self,
        pod: u64,
        w: usize,
        phase: PodPhase,
        node: Option<String>,
        claim: Option<String>,
    ) -> Pod {
        Pod {
            pod: format!("ns{}/w{w}-{pod}", w % 10),
            workload: Some(format!("ns{}/w{w}", w % 10)),
            images: self.workload_images[w].clone(),
            phase,
            node,
            node_claim: claim,
        }
    }
}

fn labels(pool: usize) -> std::collections::BTreeMap<String, String> {
    [("karpenter.sh/nodepool".to_string(), format!("pool-{pool}"))].into()
}

const DAEMONSETS: [&str; 2] = [
    "registry.example/infra/node-exporter:v1",
    "registry.example/infra/log-agent:v1",
];

/// Writes a synthetic trace to `out`; returns the events written.
pub fn generate<W: Write>(cfg: SynthConfig, out: &mut EventWriter<W>) -> event::Result<u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut n = 0u64;
    let bases: Vec<Layer> = (0..8)
        .map(|i| Layer {
            digest: format!("sha256:base{i}"),
            bytes: rng.random_range(5..80) * 1_000_000,
        })
        .collect();
    let mut image_names = Vec::with_capacity(cfg.images);
    for i in 0..cfg.images {
        let base = bases[i % bases.len()].clone();
        let own = Layer {
            digest: format!("sha256:img{i}"),
            bytes: rng.random_range(10..600) * 1_000_000,
        };
        let name = format!("registry.example/app/img{i}:v1");
        emit(
            out,
            &mut n,
            0.0,
            Image {
                image: name.clone(),
                bytes: base.bytes + own.bytes,
                layers: Some(vec![base, own]),
            }
            .into(),
        )?;
        image_names.push(name);
    }
    for ds in DAEMONSETS {
        emit(
            out,
            &mut n,
            0.0,
            Image {
                image: ds.to_string(),
                bytes: 30_000_000,
                layers: None,
            }
            .into(),
        )?;
    }
    let mut g = Gen {
        rng,
        queue: BinaryHeap::new(),
        actions: Vec::new(),
        workload_images: Vec::new(),
        workload_pool: Vec::new(),
        alive: Vec::new(),
        next_id: 0,
    };
    for w in 0..cfg.workloads {
        let k = g.rng.random_range(1..=3);
        let images: Vec<String> = (0..k)
            .map(|_| image_names[g.rng.random_range(0..image_names.len())].clone())
            .collect();
        let pool = g.rng.random_range(0..cfg.pools.max(1));
        emit(
            out,
            &mut n,
            0.0,
            Workload {
                workload: format!("ns{}/w{w}", w % 10),
                kind: "Deployment".into(),
                images: images.clone(),
                node_selector: labels(pool),
                tolerations: None,
                replicas: Some(1),
            }
            .into(),
        )?;
        g.workload_images.push(images);
        g.workload_pool.push(pool);
    }
    g.at(1.0, Action::ScaleOut);
    g.at(2.0, Action::Existing);
    while n < cfg.events {
        let Some(Reverse((key, idx))) = g.queue.pop() else {
            break;
        };
        let t = key as f64 / 1000.0;
        let Some(action) = g.actions[idx as usize].take() else {
            continue;
        };
        match action {
            Action::ScaleOut => {
                let w = g.rng.random_range(0..cfg.workloads);
                let pool = g.workload_pool[w];
                let claim = g.id();
                let count = g.rng.random_range(1..=6);
                let pods: Vec<(u64, usize)> = (0..count).map(|_| (g.id(), w)).collect();
                for &(p, w) in &pods {
                    emit(
                        out,
                        &mut n,
                        t,
                        g.pod(p, w, PodPhase::Pending, None, None).into(),
                    )?;
                }
                emit(
                    out,
                    &mut n,
                    t,
                    claim_event(claim, pool, ClaimPhase::Created, None),
                )?;
                for &(p, w) in &pods {
                    let c = Some(format!("pool-{pool}-{claim}"));
                    emit(
                        out,
                        &mut n,
                        t,
                        g.pod(p, w, PodPhase::Nominated, None, c).into(),
                    )?;
                }
                let delay = g.rng.random_range(30.0..60.0);
                g.at(t + delay, Action::Register { claim, pool, pods });
                let next = g.rng.random_range(5.0..40.0);
                g.at(t + next, Action::ScaleOut);
            }
            Action::Register { claim, pool, pods } => {
                let node = claim;
                let name = format!("node-{node}");
                emit(
                    out,
                    &mut n,
                    t,
                    claim_event(claim, pool, ClaimPhase::Registered, Some(name.clone())),
                )?;
                emit(
                    out,
                    &mut n,
                    t,
                    Node {
                        node: name.clone(),
                        phase: NodePhase::Registered,
                        pool: Some(format!("pool-{pool}")),
                        labels: labels(pool),
                        taints: None,
                        images: None,
                        image_fs_bytes: None,
                    }
                    .into(),
                )?;
                for (i, ds) in DAEMONSETS.iter().enumerate() {
                    emit(
                        out,
                        &mut n,
                        t,
                        Pod {
                            pod: format!("kube-system/ds{i}-{node}"),
                            workload: Some(format!("kube-system/ds{i}")),
                            images: vec![ds.to_string()],
                            phase: PodPhase::Scheduled,
                            node: Some(name.clone()),
                            node_claim: None,
                        }
                        .into(),
                    )?;
                }
                let ready = g.rng.random_range(5.0..15.0);
                g.at(t + ready, Action::Ready { node, pool, pods });
            }
            Action::Ready { node, pool, pods } => {
                let name = format!("node-{node}");
                for (p, w) in pods {
                    emit(
                        out,
                        &mut n,
                        t,
                        g.pod(p, w, PodPhase::Scheduled, Some(name.clone()), None)
                            .into(),
                    )?;
                    let life = g.rng.random_range(120.0..1800.0);
                    g.at(
                        t + life,
                        Action::PodGone {
                            pod: p,
                            workload: w,
                            node,
                        },
                    );
                }
                g.alive.push((node, pool));
                let life = g.rng.random_range(900.0..3600.0);
                g.at(t + life, Action::NodeGone { node, pool });
            }
            Action::Existing => {
                if !g.alive.is_empty() {
                    let (node, pool) = g.alive[g.rng.random_range(0..g.alive.len())];
                    let candidates: Vec<usize> = (0..cfg.workloads)
                        .filter(|w| g.workload_pool[*w] == pool)
                        .collect();
                    if !candidates.is_empty() {
                        let w = candidates[g.rng.random_range(0..candidates.len())];
                        let p = g.id();
                        let name = Some(format!("node-{node}"));
                        emit(
                            out,
                            &mut n,
                            t,
                            g.pod(p, w, PodPhase::Pending, None, None).into(),
                        )?;
                        emit(
                            out,
                            &mut n,
                            t,
                            g.pod(p, w, PodPhase::Scheduled, name, None).into(),
                        )?;
                        let life = g.rng.random_range(120.0..1800.0);
                        g.at(
                            t + life,
                            Action::PodGone {
                                pod: p,
                                workload: w,
                                node,
                            },
                        );
                    }
                }
                let next = g.rng.random_range(1.0..10.0);
                g.at(t + next, Action::Existing);
            }
            Action::PodGone {
                pod,
                workload,
                node,
            } => {
                if g.alive.iter().any(|(n, _)| *n == node) {
                    let name = Some(format!("node-{node}"));
                    emit(
                        out,
                        &mut n,
                        t,
                        g.pod(pod, workload, PodPhase::Deleted, name, None).into(),
                    )?;
                }
            }
            Action::NodeGone { node, pool } => {
                g.alive.retain(|(n, _)| *n != node);
                let name = format!("node-{node}");
                emit(
                    out,
                    &mut n,
                    t,
                    Node {
                        node: name.clone(),
                        phase: NodePhase::Deleted,
                        pool: Some(format!("pool-{pool}")),
                        labels: labels(pool),
                        taints: None,
                        images: None,
                        image_fs_bytes: None,
                    }
                    .into(),
                )?;
                emit(
                    out,
                    &mut n,
                    t,
                    claim_event(node, pool, ClaimPhase::Deleted, Some(name)),
                )?;
            }
        }
    }
    Ok(n)
}

fn emit<W: Write>(
    out: &mut EventWriter<W>,
    n: &mut u64,
    ts: f64,
    body: event::Body,
) -> event::Result<()> {
    *n += 1;
    out.write(&Event { ts, body })
}

fn claim_event(claim: u64, pool: usize, phase: ClaimPhase, node: Option<String>) -> event::Body {
    NodeClaim {
        node_claim: format!("pool-{pool}-{claim}"),
        pool: format!("pool-{pool}"),
        phase,
        labels: labels(pool),
        taints: None,
        node,
    }
    .into()
}
