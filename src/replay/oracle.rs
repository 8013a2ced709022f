//! The `oracle` policy: it reads the whole trace first, so at each node's
//! registration it knows every image that node's pods will need. It is the
//! upper bound that oracle capture is measured against, and the only policy
//! allowed to see the future.

use memchr::memmem::Finder;
use rustc_hash::FxHashMap as HashMap;
use std::path::Path;
use std::sync::LazyLock;

use crate::clock::Clock;
use crate::event::{self, Body, Event, EventReader, Kind, NodePhase, PodPhase};
use crate::intern::Interner;
use crate::policy::{Policy, PullOrder, Reason, Target};

/// The future, as the oracle needs it: for each node incarnation, the images
/// its pods will need, in order of first need.
#[derive(Debug, Default)]
pub struct Foresight {
    /// Node → its registrations and needs. Keyed by the node alone, so that
    /// a binding is looked up without building a key.
    nodes: HashMap<String, NodeFuture>,
    /// Image names ↔ ids: a need is kept as an id, so that checking a
    /// node's list for an image compares integers, not names.
    images: Interner,
    /// A binding's image ids, kept to save an allocation a binding.
    scratch: Vec<u32>,
}

#[derive(Debug, Default)]
struct NodeFuture {
    /// Registrations counted so far: by the learner while it reads, then
    /// by the oracle while it replays.
    registrations: u32,
    /// Incarnation → images (ids into [`Foresight::images`]) in order of
    /// first need; incarnation 0 is a node bound before any registration of
    /// it.
    needs: Vec<Vec<u32>>,
}

/// The words that mark a line the scan may need: bindings, registrations,
/// and the header.
static SCAN_WORDS: LazyLock<[Finder<'static>; 3]> = LazyLock::new(|| {
    [
        Finder::new(b"scheduled"),
        Finder::new(b"registered"),
        Finder::new(b"\"trace\""),
    ]
});

/// Whether the scan parses `line`. A line in the form pullahead writes,
/// `{"ts":N,"type":"T",…`, is judged by its type, with one search at most;
/// searching every line for all three words was half the scan. Any other
/// line is kept if it holds one of the words. Either way a superset of the
/// bindings and registrations is kept: the parse decides.
fn scan_keeps(line: &[u8]) -> bool {
    let [scheduled, registered, _] = &*SCAN_WORDS;
    let Some((_, rest)) = event::written_form(line) else {
        return SCAN_WORDS.iter().any(|w| w.find(line).is_some());
    };
    // The usual names, closing quote included, before any search; the
    // search after them starts at that quote, as the general case's does.
    match event::usual_type(rest) {
        Some(k @ Kind::Pod) => return scheduled.find(&rest[k.name().len()..]).is_some(),
        Some(k @ Kind::Node) => return registered.find(&rest[k.name().len()..]).is_some(),
        Some(Kind::NodeClaim) => return false,
        None => {}
    }
    // Another type than those above: only the header is read. An escaped
    // or unterminated name: the parse decides.
    event::plain_type(rest).is_none_or(|name| name == b"trace")
}

impl Foresight {
    /// Reads `path` once to learn every binding. Lines that cannot be a
    /// registration or a binding are skipped unparsed; the replay pass that
    /// follows checks every line. A bad line ends the scan without an
    /// error: that pass fails on it, or on an earlier bad line the scan
    /// skipped, so the error reported is always the file's first. Only a
    /// file that cannot be read is an error here.
    pub fn scan(path: &Path) -> event::Result<Self> {
        let mut reader = EventReader::open(path)?;
        reader.set_filter(scan_keeps);
        let mut learner = Self::default();
        let mut event = Event::blank();
        loop {
            match reader.read_into(&mut event) {
                Ok(true) => learner.see(&event),
                Ok(false) => break,
                Err(e @ event::Error::Io { .. }) => return Err(e),
                Err(_) => break,
            }
        }
        Ok(learner.finish())
    }

    /// Learns every binding from `events`.
    pub fn from_events(
        events: impl IntoIterator<Item = event::Result<Event>>,
    ) -> event::Result<Self> {
        let mut learner = Self::default();
        for e in events {
            learner.see(&e?);
        }
        Ok(learner.finish())
    }

    /// Learns every binding from events already in memory (a topic read
    /// whole), without copying them.
    pub fn from_slice(events: &[Event]) -> Self {
        let mut learner = Self::default();
        events.iter().for_each(|e| learner.see(e));
        learner.finish()
    }

