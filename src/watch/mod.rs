//! Live watch: kube-runtime watchers on the kinds pullahead cares about,
//! fed through the [`Normalizer`] and published on a [`Bus`].
//!
//! - One `watcher(...).default_backoff()` stream per kind, with
//!   `managedFields` stripped as objects arrive, all merged into one task that
//!   owns the normaliser (so events come out in one time order). Pods, the
//!   busiest kind, are read as [`SlimPod`]s: only the fields the normaliser
//!   reads are ever built.
//! - On start and after every relist (410 Gone, a dropped connection) the
//!   [`tracker::Tracker`] of the kind turns the list into the changes a
//!   consumer needs: new and changed objects are applied, unchanged ones are
//!   skipped, and objects that vanished are deleted.
//! - Karpenter's NodeClaim and NodePool, and SIG Autoscaling's
//!   CapacityBuffer, are watched as `DynamicObject`s; when their CRD is
//!   absent (the list answers 404) this is logged once and the kind is
//!   dropped instead of retried forever. PodTemplates, which buffers name,
//!   are given up the same way on a 404.
//! - [`Readiness`] turns true once the initial list of every watched kind is
//!   done (an absent CRD counts as listed).
//! - Only derived state is kept: the trackers' keys and version hashes and
//!   the normaliser's per-object summaries, never whole objects.

pub mod client;
pub mod tracker;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use futures::stream::{self, BoxStream, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event as KubeEvent, Node, PodTemplate};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;

use crate::bus::Bus;
use crate::clock::Clock;
use crate::event::Event;
use crate::normalize::{Normalizer, Object, SlimPod};
use tracker::{Listed, Tracker};

/// Errors from watching.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API could not be reached or configured.
    #[error("cannot reach the Kubernetes API{}: {msg} (configuration tried: {tried})",
        url.as_deref().map(|u| format!(" at {u}")).unwrap_or_default())]
    Connect {
        /// The kubeconfig or in-cluster configuration that was tried.
        tried: String,
        /// The API server URL, when the configuration was read.
        url: Option<String>,
        /// What went wrong.
        msg: String,
    },
    /// Publishing on the bus failed.
    #[error(transparent)]
    Bus(#[from] crate::bus::Error),
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The Event reasons that are watched, each through its own field selector.
pub const EVENT_REASONS: &[&str] = &[
    "Nominated",
    "TriggeredScaleUp",
    "ScaledUpGroup",
    "NotTriggerScaleUp",
    "Pulled",
];

/// A watched kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// core/v1 Node.
    Node,
    /// karpenter.sh/v1 NodeClaim.
    NodeClaim,
    /// karpenter.sh/v1 NodePool.
    NodePool,
    /// core/v1 Pod.
    Pod,
    /// autoscaling/v2 HorizontalPodAutoscaler.
    Hpa,
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
    /// apps/v1 ReplicaSet.
    ReplicaSet,
    /// batch/v1 Job.
    Job,
    /// autoscaling.x-k8s.io/v1beta1 CapacityBuffer.
    CapacityBuffer,
    /// core/v1 PodTemplate, for the buffers that name one.
    PodTemplate,
    /// core/v1 Event with `reason=` this reason (one of [`EVENT_REASONS`]).
    Event(&'static str),
}

impl Kind {
    /// Every kind pullahead watches.
    pub fn all() -> Vec<Kind> {
        let mut k = vec![
            Kind::Node,
            Kind::NodeClaim,
            Kind::NodePool,
            Kind::Pod,
            Kind::Hpa,
            Kind::Deployment,
            Kind::StatefulSet,
            Kind::DaemonSet,
            Kind::ReplicaSet,
            Kind::Job,
            Kind::CapacityBuffer,
            Kind::PodTemplate,
        ];
        k.extend(EVENT_REASONS.iter().map(|r| Kind::Event(r)));
        k
    }

    /// Whether the kind comes from a CRD that may be absent.
    pub fn is_optional(self) -> bool {
        matches!(
            self,
            Kind::NodeClaim | Kind::NodePool | Kind::CapacityBuffer | Kind::PodTemplate
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Node => f.write_str("nodes"),
            Kind::NodeClaim => f.write_str("karpenter.sh/v1 nodeclaims"),
            Kind::NodePool => f.write_str("karpenter.sh/v1 nodepools"),
            Kind::Pod => f.write_str("pods"),
            Kind::Hpa => f.write_str("autoscaling/v2 horizontalpodautoscalers"),
            Kind::Deployment => f.write_str("apps/v1 deployments"),
            Kind::StatefulSet => f.write_str("apps/v1 statefulsets"),
            Kind::DaemonSet => f.write_str("apps/v1 daemonsets"),
            Kind::ReplicaSet => f.write_str("apps/v1 replicasets"),
            Kind::Job => f.write_str("batch/v1 jobs"),
            Kind::CapacityBuffer => f.write_str("autoscaling.x-k8s.io/v1beta1 capacitybuffers"),
            Kind::PodTemplate => f.write_str("podtemplates"),
            Kind::Event(r) => write!(f, "events reason={r}"),
        }
    }
}

/// The Karpenter v1 resource behind `kind` (NodeClaim or NodePool).
pub fn karpenter_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "karpenter.sh".into(),
        version: "v1".into(),
        api_version: "karpenter.sh/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// The CapacityBuffer resource: `autoscaling.x-k8s.io/v1beta1`, the storage
/// version of cluster-autoscaler's CRD (v1alpha1 has the same fields).
pub fn capacity_buffer_resource() -> ApiResource {
    ApiResource {
        group: "autoscaling.x-k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "autoscaling.x-k8s.io/v1beta1".into(),
        kind: "CapacityBuffer".into(),
        plural: "capacitybuffers".into(),
    }
}

/// What to watch.
#[derive(Clone, Debug)]
pub struct Config {
    /// The kinds to watch.
    pub kinds: Vec<Kind>,
    /// List page size; `None` for the watcher's default.
    pub page_size: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            kinds: Kind::all(),
            page_size: None,
        }
    }
}

