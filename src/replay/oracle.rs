//! The `oracle` policy: it reads the whole trace first, so at each node's
//! registration it knows every image that node's pods will need. It is the
//! upper bound that oracle capture is measured against, and the only policy
//! allowed to see the future.

use rustc_hash::FxHashMap as HashMap;
use std::path::Path;

use crate::clock::Clock;
use crate::event::{self, Body, Event, EventReader, NodePhase, PodPhase};
use crate::policy::{Policy, PullOrder, Reason, Target};

/// The future, as the oracle needs it: for each node incarnation, the images
/// its pods will need, in order of first need.
#[derive(Debug, Default)]
pub struct Foresight {
    /// (node, incarnation) → images in order of first need.
    needs: HashMap<(String, u32), Vec<String>>,
}

impl Foresight {
    /// Reads `path` once to learn every binding. Lines that cannot be a
    /// registration or a binding are skipped unparsed; the replay pass that
    /// follows checks every line.
    pub fn scan(path: &Path) -> event::Result<Self> {
        let mut reader = EventReader::open(path)?;
        reader.set_filter(|line| {
            memchr::memmem::find(line, b"scheduled").is_some()
                || memchr::memmem::find(line, b"registered").is_some()
                || memchr::memmem::find(line, b"\"trace\"").is_some()
        });
        Self::from_events(reader)
    }

    /// Learns every binding from `events`.
    pub fn from_events(
        events: impl IntoIterator<Item = event::Result<Event>>,
    ) -> event::Result<Self> {
        let mut learner = Learner::default();
        for e in events {
            learner.see(&e?);
        }
        Ok(learner.finish())
    }

    /// Learns every binding from events already in memory (a topic read
    /// whole), without copying them.
    pub fn from_slice(events: &[Event]) -> Self {
        let mut learner = Learner::default();
        events.iter().for_each(|e| learner.see(e));
        learner.finish()
    }
}

/// The fold behind every [`Foresight`] constructor, so that files and
/// in-memory events are read by the same rules.
#[derive(Default)]
struct Learner {
    incarnation: HashMap<String, u32>,
    needs: HashMap<(String, u32), Vec<String>>,
}

impl Learner {
    fn see(&mut self, e: &Event) {
        match &e.body {
            Body::Node(n) if n.phase == NodePhase::Registered => {
                *self.incarnation.entry(n.node.clone()).or_default() += 1;
            }
            Body::Pod(p) if p.phase == PodPhase::Scheduled => {
                let Some(node) = &p.node else { return };
                let inc = self.incarnation.get(node).copied().unwrap_or(0);
                let list = self.needs.entry((node.clone(), inc)).or_default();
                for image in &p.images {
                    if !list.contains(image) {
                        list.push(image.clone());
                    }
                }
            }
            _ => {}
        }
    }

    fn finish(self) -> Foresight {
        Foresight { needs: self.needs }
    }
}

/// Pulls exactly what each new node will need, at its registration.
#[derive(Debug)]
pub struct OraclePolicy {
    foresight: Foresight,
    incarnation: HashMap<String, u32>,
}

impl OraclePolicy {
    /// An oracle that knows `foresight`.
    pub fn new(foresight: Foresight) -> Self {
        Self {
            foresight,
            incarnation: HashMap::default(),
        }
    }
}

impl Policy for OraclePolicy {
    fn name(&self) -> &str {
        "oracle"
    }

    fn on_event(&mut self, event: &Event, _: &dyn Clock, out: &mut Vec<PullOrder>) {
        let Body::Node(n) = &event.body else { return };
        if n.phase != NodePhase::Registered {
            return;
        }
        let inc = self.incarnation.entry(n.node.clone()).or_default();
        *inc += 1;
        let Some(images) = self.foresight.needs.remove(&(n.node.clone(), *inc)) else {
            return;
        };
        let count = images.len() as u32;
        out.extend(images.into_iter().enumerate().map(|(i, image)| PullOrder {
            target: Target::Node(n.node.clone()),
            image,
            priority: count - i as u32,
            reason: Reason::Oracle,
            probability: Some(1.0),
        }));
    }
}
