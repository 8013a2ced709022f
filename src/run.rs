//! `pullahead run`: wires the event source, leader election, the metrics
//! server and the [`controller`](crate::controller) loop, and stops them all
//! on SIGTERM.
//!
//! The event source is an injected channel (tests), an `--events` file, a
//! Kafka topic (`--kafka-brokers`, filled by `pullahead record`), or else the
//! cluster watchers ([`crate::watch::run`]) publishing on an in-process bus
//! whose subscriber queue is the controller's input. `/readyz` turns ready
//! once the watchers' initial lists are done, or once the Kafka consumer has
//! its partitions assigned.
//!
//! Start-up fails fast with a message naming the cause when there is no
//! cluster configuration or the API server does not answer, instead of
//! retrying forever: a controller that never becomes ready is harder to
//! diagnose than one that exits.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::bus::kafka::{KafkaConfig, KafkaSubscription, LagProbe};
use crate::bus::memory::InProcessBus;
use crate::bus::{Pending, Subscription};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, PolicyArgs, RunArgs};
use crate::controller::{Controller, Options, Summary, TimeSource};
use crate::decisions::DecisionLog;
use crate::event::{Event, EventReader};
use crate::lease::{Elector, LeaseConfig};
use crate::metrics::{Health, LeaseStatus, Metrics, Server};
use crate::watch::Readiness;

