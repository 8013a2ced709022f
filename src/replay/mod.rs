//! Replay: runs policies over a recorded or generated event stream against a
//! simulated data plane, and scores them.
//!
//! Every policy sees the same events, in one streaming pass, each against its
//! own [`sim::Sim`]. The oracle needs the future, so a file is read twice:
//! once to learn every binding ([`oracle::Foresight`]), once to replay. A
//! Kafka topic is read once, into memory, and both passes run over that.

pub mod catalog;
pub mod cli;
pub mod html;
pub mod oracle;
pub mod report;
pub mod sim;
pub mod synth;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::bus::kafka::{self, KafkaConfig};
use crate::event::{self, Event, EventReader};
use crate::plan::book::Placed;
use crate::plan::{self, Driver, PolicyName, PolicySettings, Sink, TimeSource};
use crate::policy::{Policy, PullOrder};
use catalog::Catalog;
use oracle::{Foresight, OraclePolicy};
pub use report::{PolicyReport, Report};
use sim::{Keys, Names, Sim, SimConfig};

/// Errors from a replay.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The event stream is bad.
    #[error(transparent)]
    Event(#[from] event::Error),
    /// A policy name nobody knows.
    #[error("unknown policy {0:?}; known policies: {KNOWN_POLICIES}")]
    UnknownPolicy(String),
    /// The policy settings are unusable.
    #[error(transparent)]
    Settings(#[from] plan::settings::Error),
    /// A policy could not be built.
    #[error("policy {policy}: {msg}")]
    Policy {
        /// The policy.
        policy: String,
        /// What went wrong.
        msg: String,
    },
    /// An option is out of range.
    #[error("{0}")]
    InvalidOption(String),
    /// Writing decisions failed.
    #[error("writing decisions: {0}")]
    Decisions(#[source] std::io::Error),
    /// The events could not be read from Kafka.
    #[error("cannot read Kafka topic {topic:?} from brokers {brokers}: {error}")]
    Kafka {
        /// The bootstrap servers that were tried.
        brokers: String,
        /// The topic.
        topic: String,
        /// What the client said. Part of the message rather than a
        /// `#[source]`, so that `{:#}` prints it once, on one line; boxed
        /// because Kafka errors would make every replay `Result` large.
        error: Box<crate::bus::Error>,
    },
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The policies `replay` can build by name.
pub const KNOWN_POLICIES: &str = "none, static, popular, nominated, rules, predictive, oracle";

/// How to replay.
#[derive(Clone, Debug)]
pub struct Options {
    /// The data-plane model. Its bandwidth and pull latency are the
    /// policy settings' ([`Options::with_settings`]).
    pub sim: SimConfig,
    /// Policies to report, by name, in report order.
    pub policies: Vec<String>,
    /// The settings every policy is built with, as `run` builds it.
    pub settings: PolicySettings,
    /// Print progress to stderr when a replay runs longer than a second.
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self::with_settings(
            SimConfig::default(),
            [
                "none",
                "static",
                "popular",
                "nominated",
                "predictive",
                "oracle",
            ]
            .map(String::from)
            .to_vec(),
            PolicySettings::default(),
        )
    }
}

impl Options {
    /// Options replaying `policies` built with `settings`; the simulated
    /// pulls take `sim`'s parallelism and window, and the bandwidth and
    /// latency the policies assume.
    pub fn with_settings(sim: SimConfig, policies: Vec<String>, settings: PolicySettings) -> Self {
        Self {
            sim: SimConfig {
                bandwidth_bytes_per_second: settings.planner.bandwidth_bytes_per_second,
                pull_latency_seconds: settings.planner.pull_latency_seconds,
                disk_ceiling_percent: settings.planner.disk_ceiling_percent,
                image_size_factor: settings.planner.image_size_factor,
                ..sim
            },
            policies,
            settings,
            progress: false,
        }
    }

    /// Size of an image no `image` event describes.
    pub fn default_image_bytes(&self) -> u64 {
        self.settings.planner.default_image_bytes
    }
}

/// Builds a policy by name: one `run` offers ([`plan::settings::build`]),
/// or the `oracle`, which takes `foresight`.
pub fn build_policy(
    name: &str,
    opts: &Options,
    foresight: &mut Option<Foresight>,
) -> Result<Box<dyn Policy>> {
    if name == "oracle" {
        return Ok(Box::new(OraclePolicy::new(foresight.take().ok_or_else(
            || Error::Policy {
                policy: name.into(),
                msg: "needs the whole trace in advance".into(),
            },
        )?)));
    }
    match PolicyName::parse(name) {
        Some(p) => Ok(plan::settings::build(p, &opts.settings)),
        None => Err(Error::UnknownPolicy(name.into())),
    }
}

/// Where decisions go: JSON lines of every order of every policy.
pub type Decisions<'a> = Option<&'a mut dyn Write>;

/// Replays the file at `path` with every policy in `opts`.
pub fn replay_file(path: &Path, opts: &Options, decisions: Decisions<'_>) -> Result<Report> {
    let foresight = Foresight::scan(path)?;
    let label = path.display().to_string();
    let mut reader = EventReader::open(path)?;
    let mut replayer = Replayer::new(&label, build_policies(foresight, opts)?, opts, decisions);
    // One event, overwritten line after line: the reader reuses its strings.
    let mut event = Event::blank();
    while reader.read_into(&mut event)? {
        replayer.feed(&event)?;
    }
    Ok(replayer.finish())
}

/// Events to replay from a Kafka topic.
#[derive(Clone, Debug)]
pub struct KafkaSource {
    /// Brokers and topic.
    pub config: KafkaConfig,
    /// Only events at or after this time (seconds, as the events' `ts`).
    pub from: Option<f64>,
    /// Only events at or before this time.
    pub until: Option<f64>,
    /// Bound on each broker look-up and each wait for a message.
    pub timeout: Duration,
}

impl KafkaSource {
    /// How the report names the trace: `kafka://TOPIC`.
    pub fn label(&self) -> String {
        format!("kafka://{}", self.config.topic)
    }
}

/// Replays the events of a Kafka topic (see [`kafka::read_range`]) with
/// every policy in `opts`. Blocking.
pub fn replay_kafka(
    source: &KafkaSource,
    opts: &Options,
    decisions: Decisions<'_>,
) -> Result<Report> {
    let events =
        kafka::read_range_within(&source.config, source.from, source.until, source.timeout)
            .map_err(|e| Error::Kafka {
                brokers: source.config.brokers.clone(),
                topic: source.config.topic.clone(),
                error: Box::new(e),
            })?;
    if events.is_empty() {
        tracing::warn!(topic = %source.config.topic, "no events in the topic for the time range");
    }
    replay_events(&source.label(), events, opts, decisions)
}

/// Replays events already in memory (the trace called `label`) with every
/// policy in `opts`; the oracle's foresight comes from the same events.
pub fn replay_events(
    label: &str,
    events: Vec<Event>,
    opts: &Options,
    decisions: Decisions<'_>,
) -> Result<Report> {
    let foresight = Foresight::from_slice(&events);
    replay(
        label,
        events.into_iter().map(Ok),
        foresight,
        opts,
        decisions,
    )
}

struct Lane {
    driver: Driver,
    sim: Sim,
    shown: bool,
}

/// Replays `events` (the trace called `label`) with every policy in `opts`.
/// `foresight` must come from the same events; `none` and `oracle` always
/// run, because oracle capture is measured between them.
pub fn replay(
    label: &str,
    events: impl IntoIterator<Item = event::Result<Event>>,
    foresight: Foresight,
    opts: &Options,
    decisions: Decisions<'_>,
) -> Result<Report> {
    let policies = build_policies(foresight, opts)?;
    replay_policies(label, events, policies, opts, decisions)
}

/// The policies of `opts`, each with whether it is reported, then the hidden
/// `none` and `oracle` that oracle capture needs.
fn build_policies(foresight: Foresight, opts: &Options) -> Result<Vec<(Box<dyn Policy>, bool)>> {
    let mut foresight = Some(foresight);
    let mut names: Vec<&str> = opts.policies.iter().map(String::as_str).collect();
    names.dedup();
    let mut policies = Vec::new();
    for (name, shown) in names
        .iter()
        .map(|n| (*n, true))
        .chain(["none", "oracle"].into_iter().map(|n| (n, false)))
    {
        if !shown && names.contains(&name) {
            continue;
        }
        policies.push((build_policy(name, opts, &mut foresight)?, shown));
    }
    Ok(policies)
}

/// Replays `events` with ready-made policies; each comes with whether it is
/// reported. Oracle capture needs policies named `none` and `oracle` among
/// them.
pub fn replay_policies(
    label: &str,
    events: impl IntoIterator<Item = event::Result<Event>>,
    policies: Vec<(Box<dyn Policy>, bool)>,
    opts: &Options,
    decisions: Decisions<'_>,
) -> Result<Report> {
    let mut replayer = Replayer::new(label, policies, opts, decisions);
    for event in events {
        replayer.feed(&event?)?;
    }
    Ok(replayer.finish())
}

/// Replays `events` with the policy `name` alone (not the oracle), and
/// returns the images each live simulated node has prefetched, is pulling
/// or has queued when they end ([`Sim::prefetches`]): what the simulated
/// agents were told to pull, to set beside the NodePrefetch objects `run`
/// writes from the same events.
pub fn simulated_prefetches(
    events: impl IntoIterator<Item = event::Result<Event>>,
    name: &str,
    opts: &Options,
) -> Result<std::collections::BTreeMap<String, std::collections::BTreeSet<String>>> {
    let policy = build_policy(name, opts, &mut None)?;
    let mut replayer = Replayer::new(name, vec![(policy, true)], opts, None);
    for event in events {
        replayer.feed(&event?)?;
    }
    Ok(replayer
        .lanes
        .first()
        .map(|lane| lane.sim.prefetches(&replayer.names, &replayer.catalog))
        .unwrap_or_default())
}

/// One streaming replay: events go in one at a time, the report comes out
/// at the end.
struct Replayer<'l, 'd> {
    label: &'l str,
    lanes: Vec<Lane>,
    progress: bool,
    decisions: Decisions<'d>,
    catalog: Catalog,
    /// Names interned for every lane, and the current event's ids: resolved
    /// once an event, not once a lane.
    names: Names,
    keys: Keys,
    count: u64,
    first_ts: Option<f64>,
    last_ts: f64,
    started: Instant,
    last_progress: Instant,
}

impl<'l, 'd> Replayer<'l, 'd> {
    fn new(
        label: &'l str,
        policies: Vec<(Box<dyn Policy>, bool)>,
        opts: &Options,
        decisions: Decisions<'d>,
    ) -> Self {
        let lanes = policies
            .into_iter()
            .map(|(policy, shown)| Lane {
                driver: Driver::new(
                    policy,
                    TimeSource::EventTime,
                    opts.settings.max_images_per_node,
                ),
                sim: Sim::new(opts.sim),
                shown,
            })
            .collect();
        let started = Instant::now();
        Self {
            label,
            lanes,
            progress: opts.progress,
            decisions,
            catalog: Catalog::new(opts.default_image_bytes()),
            names: Names::default(),
            keys: Keys::default(),
            count: 0,
            first_ts: None,
            last_ts: 0.0,
            started,
            last_progress: started,
        }
    }

    /// Runs one event through every lane.
    fn feed(&mut self, event: &Event) -> Result<()> {
        self.count += 1;
        let count = self.count;
        if count & 0xffff == 0 && self.progress {
            let now = Instant::now();
            if now.duration_since(self.last_progress).as_secs_f64() >= 1.0 {
                self.last_progress = now;
                let rate = count as f64 / now.duration_since(self.started).as_secs_f64();
                eprintln!("replay {}: {count} events ({rate:.0} events/s)", self.label);
            }
        }
        self.first_ts.get_or_insert(event.ts);
        self.last_ts = event.ts;
        if let event::Body::Image(image) = &event.body {
            self.catalog.learn(image);
        }
        self.keys.resolve(event, &mut self.names, &mut self.catalog);
        for lane in &mut self.lanes {
            let mut out = Out {
                sim: &mut lane.sim,
                shown: lane.shown,
                keys: &self.keys,
                catalog: &mut self.catalog,
                names: &mut self.names,
                decisions: &mut self.decisions,
            };
            lane.driver.feed(event, &mut out)?;
        }
        Ok(())
    }

    /// Settles every lane and scores it.
    fn finish(mut self) -> Report {
        if self.progress && self.started.elapsed().as_secs_f64() >= 1.0 {
            eprintln!(
                "replay {}: done, {} events in {:.1}s",
                self.label,
                self.count,
                self.started.elapsed().as_secs_f64()
            );
        }
        let mut outcomes = Vec::new();
        for lane in self.lanes {
            let name = lane.driver.policy_name().to_string();
            outcomes.push((name, lane.shown, lane.sim.finish(&mut self.catalog)));
        }
        report::build(
            self.label,
            self.count,
            (
                self.first_ts.unwrap_or(self.last_ts),
                self.last_ts - self.first_ts.unwrap_or(self.last_ts),
            ),
            self.catalog.defaulted_images(),
            outcomes,
        )
    }
}

/// What a lane's driver acts on: its simulator, and the decisions file.
struct Out<'a, 'd> {
    sim: &'a mut Sim,
    shown: bool,
    keys: &'a Keys,
    catalog: &'a mut Catalog,
    names: &'a mut Names,
    decisions: &'a mut Decisions<'d>,
}

impl Sink for Out<'_, '_> {
    type Error = Error;

    fn ordered(&mut self, ts: f64, policy: &str, order: &PullOrder) -> Result<()> {
        self.sim.count_order(ts);
        if self.shown
            && let Some(out) = self.decisions.as_deref_mut()
        {
            crate::decisions::write_line(out, ts, policy, order)
                .map_err(|e| Error::Decisions(e.into()))?;
        }
        Ok(())
    }

    fn event(&mut self, event: &Event, _now: f64) {
        self.sim.on_event(event, self.keys, self.catalog);
    }

    /// The simulated node prefetches what the book plans onto it, as the
    /// node agent pulls what its NodePrefetch lists.
    fn placed(&mut self, _order: &PullOrder, placed: &Placed, now: f64) {
        match placed {
            Placed::Changed(c) => {
                self.sim
                    .plan(&c.node, &c.image, c.priority, now, self.names, self.catalog);
                if let Some(evicted) = &c.evicted {
                    self.sim
                        .unplan(&c.node, evicted, now, self.names, self.catalog);
                }
            }
            Placed::Parked => {}
            Placed::Unchanged { .. } => self.sim.skipped(false),
            Placed::Capped { .. } | Placed::ParkFull => self.sim.skipped(true),
        }
    }
}
