//! `pullahead scenario`: a load trace and a cluster spec become a schema-v1
//! event stream, through a small cluster simulator (HPA, scheduler,
//! Karpenter-like and cluster-autoscaler-like provisioners, DaemonSets).
//!
//! The stream holds inputs only (images, workloads, HPAs, scale-ups, node
//! claims, nodes, pod pending/nominated/scheduled/deleted): never `pull` or
//! a pod `started`, which replay computes for each policy.

pub mod load;
pub mod sim;
pub mod spec;

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::event::{EventWriter, Header};
use spec::{is_nonneg, is_pos};

pub use sim::Summary;

/// Errors from reading a scenario's inputs or writing its events.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The spec is not valid YAML for the spec's shape.
    #[error("{path}: {msg}")]
    Spec {
        /// The spec file.
        path: String,
        /// What the parser said (with line and column).
        msg: String,
    },
    /// A spec field has a bad value.
    #[error("{path}: {field}: {msg}")]
    SpecField {
        /// The spec file.
        path: String,
        /// The field, as a path such as `pools[0].autoscaler`.
        field: String,
        /// What is wrong.
        msg: String,
    },
    /// The image catalogue could not be read.
    #[error("{path}: bad image catalogue: {msg}")]
    Catalogue {
        /// The catalogue file.
        path: String,
        /// What is wrong.
        msg: String,
    },
    /// A line of the load CSV is bad.
    #[error("{path}:{line}: {msg}")]
    Load {
        /// The CSV file.
        path: String,
        /// 1-based line.
        line: u64,
        /// What is wrong.
        msg: String,
    },
    /// A command-line option is out of range.
    #[error("{0}")]
    Option(String),
    /// Writing the events failed.
    #[error(transparent)]
    Event(#[from] crate::event::Error),
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `pullahead scenario`: simulate a cluster under a load trace.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Load CSV: a header, then a timestamp (ISO 8601 or seconds) and one
    /// per-minute rate per column (or the `wide` layout the spec names).
    #[arg(
        long,
        env = "PULLAHEAD_SCENARIO_LOAD",
        required_unless_present = "replicas"
    )]
    pub load: Option<PathBuf>,
    /// Instead of a load: an event file whose `workload` events (e.g. an
    /// imported SimKube trace) set the replicas; the spec's `imported`
    /// section places their pods.
    #[arg(long, env = "PULLAHEAD_SCENARIO_REPLICAS", conflicts_with = "load")]
    pub replicas: Option<PathBuf>,
    /// Cluster spec YAML (see docs/scenario-spec.md).
    #[arg(long, env = "PULLAHEAD_SCENARIO_CLUSTER")]
    pub cluster: PathBuf,
    /// Random seed; overrides the spec's `seed` (default 0).
    #[arg(long, env = "PULLAHEAD_SCENARIO_SEED")]
    pub seed: Option<u64>,
    /// Hours to simulate; default: to the end of the load file.
    #[arg(long)]
    pub hours: Option<f64>,
    /// Hour of the load file at which the simulation starts.
    #[arg(long, default_value_t = 0.0)]
    pub start_hour: f64,
    /// Output event file (JSON Lines, schema v1); `-` is standard output.
    #[arg(long, default_value = "-")]
    pub out: PathBuf,
}

