//! Kubernetes objects → schema-v1 events.
//!
//! A pure fold: the live watcher and `pullahead import` both hand every
//! object change to one [`Normalizer`], which keeps only the small derived
//! state it needs to tell a transition from a re-send (pod → phase, node,
//! claim; workload → fingerprint) and never whole objects.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event as KubeEvent, Node, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;

use crate::event::{
    self, Autoscaler, ClaimPhase, Event, HpaMetric, NodePhase, PodPhase, Taint, Toleration,
};

pub mod slim_pod;

use crate::intern::Key;
pub use slim_pod::SlimPod;
use slim_pod::SlimPodSpec;

/// Errors from normalising objects.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object lacks a field every object of its kind has.
    #[error("{kind} object has no {field}")]
    MissingField {
        /// Object kind.
        kind: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// The JSON is not an object of a kind this module reads.
    #[error("unsupported object: apiVersion {api_version:?}, kind {kind:?}")]
    Unsupported {
        /// `apiVersion` found.
        api_version: String,
        /// `kind` found.
        kind: String,
    },
    /// The JSON does not match the Kubernetes type its `kind` names.
    #[error("malformed {kind}: {source}")]
    Malformed {
        /// Object kind.
        kind: String,
        /// What serde said.
        source: serde_json::Error,
    },
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One Kubernetes object of a kind pullahead watches.
///
/// Pods, most of what a cluster's watch carries, are held inline as the
/// small [`SlimPod`]; every other kind is boxed, as its k8s-openapi type is
/// kilobytes inline and a watch event is moved several times on its way to
/// the normaliser.
// The slim pod stays inline on purpose: boxing it would cost an allocation
// for every pod change, the bulk of a watch.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Object {
    /// core/v1 Node.
    Node(Box<Node>),
    /// core/v1 Pod, with only the fields the normaliser reads.
    Pod(SlimPod),
    /// karpenter.sh/v1 NodeClaim.
    NodeClaim(Box<DynamicObject>),
    /// karpenter.sh/v1 NodePool (accepted; it produces no event).
    NodePool(Box<DynamicObject>),
    /// autoscaling/v2 HorizontalPodAutoscaler.
    Hpa(Box<HorizontalPodAutoscaler>),
    /// apps/v1 Deployment.
    Deployment(Box<Deployment>),
    /// apps/v1 StatefulSet.
    StatefulSet(Box<StatefulSet>),
    /// apps/v1 DaemonSet.
    DaemonSet(Box<DaemonSet>),
    /// apps/v1 ReplicaSet.
    ReplicaSet(Box<ReplicaSet>),
    /// batch/v1 Job.
    Job(Box<Job>),
    /// core/v1 Event.
    Event(Box<KubeEvent>),
}

impl Object {
    /// Reads an object from JSON by its `apiVersion` and `kind`.
    pub fn from_value(value: serde_json::Value) -> Result<Self> {
        let field = |k: &str| {
            value
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        fn de<T: serde::de::DeserializeOwned>(kind: &str, v: serde_json::Value) -> Result<T> {
            serde_json::from_value(v).map_err(|source| Error::Malformed {
                kind: kind.to_string(),
                source,
            })
        }
        let group = api_version.split('/').next().unwrap_or("");
        Ok(match (api_version.as_str(), kind.as_str()) {
            ("v1", "Node") => Object::Node(de(&kind, value)?),
            ("v1", "Pod") => Object::Pod(de(&kind, value)?),
            ("v1", "Event") => Object::Event(de(&kind, value)?),
            ("apps/v1", "Deployment") => Object::Deployment(de(&kind, value)?),
            ("apps/v1", "StatefulSet") => Object::StatefulSet(de(&kind, value)?),
            ("apps/v1", "DaemonSet") => Object::DaemonSet(de(&kind, value)?),
            ("apps/v1", "ReplicaSet") => Object::ReplicaSet(de(&kind, value)?),
            ("batch/v1", "Job") => Object::Job(de(&kind, value)?),
            ("autoscaling/v2", "HorizontalPodAutoscaler") => Object::Hpa(de(&kind, value)?),
            (_, "NodeClaim") if group == "karpenter.sh" => Object::NodeClaim(de(&kind, value)?),
            (_, "NodePool") if group == "karpenter.sh" => Object::NodePool(de(&kind, value)?),
            _ => return Err(Error::Unsupported { api_version, kind }),
        })
    }

    /// The object's kind, as Kubernetes spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Node(_) => "Node",
            Object::Pod(_) => "Pod",
            Object::NodeClaim(_) => "NodeClaim",
            Object::NodePool(_) => "NodePool",
            Object::Hpa(_) => "HorizontalPodAutoscaler",
            Object::Deployment(_) => "Deployment",
            Object::StatefulSet(_) => "StatefulSet",
            Object::DaemonSet(_) => "DaemonSet",
            Object::ReplicaSet(_) => "ReplicaSet",
            Object::Job(_) => "Job",
            Object::Event(_) => "Event",
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Node(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::NodeClaim(o) | Object::NodePool(o) => &o.metadata,
            Object::Hpa(o) => &o.metadata,
            Object::Deployment(o) => &o.metadata,
            Object::StatefulSet(o) => &o.metadata,
            Object::DaemonSet(o) => &o.metadata,
            Object::ReplicaSet(o) => &o.metadata,
            Object::Job(o) => &o.metadata,
            Object::Event(o) => &o.metadata,
        }
    }