/// What can stop `pullahead run`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    /// No kubeconfig or in-cluster configuration was found.
    #[error(
        "no Kubernetes cluster configured ({0}); set KUBECONFIG, run inside a pod, \
         or use --dry-run --events FILE to plan from a recording without a cluster"
    )]
    NoCluster(kube::Error),
    /// The API server did not answer at start.
    #[error("cannot reach the Kubernetes API server at {url}: {cause}")]
    Unreachable {
        /// The server URL from the configuration.
        url: String,
        /// What went wrong (error or timeout).
        cause: String,
    },
    /// The metrics server failed.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::Error),
    /// The event file could not be opened.
    #[error(transparent)]
    Events(#[from] crate::event::Error),
    /// The controller loop failed.
    #[error(transparent)]
    Controller(#[from] crate::controller::Error),
    /// The event reader thread could not be started.
    #[error("starting the event reader thread: {0}")]
    Thread(std::io::Error),
    /// The decision file could not be opened.
    #[error(transparent)]
    Decisions(#[from] crate::decisions::Error),
    /// The policy settings are unusable (a model or list file names itself).
    #[error(transparent)]
    Settings(#[from] crate::plan::settings::Error),
    // The messages below embed their cause, so it is not also a `source`
    // (that would print it twice in `{:#}` chains).
    /// The event bus between the watchers and the planner could not be made.
    #[error("creating the event bus: {0}")]
    Bus(crate::bus::Error),
    /// The cluster watchers failed.
    #[error("the cluster watchers failed: {0}")]
    Watch(crate::watch::Error),
    /// The cluster watchers ended although nothing asked them to.
    #[error("the cluster watchers stopped on their own: {0}")]
    WatchStopped(String),
    /// Neither events nor a cluster to watch were given.
    #[error("no event source: give --events FILE, --kafka-brokers, or a cluster to watch")]
    NoSource,
    /// The Kafka topic could not be subscribed to at start.
    #[error("cannot consume Kafka topic {topic:?} from brokers {brokers}: {cause}")]
    Kafka {
        /// The bootstrap servers.
        brokers: String,
        /// The topic.
        topic: String,
        /// What went wrong (the bus error, or a timeout).
        cause: String,
    },
}

/// How often the Kafka consumer lag gauge is refreshed.
const LAG_INTERVAL: Duration = Duration::from_secs(5);
/// Bound on each watermark or offset look-up of a lag refresh.
const LAG_TIMEOUT: Duration = Duration::from_secs(5);

/// Subscribes to the configured topic, giving up after `timeout` with an
/// error naming brokers and topic.
async fn connect_kafka(
    config: &KafkaConfig,
    timeout: Duration,
    metrics: &Metrics,
) -> Result<KafkaSubscription> {
    let failed = |cause: String| Error::Kafka {
        brokers: config.brokers.clone(),
        topic: config.topic.clone(),
        cause,
    };
    let errors = metrics.kafka_errors.clone();
    let cfg = config.clone();
    let connect = tokio::task::spawn_blocking(move || {
        KafkaSubscription::connect(&cfg, timeout, Some(errors))
    });
    // The look-up inside is bounded by `timeout` already; the outer bound,
    // with some slack, only guards against librdkafka not honouring it.
    match tokio::time::timeout(timeout + Duration::from_secs(5), connect).await {
        Ok(Ok(Ok(sub))) => {
            tracing::info!(brokers = %config.brokers, topic = %config.topic, group = %config.group, "consuming events from Kafka");
            Ok(sub)
        }
        Ok(Ok(Err(e))) => Err(failed(e.to_string())),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(_) => Err(failed(format!(
            "no answer within {} s",
            timeout.as_secs_f64()
        ))),
    }
}

/// Sets `pullahead_kafka_consumer_lag` from one measurement.
async fn refresh_lag(probe: &LagProbe, config: &KafkaConfig, metrics: &Metrics) {
    let p = probe.clone();
    match tokio::task::spawn_blocking(move || p.lag(LAG_TIMEOUT)).await {
        Ok(Ok(lags)) => {
            for (partition, lag) in lags {
                metrics
                    .kafka_consumer_lag
                    .with_label_values(&[&partition.to_string()])
                    .set(lag);
            }
        }
        Ok(Err(e)) => {
            metrics.kafka_errors.inc();
            tracing::warn!(brokers = %config.brokers, topic = %config.topic, error = %e, "kafka: measuring the consumer lag failed");
        }
        Err(e) => tracing::warn!(error = %e, "kafka: the lag measurement task failed"),
    }
}

/// Acknowledges the pending deliveries among the first `applied` events
/// handed over (`pending` holds each with its number, oldest first).
fn ack_applied(
    pending: &mut VecDeque<(u64, Pending)>,
    applied: u64,
    config: &KafkaConfig,
    metrics: &Metrics,
) {
    let upto = pending.partition_point(|(n, _)| *n <= applied);
    if upto == 0 {
        return;
    }
    if let Err(e) = Pending::ack_all(pending.drain(..upto).map(|(_, p)| p)) {
        metrics.kafka_errors.inc();
        tracing::warn!(brokers = %config.brokers, topic = %config.topic, error = %e, "kafka: storing offsets failed");
    }
}

/// Hands the topic's events to the controller until `stop`, and stores the
/// offsets of those it has applied, as `applied` (the controller's count of
/// events applied) passes them: an event lost between the queue and the
/// planner, by a crash, is read again after a restart. The background
/// auto-commit makes the stored offsets durable in batches; a last commit
/// at the end makes a restart resume right after the last event applied.
/// Receive errors are logged, counted and retried, never fatal: librdkafka
/// reconnects by itself.
async fn consume_kafka(
    mut sub: KafkaSubscription,
    config: KafkaConfig,
    tx: mpsc::Sender<Event>,
    mut applied: watch::Receiver<u64>,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let probe = sub.lag_probe();
    let lag_task = {
        let (probe, config, metrics, mut stop) =
            (probe.clone(), config.clone(), metrics.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LAG_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tick.tick() => {}
                }
                refresh_lag(&probe, &config, &metrics).await;
            }
        })
    };
    // Deliveries handed over and not yet applied, with their numbers. The
    // controller's queue bounds them: at most its capacity, plus the batch
    // it is applying.
    let mut pending: VecDeque<(u64, Pending)> = VecDeque::new();
    let mut handed = 0u64;
    let mut applied_open = true;
    loop {
        let got = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            changed = applied.changed(), if applied_open => {
                match changed {
                    Ok(()) => {
                        let n = *applied.borrow_and_update();
                        ack_applied(&mut pending, n, &config, &metrics);
                    }
                    Err(_) => applied_open = false,
                }
                continue;
            }
            got = sub.next() => got,
        };
        match got {
            None => {
                tracing::warn!(brokers = %config.brokers, topic = %config.topic, "kafka: the subscription closed");
                break;
            }
            Some(Err(e @ crate::bus::Error::Decode { .. })) => {
                // A bad message stays bad: skip it rather than retry.
                metrics
                    .events_dropped
                    .with_label_values(&["malformed"])
                    .inc();
                tracing::warn!(error = %e, "kafka: skipping a message that is not an event");
            }
            Some(Err(e)) => {
                metrics.kafka_errors.inc();
                tracing::warn!(brokers = %config.brokers, topic = %config.topic, error = %e, "kafka: receiving failed; retrying");
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Some(Ok(delivery)) => {
                let (event, ack) = delivery.split();
                // Unlike the watchers' bus, a topic keeps what is not read
                // yet, so a full queue waits here instead of dropping.
                let sent = tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => break,
                    sent = tx.send(event) => sent,
                };
                if sent.is_err() {
                    // The controller is gone; this event stays unacked and
                    // comes again after a restart.
                    break;
                }
                handed += 1;
                pending.push_back((handed, ack));
            }
        }
    }
    // Let the controller finish what it has: it drops its end of `applied`
    // when it stops, and what it applied until then is acknowledged.
    drop(tx);
    let settle = async {
        while applied_open {
            if applied.changed().await.is_err() {
                applied_open = false;
            }
            let n = *applied.borrow_and_update();
            ack_applied(&mut pending, n, &config, &metrics);
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), settle)
        .await
        .is_err()
    {
        tracing::warn!("the controller took over 10 s to stop; its last events will be read again");
    }
    let _ = lag_task.await;
    // The background auto-commit may be up to a second behind: make the
    // stored offsets durable now, then report the final lag.
    match tokio::task::spawn_blocking(move || {
        let r = sub.commit();
        (sub, r)
    })
    .await
    {
        Ok((_sub, Ok(()))) => {}
        Ok((_sub, Err(e))) => {
            metrics.kafka_errors.inc();
            tracing::warn!(brokers = %config.brokers, topic = %config.topic, error = %e, "kafka: committing offsets at shutdown failed");
        }
        Err(e) => tracing::warn!(error = %e, "kafka: the commit task failed"),
    }
    refresh_lag(&probe, &config, &metrics).await;
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The policy the configuration names, built by the one factory
/// ([`crate::plan::settings::build`]) with its settings. A model or image
/// list that cannot be read is an error naming the file.
pub fn policy(cfg: &Config) -> Result<Box<dyn crate::policy::Policy>> {
    let settings = cfg.settings.resolve(&PolicyArgs::default())?;
    if let Some(path) = &settings.model_path {
        tracing::info!(model = %path.display(), "predictive planner: model loaded");
    }
    Ok(crate::plan::settings::build(cfg.policy, &settings))
}

