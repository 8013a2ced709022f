//! `pullahead pull`: a one-shot pull through the node's CRI socket, for
//! operators on a node and for tests. One line (or one JSON object) per image.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::clock::SystemClock;
use crate::dispatch::crd::PullState;
use crate::dispatch::cri::{self, CriClient};
use crate::dispatch::puller::{Options, Order, Outcome, Puller};
use crate::registry::DockerConfig;

/// Errors from the `pull` command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CRI client could not be made.
    #[error(transparent)]
    Cri(#[from] cri::Error),
    /// A credentials file could not be read or parsed.
    #[error("{path}: {message}")]
    DockerConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Writing the report failed.
    #[error("cannot write the report: {0}")]
    Output(#[from] std::io::Error),
    /// Some images did not land.
    #[error("{failed} of {total} images failed")]
    Failed {
        /// Failed images.
        failed: usize,
        /// All images.
        total: usize,
    },
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Flags of `pullahead pull`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// containerd's CRI socket.
    #[arg(
        long,
        env = "PULLAHEAD_CRI_SOCKET",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub cri_socket: PathBuf,
    /// Pulls running at once.
    #[arg(long, env = "PULLAHEAD_PARALLEL", default_value_t = 4)]
    pub parallel: usize,
    /// Print one JSON object per image instead of a text line.
    #[arg(long)]
    pub json: bool,
    /// dockerconfigjson file(s) with registry credentials (repeatable).
    #[arg(
        long = "docker-config",
        env = "PULLAHEAD_DOCKER_CONFIG",
        value_delimiter = ','
    )]
    pub docker_config: Vec<PathBuf>,
    /// Attempts per image for retryable failures.
    #[arg(long, default_value_t = 3)]
    pub attempts: u32,
    /// Images to pull (full references).
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// One image's line in `--json` mode.
#[derive(Debug, Serialize)]
struct Report<'a> {
    image: &'a str,
    state: &'static str,
    bytes: Option<u64>,
    seconds: f64,
    attempts: u32,
    already_present: bool,
    error: Option<&'a str>,
}

/// Reads and merges dockerconfigjson files.
pub fn load_docker_configs(paths: &[PathBuf]) -> Result<DockerConfig> {
    let mut all = DockerConfig::default();
    for p in paths {
        let bytes = std::fs::read(p).map_err(|e| Error::DockerConfig {
            path: p.clone(),
            message: e.to_string(),
        })?;
        let c = DockerConfig::parse(&bytes, &p.display().to_string()).map_err(|e| {
            Error::DockerConfig {
                path: p.clone(),
                message: e.to_string(),
            }
        })?;
        all.merge(c);
    }
    Ok(all)
}

/// Runs the command, writing the report to `out`.
pub async fn run(args: Args, out: &mut dyn Write) -> Result<Vec<Outcome>> {
    let creds = load_docker_configs(&args.docker_config)?;
    let cri = Arc::new(CriClient::new(&args.cri_socket)?);
    let opts = Options {
        parallel: args.parallel,
        max_attempts: Some(args.attempts.max(1)),
        ..Options::default()
    };
    let puller = Puller::new(cri, Arc::new(SystemClock), opts);
    let orders = args
        .images
        .iter()
        .map(|i| Order {
            auth: creds.for_image(i).map(|c| c.cri_auth()),
            ..Order::new(i)
        })
        .collect();
    let outcomes = puller.run(orders).await;
    for o in &outcomes {
        if args.json {
            let r = Report {
                image: &o.image,
                state: o.state.as_str(),
                bytes: o.bytes,
                seconds: o.seconds,
                attempts: o.attempts,
                already_present: o.already_present,
                error: o.error.as_deref(),
            };
            serde_json::to_writer(&mut *out, &r).map_err(std::io::Error::other)?;
            writeln!(out)?;
        } else {
            writeln!(
                out,
                "{}\t{}\t{}\t{:.3}s\t{}",
                o.image,
                o.state.as_str(),
                o.bytes.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
                o.seconds,
                o.error.as_deref().unwrap_or(if o.already_present {
                    "already present"
                } else {
                    ""
                })
            )?;
        }
    }
    let failed = outcomes
        .iter()
        .filter(|o| o.state != PullState::Present)
        .count();
    if failed > 0 {
        return Err(Error::Failed {
            failed,
            total: outcomes.len(),
        });
    }
    Ok(outcomes)
}
