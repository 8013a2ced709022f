//! `pullahead tune`: fits the model on the first part of each trace (by
//! time) and scores it, beside the baselines, on the part held back.
//!
//! 1. Replay the training part with a collecting planner: every candidate
//!    (node, image) it scores for a node, at its registration or when a
//!    rising HPA targets it, with its features.
//! 2. Label each candidate: did a pod bound to that node within the horizon
//!    after the decision need the image? (Training data may look ahead; the
//!    planner never does.)
//! 3. Fit logistic regression.
//! 4. Pick the threshold with the best oracle capture on the training parts
//!    whose waste stays within the bound, both averaged over the traces.
//! 5. Replay each whole trace, scoring only what happens after the split.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ndarray::{Array1, Array2};

use crate::clock::Clock;
use crate::event::{self, Body, Event, EventReader, NodePhase, PodPhase};
use crate::forecast::model::{Features, Model, N_FEATURES, Provenance, fit_logistic};
use crate::forecast::planner::{Candidate, Planner, PlannerConfig};
use crate::policy::{Policy, PullOrder};
use crate::replay::{self, Report, oracle::Foresight};

/// What to tune.
#[derive(Clone, Debug)]
pub struct TuneOptions {
    /// Traces to fit and score on.
    pub files: Vec<PathBuf>,
    /// Share of each trace's time span used for fitting.
    pub train_fraction: f64,
    /// The horizon H of "needed within H".
    pub horizon_seconds: f64,
    /// Largest share of prefetched bytes that may be wasted.
    pub max_waste_share: f64,
    /// Replay settings (data-plane model, budget, baselines).
    pub replay: replay::Options,
    /// The command line, recorded in the model.
    pub command: String,
}

/// Figures of one threshold on the training part.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct ThresholdScore {
    /// The threshold.
    pub threshold: f64,
    /// Oracle capture, capped at 1, averaged over the training parts where
    /// the oracle saves anything.
    pub capture: f64,
    /// Wasted over prefetched bytes, averaged over the training parts that
    /// prefetch anything.
    pub waste_share: f64,
}

/// What tuning produced.
#[derive(Debug)]
pub struct Tuned {
    /// The fitted model.
    pub model: Model,
    /// Each threshold tried on the training parts.
    pub thresholds: Vec<ThresholdScore>,
    /// Held-back reports, one per file: only pods bound after the split
    /// are scored.
    pub held_back: Vec<Report>,
}

impl Tuned {
    /// `tune --report`: the threshold search, then each trace's held-back
    /// part, as one HTML page; `model` is where the model was written.
    pub fn html_report(&self, model: &Path) -> crate::replay::html::Result<String> {
        let thresholds = crate::replay::html::Table {
            caption: "Threshold search on the training part".into(),
            header: ["threshold", "capture", "waste share", ""]
                .map(String::from)
                .to_vec(),
            rows: self
                .thresholds
                .iter()
                .map(|t| {
                    let chosen = if t.threshold == self.model.threshold {
                        "chosen"
                    } else {
                        ""
                    };
                    vec![
                        format!("{:.2}", t.threshold),
                        format!("{:.3}", t.capture),
                        format!("{:.3}", t.waste_share),
                        chosen.to_string(),
                    ]
                })
                .collect(),
        };
        let intro = format!(
            "The model written to {} was fitted on the first part of each trace. Below, every \
             policy is scored on the part held back: only pods bound after the split count.",
            model.display()
        );
        crate::replay::html::page(
            "pullahead tune: held-back comparison",
            &intro,
            &[thresholds],
            &self.held_back,
        )
    }
}

/// The planner, with its candidates sent to a shared list.
struct Collector {
    planner: Planner,
    sink: Arc<Mutex<Vec<Candidate>>>,
}

impl Policy for Collector {
    fn name(&self) -> &str {
        "collector"
    }

    fn on_event(&mut self, event: &Event, clock: &dyn Clock, out: &mut Vec<PullOrder>) {
        self.planner.on_event(event, clock, out);
        let rows = self.planner.take_candidates();
        if !rows.is_empty()
            && let Ok(mut sink) = self.sink.lock()
        {
            sink.extend(rows);
        }
    }

    fn tick_interval(&self) -> Option<f64> {
        self.planner.tick_interval()
    }

    fn on_tick(&mut self, clock: &dyn Clock, out: &mut Vec<PullOrder>) {
        self.planner.on_tick(clock, out);
    }
}

/// A trace in memory, with the time that splits its training part from
/// the part held back.
pub(crate) struct Trace {
    pub(crate) label: String,
    pub(crate) events: Vec<Event>,
    pub(crate) split: f64,
}

impl Trace {
    fn train(&self) -> impl Iterator<Item = event::Result<Event>> + '_ {
        self.events
            .iter()
            .take_while(|e| e.ts < self.split)
            .cloned()
            .map(Ok)
    }
}