/// Runs `pullahead scenario` and returns what it produced.
pub fn run(args: &Args) -> Result<Summary> {
    let name = args.cluster.display().to_string();
    let spec = spec::Spec::load(&args.cluster)?;
    spec.validate(&name)?;
    let start = match &spec.load_start {
        Some(s) => Some(load::parse_time(s).ok_or_else(|| Error::SpecField {
            path: name.clone(),
            field: "load_start".into(),
            msg: format!("{s:?} is not a time (ISO 8601 or seconds)"),
        })?),
        None => None,
    };
    let dir = args.cluster.parent().unwrap_or(Path::new("."));
    let seed = args.seed.or(spec.seed).unwrap_or(0);
    let opts = Options {
        seed,
        hours: args.hours,
        start_hour: args.start_hour,
    };
    let out = args.out.clone();
    let (input, path) = match (&args.load, &args.replicas) {
        (Some(l), None) => ("--load", l),
        (None, Some(r)) => ("--replicas", r),
        _ => {
            return Err(Error::Option(
                "give exactly one of --load and --replicas".into(),
            ));
        }
    };
    let source = format!(
        "pullahead scenario {input} {} --cluster {} --seed {seed}",
        path.display(),
        args.cluster.display()
    );
    if input == "--replicas" {
        let events = crate::event::read_all(path)?;
        let (summary, _) = generate_from_replicas(&spec, dir, &name, &events, &opts, |t0| {
            EventWriter::create(&out, &Header::new(t0, source.clone()))
        })?;
        return Ok(summary);
    }
    let load = load::Load::read(path, spec.load_layout, start)?;
    let (summary, _) = generate(&spec, dir, &name, &load, &opts, |t0| {
        EventWriter::create(&out, &Header::new(t0, source.clone()))
    })?;
    Ok(summary)
}

/// Options of one run.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The seed.
    pub seed: u64,
    /// Hours to simulate; `None` runs to the end of the load.
    pub hours: Option<f64>,
    /// Hour of the load at which to start.
    pub start_hour: f64,
}

/// Simulates `spec` under `load` and writes the events to the writer that
/// `open` makes for the start time; returns the summary and the flushed
/// underlying writer.
pub fn generate<W: Write>(
    spec: &spec::Spec,
    spec_dir: &Path,
    spec_name: &str,
    load: &load::Load,
    opts: &Options,
    open: impl FnOnce(f64) -> crate::event::Result<EventWriter<W>>,
) -> Result<(Summary, W)> {
    if !is_nonneg(opts.start_hour) {
        return Err(Error::Option(format!(
            "--start-hour must not be negative, got {}",
            opts.start_hour
        )));
    }
    if let Some(h) = opts.hours
        && !is_pos(h)
    {
        return Err(Error::Option(format!("--hours must be positive, got {h}")));
    }
    let mut images = spec.images(spec_dir)?;
    let (pools, workloads) = sim::resolve(spec, load, &mut images, opts.seed, spec_name)?;
    let step = spec.hpa_controller.sync_seconds;
    let total_minutes = load.minutes() as f64;
    let first_minute = opts.start_hour * 60.0;
    if first_minute >= total_minutes {
        return Err(Error::Option(format!(
            "--start-hour {} is past the end of the load ({:.1} h)",
            opts.start_hour,
            total_minutes / 60.0
        )));
    }
    let minutes = opts
        .hours
        .map_or(total_minutes - first_minute, |h| h * 60.0);
    let t0 = load.start + first_minute * 60.0;
    let t_end = t0 + minutes * 60.0;
    let mut writer = open(t0)?;
    let mut sim = sim::Sim::new(
        pools,
        workloads,
        spec.daemonsets.clone(),
        images,
        spec.hpa_controller.clone(),
        opts.seed,
    );
    sim.set_buffers(sim::resolve_buffers(spec, &sim));
    let minute_of = |t: f64| ((t - load.start) / 60.0).floor().max(0.0) as usize;
    let mut loads = Vec::new();
    sim.loads(load, minute_of(t0), &mut loads);
    sim.start(t0, &loads);
    for e in sim.drain() {
        writer.write(&e)?;
    }
    let mut k = 1u64;
    loop {
        let t = t0 + k as f64 * step;
        if t > t_end {
            break;
        }
        sim.loads(load, minute_of(t), &mut loads);
        sim.step(t, &loads);
        for e in sim.drain() {
            writer.write(&e)?;
        }
        k += 1;
    }
    sim.run_until(t_end);
    for e in sim.drain() {
        writer.write(&e)?;
    }
    let summary = sim.summary().clone();
    tracing::info!(?summary, "scenario written");
    Ok((summary, writer.into_inner()?))
}

