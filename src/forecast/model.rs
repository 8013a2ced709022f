//! The model that turns a candidate's signals into P(image needed on the
//! node within the horizon): logistic regression over named features,
//! stored as JSON in `models/`.

use std::path::Path;

use ndarray::{Array1, Array2, ArrayView1};
use serde::{Deserialize, Serialize};

use super::{Error, Result};

/// The model file format this build reads and writes.
pub const MODEL_VERSION: u32 = 1;

/// The features, in the order the weights use. See `docs/forecaster.md`.
pub const FEATURES: [&str; 10] = [
    "nominated",
    "scale_up",
    "daemonset",
    "pending",
    "hpa_pressure",
    "hpa_trend",
    "history",
    "fits",
    "not_nominated",
    "existing",
];

/// Each feature's position in [`FEATURES`], in a [`Features`] row and in
/// [`Model::weights`].
pub mod feature {
    /// `nominated`: pods nominated to the claim that need the image.
    pub const NOMINATED: usize = 0;
    /// `scale_up`: unbound pods of a pending scale-up of the node's group.
    pub const SCALE_UP: usize = 1;
    /// `daemonset`: a DaemonSet that fits the node uses the image.
    pub const DAEMONSET: usize = 2;
    /// `pending`: pending pods of fitting workloads.
    pub const PENDING: usize = 3;
    /// `hpa_pressure`: desired minus current replicas.
    pub const HPA_PRESSURE: usize = 4;
    /// `hpa_trend`: replicas the trend forecasts beyond the current ones.
    pub const HPA_TREND: usize = 5;
    /// `history`: share of the pool's new nodes that needed the image.
    pub const HISTORY: usize = 6;
    /// `fits`: fitting workloads that use the image.
    pub const FITS: usize = 7;
    /// `not_nominated`: `fits`, on a claim whose nominated pods do not use
    /// the image.
    pub const NOT_NOMINATED: usize = 8;
    /// `existing`: 1 on a node that registered earlier and is planned for
    /// because a fitting workload's HPA is rising.
    pub const EXISTING: usize = 9;
}

/// Number of features.
pub const N_FEATURES: usize = FEATURES.len();

/// One candidate's feature values, in [`FEATURES`] order.
pub type Features = [f64; N_FEATURES];

/// How the model was made.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The command that fitted it.
    pub command: String,
    /// The traces it was fitted on.
    pub data: Vec<String>,
    /// Training rows.
    pub rows: u64,
    /// Share of positive rows.
    pub positive_share: f64,
}

/// A fitted model, as stored in `models/*.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// File format version; must be [`MODEL_VERSION`].
    pub version: u32,
    /// Feature names, matching [`FEATURES`] as a set.
    pub features: Vec<String>,
    /// One weight per feature, in `features` order.
    pub weights: Vec<f64>,
    /// Intercept.
    pub bias: f64,
    /// The horizon H of "needed within H", in seconds.
    pub horizon_seconds: f64,
    /// Orders need at least this probability.
    pub threshold: f64,
    /// How it was made.
    pub provenance: Provenance,
    /// Weights permuted into [`FEATURES`] order (filled on load).
    #[serde(skip)]
    ordered: Features,
}

/// The committed default model (models/default.json), built in so that
/// the binary works from any directory.
pub const DEFAULT_MODEL: &str = include_str!("../../models/default.json");

impl Model {
    /// A model with these weights (in [`FEATURES`] order).
    pub fn new(weights: Features, bias: f64, horizon_seconds: f64, threshold: f64) -> Self {
        Self {
            version: MODEL_VERSION,
            features: FEATURES.iter().map(|s| s.to_string()).collect(),
            weights: weights.to_vec(),
            bias,
            horizon_seconds,
            threshold,
            provenance: Provenance::default(),
            ordered: weights,
        }
    }

    /// Reads and checks a model file.
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::Model {
            path: path.display().to_string(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let mut m: Model = serde_json::from_str(&text).map_err(|e| {
            let (pos, msg) = crate::position::json(&e);
            Error::Model {
                path: crate::position::place(&path.display().to_string(), pos),
                msg,
            }
        })?;
        m.check().map_err(bad)?;
        Ok(m)
    }

    /// The committed default model, [`DEFAULT_MODEL`].
    pub fn builtin() -> std::result::Result<Self, String> {
        Self::from_json(DEFAULT_MODEL)
    }

    /// Parses and checks a model from JSON text.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        let mut m: Model = serde_json::from_str(text).map_err(|e| e.to_string())?;
        m.check()?;
        Ok(m)
    }

