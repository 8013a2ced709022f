//! The plan book: what every node is planned to get, folded from a policy's
//! orders by the rules `run` writes NodePrefetch objects by and `replay`
//! simulates by.
//!
//! - An order aimed at a NodeClaim is parked until the claim names its node,
//!   at most `cap` orders a claim (the rest are dropped and counted).
//! - An image ordered twice onto one node keeps its highest priority (and
//!   that order's reason); the time of its first order stays.
//! - A node's plan is its `cap` best images, by priority, then by name: a
//!   better order admits its image and evicts the worst one.
//! - A deleted node's plan, and a deleted claim's parked orders, go.
//! - A plan whose Node is not visible yet (its NodeClaim named it first) is
//!   kept, marked awaiting its node, until the Node shows up or the claim or
//!   Node is deleted; at most [`MAX_AWAITING_NODE`] such plans.
//!
//! The book is pure: no clock, no I/O; it tells its caller what changed.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};

use crate::event::{Body, ClaimPhase, Event, NodePhase};
use crate::policy::{PullOrder, Reason, Target};

/// Most plans kept for nodes whose Node object is not visible yet.
pub const MAX_AWAITING_NODE: usize = 10_000;

/// What an event did to the book, besides the NodeClaim → node map.
#[derive(Debug, Default, PartialEq)]
pub struct Observed {
    /// The orders a claim had parked, now that it names its node, for the
    /// caller to place: their plan counts from now, when the node is known.
    pub released: Vec<PullOrder>,
    /// A node whose plan awaited its Node, which is visible now.
    pub visible: Option<String>,
    /// A node whose plan went (the Node, or the claim of an awaited node,
    /// was deleted).
    pub forgotten: Option<String>,
}

/// One image planned onto a node.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    /// The highest priority it was ordered with.
    pub priority: u32,
    /// The reason of that order.
    pub reason: Reason,
    /// When it was first ordered (seconds, on the planner's clock).
    pub ordered_at: f64,
}

/// The rank of an image in a node's plan: priority first, then name.
type Rank = (Reverse<u32>, String);

/// The plan of one node.
#[derive(Debug, Default)]
struct NodePlan {
    images: HashMap<String, Wanted>,
    /// The `cap` best ranks: the images the node is to get.
    top: BTreeSet<Rank>,
    /// The other ranks, every one worse than each in `top`.
    rest: BTreeSet<Rank>,
}

/// What placing one order did to the plan of a node.
#[derive(Clone, Debug, PartialEq)]
pub enum Placed {
    /// Parked on its NodeClaim, whose node is not known yet.
    Parked,
    /// Dropped: its NodeClaim already has `cap` orders parked.
    ParkFull,
    /// The node's plan did not change: the image was ordered onto it with
    /// at least this priority already.
    Unchanged {
        /// The node.
        node: String,
    },
    /// The node's plan did not change: the node has `cap` better images.
    Capped {
        /// The node.
        node: String,
    },
    /// The node's plan changed.
    Changed(Change),
}

/// A change to a node's plan: the image ordered is among its best `cap`
/// now, new or with a higher priority.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The node.
    pub node: String,
    /// The image ordered.
    pub image: String,
    /// Its priority now.
    pub priority: u32,
    /// The image pushed out of the node's best `cap` by this one.
    pub evicted: Option<String>,
}

/// Per-node plans and parked claim orders. See the module docs.
#[derive(Debug)]
pub struct PlanBook {
    cap: usize,
    plans: HashMap<String, NodePlan>,
    /// NodeClaim → its node once known.
    claim_node: HashMap<String, String>,
    /// NodeClaim → orders waiting for its node.
    parked: HashMap<String, Vec<PullOrder>>,
    /// Nodes whose plan waits for the Node object to be visible.
    awaiting: HashSet<String>,
}