/// Whether the initial list of every watched kind is done.
#[derive(Clone, Debug)]
pub struct Readiness {
    tx: Arc<tokio::sync::watch::Sender<bool>>,
    pending: Arc<Mutex<BTreeSet<Kind>>>,
}

impl Readiness {
    /// Not ready until each of `kinds` has been listed once.
    pub fn new(kinds: &[Kind]) -> Self {
        let (tx, _) = tokio::sync::watch::channel(kinds.is_empty());
        Self {
            tx: Arc::new(tx),
            pending: Arc::new(Mutex::new(kinds.iter().copied().collect())),
        }
    }

    /// Whether every kind has been listed.
    pub fn is_ready(&self) -> bool {
        *self.tx.borrow()
    }

    /// Kinds whose initial list is not done yet.
    pub fn pending(&self) -> Vec<Kind> {
        match self.pending.lock() {
            Ok(p) => p.iter().copied().collect(),
            Err(p) => p.into_inner().iter().copied().collect(),
        }
    }

    /// Waits until ready.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // An error means the sender is gone, which cannot happen while
        // `self` holds it.
        let _ = rx.wait_for(|r| *r).await;
    }

    fn listed(&self, kind: Kind) {
        let mut p = match self.pending.lock() {
            Ok(p) => p,
            Err(p) => p.into_inner(),
        };
        if p.remove(&kind) {
            tracing::info!(%kind, "initial list done");
        }
        if p.is_empty() && !*self.tx.borrow() {
            tracing::info!("every watched kind listed: ready");
            self.tx.send_replace(true);
        }
    }
}

/// Counters of one watch run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events handed to the bus.
    pub events: u64,
    /// Relists started (the first list included).
    pub lists: u64,
    /// Deletes derived from relists.
    pub relist_deletes: u64,
    /// Listed objects skipped because their version was already seen.
    pub unchanged: u64,
    /// Objects the normaliser refused.
    pub normalize_errors: u64,
    /// Watch errors (each followed by a backoff and retry).
    pub watch_errors: u64,
    /// Optional kinds given up because their CRD is absent.
    pub absent: Vec<Kind>,
}

/// The state machine between watcher events and schema-v1 events: the
/// trackers, the normaliser and the time order. No I/O, so tests and benches
/// drive it directly.
pub struct Watcher {
    trackers: FxHashMap<Kind, Tracker>,
    normalizer: Normalizer,
    readiness: Readiness,
    last_ts: f64,
    stats: Stats,
    /// Scratch space for the key of the object at hand, reused so that a
    /// watch event costs no allocation just to find its tracker entry.
    key: String,
}

