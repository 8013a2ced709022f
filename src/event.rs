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
    #[error("{path}:{line}{}: malformed event: {msg}", column_suffix(*.column))]
    Malformed {
        /// The file.
        path: String,
        /// 1-based line number.
        line: u64,
        /// 1-based byte column in the line, where the parser can tell.
        column: Option<u64>,
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

/// `:COLUMN`, or nothing without a column.
fn column_suffix(column: Option<u64>) -> String {
    column.map_or_else(String::new, |c| format!(":{c}"))
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

    /// An event that holds no heap memory: a start for
    /// [`EventReader::read_into`] to overwrite.
    pub fn blank() -> Self {
        Self::new(
            0.0,
            Pull {
                node: String::new(),
                image: String::new(),
                bytes: None,
                seconds: None,
                cached: false,
            },
        )
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

/// Splits a line that starts the way pullahead writes it,
/// `{"ts":NUM,"type":"…`, into the `ts` text and what follows the type's
/// opening quote; `None` for any other start. Shared by the reader's fast
/// path and by the oracle's scan filter, which must agree on which lines are
/// in that form.
pub(crate) fn written_form(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = line.strip_prefix(b"{\"ts\":")?;
    // A `ts` is a few bytes: a byte loop beats `memchr`'s setup.
    let end = rest.iter().position(|&b| b == b',')?;
    let after = rest[end..].strip_prefix(b",\"type\":\"")?;
    Some((&rest[..end], after))
}

/// The usual type at the start of `rest`, as [`written_form`] returns it,
/// recognised by its bytes, closing quote included. Checked before any
/// search, as `str::from_utf8` on a few bytes a line costs more.
pub(crate) fn usual_type(rest: &[u8]) -> Option<Kind> {
    if rest.starts_with(b"pod\"") {
        Some(Kind::Pod)
    } else if rest.starts_with(b"node\"") {
        Some(Kind::Node)
    } else if rest.starts_with(b"node_claim\"") {
        Some(Kind::NodeClaim)
    } else {
        None
    }
}

/// The name of the type at the start of `rest`, as [`written_form`]
/// returns it: the bytes before its closing quote. `None` when an escape
/// or the line's end comes first; the general parser reads such a name.
pub(crate) fn plain_type(rest: &[u8]) -> Option<&[u8]> {
    // A type name is a few bytes: a byte loop beats `memchr2`'s setup.
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    (rest[end] == b'"').then(|| &rest[..end])
}

/// A usual type and the bytes after its closing quote, for [`fast_body`].
type FastBody<'a> = Option<(Kind, &'a [u8])>;

/// Reads `ts` and `type` straight off a line in [`written_form`], so that
/// the common case is parsed once. Anything else returns `None` and takes
/// the general path. Also returns, for a usual type whose `ts` text is a
/// plain JSON number, that type and what follows its closing quote: the
/// body fast path needs both.
fn fast_probe(line: &[u8]) -> Option<(Probe<'_>, FastBody<'_>)> {
    let (ts_text, rest) = written_form(line)?;
    let (ts, plain) = match plain_decimal(ts_text) {
        Some(ts) => (ts, true),
        None => {
            let text = std::str::from_utf8(ts_text).ok()?;
            (text.parse().ok()?, is_json_number(text.as_bytes()))
        }
    };
    let (kind, fast) = match usual_type(rest) {
        Some(usual) => {
            let body = &rest[usual.name().len() + 1..];
            (usual.name(), plain.then_some((usual, body)))
        }
        None => match plain_type(rest)? {
            b"trace" => return None,
            other => (std::str::from_utf8(other).ok()?, None),
        },
    };
    let probe = Probe {
        ts,
        kind: Cow::Borrowed(kind),
        version: None,
    };
    Some((probe, fast))
}

/// Powers of ten that an `f64` holds exactly.
const EXACT_POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// The value of a JSON number written `-?(0|[1-9][0-9]*)(.[0-9]+)?` with
/// at most 15 digits, as timestamps are; `None` for any other text, which
/// then takes `str::parse`. Such a number's digits and its power of ten are
/// both exact in an `f64`, so one division rounds correctly and the result
/// is the one `str::parse` gives (the fast path of Clinger's algorithm,
/// which `str::parse` takes too). Parsing the text generally was a tenth of
/// reading a line.
fn plain_decimal(text: &[u8]) -> Option<f64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    // At most 15 digits and a dot: 16 digits still fit a `u64`, so the
    // loop need not count, and the count is checked once after it.
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    let mut mantissa: u64 = 0;
    let mut dot = None;
    for (i, &b) in digits.iter().enumerate() {
        let digit = b.wrapping_sub(b'0');
        if digit <= 9 {
            mantissa = mantissa * 10 + u64::from(digit);
        } else if b == b'.' && dot.is_none() && i > 0 {
            dot = Some(i);
        } else {
            return None;
        }
    }
    let fraction = dot.map_or(0, |d| digits.len() - d - 1);
    let count = digits.len() - usize::from(dot.is_some());
    let leading_zero = digits[0] == b'0' && digits.get(1).is_some_and(u8::is_ascii_digit);
    if count > 15 || (dot.is_some() && fraction == 0) || leading_zero {
        return None;
    }
    let value = mantissa as f64 / EXACT_POW10[fraction];
    Some(if negative { -value } else { value })
}

/// Whether `s` is a number by the JSON grammar. `str::parse` takes more
/// (`+1`, `.5`, `inf`); serde_json refuses those lines, and the body fast
/// path must refuse them too so that they fail the same way.
fn is_json_number(s: &[u8]) -> bool {
    let digits = |s: &[u8], i: &mut usize| {
        let start = *i;
        while s.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > start
    };
    let mut i = usize::from(s.first() == Some(&b'-'));
    match s.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(s, &mut i);
        }
        _ => return false,
    }
    if s.get(i) == Some(&b'.') {
        i += 1;
        if !digits(s, &mut i) {
            return false;
        }
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(s, &mut i) {
            return false;
        }
    }
    i == s.len()
}