    /// The latest time the object itself records (Unix seconds): an event's
    /// last timestamp, else the newest condition transition, deletion or
    /// creation time. Used by `import`, whose inputs carry no arrival time.
    pub fn observed_time(&self) -> Option<f64> {
        fn secs(t: &jiff::Timestamp) -> f64 {
            t.as_millisecond() as f64 / 1000.0
        }
        let meta = self.metadata();
        let mut best: Option<f64> = None;
        let mut see = |t: Option<f64>| {
            if let Some(t) = t {
                best = Some(best.map_or(t, |b: f64| b.max(t)));
            }
        };
        see(meta.creation_timestamp.as_ref().map(|t| secs(&t.0)));
        see(meta.deletion_timestamp.as_ref().map(|t| secs(&t.0)));
        match self {
            Object::Event(e) => {
                // An event's own time beats its object's creation time.
                let own = e
                    .last_timestamp
                    .as_ref()
                    .map(|t| secs(&t.0))
                    .or_else(|| e.event_time.as_ref().map(|t| secs(&t.0)))
                    .or_else(|| e.first_timestamp.as_ref().map(|t| secs(&t.0)));
                if own.is_some() {
                    return own;
                }
            }
            Object::Pod(p) => {
                let last = p.status.as_ref();
                see(last
                    .and_then(|s| s.conditions.last_transition_time.as_ref())
                    .map(|t| secs(&t.0)));
            }
            Object::Node(n) => {
                for c in n.status.iter().flat_map(|s| s.conditions.iter().flatten()) {
                    see(c.last_transition_time.as_ref().map(|t| secs(&t.0)));
                }
            }
            Object::NodeClaim(o) => {
                for c in conditions(&o.data) {
                    see(c
                        .get("lastTransitionTime")
                        .and_then(|v| v.as_str())
                        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
                        .map(|t| secs(&t)));
                }
            }
            _ => {}
        }
        best
    }
}

/// One change to an object, as a watch reports it.
#[derive(Clone, Debug)]
pub enum Change {
    /// Added or modified: the object as it is now.
    Applied(Object),
    /// Deleted: the object as it was last.
    Deleted(Object),
}

/// What the normaliser has counted, for metrics and import summaries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events emitted, by type.
    pub emitted: BTreeMap<&'static str, u64>,
    /// Kubernetes Events whose reason pullahead reads but whose message it
    /// could not parse.
    pub unparsed_messages: u64,
    /// Kubernetes Events skipped because their reason is not one pullahead reads.
    pub ignored_events: u64,
}

/// A pod's phase as ordered for transitions: a pod only moves forward.
fn rank(p: PodPhase) -> u8 {
    match p {
        PodPhase::Pending => 0,
        PodPhase::Nominated => 1,
        PodPhase::Scheduled => 2,
        PodPhase::Started => 3,
        PodPhase::Deleted => 4,
    }
}

/// What is retained per pod: well under the watch issue's 2 KB budget, as
/// strings are interned and shared between the pods of one workload.
#[derive(Clone, Debug, PartialEq)]
struct PodState {
    phase: PodPhase,
    node: Option<Arc<str>>,
    claim: Option<Arc<str>>,
    workload: Option<Arc<str>>,
    images: Arc<[Arc<str>]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NodeState {
    ready: bool,
}

/// Turns object changes into schema-v1 events, on transitions only.
#[derive(Debug, Default)]
pub struct Normalizer {
    /// Pod `namespace/name` to its state; the key is stored in the table, as
    /// every pod change looks it up.
    pods: HashMap<Key, PodState>,
    nodes: HashMap<Arc<str>, NodeState>,
    claims: HashMap<Arc<str>, ClaimPhase>,
    /// Fingerprint of the last `workload`/`hpa` event emitted per name.
    fingerprints: HashMap<String, u64>,
    /// Kubernetes Events already seen: `namespace/name` → count.
    seen_events: HashMap<String, i32>,
    /// Image sizes already announced.
    image_bytes: HashMap<Arc<str>, u64>,
    /// Strings and image lists shared by the retained state.
    interner: Interner,
    stats: Stats,
    applied: u64,
    /// Scratch buffer for a pod's `namespace/name`, reused so that a
    /// re-sent or progressing pod costs no allocation beyond its events.
    scratch_name: String,
}

/// One shared copy of each image, node and workload name, and of each
/// pod's image list, however many pods name it.
#[derive(Debug, Default)]
struct Interner {
    /// Interned strings (images, nodes, workloads, claims).
    strings: HashMap<Arc<str>, ()>,
    /// Interned image lists, keyed by the addresses of their images. Every
    /// image in a list is interned, so equal addresses mean equal text:
    /// hashing a key costs a word per image instead of the image's text,
    /// and the list's own references keep those addresses from being reused
    /// while the key exists.
    image_lists: HashMap<Box<[usize]>, Arc<[Arc<str>]>>,
    /// Scratch buffers reused across changes (a list being built, its key,
    /// a workload name being joined), so that lookups do not allocate.
    scratch_images: Vec<Arc<str>>,
    scratch_addrs: Vec<usize>,
    scratch_name: String,
}

impl Interner {
    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some((k, _)) = self.strings.get_key_value(s) {
            return k.clone();
        }
        let k: Arc<str> = Arc::from(s);
        self.strings.insert(k.clone(), ());
        k
    }

    /// `namespace/name`, interned.
    fn intern_joined(&mut self, namespace: &str, name: &str) -> Arc<str> {
        let mut buf = std::mem::take(&mut self.scratch_name);
        buf.clear();
        buf.push_str(namespace);
        buf.push('/');
        buf.push_str(name);
        let k = self.intern(&buf);
        self.scratch_name = buf;
        k
    }

