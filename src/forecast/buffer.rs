//! CapacityBuffers as a planner signal.
//!
//! A CapacityBuffer (`autoscaling.x-k8s.io`) makes the autoscaler keep room
//! for `replicas` chunks of a pod template. While the buffer is short, the
//! nodes the autoscaler adds are there for those chunks, and the pods that
//! later use the room are pods of the template: near-certain demand for its
//! images on exactly those nodes.
//!
//! The book counts, per buffer, the new nodes (or the NodeClaims they come
//! from) that hold one of its chunks. A new node or claim that fits the
//! template while `held < replicas` takes a chunk. A chunk is given back
//! when its node goes away, or when a real pod of the template binds there
//! (the room is used, so the autoscaler adds another node for the buffer).
//! One node is taken to hold one chunk: events carry no resource requests,
//! and the chunk count is the upper bound on how many nodes the buffer makes.
//! A buffer seen after its nodes were made counts as wholly short, so its
//! first new nodes take its images even if the room already exists.

use std::collections::BTreeMap;

use crate::event::{self, Taint, Toleration, tolerates_all};
use crate::state::{ClusterState, ImageId, NodeInfo};

/// Where a chunk is held: a NodeClaim that has no node yet, or a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Holder {
    /// A NodeClaim, by its id in [`ClusterState::claim_names`].
    Claim(u32),
    /// A node, by its id in [`ClusterState::node_names`].
    Node(u32),
}

/// One buffer as the book keeps it.
#[derive(Debug, Clone, Default)]
struct Entry {
    replicas: u32,
    images: Box<[ImageId]>,
    node_selector: BTreeMap<String, String>,
    tolerations: Vec<Toleration>,
    /// The scalable workload, interned in [`ClusterState::workload_names`].
    workload: Option<u32>,
    /// The claims and nodes holding one chunk each, in id order.
    held: Vec<Holder>,
}

impl Entry {
    fn fits(&self, labels: &BTreeMap<String, String>, taints: &[Taint]) -> bool {
        self.node_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && tolerates_all(&self.tolerations, taints)
    }

    fn short(&self) -> bool {
        !self.images.is_empty() && (self.held.len() as u64) < u64::from(self.replicas)
    }
}

/// The buffers seen so far and which new nodes hold their chunks.
#[derive(Debug, Default)]
pub struct BufferBook {
    /// By `namespace/name`: a sorted map, so that buffers take nodes in the
    /// same order in every run.
    buffers: BTreeMap<String, Entry>,
}

impl BufferBook {
    /// Folds one `buffer` event in; the images and workload are interned in
    /// `state`. A buffer scaled to 0 keeps no holders.
    pub fn apply(&mut self, b: &event::Buffer, state: &mut ClusterState) {
        let images = b.images.iter().map(|i| state.images.intern(i)).collect();
        let workload = b
            .workload
            .as_deref()
            .map(|w| state.workload_names.intern(w));
        let e = self.buffers.entry(b.buffer.clone()).or_default();
        e.replicas = b.replicas;
        e.images = images;
        e.node_selector.clone_from(&b.node_selector);
        e.tolerations = b.tolerations.clone().unwrap_or_default();
        e.workload = workload;
        // Holders beyond the new size are released, newest first.
        e.held.truncate(b.replicas as usize);
        if b.replicas == 0 {
            self.buffers.remove(&b.buffer);
        }
    }

    /// Whether any buffer is known: the planner skips the book otherwise.
    pub fn is_empty(&self) -> bool {
        self.buffers.is_empty()
    }

    /// Calls `add` with the images of each buffer that `holder` holds a
    /// chunk of, after letting it take a chunk of every short buffer whose
    /// template fits `info`. Called when a new node or claim is planned.
    pub fn signals(&mut self, holder: Holder, info: &NodeInfo, mut add: impl FnMut(&[ImageId])) {
        for e in self.buffers.values_mut() {
            let holds = e.held.contains(&holder);
            if holds || (e.short() && e.fits(&info.labels, &info.taints)) {
                if !holds {
                    e.held.push(holder);
                }
                add(&e.images);
            }
        }
    }

