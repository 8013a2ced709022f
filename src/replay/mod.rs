//! Replay: runs policies over a recorded or generated event stream against a
//! simulated data plane, and scores them.
//!
//! Every policy sees the same events, in one streaming pass, each against its
//! own [`sim::Sim`]. The oracle needs the future, so a file is read twice:
//! once to learn every binding ([`oracle::Foresight`]), once to replay. A
//! Kafka topic is read once, into memory, and both passes run over that.

pub mod catalog;
pub mod cli;
pub mod oracle;
pub mod report;
pub mod sim;
pub mod synth;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::bus::kafka::{self, KafkaConfig};
use crate::clock::{SimClock, TickGrid};
use crate::event::{self, Event, EventReader};
use crate::forecast::model::Model;
use crate::forecast::planner::{Planner, PlannerConfig};
use crate::forecast::rules::RulesPolicy;
use crate::policy::{NonePolicy, Policy, PopularPolicy, PullOrder, StaticPolicy};
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
    /// The static image list could not be read.
    #[error("{path}: {source}")]
    StaticList {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The policies `replay` can build by name.
pub const KNOWN_POLICIES: &str = "none, static, popular, rules, predictive, oracle";

/// How to replay.
#[derive(Clone, Debug)]
pub struct Options {
    /// The data-plane model.
    pub sim: SimConfig,
    /// Size of an image no `image` event describes.
    pub default_image_bytes: u64,
    /// Policies to report, by name, in report order.
    pub policies: Vec<String>,
    /// The `static` policy's list; `None` means every workload image seen.
    pub static_images: Option<Vec<String>>,
    /// How many images `popular` pulls.
    pub popular_k: usize,
    /// Print progress to stderr when a replay runs longer than a second.
    pub progress: bool,
    /// The `predictive` policy's model; `None` is the built-in
    /// `models/default.json`.
    pub model: Option<Model>,
    /// Most bytes `predictive` plans onto one node.
    pub node_budget_bytes: u64,
    /// The share of a pool's past new nodes that `rules` needs to have
    /// needed an image.
    pub rules_share: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sim: SimConfig::default(),
            default_image_bytes: 200_000_000,
            policies: ["none", "static", "popular", "predictive", "oracle"]
                .map(String::from)
                .to_vec(),
            static_images: None,
            popular_k: 10,
            progress: false,
            model: None,
            node_budget_bytes: 20_000_000_000,
            rules_share: crate::forecast::rules::DEFAULT_SHARE,
        }
    }
}

/// Reads a `--static-images` file: one image a line; `#` starts a comment.
pub fn read_static_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::StaticList {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// Builds a policy by name. `foresight` is taken by the oracle.
pub fn build_policy(
    name: &str,
    opts: &Options,
    foresight: &mut Option<Foresight>,
) -> Result<Box<dyn Policy>> {
    Ok(match name {
        "none" => Box::new(NonePolicy),
        "static" => Box::new(match &opts.static_images {
            Some(list) => StaticPolicy::fixed(list.clone()),
            None => StaticPolicy::from_workloads(),
        }),
        "popular" => Box::new(PopularPolicy::new(opts.popular_k)),
        "rules" => Box::new(RulesPolicy::new(opts.rules_share)),
        "predictive" => {
            let model = match &opts.model {
                Some(m) => m.clone(),
                None => Model::from_json(DEFAULT_MODEL).map_err(|msg| Error::Policy {
                    policy: name.into(),
                    msg: format!("built-in models/default.json: {msg}"),
                })?,
            };
            Box::new(Planner::new(
                model,
                PlannerConfig {
                    node_budget_bytes: opts.node_budget_bytes,
                    bandwidth_bytes_per_second: opts.sim.bandwidth_bytes_per_second,
                    pull_latency_seconds: opts.sim.pull_latency_seconds,
                    default_image_bytes: opts.default_image_bytes,
                    ..PlannerConfig::default()
                },
            ))
        }
        "oracle" => Box::new(OraclePolicy::new(foresight.take().ok_or_else(|| {
            Error::Policy {
                policy: name.into(),
                msg: "needs the whole trace in advance".into(),
            }
        })?)),
        other => return Err(Error::UnknownPolicy(other.into())),
    })
}

/// The committed default model, built in so that the binary works from any
/// directory.
pub const DEFAULT_MODEL: &str = include_str!("../../models/default.json");

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
    policy: Box<dyn Policy>,
    sim: Sim,
    ticks: Option<TickGrid>,
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

/// One streaming replay: events go in one at a time, the report comes out
/// at the end.
struct Replayer<'l, 'd> {
    label: &'l str,
    lanes: Vec<Lane>,
    progress: bool,
    decisions: Decisions<'d>,
    clock: SimClock,
    catalog: Catalog,
    /// Names interned for every lane, and the current event's ids: resolved
    /// once an event, not once a lane.
    names: Names,
    keys: Keys,
    orders: Vec<PullOrder>,
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
                ticks: TickGrid::new(policy.tick_interval()),
                policy,
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
            clock: SimClock::new(0.0),
            catalog: Catalog::new(opts.default_image_bytes),
            names: Names::default(),
            keys: Keys::default(),
            orders: Vec::new(),
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
        let clock = &self.clock;
        let mut out = Out {
            orders: &mut self.orders,
            catalog: &mut self.catalog,
            names: &mut self.names,
            decisions: &mut self.decisions,
        };
        for lane in &mut self.lanes {
            while let Some(tick) = lane.ticks.as_mut().and_then(|g| g.next_due(event.ts)) {
                clock.set(tick);
                lane.policy.on_tick(clock, out.orders);
                out.deliver(lane, tick)?;
            }
            clock.set(event.ts);
            lane.sim.on_event(event, &self.keys, out.catalog);
            lane.policy.on_event(event, clock, out.orders);
            out.deliver(lane, event.ts)?;
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
            let name = lane.policy.name().to_string();
            outcomes.push((name, lane.shown, lane.sim.finish(&mut self.catalog)));
        }
        report::build(
            self.label,
            self.count,
            self.last_ts - self.first_ts.unwrap_or(self.last_ts),
            self.catalog.defaulted_images(),
            outcomes,
        )
    }
}

/// What a lane's orders go to, borrowed apart from the lanes.
struct Out<'a, 'd> {
    orders: &'a mut Vec<PullOrder>,
    catalog: &'a mut Catalog,
    names: &'a mut Names,
    decisions: &'a mut Decisions<'d>,
}

impl Out<'_, '_> {
    /// Hands a lane's new orders to its simulator, and to the decisions
    /// file.
    fn deliver(&mut self, lane: &mut Lane, ts: f64) -> Result<()> {
        for order in self.orders.drain(..) {
            if lane.shown
                && let Some(out) = self.decisions.as_deref_mut()
            {
                crate::decisions::write_line(out, ts, lane.policy.name(), &order)
                    .map_err(|e| Error::Decisions(e.into()))?;
            }
            lane.sim.order(&order, ts, self.names, self.catalog);
        }
        Ok(())
    }
}
