//! The core loop of `pullahead run`: events in, the planner, and the
//! resulting per-node plans out as `NodePrefetch` objects.
//!
//! One task owns all state, so there are no locks on the hot path. The loop
//! takes an event, lets the planner turn it into [`PullOrder`]s, folds those
//! into the plan of the node they target, and marks that node dirty. Dirty
//! nodes are written with server-side apply, one object per node, at most
//! `write_concurrency` at a time and at most one per node at a time, so a
//! burst of events about one node becomes one write of its latest plan.
//!
//! Every replica folds every event, so a standby has the full plan the
//! moment it becomes leader; only the leader writes. The policy, its ticks
//! and the per-node plans are a [`Driver`]'s, the same as `replay`'s: orders
//! aimed at a NodeClaim wait until the claim's node is known, and each node
//! keeps its `max_images_per_node` best images.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node as KubeNode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::decisions::DecisionLog;
use crate::dispatch::crd::{ImageOrder, NodePrefetch};
use crate::event::{Body, Event};
use crate::metrics::Metrics;
use crate::plan::book::Placed;
use crate::plan::{Driver, Sink};
use crate::policy::{Policy, PullOrder, Reason};
use crate::scorecard::Scorecard;

pub use crate::plan::TimeSource;

/// What can go wrong in the loop itself (individual writes only count
/// failures; they never stop the loop).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The decision file could not be written.
    #[error(transparent)]
    Decisions(#[from] crate::decisions::Error),
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The field manager name used for server-side apply.
pub const FIELD_MANAGER: &str = "pullahead";

/// Tunables of the loop.
#[derive(Clone, Debug)]
pub struct Options {
    /// Write nothing; only record decisions.
    pub dry_run: bool,
    /// Images kept per node, highest priority first.
    pub max_images_per_node: usize,
    /// Concurrent writes.
    pub write_concurrency: usize,
    /// Seconds after the order by which a pull is useful.
    pub deadline: f64,
    /// Grace for in-flight writes after shutdown.
    pub shutdown_timeout: Duration,
}

/// A node waiting to be written, and the earliest event it is waiting on.
#[derive(Clone, Copy, Debug)]
struct Dirty {
    since: Instant,
    kind: &'static str,
}

/// What the loop did, returned when it stops.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events handled.
    pub events: u64,
    /// Orders the planner emitted.
    pub orders: u64,
    /// Writes completed successfully.
    pub writes: u64,
    /// Writes that failed.
    pub write_errors: u64,
    /// Writes abandoned at shutdown because the grace period ran out.
    pub writes_abandoned: u64,
}

/// The result of one write task: the node, the uid learned, and the outcome.
type WriteResult = (String, Option<String>, Result<(), WriteError>);

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("node is gone")]
    NodeGone,
    #[error(transparent)]
    Api(#[from] kube::Error),
}

/// The controller loop. Build it with [`Controller::new`], then [`Controller::run`].
pub struct Controller {
    opts: Options,
    driver: Driver,
    metrics: Metrics,
    client: Option<kube::Client>,
    decisions: Option<DecisionLog>,
    scorecard: Scorecard,
    /// Each planned Node's uid, for the ownerReference; looked up on its
    /// first write.
    uids: HashMap<String, String>,
    dirty: HashMap<String, Dirty>,
    /// Dirty nodes in the order they became dirty, for fairness.
    queue: VecDeque<String>,
    writing: HashSet<String>,
    /// Nodes whose last write failed: when to try again, soonest first.
    retries: BinaryHeap<Reverse<(Instant, String)>>,
    /// Consecutive failures per node, for the backoff.
    failures: HashMap<String, u32>,
    /// Told the number of events applied so far, after each batch: the
    /// Kafka consumer acknowledges only those.
    applied: Option<watch::Sender<u64>>,
    /// Test-only fault: abort the process on receiving this event (1-based),
    /// before applying it.
    abort_before: Option<u64>,
    /// Agent reports (`NodePrefetch` status) for the scorecard.
    reports: Option<mpsc::Receiver<PrefetchReport>>,
    summary: Summary,
}

