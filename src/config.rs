//! Configuration of `pullahead run`: command-line flags, each with an
//! environment variable, over an optional YAML file, over built-in defaults.
//!
//! Precedence is flag > environment > file > default. The file uses the flag
//! names as keys (`metrics-addr: 0.0.0.0:9090`); an unknown key is an error,
//! so a typo cannot silently leave a default in force.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What can go wrong while reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid YAML for this schema.
    #[error("config file {path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// 1-based line of the problem (0 when unknown).
        line: usize,
        /// 1-based column of the problem (0 when unknown).
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A value is out of its allowed range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub use crate::plan::{PolicyArgs, PolicyName};

/// Flags of `pullahead run`. Unset flags fall back to the config file, then
/// to the defaults shown.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RunArgs {
    /// YAML file with any of these settings, keyed by flag name
    /// (e.g. `metrics-addr: 0.0.0.0:8080`). Flags and env override it.
    #[arg(long, env = "PULLAHEAD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Plan and record decisions, but write nothing to the cluster and take
    /// no Lease.
    #[arg(long, env = "PULLAHEAD_DRY_RUN")]
    pub dry_run: bool,

    /// Append every decision as a JSON line
    /// {ts, policy, node, image, priority, reason, probability?} to FILE.
    #[arg(long, env = "PULLAHEAD_DECISIONS", value_name = "FILE")]
    pub decisions: Option<PathBuf>,

    /// Read events from this JSON Lines file (`-` for stdin) instead of
    /// watching the cluster. [default: watch the cluster]
    #[arg(long, env = "PULLAHEAD_EVENTS", value_name = "FILE")]
    pub events: Option<PathBuf>,

    /// The planner. [default: nominated]
    #[arg(long, env = "PULLAHEAD_POLICY", value_enum)]
    pub policy: Option<PolicyName>,

    /// The policy settings, shared with `replay` and `tune`.
    #[command(flatten)]
    pub settings: PolicyArgs,

    /// Address of the /metrics, /healthz and /readyz server.
    /// [default: 0.0.0.0:8080]
    #[arg(long, env = "PULLAHEAD_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Name of the leader-election Lease. [default: pullahead-controller]
    #[arg(long, env = "PULLAHEAD_LEASE_NAME")]
    pub lease_name: Option<String>,

    /// Namespace of the Lease (the controller's own). [default: pullahead]
    #[arg(long, env = "PULLAHEAD_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// This replica's identity in the Lease. [default: $HOSTNAME, the pod name]
    #[arg(long, env = "PULLAHEAD_IDENTITY")]
    pub identity: Option<String>,

    /// Seconds a Lease stays valid without renewal; a standby takes over
    /// within this time of the leader dying. [default: 15]
    #[arg(long, env = "PULLAHEAD_LEASE_DURATION", value_name = "SECONDS")]
    pub lease_duration: Option<f64>,

    /// Seconds between attempts to acquire or renew the Lease. [default: 2]
    #[arg(long, env = "PULLAHEAD_LEASE_RETRY", value_name = "SECONDS")]
    pub lease_retry: Option<f64>,

    /// Capacity of the event queue into the planner; events beyond it are
    /// dropped and counted. [default: 10000]
    #[arg(long, env = "PULLAHEAD_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,

    /// Most NodePrefetch writes in flight at once. [default: 8]
    #[arg(long, env = "PULLAHEAD_WRITE_CONCURRENCY")]
    pub write_concurrency: Option<usize>,

    /// Seconds after the order by which a pull must finish to be useful;
    /// written as each image's deadline. [default: 600]
    #[arg(long, env = "PULLAHEAD_DEADLINE", value_name = "SECONDS")]
    pub deadline: Option<f64>,

    /// Seconds to let in-flight writes finish after SIGTERM. [default: 10]
    #[arg(long, env = "PULLAHEAD_SHUTDOWN_TIMEOUT", value_name = "SECONDS")]
    pub shutdown_timeout: Option<f64>,

    /// Seconds to wait for the Kubernetes API at start before giving up
    /// with an error. [default: 10]
    #[arg(long, env = "PULLAHEAD_CONNECT_TIMEOUT", value_name = "SECONDS")]
    pub connect_timeout: Option<f64>,

    /// Consume events from a Kafka topic (as `pullahead record
    /// --kafka-brokers` fills it) instead of watching the cluster or reading
    /// `--events`.
    #[command(flatten)]
    pub kafka: crate::bus::kafka::KafkaArgs,
}

/// `KafkaArgs`' clap defaults: a flag still at its default lets the config
/// file's value through.
const DEFAULT_KAFKA_TOPIC: &str = "pullahead-events";
const DEFAULT_KAFKA_GROUP: &str = "pullahead";

