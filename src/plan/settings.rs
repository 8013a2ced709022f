//! The policy factory and the one set of policy settings that `run`,
//! `replay` and `tune` share: the same flags, the same environment
//! variables, and (for `run`) the same config-file keys.
//!
//! Replay scores a policy only if it is the policy `run` would act with, so
//! nothing else builds a policy from a name.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::forecast::model::Model;
use crate::forecast::planner::{Planner, PlannerConfig};
use crate::forecast::rules::{DEFAULT_SHARE, RulesPolicy};
use crate::nominated::NominatedPolicy;
use crate::policy::{NonePolicy, Policy, PopularPolicy, StaticPolicy};

/// What can go wrong while resolving the settings or building a policy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of range.
    #[error("{0}")]
    Invalid(String),
    /// The `--model` file is unusable (its message names the file).
    #[error("--policy predictive cannot use its --model: {0}")]
    Model(crate::forecast::Error),
    /// The built-in model does not load.
    #[error("the built-in models/default.json: {0}")]
    BuiltinModel(String),
    /// The static image list could not be read.
    #[error("--static-images {path}: {source}")]
    StaticList {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The policies `run` acts with and `replay` scores (replay adds the
/// `oracle`, which needs the future).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyName {
    /// Pull the images of pods nominated to a NodeClaim or node: only what
    /// is certain to be needed.
    Nominated,
    /// The top images by past demand in the new node's pool.
    Popular,
    /// Every image of every workload seen (or the `--static-images` list),
    /// on every new node.
    Static,
    /// The simple rule the forecaster is judged against: nominated and
    /// scale-up pods' images, the DaemonSets that fit, and images that
    /// `--rules-share` of the pool's past new nodes needed.
    Rules,
    /// The forecaster with the built-in model (models/default.json) or the
    /// one given by `--model`: nominated pods, scale-ups, DaemonSets, pending
    /// pods, HPAs and history.
    Predictive,
    /// Pull nothing (observe and export metrics only).
    None,
}

impl PolicyName {
    /// Every name, in the order `--help` lists them.
    pub const ALL: [PolicyName; 6] = [
        PolicyName::Nominated,
        PolicyName::Popular,
        PolicyName::Static,
        PolicyName::Rules,
        PolicyName::Predictive,
        PolicyName::None,
    ];

    /// The name as flags and reports spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyName::Nominated => "nominated",
            PolicyName::Popular => "popular",
            PolicyName::Static => "static",
            PolicyName::Rules => "rules",
            PolicyName::Predictive => "predictive",
            PolicyName::None => "none",
        }
    }

    /// The policy spelt `name`, if there is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// Default of `--popular-k`.
pub const DEFAULT_POPULAR_K: usize = 10;
/// Default of `--node-budget-gb`.
pub const DEFAULT_NODE_BUDGET_GB: f64 = 20.0;
/// Default of `--default-image-bytes`.
pub const DEFAULT_IMAGE_BYTES: u64 = 200_000_000;
/// Default of `--bandwidth-mbps`.
pub const DEFAULT_BANDWIDTH_MBPS: f64 = 1000.0;
/// Default of `--pull-latency-ms`.
pub const DEFAULT_PULL_LATENCY_MS: f64 = 500.0;
/// Default of `--max-images-per-node`.
pub const DEFAULT_MAX_IMAGES_PER_NODE: usize = 50;
/// Default of `--image-gc-high-percent` (kubelet's own default).
pub const DEFAULT_IMAGE_GC_HIGH_PERCENT: f64 = 85.0;
/// Default of `--disk-margin-percent`.
pub const DEFAULT_DISK_MARGIN_PERCENT: f64 = 5.0;
/// Default of `--image-size-factor`.
pub const DEFAULT_IMAGE_SIZE_FACTOR: f64 = 2.0;

