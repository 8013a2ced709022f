//! Event schema v1: the one normalised record that pullahead reads, writes,
//! replays and sends over the bus.
//!
//! A file is JSON Lines. The first line may be a header
//! (`{"type":"trace","version":1,"ts":…,"source":"…"}`); a file without one is
//! read as version 1. Lines are in `ts` order. See `docs/event-schema.md`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// The longest line the reader accepts, in bytes. A longer line is an error
/// rather than an unbounded allocation.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Errors from reading or writing event files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line is not a valid event.
    #[error("{path}:{line}: malformed event: {msg}")]
    Malformed {
        /// The file.
        path: String,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        msg: String,
    },
    /// A line's `ts` is earlier than the line before it.
    #[error("{path}:{line}: time goes backwards: ts {ts} after {prev}")]
    TimeBackwards {
        /// The file.
        path: String,
        /// 1-based line number.
        line: u64,
        /// This line's time.
        ts: f64,
        /// The previous line's time.
        prev: f64,
    },
    /// The header names a schema version this build does not read.
    #[error(
        "{path}:{line}: unsupported schema version {version}; this pullahead reads version {SCHEMA_VERSION}"
    )]
    UnsupportedVersion {
        /// The file.
        path: String,
        /// 1-based line number.
        line: u64,
        /// The version found.
        version: u64,
    },
    /// A line is longer than [`MAX_LINE_BYTES`].
    #[error("{path}:{line}: line longer than the limit of {limit} bytes")]
    LineTooLong {
        /// The file.
        path: String,
        /// 1-based line number.
        line: u64,
        /// The limit in bytes.
        limit: usize,
    },
    /// The file holds no events at all.
    #[error("{path}: the file is empty: it holds no events")]
    Empty {
        /// The file.
        path: String,
    },
    /// An event could not be serialised.
    #[error("cannot serialise event: {0}")]
    Serialize(#[source] serde_json::Error),
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One event: a time and what happened.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// Seconds: Unix epoch for recordings, any origin for synthetic traces.
    pub ts: f64,
    /// What happened.
    #[serde(flatten)]
    pub body: Body,
}

impl Event {
    /// An event at `ts`.
    pub fn new(ts: f64, body: impl Into<Body>) -> Self {
        Self {
            ts,
            body: body.into(),
        }
    }
}

/// The payload of an event, tagged by `type`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    /// An image's size and layers.
    Image(Image),
    /// A workload's pod template.
    Workload(Workload),
    /// A HorizontalPodAutoscaler's status.
    Hpa(Hpa),
    /// An autoscaler decided to add nodes.
    ScaleUp(ScaleUp),
    /// A Karpenter NodeClaim changed phase.
    NodeClaim(NodeClaim),
    /// A Node changed phase.
    Node(Node),
    /// A Pod changed phase.
    Pod(Pod),
    /// Kubelet pulled (or found) an image on a node.
    Pull(Pull),
}

impl Body {
    /// The `type` tag of this body.
    pub fn type_name(&self) -> &'static str {
        match self {
            Body::Image(_) => "image",
            Body::Workload(_) => "workload",
            Body::Hpa(_) => "hpa",
            Body::ScaleUp(_) => "scale_up",
            Body::NodeClaim(_) => "node_claim",
            Body::Node(_) => "node",
            Body::Pod(_) => "pod",
            Body::Pull(_) => "pull",
        }
    }
}

macro_rules! body_from {
    ($($t:ident),*) => {$(
        impl From<$t> for Body {
            fn from(v: $t) -> Self {
                Body::$t(v)
            }
        }
    )*};
}
body_from!(Image, Workload, Hpa, ScaleUp, NodeClaim, Node, Pod, Pull);

/// One layer of an image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    /// Content digest, `sha256:…`.
    pub digest: String,
    /// Compressed size in bytes.
    pub bytes: u64,
}

/// `image`: an image's compressed size and, when known, its layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// Full reference, `registry/repo:tag` or `…@sha256:…`.
    pub image: String,
    /// Compressed size in bytes.
    pub bytes: u64,
    /// Layers, so that shared layers are pulled once per node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<Layer>>,
}

/// A Kubernetes toleration, as on a pod spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toleration {
    /// Taint key; empty with `Exists` tolerates everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `Equal` (the default) or `Exists`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// Value to match with `Equal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`; empty matches all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
}

/// A Kubernetes node taint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taint {
    /// Taint key.
    pub key: String,
    /// Taint value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