/// Parses the body of a `pod`, `node` or `node_claim` line in the exact
/// form pullahead writes (fields in declaration order, no escapes, no
/// `taints`) into `body`, reusing its strings' buffers: replay reads a
/// million of these a second, and serde_json with fresh strings for each
/// was a third of its time. `rest` is what follows the type. `None` for
/// anything else; the caller then parses the line with serde_json, which
/// accepts the same lines with the same result and words the errors.
fn fast_body(kind: Kind, rest: &[u8], body: &mut Body, spares: &mut Spares) -> Option<()> {
    let mut c = Cursor {
        // A SIMD check: `str::from_utf8` over the whole body showed in
        // replay profiles. Control characters are left to `string`, which
        // stops at them anyway.
        s: simdutf8::basic::from_utf8(rest).ok()?,
        i: 0,
    };
    let body = spares.ready(body, kind);
    match kind {
        Kind::Pod => c.pod(body)?,
        Kind::Node => c.node(body)?,
        Kind::NodeClaim => c.node_claim(body)?,
    }
    (c.i == c.s.len()).then_some(())
}

/// The body kinds that [`fast_body`] reads: the usual types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Pod,
    Node,
    NodeClaim,
}

impl Kind {
    /// The `type` that names it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Pod => "pod",
            Kind::Node => "node",
            Kind::NodeClaim => "node_claim",
        }
    }
}

/// Bodies of the fast-path kinds that the caller's event held before a
/// line of another kind took its place, kept with their strings' buffers:
/// replay interleaves pods, nodes and claims, and dropping one body and
/// building another at each change of kind was a tenth of reading.
#[derive(Default)]
struct Spares {
    pod: Option<Body>,
    node: Option<Body>,
    node_claim: Option<Body>,
}

impl Spares {
    /// Makes `body` one of `kind`, the spare of that kind when there is
    /// one, and keeps what it held when that is of a fast-path kind. Every
    /// field is overwritten by the parse that follows.
    #[inline(always)]
    fn ready<'b>(&mut self, body: &'b mut Body, kind: Kind) -> &'b mut Body {
        let same = matches!(
            (&*body, kind),
            (Body::Pod(_), Kind::Pod)
                | (Body::Node(_), Kind::Node)
                | (Body::NodeClaim(_), Kind::NodeClaim)
        );
        if !same {
            self.swap(body, kind);
        }
        body
    }

    /// The change of kind behind [`Spares::ready`], kept out of line: it is
    /// the rarer case.
    #[cold]
    #[inline(never)]
    fn swap(&mut self, body: &mut Body, kind: Kind) {
        let fresh = match kind {
            Kind::Pod => self.pod.take().unwrap_or_else(|| {
                Body::Pod(Pod {
                    pod: String::new(),
                    workload: None,
                    images: Vec::new(),
                    phase: PodPhase::Pending,
                    node: None,
                    node_claim: None,
                })
            }),
            Kind::Node => self.node.take().unwrap_or_else(|| {
                Body::Node(Node {
                    node: String::new(),
                    phase: NodePhase::Registered,
                    pool: None,
                    labels: BTreeMap::new(),
                    taints: None,
                    images: None,
                })
            }),
            Kind::NodeClaim => self.node_claim.take().unwrap_or_else(|| {
                Body::NodeClaim(NodeClaim {
                    node_claim: String::new(),
                    pool: String::new(),
                    phase: ClaimPhase::Created,
                    labels: BTreeMap::new(),
                    taints: None,
                    node: None,
                })
            }),
        };
        let old = std::mem::replace(body, fresh);
        match old {
            Body::Pod(_) => self.pod = Some(old),
            Body::Node(_) => self.node = Some(old),
            Body::NodeClaim(_) => self.node_claim = Some(old),
            _ => {}
        }
    }
}

/// The index of the first `"`, `\` or control character in `b`, the bytes
/// that end a string of the fast path. Eight bytes at a time: strings are
/// short, and a `memchr2` call a string was mostly its setup. Flipping bit
/// 1 maps `"` (0x22) below 0x21 and keeps every other byte on its side of
/// it, so one "below 0x21" test finds quotes and control characters, and a
/// zero test after xor finds backslashes. Each test flags the lowest
/// matching byte exactly (a borrow only runs upwards, past it), so the
/// lowest flag of the two is the first stop.
fn string_end(b: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const TOPS: u64 = u64::from_le_bytes([0x80; 8]);
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x;
    // `chunks_exact` rather than `get(i..i + 8)`: no bounds test a word.
    let mut words = b.chunks_exact(8);
    let mut i = 0;
    for word in &mut words {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_le_bytes(bytes);
        let stops =
            (below(x ^ (ONES * 0x02), 0x21) | below(x ^ (ONES * u64::from(b'\\')), 1)) & TOPS;
        if stops != 0 {
            return Some(i + stops.trailing_zeros() as usize / 8);
        }
        i += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|p| i + p)
}

/// A position in the canonical text of one event body.
struct Cursor<'a> {
    s: &'a str,
    i: usize,
}

// Inlined: a call for each string of a line cost more than its copy.

/// Overwrites `dst` with `src`, keeping its buffer.
#[inline(always)]
fn set_str(dst: &mut String, src: &str) {
    dst.clear();
    dst.push_str(src);
}

/// Overwrites `dst` with `src`, keeping the buffer of a string already there.
#[inline(always)]
fn set_opt(dst: &mut Option<String>, src: Option<&str>) {
    match (dst.as_mut(), src) {
        (Some(d), Some(s)) => set_str(d, s),
        (None, Some(s)) => *dst = Some(s.to_owned()),
        (_, None) => *dst = None,
    }
}

// Inlined so that each literal and key is compared as a constant rather
// than with a `memcmp` call.
impl<'a> Cursor<'a> {
    #[inline(always)]
    fn eat(&mut self, lit: &str) -> Option<()> {
        if !self.s.as_bytes()[self.i..].starts_with(lit.as_bytes()) {
            return None;
        }
        self.i += lit.len();
        Some(())
    }

