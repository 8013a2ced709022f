//! Short-horizon forecasts of a series sampled at a fixed step: Holt's
//! linear trend (double exponential smoothing), with a damped trend so that
//! a burst is not extrapolated for ever, and its smoothing constants chosen
//! by least h-step error on the history.
//!
//! Smoothing the level filters the noise that a naive "same as now"
//! forecast carries forward; the trend term catches ramps.

use ndarray::{Array1, ArrayView1};

/// Holt's linear trend with damping.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Holt {
    /// Level smoothing, 0 < alpha ≤ 1.
    pub alpha: f64,
    /// Trend smoothing, 0 ≤ beta ≤ 1.
    pub beta: f64,
    /// Trend damping per step, 0 < phi ≤ 1.
    pub phi: f64,
}

/// Running state of a [`Holt`] model over one series.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HoltState {
    level: f64,
    trend: f64,
    seen: u64,
}

impl Holt {
    /// Takes the next observation.
    pub fn update(&self, s: &mut HoltState, y: f64) {
        if s.seen == 0 {
            s.level = y;
            s.trend = 0.0;
        } else {
            let prev = s.level;
            s.level = self.alpha * y + (1.0 - self.alpha) * (prev + self.phi * s.trend);
            s.trend = self.beta * (s.level - prev) + (1.0 - self.beta) * self.phi * s.trend;
        }
        s.seen += 1;
    }

    /// The forecast `h` steps ahead of the last observation.
    pub fn forecast(&self, s: &HoltState, h: u32) -> f64 {
        // Sum of phi^1..phi^h: the damped trend's total contribution.
        let mut damp = 0.0;
        let mut p = 1.0;
        for _ in 0..h {
            p *= self.phi;
            damp += p;
        }
        s.level + damp * s.trend
    }

    /// Mean absolute error of `h`-step forecasts over `series` (each forecast
    /// made from the observations before its target only).
    pub fn mae(&self, series: ArrayView1<f64>, h: u32) -> f64 {
        let h_us = h as usize;
        if series.len() <= h_us {
            return f64::NAN;
        }
        let mut s = HoltState::default();
        let mut err = 0.0;
        let mut n = 0usize;
        for i in 0..series.len() - h_us {
            self.update(&mut s, series[i]);
            err += (self.forecast(&s, h) - series[i + h_us]).abs();
            n += 1;
        }
        err / n as f64
    }

    /// The constants from a small grid with the least `h`-step error on
    /// `series`.
    pub fn fit(series: ArrayView1<f64>, h: u32) -> Self {
        let grid = Array1::linspace(0.05, 1.0, 20);
        let mut best = (f64::INFINITY, Holt::default());
        for &alpha in grid.iter() {
            for beta in [0.0, 0.02, 0.05, 0.1, 0.2, 0.4] {
                for phi in [0.8, 0.9, 0.95, 1.0] {
                    let m = Holt { alpha, beta, phi };
                    let e = m.mae(series, h);
                    if e < best.0 {
                        best = (e, m);
                    }
                }
            }
        }
        best.1
    }
}

impl Default for Holt {
    /// Constants that suit HPA replica series sampled every 15 s.
    fn default() -> Self {
        Holt {
            alpha: 0.5,
            beta: 0.2,
            phi: 0.9,
        }
    }
}

/// Mean absolute error of the naive forecast "the value `h` steps ahead is
/// the value now".
pub fn naive_mae(series: ArrayView1<f64>, h: u32) -> f64 {
    let h = h as usize;
    if series.len() <= h {
        return f64::NAN;
    }
    let n = series.len() - h;
    (0..n)
        .map(|i| (series[i + h] - series[i]).abs())
        .sum::<f64>()
        / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ramp_is_extrapolated() {
        let m = Holt {
            alpha: 0.8,
            beta: 0.5,
            phi: 1.0,
        };
        let mut s = HoltState::default();
        for i in 0..50 {
            m.update(&mut s, 2.0 * i as f64);
        }
        let f = m.forecast(&s, 5);
        assert!((f - 108.0).abs() < 0.5, "{f}");
    }

    #[test]
    fn beats_naive_on_the_nasa_trace_at_five_minutes() {
        // Requests per minute, NASA-HTTP July 1995 (CC BY 4.0, see
        // replay-data/load/nasa_http_1995.SOURCE.txt): fit on the first
        // two weeks, score on the third.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/replay-data/load/nasa_http_1995_requests_per_minute.csv"
        );
        let text = std::fs::read_to_string(path).expect("NASA trace");
        let ys: Vec<f64> = text
            .lines()
            .skip(1)
            .filter_map(|l| l.split(',').nth(1)?.trim().parse().ok())
            .take(3 * 7 * 1440)
            .collect();
        assert!(ys.len() > 20_000, "{} rows", ys.len());
        let split = 2 * 7 * 1440;
        let train = Array1::from(ys[..split].to_vec());
        let test = Array1::from(ys[split..].to_vec());
        let m = Holt::fit(train.view(), 5);
        let holt = m.mae(test.view(), 5);
        let naive = naive_mae(test.view(), 5);
        eprintln!("NASA h=5min: Holt {m:?} MAE {holt:.2}, naive MAE {naive:.2}");
        assert!(holt < naive, "Holt {holt} should beat naive {naive}");
    }
}