impl Toleration {
    /// Whether this toleration tolerates `taint`, by the Kubernetes rules.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if let Some(effect) = self.effect.as_deref()
            && !effect.is_empty()
            && effect != taint.effect
        {
            return false;
        }
        let exists = self.operator.as_deref() == Some("Exists");
        match self.key.as_deref() {
            None | Some("") => exists,
            Some(key) if key != taint.key => false,
            Some(_) if exists => true,
            Some(_) => self.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        }
    }
}

/// Whether `tolerations` tolerate every scheduling taint in `taints`.
/// `PreferNoSchedule` never blocks scheduling.
pub fn tolerates_all(tolerations: &[Toleration], taints: &[Taint]) -> bool {
    taints
        .iter()
        .filter(|t| t.effect != "PreferNoSchedule")
        .all(|t| tolerations.iter().any(|tol| tol.tolerates(t)))
}

/// `workload`: the pod template of a Deployment, StatefulSet, DaemonSet or Job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// `namespace/name`.
    pub workload: String,
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `Job`, `ReplicaSet`.
    pub kind: String,
    /// Images of the pod template, init containers included.
    pub images: Vec<String>,
    /// The pod template's node selector.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// The pod template's tolerations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Desired replicas, where the kind has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

/// The metric an HPA scales on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HpaMetric {
    /// Metric name, e.g. `cpu`.
    pub name: String,
    /// Current value.
    pub current: f64,
    /// Target value.
    pub target: f64,
}

/// `hpa`: a HorizontalPodAutoscaler's status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hpa {
    /// `namespace/name` of the HPA.
    pub hpa: String,
    /// `namespace/name` of the workload it scales.
    pub workload: String,
    /// Replicas now.
    pub current_replicas: u32,
    /// Replicas the HPA wants.
    pub desired_replicas: u32,
    /// Lower bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<u32>,
    /// Upper bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<u32>,
    /// The metric it scales on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<HpaMetric>,
}

/// Which autoscaler emitted a `scale_up`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Autoscaler {
    /// kubernetes/autoscaler cluster-autoscaler.
    ClusterAutoscaler,
    /// Karpenter.
    Karpenter,
}

/// `scale_up`: an autoscaler grew a group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScaleUp {
    /// The autoscaler.
    pub source: Autoscaler,
    /// Node group or pool.
    pub group: String,
    /// Size before.
    pub from: u32,
    /// Size after.
    pub to: u32,
    /// `namespace/name` of the pods that triggered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<Vec<String>>,
}

/// Lifecycle of a Karpenter NodeClaim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimPhase {
    /// The claim exists; no instance yet.
    Created,
    /// The cloud instance was launched.
    Launched,
    /// The node registered with the API server.
    Registered,
    /// The node is initialised and schedulable.
    Initialized,
    /// The claim is gone.
    Deleted,
}

/// `node_claim`: a Karpenter NodeClaim changed phase.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeClaim {
    /// The claim's name.
    pub node_claim: String,
    /// The NodePool.
    pub pool: String,
    /// The new phase.
    pub phase: ClaimPhase,
    /// Labels the node will carry.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Taints the node will carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taints: Option<Vec<Taint>>,
    /// The node's name, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Lifecycle of a Node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodePhase {
    /// The Node object appeared.
    Registered,
    /// The Node became Ready.
    Ready,
    /// The Node is gone.
    Deleted,
}

/// `node`: a Node changed phase.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The node's name.
    pub node: String,
    /// The new phase.
    pub phase: NodePhase,
    /// Node pool or group, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The node's labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The node's taints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taints: Option<Vec<Taint>>,
    /// Images already on the node (from `status.images`; at most 50 there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<String>>,
}

/// The pool name used when a node names none.
pub const DEFAULT_POOL: &str = "default";

/// Labels that name a node's pool, most specific first: Karpenter,
/// cluster-autoscaler on EKS, GKE and AKS.
pub const POOL_LABELS: &[&str] = &[
    "karpenter.sh/nodepool",
    "eks.amazonaws.com/nodegroup",
    "cloud.google.com/gke-nodepool",
    "kubernetes.azure.com/agentpool",
];

impl Node {
    /// The node's pool: `pool`, else a well-known pool label, else
    /// [`DEFAULT_POOL`].
    pub fn pool_name(&self) -> &str {
        self.pool
            .as_deref()
            .or_else(|| {
                POOL_LABELS
                    .iter()
                    .find_map(|l| self.labels.get(*l).map(String::as_str))
            })
            .unwrap_or(DEFAULT_POOL)
    }
}

/// Lifecycle of a Pod, as far as image pulls care.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodPhase {
    /// Created, not yet placed.
    Pending,
    /// Nominated to a node or NodeClaim that is coming.
    Nominated,
    /// Bound to a node.
    Scheduled,
    /// All containers started (an outcome in replay).
    Started,
    /// Gone.
    Deleted,
}