    /// The claim `from` became node `to`: its chunks move with it.
    pub fn moved(&mut self, from: Holder, to: Holder) {
        for e in self.buffers.values_mut() {
            for h in e.held.iter_mut().filter(|h| **h == from) {
                *h = to;
            }
        }
    }

    /// `holder` is gone: its chunks are free again.
    pub fn released(&mut self, holder: Holder) {
        for e in self.buffers.values_mut() {
            e.held.retain(|h| *h != holder);
        }
    }

    /// A pod of `workload` with `images` bound to `node`: it uses the room
    /// of one chunk held there, of the first buffer (by name) whose pods it
    /// is (its scalable workload, or, for a PodTemplate, every template
    /// image among the pod's).
    pub fn bound(&mut self, node: u32, workload: Option<u32>, images: &[ImageId]) {
        let holder = Holder::Node(node);
        for e in self.buffers.values_mut() {
            let ours = match e.workload {
                Some(w) => workload == Some(w),
                None => e.images.iter().all(|i| images.contains(i)),
            };
            if ours && let Some(k) = e.held.iter().position(|h| *h == holder) {
                e.held.remove(k);
                return;
            }
        }
    }

    /// Chunks still without a node, over every buffer: for metrics and
    /// tests.
    pub fn unmet(&self) -> u64 {
        self.buffers
            .values()
            .filter(|e| !e.images.is_empty())
            .map(|e| u64::from(e.replicas).saturating_sub(e.held.len() as u64))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(replicas: u32, selector: &[(&str, &str)]) -> event::Buffer {
        event::Buffer {
            buffer: "ns/spare".into(),
            replicas,
            images: vec!["r/app:1".into()],
            node_selector: selector
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            tolerations: None,
            template: Some("PodTemplate/ns/spare".into()),
            workload: None,
        }
    }

    fn node(pool: &str) -> NodeInfo {
        NodeInfo {
            pool: pool.into(),
            labels: [("pool".to_string(), pool.to_string())].into(),
            ..Default::default()
        }
    }

    fn takes(book: &mut BufferBook, h: Holder, info: &NodeInfo) -> usize {
        let mut n = 0;
        book.signals(h, info, |imgs| n += imgs.len());
        n
    }

    #[test]
    fn a_short_buffer_gives_its_images_to_fitting_new_nodes_only_while_short() {
        let mut st = ClusterState::default();
        let mut book = BufferBook::default();
        book.apply(&buffer(2, &[("pool", "a")]), &mut st);
        assert_eq!(book.unmet(), 2);
        assert_eq!(
            takes(&mut book, Holder::Node(9), &node("b")),
            0,
            "wrong pool"
        );
        assert_eq!(takes(&mut book, Holder::Claim(1), &node("a")), 1);
        // Planned again (its node registers): the same chunk, not another.
        book.moved(Holder::Claim(1), Holder::Node(1));
        assert_eq!(takes(&mut book, Holder::Node(1), &node("a")), 1);
        assert_eq!(book.unmet(), 1);
        assert_eq!(takes(&mut book, Holder::Node(2), &node("a")), 1);
        assert_eq!(book.unmet(), 0);
        assert_eq!(takes(&mut book, Holder::Node(3), &node("a")), 0, "met");
        // A real pod of the template uses node 2's room: short again.
        let img = st.images.get("r/app:1").unwrap();
        book.bound(2, None, &[img]);
        assert_eq!(book.unmet(), 1);
        assert_eq!(takes(&mut book, Holder::Node(3), &node("a")), 1);
        book.released(Holder::Node(1));
        assert_eq!(book.unmet(), 1);
        // Scaled to zero: forgotten.
        book.apply(&buffer(0, &[("pool", "a")]), &mut st);
        assert!(book.is_empty());
        assert_eq!(takes(&mut book, Holder::Node(4), &node("a")), 0);
    }

    #[test]
    fn a_buffer_without_its_template_is_never_short() {
        let mut st = ClusterState::default();
        let mut book = BufferBook::default();
        let mut b = buffer(3, &[]);
        b.images.clear();
        book.apply(&b, &mut st);
        assert_eq!(book.unmet(), 0);
        assert_eq!(takes(&mut book, Holder::Node(1), &node("a")), 0);
    }
}