impl Controller {
    /// A controller writing through `client` (`None`, or `opts.dry_run`,
    /// writes nothing).
    pub fn new(
        opts: Options,
        policy: Box<dyn Policy>,
        time: TimeSource,
        metrics: Metrics,
        client: Option<kube::Client>,
        decisions: Option<DecisionLog>,
    ) -> Self {
        let client = if opts.dry_run { None } else { client };
        Self {
            scorecard: Scorecard::new(metrics.clone()),
            driver: Driver::new(policy, time, opts.max_images_per_node),
            opts,
            metrics,
            client,
            decisions,
            uids: HashMap::new(),
            dirty: HashMap::new(),
            queue: VecDeque::new(),
            writing: HashSet::new(),
            retries: BinaryHeap::new(),
            failures: HashMap::new(),
            applied: None,
            abort_before: None,
            reports: None,
            summary: Summary::default(),
        }
    }

    /// Reports the number of events applied (planned, and their decisions
    /// flushed) on `applied` after each batch, so that a source can
    /// acknowledge exactly those.
    pub fn report_applied(mut self, applied: watch::Sender<u64>) -> Self {
        self.applied = Some(applied);
        self
    }

    /// Test-only fault: on receiving event `n` (1-based), the process waits
    /// 2.5 s (so that Kafka's auto-commit commits what it would), then
    /// aborts before applying it, as a crash between a consume and its
    /// apply would.
    pub fn abort_before_event(mut self, n: Option<u64>) -> Self {
        self.abort_before = n;
        self
    }

    /// Takes the agents' reports (what each node has), for the waste and
    /// lead-time metrics.
    pub fn with_reports(mut self, reports: mpsc::Receiver<PrefetchReport>) -> Self {
        self.reports = Some(reports);
        self
    }

    fn take_report(&mut self, r: PrefetchReport) {
        let now = self.driver.now();
        self.scorecard.reported(&r.node, &r.present, now);
    }

