//! `pullahead tune --cross-validate`: leave-one-out over whole traces.
//!
//! A time split scores the model on the later part of the clusters it was
//! fitted on; operators run it on clusters it has never seen. So for each
//! file in turn, the model is fitted (and its threshold chosen) on every
//! other file, whole, and the file left out is replayed whole with it,
//! beside `rules`, `static` and `popular`.

use serde::Serialize;

use crate::forecast::model::Model;
use crate::replay::{self, PolicyReport};
use crate::tune::{self, Trace, TuneOptions};

/// The policies a fold scores, in report order.
pub const POLICIES: [&str; 4] = ["predictive", "rules", "static", "popular"];

/// One policy's figures on a file left out.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Held {
    /// The policy.
    pub policy: String,
    /// (W_none − W_policy) / (W_none − W_oracle); `None` when the oracle
    /// saves nothing over `none` on the file.
    pub capture: Option<f64>,
    /// Wasted over prefetched bytes; `None` when nothing was prefetched.
    pub waste_share: Option<f64>,
    /// Bytes prefetched.
    pub prefetched_bytes: u64,
    /// Prefetched bytes no pod on the node used.
    pub wasted_bytes: u64,
    /// Total pull wait after binding, seconds.
    pub pull_wait_seconds: f64,
}

impl Held {
    fn of(p: &PolicyReport) -> Self {
        Self {
            policy: p.policy.clone(),
            capture: p.oracle_capture,
            waste_share: (p.prefetched_bytes > 0)
                .then(|| p.wasted_bytes as f64 / p.prefetched_bytes as f64),
            prefetched_bytes: p.prefetched_bytes,
            wasted_bytes: p.wasted_bytes,
            pull_wait_seconds: p.pull_wait_seconds.total,
        }
    }
}

/// One fold: the file left out and how each policy did on it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fold {
    /// The file left out.
    pub file: String,
    /// Pods bound in it.
    pub pods: u64,
    /// The threshold the model fitted on the other files chose.
    pub threshold: f64,
    /// Total pull wait after binding under `none` and under the oracle.
    pub none_wait_seconds: f64,
    /// See `none_wait_seconds`.
    pub oracle_wait_seconds: f64,
    /// The policies, in [`POLICIES`] order.
    pub policies: Vec<Held>,
}

/// What cross-validation produced.
#[derive(Debug)]
pub struct CrossValidated {
    /// One fold per file, in the order given.
    pub folds: Vec<Fold>,
    /// The model fitted on every file, as the folds fitted theirs.
    pub model: Model,
}

/// Runs leave-one-out cross-validation over `opts.files` (at least two),
/// then fits the model on all of them.
pub fn cross_validate(opts: &TuneOptions) -> replay::Result<CrossValidated> {
    let mut traces = tune::load(opts)?;
    if traces.len() < 2 {
        return Err(replay::Error::InvalidOption(format!(
            "--cross-validate needs at least two non-empty files, not {}",
            traces.len()
        )));
    }
    // Each fold trains on the other files whole.
    for t in &mut traces {
        t.split = f64::INFINITY;
    }
    let mut folds = Vec::with_capacity(traces.len());
    for (k, out) in traces.iter().enumerate() {
        let train: Vec<&Trace> = traces
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != k)
            .map(|(_, t)| t)
            .collect();
        let (model, _) = tune::fit(&train, opts)?;
        let r = tune::score(&out.label, &out.events, &model, &opts.replay, &POLICIES)?;
        let wait = |name: &str| {
            r.policies
                .iter()
                .find(|p| p.policy == name)
                .map_or(0.0, |p| p.pull_wait_seconds.total)
        };
        folds.push(Fold {
            file: out.label.clone(),
            pods: r.policies.first().map_or(0, |p| p.pods),
            threshold: model.threshold,
            none_wait_seconds: wait("none"),
            oracle_wait_seconds: wait("oracle"),
            policies: r
                .policies
                .iter()
                .filter(|p| POLICIES.contains(&p.policy.as_str()))
                .map(Held::of)
                .collect(),
        });
    }
    let all: Vec<&Trace> = traces.iter().collect();
    let (model, _) = tune::fit(&all, opts)?;
    Ok(CrossValidated { folds, model })
}

