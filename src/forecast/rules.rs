//! The `rules` policy: the simple rule that the learned planner has to
//! beat. On a NodeClaim (at creation) and on a node (at registration) it
//! orders the images of the pods nominated to it, of the unbound pods of
//! its pool's pending scale-ups, of the DaemonSets that fit it, and every
//! image that at least a given share of the pool's past new nodes needed
//! within the horizon. No model, no threshold to fit beyond that share.
//!
//! Like the planner it reads only the events so far (through
//! [`ClusterState`]), so it is causal, and it breaks ties by image name, so
//! it is deterministic.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::clock::Clock;
use crate::event::{Body, ClaimPhase, Event, NodePhase, PodPhase};
use crate::policy::{Policy, PullOrder, Reason, Target};
use crate::state::{ClusterState, ImageId, NodeInfo};

/// The share of a pool's past new nodes that must have needed an image for
/// `rules` to pull it onto the pool's next node.
pub const DEFAULT_SHARE: f64 = 0.7;

/// How long after its registration a node's bindings count as what a new
/// node of its pool needs, seconds: the planner's horizon.
const HORIZON_SECONDS: f64 = 3600.0;

/// Where an order goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Claim(u32),
    Node(u32),
}

/// Which images a pool's new nodes needed within the horizon.
#[derive(Debug, Default)]
struct PoolHistory {
    new_nodes: u64,
    needs: HashMap<ImageId, u64>,
}

/// The `rules` policy.
#[derive(Debug)]
pub struct RulesPolicy {
    share: f64,
    state: ClusterState,
    history: HashMap<String, PoolHistory>,
    /// Nodes younger than the horizon: pool, registration time, images
    /// counted.
    fresh: HashMap<u32, (String, f64, HashSet<ImageId>)>,
    ordered: HashMap<Key, HashSet<ImageId>>,
}

impl RulesPolicy {
    /// A policy that pulls history images at least `share` of the pool's
    /// past new nodes needed. A share above 1 pulls no history image.
    pub fn new(share: f64) -> Self {
        Self {
            share,
            state: ClusterState::default(),
            history: HashMap::default(),
            fresh: HashMap::default(),
            ordered: HashMap::default(),
        }
    }

    /// The images the rule picks for `info`, announced by `claim` if any,
    /// each with its reason and priority.
    fn picks(&self, info: &NodeInfo, claim: Option<u32>) -> Vec<(ImageId, Reason, u32)> {
        let st = &self.state;
        let mut picks = Vec::new();
        if let Some(pods) = claim.and_then(|c| st.nominated_to_claim.get(&c)) {
            for p in pods.iter().filter_map(|&p| st.pod(p)) {
                picks.extend(p.images.iter().map(|&i| (i, Reason::Nominated, 1000)));
            }
        }
        for up in st.scale_ups.get(&info.pool).into_iter().flatten() {
            for p in up.pods.iter().filter_map(|&p| st.pod(p)) {
                if p.node.is_none() {
                    picks.extend(p.images.iter().map(|&i| (i, Reason::ScaleUp, 900)));
                }
            }
        }
        for w in st.daemonsets.iter().filter_map(|w| st.workloads.get(w)) {
            if w.fits(&info.labels, &info.taints) {
                picks.extend(w.images.iter().map(|&i| (i, Reason::Daemonset, 800)));
            }
        }
        if let Some(h) = self.history.get(&info.pool)
            && h.new_nodes > 0
        {
            for (&i, &n) in &h.needs {
                let share = n as f64 / h.new_nodes as f64;
                if share >= self.share {
                    picks.push((i, Reason::History, 100 + (share * 100.0) as u32));
                }
            }
        }
        // Strongest reason first, then by name, so that the order of the
        // hash tables above never shows.
        let names = &st.images;
        picks.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| names.cmp_names(a.0, b.0)));
        picks
    }

    /// Orders the rule's picks for `key` that are neither on it nor ordered.
    fn plan(&mut self, key: Key, claim: Option<u32>, out: &mut Vec<PullOrder>) {
        let info = match key {
            Key::Claim(c) => self.state.claims.get(&c),
            Key::Node(n) => self.state.nodes.get(&n),
        };
        let Some(info) = info else {
            return;
        };
        let picks = self.picks(info, claim);
        self.emit(key, picks, out);
    }

    /// Orders `picks` for `key`, each image once.
    fn emit(&mut self, key: Key, picks: Vec<(ImageId, Reason, u32)>, out: &mut Vec<PullOrder>) {
        let info = match key {
            Key::Claim(c) => self.state.claims.get(&c),
            Key::Node(n) => self.state.nodes.get(&n),
        };
        let done = self.ordered.entry(key).or_default();
        let mut target = None;
        for (image, reason, priority) in picks {
            if info.is_some_and(|i| i.images.contains(&image)) || !done.insert(image) {
                continue;
            }
            let target = target
                .get_or_insert_with(|| match key {
                    Key::Claim(c) => Target::NodeClaim(self.state.claim_names.name(c).to_string()),
                    Key::Node(n) => Target::Node(self.state.node_names.name(n).to_string()),
                })
                .clone();
            out.push(PullOrder {
                target,
                image: self.state.images.name(image).to_string(),
                priority,
                reason,
                probability: None,
            });
        }
    }

    /// Counts the images of `pod`, just bound to `node`, in the pool's
    /// history while the node is younger than the horizon.
    fn learn_binding(&mut self, node: u32, pod: u32, now: f64) {
        let Some((pool, since, counted)) = self.fresh.get_mut(&node) else {
            return;
        };
        if now - *since > HORIZON_SECONDS {
            self.fresh.remove(&node);
            return;
        }
        let (Some(info), Some(hist)) = (self.state.pod(pod), self.history.get_mut(pool.as_str()))
        else {
            return;
        };
        for &i in info.images.iter() {
            if counted.insert(i) {
                *hist.needs.entry(i).or_default() += 1;
            }
        }
    }
}