    /// Runs until `shutdown` is set or `events` closes. Plans only while
    /// `leader` is true... and writes only then; see the module docs.
    /// On shutdown, stops taking events and lets in-flight writes finish
    /// within the grace period.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut leader: watch::Receiver<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<Summary> {
        let mut inflight: JoinSet<WriteResult> = JoinSet::new();
        // On a live clock the policy's ticks (the HPA trend's samples, plans
        // that wait a few seconds) come from a timer.
        let live_every = self.driver.live_tick_every();
        let mut live_ticks = tokio::time::interval(live_every.unwrap_or(Duration::from_secs(3600)));
        live_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leader_open = true;
        let mut is_leader = *leader.borrow_and_update();
        let mut reports = self.reports.take();
        loop {
            if is_leader {
                self.start_writes(&mut inflight);
            }
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => break,
                Some(done) = inflight.join_next(), if !inflight.is_empty() => self.finish(done),
                _ = sleep_until_first(&self.retries), if !self.retries.is_empty() => self.requeue_due(),
                r = next_report(&mut reports), if reports.is_some() => match r {
                    Some(r) => self.take_report(r),
                    None => reports = None,
                },
                _ = live_ticks.tick(), if live_every.is_some() => {
                    self.tick(Instant::now())?;
                    if let Some(d) = self.decisions.as_mut() {
                        d.flush()?;
                    }
                }
                changed = leader.changed(), if leader_open => {
                    if changed.is_err() {
                        // The election stopped (shutdown); keep the last role.
                        leader_open = false;
                        continue;
                    }
                    let now = *leader.borrow_and_update();
                    if now && !is_leader {
                        tracing::info!(nodes = self.driver.book().len(), "became leader; writing every plan");
                        self.mark_all_dirty();
                    }
                    if !now && is_leader {
                        tracing::info!("lost leadership; writes stop");
                    }
                    is_leader = now;
                }
                got = events.recv() => {
                    let Some(first) = got else { break };
                    let arrived = Instant::now();
                    self.handle(&first, arrived)?;
                    // Take what else is already queued before writing, so a
                    // burst costs one write per node, without waiting.
                    for _ in 0..1024 {
                        match events.try_recv() {
                            Ok(e) => self.handle(&e, arrived)?,
                            Err(_) => break,
                        }
                    }
                    if let Some(d) = self.decisions.as_mut() {
                        d.flush()?;
                    }
                    if let Some(applied) = &self.applied {
                        applied.send_replace(self.summary.events);
                    }
                }
            }
        }
        // The event source ended (a finite file): write what is planned.
        if !*shutdown.borrow() && is_leader {
            loop {
                self.start_writes(&mut inflight);
                if inflight.is_empty() {
                    break;
                }
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => break,
                    Some(done) = inflight.join_next() => self.finish(done),
                }
            }
        }
        self.drain(inflight).await;
        if let Some(d) = self.decisions.as_mut() {
            d.flush()?;
        }
        Ok(self.summary)
    }

    /// Lets in-flight writes finish within the grace period, then abandons
    /// the rest. Dirty nodes not yet started are left: the next leader
    /// writes every plan when it takes over.
    async fn drain(&mut self, mut inflight: JoinSet<WriteResult>) {
        let deadline = tokio::time::Instant::now() + self.opts.shutdown_timeout;
        while !inflight.is_empty() {
            match tokio::time::timeout_at(deadline, inflight.join_next()).await {
                Ok(Some(done)) => self.finish(done),
                Ok(None) => break,
                Err(_) => {
                    let left = inflight.len() as u64;
                    tracing::warn!(left, "shutdown grace period over; abandoning writes");
                    self.summary.writes_abandoned += left;
                    inflight.abort_all();
                    break;
                }
            }
        }
    }

    fn handle(&mut self, event: &Event, arrived: Instant) -> Result<()> {
        if self.abort_before == Some(self.summary.events + 1) {
            tracing::error!(
                events = self.summary.events,
                "fault injection: aborting before applying the next event"
            );
            // Longer than the consumer's auto-commit interval, so that every
            // offset stored by now is committed before the process dies.
            std::thread::sleep(FAULT_PAUSE);
            std::process::abort();
        }
        let started = Instant::now();
        let mut act = Act {
            summary: &mut self.summary,
            metrics: &self.metrics,
            decisions: &mut self.decisions,
            scorecard: &mut self.scorecard,
            uids: &mut self.uids,
            dirty: &mut self.dirty,
            queue: &mut self.queue,
            writes: self.client.is_some(),
            arrived,
            kind: event.body.type_name(),
        };
        let awaiting = self.driver.book().awaiting_len();
        self.driver.feed(event, &mut act)?;
        if self.driver.book().awaiting_len() != awaiting {
            self.set_awaiting_gauge();
        }
        self.metrics
            .planner_decision
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Lets the policy act on the passing of time alone (a live timer).
    fn tick(&mut self, arrived: Instant) -> Result<()> {
        let mut act = Act {
            summary: &mut self.summary,
            metrics: &self.metrics,
            decisions: &mut self.decisions,
            scorecard: &mut self.scorecard,
            uids: &mut self.uids,
            dirty: &mut self.dirty,
            queue: &mut self.queue,
            writes: self.client.is_some(),
            arrived,
            kind: "tick",
        };
        self.driver.tick(&mut act)
    }

    /// A write found no Node yet: when a NodeClaim names its node before
    /// the Node is visible (watch streams race, caches lag), the book keeps
    /// the plan until the Node shows up (its watch event writes it), or the
    /// claim or Node is deleted. Also retried on the write backoff, in case
    /// the Node's event came before the failed GET. Bounded: past
    /// [`MAX_AWAITING_NODE`] the plan is dropped and counted.
    fn await_node(&mut self, node: String) {
        if !self.driver.book_mut().await_node(&node) {
            tracing::warn!(%node, "too many plans awaiting their node; dropping this one");
            self.metrics
                .events_dropped
                .with_label_values(&["awaiting-node-full"])
                .inc();
            self.dirty.remove(&node);
            return;
        }
        tracing::debug!(%node, "node not visible yet; keeping its plan");
        self.set_awaiting_gauge();
        self.retry_later(node);
    }

    fn set_awaiting_gauge(&self) {
        self.metrics
            .plans_awaiting_node
            .set(self.driver.book().awaiting_len() as i64);
    }

    /// Requeues `node` after a backoff (1 s doubling to 30 s).
    fn retry_later(&mut self, node: String) {
        let n = self.failures.entry(node.clone()).or_insert(0);
        *n = n.saturating_add(1);
        let delay = Duration::from_secs(1u64 << (*n - 1).min(5)).min(RETRY_MAX);
        self.retries.push(Reverse((Instant::now() + delay, node)));
    }

    /// On becoming leader: every plan is (re)written, and latency is counted
    /// from now, not from when a follower first saw the event.
    fn mark_all_dirty(&mut self) {
        if self.client.is_none() {
            return;
        }
        let now = Instant::now();
        let nodes: Vec<String> = self.driver.book().nodes().map(String::from).collect();
        for node in nodes {
            let fresh = Dirty {
                since: now,
                kind: "leader",
            };
            if self.dirty.insert(node.clone(), fresh).is_none() {
                self.queue.push_back(node);
            }
        }
    }

    /// The image list of `node`'s plan, highest priority first, capped.
    fn images(&self, node: &str) -> Vec<ImageOrder> {
        node_prefetch_images(self.driver.book(), node, self.opts.deadline)
    }

    fn start_writes(&mut self, inflight: &mut JoinSet<WriteResult>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let mut skipped = Vec::new();
        while inflight.len() < self.opts.write_concurrency {
            let Some(node) = self.queue.pop_front() else {
                break;
            };
            if self.writing.contains(&node) {
                // One write per node at a time; this one goes after.
                skipped.push(node);
                continue;
            }
            let Some(dirty) = self.dirty.remove(&node) else {
                continue;
            };
            if !self.driver.book().has(&node) {
                continue;
            }
            let uid = self.uids.get(&node).cloned();
            let images = self.images(&node);
            self.writing.insert(node.clone());
            let metrics = self.metrics.clone();
            let client = client.clone();
            inflight.spawn(async move {
                let (uid, result) = write(client, &node, uid, images, dirty, &metrics).await;
                (node, uid, result)
            });
        }
        for node in skipped.into_iter().rev() {
            self.queue.push_front(node);
        }
    }

    /// Moves nodes whose retry time has come back into the write queue.
    fn requeue_due(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, _))) = self.retries.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, node))) = self.retries.pop() else {
                break;
            };
            if self.driver.book().has(&node) && !self.dirty.contains_key(&node) {
                self.dirty.insert(
                    node.clone(),
                    Dirty {
                        since: now,
                        kind: "retry",
                    },
                );
                self.queue.push_back(node);
            }
        }
    }

    fn finish(&mut self, done: std::result::Result<WriteResult, tokio::task::JoinError>) {
        let Ok((node, uid, result)) = done else {
            self.summary.write_errors += 1;
            return;
        };
        self.writing.remove(&node);
        match result {
            Ok(()) => {
                self.failures.remove(&node);
                if self.driver.book_mut().node_written(&node) {
                    self.set_awaiting_gauge();
                }
                self.summary.writes += 1;
                self.metrics
                    .nodeprefetch_writes
                    .with_label_values(&["ok"])
                    .inc();
                if let Some(uid) = uid
                    && self.driver.book().has(&node)
                {
                    self.uids.insert(node, uid);
                }
            }
            Err(WriteError::NodeGone) => {
                self.metrics
                    .nodeprefetch_writes
                    .with_label_values(&["node-pending"])
                    .inc();
                self.uids.remove(&node);
                self.await_node(node);
            }
            Err(WriteError::Api(e)) => {
                tracing::warn!(%node, error = %e, "writing NodePrefetch failed; will retry");
                self.summary.write_errors += 1;
                self.metrics
                    .nodeprefetch_writes
                    .with_label_values(&["error"])
                    .inc();
                // Retry with backoff, so a refusing API server is not
                // hammered; the plan is still what we want.
                self.retry_later(node);
            }
        }
    }
}