    fn check(&mut self) -> std::result::Result<(), String> {
        if self.version != MODEL_VERSION {
            return Err(format!(
                "unsupported model version {}; this pullahead reads version {MODEL_VERSION}",
                self.version
            ));
        }
        if self.weights.len() != self.features.len() {
            return Err(format!(
                "{} weights for {} features",
                self.weights.len(),
                self.features.len()
            ));
        }
        for f in &self.features {
            if !FEATURES.contains(&f.as_str()) {
                return Err(format!(
                    "unknown feature {f:?}; known: {}",
                    FEATURES.join(", ")
                ));
            }
        }
        for (i, name) in FEATURES.iter().enumerate() {
            let pos = self
                .features
                .iter()
                .position(|f| f == name)
                .ok_or_else(|| {
                    format!(
                        "missing feature {name:?} (a model from an older pullahead: \
                         fit it again with this one's `pullahead tune`)"
                    )
                })?;
            self.ordered[i] = self.weights[pos];
        }
        if let Some((i, _)) = self
            .weights
            .iter()
            .enumerate()
            .find(|(_, w)| !w.is_finite())
        {
            return Err(format!(
                "weight of {:?} is not a finite number",
                self.features[i]
            ));
        }
        if !self.bias.is_finite() {
            return Err("bias is not a finite number".into());
        }
        if !(self.threshold.is_finite() && (0.0..=1.0).contains(&self.threshold)) {
            return Err(format!("threshold {} is not in [0, 1]", self.threshold));
        }
        if !(self.horizon_seconds.is_finite() && self.horizon_seconds > 0.0) {
            return Err(format!(
                "horizon_seconds {} must be above zero",
                self.horizon_seconds
            ));
        }
        Ok(())
    }

    /// P(needed within the horizon) for `x`.
    pub fn predict(&self, x: &Features) -> f64 {
        1.0 / (1.0 + (-self.logit(x)).exp())
    }

    /// The log-odds behind [`Model::predict`]: cheaper, and as good for
    /// comparing against [`Model::logit_threshold`].
    pub fn logit(&self, x: &Features) -> f64 {
        self.bias + self.ordered.iter().zip(x).map(|(w, v)| w * v).sum::<f64>()
    }

    /// The threshold on the log-odds scale: `predict(x) >= threshold`
    /// exactly when `logit(x) >= logit_threshold()`.
    pub fn logit_threshold(&self) -> f64 {
        let t = self.threshold;
        if t <= 0.0 {
            f64::NEG_INFINITY
        } else if t >= 1.0 {
            f64::INFINITY
        } else {
            (t / (1.0 - t)).ln()
        }
    }

    /// Weights in [`FEATURES`] order.
    pub fn weights(&self) -> &Features {
        &self.ordered
    }
}

/// Fits logistic regression by Newton's method (IRLS) with a small L2
/// penalty, on rows `x` (n × [`N_FEATURES`]) and labels `y` (0 or 1).
/// Returns the weights and the bias.
pub fn fit_logistic(x: &Array2<f64>, y: ArrayView1<f64>, l2: f64) -> (Features, f64) {
    let n = x.nrows();
    let d = N_FEATURES + 1;
    // Design matrix with a leading column of ones for the bias.
    let mut a = Array2::<f64>::ones((n, d));
    a.slice_mut(ndarray::s![.., 1..]).assign(x);
    let mut w = Array1::<f64>::zeros(d);
    for _ in 0..25 {
        let z = a.dot(&w);
        let p = z.mapv(|z| 1.0 / (1.0 + (-z).exp()));
        let s = p.mapv(|p| (p * (1.0 - p)).max(1e-9));
        let mut grad = a.t().dot(&(&y - &p));
        grad.slice_mut(ndarray::s![1..])
            .zip_mut_with(&w.slice(ndarray::s![1..]), |g, w| *g -= l2 * w);
        let weighted = &a * &s.view().insert_axis(ndarray::Axis(1));
        let mut h = a.t().dot(&weighted);
        for i in 1..d {
            h[[i, i]] += l2;
        }
        h[[0, 0]] += 1e-9;
        let Some(step) = solve(h, grad) else { break };
        let size = step.iter().map(|v| v.abs()).fold(0.0, f64::max);
        w += &step;
        if size < 1e-8 {
            break;
        }
    }
    let mut out = [0.0; N_FEATURES];
    for (i, o) in out.iter_mut().enumerate() {
        *o = w[i + 1];
    }
    (out, w[0])
}