/// Simulates `spec`'s pools under recorded scaling: every `workload` event
/// of `events` with replicas sets that workload's pods (DaemonSets are the
/// spec's). The workloads seen at the first timestamp start warm; later
/// ones are added when they appear. Runs to the last event plus `hours`
/// (default 10 minutes, so that idle nodes are seen leaving).
pub fn generate_from_replicas<W: Write>(
    spec: &spec::Spec,
    spec_dir: &Path,
    spec_name: &str,
    events: &[crate::event::Event],
    opts: &Options,
    open: impl FnOnce(f64) -> crate::event::Result<EventWriter<W>>,
) -> Result<(Summary, W)> {
    use crate::event::Body;
    let imported = spec.imported.as_ref().ok_or_else(|| Error::SpecField {
        path: spec_name.to_string(),
        field: "imported".into(),
        msg: "--replicas needs an `imported` section naming the pool and pod size".into(),
    })?;
    let changes: Vec<(f64, &crate::event::Workload)> = events
        .iter()
        .filter_map(|e| match &e.body {
            Body::Workload(w) if w.kind != "DaemonSet" && w.replicas.is_some() => Some((e.ts, w)),
            _ => None,
        })
        .collect();
    let Some(&(t0, _)) = changes.first() else {
        return Err(Error::Option(
            "the --replicas file has no workload events with replicas".into(),
        ));
    };
    let empty = load::Load {
        start: t0,
        columns: Vec::new(),
        series: Vec::new(),
    };
    let mut images = spec.images(spec_dir)?;
    let (pools, mut workloads) = sim::resolve(spec, &empty, &mut images, opts.seed, spec_name)?;
    let pool = spec
        .pools
        .iter()
        .position(|p| p.name == imported.pool)
        .ok_or_else(|| Error::SpecField {
            path: spec_name.to_string(),
            field: "imported.pool".into(),
            msg: format!("no pool named {:?}", imported.pool),
        })?;
    let cfg = |w: &crate::event::Workload| sim::WorkloadCfg {
        name: w.workload.clone(),
        images: w.images.clone(),
        pool,
        cpu: imported.pod.cpu_millis,
        mem: imported.pod.memory_mib,
        load: None,
        capacity: 1.0,
        hpa: None,
        replicas: w.replicas,
        tolerations: w.tolerations.clone().unwrap_or_default(),
    };
    // The state at the first timestamp is the warm cluster.
    let mut rest = Vec::new();
    for &(ts, w) in &changes {
        match workloads.iter_mut().find(|c| c.name == w.workload) {
            Some(c) if ts == t0 => c.replicas = w.replicas,
            None if ts == t0 => workloads.push(cfg(w)),
            _ => rest.push((ts, w)),
        }
    }
    let last = changes.last().map_or(t0, |c| c.0);
    let t_end = last + opts.hours.map_or(600.0, |h| h * 3600.0);
    let mut writer = open(t0)?;
    let mut sim = sim::Sim::new(
        pools,
        workloads,
        spec.daemonsets.clone(),
        images,
        spec.hpa_controller.clone(),
        opts.seed,
    );
    sim.set_buffers(sim::resolve_buffers(spec, &sim));
    sim.start(t0, &[]);
    let step = spec.hpa_controller.sync_seconds;
    let mut next = rest.into_iter().peekable();
    let mut k = 1u64;
    loop {
        let t = t0 + k as f64 * step;
        while let Some(&(ts, w)) = next.peek() {
            if ts > t.min(t_end) {
                break;
            }
            next.next();
            let idx = match sim.workload_index(&w.workload) {
                Some(i) => i,
                None => {
                    sim.run_until(ts);
                    sim.add_workload(cfg(w))
                }
            };
            sim.set_replicas(ts, idx, w.replicas.unwrap_or(0));
            for e in sim.drain() {
                writer.write(&e)?;
            }
        }
        if t > t_end {
            break;
        }
        sim.step(t, &[]);
        for e in sim.drain() {
            writer.write(&e)?;
        }
        k += 1;
    }
    sim.run_until(t_end);
    for e in sim.drain() {
        writer.write(&e)?;
    }
    let summary = sim.summary().clone();
    Ok((summary, writer.into_inner()?))
}
