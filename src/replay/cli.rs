//! The `pullahead replay` command line.

use std::path::PathBuf;
use std::time::Duration;

use super::sim::SimConfig;
use super::{KafkaSource, Options};
use crate::bus::kafka::KafkaArgs;
use crate::plan::PolicyArgs;

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
    /// nominated, rules, predictive (each as `run --policy` builds it),
    /// oracle.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,static,popular,nominated,predictive,oracle",
        env = "PULLAHEAD_POLICY"
    )]
    pub policy: Vec<String>,
    /// Print the figures as JSON (one object per file) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write every pull order of every policy to this file, as JSON lines.
    #[arg(long, value_name = "OUT.jsonl")]
    pub decisions: Option<PathBuf>,
    /// Also write the figures as one self-contained HTML page with charts
    /// (inline SVG; it fetches nothing).
    #[arg(long, value_name = "OUT.html")]
    pub report: Option<PathBuf>,
    /// The data-plane model and policy settings.
    #[command(flatten)]
    pub sim: SimArgs,
}

/// Settings of the simulated data plane, and the policy settings `run`
/// has too; shared by `replay` and `tune`.
#[derive(Clone, Debug, clap::Args)]
pub struct SimArgs {
    /// Prefetch pulls that may run at once on one node (kubelet's own pulls
    /// stay serial).
    #[arg(long, default_value_t = 4, env = "PULLAHEAD_MAX_PARALLEL_PULLS")]
    pub max_parallel_pulls: usize,
    /// The policy settings, as for `run`.
    #[command(flatten)]
    pub policy: PolicyArgs,
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
        if self.max_parallel_pulls == 0 {
            return Err(super::Error::InvalidOption(
                "--max-parallel-pulls must be at least 1".into(),
            ));
        }
        let settings = self.policy.resolve(&PolicyArgs::default())?;
        let sim = SimConfig {
            max_parallel_pulls: self.max_parallel_pulls,
            ..SimConfig::default()
        };
        Ok(Options {
            progress: true,
            ..Options::with_settings(sim, policies, settings)
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
