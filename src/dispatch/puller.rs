//! The pull loop: orders in, images on the node out, independent of the
//! Kubernetes API so that it can be driven by the agent, by `pullahead pull`,
//! by tests and by benches alike.
//!
//! Orders are started highest priority first through one FIFO semaphore of
//! `parallel` slots. An image the runtime already holds is reported present
//! without a pull. Retryable failures (runtime restarting, registry down or
//! rate-limiting) back off exponentially with jitter, capped, giving up
//! their slot while they wait, and keep retrying until the order's deadline
//! (or [`Options::retry_for`] when it has none): a registry outage of any
//! length ends with the images pulled if the deadline allows. An order whose
//! deadline has passed is dropped, before a pull or between retries.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::dispatch::crd::{ImageStatus, PullState, StartupTaintStatus};
use crate::dispatch::cri::{self, AuthConfig, ImageService};
use crate::metrics::Metrics;

/// One image to pull.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Order {
    /// Full image reference.
    pub image: String,
    /// Higher goes first.
    pub priority: u32,
    /// Clock seconds after which the order is dropped.
    pub deadline: Option<f64>,
    /// The startup taint waits for this image.
    pub critical: bool,
    /// Credentials for the image's registry (never logged).
    pub auth: Option<AuthConfig>,
}

impl Order {
    /// An order for `image` with default priority and no deadline.
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            ..Self::default()
        }
    }
}

/// How the loop behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// Pulls running at once.
    pub parallel: usize,
    /// Attempts per image, the first included; `None` retries retryable
    /// failures until the deadline (the agent), `Some` gives up after that
    /// many (a one-shot `pullahead pull`).
    pub max_attempts: Option<u32>,
    /// How long an order without a deadline keeps retrying.
    pub retry_for: Duration,
    /// Backoff before the second attempt; doubles each time.
    pub backoff_base: Duration,
    /// Backoff ceiling.
    pub backoff_max: Duration,
    /// How long to wait for the runtime itself to come back (containerd
    /// restarting) before giving up; such waits use no attempts.
    pub runtime_wait: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            parallel: 4,
            max_attempts: None,
            retry_for: Duration::from_secs(600),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            runtime_wait: Duration::from_secs(120),
        }
    }
}

/// What became of one order.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The image.
    pub image: String,
    /// `present` or `failed`.
    pub state: PullState,
    /// The runtime's size of the image, when present.
    pub bytes: Option<u64>,
    /// Wall seconds from the first attempt to the end.
    pub seconds: f64,
    /// Why it failed.
    pub error: Option<String>,
    /// Pull attempts made (0 when it was already present or expired).
    pub attempts: u32,
    /// It was present before any pull.
    pub already_present: bool,
}

/// Live per-image progress that a status writer reads. Updates only mark it
/// dirty; the writer decides how often to publish.
#[derive(Debug)]
pub struct Board {
    images: Mutex<BTreeMap<String, ImageStatus>>,
    startup_taint: Mutex<Option<StartupTaintStatus>>,
    // A version counter: every reader has its own receiver, so the status
    // writer and the taint releaser both see every change.
    version: watch::Sender<u64>,
}

impl Default for Board {
    fn default() -> Self {
        Self {
            images: Mutex::new(BTreeMap::new()),
            startup_taint: Mutex::new(None),
            version: watch::channel(0).0,
        }
    }
}

impl Board {
    /// Records the state of one image and wakes the writer.
    pub fn set(&self, status: ImageStatus) {
        self.lock().insert(status.image.clone(), status);
        self.set_dirty();
    }

    /// The state of one image.
    pub fn get(&self, image: &str) -> Option<ImageStatus> {
        self.lock().get(image).cloned()
    }

    /// Every image's state, by image name.
    pub fn snapshot(&self) -> Vec<ImageStatus> {
        self.lock().values().cloned().collect()
    }

    /// Forgets images no longer wanted.
    pub fn retain(&self, wanted: &HashSet<String>) {
        self.lock().retain(|k, _| wanted.contains(k));
        self.set_dirty();
    }

    /// Records where the startup taint stands, for the status.
    pub fn set_startup_taint(&self, t: StartupTaintStatus) {
        *self
            .startup_taint
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(t);
        self.set_dirty();
    }