/// What the driver's decisions do in the controller: count, record, and
/// mark the nodes whose plan changed for writing.
struct Act<'a> {
    summary: &'a mut Summary,
    metrics: &'a Metrics,
    decisions: &'a mut Option<DecisionLog>,
    scorecard: &'a mut Scorecard,
    uids: &'a mut HashMap<String, String>,
    dirty: &'a mut HashMap<String, Dirty>,
    queue: &'a mut VecDeque<String>,
    /// Whether anything is written (a client and no dry run).
    writes: bool,
    arrived: Instant,
    kind: &'static str,
}

impl Sink for Act<'_> {
    type Error = Error;

    fn ordered(&mut self, ts: f64, policy: &str, order: &PullOrder) -> Result<()> {
        self.summary.orders += 1;
        self.metrics
            .pull_orders
            .with_label_values(&[order.reason.as_str()])
            .inc();
        if let Some(d) = self.decisions.as_mut() {
            d.record(ts, policy, order)?;
        }
        Ok(())
    }

    fn event(&mut self, event: &Event, now: f64) {
        self.summary.events += 1;
        self.metrics.events.with_label_values(&[self.kind]).inc();
        self.scorecard.observe(event);
        self.metrics
            .watch_last_event
            .with_label_values(&[source_kind(&event.body)])
            .set(now);
    }

    fn node_visible(&mut self, node: &str) {
        // The plan kept for it can be written now.
        self.mark_dirty(node);
    }

    fn forgotten(&mut self, node: &str) {
        self.dirty.remove(node);
        self.uids.remove(node);
    }

    fn placed(&mut self, order: &PullOrder, placed: &Placed, _now: f64) {
        let node = match placed {
            Placed::Parked => return,
            Placed::ParkFull => {
                self.metrics
                    .events_dropped
                    .with_label_values(&["claim-orders-full"])
                    .inc();
                return;
            }
            Placed::Unchanged { node } | Placed::Capped { node } => {
                self.scorecard.ordered(node, order);
                return;
            }
            Placed::Changed(c) => &c.node,
        };
        self.scorecard.ordered(node, order);
        self.mark_dirty(node);
    }
}