/// `pod`: a Pod changed phase.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pod {
    /// `namespace/name`.
    pub pod: String,
    /// `namespace/name` of the owning workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// Images of all its containers.
    #[serde(default)]
    pub images: Vec<String>,
    /// The new phase.
    pub phase: PodPhase,
    /// The node it is bound or nominated to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The NodeClaim it is nominated to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_claim: Option<String>,
}

/// `pull`: kubelet pulled an image, or found it present.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pull {
    /// The node.
    pub node: String,
    /// The image.
    pub image: String,
    /// Bytes pulled, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Seconds the pull took, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// `true` when the image was already present.
    pub cached: bool,
}

/// The header line that starts a file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Always `trace`.
    #[serde(rename = "type")]
    pub kind: Cow<'static, str>,
    /// Schema version.
    pub version: u64,
    /// Time of the header.
    pub ts: f64,
    /// What wrote the file.
    pub source: String,
}

impl Header {
    /// A version-1 header.
    pub fn new(ts: f64, source: impl Into<String>) -> Self {
        Self {
            kind: Cow::Borrowed("trace"),
            version: SCHEMA_VERSION as u64,
            ts,
            source: source.into(),
        }
    }
}

/// The fields every line has. Read first, so that the payload is parsed
/// straight into its own type without buffering.
#[derive(Deserialize)]
struct Probe<'a> {
    ts: f64,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    version: Option<u64>,
}

/// What a reader has seen so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadStats {
    /// Lines read, blank ones and the header included.
    pub lines: u64,
    /// Events returned.
    pub events: u64,
    /// Lines skipped because their `type` is unknown, by type.
    pub unknown_types: BTreeMap<String, u64>,
    /// The header, when the file had one.
    pub header: Option<Header>,
}

impl ReadStats {
    /// Lines skipped for an unknown `type`.
    pub fn unknown_total(&self) -> u64 {
        self.unknown_types.values().sum()
    }
}

/// A streaming reader of event files: one line in memory at a time.
pub struct EventReader<R> {
    input: R,
    path: String,
    buf: Vec<u8>,
    prev_ts: f64,
    stats: ReadStats,
    done: bool,
}

impl EventReader<BufReader<Box<dyn Read + Send>>> {
    /// Opens `path`; `-` reads standard input.
    pub fn open(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let input: Box<dyn Read + Send> = if name == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(File::open(path).map_err(|source| Error::Io {
                path: name.clone(),
                source,
            })?)
        };
        Ok(Self::new(BufReader::with_capacity(1 << 16, input), name))
    }
}

impl<R: BufRead> EventReader<R> {
    /// Reads events from `input`; `path` names it in errors.
    pub fn new(input: R, path: impl Into<String>) -> Self {
        Self {
            input,
            path: path.into(),
            buf: Vec::with_capacity(1024),
            prev_ts: f64::NEG_INFINITY,
            stats: ReadStats::default(),
            done: false,
        }
    }

    /// What has been read so far.
    pub fn stats(&self) -> &ReadStats {
        &self.stats
    }