    /// Where the startup taint stands, if the agent manages one.
    pub fn startup_taint(&self) -> Option<StartupTaintStatus> {
        self.startup_taint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// On shutdown: images still pulling or waiting are reported pending
    /// with `note`, so the last status does not claim pulls that stopped.
    pub fn interrupt(&self, note: &str) {
        for s in self.lock().values_mut() {
            if matches!(s.state, PullState::Pulling | PullState::Pending) {
                s.state = PullState::Pending;
                s.message = Some(note.to_string());
            }
        }
        self.set_dirty();
    }

    /// Marks the board changed without changing it (e.g. to retry a write).
    pub fn set_dirty(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// A receiver that sees every later change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ImageStatus>> {
        // A panic while holding the lock leaves a usable map: keep going.
        self.images.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where a puller reports its pulls (the node agent's `/metrics`).
#[derive(Clone, Debug)]
struct PullMetrics {
    metrics: Metrics,
    node: String,
}

impl PullMetrics {
    fn in_flight(&self, delta: i64) {
        self.metrics
            .pulls_in_flight
            .with_label_values(&[&self.node])
            .add(delta);
    }

    fn finished(&self, o: &Outcome) {
        let result = match (o.state, o.already_present) {
            (PullState::Present, true) => "present",
            (PullState::Present, false) => "ok",
            _ => "failed",
        };
        self.metrics.pulls.with_label_values(&[result]).inc();
        if result == "ok" {
            self.metrics.pull_bytes.inc_by(o.bytes.unwrap_or(0));
            self.metrics.pull_duration.observe(o.seconds);
        }
    }
}

/// Runs orders against one runtime with a shared concurrency limit.
pub struct Puller<C, K> {
    cri: Arc<C>,
    clock: Arc<K>,
    slots: Arc<Semaphore>,
    opts: Options,
    board: Arc<Board>,
    metrics: Option<Arc<PullMetrics>>,
}

impl<C, K> Clone for Puller<C, K> {
    fn clone(&self) -> Self {
        Self {
            cri: self.cri.clone(),
            clock: self.clock.clone(),
            slots: self.slots.clone(),
            opts: self.opts.clone(),
            board: self.board.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// Why a failed attempt is or is not tried again.
enum Retry {
    /// Wait this long, then try again.
    After(Duration),
    /// Give up with this message.
    GiveUp(String),
}

impl<C: ImageService, K: Clock + 'static> Puller<C, K> {
    /// A puller over `cri`, reading deadlines against `clock`.
    pub fn new(cri: Arc<C>, clock: Arc<K>, opts: Options) -> Self {
        let parallel = opts.parallel.max(1);
        Self {
            cri,
            clock,
            slots: Arc::new(Semaphore::new(parallel)),
            opts,
            board: Arc::new(Board::default()),
            metrics: None,
        }
    }

    /// Reports pulls into `metrics`: `pullahead_pulls_total`,
    /// `pullahead_pull_bytes_total`, `pullahead_pull_duration_seconds` and
    /// `pullahead_pulls_in_flight{node}`.
    pub fn with_metrics(mut self, metrics: Metrics, node: &str) -> Self {
        self.metrics = Some(Arc::new(PullMetrics {
            metrics,
            node: node.to_string(),
        }));
        self
    }

    /// The progress board this puller writes.
    pub fn board(&self) -> Arc<Board> {
        self.board.clone()
    }

    /// Pulls every order, highest priority first (ties keep their order),
    /// duplicates once, and returns one outcome per distinct image in the
    /// order they were started.
    pub async fn run(&self, orders: Vec<Order>) -> Vec<Outcome> {
        let orders = prioritise(orders);
        // What the runtime holds already is reported present before
        // anything is pending: a restarted agent must not report its
        // node's images as missing again, even for a moment.
        let mut out: Vec<(usize, Outcome)> = Vec::new();
        let mut to_pull = Vec::new();
        for (idx, o) in orders.into_iter().enumerate() {
            match self.already_present(&o).await {
                Some(done) => out.push((idx, done)),
                None => to_pull.push((idx, o)),
            }
        }
        for (_, o) in &to_pull {
            self.board
                .set(status(&o.image, PullState::Pending, None, None, None));
        }
        let mut tasks = JoinSet::new();
        for (idx, order) in to_pull {
            // Taking the slot here, in priority order, on a FIFO semaphore is
            // what makes higher priorities start first.
            let Ok(permit) = self.slots.clone().acquire_owned().await else {
                break;
            };
            let me = self.clone();
            tasks.spawn(async move { (idx, me.pull_one(order, Some(permit)).await) });
        }
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(o) => out.push(o),
                Err(e) => tracing::error!(error = %e, "pull task died"),
            }
        }
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, o)| o).collect()
    }

    /// The outcome of an order whose image the runtime holds already.
    async fn already_present(&self, order: &Order) -> Option<Outcome> {
        let img = self.cri.image_status(&order.image).await.ok()??;
        let o = Outcome {
            image: order.image.clone(),
            state: PullState::Present,
            bytes: Some(img.size),
            seconds: 0.0,
            error: None,
            attempts: 0,
            already_present: true,
        };
        self.board.set(status(
            &o.image,
            PullState::Present,
            o.bytes,
            Some(0.0),
            None,
        ));
        if let Some(m) = &self.metrics {
            m.finished(&o);
        }
        Some(o)
    }

    async fn pull_one(
        &self,
        order: Order,
        mut permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Outcome {
        let started = Instant::now();
        let image = order.image.clone();
        let finish = |state, bytes, error: Option<String>, attempts, already_present| {
            let seconds = started.elapsed().as_secs_f64();
            self.board
                .set(status(&image, state, bytes, Some(seconds), error.clone()));
            let o = Outcome {
                image: image.clone(),
                state,
                bytes,
                seconds,
                error,
                attempts,
                already_present,
            };
            if let Some(m) = &self.metrics {
                m.finished(&o);
            }
            o
        };
        if self.expired(&order) {
            return finish(
                PullState::Failed,
                None,
                Some("deadline passed before the pull started".into()),
                0,
                false,
            );
        }
        // A failed status check is no reason not to pull: fall through.
        if let Ok(Some(img)) = self.cri.image_status(&order.image).await {
            return finish(PullState::Present, Some(img.size), None, 0, true);
        }
        // `calls` counts every PullImage; `spent` only those that count
        // against max_attempts.
        let (mut calls, mut spent) = (0u32, 0u32);
        let mut runtime_down_since: Option<Instant> = None;
        loop {
            // Hold a slot for the attempt only; it is given back before a backoff.
            let slot = match permit.take() {
                Some(p) => p,
                None => match self.slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => {
                        let msg = Some("puller shut down".into());
                        return finish(PullState::Failed, None, msg, calls, false);
                    }
                },
            };
            calls += 1;
            self.board
                .set(status(&order.image, PullState::Pulling, None, None, None));
            tracing::debug!(image = %order.image, attempt = calls, "pulling");
            if let Some(m) = &self.metrics {
                m.in_flight(1);
            }
            let pulled = self.cri.pull_image(&order.image, order.auth.clone()).await;
            if let Some(m) = &self.metrics {
                m.in_flight(-1);
            }
            let e = match pulled {
                Ok(_) => {
                    let bytes = match self.cri.image_status(&order.image).await {
                        Ok(Some(img)) => Some(img.size),
                        _ => None,
                    };
                    return finish(PullState::Present, bytes, None, calls, false);
                }
                Err(e) => e,
            };
            drop(slot);
            // A restarting runtime is not the image's fault: wait for it
            // (bounded by runtime_wait) without spending attempts.
            let runtime_down = matches!(e, cri::Error::CriUnavailable { .. })
                && runtime_down_since
                    .get_or_insert_with(Instant::now)
                    .elapsed()
                    < self.opts.runtime_wait;
            if !runtime_down {
                runtime_down_since = None;
                spent += 1;
            }
            let wait = match self.retry(&order, &e, runtime_down, spent, calls, started) {
                Retry::After(wait) => wait,
                Retry::GiveUp(msg) => {
                    tracing::warn!(image = %order.image, attempts = calls, error = %e, "pull failed");
                    return finish(PullState::Failed, None, Some(msg), calls, false);
                }
            };
            tracing::info!(image = %order.image, attempt = calls, error = %e, wait_ms = wait.as_millis() as u64, "pull failed, retrying");
            let note = Some(e.to_string());
            self.board
                .set(status(&order.image, PullState::Pending, None, None, note));
            tokio::time::sleep(wait).await;
            if self.expired(&order) {
                let msg = Some(format!("deadline passed while retrying: {e}"));
                return finish(PullState::Failed, None, msg, calls, false);
            }
        }
    }

    /// Whether (and after how long) a failed attempt is tried again: a
    /// retryable error is, until the attempts (when capped) or the time
    /// (the deadline, else `retry_for`) run out. The wait never overshoots
    /// the deadline, so an order that cannot make it fails on time.
    fn retry(
        &self,
        order: &Order,
        e: &cri::Error,
        runtime_down: bool,
        spent: u32,
        calls: u32,
        started: Instant,
    ) -> Retry {
        if !runtime_down && !e.is_retryable() {
            return Retry::GiveUp(message(e, calls));
        }
        if !runtime_down && self.opts.max_attempts.is_some_and(|m| spent >= m) {
            return Retry::GiveUp(message(e, calls));
        }
        let wait = self.backoff(spent.max(1));
        let left = match order.deadline {
            Some(d) => d - self.clock.now(),
            None => (self.opts.retry_for.saturating_sub(started.elapsed())).as_secs_f64(),
        };
        if left <= 0.0 {
            let why = if order.deadline.is_some() {
                "deadline passed while retrying"
            } else {
                "gave up retrying"
            };
            return Retry::GiveUp(format!("{why}: {}", message(e, calls)));
        }
        Retry::After(wait.min(Duration::from_secs_f64(left)))
    }

    fn expired(&self, order: &Order) -> bool {
        order.deadline.is_some_and(|d| self.clock.now() > d)
    }

    /// Exponential backoff, jittered uniformly over its upper half, so that
    /// many nodes failing together do not retry together.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .opts
            .backoff_base
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(self.opts.backoff_max);
        let ms = exp.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)))
    }
}