    /// The interned list of a pod spec's images, as [`pod_images`] lists
    /// them; no spec is the empty list.
    fn pod_images(&mut self, spec: Option<&SlimPodSpec>) -> Arc<[Arc<str>]> {
        let mut list = std::mem::take(&mut self.scratch_images);
        let mut addrs = std::mem::take(&mut self.scratch_addrs);
        list.clear();
        addrs.clear();
        for img in spec_images(spec) {
            let full = full_reference_cow(img);
            if !list.iter().any(|i| **i == *full) {
                let k = self.intern(&full);
                addrs.push(addr(&k));
                list.push(k);
            }
        }
        let k = match self.image_lists.get(addrs.as_slice()) {
            Some(k) => k.clone(),
            None => {
                let k: Arc<[Arc<str>]> = Arc::from(list.as_slice());
                self.image_lists.insert(addrs.as_slice().into(), k.clone());
                k
            }
        };
        list.clear();
        self.scratch_images = list;
        self.scratch_addrs = addrs;
        k
    }

    /// Drops what nothing else holds any more (gone pods' node names, old
    /// images), so that memory follows the live state.
    fn prune(&mut self) {
        // Lists first, so that images only a dropped list held go in the
        // same pass.
        self.image_lists.retain(|_, v| Arc::strong_count(v) > 1);
        self.strings.retain(|k, _| Arc::strong_count(k) > 1);
    }

    fn len(&self) -> usize {
        self.strings.len() + self.image_lists.len()
    }
}

/// The address of an interned string: its identity while it is interned.
fn addr(s: &Arc<str>) -> usize {
    Arc::as_ptr(s).cast::<u8>() as usize
}

/// The images a pod spec names, init containers first, as written.
fn spec_images(spec: Option<&SlimPodSpec>) -> impl Iterator<Item = &str> {
    spec.into_iter()
        .flat_map(|s| s.init_containers.iter().chain(s.containers.iter()))
        .filter_map(|c| c.image.as_deref())
}

/// Whether `have` is the list [`Interner::pod_images`] would make of
/// `spec`, compared without interning anything: a known pod's images
/// rarely change, and then nothing needs hashing.
fn same_images(spec: Option<&SlimPodSpec>, have: &[Arc<str>]) -> bool {
    let mut n = 0;
    for img in spec_images(spec) {
        // As written, a spec's image is nearly always a full reference
        // already; one equal to a list entry is one, as [`full_reference`]
        // leaves its own results unchanged, and the list has no repeats.
        if have.get(n).is_some_and(|i| **i == *img) {
            n += 1;
            continue;
        }
        let full = full_reference_cow(img);
        // A repeat of an image already matched is skipped, as the list
        // keeps each image once.
        if have[..n].iter().any(|i| **i == *full) {
            continue;
        }
        match have.get(n) {
            Some(i) if **i == *full => n += 1,
            _ => return false,
        }
    }
    n == have.len()
}

/// Whether `have` is `namespace/name` of `owner`, compared without joining.
fn same_workload(owner: Option<(&str, &str)>, have: Option<&str>) -> bool {
    match (owner, have) {
        (None, None) => true,
        (Some((ns, name)), Some(w)) => {
            w.len() == ns.len() + 1 + name.len()
                && w.starts_with(ns)
                && w.as_bytes()[ns.len()] == b'/'
                && w.ends_with(name)
        }
        _ => false,
    }
}

/// How many changes pass between two prunings of the interned strings.
const PRUNE_EVERY: u64 = 1024;

/// The largest number of Kubernetes Events remembered for de-duplication;
/// beyond it the memory is cleared (a re-sent old event may then repeat).
const MAX_SEEN_EVENTS: usize = 100_000;

impl Normalizer {
    /// A normaliser that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// What has been counted so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Interned strings and image lists currently retained (for memory tests).
    pub fn retained_strings(&self) -> usize {
        self.interner.len()
    }

    /// Pods currently tracked.
    pub fn tracked_pods(&self) -> usize {
        self.pods.len()
    }

    /// Turns one object change seen at `ts` into zero or more schema-v1
    /// events (appended to `out`).
    pub fn apply(&mut self, ts: f64, change: Change, out: &mut Vec<Event>) -> Result<()> {
        match &change {
            Change::Applied(o) => self.apply_object(ts, o, false, out),
            Change::Deleted(o) => self.apply_object(ts, o, true, out),
        }
    }