/// The policy settings, as flags of `run`, `replay` and `tune`. An unset
/// flag falls back to `run`'s config file (same key as the flag), then to
/// the default shown.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, clap::Args)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PolicyArgs {
    /// How many of the pool's most demanded images `popular` pulls.
    /// [default: 10]
    #[arg(long, env = "PULLAHEAD_POPULAR_K")]
    pub popular_k: Option<usize>,
    /// The `static` policy's list: one image a line, `#` starts a comment.
    /// [default: every image of every workload seen so far]
    #[arg(long, env = "PULLAHEAD_STATIC_IMAGES", value_name = "FILE")]
    pub static_images: Option<PathBuf>,
    /// Model file for `predictive` (as written by `pullahead tune`); a bad
    /// file is refused at start. [default: the built-in models/default.json]
    #[arg(long, env = "PULLAHEAD_MODEL", value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Most gigabytes (10^9 bytes) `predictive` plans onto one node.
    /// [default: 20]
    #[arg(long, env = "PULLAHEAD_NODE_BUDGET_GB", value_name = "GB")]
    pub node_budget_gb: Option<f64>,
    /// Size assumed for an image that no `image` event describes, in bytes.
    /// [default: 200000000]
    #[arg(long, env = "PULLAHEAD_DEFAULT_IMAGE_BYTES", value_name = "BYTES")]
    pub default_image_bytes: Option<u64>,
    /// A node's pull bandwidth in megabits per second: `predictive` values
    /// a pull by it, and `replay` simulates it. [default: 1000]
    #[arg(long, env = "PULLAHEAD_BANDWIDTH_MBPS", value_name = "MBPS")]
    pub bandwidth_mbps: Option<f64>,
    /// Fixed latency of every pull before its bytes flow, in milliseconds:
    /// `predictive` values a pull by it, and `replay` simulates it.
    /// [default: 500]
    #[arg(long, env = "PULLAHEAD_PULL_LATENCY_MS", value_name = "MS")]
    pub pull_latency_ms: Option<f64>,
    /// Most images planned onto one node, highest priority first: the
    /// length of a NodePrefetch, and what `replay` lets a node prefetch.
    /// [default: 50]
    #[arg(long, env = "PULLAHEAD_MAX_IMAGES_PER_NODE")]
    pub max_images_per_node: Option<usize>,
    /// Kubelet's imageGCHighThresholdPercent, as the agents apply it: on a
    /// node whose image filesystem size is known (`image_fs_bytes`), plans
    /// and replay stay below it minus --disk-margin-percent. [default: 85]
    #[arg(long, env = "PULLAHEAD_IMAGE_GC_HIGH_PERCENT", value_name = "PERCENT")]
    pub image_gc_high_percent: Option<f64>,
    /// How far below --image-gc-high-percent the agents keep the image
    /// filesystem. [default: 5]
    #[arg(long, env = "PULLAHEAD_DISK_MARGIN_PERCENT", value_name = "PERCENT")]
    pub disk_margin_percent: Option<f64>,
    /// On-disk bytes per compressed image byte (the agents' estimate: the
    /// content store plus the unpacked snapshot). [default: 2]
    #[arg(long, env = "PULLAHEAD_IMAGE_SIZE_FACTOR", value_name = "FACTOR")]
    pub image_size_factor: Option<f64>,
    /// The share (0 to 1) of a pool's past new nodes that must have needed
    /// an image within the hour for `rules` to pull it onto the next one.
    /// [default: 0.7]
    #[arg(long, env = "PULLAHEAD_RULES_SHARE", value_name = "SHARE")]
    pub rules_share: Option<f64>,
}

/// The resolved policy settings.
#[derive(Clone, Debug)]
pub struct PolicySettings {
    /// How many images `popular` pulls.
    pub popular_k: usize,
    /// The `static` policy's list; `None` means every workload image seen.
    pub static_images: Option<Vec<String>>,
    /// Where the `predictive` model came from; `None` is the built-in one.
    pub model_path: Option<PathBuf>,
    /// The `predictive` policy's model.
    pub model: Model,
    /// The planner's budget and its model of a pull.
    pub planner: PlannerConfig,
    /// Most images planned onto one node.
    pub max_images_per_node: usize,
    /// The share of a pool's past new nodes `rules` needs to have needed
    /// an image.
    pub rules_share: f64,
}

