//! The `--load` CSV: per-minute rates, one series per column (the `long`
//! layout) or one series per row (the `wide` layout of the Azure Functions
//! trace). A minute with no row counts as zero.

use std::path::Path;

use super::spec::LoadLayout;
use super::{Error, Result};

/// Per-minute load series.
#[derive(Clone, Debug, PartialEq)]
pub struct Load {
    /// Unix seconds (or any origin) of minute 0.
    pub start: f64,
    /// Series names.
    pub columns: Vec<String>,
    /// `series[c][m]`: rate of column `c` in minute `m`.
    pub series: Vec<Vec<f32>>,
}

impl Load {
    /// Minutes covered.
    pub fn minutes(&self) -> usize {
        self.series.first().map_or(0, Vec::len)
    }

    /// Index of the column named `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// Rate of column `c` in minute `m`; zero outside the file.
    pub fn rate(&self, c: usize, m: usize) -> f64 {
        self.series
            .get(c)
            .and_then(|s| s.get(m))
            .map_or(0.0, |v| f64::from(*v))
    }

    /// Total over all minutes of column `c`.
    pub fn total(&self, c: usize) -> f64 {
        self.series
            .get(c)
            .map_or(0.0, |s| s.iter().map(|v| f64::from(*v)).sum())
    }

    /// Reads `path` in `layout`; `start` sets minute 0 for the wide layout.
    pub fn read(path: &Path, layout: LoadLayout, start: Option<f64>) -> Result<Self> {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|source| Error::Io {
            path: name.clone(),
            source,
        })?;
        Self::from_reader(std::io::BufReader::new(file), &name, layout, start)
    }

    /// Reads CSV from `input`; `name` is used in errors.
    pub fn from_reader<R: std::io::Read>(
        input: R,
        name: &str,
        layout: LoadLayout,
        start: Option<f64>,
    ) -> Result<Self> {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_reader(input);
        let bad = |line: u64, msg: String| Error::Load {
            path: name.to_string(),
            line,
            msg,
        };
        let csv_err = |e: csv::Error| {
            let line = e.position().map_or(0, |p| p.line());
            bad(line, e.to_string())
        };
        let header = rdr.headers().map_err(csv_err)?.clone();
        if header.len() < 2 {
            return Err(bad(
                1,
                "the header needs a first column and at least one series".into(),
            ));
        }
        match layout {
            LoadLayout::Long => {
                let columns: Vec<String> = header.iter().skip(1).map(str::to_string).collect();
                let mut series: Vec<Vec<f32>> = vec![Vec::new(); columns.len()];
                let mut origin: Option<f64> = None;
                let mut prev_minute: Option<usize> = None;
                for rec in rdr.records() {
                    let rec = rec.map_err(csv_err)?;
                    let line = rec.position().map_or(0, |p| p.line());
                    let ts_field = rec.get(0).unwrap_or("");
                    let ts = parse_time(ts_field).ok_or_else(|| {
                        bad(line, format!("first column: {ts_field:?} is not a timestamp (ISO 8601 or seconds)"))
                    })?;
                    let origin = *origin.get_or_insert(ts);
                    let offset = (ts - origin) / 60.0;
                    if offset < 0.0 {
                        return Err(bad(
                            line,
                            format!("time {ts_field:?} is before the first row"),
                        ));
                    }
                    let minute = offset.floor() as usize;
                    if prev_minute.is_some_and(|p| minute < p) {
                        return Err(bad(line, format!("time {ts_field:?} goes backwards")));
                    }
                    if minute > 10 * 366 * 24 * 60 {
                        return Err(bad(line, "the series is longer than ten years".into()));
                    }
                    prev_minute = Some(minute);
                    for (c, s) in series.iter_mut().enumerate() {
                        let v = parse_rate(rec.get(c + 1).unwrap_or(""))
                            .map_err(|m| bad(line, format!("column {:?}: {m}", columns[c])))?;
                        if s.len() <= minute {
                            s.resize(minute + 1, 0.0);
                        }
                        // Rows inside one minute add up.
                        s[minute] += v;
                    }
                }
                if prev_minute.is_none() {
                    return Err(bad(1, "no data rows".into()));
                }
                Ok(Self {
                    start: origin.unwrap_or(0.0),
                    columns,
                    series,
                })
            }
            LoadLayout::Wide => {
                let mut minute_cols: Vec<(usize, usize)> = Vec::new();
                for (i, h) in header.iter().enumerate().skip(1) {
                    let n = h.strip_prefix("minute_").unwrap_or(h);
                    if let Ok(m) = n.parse::<usize>() {
                        if m == 0 {
                            return Err(bad(1, format!("column {h:?}: minutes count from 1")));
                        }
                        minute_cols.push((i, m - 1));
                    }
                }
                let minutes = minute_cols
                    .iter()
                    .map(|(_, m)| m + 1)
                    .max()
                    .ok_or_else(|| {
                        bad(
                            1,
                            "the wide layout needs minute_1, minute_2, … columns".into(),
                        )
                    })?;
                let (mut columns, mut series) = (Vec::new(), Vec::new());
                for rec in rdr.records() {
                    let rec = rec.map_err(csv_err)?;
                    let line = rec.position().map_or(0, |p| p.line());
                    let mut s = vec![0.0f32; minutes];
                    for &(i, m) in &minute_cols {
                        s[m] += parse_rate(rec.get(i).unwrap_or(""))
                            .map_err(|msg| bad(line, format!("column {:?}: {msg}", &header[i])))?;
                    }
                    columns.push(rec.get(0).unwrap_or("").to_string());
                    series.push(s);
                }
                if columns.is_empty() {
                    return Err(bad(1, "no data rows".into()));
                }
                Ok(Self {
                    start: start.unwrap_or(0.0),
                    columns,
                    series,
                })
            }
        }
    }
}

fn parse_rate(s: &str) -> std::result::Result<f32, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(0.0);
    }
    let v: f32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{s:?} is not a rate (finite, not negative)"));
    }
    Ok(v)
}

/// Parses ISO 8601 (with or without offset; without one it is UTC) or
/// plain seconds.
pub fn parse_time(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Ok(v) = s.parse::<f64>() {
        return v.is_finite().then_some(v);
    }
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Some(t.as_millisecond() as f64 / 1000.0);
    }
    let civil: jiff::civil::DateTime = s.replacen(' ', "T", 1).parse().ok()?;
    let t = civil.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp();
    Some(t.as_millisecond() as f64 / 1000.0)
}
