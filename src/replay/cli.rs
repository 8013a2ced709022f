//! The `pullahead replay` command line.

use std::path::PathBuf;
use std::time::Duration;

use super::sim::SimConfig;
use super::{KafkaSource, Options};
use crate::bus::kafka::KafkaArgs;

/// Replays event files, or a Kafka topic, through each policy and scores them.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Event files (schema v1 JSON Lines) to replay; each gets its own report.
    /// Without files, `--kafka-brokers` names a topic to replay instead.
    #[arg(
        value_name = "FILE",
        required_unless_present = "kafka_brokers",
        conflicts_with = "kafka_brokers"
    )]
    pub files: Vec<PathBuf>,
    /// Replay the events of a Kafka topic instead of files.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// With a topic: only events at or after this time, in Unix seconds or
    /// RFC 3339 (`2026-11-28T10:00:00Z`).
    #[arg(long, value_name = "T", value_parser = parse_time)]
    pub from: Option<f64>,
    /// With a topic: only events at or before this time (as `--from`).
    #[arg(long, value_name = "T", value_parser = parse_time)]
    pub until: Option<f64>,
    /// With a topic: give up when a broker does not answer, or no message
    /// arrives, within this time (e.g. `10s`, `1m`).
    #[arg(
        long,
        value_parser = crate::record::parse_duration,
        default_value = "10s",
        env = "PULLAHEAD_KAFKA_TIMEOUT"
    )]
    pub kafka_timeout: Duration,
    /// Policies to compare, comma-separated: none, static, popular,
    /// predictive, oracle.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,static,popular,predictive,oracle",
        env = "PULLAHEAD_POLICY"
    )]
    pub policy: Vec<String>,
    /// Print the figures as JSON (one object per file) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write every pull order of every policy to this file, as JSON lines.
    #[arg(long, value_name = "OUT.jsonl")]
    pub decisions: Option<PathBuf>,
    /// The data-plane model and policy settings.
    #[command(flatten)]
    pub sim: SimArgs,
}

/// Settings of the simulated data plane and of the policies, shared by
/// `replay` and `tune`.
#[derive(Clone, Debug, clap::Args)]
pub struct SimArgs {
    /// Bandwidth of each node, in megabits per second.
    #[arg(long, default_value_t = 1000.0, env = "PULLAHEAD_BANDWIDTH_MBPS")]
    pub bandwidth_mbps: f64,
    /// Fixed latency every pull pays before its bytes flow, in milliseconds.
    #[arg(long, default_value_t = 500.0, env = "PULLAHEAD_PULL_LATENCY_MS")]
    pub pull_latency_ms: f64,
    /// Prefetch pulls that may run at once on one node (kubelet's own pulls
    /// stay serial).
    #[arg(long, default_value_t = 4, env = "PULLAHEAD_MAX_PARALLEL_PULLS")]
    pub max_parallel_pulls: usize,
    /// Size assumed for an image that no `image` event describes, in bytes.
    #[arg(
        long,
        default_value_t = 200_000_000,
        env = "PULLAHEAD_DEFAULT_IMAGE_BYTES"
    )]
    pub default_image_bytes: u64,
    /// The `static` policy's list: one image a line. Default: every image of
    /// every workload seen so far.
    #[arg(long, value_name = "FILE")]
    pub static_images: Option<PathBuf>,
    /// How many of the pool's most demanded images `popular` pulls.
    #[arg(long, default_value_t = 10)]
    pub popular_k: usize,
    /// Model for the `predictive` policy (default: the built-in
    /// models/default.json).
    #[arg(long, value_name = "FILE", env = "PULLAHEAD_MODEL")]
    pub model: Option<PathBuf>,
    /// Most gigabytes (10^9 bytes) `predictive` plans onto one node.
    #[arg(long, default_value_t = 20.0, env = "PULLAHEAD_NODE_BUDGET_GB")]
    pub node_budget_gb: f64,
    /// The share (0 to 1) of a pool's past new nodes that must have needed
    /// an image within the hour for `rules` to pull it onto the next one.
    #[arg(long, default_value_t = crate::forecast::rules::DEFAULT_SHARE)]
    pub rules_share: f64,
}

impl Args {
    /// The replay options these arguments describe.
    pub fn options(&self) -> super::Result<Options> {
        self.sim
            .options(self.policy.iter().map(|p| p.trim().to_string()).collect())
    }

