//! The `nominated` policy: pull exactly the images of pods that the scheduler
//! has nominated to a NodeClaim or node.
//!
//! It is the most certain signal there is (the first in the design's list),
//! needs no model, and wastes almost nothing, so it is what `pullahead run`
//! uses until the predictive planner is configured.

use std::collections::{HashMap, HashSet};

use crate::clock::Clock;
use crate::event::{Body, ClaimPhase, Event, NodePhase, PodPhase};
use crate::policy::{Policy, PullOrder, Reason, Target};

/// Priority of a nominated pod's image: above every speculative reason.
const PRIORITY: u32 = 1000;

/// Orders the images of nominated pods onto their NodeClaim or node, once
/// per (target, image).
#[derive(Debug, Default)]
pub struct NominatedPolicy {
    ordered: HashMap<Target, HashSet<String>>,
}

impl NominatedPolicy {
    /// A policy with nothing ordered yet.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Policy for NominatedPolicy {
    fn name(&self) -> &str {
        "nominated"
    }

    fn on_event(&mut self, event: &Event, _: &dyn Clock, out: &mut Vec<PullOrder>) {
        match &event.body {
            Body::Pod(p) if p.phase == PodPhase::Nominated => {
                let target = match (&p.node_claim, &p.node) {
                    (Some(c), _) => Target::NodeClaim(c.clone()),
                    (None, Some(n)) => Target::Node(n.clone()),
                    (None, None) => return,
                };
                let seen = self.ordered.entry(target.clone()).or_default();
                for image in &p.images {
                    if seen.insert(image.clone()) {
                        out.push(PullOrder {
                            target: target.clone(),
                            image: image.clone(),
                            priority: PRIORITY,
                            reason: Reason::Nominated,
                            probability: None,
                        });
                    }
                }
            }
            // Forget targets that are gone so the memory stays bounded by
            // the live cluster.
            Body::NodeClaim(c) if c.phase == ClaimPhase::Deleted => {
                self.ordered
                    .remove(&Target::NodeClaim(c.node_claim.clone()));
            }
            Body::Node(n) if n.phase == NodePhase::Deleted => {
                self.ordered.remove(&Target::Node(n.node.clone()));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SimClock;
    use crate::event::{NodeClaim, Pod};

    fn nominated(pod: &str, claim: &str, images: &[&str]) -> Event {
        Event::new(
            1.0,
            Pod {
                pod: pod.into(),
                workload: None,
                images: images.iter().map(|s| s.to_string()).collect(),
                phase: PodPhase::Nominated,
                node: None,
                node_claim: Some(claim.into()),
            },
        )
    }

    #[test]
    fn orders_each_nominated_image_once_per_claim() {
        let mut p = NominatedPolicy::new();
        let clock = SimClock::new(0.0);
        let mut out = Vec::new();
        p.on_event(&nominated("a/1", "c1", &["x:1", "y:1"]), &clock, &mut out);
        p.on_event(&nominated("a/2", "c1", &["x:1", "z:1"]), &clock, &mut out);
        p.on_event(&nominated("a/3", "c2", &["x:1"]), &clock, &mut out);
        let got: Vec<_> = out
            .iter()
            .map(|o| (o.target.to_string(), o.image.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("nodeclaim/c1".to_string(), "x:1"),
                ("nodeclaim/c1".to_string(), "y:1"),
                ("nodeclaim/c1".to_string(), "z:1"),
                ("nodeclaim/c2".to_string(), "x:1"),
            ]
        );
        assert!(out.iter().all(|o| o.reason == Reason::Nominated));
        // A deleted claim is forgotten; a claim of the same name orders anew.
        let deleted = Event::new(
            2.0,
            NodeClaim {
                node_claim: "c1".into(),
                pool: "default".into(),
                phase: ClaimPhase::Deleted,
                labels: Default::default(),
                taints: None,
                node: None,
            },
        );
        out.clear();
        p.on_event(&deleted, &clock, &mut out);
        p.on_event(&nominated("a/4", "c1", &["x:1"]), &clock, &mut out);
        assert_eq!(out.len(), 1);
    }
}
