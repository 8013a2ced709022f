//! The decision file of `--decisions`: one JSON line per pull order,
//! `{ts, policy, node, image, priority, reason, probability?}`.
//!
//! It is how a new user sees what `--dry-run` would do, and what replay
//! compares against; so it is written as orders are made, not summarised.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;

use serde::Serialize;

use crate::policy::PullOrder;

/// What can go wrong writing decisions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or written.
    #[error("decision file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A decision could not be encoded (a non-finite number).
    #[error("decision file {path}: encoding: {source}")]
    Encode {
        /// The file.
        path: String,
        /// The encoder's error.
        source: serde_json::Error,
    },
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One line of the file.
#[derive(Debug, Serialize)]
struct Line<'a> {
    ts: f64,
    policy: &'a str,
    node: String,
    image: &'a str,
    priority: u32,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    probability: Option<f64>,
}

/// Writes one order made at `ts` by `policy` as a line of the decision
/// format. The node is the target as the planner named it: a node, or
/// `nodeclaim/NAME` before the claim's node is known. `replay --decisions`
/// and `run --decisions` both write through this.
pub fn write_line(
    out: &mut dyn Write,
    ts: f64,
    policy: &str,
    order: &PullOrder,
) -> serde_json::Result<()> {
    let line = Line {
        ts,
        policy,
        node: order.target.to_string(),
        image: &order.image,
        priority: order.priority,
        reason: order.reason.as_str(),
        probability: order.probability,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n").map_err(serde_json::Error::io)
}

/// An append-only decision file.
pub struct DecisionLog {
    out: BufWriter<File>,
    path: String,
}

impl DecisionLog {
    /// Opens `path` for appending, creating it if needed.
    pub fn open(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| Error::Io {
                path: name.clone(),
                source,
            })?;
        Ok(Self {
            out: BufWriter::new(file),
            path: name,
        })
    }

    /// Records one order made at `ts` by `policy` (see [`write_line`]).
    pub fn record(&mut self, ts: f64, policy: &str, order: &PullOrder) -> Result<()> {
        write_line(&mut self.out, ts, policy, order).map_err(|source| {
            if source.is_io() {
                self.io(source.into())
            } else {
                Error::Encode {
                    path: self.path.clone(),
                    source,
                }
            }
        })
    }

    /// Pushes buffered lines to the file.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|source| self.io(source))
    }

    fn io(&self, source: std::io::Error) -> Error {
        Error::Io {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Reason, Target};

    #[test]
    fn writes_one_json_line_per_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let mut log = DecisionLog::open(&path).unwrap();
        let order = |target, probability| PullOrder {
            target,
            image: "r/a:1".into(),
            priority: 7,
            reason: Reason::HpaTrend,
            probability,
        };
        log.record(
            10.5,
            "predictive",
            &order(Target::Node("n1".into()), Some(0.8)),
        )
        .unwrap();
        log.record(
            11.0,
            "predictive",
            &order(Target::NodeClaim("c1".into()), None),
        )
        .unwrap();
        log.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            serde_json::json!({"ts":10.5,"policy":"predictive","node":"n1","image":"r/a:1",
                               "priority":7,"reason":"hpa-trend","probability":0.8})
        );
        assert_eq!(lines[1]["node"], "nodeclaim/c1");
        assert!(lines[1].get("probability").is_none());
    }
}