/// The same settings as read from a config file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    dry_run: Option<bool>,
    decisions: Option<PathBuf>,
    events: Option<PathBuf>,
    policy: Option<PolicyName>,
    model: Option<PathBuf>,
    metrics_addr: Option<SocketAddr>,
    lease_name: Option<String>,
    lease_namespace: Option<String>,
    identity: Option<String>,
    lease_duration: Option<f64>,
    lease_retry: Option<f64>,
    queue_capacity: Option<usize>,
    max_images_per_node: Option<usize>,
    popular_k: Option<usize>,
    static_images: Option<PathBuf>,
    node_budget_gb: Option<f64>,
    default_image_bytes: Option<u64>,
    bandwidth_mbps: Option<f64>,
    pull_latency_ms: Option<f64>,
    image_gc_high_percent: Option<f64>,
    disk_margin_percent: Option<f64>,
    image_size_factor: Option<f64>,
    rules_share: Option<f64>,
    write_concurrency: Option<usize>,
    deadline: Option<f64>,
    shutdown_timeout: Option<f64>,
    connect_timeout: Option<f64>,
    kafka_brokers: Option<String>,
    kafka_topic: Option<String>,
    kafka_group: Option<String>,
    kafka_options: Option<Vec<String>>,
}

/// The resolved settings of `pullahead run`.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Write nothing, take no Lease.
    pub dry_run: bool,
    /// Where to record decisions, if anywhere.
    pub decisions: Option<PathBuf>,
    /// An event file instead of the cluster watchers.
    pub events: Option<PathBuf>,
    /// The planner.
    pub policy: PolicyName,
    /// The predictive planner's model file; `None` for the built-in one.
    pub model: Option<PathBuf>,
    /// The policy settings, flags over the file (resolved when the policy
    /// is built, which reads the model).
    pub settings: PolicyArgs,
    /// The metrics server address.
    pub metrics_addr: SocketAddr,
    /// The Lease name.
    pub lease_name: String,
    /// The Lease namespace.
    pub lease_namespace: String,
    /// This replica's identity.
    pub identity: String,
    /// Lease validity, seconds.
    pub lease_duration: f64,
    /// Lease retry period, seconds.
    pub lease_retry: f64,
    /// Event queue capacity.
    pub queue_capacity: usize,
    /// Images per NodePrefetch.
    pub max_images_per_node: usize,
    /// Concurrent writes.
    pub write_concurrency: usize,
    /// Pull deadline after the order, seconds.
    pub deadline: f64,
    /// Grace for in-flight writes after SIGTERM, seconds.
    pub shutdown_timeout: f64,
    /// Start-up wait for the API, seconds; also for the Kafka brokers.
    pub connect_timeout: f64,
    /// A Kafka topic to consume events from, instead of the watchers.
    pub kafka: Option<crate::bus::kafka::KafkaConfig>,
}

/// A flag value unless it is empty or still its clap default, else the
/// file's, else the default.
fn flag_over_file(flag: &str, file: Option<String>, default: &str) -> String {
    if !flag.is_empty() && flag != default {
        flag.to_string()
    } else {
        file.unwrap_or_else(|| default.to_string())
    }
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: name.clone(),
        source,
    })?;
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_yaml_ng::from_str(&text).map_err(|e| {
        let (pos, message) = crate::position::yaml(&e);
        Error::Parse {
            path: name,
            line: pos.map_or(0, |p| p.line as usize),
            column: pos.map_or(0, |p| p.column as usize),
            message,
        }
    })
}

fn positive(name: &str, v: f64) -> Result<f64> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(Error::Invalid(format!("{name} must be > 0, got {v}")))
    }
}

fn at_least_one(name: &str, v: usize) -> Result<usize> {
    if v >= 1 {
        Ok(v)
    } else {
        Err(Error::Invalid(format!("{name} must be >= 1, got {v}")))
    }
}

