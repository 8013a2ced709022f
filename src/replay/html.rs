//! The replay report as one self-contained HTML page (`--report OUT.html`):
//! the summary table and, per trace, charts drawn as inline SVG by
//! `plotters`. Nothing on the page is fetched: no scripts, styles, fonts or
//! images from elsewhere, so it opens the same offline or mailed.

use std::fmt::Write as _;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use super::report::{PolicyReport, Report};

/// Errors drawing a chart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// plotters refused to draw (it names the cause).
    #[error("drawing the {chart} chart: {msg}")]
    Chart {
        /// Which chart.
        chart: &'static str,
        /// What plotters said.
        msg: String,
    },
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A small table shown above the traces' sections, e.g. `tune`'s
/// threshold search.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Its heading.
    pub caption: String,
    /// Column names.
    pub header: Vec<String>,
    /// Rows of cells, as text.
    pub rows: Vec<Vec<String>>,
}

const WIDTH: u32 = 600;
const HEIGHT: u32 = 320;
/// Time bins of the "pull wait over time" chart.
const TIME_BINS: usize = 48;
/// Quantiles sampled for each cumulative distribution.
const CDF_POINTS: usize = 400;
const GB: f64 = 1e9;

/// Line colour of each policy; the oracle is black and dashed.
fn colour(policy: &str, index: usize) -> RGBColor {
    match policy {
        "none" => RGBColor(128, 128, 128),
        "static" => RGBColor(230, 120, 20),
        "popular" => RGBColor(40, 100, 220),
        "predictive" => RGBColor(20, 160, 60),
        "oracle" => RGBColor(0, 0, 0),
        _ => {
            const MORE: [RGBColor; 4] = [
                RGBColor(170, 40, 170),
                RGBColor(0, 150, 160),
                RGBColor(150, 100, 30),
                RGBColor(200, 40, 60),
            ];
            MORE[index % MORE.len()]
        }
    }
}

fn is_oracle(p: &PolicyReport) -> bool {
    p.policy == "oracle"
}

/// The legend's name: the oracle is marked as the bound it is.
fn legend_name(p: &PolicyReport) -> String {
    if is_oracle(p) {
        "oracle (upper bound)".to_string()
    } else {
        p.policy.clone()
    }
}

fn chart_error(chart: &'static str) -> impl Fn(Box<dyn std::fmt::Display>) -> Error {
    move |e| Error::Chart {
        chart,
        msg: e.to_string(),
    }
}

/// Turns any plotters error into a boxed display, so one `map_err` fits all.
fn boxed<E: std::fmt::Display + 'static>(e: E) -> Box<dyn std::fmt::Display> {
    Box::new(e)
}