    /// `,"name":`, consumed only when it is there.
    #[inline(always)]
    fn key(&mut self, name: &str) -> bool {
        let b = &self.s.as_bytes()[self.i..];
        let here = b.len() > name.len() + 4
            && b.starts_with(b",\"")
            && b[2..].starts_with(name.as_bytes())
            && b[2 + name.len()..].starts_with(b"\":");
        if here {
            self.i += name.len() + 4;
        }
        here
    }

    #[inline(always)]
    fn need(&mut self, name: &str) -> Option<()> {
        self.key(name).then_some(())
    }

    /// A string without escapes or control characters.
    #[inline(always)]
    fn string(&mut self) -> Option<&'a str> {
        self.eat("\"")?;
        let b = &self.s.as_bytes()[self.i..];
        let end = string_end(b)?;
        if b[end] != b'"' {
            return None;
        }
        let s = self.s.get(self.i..self.i + end)?;
        self.i += end + 1;
        Some(s)
    }

    #[inline(always)]
    fn opt_string(&mut self, name: &str, dst: &mut Option<String>) -> Option<()> {
        if self.key(name) {
            let s = self.string()?;
            set_opt(dst, Some(s));
        } else {
            *dst = None;
        }
        Some(())
    }

    /// `["a","b"]` into `dst`, reusing the strings already there.
    fn list(&mut self, dst: &mut Vec<String>) -> Option<()> {
        self.eat("[")?;
        let mut n = 0;
        if self.eat("]").is_none() {
            loop {
                let s = self.string()?;
                match dst.get_mut(n) {
                    Some(d) => set_str(d, s),
                    None => dst.push(s.to_owned()),
                }
                n += 1;
                if self.eat(",").is_none() {
                    self.eat("]")?;
                    break;
                }
            }
        }
        dst.truncate(n);
        Some(())
    }

    /// `{"k":"v",…}`; a repeated key keeps its last value, as serde does.
    fn map(&mut self, dst: &mut BTreeMap<String, String>) -> Option<()> {
        self.eat("{")?;
        let start = self.i;
        if self.same_keys(dst) == Some(true) {
            return Some(());
        }
        self.i = start;
        dst.clear();
        if self.eat("}").is_some() {
            return Some(());
        }
        loop {
            let k = self.string()?;
            self.eat(":")?;
            let v = self.string()?;
            dst.insert(k.to_owned(), v.to_owned());
            if self.eat(",").is_none() {
                return self.eat("}");
            }
        }
    }

    /// The pairs of a map after its `{`, when their keys are `dst`'s, in
    /// order: then only the values are overwritten, in their buffers, and
    /// `dst` is what inserting the pairs would make, since its keys are
    /// sorted and distinct. Nodes and claims mostly repeat their labels'
    /// keys, and building the map afresh was two allocations a label.
    /// `Some(false)` or `None` leave a half-written `dst` for `map` to
    /// clear, and the position for it to rewind.
    fn same_keys(&mut self, dst: &mut BTreeMap<String, String>) -> Option<bool> {
        let mut entries = dst.iter_mut();
        if self.eat("}").is_some() {
            return Some(entries.next().is_none());
        }
        loop {
            let k = self.string()?;
            let Some((dk, dv)) = entries.next() else {
                return Some(false);
            };
            if dk != k {
                return Some(false);
            }
            self.eat(":")?;
            set_str(dv, self.string()?);
            if self.eat(",").is_none() {
                self.eat("}")?;
                return Some(entries.next().is_none());
            }
        }
    }

    fn pod(&mut self, body: &mut Body) -> Option<()> {
        let Body::Pod(p) = body else { return None };
        self.need("pod")?;
        set_str(&mut p.pod, self.string()?);
        self.opt_string("workload", &mut p.workload)?;
        self.need("images")?;
        self.list(&mut p.images)?;
        self.need("phase")?;
        p.phase = match self.string()? {
            "pending" => PodPhase::Pending,
            "nominated" => PodPhase::Nominated,
            "scheduled" => PodPhase::Scheduled,
            "started" => PodPhase::Started,
            "deleted" => PodPhase::Deleted,
            _ => return None,
        };
        self.opt_string("node", &mut p.node)?;
        self.opt_string("node_claim", &mut p.node_claim)?;
        self.eat("}")
    }

    fn node(&mut self, body: &mut Body) -> Option<()> {
        let Body::Node(n) = body else { return None };
        self.need("node")?;
        set_str(&mut n.node, self.string()?);
        self.need("phase")?;
        n.phase = match self.string()? {
            "registered" => NodePhase::Registered,
            "ready" => NodePhase::Ready,
            "deleted" => NodePhase::Deleted,
            _ => return None,
        };
        self.opt_string("pool", &mut n.pool)?;
        self.need("labels")?;
        self.map(&mut n.labels)?;
        n.taints = None;
        if self.key("images") {
            self.list(n.images.get_or_insert_with(Vec::new))?;
        } else {
            n.images = None;
        }
        self.eat("}")
    }

    fn node_claim(&mut self, body: &mut Body) -> Option<()> {
        let Body::NodeClaim(c) = body else {
            return None;
        };
        self.need("node_claim")?;
        set_str(&mut c.node_claim, self.string()?);
        self.need("pool")?;
        set_str(&mut c.pool, self.string()?);
        self.need("phase")?;
        c.phase = match self.string()? {
            "created" => ClaimPhase::Created,
            "launched" => ClaimPhase::Launched,
            "registered" => ClaimPhase::Registered,
            "initialized" => ClaimPhase::Initialized,
            "deleted" => ClaimPhase::Deleted,
            _ => return None,
        };
        self.need("labels")?;
        self.map(&mut c.labels)?;
        c.taints = None;
        self.opt_string("node", &mut c.node)?;
        self.eat("}")
    }
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
    /// A line that did not fit whole in `input`'s buffer, copied together.
    buf: Vec<u8>,
    lines: LineParser,
    done: bool,
}