fn message(e: &cri::Error, attempts: u32) -> String {
    if attempts > 1 {
        format!("{e} (after {attempts} attempts)")
    } else {
        e.to_string()
    }
}

fn status(
    image: &str,
    state: PullState,
    bytes: Option<u64>,
    seconds: Option<f64>,
    message: Option<String>,
) -> ImageStatus {
    ImageStatus {
        image: image.to_string(),
        state,
        bytes,
        seconds,
        message,
    }
}

/// Sorts by priority, highest first, keeping the first order of each image
/// (with the highest priority any duplicate had).
pub fn prioritise(orders: Vec<Order>) -> Vec<Order> {
    let mut best: BTreeMap<String, Order> = BTreeMap::new();
    let mut first_seen: Vec<String> = Vec::new();
    for o in orders {
        match best.get_mut(&o.image) {
            Some(b) => {
                b.priority = b.priority.max(o.priority);
                b.critical |= o.critical;
            }
            None => {
                first_seen.push(o.image.clone());
                best.insert(o.image.clone(), o);
            }
        }
    }
    let mut out: Vec<Order> = first_seen
        .into_iter()
        .filter_map(|i| best.remove(&i))
        .collect();
    out.sort_by_key(|o| std::cmp::Reverse(o.priority));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SimClock;
    use crate::dispatch::cri::Image;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An in-memory runtime: pulls take `delay`, some images fail a number
    /// of times first, some are missing for good.
    #[derive(Default)]
    struct FakeRuntime {
        present: Mutex<HashSet<String>>,
        transient_failures: Mutex<HashMap<String, u32>>,
        missing: HashSet<String>,
        delay: Duration,
        started: Mutex<Vec<String>>,
        running: AtomicUsize,
        max_running: AtomicUsize,
    }

    impl ImageService for FakeRuntime {
        async fn pull_image(&self, image: &str, _auth: Option<AuthConfig>) -> cri::Result<String> {
            self.started.lock().unwrap().push(image.to_string());
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            if self.missing.contains(image) {
                return Err(cri::Error::NotFound {
                    image: image.into(),
                    message: "not found".into(),
                });
            }
            if let Some(n) = self.transient_failures.lock().unwrap().get_mut(image)
                && *n > 0
            {
                {
                    *n -= 1;
                    return Err(cri::Error::RegistryUnreachable {
                        image: image.into(),
                        message: "connection refused".into(),
                    });
                }
            }
            self.present.lock().unwrap().insert(image.to_string());
            Ok(format!("sha256:{image}"))
        }

        async fn image_status(&self, image: &str) -> cri::Result<Option<Image>> {
            Ok(self.present.lock().unwrap().contains(image).then(|| Image {
                id: image.into(),
                size: 42,
                ..Default::default()
            }))
        }
    }

    fn opts(parallel: usize) -> Options {
        Options {
            parallel,
            max_attempts: Some(3),
            retry_for: Duration::from_secs(600),
            backoff_base: Duration::from_millis(5),
            backoff_max: Duration::from_millis(20),
            runtime_wait: Duration::from_millis(200),
        }
    }

    fn order(image: &str, priority: u32) -> Order {
        Order {
            image: image.into(),
            priority,
            ..Order::default()
        }
    }

    #[tokio::test]
    async fn highest_priority_starts_first_and_parallelism_is_bounded() {
        let rt = Arc::new(FakeRuntime {
            delay: Duration::from_millis(20),
            ..Default::default()
        });
        let p = Puller::new(rt.clone(), Arc::new(SimClock::new(0.0)), opts(2));
        let orders = (0..8).map(|i| order(&format!("img{i}"), i)).collect();
        let out = p.run(orders).await;
        assert_eq!(out.len(), 8);
        assert!(
            out.iter()
                .all(|o| o.state == PullState::Present && o.bytes == Some(42))
        );
        let started = rt.started.lock().unwrap().clone();
        assert_eq!(
            &started[..2].iter().collect::<HashSet<_>>(),
            &["img7", "img6"]
                .iter()
                .map(|s| s.to_string())
                .collect::<HashSet<_>>()
                .iter()
                .collect()
        );
        assert_eq!(started.last().map(String::as_str), Some("img0"));
        assert_eq!(rt.max_running.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn present_images_are_not_pulled_and_duplicates_pull_once() {
        let rt = Arc::new(FakeRuntime::default());
        rt.present.lock().unwrap().insert("have".into());
        let p = Puller::new(rt.clone(), Arc::new(SimClock::new(0.0)), opts(4));
        let out = p
            .run(vec![order("have", 1), order("new", 1), order("new", 5)])
            .await;
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0].image, "new",
            "the duplicate's higher priority counts"
        );
        assert!(
            out.iter()
                .find(|o| o.image == "have")
                .unwrap()
                .already_present
        );
        assert_eq!(*rt.started.lock().unwrap(), vec!["new".to_string()]);
    }

    #[tokio::test]
    async fn transient_failures_retry_and_permanent_ones_fail_once() {
        let rt = Arc::new(FakeRuntime {
            missing: ["gone".to_string()].into(),
            ..Default::default()
        });
        rt.transient_failures
            .lock()
            .unwrap()
            .insert("flaky".into(), 2);
        rt.transient_failures
            .lock()
            .unwrap()
            .insert("down".into(), 99);
        let p = Puller::new(rt.clone(), Arc::new(SimClock::new(0.0)), opts(4));
        let out = p
            .run(vec![order("flaky", 1), order("gone", 1), order("down", 1)])
            .await;
        let by: HashMap<_, _> = out.iter().map(|o| (o.image.as_str(), o)).collect();
        assert_eq!(
            (by["flaky"].state, by["flaky"].attempts),
            (PullState::Present, 3)
        );
        assert_eq!(
            (by["gone"].state, by["gone"].attempts),
            (PullState::Failed, 1)
        );
        assert!(by["gone"].error.as_deref().unwrap().contains("not found"));
        assert_eq!(
            (by["down"].state, by["down"].attempts),
            (PullState::Failed, 3)
        );
        assert!(
            by["down"]
                .error
                .as_deref()
                .unwrap()
                .contains("after 3 attempts"),
            "{:?}",
            by["down"].error
        );
        let board = p.board();
        assert_eq!(board.get("flaky").unwrap().state, PullState::Present);
        assert_eq!(board.get("down").unwrap().state, PullState::Failed);
    }

    #[tokio::test]
    async fn expired_orders_are_dropped_without_a_pull() {
        let rt = Arc::new(FakeRuntime::default());
        let clock = Arc::new(SimClock::new(100.0));
        let p = Puller::new(rt.clone(), clock, opts(4));
        let out = p
            .run(vec![
                Order {
                    deadline: Some(99.0),
                    ..order("late", 1)
                },
                Order {
                    deadline: Some(101.0),
                    ..order("ok", 1)
                },
            ])
            .await;
        assert_eq!(
            out.iter().find(|o| o.image == "late").unwrap().state,
            PullState::Failed
        );
        assert_eq!(
            out.iter().find(|o| o.image == "ok").unwrap().state,
            PullState::Present
        );
        assert_eq!(*rt.started.lock().unwrap(), vec!["ok".to_string()]);
    }

    /// Without an attempt cap, a registry that stays down for many
    /// attempts still ends with the image pulled, as long as the deadline
    /// allows; a deadline (or `retry_for` without one) ends the retries.
    #[tokio::test]
    async fn retries_run_until_the_deadline_not_a_fixed_count() {
        let rt = Arc::new(FakeRuntime::default());
        rt.transient_failures
            .lock()
            .unwrap()
            .insert("outage".into(), 20);
        rt.transient_failures
            .lock()
            .unwrap()
            .insert("forever".into(), u32::MAX);
        rt.transient_failures
            .lock()
            .unwrap()
            .insert("no-deadline".into(), u32::MAX);
        let clock = Arc::new(crate::clock::SystemClock);
        let now = clock.now();
        let opts = Options {
            max_attempts: None,
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(4),
            retry_for: Duration::from_millis(150),
            ..opts(4)
        };
        let p = Puller::new(rt.clone(), clock, opts);
        let out = p
            .run(vec![
                Order {
                    deadline: Some(now + 60.0),
                    ..order("outage", 1)
                },
                Order {
                    deadline: Some(now + 0.2),
                    ..order("forever", 1)
                },
                order("no-deadline", 1),
            ])
            .await;
        let by: HashMap<_, _> = out.iter().map(|o| (o.image.as_str(), o)).collect();
        assert_eq!(by["outage"].state, PullState::Present);
        assert_eq!(by["outage"].attempts, 21);
        assert_eq!(by["forever"].state, PullState::Failed);
        assert!(
            by["forever"]
                .error
                .as_deref()
                .unwrap()
                .contains("deadline passed"),
            "{:?}",
            by["forever"].error
        );
        assert!(by["forever"].seconds < 2.0, "{}", by["forever"].seconds);
        assert_eq!(by["no-deadline"].state, PullState::Failed);
        assert!(
            by["no-deadline"]
                .error
                .as_deref()
                .unwrap()
                .contains("gave up retrying"),
            "{:?}",
            by["no-deadline"].error
        );
    }

    /// The metrics the agent serves follow the outcomes.
    #[tokio::test]
    async fn pulls_are_counted_in_the_metrics() {
        let rt = Arc::new(FakeRuntime {
            missing: ["gone".to_string()].into(),
            ..Default::default()
        });
        rt.present.lock().unwrap().insert("have".into());
        let m = Metrics::new().unwrap();
        let p =
            Puller::new(rt, Arc::new(SimClock::new(0.0)), opts(4)).with_metrics(m.clone(), "n1");
        p.run(vec![order("have", 1), order("new", 1), order("gone", 1)])
            .await;
        assert_eq!(m.pulls.with_label_values(&["ok"]).get(), 1);
        assert_eq!(m.pulls.with_label_values(&["present"]).get(), 1);
        assert_eq!(m.pulls.with_label_values(&["failed"]).get(), 1);
        assert_eq!(m.pull_bytes.get(), 42);
        assert_eq!(m.pull_duration.get_sample_count(), 1);
        assert_eq!(m.pulls_in_flight.with_label_values(&["n1"]).get(), 0);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = Puller::new(
            Arc::new(FakeRuntime::default()),
            Arc::new(SimClock::new(0.0)),
            Options {
                backoff_base: Duration::from_millis(100),
                backoff_max: Duration::from_millis(1000),
                ..opts(1)
            },
        );
        for _ in 0..50 {
            let b1 = p.backoff(1).as_millis();
            assert!((50..=100).contains(&b1), "{b1}");
            let b3 = p.backoff(3).as_millis();
            assert!((200..=400).contains(&b3), "{b3}");
            let b9 = p.backoff(9).as_millis();
            assert!((500..=1000).contains(&b9), "{b9}");
        }
    }
}