impl PlanBook {
    /// An empty book keeping at most `cap` images a node (at least one).
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            plans: HashMap::new(),
            claim_node: HashMap::new(),
            parked: HashMap::new(),
            awaiting: HashSet::new(),
        }
    }

    /// Most images a node's plan holds.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Folds `order`, made at `now`, into its node's plan, or parks it.
    pub fn place(&mut self, order: &PullOrder, now: f64) -> Placed {
        let node = match &order.target {
            Target::Node(n) => n.clone(),
            Target::NodeClaim(c) => match self.claim_node.get(c) {
                Some(n) => n.clone(),
                None => {
                    let parked = self.parked.entry(c.clone()).or_default();
                    if parked.len() < self.cap {
                        parked.push(order.clone());
                        return Placed::Parked;
                    }
                    return Placed::ParkFull;
                }
            },
        };
        let cap = self.cap;
        let plan = self.plans.entry(node.clone()).or_default();
        let rank = |image: &str, priority: u32| (Reverse(priority), image.to_string());
        match plan.images.get_mut(&order.image) {
            Some(w) if w.priority >= order.priority => return Placed::Unchanged { node },
            Some(w) => {
                let old = rank(&order.image, w.priority);
                if !plan.top.remove(&old) {
                    plan.rest.remove(&old);
                }
                w.priority = order.priority;
                w.reason = order.reason;
            }
            None => {
                plan.images.insert(
                    order.image.clone(),
                    Wanted {
                        priority: order.priority,
                        reason: order.reason,
                        ordered_at: now,
                    },
                );
            }
        }
        let new = rank(&order.image, order.priority);
        let mut evicted = None;
        let planned = if plan.top.len() < cap {
            plan.top.insert(new);
            true
        } else if plan.top.last().is_some_and(|worst| new < *worst) {
            if let Some(worst) = plan.top.pop_last() {
                evicted = Some(worst.1.clone());
                plan.rest.insert(worst);
            }
            plan.top.insert(new);
            true
        } else {
            plan.rest.insert(new);
            false
        };
        if !planned {
            return Placed::Capped { node };
        }
        Placed::Changed(Change {
            node,
            image: order.image.clone(),
            priority: order.priority,
            evicted,
        })
    }

    /// Keeps the NodeClaim → node map and forgets what left; see
    /// [`Observed`].
    pub fn observe(&mut self, event: &Event) -> Observed {
        let mut seen = Observed::default();
        match &event.body {
            Body::NodeClaim(c) if c.phase == ClaimPhase::Deleted => {
                if let Some(node) = self.claim_node.remove(&c.node_claim)
                    && self.awaiting.contains(&node)
                {
                    // Its node never showed up: the plan has nowhere to go.
                    self.forget(&node);
                    seen.forgotten = Some(node);
                }
                self.parked.remove(&c.node_claim);
            }
            Body::NodeClaim(c) => {
                if let Some(node) = &c.node {
                    self.claim_node.insert(c.node_claim.clone(), node.clone());
                    seen.released = self.parked.remove(&c.node_claim).unwrap_or_default();
                }
            }
            Body::Node(n) if n.phase == NodePhase::Deleted => {
                self.forget(&n.node);
                self.claim_node.retain(|_, node| node != &n.node);
                seen.forgotten = Some(n.node.clone());
            }
            Body::Node(n) if self.awaiting.remove(&n.node) => {
                seen.visible = Some(n.node.clone());
            }
            _ => {}
        }
        seen
    }

    /// Forgets `node`'s plan (its object is gone).
    pub fn forget(&mut self, node: &str) {
        self.plans.remove(node);
        self.awaiting.remove(node);
    }

    /// Marks `node`'s plan as awaiting its Node object. Returns false, and
    /// forgets the plan, when [`MAX_AWAITING_NODE`] others await already.
    pub fn await_node(&mut self, node: &str) -> bool {
        if !self.awaiting.contains(node) && self.awaiting.len() >= MAX_AWAITING_NODE {
            self.forget(node);
            return false;
        }
        self.awaiting.insert(node.to_string());
        true
    }

    /// `node`'s plan was written: its Node is there. Returns whether the
    /// plan had been awaiting it.
    pub fn node_written(&mut self, node: &str) -> bool {
        self.awaiting.remove(node)
    }

    /// How many plans await their Node.
    pub fn awaiting_len(&self) -> usize {
        self.awaiting.len()
    }

    /// Whether `node` has a plan.
    pub fn has(&self, node: &str) -> bool {
        self.plans.contains_key(node)
    }

    /// The nodes with a plan, in no particular order.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.plans.keys().map(String::as_str)
    }

    /// How many nodes have a plan.
    pub fn len(&self) -> usize {
        self.plans.len()
    }

    /// Whether no node has a plan.
    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }

    /// `node`'s planned images, best first: at most `cap`.
    pub fn planned(&self, node: &str) -> Vec<(&str, &Wanted)> {
        let Some(plan) = self.plans.get(node) else {
            return Vec::new();
        };
        plan.top
            .iter()
            .filter_map(|(_, image)| {
                plan.images
                    .get_key_value(image)
                    .map(|(k, w)| (k.as_str(), w))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(target: Target, image: &str, priority: u32) -> PullOrder {
        PullOrder {
            target,
            image: image.into(),
            priority,
            reason: Reason::Popular,
            probability: None,
        }
    }

    fn node(image: &str, priority: u32) -> PullOrder {
        order(Target::Node("n".into()), image, priority)
    }

    fn planned(b: &PlanBook) -> Vec<(String, u32)> {
        b.planned("n")
            .into_iter()
            .map(|(i, w)| (i.to_string(), w.priority))
            .collect()
    }

    /// The plan is what sorting every order by priority (then name), each
    /// image at its best, and keeping `cap` gives, whatever the order of
    /// arrival; each change names what it admitted and evicted.
    #[test]
    fn the_plan_is_the_cap_best_images_by_priority() {
        let mut b = PlanBook::new(2);
        assert!(matches!(b.place(&node("a", 1), 0.0), Placed::Changed(_)));
        assert!(matches!(b.place(&node("b", 1), 0.0), Placed::Changed(_)));
        // Full, and not better than the worst.
        assert_eq!(
            b.place(&node("c", 1), 0.0),
            Placed::Capped { node: "n".into() }
        );
        // Better: admitted, and b (the worst by name at equal priority) goes.
        let Placed::Changed(c) = b.place(&node("d", 5), 0.0) else {
            panic!("d should be planned");
        };
        assert_eq!(c.evicted.as_deref(), Some("b"));
        // A raise brings c back in over a.
        let Placed::Changed(c) = b.place(&node("c", 3), 0.0) else {
            panic!("c should be planned");
        };
        assert_eq!(c.evicted.as_deref(), Some("a"));
        // A lower priority again changes nothing.
        assert_eq!(
            b.place(&node("d", 2), 0.0),
            Placed::Unchanged { node: "n".into() }
        );
        assert_eq!(planned(&b), vec![("d".into(), 5), ("c".into(), 3)]);
    }

    #[test]
    fn claim_orders_park_until_the_claim_names_its_node() {
        let mut b = PlanBook::new(1);
        let claim = || Target::NodeClaim("c1".into());
        assert_eq!(b.place(&order(claim(), "a", 1), 3.0), Placed::Parked);
        assert_eq!(b.place(&order(claim(), "b", 1), 3.0), Placed::ParkFull);
        let lines = r#"{"ts":5,"type":"node_claim","node_claim":"c1","pool":"p","phase":"registered","labels":{},"node":"n"}"#;
        let e = crate::event::EventReader::new(lines.as_bytes(), "t")
            .next()
            .unwrap()
            .unwrap();
        let released = b.observe(&e).released;
        assert_eq!(released.len(), 1);
        for o in released {
            assert!(matches!(b.place(&o, 5.0), Placed::Changed(_)));
        }
        assert_eq!(b.planned("n")[0].1.ordered_at, 5.0);
        // Now the claim's orders go straight to the node.
        assert!(matches!(
            b.place(&order(claim(), "z", 9), 6.0),
            Placed::Changed(_)
        ));
        assert_eq!(planned(&b), vec![("z".into(), 9)]);
    }

    fn event(line: &str) -> Event {
        crate::event::EventReader::new(line.as_bytes(), "t")
            .next()
            .unwrap()
            .unwrap()
    }

    /// A plan awaiting its Node is kept until the Node shows up (which
    /// says so once), and goes when the claim that named the node is
    /// deleted first.
    #[test]
    fn a_plan_awaits_its_node_until_it_shows_up_or_its_claim_goes() {
        let mut b = PlanBook::new(4);
        let claim = r#"{"ts":1,"type":"node_claim","node_claim":"c1","pool":"p","phase":"registered","labels":{},"node":"n"}"#;
        b.observe(&event(claim));
        b.place(&node("a", 1), 1.0);
        assert!(b.await_node("n"));
        assert_eq!(b.awaiting_len(), 1);
        let ready = r#"{"ts":2,"type":"node","node":"n","phase":"ready","labels":{}}"#;
        assert_eq!(b.observe(&event(ready)).visible.as_deref(), Some("n"));
        assert_eq!(b.observe(&event(ready)).visible, None);
        assert_eq!(b.awaiting_len(), 0);
        assert!(b.has("n"));

        assert!(b.await_node("n"));
        let gone = r#"{"ts":3,"type":"node_claim","node_claim":"c1","pool":"p","phase":"deleted","labels":{}}"#;
        assert_eq!(b.observe(&event(gone)).forgotten.as_deref(), Some("n"));
        assert!(!b.has("n"));
        assert_eq!(b.awaiting_len(), 0);
    }

    /// Past the bound a plan that would await its node is forgotten.
    #[test]
    fn awaiting_plans_are_bounded() {
        let mut b = PlanBook::new(1);
        for i in 0..MAX_AWAITING_NODE {
            assert!(b.await_node(&format!("n{i}")));
        }
        b.place(&node("a", 1), 0.0);
        assert!(!b.await_node("n"));
        assert!(!b.has("n"));
        assert!(b.await_node("n0"), "one already awaiting stays");
        assert_eq!(b.awaiting_len(), MAX_AWAITING_NODE);
    }
}