    /// [`Normalizer::apply`] on a borrowed object: `deleted` when it is the
    /// object as it was last. The caller keeps the object, so the watcher
    /// hands over its watch event without moving it again.
    pub fn apply_object(
        &mut self,
        ts: f64,
        obj: &Object,
        deleted: bool,
        out: &mut Vec<Event>,
    ) -> Result<()> {
        let start = out.len();
        match obj {
            Object::Pod(p) => self.pod(ts, p, deleted, out)?,
            Object::Node(n) => self.node(ts, n, deleted, out)?,
            Object::NodeClaim(c) => self.node_claim(ts, c, deleted, out)?,
            Object::NodePool(_) => {}
            Object::Hpa(h) => self.hpa(ts, h, deleted, out)?,
            Object::Deployment(d) => {
                let spec = d.spec.as_ref();
                let replicas = spec.map(|s| s.replicas.unwrap_or(1));
                let t = spec.map(|s| &s.template);
                self.workload(ts, &d.metadata, "Deployment", t, replicas, deleted, out)?
            }
            Object::StatefulSet(d) => {
                let spec = d.spec.as_ref();
                let replicas = spec.map(|s| s.replicas.unwrap_or(1));
                let t = spec.map(|s| &s.template);
                self.workload(ts, &d.metadata, "StatefulSet", t, replicas, deleted, out)?
            }
            Object::DaemonSet(d) => {
                let t = d.spec.as_ref().map(|s| &s.template);
                self.workload(ts, &d.metadata, "DaemonSet", t, None, deleted, out)?
            }
            Object::ReplicaSet(d) => {
                // A Deployment's ReplicaSets are reported through the Deployment.
                if controller_of(&d.metadata).map(|(k, _)| k) != Some("Deployment") {
                    let spec = d.spec.as_ref();
                    let replicas = spec.map(|s| s.replicas.unwrap_or(1));
                    let t = spec.and_then(|s| s.template.as_ref());
                    self.workload(ts, &d.metadata, "ReplicaSet", t, replicas, deleted, out)?
                }
            }
            Object::Job(d) => {
                let spec = d.spec.as_ref();
                let replicas = spec.map(|s| s.parallelism.unwrap_or(1));
                let t = spec.map(|s| &s.template);
                self.workload(ts, &d.metadata, "Job", t, replicas, deleted, out)?
            }
            Object::Event(e) => self.kube_event(ts, e, deleted, out)?,
        }
        for e in &out[start..] {
            *self.stats.emitted.entry(e.body.type_name()).or_default() += 1;
        }
        self.applied += 1;
        if self.applied.is_multiple_of(PRUNE_EVERY) {
            self.interner.prune();
        }
        Ok(())
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        self.interner.intern(s)
    }

    fn pod_event(name: &str, st: &PodState, phase: PodPhase) -> Event {
        // `String::from` on the `str`: `to_string` on an `Arc<str>` would go
        // through the formatting machinery.
        Event::new(
            0.0,
            event::Pod {
                pod: name.to_string(),
                workload: st.workload.as_deref().map(String::from),
                images: st.images.iter().map(|i| String::from(&**i)).collect(),
                phase,
                node: st.node.as_deref().map(String::from),
                node_claim: st.claim.as_deref().map(String::from),
            },
        )
    }

    fn pod(&mut self, ts: f64, p: &SlimPod, deleted: bool, out: &mut Vec<Event>) -> Result<()> {
        let mut name = std::mem::take(&mut self.scratch_name);
        let r = namespaced_into(&p.metadata, "Pod", &mut name)
            .map(|()| self.pod_named(ts, &name, p, deleted, out));
        self.scratch_name = name;
        r
    }

    /// [`Normalizer::pod`] once the pod's `namespace/name` is known.
    fn pod_named(&mut self, ts: f64, name: &str, p: &SlimPod, deleted: bool, out: &mut Vec<Event>) {
        let terminal = p
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
        if deleted || terminal {
            if let Some(st) = self.pods.remove(name.as_bytes()) {
                out.push(at(ts, Self::pod_event(name, &st, PodPhase::Deleted)));
            }
            return;
        }
        let spec = p.spec.as_ref();
        let spec_node = spec.and_then(|s| s.node_name.as_deref());
        let status = p.status.as_ref();
        let nominated = status.and_then(|s| s.nominated_node_name.as_deref());
        let scheduled_cond = status.is_some_and(|s| s.conditions.scheduled);
        let n_containers = spec.map_or(0, |s| s.containers.len());
        // Every container has a status, and every status says running.
        let running = status.is_some_and(|s| {
            let cs = s.container_statuses;
            n_containers > 0 && cs.listed >= n_containers && cs.running == cs.listed
        });
        let observed = if spec_node.is_some() && running {
            PodPhase::Started
        } else if spec_node.is_some() || scheduled_cond {
            PodPhase::Scheduled
        } else if nominated.is_some() {
            PodPhase::Nominated
        } else {
            PodPhase::Pending
        };
        let node = spec_node.or(nominated);
        let owner = pod_workload(&p.metadata, p.template_hash.as_deref());
        // A known pod's state is updated in place, and what it already
        // holds is compared rather than interned again: its key is not
        // allocated, and nothing is hashed but its name.
        let interner = &mut self.interner;
        let mut fresh = None;
        let mut images_changed = false;
        let st = match self.pods.get_mut(name.as_bytes()) {
            Some(st) => {
                if !same_images(spec, &st.images) {
                    st.images = interner.pod_images(spec);
                    images_changed = true;
                }
                if !same_workload(owner, st.workload.as_deref()) {
                    st.workload = owner.map(|(ns, w)| interner.intern_joined(ns, w));
                }
                st
            }
            None => {
                let st = fresh.insert(PodState {
                    phase: PodPhase::Pending,
                    node: None,
                    claim: None,
                    workload: owner.map(|(ns, w)| interner.intern_joined(ns, w)),
                    images: interner.pod_images(spec),
                });
                out.push(at(ts, Self::pod_event(name, st, PodPhase::Pending)));
                st
            }
        };
        // Pods only move forward: a restarted container is not a new start.
        let cur = rank(st.phase);
        match observed {
            PodPhase::Nominated
                if cur < rank(PodPhase::Nominated)
                    || (cur == rank(PodPhase::Nominated) && st.node.as_deref() != node) =>
            {
                st.phase = PodPhase::Nominated;
                st.node = node.map(|n| interner.intern(n));
                st.claim = None;
                out.push(at(ts, Self::pod_event(name, st, PodPhase::Nominated)));
            }
            PodPhase::Scheduled | PodPhase::Started => {
                if cur < rank(PodPhase::Scheduled) {
                    st.phase = PodPhase::Scheduled;
                    st.node = node.map(|n| interner.intern(n));
                    out.push(at(ts, Self::pod_event(name, st, PodPhase::Scheduled)));
                }
                if observed == PodPhase::Started && cur < rank(PodPhase::Started) {
                    st.phase = PodPhase::Started;
                    out.push(at(ts, Self::pod_event(name, st, PodPhase::Started)));
                }
            }
            // Watch streams race: a `Nominated` event can come before the
            // pod it names, and was then passed on without images. Pass it
            // on again now that they are known.
            _ if images_changed && st.phase == PodPhase::Nominated => {
                out.push(at(ts, Self::pod_event(name, st, PodPhase::Nominated)));
            }
            _ => {}
        }
        if let Some(st) = fresh {
            self.pods.insert(Key::new(name), st);
        }
    }