/// Writes the object's key (`namespace/name`, or `name`) into `buf`;
/// `false` when the object has no name.
fn key_of(meta: &ObjectMeta, buf: &mut String) -> bool {
    let Some(name) = meta.name.as_deref() else {
        return false;
    };
    buf.clear();
    if let Some(ns) = meta.namespace.as_deref().filter(|ns| !ns.is_empty()) {
        buf.push_str(ns);
        buf.push('/');
    }
    buf.push_str(name);
    true
}

fn version_of(obj: &Object) -> &str {
    obj.metadata()
        .resource_version
        .as_deref()
        .unwrap_or_default()
}

/// An object of `kind` that carries only the name in `key`: what a delete
/// derived from a relist knows about the object.
fn tombstone(kind: Kind, key: &str) -> Object {
    let (namespace, name) = match key.split_once('/') {
        Some((ns, n)) => (Some(ns.to_string()), n.to_string()),
        None => (None, key.to_string()),
    };
    let metadata = ObjectMeta {
        name: Some(name.clone()),
        namespace: namespace.clone(),
        ..Default::default()
    };
    let dynamic = |k: &str, plural: &str| {
        let mut o = DynamicObject::new(&name, &karpenter_resource(k, plural));
        o.metadata.namespace = namespace.clone();
        Box::new(o)
    };
    match kind {
        Kind::Node => Object::Node(Box::new(Node {
            metadata,
            ..Default::default()
        })),
        Kind::NodeClaim => Object::NodeClaim(dynamic("NodeClaim", "nodeclaims")),
        Kind::NodePool => Object::NodePool(dynamic("NodePool", "nodepools")),
        Kind::Pod => Object::Pod(SlimPod {
            metadata,
            ..Default::default()
        }),
        Kind::Hpa => Object::Hpa(Box::new(HorizontalPodAutoscaler {
            metadata,
            ..Default::default()
        })),
        Kind::Deployment => Object::Deployment(Box::new(Deployment {
            metadata,
            ..Default::default()
        })),
        Kind::StatefulSet => Object::StatefulSet(Box::new(StatefulSet {
            metadata,
            ..Default::default()
        })),
        Kind::DaemonSet => Object::DaemonSet(Box::new(DaemonSet {
            metadata,
            ..Default::default()
        })),
        Kind::ReplicaSet => Object::ReplicaSet(Box::new(ReplicaSet {
            metadata,
            ..Default::default()
        })),
        Kind::Job => Object::Job(Box::new(Job {
            metadata,
            ..Default::default()
        })),
        Kind::Event(_) => Object::Event(Box::new(KubeEvent {
            metadata,
            ..Default::default()
        })),
        Kind::CapacityBuffer => {
            let mut o = DynamicObject::new(&name, &capacity_buffer_resource());
            o.metadata.namespace = namespace.clone();
            Object::CapacityBuffer(Box::new(o))
        }
        Kind::PodTemplate => Object::PodTemplate(Box::new(PodTemplate {
            metadata,
            ..Default::default()
        })),
    }
}