    /// The name used in errors.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn malformed(&self, msg: impl ToString) -> Error {
        Error::Malformed {
            path: self.path.clone(),
            line: self.stats.lines,
            msg: msg.to_string(),
        }
    }

    /// Reads the next line into `buf`; `false` at end of input.
    fn next_line(&mut self) -> Result<bool> {
        self.buf.clear();
        let limit = MAX_LINE_BYTES as u64 + 1;
        let n = (&mut self.input)
            .take(limit)
            .read_until(b'\n', &mut self.buf)
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Ok(false);
        }
        self.stats.lines += 1;
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        } else if n as u64 == limit {
            return Err(Error::LineTooLong {
                path: self.path.clone(),
                line: self.stats.lines,
                limit: MAX_LINE_BYTES,
            });
        }
        Ok(true)
    }

    /// Parses the line in `buf`; `None` for lines that are not events.
    fn parse_line(&mut self) -> Result<Option<Event>> {
        let line = self.buf.trim_ascii();
        if line.is_empty() {
            return Ok(None);
        }
        let probe: Probe = serde_json::from_slice(line).map_err(|e| self.malformed(e))?;
        if !probe.ts.is_finite() {
            return Err(self.malformed("ts is not a finite number"));
        }
        if probe.ts < self.prev_ts {
            return Err(Error::TimeBackwards {
                path: self.path.clone(),
                line: self.stats.lines,
                ts: probe.ts,
                prev: self.prev_ts,
            });
        }
        self.prev_ts = probe.ts;
        fn body<'a, T: Deserialize<'a>>(line: &'a [u8]) -> serde_json::Result<T> {
            serde_json::from_slice(line)
        }
        let parsed = match probe.kind.as_ref() {
            "trace" => {
                if self.stats.events > 0 || self.stats.header.is_some() {
                    return Err(self.malformed("a trace header may only be the first event"));
                }
                let version = probe
                    .version
                    .ok_or_else(|| self.malformed("the trace header has no version"))?;
                if version != SCHEMA_VERSION as u64 {
                    return Err(Error::UnsupportedVersion {
                        path: self.path.clone(),
                        line: self.stats.lines,
                        version,
                    });
                }
                self.stats.header = Some(body(line).map_err(|e| self.malformed(e))?);
                return Ok(None);
            }
            "image" => body(line).map(Body::Image),
            "workload" => body(line).map(Body::Workload),
            "hpa" => body(line).map(Body::Hpa),
            "scale_up" => body(line).map(Body::ScaleUp),
            "node_claim" => body(line).map(Body::NodeClaim),
            "node" => body(line).map(Body::Node),
            "pod" => body(line).map(Body::Pod),
            "pull" => body(line).map(Body::Pull),
            other => {
                let count = self
                    .stats
                    .unknown_types
                    .entry(other.to_string())
                    .or_default();
                if *count == 0 {
                    tracing::warn!(path = %self.path, line = self.stats.lines, r#type = other,
                        "skipping events of unknown type");
                }
                *count += 1;
                return Ok(None);
            }
        };
        let body = parsed.map_err(|e| self.malformed(e))?;
        self.stats.events += 1;
        Ok(Some(Event { ts: probe.ts, body }))
    }
}

impl<R: BufRead> Iterator for EventReader<R> {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            match self.next_line() {
                Ok(true) => {}
                Ok(false) => {
                    self.done = true;
                    let nothing = self.stats.events == 0
                        && self.stats.header.is_none()
                        && self.stats.unknown_total() == 0;
                    return nothing.then(|| {
                        Err(Error::Empty {
                            path: self.path.clone(),
                        })
                    });
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
            match self.parse_line() {
                Ok(Some(event)) => return Some(Ok(event)),
                Ok(None) => continue,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Writes event files: a header first, then one event a line, in time order.
pub struct EventWriter<W: Write> {
    out: W,
    path: String,
    prev_ts: f64,
    line: u64,
}

impl EventWriter<BufWriter<Box<dyn Write + Send>>> {
    /// Creates `path` (`-` is standard output) and writes the header.
    pub fn create(path: &Path, header: &Header) -> Result<Self> {
        let name = path.display().to_string();
        let out: Box<dyn Write + Send> = if name == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(File::create(path).map_err(|source| Error::Io {
                path: name.clone(),
                source,
            })?)
        };
        Self::new(BufWriter::new(out), name, header)
    }
}

impl<W: Write> EventWriter<W> {
    /// Writes `header` to `out`; `path` names it in errors.
    pub fn new(out: W, path: impl Into<String>, header: &Header) -> Result<Self> {
        let mut w = Self {
            out,
            path: path.into(),
            prev_ts: f64::NEG_INFINITY,
            line: 0,
        };
        w.write_json(header, header.ts)?;
        Ok(w)
    }

    fn write_json<T: Serialize>(&mut self, value: &T, ts: f64) -> Result<()> {
        self.line += 1;
        if !ts.is_finite() {
            return Err(Error::Malformed {
                path: self.path.clone(),
                line: self.line,
                msg: "ts is not a finite number".into(),
            });
        }
        if ts < self.prev_ts {
            return Err(Error::TimeBackwards {
                path: self.path.clone(),
                line: self.line,
                ts,
                prev: self.prev_ts,
            });
        }
        self.prev_ts = ts;
        serde_json::to_writer(&mut self.out, value).map_err(Error::Serialize)?;
        self.out.write_all(b"\n").map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Appends one event; refuses one earlier than the last.
    pub fn write(&mut self, event: &Event) -> Result<()> {
        self.write_json(event, event.ts)
    }

    /// Flushes buffered lines to the underlying writer.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Flushes and returns the underlying writer.
    pub fn into_inner(mut self) -> Result<W> {
        self.flush()?;
        Ok(self.out)
    }
}

/// Reads every event of `path` into memory. For tests and small files only;
/// replay itself streams.
pub fn read_all(path: &Path) -> Result<Vec<Event>> {
    EventReader::open(path)?.collect()
}