/// Escapes text for HTML element content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1280px}\
table{border-collapse:collapse;margin:8px 0 16px}\
th,td{border:1px solid #bbb;padding:3px 8px;text-align:right}\
th:first-child,td:first-child{text-align:left}\
.charts{display:flex;flex-wrap:wrap;gap:12px}\
.charts figure{margin:0}\
figcaption{font-size:13px;color:#444;max-width:600px}";

/// The page of `pullahead replay --report`: one section per trace.
pub fn replay_page(reports: &[Report]) -> Result<String> {
    page(
        "pullahead replay",
        "Each policy replayed over the same events, each against its own simulated data plane.",
        &[],
        reports,
    )
}

/// The whole page: `title`, `intro`, the `tables`, then one section per
/// report.
pub fn page(title: &str, intro: &str, tables: &[Table], reports: &[Report]) -> Result<String> {
    let mut html = String::new();
    // `write!` into a String cannot fail.
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n<p>{}</p>\n",
        escape(title),
        escape(title),
        escape(intro)
    );
    for t in tables {
        html.push_str(&format!("<h2>{}</h2>\n", escape(&t.caption)));
        push_table(&mut html, &t.header, &t.rows);
    }
    for r in reports {
        section(&mut html, r)?;
    }
    html.push_str("</body>\n</html>\n");
    Ok(html)
}

fn push_table(html: &mut String, header: &[String], rows: &[Vec<String>]) {
    html.push_str("<table>\n<tr>");
    for h in header {
        let _ = write!(html, "<th>{}</th>", escape(h));
    }
    html.push_str("</tr>\n");
    for row in rows {
        html.push_str("<tr>");
        for cell in row {
            let _ = write!(html, "<td>{}</td>", escape(cell));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_string(), |x| format!("{x:.digits$}"))
}

/// The figures of [`super::report::table`], one row a policy.
fn summary_rows(r: &Report) -> (Vec<String>, Vec<Vec<String>>) {
    let header = [
        "policy",
        "pods",
        "wait p50 s",
        "wait p95 s",
        "wait p99 s",
        "wait total s",
        "hit %",
        "prefetched GB",
        "wasted GB",
        "lead p50 s",
        "oracle capture",
    ]
    .map(String::from)
    .to_vec();
    let rows = r
        .policies
        .iter()
        .map(|p| {
            let w = &p.pull_wait_seconds;
            vec![
                legend_name(p),
                p.pods.to_string(),
                format!("{:.2}", w.p50),
                format!("{:.2}", w.p95),
                format!("{:.2}", w.p99),
                format!("{:.1}", w.total),
                opt(p.hit_ratio.map(|h| h * 100.0), 1),
                format!("{:.3}", p.prefetched_bytes as f64 / GB),
                format!("{:.3}", p.wasted_bytes as f64 / GB),
                opt(p.lead_time_seconds.p50, 1),
                opt(p.oracle_capture, 3),
            ]
        })
        .collect();
    (header, rows)
}

fn section(html: &mut String, r: &Report) -> Result<()> {
    let _ = write!(
        html,
        "<section>\n<h2>{}</h2>\n<p>{} events over {:.0} s; {} images without a known size. \
         Oracle capture is (W<sub>none</sub> − W<sub>policy</sub>) / (W<sub>none</sub> − \
         W<sub>oracle</sub>) over total pull wait W: the oracle, which knows every future \
         binding, is the upper bound at 1 (not an optimum: its pulls at registration can crowd \
         each other, so a policy may pass it).</p>\n",
        escape(&r.file),
        r.events,
        r.span_seconds,
        r.default_sized_images
    );
    let (header, rows) = summary_rows(r);
    push_table(html, &header, &rows);
    let charts = [
        (
            cdf_chart(r)?,
            "Cumulative distribution of pod pull wait: the share of pods that waited at most x \
             seconds for their images after binding. Higher and further left is better.",
        ),
        (
            time_chart(r)?,
            "Pull wait over the trace's time: seconds pods bound in each bin waited, summed.",
        ),
        (
            bytes_chart(r)?,
            "Bytes each policy prefetched: the part pods used, and on top the part no pod on \
             that node used (wasted).",
        ),
        (
            capture_chart(r)?,
            "Oracle capture: the share of the oracle's saving over none that each policy \
             achieves; the dashed line is the oracle.",
        ),
    ];
    html.push_str("<div class=\"charts\">\n");
    for (svg, caption) in charts {
        let _ = write!(
            html,
            "<figure>\n{svg}\n<figcaption>{}</figcaption>\n</figure>\n",
            escape(caption)
        );
    }
    html.push_str("</div>\n</section>\n");
    Ok(())
}

/// Line style of `p`: the oracle is drawn thicker than the rest.
fn line_style(p: &PolicyReport, index: usize) -> ShapeStyle {
    let width = if is_oracle(p) { 3 } else { 2 };
    colour(&p.policy, index).stroke_width(width)
}

fn cdf_chart(r: &Report) -> Result<String> {
    let err = chart_error("pull-wait distribution");
    let x_max = r
        .policies
        .iter()
        .filter_map(|p| p.detail.sorted.last().copied())
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.05;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(boxed).map_err(&err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("pull wait, cumulative", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..x_max, 0.0..1.0)
            .map_err(boxed)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .light_line_style(RGBColor(238, 238, 238))
            .x_desc("pull wait (s)")
            .y_desc("share of pods")
            .draw()
            .map_err(boxed)
            .map_err(&err)?;
        for (i, p) in r.policies.iter().enumerate() {
            let points = cdf_points(&p.detail.sorted, x_max);
            let style = line_style(p, i);
            let series = if is_oracle(p) {
                chart.draw_series(DashedLineSeries::new(points, 8, 4, style))
            } else {
                chart.draw_series(LineSeries::new(points, style))
            };
            series
                .map_err(boxed)
                .map_err(&err)?
                .label(legend_name(p))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(boxed)
            .map_err(&err)?;
        root.present().map_err(boxed).map_err(&err)?;
    }
    Ok(svg)
}

/// A step curve through the distribution of `sorted`, at most
/// [`CDF_POINTS`] steps, running on to `x_max`.
fn cdf_points(sorted: &[f64], x_max: f64) -> Vec<(f64, f64)> {
    let n = sorted.len();
    if n == 0 {
        return Vec::new();
    }
    let mut points = vec![(0.0, 0.0)];
    let step = n.div_ceil(CDF_POINTS).max(1);
    let mut i = 0;
    while i < n {
        // The last index holding the same value, so each step is a value's
        // whole share.
        let mut j = (i + step).min(n) - 1;
        while j + 1 < n && sorted[j + 1] == sorted[j] {
            j += 1;
        }
        let x = sorted[j];
        let (_, prev) = points[points.len() - 1];
        points.push((x, prev));
        points.push((x, (j + 1) as f64 / n as f64));
        i = j + 1;
    }
    points.push((x_max, 1.0));
    points
}

/// Summed wait per time bin, in hours since the trace's first event.
fn time_bins(r: &Report, p: &PolicyReport) -> Vec<(f64, f64)> {
    let span = r.span_seconds.max(1.0);
    let width = span / TIME_BINS as f64;
    let mut bins = vec![0.0; TIME_BINS];
    for &(bind, wait) in &p.detail.by_bind {
        let k = (((bind - r.first_ts) / width).floor().max(0.0) as usize).min(TIME_BINS - 1);
        bins[k] += wait;
    }
    bins.into_iter()
        .enumerate()
        .map(|(k, w)| (((k as f64) + 0.5) * width / 3600.0, w))
        .collect()
}

fn time_chart(r: &Report) -> Result<String> {
    let err = chart_error("pull wait over time");
    let series: Vec<Vec<(f64, f64)>> = r.policies.iter().map(|p| time_bins(r, p)).collect();
    let y_max = series
        .iter()
        .flatten()
        .map(|&(_, w)| w)
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.1;
    let x_max = (r.span_seconds / 3600.0).max(1.0 / 60.0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(boxed).map_err(&err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("pull wait over time ({TIME_BINS} bins)"),
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(boxed)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .light_line_style(RGBColor(238, 238, 238))
            .x_desc("hours since the first event")
            .y_desc("seconds waited")
            .draw()
            .map_err(boxed)
            .map_err(&err)?;
        for (i, (p, points)) in r.policies.iter().zip(series).enumerate() {
            let style = line_style(p, i);
            let drawn = if is_oracle(p) {
                chart.draw_series(DashedLineSeries::new(points, 8, 4, style))
            } else {
                chart.draw_series(LineSeries::new(points, style))
            };
            drawn
                .map_err(boxed)
                .map_err(&err)?
                .label(legend_name(p))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(boxed)
            .map_err(&err)?;
        root.present().map_err(boxed).map_err(&err)?;
    }
    Ok(svg)
}

/// The policy name under bar `v` of a segmented axis.
fn bar_label(r: &Report, v: &SegmentValue<i32>) -> String {
    match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => r
            .policies
            .get(*i as usize)
            .map(|p| p.policy.clone())
            .unwrap_or_default(),
        SegmentValue::Last => String::new(),
    }
}

const WASTE: RGBColor = RGBColor(200, 30, 30);
/// The legend's swatch for "used", which each bar draws in its policy's colour.
const USED_KEY: RGBColor = RGBColor(90, 90, 90);

fn bytes_chart(r: &Report) -> Result<String> {
    let err = chart_error("prefetched bytes");
    // One segment a policy: `a..b` segments a to b inclusive.
    let last = r.policies.len().max(1) as i32 - 1;
    let y_max = r
        .policies
        .iter()
        .map(|p| p.prefetched_bytes as f64 / GB)
        .fold(0.0f64, f64::max)
        .max(0.001)
        // Head room for the legend above the tallest bar.
        * 1.4;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(boxed).map_err(&err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("prefetched and wasted", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d((0..last).into_segmented(), 0.0..y_max)
            .map_err(boxed)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(r.policies.len().max(1))
            .x_label_formatter(&|v| bar_label(r, v))
            .y_desc("GB (10^9 bytes)")
            .draw()
            .map_err(boxed)
            .map_err(&err)?;
        let bar = |i: i32, lo: f64, hi: f64, style: ShapeStyle| {
            let mut rect = Rectangle::new(
                [
                    (SegmentValue::Exact(i), lo),
                    (SegmentValue::Exact(i + 1), hi),
                ],
                style,
            );
            rect.set_margin(0, 0, 14, 14);
            rect
        };
        let used = r.policies.iter().enumerate().map(|(i, p)| {
            let total = p.prefetched_bytes as f64 / GB;
            let wasted = p.wasted_bytes as f64 / GB;
            bar(
                i as i32,
                0.0,
                (total - wasted).max(0.0),
                colour(&p.policy, i).filled(),
            )
        });
        chart
            .draw_series(used)
            .map_err(boxed)
            .map_err(&err)?
            .label("used (in the policy's colour)")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], USED_KEY.filled()));
        let wasted = r.policies.iter().enumerate().map(|(i, p)| {
            let total = p.prefetched_bytes as f64 / GB;
            let wasted = p.wasted_bytes as f64 / GB;
            bar(i as i32, (total - wasted).max(0.0), total, WASTE.filled())
        });
        chart
            .draw_series(wasted)
            .map_err(boxed)
            .map_err(&err)?
            .label("wasted")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], WASTE.filled()));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(boxed)
            .map_err(&err)?;
        root.present().map_err(boxed).map_err(&err)?;
    }
    Ok(svg)
}