/// The environment variable of a test-only fault: `pullahead run` aborts
/// on receiving that event (1-based), before applying it, as a crash
/// between a consume and its apply would. Tests of at-least-once delivery
/// set it; nothing else should.
pub const FAULT_ABORT_ENV: &str = "PULLAHEAD_FAULT_ABORT_BEFORE_EVENT";

fn fault_abort_before_event() -> Option<u64> {
    let n = std::env::var(FAULT_ABORT_ENV).ok()?.parse().ok()?;
    tracing::warn!(
        event = n,
        "{FAULT_ABORT_ENV} is set: run aborts on that event"
    );
    Some(n)
}

/// Connects to the cluster named by the environment (KUBECONFIG, then the
/// in-cluster service account) and checks that it answers.
pub async fn connect(timeout: Duration) -> Result<kube::Client> {
    // Should more than one rustls provider be compiled in, rustls cannot
    // pick one: pick it here before any client exists. An error means one
    // is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = kube::Config::infer()
        .await
        .map_err(|e| Error::NoCluster(kube::Error::InferConfig(e)))?;
    let url = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).map_err(Error::NoCluster)?;
    match tokio::time::timeout(timeout, client.apiserver_version()).await {
        Ok(Ok(v)) => {
            tracing::info!(%url, version = %v.git_version, "connected to the API server");
            Ok(client)
        }
        Ok(Err(e)) => Err(Error::Unreachable {
            url,
            cause: e.to_string(),
        }),
        Err(_) => Err(Error::Unreachable {
            url,
            cause: format!("no answer within {} s", timeout.as_secs_f64()),
        }),
    }
}

/// Resolves a shutdown channel to true on SIGTERM or Ctrl-C.
pub fn shutdown_on_signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        let _ = tx.send(true);
    });
    rx
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// `pullahead run` from its flags.
pub async fn main(args: RunArgs) -> Result<()> {
    let cfg = Config::resolve(&args)?;
    // A bad model is a configuration error: refuse it before waiting on a
    // cluster, not after.
    policy(&cfg)?;
    let shutdown = shutdown_on_signals();
    // A dry run over a recording needs no cluster at all.
    let client = if cfg.dry_run && (cfg.events.is_some() || cfg.kafka.is_some()) {
        None
    } else {
        Some(connect(Duration::from_secs_f64(cfg.connect_timeout)).await?)
    };
    let metrics = Metrics::new()?;
    let health = Health::new();
    let summary = run_with(cfg, client, None, shutdown, metrics, health).await?;
    tracing::info!(?summary, "stopped");
    Ok(())
}