    /// The topic to replay, or `None` when the events come from files.
    pub fn kafka_source(&self) -> super::Result<Option<KafkaSource>> {
        let config = self
            .kafka
            .config()
            .map_err(|e| super::Error::InvalidOption(e.to_string()))?;
        // Checked here rather than with clap's `requires`, which does not
        // see through the flattened Kafka flags.
        if config.is_none() && (self.from.is_some() || self.until.is_some()) {
            return Err(super::Error::InvalidOption(
                "--from and --until select events of a topic: they need --kafka-brokers".into(),
            ));
        }
        Ok(config.map(|config| KafkaSource {
            config,
            from: self.from,
            until: self.until,
            timeout: self.kafka_timeout,
        }))
    }
}

/// Parses a time bound: Unix seconds (`1732788000`, `1732788000.5`) or an
/// RFC 3339 timestamp.
pub fn parse_time(s: &str) -> Result<f64, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return if secs.is_finite() {
            Ok(secs)
        } else {
            Err(format!("{s:?} is not a finite number of seconds"))
        };
    }
    s.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond() as f64 / 1000.0)
        .map_err(|e| format!("{s:?} is neither Unix seconds nor an RFC 3339 time: {e}"))
}

impl SimArgs {
    /// Replay options with these settings and `policies`.
    pub fn options(&self, policies: Vec<String>) -> super::Result<Options> {
        let bad = |msg: String| super::Error::InvalidOption(msg);
        if !(self.bandwidth_mbps.is_finite() && self.bandwidth_mbps > 0.0) {
            return Err(bad(format!(
                "--bandwidth-mbps must be above zero, not {}",
                self.bandwidth_mbps
            )));
        }
        if !(self.pull_latency_ms.is_finite() && self.pull_latency_ms >= 0.0) {
            return Err(bad(format!(
                "--pull-latency-ms must be zero or more, not {}",
                self.pull_latency_ms
            )));
        }
        if !(self.node_budget_gb.is_finite() && self.node_budget_gb >= 0.0) {
            return Err(bad(format!(
                "--node-budget-gb must be zero or more, not {}",
                self.node_budget_gb
            )));
        }
        if !(self.rules_share.is_finite() && (0.0..=1.0).contains(&self.rules_share)) {
            return Err(bad(format!(
                "--rules-share must be from 0 to 1, not {}",
                self.rules_share
            )));
        }
        if self.max_parallel_pulls == 0 {
            return Err(bad("--max-parallel-pulls must be at least 1".into()));
        }
        Ok(Options {
            sim: SimConfig {
                bandwidth_bytes_per_second: self.bandwidth_mbps * 1e6 / 8.0,
                pull_latency_seconds: self.pull_latency_ms / 1000.0,
                max_parallel_pulls: self.max_parallel_pulls,
                ..SimConfig::default()
            },
            default_image_bytes: self.default_image_bytes,
            policies,
            static_images: self
                .static_images
                .as_deref()
                .map(super::read_static_list)
                .transpose()?,
            popular_k: self.popular_k,
            progress: true,
            model: self
                .model
                .as_deref()
                .map(crate::forecast::model::Model::load)
                .transpose()
                .map_err(|e| super::Error::Policy {
                    policy: "predictive".into(),
                    msg: e.to_string(),
                })?,
            node_budget_bytes: (self.node_budget_gb * 1e9) as u64,
            rules_share: self.rules_share,
        })
    }
}

/// Writes a synthetic trace, for benchmarks and tests.
#[derive(Clone, Debug, clap::Args)]
pub struct SynthArgs {
    /// Stop after about this many events.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Random seed; the same seed gives the same file.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Workloads (Deployments) in the synthetic cluster.
    #[arg(long, default_value_t = 2_000)]
    pub workloads: usize,
    /// Distinct application images.
    #[arg(long, default_value_t = 1_000)]
    pub images: usize,
    /// Node pools.
    #[arg(long, default_value_t = 8)]
    pub pools: usize,
    /// Output file (`-` for standard output).
    #[arg(long, default_value = "-")]
    pub out: PathBuf,
}

impl SynthArgs {
    /// The generator settings these arguments describe.
    pub fn config(&self) -> super::synth::SynthConfig {
        super::synth::SynthConfig {
            seed: self.seed,
            events: self.events,
            pools: self.pools.max(1),
            workloads: self.workloads.max(1),
            images: self.images.max(1),
        }
    }
}