impl Act<'_> {
    fn mark_dirty(&mut self, node: &str) {
        if self.writes && !self.dirty.contains_key(node) {
            self.dirty.insert(
                node.to_string(),
                Dirty {
                    since: self.arrived,
                    kind: self.kind,
                },
            );
            self.queue.push_back(node.to_string());
        }
    }
}

/// The images of `node`'s NodePrefetch as `book` plans them: its
/// `max_images_per_node` best, highest priority first, each due `deadline`
/// seconds after its first order.
pub fn node_prefetch_images(
    book: &crate::plan::book::PlanBook,
    node: &str,
    deadline: f64,
) -> Vec<ImageOrder> {
    book.planned(node)
        .into_iter()
        .map(|(image, w)| ImageOrder {
            image: image.to_string(),
            priority: w.priority,
            reason: w.reason.as_str().to_string(),
            deadline: time(w.ordered_at + deadline),
            // What a pod is already waiting for (or certainly will be):
            // a startup taint waits for these and nothing else.
            critical: matches!(
                w.reason,
                Reason::Nominated | Reason::ScaleUp | Reason::Daemonset
            ),
        })
        .collect()
}

/// Looks the Node's uid up if unknown, then applies the node's object.
async fn write(
    client: kube::Client,
    node: &str,
    uid: Option<String>,
    images: Vec<ImageOrder>,
    dirty: Dirty,
    metrics: &Metrics,
) -> (Option<String>, Result<(), WriteError>) {
    let uid = match uid {
        Some(u) => u,
        None => match Api::<KubeNode>::all(client.clone()).get_opt(node).await {
            Ok(Some(n)) => match n.metadata.uid {
                Some(u) => u,
                None => return (None, Err(WriteError::NodeGone)),
            },
            Ok(None) => return (None, Err(WriteError::NodeGone)),
            Err(e) => return (None, Err(e.into())),
        },
    };
    let object = NodePrefetch::for_node(node, &uid, images);
    let api: Api<NodePrefetch> = Api::all(client);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    metrics
        .dispatch_latency
        .with_label_values(&[dirty.kind])
        .observe(dirty.since.elapsed().as_secs_f64());
    match api.patch(node, &params, &Patch::Apply(&object)).await {
        Ok(_) => (Some(uid), Ok(())),
        Err(e) => (Some(uid), Err(e.into())),
    }
}