    fn node(&mut self, ts: f64, n: &Node, deleted: bool, out: &mut Vec<Event>) -> Result<()> {
        let name = n.metadata.name.clone().ok_or(Error::MissingField {
            kind: "Node",
            field: "metadata.name",
        })?;
        let labels: BTreeMap<String, String> = n.metadata.labels.clone().unwrap_or_default();
        let taints: Vec<Taint> = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .map(|ts| {
                ts.iter()
                    .map(|t| Taint {
                        key: t.key.clone(),
                        value: t.value.clone(),
                        effect: t.effect.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let make = |phase: NodePhase, images: Option<Vec<String>>| {
            let mut node = event::Node {
                node: name.clone(),
                phase,
                pool: None,
                labels: labels.clone(),
                taints: (!taints.is_empty()).then(|| taints.clone()),
                images,
            };
            node.pool = Some(node.pool_name().to_string());
            node
        };
        let key = self.intern(&name);
        if deleted {
            if self.nodes.remove(&key).is_some() {
                out.push(Event::new(ts, make(NodePhase::Deleted, None)));
            }
            return Ok(());
        }
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let images: Vec<String> = n
            .status
            .as_ref()
            .and_then(|s| s.images.as_ref())
            .map(|imgs| {
                imgs.iter()
                    .filter_map(|i| {
                        let names = i.names.as_ref()?;
                        names
                            .iter()
                            .find(|n| !n.contains('@'))
                            .or_else(|| names.first())
                            .map(|n| full_reference(n))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let prev = self.nodes.get(&key).copied();
        if prev.is_none() {
            let imgs = (!images.is_empty()).then(|| images.clone());
            out.push(Event::new(ts, make(NodePhase::Registered, imgs)));
        }
        if ready && !prev.is_some_and(|p| p.ready) {
            out.push(Event::new(ts, make(NodePhase::Ready, None)));
        }
        // Ready only ever latches: a flapping node is not a new node.
        let was_ready = prev.is_some_and(|p| p.ready);
        self.nodes.insert(
            key,
            NodeState {
                ready: ready || was_ready,
            },
        );
        Ok(())
    }

    fn node_claim(
        &mut self,
        ts: f64,
        c: &DynamicObject,
        deleted: bool,
        out: &mut Vec<Event>,
    ) -> Result<()> {
        let name = c.metadata.name.clone().ok_or(Error::MissingField {
            kind: "NodeClaim",
            field: "metadata.name",
        })?;
        let labels: BTreeMap<String, String> = c.metadata.labels.clone().unwrap_or_default();
        let pool = labels
            .get("karpenter.sh/nodepool")
            .cloned()
            .unwrap_or_else(|| event::DEFAULT_POOL.to_string());
        let taints: Vec<Taint> = c
            .data
            .get("spec")
            .and_then(|s| s.get("taints"))
            .and_then(|t| serde_json::from_value(t.clone()).ok())
            .unwrap_or_default();
        let node = c
            .data
            .get("status")
            .and_then(|s| s.get("nodeName"))
            .and_then(|n| n.as_str())
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        let key = self.intern(&name);
        let prev = self.claims.get(&key).copied();
        let gone = deleted || c.metadata.deletion_timestamp.is_some();
        let mut phases = Vec::new();
        if gone {
            if prev.is_some_and(|p| p != ClaimPhase::Deleted) || (prev.is_none() && !deleted) {
                phases.push(ClaimPhase::Deleted);
            }
        } else {
            let mut target = ClaimPhase::Created;
            for c in conditions(&c.data) {
                let ok = c.get("status").and_then(|s| s.as_str()) == Some("True");
                let phase = match c.get("type").and_then(|t| t.as_str()) {
                    Some("Launched") => ClaimPhase::Launched,
                    Some("Registered") => ClaimPhase::Registered,
                    Some("Initialized") => ClaimPhase::Initialized,
                    _ => continue,
                };
                if ok && claim_rank(phase) > claim_rank(target) {
                    target = phase;
                }
            }
            let from = prev.map_or(0, |p| claim_rank(p) + 1);
            for phase in [
                ClaimPhase::Created,
                ClaimPhase::Launched,
                ClaimPhase::Registered,
                ClaimPhase::Initialized,
            ] {
                let r = claim_rank(phase);
                if r >= from && r <= claim_rank(target) {
                    phases.push(phase);
                }
            }
        }
        for phase in phases.iter().copied() {
            out.push(Event::new(
                ts,
                event::NodeClaim {
                    node_claim: name.clone(),
                    pool: pool.clone(),
                    phase,
                    labels: labels.clone(),
                    taints: (!taints.is_empty()).then(|| taints.clone()),
                    node: node.clone(),
                },
            ));
        }
        if deleted {
            self.claims.remove(&key);
        } else if let Some(last) = phases.last() {
            self.claims.insert(key, *last);
        }
        Ok(())
    }

    fn hpa(
        &mut self,
        ts: f64,
        h: &HorizontalPodAutoscaler,
        deleted: bool,
        out: &mut Vec<Event>,
    ) -> Result<()> {
        let name = namespaced(&h.metadata, "HorizontalPodAutoscaler")?;
        let key = format!("hpa {name}");
        if deleted {
            self.fingerprints.remove(&key);
            return Ok(());
        }
        let ns = h.metadata.namespace.as_deref().unwrap_or("default");
        let spec = h.spec.as_ref();
        let target_name = spec.map(|s| s.scale_target_ref.name.as_str()).unwrap_or("");
        let status = h.status.as_ref();
        let desired = status.map_or(0, |s| s.desired_replicas.max(0) as u32);
        let current = status
            .and_then(|s| s.current_replicas)
            .map_or(desired, |c| c.max(0) as u32);
        let metric = hpa_metric(h);
        let hpa = event::Hpa {
            hpa: name,
            workload: format!("{ns}/{target_name}"),
            current_replicas: current,
            desired_replicas: desired,
            min_replicas: spec.map(|s| s.min_replicas.unwrap_or(1).max(0) as u32),
            max_replicas: spec.map(|s| s.max_replicas.max(0) as u32),
            metric,
        };
        let fp = fingerprint(&format!("{hpa:?}"));
        if self.fingerprints.insert(key, fp) != Some(fp) {
            out.push(Event::new(ts, hpa));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn workload(
        &mut self,
        ts: f64,
        meta: &ObjectMeta,
        kind: &'static str,
        template: Option<&PodTemplateSpec>,
        replicas: Option<i32>,
        deleted: bool,
        out: &mut Vec<Event>,
    ) -> Result<()> {
        let name = namespaced(meta, kind)?;
        let key = format!("{kind} {name}");
        let spec = template.and_then(|t| t.spec.as_ref());
        let mut w = event::Workload {
            workload: name,
            kind: kind.to_string(),
            images: spec.map(pod_images).unwrap_or_default(),
            node_selector: spec
                .and_then(|s| s.node_selector.clone())
                .unwrap_or_default(),
            tolerations: spec.and_then(pod_tolerations),
            replicas: replicas.map(|r| r.max(0) as u32),
        };
        if deleted {
            // A deleted workload is announced as scaled to zero.
            if self.fingerprints.remove(&key).is_some() && w.replicas.is_some() {
                w.replicas = Some(0);
                out.push(Event::new(ts, w));
            }
            return Ok(());
        }
        let fp = fingerprint(&format!("{w:?}"));
        if self.fingerprints.insert(key, fp) != Some(fp) {
            out.push(Event::new(ts, w));
        }
        Ok(())
    }

    fn kube_event(
        &mut self,
        ts: f64,
        e: &KubeEvent,
        deleted: bool,
        out: &mut Vec<Event>,
    ) -> Result<()> {
        let key = namespaced(&e.metadata, "Event")?;
        if deleted {
            self.seen_events.remove(&key);
            return Ok(());
        }
        let count = e.count.unwrap_or(1);
        if self.seen_events.get(&key) == Some(&count) {
            return Ok(());
        }
        if self.seen_events.len() >= MAX_SEEN_EVENTS {
            self.seen_events.clear();
        }
        self.seen_events.insert(key, count);
        let msg = e.message.as_deref().unwrap_or("");
        let obj = &e.involved_object;
        let pod_name = match (obj.kind.as_deref(), &obj.namespace, &obj.name) {
            (Some("Pod"), ns, Some(n)) => {
                Some(format!("{}/{n}", ns.as_deref().unwrap_or("default")))
            }
            _ => None,
        };
        let before = out.len();
        match e.reason.as_deref() {
            Some("Nominated") => {
                if let (Some(pod), Some(target)) = (pod_name, parse_nominated(msg)) {
                    self.nominate(ts, &pod, target, out);
                }
            }
            Some("TriggeredScaleUp") => {
                for g in parse_triggered_scale_up(msg) {
                    out.push(Event::new(
                        ts,
                        event::ScaleUp {
                            source: Autoscaler::ClusterAutoscaler,
                            group: g.group,
                            from: g.from,
                            to: g.to,
                            pods: pod_name.clone().map(|p| vec![p]),
                        },
                    ));
                }
            }
            Some("ScaledUpGroup") => {
                if let Some(g) = parse_scaled_up_group(msg) {
                    out.push(Event::new(
                        ts,
                        event::ScaleUp {
                            source: Autoscaler::ClusterAutoscaler,
                            group: g.group,
                            from: g.from,
                            to: g.to,
                            pods: None,
                        },
                    ));
                }
            }
            Some("Pulled") => {
                if let Some(p) = parse_pulled(msg) {
                    let node = e
                        .source
                        .as_ref()
                        .and_then(|s| s.host.clone())
                        .or_else(|| e.reporting_instance.clone())
                        .filter(|n| !n.is_empty())
                        .or_else(|| {
                            let pod = pod_name.as_deref()?;
                            let st = self.pods.get(pod.as_bytes())?;
                            st.node.as_deref().map(str::to_string)
                        });
                    if let Some(node) = node {
                        let image = full_reference(&p.image);
                        if let Some(bytes) = p.bytes {
                            let key = self.intern(&image);
                            if self.image_bytes.insert(key, bytes) != Some(bytes) {
                                out.push(Event::new(
                                    ts,
                                    event::Image {
                                        image: image.clone(),
                                        bytes,
                                        layers: None,
                                    },
                                ));
                            }
                        }
                        out.push(Event::new(
                            ts,
                            event::Pull {
                                node,
                                image,
                                bytes: p.bytes,
                                seconds: p.seconds,
                                cached: p.cached,
                            },
                        ));
                    } else {
                        tracing::debug!(event = %e.metadata.name.as_deref().unwrap_or(""),
                            "Pulled event names no node; skipped");
                    }
                    return Ok(());
                }
            }
            _ => {
                self.stats.ignored_events += 1;
                return Ok(());
            }
        }
        if out.len() == before {
            self.stats.unparsed_messages += 1;
            tracing::debug!(reason = ?e.reason, message = msg, "event message not understood");
        }
        Ok(())
    }

    fn nominate(&mut self, ts: f64, pod: &str, target: Nominee, out: &mut Vec<Event>) {
        let key = Key::new(pod);
        let (node, claim) = match target {
            Nominee::Node(n) => (Some(self.intern(&n)), None),
            Nominee::Claim { claim, node } => {
                (node.map(|n| self.intern(&n)), Some(self.intern(&claim)))
            }
        };
        let empty = self.interner.pod_images(None);
        let st = self.pods.entry(key).or_insert_with(|| PodState {
            phase: PodPhase::Pending,
            node: None,
            claim: None,
            workload: None,
            images: empty,
        });
        if rank(st.phase) >= rank(PodPhase::Scheduled) {
            return;
        }
        if st.phase == PodPhase::Nominated && st.node == node && st.claim == claim {
            return;
        }
        st.phase = PodPhase::Nominated;
        st.node = node;
        st.claim = claim;
        let ev = Self::pod_event(pod, st, PodPhase::Nominated);
        out.push(at(ts, ev));
    }
}

fn at(ts: f64, mut e: Event) -> Event {
    e.ts = ts;
    e
}

fn claim_rank(p: ClaimPhase) -> usize {
    match p {
        ClaimPhase::Created => 0,
        ClaimPhase::Launched => 1,
        ClaimPhase::Registered => 2,
        ClaimPhase::Initialized => 3,
        ClaimPhase::Deleted => 4,
    }
}

fn conditions(data: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    data.get("status")
        .and_then(|s| s.get("conditions"))
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
}

fn fingerprint(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

fn namespaced(meta: &ObjectMeta, kind: &'static str) -> Result<String> {
    let name = meta.name.as_deref().ok_or(Error::MissingField {
        kind,
        field: "metadata.name",
    })?;
    Ok(format!(
        "{}/{name}",
        meta.namespace.as_deref().unwrap_or("default")
    ))
}

/// Writes `namespace/name` into `buf`, as [`namespaced`] makes it.
fn namespaced_into(meta: &ObjectMeta, kind: &'static str, buf: &mut String) -> Result<()> {
    let name = meta.name.as_deref().ok_or(Error::MissingField {
        kind,
        field: "metadata.name",
    })?;
    buf.clear();
    buf.push_str(meta.namespace.as_deref().unwrap_or("default"));
    buf.push('/');
    buf.push_str(name);
    Ok(())
}

/// The controlling owner's kind and name.
fn controller_of(meta: &ObjectMeta) -> Option<(&str, &str)> {
    let owners = meta.owner_references.as_ref()?;
    owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())
        .map(|o| (o.kind.as_str(), o.name.as_str()))
}

/// The namespace and name of the workload that owns a pod (`None` when no
/// owner); a Deployment's ReplicaSet is traced to the Deployment through
/// the pod's `pod-template-hash` label, `template_hash`.
fn pod_workload<'a>(
    meta: &'a ObjectMeta,
    template_hash: Option<&str>,
) -> Option<(&'a str, &'a str)> {
    let ns = meta.namespace.as_deref().unwrap_or("default");
    let (kind, name) = controller_of(meta)?;
    let name = if kind == "ReplicaSet" {
        match template_hash.and_then(|h| name.strip_suffix(h)) {
            Some(prefix) => prefix.trim_end_matches('-'),
            None => name,
        }
    } else {
        name
    };
    Some((ns, name))
}

/// Images of a pod spec, init containers first, each once, as full references.
pub fn pod_images(spec: &PodSpec) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    for c in all {
        if let Some(img) = c.image.as_deref() {
            let full = full_reference(img);
            if !out.contains(&full) {
                out.push(full);
            }
        }
    }
    out
}

fn pod_tolerations(spec: &PodSpec) -> Option<Vec<Toleration>> {
    let tols = spec.tolerations.as_ref()?;
    Some(
        tols.iter()
            .map(|t| Toleration {
                key: t.key.clone(),
                operator: t.operator.clone(),
                value: t.value.clone(),
                effect: t.effect.clone(),
            })
            .collect(),
    )
}

fn hpa_metric(h: &HorizontalPodAutoscaler) -> Option<HpaMetric> {
    let status = h.status.as_ref()?.current_metrics.as_ref()?;
    let spec = h.spec.as_ref()?.metrics.as_ref()?;
    for m in status {
        let Some(r) = m.resource.as_ref() else {
            continue;
        };
        let target = spec
            .iter()
            .filter_map(|s| s.resource.as_ref())
            .find(|s| s.name == r.name)?;
        let (current, target) = match (
            r.current.average_utilization,
            target.target.average_utilization,
        ) {
            (Some(c), Some(t)) => (c as f64, t as f64),
            _ => (
                parse_quantity(&r.current.average_value.as_ref()?.0)?,
                parse_quantity(&target.target.average_value.as_ref()?.0)?,
            ),
        };
        return Some(HpaMetric {
            name: r.name.clone(),
            current,
            target,
        });
    }
    None
}

/// Parses a Kubernetes quantity such as `500m`, `2`, `1.5Gi` or `3k`.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some(n * mult)
}

/// Expands an image name as a container runtime does: `nginx` becomes
/// `docker.io/library/nginx:latest`.
pub fn full_reference(image: &str) -> String {
    full_reference_cow(image).into_owned()
}

/// [`full_reference`] without a copy when the reference is already full,
/// as it nearly always is in a pod spec written by a deployment tool.
fn full_reference_cow(image: &str) -> Cow<'_, str> {
    let image = image.trim();
    let path: Cow<'_, str> = match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            Cow::Borrowed(image)
        }
        Some(_) => Cow::Owned(format!("docker.io/{image}")),
        None => Cow::Owned(format!("docker.io/library/{image}")),
    };
    let last = path.rsplit('/').next().unwrap_or("");
    if path.contains('@') || last.contains(':') {
        path
    } else {
        Cow::Owned(format!("{path}:latest"))
    }
}

/// Where a `Nominated` event points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Nominee {
    /// An existing node.
    Node(String),
    /// A NodeClaim, and its node once it has one.
    Claim {
        /// The NodeClaim.
        claim: String,
        /// Its node, when the message names one too.
        node: Option<String>,
    },
}

/// Parses Karpenter's "Pod should schedule on: nodeclaim/NAME[, node/NODE]".
pub fn parse_nominated(msg: &str) -> Option<Nominee> {
    let rest = msg.split_once("should schedule on:")?.1;
    let (mut claim, mut node) = (None, None);
    for part in rest.split(',') {
        let part = part.trim().trim_end_matches('.');
        if let Some(c) = part
            .strip_prefix("nodeclaim/")
            .or_else(|| part.strip_prefix("machine/"))
        {
            claim = Some(c.to_string());
        } else if let Some(n) = part.strip_prefix("node/") {
            node = Some(n.to_string());
        }
    }
    match (claim, node) {
        (Some(claim), node) => Some(Nominee::Claim { claim, node }),
        (None, Some(n)) => Some(Nominee::Node(n)),
        (None, None) => None,
    }
}

/// One group of a cluster-autoscaler scale-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupScaleUp {
    /// Node group.
    pub group: String,
    /// Size before.
    pub from: u32,
    /// Size after.
    pub to: u32,
}

/// Parses "pod triggered scale-up: [{GROUP 3->6 (max: 6)} {G2 0->1 (max: 3)}]".
pub fn parse_triggered_scale_up(msg: &str) -> Vec<GroupScaleUp> {
    let Some(rest) = msg.split_once("scale-up:").map(|(_, r)| r) else {
        return Vec::new();
    };
    rest.split('{')
        .skip(1)
        .filter_map(|chunk| {
            let chunk = chunk.split('}').next()?;
            let mut words = chunk.split_whitespace();
            let group = words.next()?.to_string();
            let (from, to) = words.next()?.split_once("->")?;
            Some(GroupScaleUp {
                group,
                from: from.parse().ok()?,
                to: to.parse().ok()?,
            })
        })
        .collect()
}

/// Parses "Scale-up: setting group GROUP size to 6 instead of 3 (max: 10)".
pub fn parse_scaled_up_group(msg: &str) -> Option<GroupScaleUp> {
    let rest = msg.split_once("setting group ")?.1;
    let (group, rest) = rest.split_once(" size to ")?;
    let (to, rest) = rest.split_once(" instead of ")?;
    let from = rest.split_whitespace().next()?;
    Some(GroupScaleUp {
        group: group.trim().to_string(),
        from: from.trim().parse().ok()?,
        to: to.trim().parse().ok()?,
    })
}

/// What a kubelet `Pulled` message says.
#[derive(Clone, Debug, PartialEq)]
pub struct Pulled {
    /// The image as the pod spec names it.
    pub image: String,
    /// Bytes, when the message reports them.
    pub bytes: Option<u64>,
    /// Pull seconds (without the queue wait), when reported.
    pub seconds: Option<f64>,
    /// Whether the image was already present.
    pub cached: bool,
}

/// Parses every form of kubelet's `Pulled` message.
pub fn parse_pulled(msg: &str) -> Option<Pulled> {
    let quoted = |s: &str| -> Option<(String, String)> {
        let (_, rest) = s.split_once('"')?;
        let (img, rest) = rest.split_once('"')?;
        Some((img.to_string(), rest.to_string()))
    };
    if msg.contains("already present on machine") {
        let (image, _) = quoted(msg)?;
        return Some(Pulled {
            image,
            bytes: None,
            seconds: None,
            cached: true,
        });
    }
    if !msg.contains("Successfully pulled image") {
        return None;
    }
    let (image, rest) = quoted(msg)?;
    let seconds = rest
        .trim_start()
        .strip_prefix("in ")
        .and_then(|r| r.split(|c: char| c.is_whitespace() || c == '(').next())
        .and_then(|d| parse_go_duration(d.trim_end_matches('.')));
    let bytes = rest.split_once("Image size:").and_then(|(_, r)| {
        r.split_whitespace()
            .next()
            .and_then(|n| n.trim_end_matches('.').parse().ok())
    });
    Some(Pulled {
        image,
        bytes,
        seconds,
        cached: false,
    })
}

/// Parses a Go duration string such as `1.5s`, `523ms`, `1m2.5s` or `850µs`.
pub fn parse_go_duration(s: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (num, tail) = rest.split_at(split);
        let n: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let mult = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += n * mult;
        rest = tail;
    }
    Some(total)
}