/// What parsing a line needs, apart from the input, so that a line can be
/// parsed while it is still borrowed from the input's buffer.
struct LineParser {
    filter: Option<fn(&[u8]) -> bool>,
    path: String,
    /// Bytes of white space the current line starts with, which the parser
    /// does not see: columns count from the line's real start.
    lead: u64,
    prev_ts: f64,
    stats: ReadStats,
    spares: Spares,
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
            buf: Vec::with_capacity(1024),
            lines: LineParser {
                filter: None,
                path: path.into(),
                lead: 0,
                prev_ts: f64::NEG_INFINITY,
                stats: ReadStats::default(),
                spares: Spares::default(),
            },
            done: false,
        }
    }

    /// Skips, unparsed and unchecked, every line for which `keep` is false.
    /// For readers that need only some types and leave validation to a
    /// later full pass.
    pub fn set_filter(&mut self, keep: fn(&[u8]) -> bool) {
        self.lines.filter = Some(keep);
    }

    /// What has been read so far.
    pub fn stats(&self) -> &ReadStats {
        &self.lines.stats
    }

    /// The name used in errors.
    pub fn path(&self) -> &str {
        &self.lines.path
    }

    /// Parses the next line where it lies in the input's buffer, when the
    /// whole of it is there: copying every line out first showed in replay
    /// profiles. `None` when it is not, for [`EventReader::next_line`] to
    /// gather; otherwise as [`LineParser::parse`].
    fn line_in_place(&mut self, out: &mut Event) -> Result<Option<bool>> {
        let available = loop {
            match self.input.fill_buf() {
                Ok(b) => break b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::Io {
                        path: self.lines.path.clone(),
                        source,
                    });
                }
            }
        };
        // The same bound as `next_line`: a longer line goes there to fail.
        let window = &available[..available.len().min(MAX_LINE_BYTES + 1)];
        let Some(end) = memchr::memchr(b'\n', window) else {
            return Ok(None);
        };
        self.lines.stats.lines += 1;
        let parsed = self.lines.parse(&window[..end], out);
        self.input.consume(end + 1);
        parsed.map(Some)
    }

    /// Reads the next line into `buf`; `false` at end of input. Takes at
    /// most [`MAX_LINE_BYTES`] + 1 bytes, so that a longer line is refused
    /// without reading it all. It searches the reader's own buffer with the
    /// `memchr` crate: `read_until`'s search showed in replay profiles.
    fn next_line(&mut self) -> Result<bool> {
        self.buf.clear();
        let limit = MAX_LINE_BYTES + 1;
        loop {
            let available = match self.input.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::Io {
                        path: self.lines.path.clone(),
                        source,
                    });
                }
            };
            let window = &available[..available.len().min(limit - self.buf.len())];
            let (used, found) = match memchr::memchr(b'\n', window) {
                Some(i) => (i + 1, true),
                None => (window.len(), false),
            };
            self.buf.extend_from_slice(&window[..used]);
            self.input.consume(used);
            if found || used == 0 || self.buf.len() == limit {
                break;
            }
        }
        let n = self.buf.len();
        if n == 0 {
            return Ok(false);
        }
        self.lines.stats.lines += 1;
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        } else if n == limit {
            return Err(Error::LineTooLong {
                path: self.lines.path.clone(),
                line: self.lines.stats.lines,
                limit: MAX_LINE_BYTES,
            });
        }
        Ok(true)
    }

    /// Reads the next event into `event`, overwriting it and reusing its
    /// strings' buffers where the line allows; `false` at the end of input.
    /// The same checks and errors as the iterator, without an allocation a
    /// line in the common case. Any event will do as the first `event`.
    pub fn read_into(&mut self, event: &mut Event) -> Result<bool> {
        if self.done {
            return Ok(false);
        }
        loop {
            match self.line_in_place(event) {
                Ok(Some(true)) => return Ok(true),
                Ok(Some(false)) => continue,
                Ok(None) => {}
                Err(e) => {
                    self.done = true;
                    return Err(e);
                }
            }
            match self.next_line() {
                Ok(true) => {}
                Ok(false) => {
                    self.done = true;
                    let st = &self.lines;
                    let nothing = st.filter.is_none()
                        && st.stats.events == 0
                        && st.stats.header.is_none()
                        && st.stats.unknown_total() == 0;
                    if nothing {
                        return Err(Error::Empty {
                            path: st.path.clone(),
                        });
                    }
                    return Ok(false);
                }
                Err(e) => {
                    self.done = true;
                    return Err(e);
                }
            }
            match self.lines.parse(&self.buf, event) {
                Ok(true) => return Ok(true),
                Ok(false) => continue,
                Err(e) => {
                    self.done = true;
                    return Err(e);
                }
            }
        }
    }
}

impl LineParser {
    fn malformed(&self, msg: impl ToString) -> Error {
        Error::Malformed {
            path: self.path.clone(),
            line: self.stats.lines,
            column: None,
            msg: msg.to_string(),
        }
    }

    /// A serde error over the current line: serde's line within it is
    /// always 1, so only its column is kept, counted from the line's start.
    fn malformed_json(&self, e: serde_json::Error) -> Error {
        let (pos, msg) = crate::position::json(&e);
        Error::Malformed {
            path: self.path.clone(),
            line: self.stats.lines,
            column: pos.map(|p| p.column + self.lead),
            msg,
        }
    }

    /// Parses `line` (without its newline) into `out`; `false` for lines
    /// that are not events.
    fn parse(&mut self, line: &[u8], out: &mut Event) -> Result<bool> {
        let start = line.trim_ascii_start();
        self.lead = (line.len() - start.len()) as u64;
        let line = start.trim_ascii_end();
        if line.is_empty() || self.filter.is_some_and(|keep| !keep(line)) {
            return Ok(false);
        }
        let (probe, fast) = match fast_probe(line) {
            Some(probed) => probed,
            None => (
                serde_json::from_slice(line).map_err(|e| self.malformed_json(e))?,
                None,
            ),
        };
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
                self.stats.header = Some(body(line).map_err(|e| self.malformed_json(e))?);
                return Ok(false);
            }
            "pod" | "node" | "node_claim"
                if fast.is_some_and(|(kind, rest)| {
                    fast_body(kind, rest, &mut out.body, &mut self.spares).is_some()
                }) =>
            {
                self.stats.events += 1;
                out.ts = probe.ts;
                return Ok(true);
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
                // The fast probe reads only `ts` and `type`: a line of an
                // unknown type is still checked as the general probe checks
                // it (a rare line read twice there).
                body::<Probe>(line).map_err(|e| self.malformed_json(e))?;
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
                return Ok(false);
            }
        };
        let body = parsed.map_err(|e| self.malformed_json(e))?;
        self.stats.events += 1;
        *out = Event { ts: probe.ts, body };
        Ok(true)
    }
}