impl Watcher {
    /// A watcher of `kinds` that reports its initial lists to `readiness`.
    pub fn new(kinds: &[Kind], readiness: Readiness) -> Self {
        Self {
            trackers: kinds.iter().map(|k| (*k, Tracker::new())).collect(),
            normalizer: Normalizer::new(),
            readiness,
            last_ts: f64::NEG_INFINITY,
            stats: Stats::default(),
            key: String::new(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The normaliser, for its own counters.
    pub fn normalizer(&self) -> &Normalizer {
        &self.normalizer
    }

    /// Objects currently known, over all kinds.
    pub fn known_objects(&self) -> usize {
        self.trackers.values().map(Tracker::len).sum()
    }

    /// Approximate heap bytes of the trackers (the normaliser's state comes
    /// on top; benches measure the whole by RSS).
    pub fn tracker_bytes(&self) -> usize {
        self.trackers.values().map(Tracker::heap_bytes).sum()
    }

    /// Normalises `obj` (`deleted`: as it was last). Borrowed: the caller
    /// drops the watch event's object where it took it apart.
    fn normalize(&mut self, ts: f64, obj: &Object, deleted: bool, out: &mut Vec<Event>) {
        if let Err(e) = self.normalizer.apply_object(ts, obj, deleted, out) {
            self.stats.normalize_errors += 1;
            tracing::warn!(error = %e, "object skipped by the normaliser");
        }
    }

    /// Handles one watcher event of `kind` seen at `now`; appends the
    /// resulting schema-v1 events to `out`. The event is dropped here.
    pub fn handle(
        &mut self,
        kind: Kind,
        event: watcher::Event<Object>,
        now: f64,
        out: &mut Vec<Event>,
    ) {
        self.handle_ref(kind, &event, now, out);
    }

    /// [`Watcher::handle`] for a caller that keeps the event: only what the
    /// state needs is read, so nothing of it is copied or moved. Benches use
    /// it to tell the cost of dropping Kubernetes objects from the rest.
    pub fn handle_ref(
        &mut self,
        kind: Kind,
        event: &watcher::Event<Object>,
        now: f64,
        out: &mut Vec<Event>,
    ) {
        // Events leave in time order even if the wall clock steps back.
        let ts = if now > self.last_ts {
            now
        } else {
            self.last_ts
        };
        self.last_ts = ts;
        let start = out.len();
        let Some(tracker) = self.trackers.get_mut(&kind) else {
            return;
        };
        // Matched by reference: the object is read where it lies, not moved
        // (a Pod is over a kilobyte inline).
        match event {
            watcher::Event::Init => {
                self.stats.lists += 1;
                tracker.init();
            }
            watcher::Event::InitApply(obj) => {
                if !key_of(obj.metadata(), &mut self.key) {
                    return;
                }
                match tracker.listed(&self.key, version_of(obj)) {
                    Listed::Changed => self.normalize(ts, obj, false, out),
                    Listed::Unchanged => self.stats.unchanged += 1,
                }
            }
            watcher::Event::InitDone => {
                let gone = tracker.init_done();
                if !gone.is_empty() {
                    tracing::info!(%kind, deleted = gone.len(), "relist found objects deleted while not watching");
                }
                for key in gone {
                    self.stats.relist_deletes += 1;
                    self.normalize(ts, &tombstone(kind, &key), true, out);
                }
                self.readiness.listed(kind);
            }
            watcher::Event::Apply(obj) => {
                if !key_of(obj.metadata(), &mut self.key) {
                    return;
                }
                if tracker.applied(&self.key, version_of(obj)) == Listed::Changed {
                    self.normalize(ts, obj, false, out);
                }
            }
            watcher::Event::Delete(obj) => {
                if key_of(obj.metadata(), &mut self.key) {
                    tracker.deleted(&self.key);
                }
                self.normalize(ts, obj, true, out);
            }
        }
        self.stats.events += (out.len() - start) as u64;
    }

    /// Handles a watch error of `kind`. Returns `false` when the kind is
    /// given up (its CRD is absent).
    pub fn handle_error(&mut self, kind: Kind, error: &watcher::Error) -> bool {
        if kind.is_optional() && is_not_found(error) {
            tracing::warn!(%kind, "the resource is not served (404; its CRD is not installed); going on without it");
            self.stats.absent.push(kind);
            self.trackers.remove(&kind);
            self.readiness.listed(kind);
            return false;
        }
        self.stats.watch_errors += 1;
        if is_gone(error) {
            tracing::info!(%kind, "resource version expired (410 Gone); relisting");
        } else {
            tracing::warn!(%kind, %error, "watch failed; retrying with backoff");
        }
        true
    }
}

fn api_status(error: &watcher::Error) -> Option<u16> {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    }
}

fn is_not_found(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::InitialListFailed(_)) && api_status(error) == Some(404)
}

fn is_gone(error: &watcher::Error) -> bool {
    api_status(error) == Some(410)
}

type Item = (Kind, watcher::Result<watcher::Event<Object>>);

fn map_event<K>(e: watcher::Event<K>, wrap: fn(K) -> Object) -> watcher::Event<Object> {
    match e {
        watcher::Event::Apply(o) => watcher::Event::Apply(wrap(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(wrap(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(wrap(o)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// One kind's watcher stream. For an optional kind the stream ends after
/// the first "not found", so an absent CRD is not retried forever.
fn watch_stream<K>(
    api: Api<K>,
    cfg: watcher::Config,
    kind: Kind,
    wrap: fn(K) -> Object,
) -> BoxStream<'static, Item>
where
    K: Resource + Clone + DeserializeOwned + fmt::Debug + Send + 'static,
{
    watcher(api, cfg)
        .default_backoff()
        .modify(|o: &mut K| o.managed_fields_mut().clear())
        .map(move |r| (kind, r.map(|e| map_event(e, wrap))))
        .scan(false, move |ended, item| {
            if *ended {
                return futures::future::ready(None);
            }
            if kind.is_optional()
                && let Err(e) = &item.1
                && is_not_found(e)
            {
                *ended = true;
            }
            futures::future::ready(Some(item))
        })
        .boxed()
}

fn streams(client: &Client, config: &Config) -> Vec<BoxStream<'static, Item>> {
    let base = || {
        let c = watcher::Config::default();
        match config.page_size {
            Some(n) => c.page_size(n),
            None => c,
        }
    };
    config
        .kinds
        .iter()
        .map(|&kind| {
            let c = client.clone();
            match kind {
                Kind::Node => watch_stream(Api::<Node>::all(c), base(), kind, |o| {
                    Object::Node(Box::new(o))
                }),
                // Only the fields the normaliser reads are parsed: a full
                // k8s-openapi Pod costed as much to build and free as
                // everything else a watch event does.
                Kind::Pod => watch_stream(Api::<SlimPod>::all(c), base(), kind, Object::Pod),
                Kind::Hpa => {
                    watch_stream(Api::<HorizontalPodAutoscaler>::all(c), base(), kind, |o| {
                        Object::Hpa(Box::new(o))
                    })
                }
                Kind::Deployment => watch_stream(Api::<Deployment>::all(c), base(), kind, |o| {
                    Object::Deployment(Box::new(o))
                }),
                Kind::StatefulSet => watch_stream(Api::<StatefulSet>::all(c), base(), kind, |o| {
                    Object::StatefulSet(Box::new(o))
                }),
                Kind::DaemonSet => watch_stream(Api::<DaemonSet>::all(c), base(), kind, |o| {
                    Object::DaemonSet(Box::new(o))
                }),
                Kind::ReplicaSet => watch_stream(Api::<ReplicaSet>::all(c), base(), kind, |o| {
                    Object::ReplicaSet(Box::new(o))
                }),
                Kind::Job => watch_stream(Api::<Job>::all(c), base(), kind, |o| {
                    Object::Job(Box::new(o))
                }),
                Kind::NodeClaim => {
                    let ar = karpenter_resource("NodeClaim", "nodeclaims");
                    watch_stream(Api::<DynamicObject>::all_with(c, &ar), base(), kind, |o| {
                        Object::NodeClaim(Box::new(o))
                    })
                }
                Kind::NodePool => {
                    let ar = karpenter_resource("NodePool", "nodepools");
                    watch_stream(Api::<DynamicObject>::all_with(c, &ar), base(), kind, |o| {
                        Object::NodePool(Box::new(o))
                    })
                }
                Kind::CapacityBuffer => {
                    let ar = capacity_buffer_resource();
                    watch_stream(Api::<DynamicObject>::all_with(c, &ar), base(), kind, |o| {
                        Object::CapacityBuffer(Box::new(o))
                    })
                }
                Kind::PodTemplate => watch_stream(Api::<PodTemplate>::all(c), base(), kind, |o| {
                    Object::PodTemplate(Box::new(o))
                }),
                Kind::Event(reason) => watch_stream(
                    Api::<KubeEvent>::all(c),
                    base().fields(&format!("reason={reason}")),
                    kind,
                    |o| Object::Event(Box::new(o)),
                ),
            }
        })
        .collect()
}

/// Watches until `shutdown` completes (or every stream has ended),
/// publishing the normalised events on `bus`.
pub async fn run(
    client: Client,
    config: &Config,
    bus: &dyn Bus,
    clock: &dyn Clock,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Stats> {
    let mut watcher = Watcher::new(&config.kinds, readiness);
    let mut merged = stream::select_all(streams(&client, config));
    let mut out = Vec::new();
    tokio::pin!(shutdown);
    loop {
        let item = tokio::select! {
            biased;
            () = &mut shutdown => break,
            item = merged.next() => item,
        };
        let Some((kind, item)) = item else { break };
        match item {
            Ok(event) => {
                watcher.handle(kind, event, clock.now(), &mut out);
                if !out.is_empty() {
                    bus.publish_all(&out).await?;
                    out.clear();
                }
            }
            Err(e) => {
                watcher.handle_error(kind, &e);
            }
        }
    }
    Ok(watcher.stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Body, NodePhase, PodPhase};

    fn pod(name: &str, rv: &str, node: Option<&str>) -> Object {
        Object::Pod(SlimPod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            spec: Some(crate::normalize::slim_pod::SlimPodSpec {
                node_name: node.map(Into::into),
                containers: vec![crate::normalize::slim_pod::SlimContainer {
                    image: Some("registry.example/app:1".into()),
                }],
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn node(name: &str, rv: &str) -> Object {
        Object::Node(Box::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        }))
    }

    #[test]
    fn readiness_waits_for_every_kind() {
        let r = Readiness::new(&[Kind::Node, Kind::Pod]);
        assert!(!r.is_ready());
        r.listed(Kind::Node);
        assert!(!r.is_ready());
        assert_eq!(r.pending(), vec![Kind::Pod]);
        r.listed(Kind::Pod);
        assert!(r.is_ready());
        // A later relist keeps it ready.
        r.listed(Kind::Pod);
        assert!(r.is_ready());
        assert!(Readiness::new(&[]).is_ready());
    }

    #[test]
    fn a_relist_deletes_what_vanished_with_the_retained_state() {
        let kinds = [Kind::Pod, Kind::Node];
        let mut w = Watcher::new(&kinds, Readiness::new(&kinds));
        let mut out = Vec::new();
        w.handle(Kind::Pod, watcher::Event::Init, 1.0, &mut out);
        w.handle(
            Kind::Pod,
            watcher::Event::InitApply(pod("a", "1", Some("n1"))),
            1.0,
            &mut out,
        );
        w.handle(
            Kind::Pod,
            watcher::Event::InitApply(pod("b", "2", None)),
            1.0,
            &mut out,
        );
        w.handle(Kind::Pod, watcher::Event::InitDone, 1.0, &mut out);
        w.handle(
            Kind::Node,
            watcher::Event::Apply(node("n1", "3")),
            1.5,
            &mut out,
        );
        out.clear();
        // Relist: a is gone, b unchanged.
        w.handle(Kind::Pod, watcher::Event::Init, 2.0, &mut out);
        w.handle(
            Kind::Pod,
            watcher::Event::InitApply(pod("b", "2", None)),
            2.0,
            &mut out,
        );
        w.handle(Kind::Pod, watcher::Event::InitDone, 2.0, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        match &out[0].body {
            Body::Pod(p) => {
                assert_eq!(p.pod, "ns/a");
                assert_eq!(p.phase, PodPhase::Deleted);
                // The tombstone had only a name; the rest is retained state.
                assert_eq!(p.node.as_deref(), Some("n1"));
                assert_eq!(p.images, vec!["registry.example/app:1".to_string()]);
            }
            b => panic!("unexpected {b:?}"),
        }
        assert_eq!(w.stats().relist_deletes, 1);
        assert_eq!(w.stats().unchanged, 1);
        // Time never goes backwards even if the clock does.
        out.clear();
        w.handle(
            Kind::Node,
            watcher::Event::Delete(node("n1", "4")),
            0.5,
            &mut out,
        );
        assert!(matches!(&out[0].body, Body::Node(n) if n.phase == NodePhase::Deleted));
        assert_eq!(out[0].ts, 2.0);
    }

    #[test]
    fn only_optional_kinds_are_given_up_on_404() {
        let kinds = [Kind::Node, Kind::NodeClaim];
        let ready = Readiness::new(&kinds);
        let mut w = Watcher::new(&kinds, ready.clone());
        let status = |code| {
            watcher::Error::InitialListFailed(kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            })))
        };
        assert!(
            w.handle_error(Kind::Node, &status(404)),
            "a core kind is retried"
        );
        assert!(
            w.handle_error(Kind::NodeClaim, &status(500)),
            "a 500 is retried"
        );
        assert!(!w.handle_error(Kind::NodeClaim, &status(404)));
        assert_eq!(w.stats().absent, vec![Kind::NodeClaim]);
        assert_eq!(ready.pending(), vec![Kind::Node]);
    }
}