fn capture_chart(r: &Report) -> Result<String> {
    let err = chart_error("oracle capture");
    // One segment a policy: `a..b` segments a to b inclusive.
    let last = r.policies.len().max(1) as i32 - 1;
    let captures: Vec<Option<f64>> = r.policies.iter().map(|p| p.oracle_capture).collect();
    let lo = captures.iter().flatten().fold(0.0f64, |a, &c| a.min(c)) * 1.1;
    let hi = captures.iter().flatten().fold(1.0f64, |a, &c| a.max(c)) * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(boxed).map_err(&err)?;
        let caption = if captures.iter().all(Option::is_none) {
            "oracle capture (undefined: the oracle saves nothing over none)"
        } else {
            "oracle capture"
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d((0..last).into_segmented(), lo..hi)
            .map_err(boxed)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(r.policies.len().max(1))
            .x_label_formatter(&|v| bar_label(r, v))
            .y_desc("capture")
            .draw()
            .map_err(boxed)
            .map_err(&err)?;
        let bars = r.policies.iter().enumerate().filter_map(|(i, p)| {
            let c = p.oracle_capture?;
            let mut rect = Rectangle::new(
                [
                    (SegmentValue::Exact(i as i32), 0.0),
                    (SegmentValue::Exact(i as i32 + 1), c),
                ],
                colour(&p.policy, i).filled(),
            );
            rect.set_margin(0, 0, 14, 14);
            Some(rect)
        });
        chart.draw_series(bars).map_err(boxed).map_err(&err)?;
        chart
            .draw_series(DashedLineSeries::new(
                [(SegmentValue::Exact(0), 1.0), (SegmentValue::Last, 1.0)],
                8,
                4,
                BLACK.stroke_width(2),
            ))
            .map_err(boxed)
            .map_err(&err)?
            .label("oracle (upper bound) = 1")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(boxed)
            .map_err(&err)?;
        root.present().map_err(boxed).map_err(&err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cdf_climbs_to_one_in_steps_of_whole_values() {
        let points = cdf_points(&[0.0, 0.0, 1.0, 3.0], 4.0);
        assert_eq!(
            points,
            vec![
                (0.0, 0.0),
                (0.0, 0.0),
                (0.0, 0.5),
                (1.0, 0.5),
                (1.0, 0.75),
                (3.0, 0.75),
                (3.0, 1.0),
                (4.0, 1.0)
            ]
        );
        assert!(cdf_points(&[], 1.0).is_empty());
        let many: Vec<f64> = (0..100_000).map(f64::from).collect();
        assert!(cdf_points(&many, 1e6).len() <= 2 * CDF_POINTS + 3);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