/// Solves `a x = b` by Gaussian elimination with partial pivoting; `None`
/// when `a` is singular.
fn solve(mut a: Array2<f64>, mut b: Array1<f64>) -> Option<Array1<f64>> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[[i, col]].abs().total_cmp(&a[[j, col]].abs()))?;
        if a[[pivot, col]].abs() < 1e-12 {
            return None;
        }
        if pivot != col {
            for k in 0..n {
                a.swap([col, k], [pivot, k]);
            }
            b.swap(col, pivot);
        }
        for row in col + 1..n {
            let f = a[[row, col]] / a[[col, col]];
            if f != 0.0 {
                for k in col..n {
                    a[[row, k]] -= f * a[[col, k]];
                }
                b[row] -= f * b[col];
            }
        }
    }
    let mut x = Array1::<f64>::zeros(n);
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[[row, k]] * x[k]).sum();
        x[row] = (b[row] - s) / a[[row, row]];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut v = serde_json::to_value(Model::new([1.0; N_FEATURES], -2.0, 600.0, 0.5)).unwrap();
        edit(&mut v);
        v.to_string()
    }

    #[test]
    fn good_model_loads_and_predicts() {
        let m = Model::from_json(&json(|_| {})).unwrap();
        assert!((m.predict(&[0.0; N_FEATURES]) - 1.0 / (1.0 + 2f64.exp())).abs() < 1e-12);
    }

    #[test]
    fn bad_models_are_refused_with_a_clear_message() {
        type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
        let cases: [(&str, Edit); 6] = [
            (
                "missing feature \"history\"",
                Box::new(|v| {
                    v["features"][6] = "nominated".into();
                }),
            ),
            (
                "unknown feature \"colour\"",
                Box::new(|v| v["features"][7] = "colour".into()),
            ),
            (
                "unsupported model version 9",
                Box::new(|v| v["version"] = 9.into()),
            ),
            (
                "not a finite number",
                Box::new(|v| v["weights"][2] = serde_json::Value::Null),
            ),
            (
                "threshold 1.5 is not in [0, 1]",
                Box::new(|v| v["threshold"] = 1.5.into()),
            ),
            (
                "9 weights for 10 features",
                Box::new(|v| {
                    v["weights"].as_array_mut().unwrap().pop();
                }),
            ),
        ];
        for (want, edit) in cases {
            let err = Model::from_json(&json(edit)).unwrap_err();
            assert!(
                err.contains(want) || (want == "not a finite number" && err.contains("null")),
                "{err:?} lacks {want:?}"
            );
        }
    }

    #[test]
    fn feature_positions_match_their_names() {
        use feature::*;
        for (i, name) in [
            (NOMINATED, "nominated"),
            (SCALE_UP, "scale_up"),
            (DAEMONSET, "daemonset"),
            (PENDING, "pending"),
            (HPA_PRESSURE, "hpa_pressure"),
            (HPA_TREND, "hpa_trend"),
            (HISTORY, "history"),
            (FITS, "fits"),
            (NOT_NOMINATED, "not_nominated"),
            (EXISTING, "existing"),
        ] {
            assert_eq!(FEATURES[i], name);
        }
    }

    #[test]
    fn nan_weights_are_refused() {
        let mut m = Model::new([1.0; N_FEATURES], 0.0, 600.0, 0.5);
        m.weights[3] = f64::NAN;
        assert!(
            m.check()
                .unwrap_err()
                .contains("\"pending\" is not a finite number")
        );
    }

    #[test]
    fn logistic_fit_recovers_a_separating_direction() {
        // y = 1 exactly when the "nominated" feature is set.
        let n = 400;
        let mut x = Array2::<f64>::zeros((n, N_FEATURES));
        let mut y = Array1::<f64>::zeros(n);
        for i in 0..n {
            let on = i % 3 == 0;
            x[[i, 0]] = if on { 1.0 } else { 0.0 };
            x[[i, 6]] = (i % 7) as f64 / 7.0;
            y[i] = if on == (i % 10 != 0) { 1.0 } else { 0.0 };
        }
        let (w, b) = fit_logistic(&x, y.view(), 1e-3);
        let m = Model::new(w, b, 600.0, 0.5);
        let mut on = [0.0; N_FEATURES];
        on[0] = 1.0;
        assert!(m.predict(&on) > 0.8, "{}", m.predict(&on));
        assert!(m.predict(&[0.0; N_FEATURES]) < 0.2);
    }
}
