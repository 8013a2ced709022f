//! Live outcome metrics: how the plans worked out, from what the cluster
//! reports afterwards.
//!
//! - `pullahead_pod_image_lookups_total{outcome}` from kubelet `Pulled`
//!   events: `hit` when kubelet found the image present, `inflight` when it
//!   had to pull an image we had ordered onto that node (our pull had not
//!   landed yet), `miss` when it pulled an image we never ordered there.
//! - `pullahead_wasted_bytes_total` when a node leaves: ordered images that
//!   no pod scheduled there used.
//! - `pullahead_forecast_brier_score` over the last [`BRIER_WINDOW`] resolved
//!   orders that carried a probability.
//!
//! Memory is bounded by the live nodes' plans plus one size per image.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::event::{Body, Event, NodePhase, PodPhase};
use crate::metrics::Metrics;
use crate::policy::PullOrder;

/// Resolved forecasts the Brier score is averaged over.
pub const BRIER_WINDOW: usize = 1000;

/// Most image sizes remembered; beyond it, sizes of new images are not kept
/// (their waste then counts as 0 bytes) rather than growing without bound.
const MAX_SIZES: usize = 200_000;

#[derive(Debug, Default)]
struct NodeOutcome {
    /// Image → the forecast probability it was ordered with.
    ordered: HashMap<String, Option<f64>>,
    used: HashSet<String>,
}

/// Folds events into outcome metrics.
#[derive(Debug)]
pub struct Scorecard {
    metrics: crate::metrics::Metrics,
    sizes: HashMap<String, u64>,
    nodes: HashMap<String, NodeOutcome>,
    brier: VecDeque<f64>,
    brier_sum: f64,
}

impl Scorecard {
    /// A scorecard reporting into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            sizes: HashMap::new(),
            nodes: HashMap::new(),
            brier: VecDeque::with_capacity(BRIER_WINDOW),
            brier_sum: 0.0,
        }
    }

    /// Notes that `order` was placed on `node`.
    pub fn ordered(&mut self, node: &str, order: &PullOrder) {
        self.nodes
            .entry(node.to_string())
            .or_default()
            .ordered
            .entry(order.image.clone())
            .or_insert(order.probability);
    }

    /// Takes one event.
    pub fn observe(&mut self, event: &Event) {
        match &event.body {
            Body::Image(i) if self.sizes.len() < MAX_SIZES || self.sizes.contains_key(&i.image) => {
                self.sizes.insert(i.image.clone(), i.bytes);
            }
            Body::Pod(p) if p.phase == PodPhase::Scheduled => {
                if let Some(n) = p.node.as_ref().and_then(|n| self.nodes.get_mut(n)) {
                    n.used.extend(p.images.iter().cloned());
                }
            }
            Body::Pull(p) => {
                let outcome = if p.cached {
                    "hit"
                } else if self
                    .nodes
                    .get(&p.node)
                    .is_some_and(|n| n.ordered.contains_key(&p.image))
                {
                    "inflight"
                } else {
                    "miss"
                };
                self.metrics
                    .pod_image_lookups
                    .with_label_values(&[outcome])
                    .inc();
            }
            Body::Node(n) if n.phase == NodePhase::Deleted => {
                if let Some(out) = self.nodes.remove(&n.node) {
                    self.resolve(out);
                }
            }
            _ => {}
        }
    }

    fn resolve(&mut self, node: NodeOutcome) {
        let mut wasted = 0;
        for (image, probability) in &node.ordered {
            let used = node.used.contains(image);
            if !used {
                wasted += self.sizes.get(image).copied().unwrap_or(0);
            }
            if let Some(p) = probability {
                let err = (p - f64::from(u8::from(used))).powi(2);
                self.brier.push_back(err);
                self.brier_sum += err;
                if self.brier.len() > BRIER_WINDOW {
                    self.brier_sum -= self.brier.pop_front().unwrap_or(0.0);
                }
            }
        }
        self.metrics.wasted_bytes.inc_by(wasted);
        if !self.brier.is_empty() {
            self.metrics
                .forecast_brier_score
                .set(self.brier_sum / self.brier.len() as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Image, Node, Pod, Pull};
    use crate::policy::{Reason, Target};

    fn order(image: &str, p: f64) -> PullOrder {
        PullOrder {
            target: Target::Node("n1".into()),
            image: image.into(),
            priority: 1,
            reason: Reason::HpaTrend,
            probability: Some(p),
        }
    }

    #[test]
    fn waste_brier_and_lookups_follow_outcomes() {
        let m = Metrics::new().unwrap();
        let mut s = Scorecard::new(m.clone());
        for (image, bytes) in [("a:1", 100), ("b:1", 40)] {
            s.observe(&Event::new(
                0.0,
                Image {
                    image: image.into(),
                    bytes,
                    layers: None,
                },
            ));
        }
        s.ordered("n1", &order("a:1", 0.9));
        s.ordered("n1", &order("b:1", 0.2));
        s.observe(&Event::new(
            1.0,
            Pod {
                pod: "ns/p".into(),
                workload: None,
                images: vec!["a:1".into(), "c:1".into()],
                phase: PodPhase::Scheduled,
                node: Some("n1".into()),
                node_claim: None,
            },
        ));
        let pull = |image: &str, cached| {
            Event::new(
                2.0,
                Pull {
                    node: "n1".into(),
                    image: image.into(),
                    bytes: None,
                    seconds: None,
                    cached,
                },
            )
        };
        s.observe(&pull("a:1", true));
        s.observe(&pull("b:1", false));
        s.observe(&pull("c:1", false));
        for outcome in ["hit", "inflight", "miss"] {
            assert_eq!(
                m.pod_image_lookups.with_label_values(&[outcome]).get(),
                1,
                "{outcome}"
            );
        }
        s.observe(&Event::new(
            3.0,
            Node {
                node: "n1".into(),
                phase: NodePhase::Deleted,
                pool: None,
                labels: Default::default(),
                taints: None,
                images: None,
                image_fs_bytes: None,
            },
        ));
        // b:1 was never used: 40 bytes wasted.
        assert_eq!(m.wasted_bytes.get(), 40);
        // ((0.9-1)^2 + (0.2-0)^2) / 2 = 0.025
        assert!((m.forecast_brier_score.get() - 0.025).abs() < 1e-12);
    }
}