impl Policy for RulesPolicy {
    fn name(&self) -> &str {
        "rules"
    }

    fn on_event(&mut self, event: &Event, clock: &dyn Clock, out: &mut Vec<PullOrder>) {
        let now = clock.now();
        self.state.apply(event);
        let ids = self.state.resolved;
        match &event.body {
            Body::NodeClaim(c) => {
                let Some(id) = ids.claim else {
                    return;
                };
                match c.phase {
                    ClaimPhase::Created => self.plan(Key::Claim(id), Some(id), out),
                    ClaimPhase::Deleted => {
                        self.ordered.remove(&Key::Claim(id));
                    }
                    _ => {}
                }
            }
            Body::Pod(p) if p.phase == PodPhase::Nominated => {
                let Some(pod) = ids.pod.and_then(|p| self.state.pod(p)) else {
                    return;
                };
                let images: Vec<_> = pod
                    .images
                    .iter()
                    .map(|&i| (i, Reason::Nominated, 1000))
                    .collect();
                let key = match (ids.claim, ids.node) {
                    (Some(c), _) => match self.state.claim_node.get(&c) {
                        Some(&n) if self.state.nodes.contains_key(&n) => Key::Node(n),
                        _ => Key::Claim(c),
                    },
                    (None, Some(n)) => Key::Node(n),
                    (None, None) => return,
                };
                self.emit(key, images, out);
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
                        let claim = self
                            .state
                            .claim_node
                            .iter()
                            .find(|(_, node)| **node == id)
                            .map(|(c, _)| *c);
                        // What the claim was given is on its way here.
                        if let Some(done) = claim.and_then(|c| self.ordered.remove(&Key::Claim(c)))
                        {
                            self.ordered.entry(Key::Node(id)).or_default().extend(done);
                        }
                        self.plan(Key::Node(id), claim, out);
                        self.history.entry(pool.clone()).or_default().new_nodes += 1;
                        self.state.consume_scale_up(&pool);
                        self.fresh.insert(id, (pool, now, HashSet::default()));
                    }
                    NodePhase::Deleted => {
                        self.ordered.remove(&Key::Node(id));
                        self.fresh.remove(&id);
                    }
                    NodePhase::Ready => {}
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
    use crate::event::EventReader;

    fn orders(lines: &str, share: f64) -> Vec<(String, String, Reason)> {
        let mut p = RulesPolicy::new(share);
        let mut out = Vec::new();
        for e in EventReader::new(lines.as_bytes(), "t") {
            let e = e.unwrap();
            p.on_event(&e, &SimClock::new(e.ts), &mut out);
        }
        out.into_iter()
            .map(|o| (o.target.to_string(), o.image, o.reason))
            .collect()
    }

    const DS: &str = r#"{"v":1,"ts":0,"type":"workload","workload":"kube-system/log","kind":"DaemonSet","images":["log:1"]}
{"v":1,"ts":0,"type":"workload","workload":"gpu/agent","kind":"DaemonSet","images":["gpu-agent:1"],"node_selector":{"gpu":"yes"}}
"#;

    #[test]
    fn a_claim_gets_its_nominated_pods_and_the_daemonsets_that_fit_once() {
        let lines = format!(
            "{DS}{}",
            r#"{"v":1,"ts":1,"type":"node_claim","node_claim":"c1","pool":"p","phase":"created"}
{"v":1,"ts":2,"type":"pod","pod":"a/w-1","images":["web:1","log:1"],"phase":"nominated","node_claim":"c1"}
{"v":1,"ts":3,"type":"node_claim","node_claim":"c1","pool":"p","phase":"registered","node":"n1"}
{"v":1,"ts":3,"type":"node","node":"n1","pool":"p","phase":"registered"}
"#
        );
        let got = orders(&lines, 0.7);
        assert_eq!(
            got,
            vec![
                ("nodeclaim/c1".into(), "log:1".into(), Reason::Daemonset),
                ("nodeclaim/c1".into(), "web:1".into(), Reason::Nominated),
            ]
        );
    }

    #[test]
    fn history_images_need_the_share_of_past_new_nodes() {
        // Of n3's two past nodes, both needed web:1 and one needed batch:1.
        let base = r#"{"v":1,"ts":0,"type":"node","node":"n1","pool":"p","phase":"registered"}
{"v":1,"ts":10,"type":"pod","pod":"a/1","images":["web:1","batch:1"],"phase":"scheduled","node":"n1"}
{"v":1,"ts":20,"type":"node","node":"n2","pool":"p","phase":"registered"}
{"v":1,"ts":30,"type":"pod","pod":"a/2","images":["web:1"],"phase":"scheduled","node":"n2"}
{"v":1,"ts":40,"type":"node","node":"n3","pool":"p","phase":"registered"}
{"v":1,"ts":41,"type":"node","node":"q1","pool":"other","phase":"registered"}
"#;
        let at = |share| {
            orders(base, share)
                .into_iter()
                .map(|(t, i, _)| format!("{t} {i}"))
                .collect::<Vec<_>>()
        };
        // n2 follows n1 alone, which needed both.
        assert_eq!(at(0.7), vec!["n2 batch:1", "n2 web:1", "n3 web:1"]);
        assert_eq!(
            at(0.5),
            vec!["n2 batch:1", "n2 web:1", "n3 web:1", "n3 batch:1"]
        );
        assert!(at(1.1).is_empty());
    }

    #[test]
    fn a_cluster_autoscaler_node_gets_the_scale_ups_unbound_pods() {
        let lines = r#"{"v":1,"ts":0,"type":"pod","pod":"a/1","images":["job:1"],"phase":"pending"}
{"v":1,"ts":0,"type":"pod","pod":"a/2","images":["job:2"],"phase":"pending"}
{"v":1,"ts":1,"type":"scale_up","source":"cluster-autoscaler","group":"g","from":1,"to":2,"pods":["a/1","a/2"]}
{"v":1,"ts":2,"type":"pod","pod":"a/2","images":["job:2"],"phase":"scheduled","node":"old"}
{"v":1,"ts":60,"type":"node","node":"n1","pool":"g","phase":"registered"}
{"v":1,"ts":70,"type":"node","node":"n2","pool":"g","phase":"registered"}
"#;
        assert_eq!(
            orders(lines, 0.7),
            vec![("n1".into(), "job:1".into(), Reason::ScaleUp)]
        );
    }
}