/// Runs everything with the given parts; tests inject a mock client and an
/// in-process event channel here.
///
/// `events`: the bus feeding the controller. `None` means: read `--events`
/// if set, else consume the Kafka topic if set, else watch the cluster
/// through `client` (an error without one).
pub async fn run_with(
    cfg: Config,
    client: Option<kube::Client>,
    events: Option<mpsc::Receiver<Event>>,
    mut shutdown: watch::Receiver<bool>,
    metrics: Metrics,
    health: Arc<Health>,
) -> Result<Summary> {
    // First, so a bad model fails before anything is started.
    let planner = policy(&cfg)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // One internal stop signal: set by the outside shutdown, or by us when
    // the loop ends on its own (end of an event file).
    let (stop_tx, stop) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    // Kept to tell a requested stop from watchers that ended on their own.
    let shutdown_seen = shutdown.clone();
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            let _ = shutdown.wait_for(|s| *s).await;
            let _ = stop_tx.send(true);
        });
    }
    let server = Server::bind(cfg.metrics_addr, metrics.clone(), health.clone()).await?;
    tracing::info!(addr = ?server.local_addr(), "serving /metrics /healthz /readyz");
    let server = {
        let mut stop = stop.clone();
        tokio::spawn(server.serve(async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    };

    // Leader election, unless nothing is written anyway.
    let (leader_tx, leader_rx) = watch::channel(false);
    let mut election = None;
    let mut _steady_leader = None;
    match (&client, cfg.dry_run) {
        (Some(client), false) => {
            let elector = Elector::new(
                client.clone(),
                LeaseConfig {
                    namespace: cfg.lease_namespace.clone(),
                    name: cfg.lease_name.clone(),
                    identity: cfg.identity.clone(),
                    duration: cfg.lease_duration,
                    retry_period: cfg.lease_retry,
                },
                clock.clone(),
            );
            election = Some(tokio::spawn(elector.run(
                leader_tx,
                health.clone(),
                metrics.clone(),
                stop.clone(),
            )));
        }
        _ => {
            health.set_lease(LeaseStatus::Disabled);
            let _ = leader_tx.send(true);
            // Kept alive so the controller sees a steady role.
            _steady_leader = Some(leader_tx);
        }
    }

    // The event source.
    let mut watchers = None;
    let mut reports = None;
    let mut kafka_task = None;
    let mut applied = None;
    let source_error: Arc<std::sync::Mutex<Option<crate::event::Error>>> = Arc::default();
    let (time, events) = match (events, &cfg.events) {
        (Some(rx), _) => (TimeSource::Live(clock.clone()), rx),
        (None, Some(path)) => {
            let reader = EventReader::open(path)?;
            let (tx, rx) = mpsc::channel(cfg.queue_capacity);
            let dropped = metrics.clone();
            let failed = source_error.clone();
            // A plain thread, not spawn_blocking: a read blocked on stdin
            // must not keep the runtime (and the process) from exiting.
            let spawned = std::thread::Builder::new()
                .name("pullahead-events".into())
                .spawn(move || {
                    for item in reader {
                        match item {
                            Ok(e) => {
                                // A file is read at the planner's pace: the
                                // queue pushes back instead of dropping.
                                if tx.blocking_send(e).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                // Stop here: the loop ends, and run fails
                                // with this error (it names file and line).
                                dropped
                                    .events_dropped
                                    .with_label_values(&["malformed"])
                                    .inc();
                                if let Ok(mut slot) = failed.lock() {
                                    *slot = Some(e);
                                }
                                return;
                            }
                        }
                    }
                });
            if let Err(e) = spawned {
                return Err(Error::Thread(e));
            }
            // A dry run over a recording plans in the recording's time;
            // anything written to a live cluster needs live deadlines.
            let time = if cfg.dry_run {
                TimeSource::EventTime
            } else {
                TimeSource::Live(clock.clone())
            };
            (time, rx)
        }
        (None, None) if cfg.kafka.is_some() => {
            let Some(kcfg) = cfg.kafka.clone() else {
                return Err(Error::NoSource);
            };
            let timeout = Duration::from_secs_f64(cfg.connect_timeout);
            let sub = connect_kafka(&kcfg, timeout, &metrics).await?;
            let (tx, rx) = mpsc::channel(cfg.queue_capacity);
            let (applied_tx, applied_rx) = watch::channel(0);
            applied = Some(applied_tx);
            kafka_task = Some(tokio::spawn(consume_kafka(
                sub,
                kcfg,
                tx,
                applied_rx,
                metrics.clone(),
                stop.clone(),
            )));
            // A topic is a live feed: deadlines run on the wall clock.
            (TimeSource::Live(clock.clone()), rx)
        }
        (None, None) => {
            let Some(client) = client.clone() else {
                return Err(Error::NoSource);
            };
            // The in-process bus never makes a watcher wait: a full queue
            // drops and counts, in the series the queue-full alert watches.
            let bus = InProcessBus::with_dropped_counter(
                cfg.queue_capacity,
                metrics.events_dropped.with_label_values(&["queue-full"]),
            )
            .map_err(Error::Bus)?;
            // Subscribed before the watchers start, so no event is missed.
            let rx = bus.subscribe_local().into_receiver();
            let watch_cfg = crate::watch::Config::default();
            let readiness = Readiness::new(&watch_cfg.kinds);
            {
                // Ready once every kind's first list is in, so a standby
                // does not report ready with an empty view of the cluster.
                let readiness = readiness.clone();
                let health = health.clone();
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = readiness.wait() => health.set_synced(),
                        _ = stop.wait_for(|s| *s) => {}
                    }
                });
            }
            // What the agents report, for the waste and lead-time metrics.
            let (report_tx, report_rx) = mpsc::channel(cfg.queue_capacity);
            tokio::spawn(crate::dispatch::report::watch_reports(
                client.clone(),
                report_tx,
                metrics.clone(),
                stop.clone(),
            ));
            reports = Some(report_rx);
            let watch_clock = clock.clone();
            let mut watch_stop = stop.clone();
            // The task owns the bus: when it ends, the controller's queue
            // drains and closes, so the loop ends instead of idling blind.
            watchers = Some(tokio::spawn(async move {
                let shutdown = async move {
                    let _ = watch_stop.wait_for(|s| *s).await;
                };
                crate::watch::run(
                    client,
                    &watch_cfg,
                    &bus,
                    watch_clock.as_ref(),
                    readiness,
                    shutdown,
                )
                .await
            }));
            (TimeSource::Live(clock.clone()), rx)
        }
    };
    if watchers.is_none() {
        // A file or an injected bus has nothing to list first; a Kafka
        // consumer has its partitions assigned by now.
        health.set_synced();
    }

    let decisions = cfg
        .decisions
        .as_deref()
        .map(DecisionLog::open)
        .transpose()?;
    let mut controller = Controller::new(
        Options {
            dry_run: cfg.dry_run,
            max_images_per_node: cfg.max_images_per_node,
            write_concurrency: cfg.write_concurrency,
            deadline: cfg.deadline,
            shutdown_timeout: Duration::from_secs_f64(cfg.shutdown_timeout),
        },
        planner,
        time,
        metrics,
        client,
        decisions,
    )
    .abort_before_event(fault_abort_before_event());
    if let Some(applied) = applied {
        controller = controller.report_applied(applied);
    }
    if let Some(rx) = reports {
        controller = controller.with_reports(rx);
    }
    let result = controller.run(events, leader_rx, stop.clone()).await;

    // The loop ended (signal or end of input): stop the rest and give the
    // Lease back so a standby takes over at once.
    let _ = stop_tx.send(true);
    if let Some(election) = election
        && tokio::time::timeout(Duration::from_secs(5), election)
            .await
            .is_err()
    {
        tracing::warn!("releasing the Lease took over 5 s; leaving it to expire");
    }
    match server.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics server"),
        Err(e) => tracing::warn!(error = %e, "metrics server task"),
        Ok(Ok(())) => {}
    }
    if let Some(task) = kafka_task
        && tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .is_err()
    {
        tracing::warn!(
            "the Kafka consumer took over 10 s to stop; offsets since the last auto-commit may be read again"
        );
    }
    let stopped_by_request = *shutdown_seen.borrow();
    let watch_result = match watchers {
        Some(task) => match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Ok(stats))) => {
                tracing::info!(?stats, "watchers stopped");
                if stopped_by_request {
                    Ok(())
                } else {
                    Err(Error::WatchStopped("every watch stream ended".into()))
                }
            }
            Ok(Ok(Err(e))) => Err(Error::Watch(e)),
            Ok(Err(e)) => Err(Error::WatchStopped(e.to_string())),
            Err(_) => {
                tracing::warn!("the watchers took over 5 s to stop; leaving them");
                Ok(())
            }
        },
        None => Ok(()),
    };
    let summary = result?;
    watch_result?;
    if let Some(e) = source_error.lock().ok().and_then(|mut e| e.take()) {
        return Err(Error::Events(e));
    }
    Ok(summary)
}