/// How long the test-only abort fault waits before it aborts.
const FAULT_PAUSE: Duration = Duration::from_millis(2500);

/// Longest wait before retrying a failed write.
const RETRY_MAX: Duration = Duration::from_secs(30);

pub use crate::plan::book::MAX_AWAITING_NODE;

/// What one node's agent reports present: `(image, bytes)`.
#[derive(Clone, Debug, PartialEq)]
pub struct PrefetchReport {
    /// The node.
    pub node: String,
    /// Images present there, with their sizes.
    pub present: Vec<(String, u64)>,
}

/// The next report, or never when there is no report source.
async fn next_report(
    reports: &mut Option<mpsc::Receiver<PrefetchReport>>,
) -> Option<PrefetchReport> {
    match reports {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until the earliest pending retry.
async fn sleep_until_first(retries: &BinaryHeap<Reverse<(Instant, String)>>) {
    if let Some(Reverse((at, _))) = retries.peek() {
        tokio::time::sleep_until((*at).into()).await;
    }
}

/// The Kubernetes kind an event comes from, for
/// `pullahead_watch_last_event_timestamp_seconds{kind}`.
fn source_kind(body: &Body) -> &'static str {
    match body {
        Body::Image(_) => "Image",
        Body::Workload(_) => "Workload",
        Body::Hpa(_) => "HorizontalPodAutoscaler",
        Body::ScaleUp(_) | Body::Pull(_) => "Event",
        Body::NodeClaim(_) => "NodeClaim",
        Body::Node(_) => "Node",
        Body::Pod(_) => "Pod",
    }
}

/// Offers `event` to the controller's queue without waiting: a live source
/// must not stall behind a slow planner, so when the queue is full the event
/// is dropped and counted in `pullahead_events_dropped_total{reason="queue-full"}`.
/// Returns whether it was queued.
pub fn offer(queue: &mpsc::Sender<Event>, event: Event, metrics: &Metrics) -> bool {
    match queue.try_send(event) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            metrics
                .events_dropped
                .with_label_values(&["queue-full"])
                .inc();
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            metrics
                .events_dropped
                .with_label_values(&["shutdown"])
                .inc();
            false
        }
    }
}