    /// The fold behind every constructor, so that files and in-memory events
    /// are read by the same rules.
    fn see(&mut self, e: &Event) {
        match &e.body {
            Body::Node(n) if n.phase == NodePhase::Registered => {
                if let Some(future) = self.node(&n.node) {
                    future.registrations += 1;
                }
            }
            Body::Pod(p) if p.phase == PodPhase::Scheduled => {
                let Some(node) = p.node.as_deref() else {
                    return;
                };
                let mut ids = std::mem::take(&mut self.scratch);
                ids.clear();
                for image in &p.images {
                    ids.push(self.images.intern(image));
                }
                if let Some(future) = self.node(node) {
                    let inc = future.registrations as usize;
                    if future.needs.len() <= inc {
                        future.needs.resize_with(inc + 1, Vec::new);
                    }
                    let list = &mut future.needs[inc];
                    for id in &ids {
                        if !list.contains(id) {
                            list.push(*id);
                        }
                    }
                }
                self.scratch = ids;
            }
            _ => {}
        }
    }

    /// The entry of node `name`, made on first sight (looked up first, so
    /// that the name is copied once).
    fn node(&mut self, name: &str) -> Option<&mut NodeFuture> {
        if !self.nodes.contains_key(name) {
            self.nodes.insert(name.to_string(), NodeFuture::default());
        }
        self.nodes.get_mut(name)
    }

    /// Rewinds the registration counts for the oracle's replay.
    fn finish(mut self) -> Self {
        self.nodes.values_mut().for_each(|f| f.registrations = 0);
        self
    }
}

/// Pulls exactly what each new node will need, at its registration.
#[derive(Debug)]
pub struct OraclePolicy {
    foresight: Foresight,
}

impl OraclePolicy {
    /// An oracle that knows `foresight`.
    pub fn new(foresight: Foresight) -> Self {
        Self { foresight }
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
        // A node no pod is ever bound to needs nothing, whatever incarnation.
        let Some(future) = self.foresight.nodes.get_mut(&n.node) else {
            return;
        };
        future.registrations += 1;
        let Some(images) = future.needs.get_mut(future.registrations as usize) else {
            return;
        };
        let images = std::mem::take(images);
        let count = images.len() as u32;
        let names = &self.foresight.images;
        out.extend(images.into_iter().enumerate().map(|(i, image)| PullOrder {
            target: Target::Node(n.node.clone()),
            image: names.name(image).to_string(),
            priority: count - i as u32,
            reason: Reason::Oracle,
            probability: Some(1.0),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scan_keeps_bindings_registrations_and_the_header() {
        let keep: &[&[u8]] = &[
            br#"{"ts":1.0,"type":"pod","pod":"a/p","images":["i"],"phase":"scheduled","node":"n"}"#,
            br#"{"ts":1.0,"type":"node","node":"n","phase":"registered","pool":"p"}"#,
            br#"{"type":"trace","version":1,"ts":0.0,"source":"x"}"#,
            br#"{"ts":1.0,"type":"trace","version":1,"source":"x"}"#,
            // Not in the written form: judged by the words alone.
            br#"{ "ts": 1, "type": "pod", "phase": "scheduled" }"#,
            br#"{"ts":1,"type":"po\u0064","phase":"scheduled"}"#,
            br#"{"ts":1,"type":"pod\"x","phase":"pending"}"#,
        ];
        let skip: &[&[u8]] = &[
            br#"{"ts":1.0,"type":"pod","pod":"a/p","images":["i"],"phase":"pending"}"#,
            br#"{"ts":1.0,"type":"node","node":"n","phase":"deleted","pool":"p"}"#,
            br#"{"ts":1.0,"type":"node_claim","node_claim":"c","pool":"p","phase":"registered","node":"n"}"#,
            br#"{"ts":1.0,"type":"workload","workload":"scheduled/registered","kind":"Deployment","images":[]}"#,
            br#"{ "ts": 1, "type": "pod", "phase": "pending" }"#,
        ];
        for line in keep {
            assert!(scan_keeps(line), "{}", String::from_utf8_lossy(line));
        }
        for line in skip {
            assert!(!scan_keeps(line), "{}", String::from_utf8_lossy(line));
        }
    }
}