impl Default for PolicySettings {
    /// The defaults every flag documents. Falls back to an all-zero model
    /// only if the built-in one were unusable, which its tests rule out.
    fn default() -> Self {
        PolicyArgs::default()
            .resolve(&PolicyArgs::default())
            .unwrap_or_else(|_| Self {
                popular_k: DEFAULT_POPULAR_K,
                static_images: None,
                model_path: None,
                model: Model::new(Default::default(), 0.0, 3600.0, 0.5),
                planner: PlannerConfig::default(),
                max_images_per_node: DEFAULT_MAX_IMAGES_PER_NODE,
                rules_share: DEFAULT_SHARE,
            })
    }
}

fn finite_at_least(name: &str, v: f64, min: f64, strict: bool) -> Result<f64> {
    let ok = v.is_finite() && if strict { v > min } else { v >= min };
    if ok {
        Ok(v)
    } else {
        let rel = if strict { "above" } else { "at least" };
        Err(Error::Invalid(format!(
            "--{name} must be {rel} {min}, not {v}"
        )))
    }
}

impl PolicyArgs {
    /// These flags over `file` (the config file's keys) over the defaults,
    /// checked; reads the static list and the model.
    pub fn resolve(&self, file: &PolicyArgs) -> Result<PolicySettings> {
        let popular_k = self
            .popular_k
            .or(file.popular_k)
            .unwrap_or(DEFAULT_POPULAR_K);
        let budget_gb = finite_at_least(
            "node-budget-gb",
            self.node_budget_gb
                .or(file.node_budget_gb)
                .unwrap_or(DEFAULT_NODE_BUDGET_GB),
            0.0,
            false,
        )?;
        let bandwidth = finite_at_least(
            "bandwidth-mbps",
            self.bandwidth_mbps
                .or(file.bandwidth_mbps)
                .unwrap_or(DEFAULT_BANDWIDTH_MBPS),
            0.0,
            true,
        )?;
        let latency = finite_at_least(
            "pull-latency-ms",
            self.pull_latency_ms
                .or(file.pull_latency_ms)
                .unwrap_or(DEFAULT_PULL_LATENCY_MS),
            0.0,
            false,
        )?;
        let max_images_per_node = self
            .max_images_per_node
            .or(file.max_images_per_node)
            .unwrap_or(DEFAULT_MAX_IMAGES_PER_NODE);
        if max_images_per_node == 0 {
            return Err(Error::Invalid(
                "--max-images-per-node must be at least 1".into(),
            ));
        }
        let gc_high = self
            .image_gc_high_percent
            .or(file.image_gc_high_percent)
            .unwrap_or(DEFAULT_IMAGE_GC_HIGH_PERCENT);
        let margin = self
            .disk_margin_percent
            .or(file.disk_margin_percent)
            .unwrap_or(DEFAULT_DISK_MARGIN_PERCENT);
        let ceiling = gc_high - margin;
        if !(ceiling.is_finite() && ceiling > 0.0 && ceiling <= 100.0) {
            return Err(Error::Invalid(format!(
                "--image-gc-high-percent {gc_high} minus --disk-margin-percent {margin} must be above 0 and at most 100"
            )));
        }
        let size_factor = finite_at_least(
            "image-size-factor",
            self.image_size_factor
                .or(file.image_size_factor)
                .unwrap_or(DEFAULT_IMAGE_SIZE_FACTOR),
            1.0,
            false,
        )?;
        let rules_share = self
            .rules_share
            .or(file.rules_share)
            .unwrap_or(DEFAULT_SHARE);
        if !(rules_share.is_finite() && (0.0..=1.0).contains(&rules_share)) {
            return Err(Error::Invalid(format!(
                "--rules-share must be from 0 to 1, not {rules_share}"
            )));
        }
        let static_images = self
            .static_images
            .as_ref()
            .or(file.static_images.as_ref())
            .map(|p| read_static_list(p))
            .transpose()?;
        let model_path = self.model.clone().or_else(|| file.model.clone());
        let model = match &model_path {
            Some(path) => Model::load(path).map_err(Error::Model)?,
            None => Model::builtin().map_err(Error::BuiltinModel)?,
        };
        Ok(PolicySettings {
            popular_k,
            static_images,
            model_path,
            model,
            planner: PlannerConfig {
                node_budget_bytes: (budget_gb * 1e9) as u64,
                bandwidth_bytes_per_second: bandwidth * 1e6 / 8.0,
                pull_latency_seconds: latency / 1000.0,
                default_image_bytes: self
                    .default_image_bytes
                    .or(file.default_image_bytes)
                    .unwrap_or(DEFAULT_IMAGE_BYTES),
                disk_ceiling_percent: ceiling,
                image_size_factor: size_factor,
                ..PlannerConfig::default()
            },
            max_images_per_node,
            rules_share,
        })
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

/// Builds the policy `name` with `settings`: the one place any policy that
/// `run` offers is made.
pub fn build(name: PolicyName, settings: &PolicySettings) -> Box<dyn Policy> {
    match name {
        PolicyName::Nominated => Box::new(NominatedPolicy::new()),
        PolicyName::Popular => Box::new(PopularPolicy::new(settings.popular_k)),
        PolicyName::Static => Box::new(match &settings.static_images {
            Some(list) => StaticPolicy::fixed(list.clone()),
            None => StaticPolicy::from_workloads(),
        }),
        PolicyName::Rules => Box::new(RulesPolicy::new(settings.rules_share)),
        PolicyName::None => Box::new(NonePolicy),
        PolicyName::Predictive => Box::new(Planner::new(settings.model.clone(), settings.planner)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_clap() {
        for p in PolicyName::ALL {
            assert_eq!(PolicyName::parse(p.as_str()), Some(p));
            let v = clap::ValueEnum::to_possible_value(&p).unwrap();
            assert_eq!(v.get_name(), p.as_str());
            assert_eq!(build(p, &PolicySettings::default()).name(), p.as_str());
        }
        assert_eq!(PolicyName::parse("oracle"), None);
    }

    #[test]
    fn flags_beat_the_file_which_beats_the_defaults() {
        let flags = PolicyArgs {
            popular_k: Some(3),
            ..PolicyArgs::default()
        };
        let file = PolicyArgs {
            popular_k: Some(5),
            node_budget_gb: Some(1.5),
            ..PolicyArgs::default()
        };
        let s = flags.resolve(&file).unwrap();
        assert_eq!(s.popular_k, 3);
        assert_eq!(s.planner.node_budget_bytes, 1_500_000_000);
        assert_eq!(s.max_images_per_node, DEFAULT_MAX_IMAGES_PER_NODE);
        assert_eq!(s.planner.bandwidth_bytes_per_second, 125e6);
        assert_eq!(s.planner.pull_latency_seconds, 0.5);
    }

    #[test]
    fn out_of_range_settings_name_their_flag() {
        let bad = |a: PolicyArgs| a.resolve(&PolicyArgs::default()).unwrap_err().to_string();
        let e = bad(PolicyArgs {
            bandwidth_mbps: Some(0.0),
            ..PolicyArgs::default()
        });
        assert!(e.contains("--bandwidth-mbps"), "{e}");
        let e = bad(PolicyArgs {
            max_images_per_node: Some(0),
            ..PolicyArgs::default()
        });
        assert!(e.contains("--max-images-per-node"), "{e}");
        let e = bad(PolicyArgs {
            model: Some("/nonexistent/m.json".into()),
            ..PolicyArgs::default()
        });
        assert!(e.contains("/nonexistent/m.json"), "{e}");
    }
}