impl<R: BufRead> Iterator for EventReader<R> {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut event = Event::blank();
        match self.read_into(&mut event) {
            Ok(true) => Some(Ok(event)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
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
                column: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> (Vec<Result<Event>>, ReadStats) {
        let mut r = EventReader::new(text.as_bytes(), "t.jsonl");
        let v: Vec<_> = (&mut r).collect();
        (v, r.stats().clone())
    }

    fn pod(ts: f64, name: &str) -> Event {
        Event::new(
            ts,
            Pod {
                pod: name.into(),
                workload: Some("ns/w".into()),
                images: vec!["r/i:1".into()],
                phase: PodPhase::Scheduled,
                node: Some("n1".into()),
                node_claim: None,
            },
        )
    }

    #[test]
    fn writer_output_reads_back_equal() {
        let events = vec![
            Event::new(
                1.0,
                Image {
                    image: "r/i:1".into(),
                    bytes: 5,
                    layers: Some(vec![Layer {
                        digest: "sha256:a".into(),
                        bytes: 5,
                    }]),
                },
            ),
            pod(2.0, "ns/p"),
            Event::new(
                3.0,
                ScaleUp {
                    source: Autoscaler::ClusterAutoscaler,
                    group: "g".into(),
                    from: 3,
                    to: 6,
                    pods: Some(vec!["ns/p".into()]),
                },
            ),
        ];
        let mut w = EventWriter::new(Vec::new(), "mem", &Header::new(0.0, "test")).unwrap();
        for e in &events {
            w.write(e).unwrap();
        }
        let bytes = w.into_inner().unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with(r#"{"type":"trace","version":1,"ts":0.0,"source":"test"}"#));
        assert!(text.contains(r#""source":"cluster-autoscaler""#));
        let (got, stats) = read(&text);
        let got: Vec<Event> = got.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(got, events);
        assert_eq!(stats.header.unwrap().source, "test");
    }

    /// An error of file `t` without its column: `t:1:7: x` → `t:1: x`.
    fn without_column(m: &str) -> String {
        let (place, what) = m.split_once(": ").expect("a located error");
        let line = place.split(':').take(2).collect::<Vec<_>>().join(":");
        format!("{line}: {what}")
    }

    /// The same line with a space after the brace, which only the general
    /// serde_json path reads.
    fn slow(line: &str) -> String {
        line.replacen('{', "{ ", 1)
    }

    /// A synthetic trace as pullahead writes it, header first.
    fn synth_text(seed: u64, events: u64) -> String {
        let mut w = EventWriter::new(Vec::new(), "mem", &Header::new(0.0, "test")).unwrap();
        let cfg = crate::replay::synth::SynthConfig {
            seed,
            events,
            ..Default::default()
        };
        crate::replay::synth::generate(cfg, &mut w).unwrap();
        String::from_utf8(w.into_inner().unwrap()).unwrap()
    }

    #[test]
    fn the_fast_path_reads_what_serde_reads() {
        let text = synth_text(3, 3_000);
        let hand = [
            r#"{"ts":0,"type":"pod","pod":"a/b","images":[],"phase":"pending"}"#,
            r#"{"ts":0,"type":"pod","pod":"a/b","workload":"a/w","images":["x","y"],"phase":"scheduled","node":"n","node_claim":"c"}"#,
            r#"{"ts":0,"type":"pod","pod":"a/\u00e9","images":["x"],"phase":"started"}"#,
            r#"{"ts":0,"type":"pod","pod":"a/é","images":["x\"y"],"phase":"deleted"}"#,
            r#"{"ts":0,"type":"pod","pod":"a","images":["x"],"phase":"pending","extra":1}"#,
            r#"{"ts":0,"type":"pod","pod":"a","phase":"pending"}"#,
            r#"{"ts":0,"type":"pod","pod":"a","workload":null,"images":[],"phase":"pending"}"#,
            r#"{"ts":0,"type":"node","node":"n","phase":"ready","labels":{}}"#,
            r#"{"ts":0,"type":"node","node":"n","phase":"registered","pool":"p","labels":{"k":"1","k":"2","a":"b"},"images":["i","j"]}"#,
            r#"{"ts":0,"type":"node","node":"n","phase":"deleted","labels":{},"images":[]}"#,
            r#"{"ts":0,"type":"node","node":"n","phase":"registered","labels":{},"taints":[{"key":"k","effect":"NoSchedule"}]}"#,
            r#"{"ts":0,"type":"node","node":"n","phase":"registered"}"#,
            r#"{"ts":0,"type":"node_claim","node_claim":"c","pool":"p","phase":"launched","labels":{"a":"b"}}"#,
            r#"{"ts":0.0e0,"type":"node_claim","node_claim":"c","pool":"p","phase":"initialized","labels":{},"node":"n"}"#,
        ];
        // Hand lines first: they are at time 0, where the synthetic trace starts.
        let lines: Vec<&str> = hand.into_iter().chain(text.lines().skip(1)).collect();
        let mut event = Event::blank();
        let joined = lines.join("\n");
        let mut fast = EventReader::new(joined.as_bytes(), "t");
        for line in lines {
            let want = EventReader::new(slow(line).as_bytes(), "t")
                .next()
                .unwrap()
                .unwrap();
            let alone = EventReader::new(line.as_bytes(), "t")
                .next()
                .unwrap()
                .unwrap();
            assert_eq!(alone.body, want.body, "{line}");
            assert!(fast.read_into(&mut event).unwrap(), "{line}");
            assert_eq!(event.body, want.body, "reused buffers: {line}");
            assert_eq!(event.ts, alone.ts);
        }
        assert!(!fast.read_into(&mut event).unwrap());
    }

    #[test]
    fn plain_decimals_parse_as_str_parse_does() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut texts: Vec<String> = [
            "0",
            "-0",
            "0.0",
            "1",
            "12.5",
            "0.1",
            "0.3",
            "4397.713",
            "715694.111",
            "999999999999999",
            "1764288000.123",
            "-3.25",
            "123456789.012345",
        ]
        .map(String::from)
        .to_vec();
        for _ in 0..20_000 {
            let whole: u64 = rng.random_range(0..10_000_000_000);
            let frac: u64 = rng.random_range(0..100_000);
            texts.push(format!("{whole}.{frac:05}"));
            texts.push(format!("{}", rng.random::<f64>() * 1e6));
        }
        let mut fast = 0;
        for text in &texts {
            let want: f64 = text.parse().unwrap();
            if let Some(got) = plain_decimal(text.as_bytes()) {
                fast += 1;
                assert_eq!(got.to_bits(), want.to_bits(), "{text}");
            }
        }
        assert!(fast > texts.len() / 2, "only {fast} took the fast path");
        // Not the plain form: str::parse and the JSON grammar decide.
        for text in [
            "",
            "-",
            ".5",
            "5.",
            "05",
            "1e3",
            "+1",
            "1.2.3",
            "nan",
            "1234567890123456",
        ] {
            assert_eq!(plain_decimal(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn the_fast_path_refuses_what_serde_refuses() {
        let bad = [
            r#"{"ts":+1,"type":"pod","pod":"a","images":[],"phase":"pending"}"#,
            r#"{"ts":01,"type":"pod","pod":"a","images":[],"phase":"pending"}"#,
            r#"{"ts":1,"type":"pod","pod":"a","images":[],"phase":"flying"}"#,
            r#"{"ts":1,"type":"pod","pod":"a","images":[],"phase":"pending"}x"#,
            r#"{"ts":1,"type":"pod","pod":"a","pod":"b","images":[],"phase":"pending"}"#,
            r#"{"ts":1,"type":"node","node":"n","phase":"ready","labels":{"a":1}}"#,
            "{\"ts\":1,\"type\":\"node\",\"node\":\"n\u{1}\",\"phase\":\"ready\",\"labels\":{}}",
            r#"{"ts":1,"type":"node_claim","node_claim":"c","pool":"p","phase":"gone","labels":{}}"#,
            // An unknown type is skipped only when the line is well formed.
            r#"{"ts":1,"type":"future","x":}"#,
            "{\"ts\":1,\"type\":\"futur\u{9}\"}",
        ];
        for line in bad {
            let got = EventReader::new(line.as_bytes(), "t").next().unwrap();
            let want = EventReader::new(slow(line).as_bytes(), "t").next().unwrap();
            let (got, want) = (got.unwrap_err().to_string(), want.unwrap_err().to_string());
            assert!(got.starts_with("t:1:"), "{line}: {got}");
            assert!(got.contains(": malformed event: "), "{line}: {got}");
            // The general path reads the same text one column later.
            assert_eq!(without_column(&got), without_column(&want), "{line}");
        }
    }

    /// A `ts` outside the plain decimal form, which the fast path hands to
    /// `str::parse`, has the bits serde_json gives it: both round correctly.
    #[test]
    fn unusual_timestamps_read_as_serde_reads_them() {
        for ts in [
            "1079.2e72",
            "347.5E46",
            "1763337600.1234567",
            "9007199254740993",
            "2.2250738585072011e-308",
            "0.1e1",
        ] {
            let line =
                format!(r#"{{"ts":{ts},"type":"pod","pod":"a","images":[],"phase":"pending"}}"#);
            let got = EventReader::new(line.as_bytes(), "t")
                .next()
                .unwrap()
                .unwrap();
            let want = EventReader::new(slow(&line).as_bytes(), "t")
                .next()
                .unwrap()
                .unwrap();
            assert_eq!(got.ts.to_bits(), want.ts.to_bits(), "{ts}");
            assert_eq!(
                got.ts.to_bits(),
                ts.parse::<f64>().unwrap().to_bits(),
                "{ts}"
            );
        }
    }

    /// Lines of a synthetic trace, each broken at random (a byte dropped,
    /// changed or added, or the line cut short): the reader never panics,
    /// and its fast path accepts exactly what serde_json accepts, with the
    /// same event, or refuses it with an error that names the line.
    #[test]
    fn mutated_lines_are_read_as_serde_reads_them() {
        use rand::{Rng, SeedableRng};
        let text = synth_text(5, 2_000);
        let lines: Vec<&[u8]> = text.lines().skip(1).map(str::as_bytes).collect();
        // Bytes that JSON gives a meaning to, and a few it does not allow.
        let alphabet = b"{}[]\":,0123456789.eE+-nulltruefalse \\\t\x00\x1f\x7f\xc3\xa9\xff";
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let (mut accepted, mut refused) = (0, 0);
        for round in 0..50_000 {
            let mut line = lines[round % lines.len()].to_vec();
            for _ in 0..rng.random_range(1..=2) {
                let at = rng.random_range(0..line.len());
                let byte = alphabet[rng.random_range(0..alphabet.len())];
                match rng.random_range(0..4) {
                    0 => {
                        line.remove(at);
                    }
                    1 => line[at] = byte,
                    2 => line.insert(at, byte),
                    _ => line.truncate(at),
                }
                if line.is_empty() {
                    line.push(b'{');
                }
            }
            // Spaced after the brace, only the general path reads it.
            let mut spaced = line.clone();
            if let Some(i) = spaced.iter().position(|&b| b == b'{') {
                spaced.insert(i + 1, b' ');
            }
            let got = EventReader::new(&line[..], "t").next();
            let want = EventReader::new(&spaced[..], "t").next();
            let shown = String::from_utf8_lossy(&line).into_owned();
            match (got, want) {
                (Some(Ok(got)), Some(Ok(want))) => {
                    assert_eq!(got.body, want.body, "{shown}");
                    assert_eq!(got.ts.to_bits(), want.ts.to_bits(), "{shown}");
                    accepted += 1;
                }
                // A line that is only space, or a lone unknown type: skipped
                // alike, and the input is then empty or not alike.
                (None, None) => {}
                (Some(Err(Error::Empty { .. })), Some(Err(Error::Empty { .. }))) => {}
                (Some(Err(e)), Some(Err(_))) => {
                    assert!(e.to_string().starts_with("t:1:"), "{shown}: {e}");
                    refused += 1;
                }
                (got, want) => panic!("{shown}: fast {got:?}, general {want:?}"),
            }
        }
        // Both outcomes are common, so both sides were tested.
        assert!(
            accepted > 1_000 && refused > 10_000,
            "{accepted} / {refused}"
        );
    }

    #[test]
    fn string_end_stops_where_a_byte_loop_stops() {
        let stops: [u8; 6] = [b'"', b'\\', 0x00, 0x1f, b'\n', b'\t'];
        let others = [
            b'a', b' ', b'!', b'#', b'$', b'[', b']', 0x7f, 0x80, 0xa2, 0xdc, 0xff,
        ];
        let naive = |b: &[u8]| b.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
        for len in 0..40 {
            for fill in others {
                let mut b = vec![fill; len];
                assert_eq!(string_end(&b), naive(&b), "{b:?}");
                for at in 0..len {
                    for stop in stops {
                        b[at] = stop;
                        assert_eq!(string_end(&b), naive(&b), "{b:?}");
                        // A second stop after the first, in the same word
                        // or the next, must not move the answer.
                        for later in at + 1..len.min(at + 10) {
                            let keep = b[later];
                            b[later] = b'"';
                            assert_eq!(string_end(&b), naive(&b), "{b:?}");
                            b[later] = keep;
                        }
                        b[at] = fill;
                    }
                }
            }
        }
    }

    /// Tricky strings, lines of each fast-path kind in turn, so that
    /// bodies change kind and reuse spares, and maps whose keys repeat,
    /// change, grow, shrink or repeat within a line: read through one
    /// reused event, each must give what serde_json gives, or fail where
    /// it fails.
    #[test]
    fn the_fast_path_reads_tricky_lines_as_serde_does() {
        let mut strings: Vec<String> = vec![
            String::new(),
            "a".into(),
            "é".into(),
            "日本語のノード".into(),
            "a\\\"b".into(),
            "a\\\\b".into(),
            "a\\u00e9".into(),
            "tab\there".into(),
            "nul\u{0}x".into(),
            "us\u{1f}x".into(),
            "del\u{7f}x".into(),
            "ends with backslash\\".into(),
        ];
        for len in [7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 33] {
            let base: String = "abcdefghijklmnopqrstuvwxyz0123456789"
                .chars()
                .take(len)
                .collect();
            strings.push(base.clone());
            for at in [0, len / 2, len - 1] {
                for insert in ["\\\"", "\u{1}", "é", "\\n", "€"] {
                    let mut t = base.clone();
                    t.insert_str(at, insert);
                    strings.push(t);
                }
            }
        }
        let mut lines = Vec::new();
        for (i, s) in strings.iter().enumerate() {
            let o = &strings[(i + 1) % strings.len()];
            lines.push(format!(
                r#"{{"ts":{i},"type":"pod","pod":"{s}","workload":"{o}","images":["{s}","{o}",""],"phase":"scheduled","node":"{s}"}}"#
            ));
            lines.push(format!(
                r#"{{"ts":{i},"type":"node","node":"{s}","phase":"registered","pool":"{o}","labels":{{"k":"{s}"}},"images":["{o}"]}}"#
            ));
            lines.push(format!(
                r#"{{"ts":{i},"type":"node_claim","node_claim":"{s}","pool":"p","phase":"created","labels":{{"k":"{o}","{s}":"v"}}}}"#
            ));
            lines.push(format!(
                r#"{{"ts":{i},"type":"node","node":"n","phase":"ready","labels":{{"k":"{o}"}}}}"#
            ));
            lines.push(format!(
                r#"{{"ts":{i},"type":"node","node":"n","phase":"ready","labels":{{"k":"1","k":"2"}}}}"#
            ));
            lines.push(format!(
                r#"{{"ts":{i},"type":"node","node":"n","phase":"ready","labels":{{"a":"1","k":"2"}}}}"#
            ));
            lines.push(format!(
                r#"{{"ts":{i},"type":"node","node":"n","phase":"ready","labels":{{"a":"1","k":"2","z":"{s}"}}}}"#
            ));
            lines.push(format!(
                r#"{{"ts":{i},"type":"node","node":"n","phase":"ready","labels":{{"k":"2","a":"1"}}}}"#
            ));
            lines.push(format!(
                r#"{{"ts":{i},"type":"node","node":"n","phase":"ready","labels":{{}}}}"#
            ));
            lines.push(format!(
                r#"{{"ts":{i},"type":"pod","pod":"p","images":[],"phase":"pending"}}"#
            ));
        }
        let mut event = Event::blank();
        let mut ok = 0;
        for line in &lines {
            let want = EventReader::new(slow(line).as_bytes(), "t").next().unwrap();
            let mut fast = EventReader::new(line.as_bytes(), "t");
            match (fast.read_into(&mut event), want) {
                (Ok(true), Ok(want)) => {
                    assert_eq!(event, want, "{line}");
                    ok += 1;
                }
                (Err(got), Err(want)) => {
                    let (got, want) = (got.to_string(), want.to_string());
                    assert_eq!(without_column(&got), without_column(&want), "{line}");
                }
                (got, want) => panic!("{line}: {got:?} but serde gives {want:?}"),
            }
        }
        assert!(ok > lines.len() / 2, "only {ok} lines read");
        // One reader for all the good lines, so that its spares are used.
        let good: Vec<(&String, Event)> = lines
            .iter()
            .filter_map(|l| Some((l, EventReader::new(slow(l).as_bytes(), "t").next()?.ok()?)))
            .collect();
        let joined = good
            .iter()
            .map(|(l, _)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        let mut reader = EventReader::new(joined.as_bytes(), "t");
        for (line, want) in &good {
            assert!(reader.read_into(&mut event).unwrap(), "{line}");
            assert_eq!(&event, want, "{line}");
        }
        assert!(!reader.read_into(&mut event).unwrap());
    }

    #[test]
    fn writer_refuses_time_going_backwards() {
        let mut w = EventWriter::new(Vec::new(), "mem", &Header::new(0.0, "test")).unwrap();
        w.write(&pod(5.0, "a")).unwrap();
        let err = w.write(&pod(4.0, "b")).unwrap_err();
        assert!(matches!(err, Error::TimeBackwards { line: 3, .. }), "{err}");
    }

    #[test]
    fn unknown_types_are_counted_and_skipped() {
        let text = "{\"ts\":1,\"type\":\"future_thing\",\"x\":1}\n\n{\"ts\":2,\"type\":\"future_thing\"}\n{\"ts\":3,\"type\":\"pull\",\"node\":\"n\",\"image\":\"i\",\"cached\":true}\n";
        let (got, stats) = read(text);
        assert_eq!(got.len(), 1);
        assert!(matches!(got[0].as_ref().unwrap().body, Body::Pull(_)));
        assert_eq!(stats.unknown_types.get("future_thing"), Some(&2));
        assert_eq!(stats.lines, 4);
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let cases = [
            (
                "{\"ts\":1,\"type\":\"pull\",\"node\":\"n\",\"image\":\"i\",\"cached\":true}\n{\"ts\":2,\"type\":\"pu",
                "t.jsonl:2:18: malformed event: EOF while parsing a string",
            ),
            (
                "{\"ts\":1,\"type\":\"pod\",\"pod\":5,\"images\":[],\"phase\":\"pending\"}\n",
                "t.jsonl:1:28: malformed event: invalid type",
            ),
            (
                "{\"ts\":5,\"type\":\"pull\",\"node\":\"n\",\"image\":\"i\",\"cached\":true}\n{\"ts\":4,\"type\":\"pull\",\"node\":\"n\",\"image\":\"i\",\"cached\":true}\n",
                "t.jsonl:2: time goes backwards",
            ),
            (
                "{\"type\":\"trace\",\"version\":2,\"ts\":0,\"source\":\"x\"}\n",
                "t.jsonl:1: unsupported schema version 2",
            ),
            ("", "t.jsonl: the file is empty"),
            ("\n  \n", "t.jsonl: the file is empty"),
            (
                "{\"ts\":1,\"type\":\"pod\",\"pod\":\"a\",\"images\":[],\"phase\":\"flying\"}\n",
                "t.jsonl:1:59: malformed event: unknown variant `flying`",
            ),
            (
                "{\"ts\":1,\"type\":\"pull\",\"node\":\"n\",\"image\":\"i\",\"cached\":true}\n{\"type\":\"trace\",\"version\":1,\"ts\":2,\"source\":\"x\"}\n",
                "t.jsonl:2: malformed event: a trace header may only be the first",
            ),
            (
                "{\"type\":\"pull\",\"node\":\"n\",\"image\":\"i\",\"cached\":true}\n",
                "t.jsonl:1:52: malformed event: missing field `ts`",
            ),
        ];
        for (text, want) in cases {
            let (got, _) = read(text);
            let err = got.into_iter().find_map(|r| r.err()).expect(want);
            let msg = err.to_string();
            assert!(msg.starts_with(want), "{msg:?} should start with {want:?}");
            assert!(!msg.contains('\n'), "one line: {msg:?}");
        }
    }

    #[test]
    fn a_line_over_the_limit_is_refused_without_reading_it_all() {
        let mut text = String::from(
            "{\"ts\":1,\"type\":\"pull\",\"node\":\"n\",\"image\":\"i\",\"cached\":true}\n",
        );
        text.push_str(&"x".repeat(MAX_LINE_BYTES + 10));
        let (got, _) = read(&text);
        let err = got.into_iter().find_map(|r| r.err()).unwrap();
        assert!(matches!(err, Error::LineTooLong { line: 2, .. }), "{err}");
    }

    #[test]
    fn a_file_without_a_header_is_version_1_and_a_header_only_file_is_not_empty() {
        let (got, stats) =
            read("{\"ts\":1,\"type\":\"pull\",\"node\":\"n\",\"image\":\"i\",\"cached\":false}");
        assert_eq!(got.len(), 1);
        assert!(got[0].is_ok());
        assert!(stats.header.is_none());
        let (got, stats) = read("{\"type\":\"trace\",\"version\":1,\"ts\":0,\"source\":\"x\"}\n");
        assert!(got.is_empty());
        assert!(stats.header.is_some());
    }

    #[test]
    fn tolerations_follow_kubernetes_rules() {
        let taint = Taint {
            key: "gpu".into(),
            value: Some("true".into()),
            effect: "NoSchedule".into(),
        };
        let exists_all = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        let equal = Toleration {
            key: Some("gpu".into()),
            value: Some("true".into()),
            ..Default::default()
        };
        let wrong_value = Toleration {
            key: Some("gpu".into()),
            value: Some("false".into()),
            ..Default::default()
        };
        let wrong_effect = Toleration {
            key: Some("gpu".into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            ..Default::default()
        };
        assert!(exists_all.tolerates(&taint));
        assert!(equal.tolerates(&taint));
        assert!(!wrong_value.tolerates(&taint));
        assert!(!wrong_effect.tolerates(&taint));
        assert!(!tolerates_all(&[], std::slice::from_ref(&taint)));
        let soft = Taint {
            effect: "PreferNoSchedule".into(),
            ..taint
        };
        assert!(tolerates_all(&[], &[soft]));
    }
}
