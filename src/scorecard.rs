//! Live outcome metrics: how the plans worked out, from what the cluster
//! reports afterwards.
//!
//! - `pullahead_pod_image_lookups_total{outcome}` from kubelet `Pulled`
//!   events: `hit` when kubelet found the image present, `inflight` when it
//!   had to pull an image we had ordered onto that node (our pull had not
//!   landed yet), `miss` when it pulled an image we never ordered there.
//! - `pullahead_wasted_bytes_total` when a node leaves: ordered images that
//!   no pod scheduled there used. Sizes come from `image` events and, in a
//!   live cluster (which has none), from the agents' `NodePrefetch` status
//!   ([`Scorecard::reported`]).
//! - `pullahead_prefetch_lead_time_seconds`: from an image first reported
//!   present on a node to the first pod using it being bound there.
//! - `pullahead_forecast_brier_score` over the last [`BRIER_WINDOW`] resolved
//!   orders that carried a probability; NaN until one has resolved.
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
    /// Image → when it was first reported present, until a pod uses it.
    landed: HashMap<String, f64>,
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

    /// Takes what `node`'s agent reports present (image, bytes) at `now`:
    /// the sizes for the waste, the landing times for the lead time.
    pub fn reported(&mut self, node: &str, present: &[(String, u64)], now: f64) {
        for (image, bytes) in present {
            if self.sizes.len() < MAX_SIZES || self.sizes.contains_key(image) {
                self.sizes.insert(image.clone(), *bytes);
            }
        }
        // Only nodes we ordered onto: memory stays bounded by the plans.
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        for (image, _) in present {
            if n.ordered.contains_key(image) && !n.used.contains(image) {
                n.landed.entry(image.clone()).or_insert(now);
            }
        }
    }

    /// Takes one event.
    pub fn observe(&mut self, event: &Event) {
        match &event.body {
            Body::Image(i) if self.sizes.len() < MAX_SIZES || self.sizes.contains_key(&i.image) => {
                self.sizes.insert(i.image.clone(), i.bytes);
            }
            Body::Pod(p) if p.phase == PodPhase::Scheduled => {
                if let Some(n) = p.node.as_ref().and_then(|n| self.nodes.get_mut(n)) {
                    for image in &p.images {
                        // A pod bound before the image landed has no lead.
                        if let Some(at) = n.landed.remove(image) {
                            self.metrics
                                .prefetch_lead_time
                                .observe((event.ts - at).max(0.0));
                        }
                    }
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

    fn scheduled(ts: f64, node: &str, images: &[&str]) -> Event {
        Event::new(
            ts,
            Pod {
                pod: "ns/p".into(),
                workload: None,
                images: images.iter().map(|s| s.to_string()).collect(),
                phase: PodPhase::Scheduled,
                node: Some(node.into()),
                node_claim: None,
            },
        )
    }

    fn deleted(ts: f64, node: &str) -> Event {
        Event::new(
            ts,
            Node {
                node: node.into(),
                phase: NodePhase::Deleted,
                pool: None,
                labels: Default::default(),
                taints: None,
                images: None,
            },
        )
    }

    /// A live cluster has no `image` events: the sizes the agents report
    /// make an unused prefetch count as waste, and landing times give the
    /// lead time. The Brier score is NaN until a probability resolves.
    #[test]
    fn agent_reports_give_waste_and_lead_time() {
        let m = Metrics::new().unwrap();
        assert!(m.forecast_brier_score.get().is_nan());
        let mut s = Scorecard::new(m.clone());
        let nominated = |image: &str| PullOrder {
            probability: None,
            reason: Reason::Nominated,
            ..order(image, 0.0)
        };
        s.ordered("n1", &nominated("used:1"));
        s.ordered("n1", &nominated("unused:1"));
        s.reported(
            "n1",
            &[("used:1".into(), 700), ("unused:1".into(), 300)],
            10.0,
        );
        s.observe(&scheduled(14.5, "n1", &["used:1"]));
        assert_eq!(m.prefetch_lead_time.get_sample_count(), 1);
        assert!((m.prefetch_lead_time.get_sample_sum() - 4.5).abs() < 1e-9);
        s.observe(&deleted(20.0, "n1"));
        assert_eq!(m.wasted_bytes.get(), 300);
        assert!(
            m.forecast_brier_score.get().is_nan(),
            "no order carried a probability"
        );
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
            },
        ));
        // b:1 was never used: 40 bytes wasted.
        assert_eq!(m.wasted_bytes.get(), 40);
        assert!(m.forecast_brier_score.get().is_finite());
        // ((0.9-1)^2 + (0.2-0)^2) / 2 = 0.025
        assert!((m.forecast_brier_score.get() - 0.025).abs() < 1e-12);
    }
}