/// The folds as a Markdown table: capture and waste share per policy.
pub fn table(folds: &[Fold]) -> String {
    let num = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.3}"));
    let pct = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{:.1}%", v * 100.0));
    let mut s = String::from("| file left out | pods | threshold |");
    for p in POLICIES {
        s.push_str(&format!(" {p} capture | {p} waste |"));
    }
    s.push_str("\n|---|---|---|");
    s.push_str(&"---|---|".repeat(POLICIES.len()));
    s.push('\n');
    for f in folds {
        let name = std::path::Path::new(&f.file)
            .file_name()
            .map_or(f.file.clone(), |n| n.to_string_lossy().into_owned());
        s.push_str(&format!("| {name} | {} | {:.2} |", f.pods, f.threshold));
        for p in POLICIES {
            match f.policies.iter().find(|h| h.policy == p) {
                Some(h) => s.push_str(&format!(" {} | {} |", num(h.capture), pct(h.waste_share))),
                None => s.push_str(" – | – |"),
            }
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventWriter, Header};
    use crate::replay::synth::{SynthConfig, generate};
    use std::path::PathBuf;

    #[test]
    fn each_file_is_scored_by_a_model_fitted_on_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = (1..=3)
            .map(|seed| {
                let path = dir.path().join(format!("t{seed}.jsonl"));
                let cfg = SynthConfig {
                    seed,
                    events: 6_000,
                    pools: 2,
                    workloads: 30,
                    images: 20,
                };
                let mut w = EventWriter::create(&path, &Header::new(0.0, "test")).unwrap();
                generate(cfg, &mut w).unwrap();
                w.flush().unwrap();
                path
            })
            .collect();
        let opts = TuneOptions {
            files: files.clone(),
            train_fraction: 0.7,
            horizon_seconds: 3600.0,
            max_waste_share: 0.15,
            replay: replay::Options::default(),
            command: "test".into(),
        };
        let cv = cross_validate(&opts).unwrap();
        assert_eq!(cv.folds.len(), 3);
        for (fold, file) in cv.folds.iter().zip(&files) {
            assert_eq!(fold.file, file.display().to_string());
            let names: Vec<&str> = fold.policies.iter().map(|h| h.policy.as_str()).collect();
            assert_eq!(names, POLICIES);
            assert!(fold.pods > 0);
            assert!(fold.none_wait_seconds >= fold.oracle_wait_seconds);
            for h in &fold.policies {
                assert!(h.wasted_bytes <= h.prefetched_bytes, "{h:?}");
            }
        }
        // The final model saw every file; each fold's model saw two.
        assert_eq!(cv.model.provenance.data.len(), 3);
        let text = table(&cv.folds);
        assert_eq!(text.lines().count(), 2 + 3);
        assert!(text.contains("| t2.jsonl |"), "{text}");
        // A fold's model never saw the file it scores: fitted on the other
        // two alone, it gives the same figures.
        let alone = TuneOptions {
            files: vec![files[1].clone(), files[2].clone()],
            ..opts.clone()
        };
        let mut traces = tune::load(&alone).unwrap();
        for t in &mut traces {
            t.split = f64::INFINITY;
        }
        let refs: Vec<&Trace> = traces.iter().collect();
        let (model, _) = tune::fit(&refs, &alone).unwrap();
        assert_eq!(model.threshold, cv.folds[0].threshold);
        assert_eq!(
            model.provenance.data,
            vec![
                files[1].display().to_string(),
                files[2].display().to_string()
            ]
        );
    }

    #[test]
    fn one_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.jsonl");
        std::fs::write(
            &path,
            "{\"v\":1,\"ts\":0,\"type\":\"node\",\"node\":\"n\",\"phase\":\"registered\"}\n",
        )
        .unwrap();
        let opts = TuneOptions {
            files: vec![path],
            train_fraction: 0.7,
            horizon_seconds: 3600.0,
            max_waste_share: 0.15,
            replay: replay::Options::default(),
            command: "test".into(),
        };
        let err = cross_validate(&opts).unwrap_err().to_string();
        assert!(err.contains("at least two"), "{err}");
    }
}