/// Seconds since the epoch as a Kubernetes time (whole seconds).
fn time(t: f64) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::from_second(t.floor() as i64)
        .ok()
        .map(Time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, SimClock};
    use crate::event::{Node, NodePhase};
    use crate::policy::Target;
    use std::sync::Arc;

    fn node_event() -> Event {
        Event::new(
            1.0,
            Node {
                node: "n".into(),
                phase: NodePhase::Ready,
                pool: None,
                labels: Default::default(),
                taints: None,
                images: None,
            },
        )
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let m = Metrics::new().unwrap();
        let (tx, mut rx) = mpsc::channel(2);
        assert!(offer(&tx, node_event(), &m));
        assert!(offer(&tx, node_event(), &m));
        assert!(!offer(&tx, node_event(), &m));
        assert_eq!(m.events_dropped.with_label_values(&["queue-full"]).get(), 1);
        assert!(rx.try_recv().is_ok());
        assert!(offer(&tx, node_event(), &m), "room again after a receive");
        drop(rx);
        assert!(!offer(&tx, node_event(), &m));
        assert_eq!(m.events_dropped.with_label_values(&["shutdown"]).get(), 1);
    }

    /// A policy that ticks every 10 s, notes each tick's time, and orders
    /// an image onto node `n` at each.
    struct Ticking(Arc<std::sync::Mutex<Vec<f64>>>);

    impl Policy for Ticking {
        fn name(&self) -> &str {
            "ticking"
        }

        fn on_event(&mut self, _: &Event, _: &dyn Clock, _: &mut Vec<PullOrder>) {}

        fn tick_interval(&self) -> Option<f64> {
            Some(10.0)
        }

        fn on_tick(&mut self, clock: &dyn Clock, out: &mut Vec<PullOrder>) {
            self.0.lock().unwrap().push(clock.now());
            out.push(PullOrder {
                target: Target::Node("n".into()),
                image: "r/i:1".into(),
                priority: 1,
                reason: Reason::HpaTrend,
                probability: None,
            });
        }
    }

    fn controller(time: TimeSource) -> (Controller, Arc<std::sync::Mutex<Vec<f64>>>) {
        let ticks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let opts = Options {
            dry_run: true,
            max_images_per_node: 10,
            write_concurrency: 1,
            deadline: 60.0,
            shutdown_timeout: Duration::from_secs(1),
        };
        let policy = Box::new(Ticking(ticks.clone()));
        let c = Controller::new(opts, policy, time, Metrics::new().unwrap(), None, None);
        (c, ticks)
    }

    /// On the events' clock, the policy ticks on the replay's grid, before
    /// the event that passes each tick, and its orders are placed.
    #[tokio::test]
    async fn a_recorded_file_ticks_on_the_events_clock() {
        let (c, ticks) = controller(TimeSource::EventTime);
        let (tx, rx) = mpsc::channel(8);
        let at = |ts: f64| {
            let mut e = node_event();
            e.ts = ts;
            e
        };
        for ts in [3.0, 25.0, 31.0] {
            tx.send(at(ts)).await.unwrap();
        }
        drop(tx);
        let (_leader_tx, leader) = watch::channel(false);
        let (_stop_tx, stop) = watch::channel(false);
        let summary = c.run(rx, leader, stop).await.unwrap();
        assert_eq!(*ticks.lock().unwrap(), vec![10.0, 20.0, 30.0]);
        assert_eq!(summary.orders, 3);
    }

    /// On a live clock, a timer drives the ticks with no event at all.
    #[tokio::test(start_paused = true)]
    async fn a_live_clock_ticks_on_a_timer() {
        let clock = Arc::new(SimClock::new(1000.0));
        let (c, ticks) = controller(TimeSource::Live(clock));
        let (_tx, rx) = mpsc::channel(8);
        let (_leader_tx, leader) = watch::channel(false);
        let (stop_tx, stop) = watch::channel(false);
        let run = tokio::spawn(c.run(rx, leader, stop));
        // Paused time jumps to each timer; 35 s hold ticks at 0, 10, 20, 30.
        tokio::time::sleep(Duration::from_secs(35)).await;
        stop_tx.send(true).unwrap();
        let summary = run.await.unwrap().unwrap();
        assert_eq!(ticks.lock().unwrap().len(), 4);
        assert_eq!(summary.orders, 4);
    }
}