impl Config {
    /// Resolves `args` over the file named in them (if any) over defaults.
    pub fn resolve(args: &RunArgs) -> Result<Self> {
        let f = match &args.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let identity = args
            .identity
            .clone()
            .or(f.identity)
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "pullahead".to_string());
        let mut cfg = Self {
            dry_run: args.dry_run || f.dry_run.unwrap_or(false),
            decisions: args.decisions.clone().or(f.decisions),
            events: args.events.clone().or(f.events),
            policy: args.policy.or(f.policy).unwrap_or(PolicyName::Nominated),
            model: args.settings.model.clone().or(f.model.clone()),
            settings: PolicyArgs {
                popular_k: args.settings.popular_k.or(f.popular_k),
                static_images: args.settings.static_images.clone().or(f.static_images),
                model: args.settings.model.clone().or(f.model),
                node_budget_gb: args.settings.node_budget_gb.or(f.node_budget_gb),
                default_image_bytes: args.settings.default_image_bytes.or(f.default_image_bytes),
                bandwidth_mbps: args.settings.bandwidth_mbps.or(f.bandwidth_mbps),
                pull_latency_ms: args.settings.pull_latency_ms.or(f.pull_latency_ms),
                max_images_per_node: args.settings.max_images_per_node.or(f.max_images_per_node),
                image_gc_high_percent: args
                    .settings
                    .image_gc_high_percent
                    .or(f.image_gc_high_percent),
                disk_margin_percent: args.settings.disk_margin_percent.or(f.disk_margin_percent),
                image_size_factor: args.settings.image_size_factor.or(f.image_size_factor),
                rules_share: args.settings.rules_share.or(f.rules_share),
            },
            metrics_addr: args
                .metrics_addr
                .or(f.metrics_addr)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080))),
            lease_name: args
                .lease_name
                .clone()
                .or(f.lease_name)
                .unwrap_or_else(|| "pullahead-controller".into()),
            lease_namespace: args
                .lease_namespace
                .clone()
                .or(f.lease_namespace)
                .unwrap_or_else(|| "pullahead".into()),
            identity,
            lease_duration: positive(
                "lease-duration",
                args.lease_duration.or(f.lease_duration).unwrap_or(15.0),
            )?,
            lease_retry: positive(
                "lease-retry",
                args.lease_retry.or(f.lease_retry).unwrap_or(2.0),
            )?,
            queue_capacity: at_least_one(
                "queue-capacity",
                args.queue_capacity.or(f.queue_capacity).unwrap_or(10_000),
            )?,
            max_images_per_node: at_least_one(
                "max-images-per-node",
                args.settings
                    .max_images_per_node
                    .or(f.max_images_per_node)
                    .unwrap_or(crate::plan::settings::DEFAULT_MAX_IMAGES_PER_NODE),
            )?,
            write_concurrency: at_least_one(
                "write-concurrency",
                args.write_concurrency.or(f.write_concurrency).unwrap_or(8),
            )?,
            deadline: positive("deadline", args.deadline.or(f.deadline).unwrap_or(600.0))?,
            shutdown_timeout: positive(
                "shutdown-timeout",
                args.shutdown_timeout.or(f.shutdown_timeout).unwrap_or(10.0),
            )?,
            connect_timeout: positive(
                "connect-timeout",
                args.connect_timeout.or(f.connect_timeout).unwrap_or(10.0),
            )?,
            kafka: None,
        };
        if let Some(brokers) = args.kafka.kafka_brokers.clone().or(f.kafka_brokers) {
            // File options first, so a flag given for the same key wins.
            let options = f
                .kafka_options
                .unwrap_or_default()
                .iter()
                .chain(&args.kafka.kafka_option)
                .map(|o| crate::bus::kafka::parse_option(o))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Invalid(e.to_string()))?;
            cfg.kafka = Some(crate::bus::kafka::KafkaConfig {
                brokers,
                topic: flag_over_file(&args.kafka.kafka_topic, f.kafka_topic, DEFAULT_KAFKA_TOPIC),
                group: flag_over_file(&args.kafka.kafka_group, f.kafka_group, DEFAULT_KAFKA_GROUP),
                options,
            });
        }
        if let (Some(events), Some(k)) = (&cfg.events, &cfg.kafka) {
            // Two sources would interleave two unrelated streams of events.
            return Err(Error::Invalid(format!(
                "events file {} and Kafka brokers {} are both set; give one event source",
                events.display(),
                k.brokers
            )));
        }
        if let Some(model) = &cfg.model
            && cfg.policy != PolicyName::Predictive
        {
            // Refused rather than ignored: a model given with another policy
            // is almost always a forgotten `--policy predictive`.
            return Err(Error::Invalid(format!(
                "model {} is set but the policy is {}; only the predictive policy uses a model",
                model.display(),
                clap::ValueEnum::to_possible_value(&cfg.policy)
                    .map(|v| v.get_name().to_string())
                    .unwrap_or_default()
            )));
        }
        if cfg.lease_retry * 2.0 > cfg.lease_duration {
            return Err(Error::Invalid(format!(
                "lease-retry ({}) must be at most half of lease-duration ({}) so the leader renews in time",
                cfg.lease_retry, cfg.lease_duration
            )));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    /// A bad config file names its line and column once, then the cause.
    #[test]
    fn a_bad_file_names_its_line_and_column() {
        let f = file("policy: popular\nlease-duration: [1]\n");
        let err = read_file(f.path()).unwrap_err().to_string();
        let want = format!("config file {}:2:", f.path().display());
        assert!(err.starts_with(&want), "{err}");
        assert!(err.contains("invalid type"), "{err}");
        assert!(!err.contains(" at line "), "{err}");
    }

    #[test]
    fn the_policy_settings_are_file_keys_too() {
        let f = file("popular-k: 3\nnode-budget-gb: 5\nmax-images-per-node: 7\n");
        let args = RunArgs {
            config: Some(f.path().into()),
            settings: PolicyArgs {
                popular_k: Some(4),
                ..PolicyArgs::default()
            },
            ..RunArgs::default()
        };
        let c = Config::resolve(&args).unwrap();
        assert_eq!(c.settings.popular_k, Some(4));
        assert_eq!(c.settings.node_budget_gb, Some(5.0));
        assert_eq!(c.max_images_per_node, 7);
        let s = c.settings.resolve(&PolicyArgs::default()).unwrap();
        assert_eq!(s.max_images_per_node, 7);
        assert_eq!(s.planner.node_budget_bytes, 5_000_000_000);
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let f = file("metrics-addr: 127.0.0.1:9999\nlease-duration: 30\npolicy: popular\n");
        let args = RunArgs {
            config: Some(f.path().into()),
            lease_duration: Some(20.0),
            identity: Some("me".into()),
            ..RunArgs::default()
        };
        let c = Config::resolve(&args).unwrap();
        assert_eq!(c.metrics_addr, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(c.lease_duration, 20.0);
        assert_eq!(c.policy, PolicyName::Popular);
        assert_eq!(c.identity, "me");
        assert_eq!(c.lease_retry, 2.0);
        assert_eq!(c.shutdown_timeout, 10.0);
        assert!(!c.dry_run);
    }

    #[test]
    fn kafka_settings_come_from_flags_over_the_file_and_exclude_events() {
        let f = file(
            "kafka-brokers: k1:9092\nkafka-topic: from-file\nkafka-options: [client.id=a, linger.ms=1]\n",
        );
        let mut args = RunArgs {
            config: Some(f.path().into()),
            ..RunArgs::default()
        };
        // As clap fills them when the flags are not given.
        args.kafka.kafka_topic = DEFAULT_KAFKA_TOPIC.into();
        args.kafka.kafka_group = DEFAULT_KAFKA_GROUP.into();
        args.kafka.kafka_option = vec!["client.id=b".into()];
        let k = Config::resolve(&args).unwrap().kafka.unwrap();
        assert_eq!(k.brokers, "k1:9092");
        assert_eq!(k.topic, "from-file");
        assert_eq!(k.group, "pullahead");
        assert_eq!(k.options.last().unwrap(), &("client.id".into(), "b".into()));
        args.kafka.kafka_topic = "from-flag".into();
        assert_eq!(
            Config::resolve(&args).unwrap().kafka.unwrap().topic,
            "from-flag"
        );
        assert!(
            Config::resolve(&RunArgs::default())
                .unwrap()
                .kafka
                .is_none()
        );
        args.events = Some("e.jsonl".into());
        let e = Config::resolve(&args).unwrap_err().to_string();
        assert!(e.contains("e.jsonl") && e.contains("k1:9092"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_file_and_line() {
        let f = file("dry-run: true\nlease-durashun: 5\n");
        let args = RunArgs {
            config: Some(f.path().into()),
            ..RunArgs::default()
        };
        let e = Config::resolve(&args).unwrap_err().to_string();
        assert!(e.contains(&format!("{}:2:", f.path().display())), "{e}");
        assert!(e.contains("lease-durashun"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_with_the_setting_named() {
        let args = RunArgs {
            lease_duration: Some(4.0),
            lease_retry: Some(3.0),
            ..RunArgs::default()
        };
        let e = Config::resolve(&args).unwrap_err().to_string();
        assert!(e.contains("lease-retry"), "{e}");
        let args = RunArgs {
            write_concurrency: Some(0),
            ..RunArgs::default()
        };
        assert!(
            Config::resolve(&args)
                .unwrap_err()
                .to_string()
                .contains("write-concurrency")
        );
        let args = RunArgs {
            settings: PolicyArgs {
                model: Some("m.json".into()),
                ..PolicyArgs::default()
            },
            ..RunArgs::default()
        };
        let e = Config::resolve(&args).unwrap_err().to_string();
        assert!(
            e.contains("m.json") && e.contains("policy is nominated"),
            "{e}"
        );
        let f = file("policy: predictive\nmodel: /etc/pullahead/model.json\n");
        let args = RunArgs {
            config: Some(f.path().into()),
            ..RunArgs::default()
        };
        let c = Config::resolve(&args).unwrap();
        assert_eq!(
            c.model.as_deref(),
            Some(Path::new("/etc/pullahead/model.json"))
        );
        let args = RunArgs {
            config: Some("/nonexistent/pullahead.yaml".into()),
            ..RunArgs::default()
        };
        assert!(
            Config::resolve(&args)
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/pullahead.yaml")
        );
    }
}
