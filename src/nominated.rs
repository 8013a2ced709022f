//! The `nominated` policy: pull exactly the images of pods that the scheduler
//! has nominated to a NodeClaim or node.
//!
//! It is the most certain signal there is (the first in the design's list),
//! needs no model, and wastes almost nothing, so it is what `pullahead run`
//! uses until the predictive planner is configured.
//!
//! A CapacityBuffer's room is as certain: a new NodeClaim or node that takes
//! a chunk of a short buffer ([`BufferBook`]) gets the buffer's template
//! images, with reason `buffer`.

use std::collections::{HashMap, HashSet};

use crate::clock::Clock;
use crate::event::{Body, ClaimPhase, Event, NodePhase, PodPhase, Taint};
use crate::forecast::buffer::{BufferBook, Holder};
use crate::policy::{Policy, PullOrder, Reason, Target};
use crate::state::{ClusterState, NodeInfo};

/// Priority of a nominated pod's image: above every speculative reason.
const PRIORITY: u32 = 1000;

/// Orders the images of nominated pods onto their NodeClaim or node, once
/// per (target, image).
#[derive(Debug, Default)]
pub struct NominatedPolicy {
    ordered: HashMap<Target, HashSet<String>>,
    buffers: BufferBook,
    /// Only its interners: the names the buffer book refers to by id.
    names: ClusterState,
    /// Claims that took a chunk, with their node once it is known.
    claim_node: HashMap<String, Option<String>>,
}

/// Priority of a buffer's image: just below a nominated pod's, whose pod
/// exists already.
const BUFFER_PRIORITY: u32 = PRIORITY - 1;

impl NominatedPolicy {
    /// A policy with nothing ordered yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Orders `images` onto `target`, each once.
    fn order(&mut self, target: Target, images: Vec<String>, out: &mut Vec<PullOrder>) {
        let seen = self.ordered.entry(target.clone()).or_default();
        for image in images {
            if seen.insert(image.clone()) {
                out.push(PullOrder {
                    target: target.clone(),
                    image,
                    priority: BUFFER_PRIORITY,
                    reason: Reason::Buffer,
                    probability: None,
                });
            }
        }
    }

    /// Lets a new claim or node take chunks of short buffers, and orders
    /// the images of those it holds.
    fn take(
        &mut self,
        holder: Holder,
        labels: &std::collections::BTreeMap<String, String>,
        taints: Option<&Vec<Taint>>,
        target: Target,
        out: &mut Vec<PullOrder>,
    ) {
        let info = NodeInfo {
            labels: labels.clone(),
            taints: taints.cloned().unwrap_or_default(),
            ..Default::default()
        };
        let mut ids = Vec::new();
        self.buffers
            .signals(holder, &info, |imgs| ids.extend_from_slice(imgs));
        let images = ids
            .into_iter()
            .map(|i| self.names.images.name(i).to_string())
            .collect();
        self.order(target, images, out);
    }

    /// The buffer book's side of an event.
    fn buffer_event(&mut self, event: &Event, out: &mut Vec<PullOrder>) {
        match &event.body {
            Body::Buffer(b) => self.buffers.apply(b, &mut self.names),
            Body::NodeClaim(c) => {
                let id = self.names.claim_names.intern(&c.node_claim);
                match c.phase {
                    ClaimPhase::Deleted => {
                        self.buffers.released(Holder::Claim(id));
                        self.claim_node.remove(&c.node_claim);
                        // Nothing names the id now: reused, so names stay as
                        // many as the live claims.
                        if let Some(id) = self.names.claim_names.remove(&c.node_claim) {
                            self.names.claim_names.release(id);
                        }
                    }
                    ClaimPhase::Created => {
                        let target = Target::NodeClaim(c.node_claim.clone());
                        self.take(Holder::Claim(id), &c.labels, c.taints.as_ref(), target, out);
                        self.claim_node.insert(c.node_claim.clone(), None);
                    }
                    _ => {
                        if let (Some(node), Some(slot)) =
                            (&c.node, self.claim_node.get_mut(&c.node_claim))
                            && slot.is_none()
                        {
                            *slot = Some(node.clone());
                            let n = self.names.node_names.intern(node);
                            self.buffers.moved(Holder::Claim(id), Holder::Node(n));
                            // The claim's orders reach the node anyway.
                            let done = self
                                .ordered
                                .get(&Target::NodeClaim(c.node_claim.clone()))
                                .cloned()
                                .unwrap_or_default();
                            self.ordered
                                .entry(Target::Node(node.clone()))
                                .or_default()
                                .extend(done);
                        }
                    }
                }
            }
            Body::Node(n) => {
                let id = self.names.node_names.intern(&n.node);
                match n.phase {
                    NodePhase::Deleted => {
                        self.buffers.released(Holder::Node(id));
                        if let Some(id) = self.names.node_names.remove(&n.node) {
                            self.names.node_names.release(id);
                        }
                    }
                    NodePhase::Registered => {
                        let target = Target::Node(n.node.clone());
                        self.take(Holder::Node(id), &n.labels, n.taints.as_ref(), target, out);
                    }
                    NodePhase::Ready => {}
                }
            }
            Body::Pod(p) if p.phase == PodPhase::Scheduled => {
                if let Some(node) = p.node.as_deref().and_then(|n| self.names.node_names.get(n)) {
                    let workload = p
                        .workload
                        .as_deref()
                        .and_then(|w| self.names.workload_names.get(w));
                    let images: Vec<u32> = p
                        .images
                        .iter()
                        .filter_map(|i| self.names.images.get(i))
                        .collect();
                    self.buffers.bound(node, workload, &images);
                }
            }
            _ => {}
        }
    }
}

impl Policy for NominatedPolicy {
    fn name(&self) -> &str {
        "nominated"
    }

    fn on_event(&mut self, event: &Event, _: &dyn Clock, out: &mut Vec<PullOrder>) {
        if !self.buffers.is_empty() || matches!(event.body, Body::Buffer(_)) {
            self.buffer_event(event, out);
        }
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

    /// A claim made while a buffer is short gets the template's images,
    /// once, and its node gets them no second time; a later node in the
    /// pool gets nothing while the buffer is met.
    #[test]
    fn a_short_buffer_orders_its_template_onto_the_next_claim() {
        let lines = r#"{"ts":0,"type":"buffer","buffer":"a/spare","replicas":1,"images":["r/chunk:1"],"node_selector":{"pool":"p"}}
{"ts":1,"type":"node_claim","node_claim":"c1","pool":"p","phase":"created","labels":{"pool":"p"}}
{"ts":2,"type":"node_claim","node_claim":"c1","pool":"p","phase":"registered","labels":{"pool":"p"},"node":"n1"}
{"ts":2,"type":"node","node":"n1","phase":"registered","pool":"p","labels":{"pool":"p"}}
{"ts":3,"type":"node","node":"n2","phase":"registered","pool":"p","labels":{"pool":"p"}}
"#;
        let mut p = NominatedPolicy::new();
        let clock = SimClock::new(0.0);
        let mut out = Vec::new();
        for e in crate::event::EventReader::new(lines.as_bytes(), "t") {
            p.on_event(&e.unwrap(), &clock, &mut out);
        }
        let got: Vec<_> = out
            .iter()
            .map(|o| (o.target.to_string(), o.image.as_str(), o.reason))
            .collect();
        assert_eq!(
            got,
            vec![("nodeclaim/c1".to_string(), "r/chunk:1", Reason::Buffer)]
        );
    }
}