/// When pods bound to each node needed each image: (node, image) → the
/// bindings, each as (binding time, when that node registered), in time
/// order. The registration time tells a node's incarnations apart when a
/// name comes back.
type Bindings = HashMap<(String, String), Vec<(f64, f64)>>;

fn bindings(events: impl Iterator<Item = event::Result<Event>>) -> event::Result<Bindings> {
    let mut since: HashMap<String, f64> = HashMap::new();
    let mut out: Bindings = HashMap::new();
    for e in events {
        let e = e?;
        match &e.body {
            Body::Node(n) if n.phase == NodePhase::Registered => {
                since.insert(n.node.clone(), e.ts);
            }
            Body::Node(n) if n.phase == NodePhase::Deleted => {
                since.remove(&n.node);
            }
            Body::Pod(p) if p.phase == PodPhase::Scheduled => {
                if let Some(node) = &p.node
                    && let Some(&t0) = since.get(node)
                {
                    for i in &p.images {
                        out.entry((node.clone(), i.clone()))
                            .or_default()
                            .push((e.ts, t0));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The label of candidate `c`: did a pod bound to its node, the same
/// incarnation, within `horizon` after the decision need its image?
fn needed(b: &Bindings, c: Candidate, horizon: f64) -> bool {
    b.get(&(c.node, c.image)).is_some_and(|list| {
        list.iter()
            .any(|&(at, t0)| t0 <= c.ts && at >= c.ts && at - c.ts <= horizon)
    })
}

fn planner_config(opts: &replay::Options) -> PlannerConfig {
    opts.settings.planner
}

/// Reads each file of `opts`; an empty file is left out.
pub(crate) fn load(opts: &TuneOptions) -> replay::Result<Vec<Trace>> {
    let mut traces = Vec::new();
    for path in &opts.files {
        let events: Vec<Event> = EventReader::open(path)?.collect::<event::Result<_>>()?;
        let (first, last) = match (events.first(), events.last()) {
            (Some(f), Some(l)) => (f.ts, l.ts),
            _ => continue,
        };
        traces.push(Trace {
            label: path.display().to_string(),
            split: first + opts.train_fraction * (last - first),
            events,
        });
    }
    Ok(traces)
}

/// Training captures within this of the best are taken as equal when the
/// threshold is chosen.
const CAPTURE_NOISE: f64 = 0.01;

/// The threshold whose training capture is best among those that waste at
/// most `max_waste` of their prefetched bytes, or the least wasteful one if
/// none does. `scores` run from the lowest threshold up.
fn choose_threshold(scores: &[ThresholdScore], max_waste: f64) -> f64 {
    let feasible = || scores.iter().filter(|s| s.waste_share <= max_waste);
    let top = feasible()
        .map(|s| s.capture)
        .fold(f64::NEG_INFINITY, f64::max);
    // Captures this close are the training part's noise, not a better
    // threshold: of those, the lowest, which prefetches the most that the
    // waste bound allows, is the one most likely to carry over.
    feasible()
        .find(|s| s.capture >= top - CAPTURE_NOISE)
        .or_else(|| {
            scores
                .iter()
                .min_by(|a, b| a.waste_share.total_cmp(&b.waste_share))
        })
        .map_or(0.5, |s| s.threshold)
}

/// Runs the whole tuning procedure.
pub fn tune(opts: &TuneOptions) -> replay::Result<Tuned> {
    let traces = load(opts)?;
    let all: Vec<&Trace> = traces.iter().collect();
    let (model, thresholds) = fit(&all, opts)?;

    // 5: held-back scores.
    let mut held_back = Vec::new();
    for t in &traces {
        let mut ro = opts.replay.clone();
        ro.sim.score_from = t.split;
        // For `--report`'s chart over time; held-back parts are small.
        ro.sim.bind_times = true;
        let mut r = score(
            &t.label,
            &t.events,
            &model,
            &ro,
            &["none", "static", "popular", "predictive", "oracle"],
        )?;
        r.file = format!("{} (held back: after t={:.0})", t.label, t.split);
        held_back.push(r);
    }
    Ok(Tuned {
        model,
        thresholds,
        held_back,
    })
}

/// Steps 1–4: fits a model on the training parts of `traces` and picks its
/// threshold on them.
pub(crate) fn fit(
    traces: &[&Trace],
    opts: &TuneOptions,
) -> replay::Result<(Model, Vec<ThresholdScore>)> {
    let mut start = Model::builtin().map_err(replay::Error::InvalidOption)?;
    start.horizon_seconds = opts.horizon_seconds;
    let cfg = planner_config(&opts.replay);

    // 1–2: candidates and labels from the training parts.
    let mut rows: Vec<(Features, f64)> = Vec::new();
    for t in traces {
        let sink = Arc::new(Mutex::new(Vec::new()));
        let collector = Collector {
            planner: Planner::new(start.clone(), cfg).collecting(),
            sink: sink.clone(),
        };
        let none: Box<dyn Policy> = Box::new(crate::policy::NonePolicy);
        replay::replay_policies(
            &t.label,
            t.train(),
            vec![(Box::new(collector), false), (none, false)],
            &opts.replay,
            None,
        )?;
        let truth = bindings(t.train())?;
        let candidates = std::mem::take(
            &mut *sink
                .lock()
                .map_err(|_| replay::Error::InvalidOption("candidate list poisoned".into()))?,
        );
        rows.extend(candidates.into_iter().map(|c| {
            let features = c.features;
            let label = needed(&truth, c, opts.horizon_seconds);
            (features, if label { 1.0 } else { 0.0 })
        }));
    }
    if rows.is_empty() {
        return Err(replay::Error::InvalidOption(
            "the training parts hold no node registrations to learn from".into(),
        ));
    }

    // 3: fit.
    let mut x = Array2::<f64>::zeros((rows.len(), N_FEATURES));
    let mut y = Array1::<f64>::zeros(rows.len());
    for (i, (f, label)) in rows.iter().enumerate() {
        for (j, v) in f.iter().enumerate() {
            x[[i, j]] = *v;
        }
        y[i] = *label;
    }
    let (weights, bias) = fit_logistic(&x, y.view(), 1e-2);
    let positive_share = y.sum() / rows.len() as f64;

    // 4: threshold by replaying the training parts.
    let mut thresholds = Vec::new();
    for th in [
        0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
    ] {
        let model = Model::new(weights, bias, opts.horizon_seconds, th);
        // Each trace counts once, whatever its size: pooled seconds and
        // bytes let the one or two biggest clusters pick the threshold for
        // all, and cross-validation shows that carries over worse.
        let (mut captures, mut wastes) = (Vec::new(), Vec::new());
        for t in traces {
            let train: Vec<Event> = t.train().collect::<event::Result<_>>()?;
            let r = score(&t.label, &train, &model, &opts.replay, &["predictive"])?;
            let (none, pred, oracle) = (total(&r, "none"), &r.policies[0], total(&r, "oracle"));
            if none - oracle > 0.0 {
                // Above 1 only where the oracle's pulls crowd each other;
                // capped so that such a trace does not outweigh the rest.
                captures.push(((none - pred.pull_wait_seconds.total) / (none - oracle)).min(1.0));
            }
            if pred.prefetched_bytes > 0 {
                wastes.push(pred.wasted_bytes as f64 / pred.prefetched_bytes as f64);
            }
        }
        thresholds.push(ThresholdScore {
            threshold: th,
            capture: mean(&captures),
            waste_share: mean(&wastes),
        });
    }
    let best = choose_threshold(&thresholds, opts.max_waste_share);
    let mut model = Model::new(weights, bias, opts.horizon_seconds, best);
    model.provenance = Provenance {
        command: opts.command.clone(),
        data: traces.iter().map(|t| t.label.clone()).collect(),
        rows: rows.len() as u64,
        positive_share,
    };
    Ok((model, thresholds))
}

/// The mean of `v`, 0 when it is empty.
fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn total(r: &Report, policy: &str) -> f64 {
    r.policies
        .iter()
        .find(|p| p.policy == policy)
        .map_or(0.0, |p| p.pull_wait_seconds.total)
}

/// Replays `events` with `model` as the predictive policy.
pub(crate) fn score(
    label: &str,
    events: &[Event],
    model: &Model,
    opts: &replay::Options,
    policies: &[&str],
) -> replay::Result<Report> {
    let mut ro = opts.clone();
    ro.settings.model = model.clone();
    ro.policies = policies.iter().map(|s| s.to_string()).collect();
    ro.progress = false;
    // `none` and `oracle` are reported too, so that capture can be read off.
    for extra in ["none", "oracle"] {
        if !ro.policies.iter().any(|p| p == extra) {
            ro.policies.push(extra.to_string());
        }
    }
    let foresight = Foresight::from_events(events.iter().cloned().map(Ok))?;
    let mut r = replay::replay(label, events.iter().cloned().map(Ok), foresight, &ro, None)?;
    r.policies.retain(|p| {
        policies.contains(&p.policy.as_str()) || p.policy == "none" || p.policy == "oracle"
    });
    r.policies.sort_by_key(|p| {
        policies
            .iter()
            .position(|q| *q == p.policy)
            .unwrap_or(usize::MAX)
    });
    Ok(r)
}

/// Fits a model on the first part of each trace and scores it on the rest.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Traces (schema v1 JSON Lines) to fit and score on.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Where to write the model.
    #[arg(long, value_name = "models/NAME.json")]
    pub out: PathBuf,
    /// Share of each trace's time span to fit on; the rest is held back and
    /// only scored.
    #[arg(long, default_value_t = 0.7)]
    pub train_fraction: f64,
    /// Horizon H of "the node needs this image within H", in seconds.
    #[arg(long, default_value_t = 3600.0)]
    pub horizon_seconds: f64,
    /// Largest share of prefetched bytes the chosen threshold may waste on
    /// the training part.
    #[arg(long, default_value_t = 0.15)]
    pub max_waste: f64,
    /// Print the held-back figures as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also write the threshold search and the held-back comparison as one
    /// self-contained HTML page with charts (inline SVG; it fetches nothing).
    #[arg(long, value_name = "OUT.html")]
    pub report: Option<PathBuf>,
    /// Leave-one-out over whole files instead of a time split: for each
    /// file, fit on all the others and score it (predictive, rules, static,
    /// popular). The model written is then fitted on every file. Needs at
    /// least two files.
    #[arg(long)]
    pub cross_validate: bool,
    /// The data-plane model and baselines, as for `replay`.
    #[command(flatten)]
    pub replay: crate::replay::cli::SimArgs,
}

impl Args {
    /// The tuning options these arguments describe.
    pub fn options(&self, command: String) -> replay::Result<TuneOptions> {
        if !(self.train_fraction > 0.0 && self.train_fraction < 1.0) {
            return Err(replay::Error::InvalidOption(format!(
                "--train-fraction must be between 0 and 1, not {}",
                self.train_fraction
            )));
        }
        if !(self.horizon_seconds.is_finite() && self.horizon_seconds > 0.0) {
            return Err(replay::Error::InvalidOption(format!(
                "--horizon-seconds must be above zero, not {}",
                self.horizon_seconds
            )));
        }
        Ok(TuneOptions {
            files: self.files.clone(),
            train_fraction: self.train_fraction,
            horizon_seconds: self.horizon_seconds,
            max_waste_share: self.max_waste,
            replay: self.replay.options(Vec::new())?,
            command,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_is_the_lowest_within_noise_of_the_best_capture_under_the_waste_bound() {
        let s = |threshold, capture, waste_share| ThresholdScore {
            threshold,
            capture,
            waste_share,
        };
        let scores = [
            s(0.1, 0.90, 0.60),
            s(0.3, 0.70, 0.20),
            s(0.5, 0.616, 0.06),
            s(0.6, 0.60, 0.05),
            s(0.8, 0.621, 0.01),
        ];
        // 0.1 and 0.3 waste too much; 0.8 captures most, but 0.5 is as
        // good within the noise and prefetches more.
        assert_eq!(choose_threshold(&scores, 0.15), 0.5);
        // A real gap is not noise.
        let mut gap = scores;
        gap[4].capture = 0.65;
        assert_eq!(choose_threshold(&gap, 0.15), 0.8);
        // Nothing within the bound: the least wasteful.
        assert_eq!(choose_threshold(&scores, 0.001), 0.8);
        assert_eq!(choose_threshold(&scores, 1.0), 0.1);
    }

    fn candidate(ts: f64) -> Candidate {
        Candidate {
            ts,
            node: "n1".into(),
            image: "r/fn:1".into(),
            features: [0.0; N_FEATURES],
        }
    }

    /// A decision is labelled by the pods bound to its node after it, within
    /// the horizon, on the same incarnation of the node.
    #[test]
    fn labels_look_from_the_decision_through_the_horizon() {
        let lines = r#"{"ts":0,"type":"node","node":"n1","phase":"registered","labels":{}}
{"ts":100,"type":"pod","pod":"a/fn-1","images":["r/fn:1"],"phase":"scheduled","node":"n1"}
{"ts":200,"type":"node","node":"n1","phase":"deleted","labels":{}}
{"ts":300,"type":"node","node":"n1","phase":"registered","labels":{}}
{"ts":350,"type":"pod","pod":"a/fn-2","images":["r/fn:1"],"phase":"scheduled","node":"n1"}
"#;
        let b = bindings(EventReader::new(lines.as_bytes(), "t")).unwrap();
        // At registration and later, up to the binding.
        assert!(needed(&b, candidate(0.0), 150.0));
        assert!(needed(&b, candidate(60.0), 150.0));
        // The binding is past the horizon.
        assert!(!needed(&b, candidate(0.0), 50.0));
        // After the first binding, the next is on the node's next life.
        assert!(!needed(&b, candidate(150.0), 300.0));
        assert!(needed(&b, candidate(300.0), 60.0));
        // Another image is not needed.
        let mut other = candidate(0.0);
        other.image = "r/other:1".into();
        assert!(!needed(&b, other, 1000.0));
    }
}
